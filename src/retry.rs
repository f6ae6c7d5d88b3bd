//! Trying a send again when Web PubSub's failure may pass: exponential backoff with full
//! jitter, at least as long as the service's `Retry-After`, and never past the invocation's
//! deadline, so a batch always answers the host well before the SQL trigger would cancel it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::webpubsub::SendError;

/// How hard one send is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; it doubles after each failure.
    pub base_delay: Duration,
    /// Upper bound of one backoff (not of `Retry-After`, which the service decides).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// The last error of a send that did not succeed, and how often it was tried.
#[derive(Debug, Clone)]
pub struct GaveUp {
    pub error: SendError,
    pub attempts: u32,
    /// True when the deadline, not the attempt limit or a permanent error, ended it.
    pub deadline: bool,
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = if self.deadline {
            ", stopped by the invocation deadline"
        } else {
            ""
        };
        let plural = if self.attempts == 1 { "" } else { "s" };
        write!(
            f,
            "{} (after {} attempt{plural}{why})",
            self.error, self.attempts
        )
    }
}

/// Runs `attempt` until it succeeds, fails permanently, runs out of attempts, or the next
/// try could not finish before `deadline`. Each attempt is itself cut off at the deadline.
pub async fn with_retries<F, Fut>(
    policy: RetryPolicy,
    deadline: Instant,
    mut attempt: F,
) -> Result<u32, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), SendError>>,
{
    let mut backoff = policy.base_delay;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Ok(result) = tokio::time::timeout(remaining, attempt()).await else {
            let error = SendError::Timeout(remaining);
            return Err(GaveUp {
                error,
                attempts,
                deadline: true,
            });
        };
        let error = match result {
            Ok(()) => return Ok(attempts),
            Err(error) => error,
        };
        if !error.is_transient() || attempts >= policy.max_attempts {
            return Err(GaveUp {
                error,
                attempts,
                deadline: false,
            });
        }

        // Full jitter spreads the retries of many sends that failed together; the service's
        // Retry-After is a floor, not a suggestion.
        let jittered = backoff.mul_f64(jitter());
        let delay = error
            .retry_after()
            .map_or(jittered, |asked| asked.max(jittered));
        if Instant::now() + delay >= deadline {
            return Err(GaveUp {
                error,
                attempts,
                deadline: true,
            });
        }
        tracing::debug!(error = %error, attempt = attempts, delay_ms = delay.as_millis() as u64, "send failed; retrying");
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(policy.max_delay);
    }
}

/// A factor in [0.5, 1.0): half of the backoff is kept so retries never come at once.
fn jitter() -> f64 {
    let random = getrandom::u32().unwrap_or(u32::MAX / 2);
    0.5 + f64::from(random) / f64::from(u32::MAX) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn unavailable(retry_after: Option<u64>) -> SendError {
        SendError::Status {
            status: 503,
            code: None,
            message: "busy".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let attempts = with_retries(fast(), deadline, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(unavailable(None))
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
        assert_eq!(attempts, 4);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let gave_up = with_retries(fast(), deadline, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(SendError::Status {
                status: 400,
                code: None,
                message: "bad".into(),
                retry_after: None,
            })
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(!gave_up.deadline);
    }

    #[tokio::test]
    async fn the_attempt_limit_holds() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let gave_up = with_retries(fast(), deadline, || async { Err(unavailable(None)) })
            .await
            .unwrap_err();
        assert_eq!(gave_up.attempts, 4);
        assert!(
            gave_up.to_string().contains("after 4 attempts"),
            "{gave_up}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_a_floor_and_the_deadline_a_ceiling() {
        let started = Instant::now();
        let calls = AtomicU32::new(0);
        let deadline = started + Duration::from_secs(60);
        with_retries(fast(), deadline, || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(unavailable(Some(2)))
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
        assert!(started.elapsed() >= Duration::from_secs(2));

        // A Retry-After past the deadline ends the send at once instead of overrunning.
        let deadline = Instant::now() + Duration::from_secs(1);
        let before = Instant::now();
        let gave_up = with_retries(fast(), deadline, || async { Err(unavailable(Some(30))) })
            .await
            .unwrap_err();
        assert!(gave_up.deadline);
        assert!(before.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_attempt_is_cut_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_secs(3);
        let gave_up = with_retries(fast(), deadline, || {
            std::future::pending::<Result<(), SendError>>()
        })
        .await
        .unwrap_err();
        assert!(gave_up.deadline);
        assert!(matches!(gave_up.error, SendError::Timeout(_)));
    }
}
