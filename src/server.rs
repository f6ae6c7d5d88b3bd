//! The HTTP server the Functions host talks to: the readiness probe on `/` and one
//! `POST /{function}` per invocation.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::change;
use crate::deadletter;
use crate::delivery;
use crate::invocation::{HttpRequestData, InvocationError, InvocationRequest, InvocationResponse};
use crate::negotiate;
use crate::redeliver;
use crate::settings::{Config, FunctionRoute};
use crate::webpubsub::{SendError, WebPubSub};

/// What every invocation shares: the configuration and one pooled Web PubSub client.
#[derive(Debug)]
pub struct Handler {
    pub config: Config,
    pub client: WebPubSub,
}

impl Handler {
    /// How sends of one invocation are made, with its deadline starting now.
    fn delivery_options(&self, concurrency: usize) -> delivery::Options {
        delivery::Options {
            concurrency,
            retry: self.config.retry,
            deadline: tokio::time::Instant::now() + self.config.invocation_deadline,
        }
    }

    pub fn new(config: Config) -> Result<Arc<Self>, SendError> {
        let client = WebPubSub::new(&config.publisher, config.request_timeout)?;
        Ok(Arc::new(Handler { config, client }))
    }
}

/// The router, separate from any listener so tests can serve it on port 0.
pub fn app(handler: Arc<Handler>) -> Router {
    let limit = handler.config.max_body_bytes;
    Router::new()
        .route("/", any(ready))
        .route("/{function}", post(invoke))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(handler)
}

/// Serves until `shutdown` resolves, then lets running invocations finish.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;

    // The host's requests and our answers are small; Nagle's algorithm would hold some of
    // them back by a delayed-ACK period.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(handler))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The host polls `/` until anything answers.
async fn ready() -> &'static str {
    "rowcast is ready"
}

async fn invoke(
    State(handler): State<Arc<Handler>>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let invocation_id = headers
        .get("x-azure-functions-invocationid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let span = tracing::info_span!("invocation", function = %function, id = %invocation_id);
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let err = if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                InvocationError::TooLarge(handler.config.max_body_bytes)
            } else {
                InvocationError::Unreadable(rejection.body_text())
            };
            span.in_scope(|| tracing::warn!(error = %err, "invocation refused"));
            return err.into_response();
        }
    };
    match run(&handler, &function, &body)
        .instrument(span.clone())
        .await
    {
        Ok(response) => response.into_response(),
        Err(err) => {
            span.in_scope(|| tracing::warn!(error = %err, "invocation failed"));
            err.into_response()
        }
    }
}

/// Dispatches one invocation to what the function is: a redelivery of dead letters,
/// `negotiate`, or a SQL-triggered batch.
async fn run(
    handler: &Handler,
    function: &str,
    body: &[u8],
) -> Result<InvocationResponse, InvocationError> {
    let request = InvocationRequest::parse(body)?;
    if let Some(queue) = handler.config.redelivery(function) {
        let field = format!("Data.{}", queue.binding);
        let letter = deadletter::unpack(request.binding(&queue.binding)?, &field)?;
        let options = handler.delivery_options(1);
        return redeliver::redeliver(
            &handler.client,
            &queue.name,
            letter,
            options.retry,
            options.deadline,
        )
        .await;
    }
    if let Some(target) = handler.config.function(function) {
        return deliver_batch(handler, target, &request).await;
    }
    if function.eq_ignore_ascii_case("negotiate") {
        let binding = request.binding(negotiate::REQUEST_BINDING)?;
        let http = HttpRequestData::from_binding(binding, negotiate::REQUEST_BINDING)?;
        let response =
            negotiate::negotiate(&http, &handler.config.negotiate, &handler.client).await;
        tracing::info!(
            log = response.logs.first().map(String::as_str).unwrap_or(""),
            "negotiate answered"
        );
        return Ok(response);
    }
    Err(InvocationError::UnknownFunction(function.to_owned()))
}

/// Sends one SQL trigger batch. Changes that still fail by the deadline go to the
/// function's dead-letter queue when it has one; otherwise the batch fails, so the trigger
/// tries it again.
async fn deliver_batch(
    handler: &Handler,
    target: &FunctionRoute,
    request: &InvocationRequest,
) -> Result<InvocationResponse, InvocationError> {
    let field = format!("Data.{}", target.binding);
    let changes = change::decode(request.binding(&target.binding)?, &field)?;

    let options = handler.delivery_options(handler.config.max_concurrency);
    let report = delivery::deliver(&handler.client, &target.route, &changes, options).await;
    let summary = report.summary(&target.function);
    if report.failures.is_empty() {
        tracing::info!(
            changes = report.changes,
            messages = report.messages,
            targets = report.targets,
            ms = report.elapsed.as_millis() as u64,
            "batch delivered"
        );
        return Ok(InvocationResponse::with_log(summary));
    }

    let reasons: Vec<String> = report
        .failures
        .iter()
        .take(20)
        .map(|f| format!("change {} (id {}): {}", f.index, f.id, f.reason))
        .collect();
    let Some(binding) = &target.dead_letters else {
        return Err(InvocationError::Undelivered {
            summary,
            failures: reasons,
        });
    };

    // The batch now counts as handled: what did not arrive waits in the queue for the
    // redelivery function instead of for the SQL trigger's retries.
    let kept = report.failures.len();
    let pending = report
        .failures
        .into_iter()
        .map(|f| deadletter::Pending {
            index: f.index,
            id: f.id,
            address: f.address.map(|a| a.to_string()),
            reason: f.reason,
            message: serde_json::value::RawValue::from_string(f.message).unwrap_or_default(),
        })
        .collect();
    let letters = deadletter::pack(&target.function, &target.route.hub, pending);
    tracing::warn!(
        kept,
        queue_messages = letters.len(),
        "changes kept as dead letters"
    );

    let mut response = InvocationResponse::with_log(format!(
        "{summary}; {kept} kept as dead letters for redelivery"
    ));
    response.logs.extend(reasons);
    response
        .outputs
        .insert(binding.clone(), serde_json::Value::from(letters));
    Ok(response)
}
