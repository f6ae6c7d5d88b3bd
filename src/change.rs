//! Row changes as the Azure SQL trigger hands them over, and how to decode them.
//!
//! The trigger serializes its list of changes to a JSON string, and the Functions host
//! serializes string values once more before posting them to a custom handler. Depending on
//! the host version the `changes` value therefore arrives as an array, as a string holding the
//! array, or as a string holding that string. All three decode to the same batch.
//!
//! A row is kept as the exact JSON text the trigger produced. Nothing is re-encoded on the way
//! to subscribers, so large decimals and 64-bit keys keep every digit.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Deepest nesting accepted in a row; a SQL row is flat, with JSON columns arriving as text.
const MAX_ROW_NESTING: usize = 128;

/// How many layers of string encoding are unwrapped before giving up.
const MAX_STRING_LAYERS: usize = 4;

/// What happened to a row, as the SQL trigger numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Update,
    Delete,
}

impl Operation {
    /// The lowercase name subscribers see.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }

    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => match n.as_u64()? {
                0 => Some(Operation::Insert),
                1 => Some(Operation::Update),
                2 => Some(Operation::Delete),
                _ => None,
            },
            // Hosts with an enum converter would write names; accept them too.
            Value::String(name) => match name.to_ascii_lowercase().as_str() {
                "insert" => Some(Operation::Insert),
                "update" => Some(Operation::Update),
                "delete" => Some(Operation::Delete),
                _ => None,
            },
            _ => None,
        }
    }
}

/// One changed row. For a delete, `row` holds only the primary key columns.
#[derive(Debug, Clone)]
pub struct Change {
    pub operation: Operation,
    /// The row's columns, as the JSON object text the trigger produced.
    pub row: Box<RawValue>,
}

/// Why a batch could not be decoded. `field` is a path such as `Data.changes[3].Operation`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {expected}")]
pub struct DecodeError {
    pub field: String,
    pub expected: String,
}

impl DecodeError {
    fn new(field: impl Into<String>, expected: impl Into<String>) -> Self {
        DecodeError {
            field: field.into(),
            expected: expected.into(),
        }
    }
}

#[derive(Deserialize)]
struct RawChange {
    // Kept raw, so an operation that is not even a readable number is reported on its field.
    #[serde(rename = "Operation", alias = "operation")]
    operation: Option<Box<RawValue>>,
    #[serde(rename = "Item", alias = "item")]
    item: Option<Box<RawValue>>,
}

/// Decodes the trigger's `changes` value found at `field` in any of its three encodings.
pub fn decode(value: &RawValue, field: &str) -> Result<Vec<Change>, DecodeError> {
    let mut text: std::borrow::Cow<'_, str> = value.get().into();
    for layer in 0..=MAX_STRING_LAYERS {
        let trimmed = text.trim_start();
        if trimmed.starts_with('[') {
            return decode_array(trimmed, field);
        }
        if !trimmed.starts_with('"') {
            // Inside a string the text may not be JSON at all, which says more than its
            // first letter would.
            let got = if layer == 0 {
                kind(trimmed).to_owned()
            } else if serde_json::from_str::<serde::de::IgnoredAny>(trimmed).is_ok() {
                format!("a string holding {}", kind(trimmed))
            } else {
                "a string that does not hold JSON".to_owned()
            };
            return Err(DecodeError::new(
                field,
                format!("expected an array of changes (or a JSON string holding one), got {got}"),
            ));
        }
        let inner: String = serde_json::from_str(trimmed)
            .map_err(|err| DecodeError::new(field, format!("expected a JSON string: {err}")))?;
        text = inner.into();
    }
    Err(DecodeError::new(
        field,
        format!(
            "expected an array of changes within {MAX_STRING_LAYERS} layers of string encoding"
        ),
    ))
}

