//! Fault injection: failures, delays and refused connections produced on demand, so that a
//! client's retry logic can be tested against real sockets.
//!
//! This module owns the fault plan and everything that acts on it:
//!
//! - [`Faults`], the handle tests and embedders drive (from [`Emulator::faults`]);
//! - the hook the REST API calls before answering a request, which delays it and may fail
//!   it in place of the real operation;
//! - `FaultListener`, the accept loop that drops new connections while refusal is on;
//! - the `/emulator/faults` admin endpoint (`GET`, `PUT`, `DELETE`).
//!
//! Nothing is injected until asked for. While no fault is set, the cost on every REST request
//! and every accepted connection is one atomic load.
//!
//! # What each fault does
//!
//! - **Failures** apply to the REST data plane: every request under `/api/` except the health
//!   probe (`HEAD` and `GET /api/health`). The next N such requests get the chosen status
//!   (503 unless told otherwise) with the service's error shape, `x-ms-error-code:
//!   InjectedFault`, and a `Retry-After` header when one is set. The operation is not carried
//!   out. The count goes down under a lock, so concurrent requests never fail more than N in
//!   total.
//! - **Latency** delays every request of that same scope, failed or not, before it is
//!   answered. Admin, console and WebSocket requests are never delayed.
//! - **Refusing connections** accepts each new TCP connection and resets it at once without
//!   reading or answering it. Connections already open (WebSocket subscribers, keep-alive
//!   HTTP connections) are left alone. Because a refusing emulator cannot be reached over
//!   HTTP to switch it off, the admin endpoint only turns refusal on for a set time
//!   (`refuseConnectionsMs`); the Rust API can also turn it on until it is cleared.
//!
//! [`Emulator::faults`]: crate::Emulator::faults

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::error::ApiError;
use crate::AppState;

/// The status failed requests get unless another is chosen: 503 Service Unavailable.
pub const DEFAULT_FAULT_STATUS: u16 = 503;

/// The `x-ms-error-code` (and body `code`) of every injected failure.
pub const INJECTED_FAULT_CODE: &str = "InjectedFault";

/// True for the statuses a failure may be injected with: 400 to 599.
pub fn is_fault_status(status: u16) -> bool {
    (400..=599).contains(&status)
}

/// A handle on one emulator's fault plan. Clones share the plan; changes apply to requests
/// and connections that arrive after the call returns.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// False while the plan is empty: the one load the normal path pays.
    armed: AtomicBool,
    plan: Mutex<Plan>,
    injected: AtomicU64,
    refused: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    fail_next: u64,
    status: StatusCode,
    retry_after: Option<u64>,
    latency: Duration,
    refusal: Refusal,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            fail_next: 0,
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
            latency: Duration::ZERO,
            refusal: Refusal::Off,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Off,
    /// Until [`Faults::refuse_connections`]`(false)` or [`Faults::clear`].
    UntilCleared,
    Until(Instant),
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.fail_next == 0 && self.latency.is_zero() && self.refusal == Refusal::Off
    }

    /// Whether new connections are refused now; an elapsed refusal is switched off.
    fn refusing(&mut self, now: Instant) -> bool {
        match self.refusal {
            Refusal::Off => false,
            Refusal::UntilCleared => true,
            Refusal::Until(end) if now < end => true,
            Refusal::Until(_) => {
                self.refusal = Refusal::Off;
                false
            }
        }
    }
}

/// The state of a fault plan at one moment, as [`Faults::snapshot`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSnapshot {
    /// Data-plane requests still to be failed.
    pub fail_next: u64,
    /// The status they will get.
    pub status: u16,
    /// The `Retry-After` seconds they will carry, if any.
    pub retry_after: Option<u64>,
    /// The delay before every data-plane request is answered.
    pub latency: Duration,
    /// Whether new connections are being refused.
    pub refusing_connections: bool,
    /// How much longer refusal lasts; `None` when it is off or lasts until cleared.
    pub refusal_remaining: Option<Duration>,
    /// Requests failed so far (see [`Faults::injected`]).
    pub injected: u64,
    /// Connections refused so far (see [`Faults::refused`]).
    pub refused: u64,
}

