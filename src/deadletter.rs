//! Dead letters: changes that could not reach Web PubSub by the invocation's deadline, kept
//! in an Azure Storage queue (the SQL function's queue output binding) instead of being left
//! to the SQL trigger's five attempts. The queue-triggered redelivery function sends them
//! later, in their original order, and the host's poison queue keeps whatever fails again.
//!
//! A queue message holds at most 64 KiB once the host has base64-encoded it, so the
//! changes of one batch are split over as many messages as needed, in batch order, and a
//! single message that would still not fit loses its largest columns (named in `omitted`).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::change::DecodeError;
use crate::message;

/// Raw bytes per queue message: 64 KiB of base64 leaves 48 KiB, minus room for the envelope.
pub const MAX_QUEUE_TEXT: usize = 46 * 1024;

/// One queue message: some of one batch's undeliverable changes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Format version, for redelivery by a later rowcast.
    pub version: u32,
    pub function: String,
    pub hub: String,
    /// When the batch gave up, seconds since the epoch.
    pub failed_at: u64,
    pub changes: Vec<Pending>,
}

/// One change waiting for redelivery.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pending {
    /// Position in the original batch.
    pub index: usize,
    pub id: String,
    /// Where it goes (`all`, `user:<id>`, `group:<name>`), or none when the row could not
    /// be given an address.
    pub address: Option<String>,
    /// Why it was not delivered.
    pub reason: String,
    /// The subscriber message, exactly as it would have been sent.
    pub message: Box<RawValue>,
}

/// Packs undeliverable changes into queue messages, keeping their order.
pub fn pack(function: &str, hub: &str, changes: Vec<Pending>) -> Vec<String> {
    let failed_at = crate::webpubsub::now();
    let envelope = |changes: Vec<Pending>| {
        let letter = DeadLetter {
            version: 1,
            function: function.to_owned(),
            hub: hub.to_owned(),
            failed_at,
            changes,
        };
        serde_json::to_string(&letter).unwrap_or_default()
    };

    let mut messages = Vec::new();
    let mut current: Vec<Pending> = Vec::new();
    let mut size = 0;
    // A change's share of a message: its text plus room for the field names around it.
    let share = |p: &Pending| p.message.get().len() + p.reason.len() + p.id.len() + 64;
    for mut pending in changes {
        if share(&pending) > MAX_QUEUE_TEXT {
            if let Some(smaller) = message::shrink(pending.message.get(), MAX_QUEUE_TEXT - 1024) {
                pending.message = smaller;
            }
        }
        let own = share(&pending);
        if !current.is_empty() && size + own > MAX_QUEUE_TEXT {
            messages.push(envelope(std::mem::take(&mut current)));
            size = 0;
        }
        size += own;
        current.push(pending);
    }
    if !current.is_empty() {
        messages.push(envelope(current));
    }
    messages
}

/// Reads a queue message back. The host may hand it over as an object or as a JSON string
/// (once or twice encoded), like the SQL trigger's changes.
pub fn unpack(value: &RawValue, field: &str) -> Result<DeadLetter, DecodeError> {
    let text = crate::invocation::unwrap_strings(value).map_err(|err| DecodeError {
        field: field.to_owned(),
        expected: format!("expected a dead letter: {err}"),
    })?;
    let letter: DeadLetter = serde_json::from_str(&text).map_err(|err| DecodeError {
        field: field.to_owned(),
        expected: format!(
            "expected a dead letter {{\"version\", \"function\", \"hub\", \"changes\"}}: {err}"
        ),
    })?;
    if letter.version != 1 {
        return Err(DecodeError {
            field: format!("{field}.version"),
            expected: format!("expected version 1, got {}", letter.version),
        });
    }
    Ok(letter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(index: usize, row_bytes: usize) -> Pending {
        let message = format!(
            r#"{{"id":"i{index}","table":"t","operation":"update","row":{{"Id":{index},"Blob":"{}"}}}}"#,
            "x".repeat(row_bytes)
        );
        Pending {
            index,
            id: format!("i{index}"),
            address: Some("all".into()),
            reason: "web pubsub answered 503".into(),
            message: RawValue::from_string(message).unwrap(),
        }
    }

    #[test]
    fn batches_split_in_order_and_round_trip() {
        let changes: Vec<Pending> = (0..40).map(|i| pending(i, 4000)).collect();
        let messages = pack("sql-changes", "SQLUsers", changes);
        assert!(messages.len() > 1);
        let mut seen = Vec::new();
        for text in &messages {
            assert!(text.len() <= MAX_QUEUE_TEXT + 1024, "{}", text.len());
            let encoded = serde_json::to_string(&serde_json::to_string(text).unwrap()).unwrap();
            let letter =
                unpack(&RawValue::from_string(encoded).unwrap(), "Data.deadletter").unwrap();
            assert_eq!(letter.hub, "SQLUsers");
            seen.extend(letter.changes.iter().map(|c| c.index));
        }
        assert_eq!(seen, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn a_change_too_large_for_a_queue_message_loses_its_largest_column() {
        let messages = pack("f", "h", vec![pending(7, 200_000)]);
        assert_eq!(messages.len(), 1);
        assert!(messages[0].len() <= MAX_QUEUE_TEXT);
        let letter = unpack(&RawValue::from_string(messages[0].clone()).unwrap(), "m").unwrap();
        let message: serde_json::Value =
            serde_json::from_str(letter.changes[0].message.get()).unwrap();
        assert_eq!(message["omitted"], serde_json::json!(["Blob"]));
        assert_eq!(message["row"]["Id"], 7);
    }

    #[test]
    fn foreign_messages_are_refused_with_the_field() {
        let err = unpack(
            &RawValue::from_string(r#"{"hello":1}"#.into()).unwrap(),
            "Data.deadletter",
        )
        .unwrap_err();
        assert_eq!(err.field, "Data.deadletter");
    }
}