fn decode_array(text: &str, field: &str) -> Result<Vec<Change>, DecodeError> {
    let elements: Vec<Box<RawValue>> = serde_json::from_str(text).map_err(|err| {
        DecodeError::new(field, format!("expected a JSON array of changes: {err}"))
    })?;

    let mut changes = Vec::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        let at = |name: &str| format!("{field}[{index}]{name}");
        if !element.get().trim_start().starts_with('{') {
            return Err(DecodeError::new(
                at(""),
                format!(
                    "expected an object {{\"Operation\", \"Item\"}}, got {}",
                    kind(element.get())
                ),
            ));
        }
        let raw: RawChange = serde_json::from_str(element.get()).map_err(|err| {
            let text = err.to_string();
            let place = if text.contains("`Operation`") {
                ".Operation"
            } else if text.contains("`Item`") {
                ".Item"
            } else {
                ""
            };
            let expected = match place {
                ".Operation" => "expected one Operation: 0 (insert), 1 (update) or 2 (delete)",
                ".Item" => "expected one Item: the row as an object",
                _ => "expected an object {\"Operation\", \"Item\"}",
            };
            DecodeError::new(at(place), format!("{expected}: {text}"))
        })?;

        let operation = raw.operation.ok_or_else(|| {
            DecodeError::new(
                at(".Operation"),
                "missing; expected 0 (insert), 1 (update) or 2 (delete)",
            )
        })?;
        let parsed = serde_json::from_str::<Value>(operation.get()).ok();
        let operation = parsed
            .as_ref()
            .and_then(Operation::from_value)
            .ok_or_else(|| {
                DecodeError::new(
                    at(".Operation"),
                    format!(
                        "expected 0 (insert), 1 (update) or 2 (delete), got {}",
                        short(operation.get())
                    ),
                )
            })?;

        let row = raw.item.ok_or_else(|| {
            DecodeError::new(at(".Item"), "missing; expected the row as an object")
        })?;
        if !row.get().trim_start().starts_with('{') {
            return Err(DecodeError::new(
                at(".Item"),
                format!("expected the row as an object, got {}", kind(row.get())),
            ));
        }
        // Capturing raw JSON does not bound its nesting, and subscribers' parsers have
        // limits of their own. Out-of-range numbers and lone surrogate escapes pass: SQL
        // Server can hold both, and they reach subscribers as written.
        let depth = nesting(row.get());
        if depth > MAX_ROW_NESTING {
            return Err(DecodeError::new(
                at(".Item"),
                format!("expected a row nested at most {MAX_ROW_NESTING} levels deep, got {depth}"),
            ));
        }
        changes.push(Change { operation, row });
    }
    Ok(changes)
}

/// The deepest nesting of objects and arrays in well-formed JSON `text`, in one pass.
fn nesting(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Names the JSON kind of `text` for error messages, without echoing row data.
fn kind(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'-' | b'0'..=b'9') => "a number",
        _ => "nothing",
    }
}

fn short(text: &str) -> String {
    let mut end = text.len().min(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}…", &text[..end])
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    const ARRAY: &str =
        r#"[{"Operation":0,"Item":{"Id":1,"Name":"Ann"}},{"Operation":2,"Item":{"Id":2}}]"#;

    #[test]
    fn all_three_encodings_decode_alike() {
        let once = serde_json::to_string(ARRAY).unwrap();
        let twice = serde_json::to_string(&once).unwrap();
        for text in [ARRAY.to_owned(), once, twice] {
            let changes = decode(&raw(&text), "Data.changes").unwrap();
            assert_eq!(changes.len(), 2);
            assert_eq!(changes[0].operation, Operation::Insert);
            assert_eq!(changes[0].row.get(), r#"{"Id":1,"Name":"Ann"}"#);
            assert_eq!(changes[1].operation, Operation::Delete);
        }
    }

    #[test]
    fn rows_keep_every_digit() {
        let text = r#"[{"Operation":1,"Item":{"Id":9007199254740993,"Price":12345678901234567890.123456789}}]"#;
        let changes = decode(&raw(text), "Data.changes").unwrap();
        assert!(changes[0].row.get().contains("9007199254740993"));
        assert!(changes[0]
            .row
            .get()
            .contains("12345678901234567890.123456789"));
    }

    #[test]
    fn errors_name_the_field_and_what_was_expected() {
        let err = decode(&raw(r#"[{"Operation":7,"Item":{}}]"#), "Data.changes").unwrap_err();
        assert_eq!(err.field, "Data.changes[0].Operation");
        assert!(err.expected.contains("got 7"), "{err}");

        let err = decode(&raw(r#"[{"Operation":0}]"#), "Data.changes").unwrap_err();
        assert_eq!(err.field, "Data.changes[0].Item");

        let err = decode(&raw(r#"[{"Operation":0,"Item":[1]}]"#), "Data.changes").unwrap_err();
        assert!(err.expected.contains("got an array"), "{err}");

        let err = decode(&raw("42"), "Data.changes").unwrap_err();
        assert!(err.expected.contains("got a number"), "{err}");

        let err = decode(&raw(r#""not json""#), "Data.changes").unwrap_err();
        assert_eq!(err.field, "Data.changes");
        assert!(
            err.expected
                .ends_with("got a string that does not hold JSON"),
            "{err}"
        );

        let err = decode(&raw(r#""{\"a\":1}""#), "Data.changes").unwrap_err();
        assert!(
            err.expected.ends_with("got a string holding an object"),
            "{err}"
        );

        let err = decode(&raw("[1]"), "Data.changes").unwrap_err();
        assert_eq!(err.field, "Data.changes[0]");
    }

    #[test]
    fn endless_string_wrapping_is_refused() {
        let mut text = serde_json::to_string("x").unwrap();
        for _ in 0..10 {
            text = serde_json::to_string(&text).unwrap();
        }
        assert!(decode(&raw(&text), "Data.changes").is_err());
    }

    #[test]
    fn operation_names_are_accepted() {
        let changes = decode(&raw(r#"[{"Operation":"Update","Item":{"Id":1}}]"#), "c").unwrap();
        assert_eq!(changes[0].operation, Operation::Update);
    }

    #[test]
    fn an_empty_batch_is_fine() {
        assert!(decode(&raw("[]"), "c").unwrap().is_empty());
        assert!(decode(&raw(r#""[]""#), "c").unwrap().is_empty());
    }
}
