//! Delivering one batch: every change becomes a message, gets its address from the route,
//! and is sent to Web PubSub, many at a time but never more than the configured bound, each
//! retried while its failure may pass and the invocation's deadline allows.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use crate::change::Change;
use crate::message;
use crate::retry::{with_retries, GaveUp, RetryPolicy};
use crate::route::{Address, Route};
use crate::webpubsub::WebPubSub;

/// How one batch is sent.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Sends in flight at once.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// When the batch must be finished, retries included.
    pub deadline: tokio::time::Instant,
}

/// Largest message rowcast sends. Web PubSub refuses messages over 1 MB; staying at a decimal
/// megabyte keeps clear of whether that means 10^6 or 2^20 bytes.
pub const MAX_MESSAGE_BYTES: usize = 1_000_000;

/// A change that did not reach Web PubSub, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Position of the change in the batch.
    pub index: usize,
    pub id: String,
    pub reason: String,
    /// Where it was going, when the row could be given an address.
    pub address: Option<Address>,
    /// The subscriber message, for keeping it as a dead letter.
    pub message: String,
}

/// What delivering a batch did.
#[derive(Debug, Clone)]
pub struct Report {
    pub changes: usize,
    pub messages: usize,
    /// Distinct addresses (all, users, groups) the batch was sent to.
    pub targets: usize,
    pub failures: Vec<Failure>,
    pub elapsed: Duration,
}

impl Report {
    /// The one-line summary written to the invocation's logs.
    pub fn summary(&self, function: &str) -> String {
        let failed = if self.failures.is_empty() {
            String::new()
        } else {
            format!(", {} failed", self.failures.len())
        };
        format!(
            "{function}: {} changes, {} messages sent to {} targets in {} ms{failed}",
            self.changes,
            self.messages,
            self.targets,
            self.elapsed.as_millis()
        )
    }
}

/// One message on its way.
struct Outgoing {
    index: usize,
    id: String,
    address: Address,
    body: String,
}

/// Sends every change of `changes` along `route`.
pub async fn deliver(
    client: &WebPubSub,
    route: &Route,
    changes: &[Change],
    options: Options,
) -> Report {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut sends = Vec::with_capacity(changes.len());
    let mut targets = HashSet::new();

    for (index, change) in changes.iter().enumerate() {
        let id = message::change_id(&route.table, change);
        let mut body = message::encode(&route.table, change, &id);
        if let Some(smaller) = message::shrink(&body, MAX_MESSAGE_BYTES) {
            tracing::warn!(index, id = %id, bytes = body.len(), "row too large for one message; sending it without its largest columns");
            body = smaller.get().to_owned();
        }
        match route.target.address(&change.row) {
            Ok(address) => {
                targets.insert(address.clone());
                sends.push(Outgoing {
                    index,
                    id,
                    address,
                    body,
                });
            }
            Err(err) => failures.push(Failure {
                index,
                id,
                reason: err.to_string(),
                address: None,
                message: body,
            }),
        }
    }

    let results: Vec<(Outgoing, Result<u32, GaveUp>)> = stream::iter(sends)
        .map(|outgoing: Outgoing| async move {
            let result = with_retries(options.retry, options.deadline, || {
                client.send_json(&route.hub, &outgoing.address, outgoing.body.clone())
            })
            .await;
            (outgoing, result)
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;

    let mut messages = 0;
    for (outgoing, result) in results {
        let Outgoing {
            index,
            id,
            address,
            body,
        } = outgoing;
        match result {
            Ok(attempts) => {
                messages += 1;
                tracing::debug!(index, id = %id, %address, attempts, "change sent");
            }
            Err(gave_up) => failures.push(Failure {
                index,
                id,
                reason: format!("send to {address}: {gave_up}"),
                address: Some(address),
                message: body,
            }),
        }
    }
    failures.sort_by_key(|f| f.index);

    Report {
        changes: changes.len(),
        messages,
        targets: targets.len(),
        failures,
        elapsed: started.elapsed(),
    }
}
