//! The message a subscriber receives for one change:
//!
//! ```json
//! {"id":"5f0c…","table":"dbo.Users","operation":"update","row":{"Id":1,"Name":"Ann"}}
//! ```
//!
//! `id` is derived from the table, the operation and the row exactly as the trigger sent
//! them, so when the host retries a batch every change keeps its id and subscribers can drop
//! what they have already seen.

use sha2::{Digest, Sha256};

use crate::change::Change;

/// The stable id of a change: the first 128 bits of SHA-256 over table, operation and row,
/// in hex.
///
/// Two changes that leave the same row in exactly the same state under the same operation
/// get the same id. For a subscriber that mirrors rows that is the right outcome: the second
/// one changes nothing it has not already applied.
pub fn change_id(table: &str, change: &Change) -> String {
    let mut hash = Sha256::new();
    hash.update(table.as_bytes());
    hash.update([0]);
    hash.update(change.operation.as_str().as_bytes());
    hash.update([0]);
    hash.update(change.row.get().as_bytes());
    let digest = hash.finalize();

    let mut id = String::with_capacity(32);
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// The JSON text sent to subscribers. The row is embedded as the trigger wrote it.
pub fn encode(table: &str, change: &Change, id: &str) -> String {
    let table = serde_json::Value::String(table.to_owned());
    let row = change.row.get();
    let mut out = String::with_capacity(row.len() + table.to_string().len() + 80);
    out.push_str("{\"id\":\"");
    out.push_str(id);
    out.push_str("\",\"table\":");
    out.push_str(&table.to_string());
    out.push_str(",\"operation\":\"");
    out.push_str(change.operation.as_str());
    out.push_str("\",\"row\":");
    out.push_str(row);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Operation;
    use serde_json::value::RawValue;

    fn change(operation: Operation, row: &str) -> Change {
        Change {
            operation,
            row: RawValue::from_string(row.to_owned()).unwrap(),
        }
    }

    #[test]
    fn ids_are_stable_and_distinguish_changes() {
        let a = change(Operation::Update, r#"{"Id":1,"Name":"Ann"}"#);
        assert_eq!(
            change_id("dbo.Users", &a),
            change_id("dbo.Users", &a.clone())
        );
        assert_eq!(change_id("dbo.Users", &a).len(), 32);
        assert_ne!(change_id("dbo.Users", &a), change_id("dbo.Orders", &a));
        let b = change(Operation::Insert, r#"{"Id":1,"Name":"Ann"}"#);
        assert_ne!(change_id("dbo.Users", &a), change_id("dbo.Users", &b));
        let c = change(Operation::Update, r#"{"Id":1,"Name":"Bob"}"#);
        assert_ne!(change_id("dbo.Users", &a), change_id("dbo.Users", &c));
    }

    #[test]
    fn encoded_messages_are_json_with_the_row_verbatim() {
        let c = change(Operation::Delete, r#"{"Id":9007199254740993}"#);
        let text = encode("dbo.\"Users\"", &c, "abc");
        assert!(text.contains(r#""row":{"Id":9007199254740993}"#));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["table"], "dbo.\"Users\"");
        assert_eq!(value["operation"], "delete");
        assert_eq!(value["id"], "abc");
    }
}

/// Makes an encoded message fit in `limit` bytes by dropping the row's largest columns, which
/// are listed in `omitted`, so a subscriber still learns that the row changed and which
/// columns to fetch. Returns `None` when the message already fits or is not one of ours.
pub fn shrink(encoded: &str, limit: usize) -> Option<Box<serde_json::value::RawValue>> {
    use serde_json::value::RawValue;

    if encoded.len() <= limit {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Parts<'a> {
        #[serde(borrow)]
        id: &'a RawValue,
        #[serde(borrow)]
        table: &'a RawValue,
        #[serde(borrow)]
        operation: &'a RawValue,
        #[serde(borrow)]
        row: std::collections::BTreeMap<String, &'a RawValue>,
    }
    let parts: Parts<'_> = serde_json::from_str(encoded).ok()?;

    let mut columns: Vec<(&String, &&RawValue)> = parts.row.iter().collect();
    columns.sort_by_key(|(name, value)| std::cmp::Reverse(value.get().len() + name.len()));
    let mut omitted: Vec<String> = Vec::new();
    let mut size = encoded.len();
    let mut kept: Vec<(&String, &&RawValue)> = Vec::new();
    for (name, value) in columns {
        // Each dropped column saves its text and punctuation, and costs its name in `omitted`.
        if size > limit {
            size = size - value.get().len() - 4 + 3;
            omitted.push(name.clone());
        } else {
            kept.push((name, value));
        }
    }
    omitted.sort();

    let mut row = String::from("{");
    kept.sort_by(|a, b| a.0.cmp(b.0));
    for (i, (name, value)) in kept.iter().enumerate() {
        if i > 0 {
            row.push(',');
        }
        row.push_str(&serde_json::Value::String((*name).clone()).to_string());
        row.push(':');
        row.push_str(value.get());
    }
    row.push('}');
    let text = format!(
        r#"{{"id":{},"table":{},"operation":{},"row":{row},"omitted":{}}}"#,
        parts.id.get(),
        parts.table.get(),
        parts.operation.get(),
        serde_json::to_string(&omitted).ok()?
    );
    RawValue::from_string(text).ok()
}

#[cfg(test)]
mod shrink_tests {
    use super::*;

    #[test]
    fn the_largest_columns_go_first_and_are_named() {
        let encoded = format!(
            r#"{{"id":"a","table":"dbo.T","operation":"insert","row":{{"Id":1,"Photo":"{}","Notes":"{}","Name":"n"}}}}"#,
            "p".repeat(5000),
            "q".repeat(3000)
        );
        let small = shrink(&encoded, 4000).unwrap();
        assert!(small.get().len() <= 4000, "{}", small.get().len());
        let value: serde_json::Value = serde_json::from_str(small.get()).unwrap();
        assert_eq!(value["omitted"], serde_json::json!(["Photo"]));
        assert_eq!(value["row"]["Notes"].as_str().unwrap().len(), 3000);
        assert_eq!(value["row"]["Id"], 1);

        let tiny = shrink(&encoded, 200).unwrap();
        let value: serde_json::Value = serde_json::from_str(tiny.get()).unwrap();
        assert_eq!(value["omitted"], serde_json::json!(["Notes", "Photo"]));
        assert!(shrink(&encoded, 1 << 20).is_none());
    }
}
