//! Delivering one batch: every change becomes a message, gets its address from the route,
//! and is sent to Web PubSub, many at a time but never more than the configured bound.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use crate::change::Change;
use crate::message;
use crate::route::{Address, Route};
use crate::webpubsub::WebPubSub;

/// A change that did not reach Web PubSub, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Position of the change in the batch.
    pub index: usize,
    pub id: String,
    pub reason: String,
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

/// Sends every change of `changes` along `route`, at most `concurrency` at a time.
pub async fn deliver(
    client: &WebPubSub,
    route: &Route,
    changes: &[Change],
    concurrency: usize,
) -> Report {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut sends = Vec::with_capacity(changes.len());
    let mut targets = HashSet::new();

    for (index, change) in changes.iter().enumerate() {
        let id = message::change_id(&route.table, change);
        match route.target.address(&change.row) {
            Ok(address) => {
                targets.insert(address.clone());
                sends.push((
                    index,
                    id.clone(),
                    address,
                    message::encode(&route.table, change, &id),
                ));
            }
            Err(err) => failures.push(Failure {
                index,
                id,
                reason: err.to_string(),
            }),
        }
    }

    let results: Vec<(
        usize,
        String,
        Address,
        Result<(), crate::webpubsub::SendError>,
    )> = stream::iter(sends)
        .map(|(index, id, address, body)| async move {
            let result = client.send_json(&route.hub, &address, body).await;
            (index, id, address, result)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;

    let mut messages = 0;
    for (index, id, address, result) in results {
        match result {
            Ok(()) => {
                messages += 1;
                tracing::debug!(index, id = %id, %address, "change sent");
            }
            Err(err) => failures.push(Failure {
                index,
                id,
                reason: format!("send to {address}: {err}"),
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