impl Faults {
    /// Fails the next `n` data-plane requests with `status`, adding `Retry-After:
    /// {retry_after}` when given. Replaces any failures still pending; latency and refusal
    /// are kept. `n = 0` cancels pending failures.
    ///
    /// # Panics
    ///
    /// If `status` is not from 400 to 599.
    pub fn fail_next(&self, n: u64, status: u16, retry_after: Option<u64>) {
        assert!(
            is_fault_status(status),
            "an injected failure needs a status from 400 to 599, got {status}"
        );
        let status = StatusCode::from_u16(status).expect("400 to 599 are valid statuses");
        self.update(|plan| {
            plan.fail_next = n;
            plan.status = status;
            plan.retry_after = retry_after;
        });
    }

    /// Delays every data-plane request by `latency` before it is answered, whether it then
    /// fails or not. `Duration::ZERO` turns the delay off.
    pub fn set_latency(&self, latency: Duration) {
        self.update(|plan| plan.latency = latency);
    }

    /// Starts (`true`) or stops (`false`) refusing new connections. Refusal started here lasts
    /// until it is stopped here or by [`Faults::clear`]: HTTP clients, the admin endpoint
    /// included, cannot reach the emulator meanwhile.
    pub fn refuse_connections(&self, on: bool) {
        let refusal = if on {
            Refusal::UntilCleared
        } else {
            Refusal::Off
        };
        self.update(|plan| plan.refusal = refusal);
    }

    /// Refuses new connections for `duration`, after which they are accepted again.
    pub fn refuse_connections_for(&self, duration: Duration) {
        // A duration too long to add to the clock is as good as forever.
        let refusal = Instant::now()
            .checked_add(duration)
            .map_or(Refusal::UntilCleared, Refusal::Until);
        self.update(|plan| plan.refusal = refusal);
    }

    /// Turns every fault off. The counters keep their values.
    pub fn clear(&self) {
        self.update(|plan| *plan = Plan::default());
    }

    /// Requests failed by this plan since the emulator started.
    pub fn injected(&self) -> u64 {
        self.inner.injected.load(Ordering::Acquire)
    }

