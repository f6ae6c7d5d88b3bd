//! The redelivery function: the host hands it one dead-letter queue message at a time, and
//! it sends the changes in it to Web PubSub again, one after the other so that changes to the
//! same row keep their order. When any of them still fails, the answer is non-2xx: the host
//! makes the message visible again later, and after its last attempt moves it to the poison
//! queue (`<queue>-poison`), where it stays until someone moves it back.

use std::time::Instant;

use crate::deadletter::DeadLetter;
use crate::invocation::{InvocationError, InvocationResponse};
use crate::retry::{with_retries, RetryPolicy};
use crate::route::Address;
use crate::webpubsub::WebPubSub;

/// Sends every change of `letter`, one at a time and in order, each retried under `retry`
/// until `deadline`.
pub async fn redeliver(
    client: &WebPubSub,
    function: &str,
    letter: DeadLetter,
    retry: RetryPolicy,
    deadline: tokio::time::Instant,
) -> Result<InvocationResponse, InvocationError> {
    let started = Instant::now();
    let total = letter.changes.len();
    let mut sent = 0;
    let mut failures = Vec::new();

    for pending in letter.changes {
        let address = match pending.address.as_deref().map(str::parse::<Address>) {
            Some(Ok(address)) => address,
            Some(Err(err)) => {
                failures.push(format!(
                    "change {} (id {}): {err}",
                    pending.index, pending.id
                ));
                continue;
            }
            None => {
                failures.push(format!(
                    "change {} (id {}) has no address ({}); fix the route and move the message back",
                    pending.index, pending.id, pending.reason
                ));
                continue;
            }
        };
        let body = pending.message.get().to_owned();
        let result = with_retries(retry, deadline, || {
            client.send_json(&letter.hub, &address, body.clone())
        })
        .await;
        match result {
            Ok(_) => sent += 1,
            Err(gave_up) => failures.push(format!(
                "change {} (id {}): send to {address}: {gave_up}",
                pending.index, pending.id
            )),
        }
    }

    let summary = format!(
        "{function}: redelivered {sent} of {total} changes from {} to hub {} in {} ms",
        letter.function,
        letter.hub,
        started.elapsed().as_millis()
    );
    if failures.is_empty() {
        tracing::info!(sent, from = %letter.function, "dead letters redelivered");
        return Ok(InvocationResponse::with_log(summary));
    }
    Err(InvocationError::Undelivered { summary, failures })
}