    /// Connections refused since the emulator started.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Acquire)
    }

    /// Data-plane requests still to be failed.
    pub fn pending(&self) -> u64 {
        self.lock().fail_next
    }

    /// The whole plan and both counters.
    pub fn snapshot(&self) -> FaultSnapshot {
        let now = Instant::now();
        let mut plan = self.lock();
        let refusing = plan.refusing(now);
        self.rearm(&plan);
        FaultSnapshot {
            fail_next: plan.fail_next,
            status: plan.status.as_u16(),
            retry_after: plan.retry_after,
            latency: plan.latency,
            refusing_connections: refusing,
            refusal_remaining: match plan.refusal {
                Refusal::Until(end) => Some(end.saturating_duration_since(now)),
                _ => None,
            },
            injected: self.injected(),
            refused: self.refused(),
        }
    }

    /// True when some fault is set. Checked first on every hot path.
    #[inline]
    pub(crate) fn armed(&self) -> bool {
        self.inner.armed.load(Ordering::Acquire)
    }

    /// The REST hook: waits out the latency and, when this request is one of those to fail,
    /// returns the answer to give instead of carrying it out. Call only when [`Self::armed`].
    pub(crate) async fn on_rest_request(&self, method: &Method, path: &str) -> Option<Response> {
        if path == "/api/health" && (method == Method::HEAD || method == Method::GET) {
            return None;
        }
        let (latency, failure) = {
            let mut plan = self.lock();
            let failure = if plan.fail_next > 0 {
                plan.fail_next -= 1;
                self.inner.injected.fetch_add(1, Ordering::AcqRel);
                Some((plan.status, plan.retry_after, plan.fail_next))
            } else {
                None
            };
            self.rearm(&plan);
            (plan.latency, failure)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let (status, retry_after, left) = failure?;
        tracing::debug!(%method, path, %status, left, "injected a failure");
        Some(failure_response(status, retry_after, left))
    }

    /// Whether a connection accepted now is to be refused (and counts it if so).
    fn refuse_now(&self) -> bool {
        let mut plan = self.lock();
        let refusing = plan.refusing(Instant::now());
        self.rearm(&plan);
        if refusing {
            self.inner.refused.fetch_add(1, Ordering::AcqRel);
        }
        refusing
    }

    fn update(&self, change: impl FnOnce(&mut Plan)) {
        let mut plan = self.lock();
        change(&mut plan);
        self.rearm(&plan);
    }

    /// Keeps the fast-path flag in step with the plan; called with the lock held.
    fn rearm(&self, plan: &Plan) {
        self.inner.armed.store(!plan.is_empty(), Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, Plan> {
        // The plan is plain data, valid after any panic: a poisoned lock is still usable.
        self.inner
            .plan
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn failure_response(status: StatusCode, retry_after: Option<u64>, left: u64) -> Response {
    let message = format!(
        "injected fault: the emulator was told to fail this request with {status} \
         ({left} more to fail)"
    );
    let mut response = ApiError::new(status, INJECTED_FAULT_CODE, message).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The emulator's listener: a [`TcpListener`] whose accept loop resets new connections
/// while the fault plan refuses them.
#[derive(Debug)]
pub(crate) struct FaultListener {
    inner: TcpListener,
    faults: Faults,
}

impl FaultListener {
    pub(crate) fn new(inner: TcpListener, faults: Faults) -> Self {
        FaultListener { inner, faults }
    }
}

impl axum::serve::Listener for FaultListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            if !(self.faults.armed() && self.faults.refuse_now()) {
                // Small frames and REST answers must not wait for Nagle's algorithm to
                // coalesce them with the next write.
                let _ = stream.set_nodelay(true);
                return (stream, addr);
            }
            // A zero linger makes the close a reset, which the client sees at once whether or
            // not its request was already on the way.
            if let Err(err) = stream.set_zero_linger() {
                tracing::debug!(%err, "could not set a zero linger on a refused connection");
            }
            tracing::debug!(peer = %addr, "refused a connection (fault injection)");
            drop(stream);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The body of `PUT /emulator/faults`. Every field may be left out, which means "off" (or
/// 503 for `status`). The counters a `GET` reports are accepted and ignored, so a `GET`
/// answer can be edited and put back.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PlanBody {
    #[serde(default)]
    fail_next: u64,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    retry_after_seconds: Option<u64>,
    #[serde(default)]
    latency_ms: u64,
    #[serde(default)]
    refuse_connections: Option<bool>,
    #[serde(default)]
    refuse_connections_ms: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    injected: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    refused: Option<IgnoredAny>,
}

fn snapshot_json(snapshot: &FaultSnapshot) -> Json<serde_json::Value> {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Json(json!({
        "failNext": snapshot.fail_next,
        "status": snapshot.status,
        "retryAfterSeconds": snapshot.retry_after,
        "latencyMs": millis(snapshot.latency),
        "refuseConnections": snapshot.refusing_connections,
        "refuseConnectionsMs": snapshot.refusal_remaining.map(millis),
        "injected": snapshot.injected,
        "refused": snapshot.refused,
    }))
}

/// `GET /emulator/faults`: the plan and the counters.
pub(crate) async fn admin_get(State(app): State<AppState>) -> Json<serde_json::Value> {
    snapshot_json(&app.faults.snapshot())
}

/// `PUT /emulator/faults`: replaces the whole plan and answers with the new one.
pub(crate) async fn admin_put(
    State(app): State<AppState>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: PlanBody = serde_json::from_slice(&body).map_err(|err| {
        ApiError::bad_request(format!(
            "body must be JSON {{\"failNext\", \"status\", \"retryAfterSeconds\", \"latencyMs\", \
             \"refuseConnections\", \"refuseConnectionsMs\"}}: {err}"
        ))
    })?;
    let status = body.status.unwrap_or(DEFAULT_FAULT_STATUS);
    if !is_fault_status(status) {
        return Err(ApiError::bad_request(format!(
            "status must be from 400 to 599, got {status}"
        )));
    }
    let refuse_for = match (body.refuse_connections, body.refuse_connections_ms) {
        (None | Some(false), None | Some(0)) => None,
        (None | Some(true), Some(ms @ 1..)) => Some(Duration::from_millis(ms)),
        (Some(true), _) => {
            return Err(ApiError::bad_request(
                "refuseConnections needs refuseConnectionsMs: a refusing emulator cannot be \
                 reached to switch refusal off, so over HTTP it only lasts a set time",
            ))
        }
        (Some(false), Some(_)) => {
            return Err(ApiError::bad_request(
                "refuseConnections is false but refuseConnectionsMs is set",
            ))
        }
    };

    let refusal = match refuse_for {
        None => Refusal::Off,
        Some(duration) => Instant::now()
            .checked_add(duration)
            .map(Refusal::Until)
            .ok_or_else(|| ApiError::bad_request("refuseConnectionsMs is too large"))?,
    };
    let plan = Plan {
        fail_next: body.fail_next,
        status: StatusCode::from_u16(status).expect("400 to 599 are valid statuses"),
        retry_after: body.retry_after_seconds,
        latency: Duration::from_millis(body.latency_ms),
        refusal,
    };
    // One change, so no request sees half of the old plan and half of the new.
    app.faults.update(|current| *current = plan);
    tracing::info!(
        fail_next = body.fail_next,
        status,
        retry_after = ?body.retry_after_seconds,
        latency_ms = body.latency_ms,
        refuse_ms = ?refuse_for.map(|d| d.as_millis()),
        "fault plan set"
    );
    Ok(snapshot_json(&app.faults.snapshot()))
}

/// `DELETE /emulator/faults`: turns every fault off and answers with the cleared plan.
pub(crate) async fn admin_delete(State(app): State<AppState>) -> Json<serde_json::Value> {
    app.faults.clear();
    tracing::info!("fault plan cleared");
    snapshot_json(&app.faults.snapshot())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_plan_is_not_armed() {
        let faults = Faults::default();
        assert!(!faults.armed());
        faults.fail_next(2, 500, None);
        assert!(faults.armed());
        faults.fail_next(0, 500, None);
        assert!(!faults.armed());
        faults.set_latency(Duration::from_millis(1));
        assert!(faults.armed());
        faults.clear();
        assert!(!faults.armed());
        faults.refuse_connections(true);
        assert!(faults.armed());
        faults.refuse_connections(false);
        assert!(!faults.armed());
    }

    #[tokio::test]
    async fn failures_run_out_and_disarm() {
        let faults = Faults::default();
        faults.fail_next(2, 429, Some(3));
        let post = Method::POST;
        let first = faults.on_rest_request(&post, "/api/hubs/h/:send").await;
        let first = first.expect("first request fails");
        assert_eq!(first.status(), 429);
        assert_eq!(first.headers()[header::RETRY_AFTER], "3");
        assert_eq!(first.headers()["x-ms-error-code"], INJECTED_FAULT_CODE);
        // The health probe is never failed and does not use up a failure.
        assert!(faults
            .on_rest_request(&Method::HEAD, "/api/health")
            .await
            .is_none());
        assert!(faults
            .on_rest_request(&post, "/api/hubs/h/:send")
            .await
            .is_some());
        assert!(!faults.armed());
        assert!(faults
            .on_rest_request(&post, "/api/hubs/h/:send")
            .await
            .is_none());
        assert_eq!(faults.injected(), 2);
    }

    #[test]
    fn a_timed_refusal_ends_by_itself() {
        let faults = Faults::default();
        faults.refuse_connections_for(Duration::from_millis(20));
        assert!(faults.refuse_now());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!faults.refuse_now());
        assert!(!faults.armed());
        assert_eq!(faults.refused(), 1);
    }

    #[test]
    #[should_panic(expected = "from 400 to 599")]
    fn a_success_status_is_not_a_failure() {
        Faults::default().fail_next(1, 200, None);
    }
}
