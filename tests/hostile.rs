//! Hostile input: whatever bytes arrive, nothing panics, every refusal names the field and
//! what was expected, and refusing a huge body costs bounded memory.
//!
//! The first half are property tests over the library (no server): invocation bodies, the
//! three `changes` encodings, route templates and targets. The second half sends handcrafted
//! bodies through the real server: deep nesting, huge numbers, broken Unicode, bodies at and
//! far over `RowcastMaxBodyBytes`, and the memory of the real binary while it refuses one.
//!
//! `PROPTEST_CASES` overrides the number of cases per property (256 by default).

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    closed_port, invocation_text, start_emulator, Encoding, Stack, ENCODINGS, REPO_ROOT, WAIT,
};
use proptest::collection::vec;
use proptest::prelude::*;
use rowcast::change::{decode, DecodeError, Operation};
use rowcast::invocation::{HttpRequestData, InvocationRequest};
use rowcast::route::{RouteError, Target, Template};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

/// Cases per property: `PROPTEST_CASES` when set, else 256, which keeps the whole file to a
/// few seconds in a debug build.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Characters that stress JSON string handling more often than uniform chance would.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>(),
        1 => prop::sample::select(vec![
            '"', '\\', '/', '\u{0}', '\u{8}', '\u{c}', '\n', '\r', '\t', '\u{1f}', '\u{7f}',
            '\u{2028}', '\u{feff}', 'é', 'ß', '中', '😀', '{', '}', '[', ']', ':', ',', ' ',
        ]),
    ]
}

/// A string and the JSON text of it, each character written raw, as a short escape or as
/// a `\u` escape (surrogate pairs above the BMP, hex in either case), chosen at random.
fn json_string() -> impl Strategy<Value = (String, String)> {
    vec((tricky_char(), 0u8..4), 0..10).prop_map(|chars| {
        let mut value = String::new();
        let mut text = String::from("\"");
        for (c, style) in chars {
            value.push(c);
            write_char(&mut text, c, style);
        }
        text.push('"');
        (value, text)
    })
}

fn write_char(out: &mut String, c: char, style: u8) {
    let short = match c {
        '"' => Some("\\\""),
        '\\' => Some("\\\\"),
        '/' => Some("\\/"),
        '\u{8}' => Some("\\b"),
        '\u{c}' => Some("\\f"),
        '\n' => Some("\\n"),
        '\r' => Some("\\r"),
        '\t' => Some("\\t"),
        _ => None,
    };
    let raw_allowed = c != '"' && c != '\\' && c >= '\u{20}';
    match (style, short) {
        (0, _) if raw_allowed => out.push(c),
        (0 | 1, Some(short)) => out.push_str(short),
        (1, None) if raw_allowed => out.push(c),
        _ => {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                if style == 3 {
                    out.push_str(&format!("\\u{unit:04X}"));
                } else {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
}

/// JSON text of a scalar column: a string, an integer of any size, a float, a decimal with
/// or without an exponent (out of `f64` range too), a boolean or null.
fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => json_string().prop_map(|(_, text)| text),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => "-?[1-9][0-9]{0,60}",
        1 => any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        1 => "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,7})?",
        1 => prop::sample::select(vec!["true", "false", "null"]).prop_map(str::to_owned),
    ]
}

/// JSON whitespace, mostly none.
fn ws() -> impl Strategy<Value = String> {
    prop_oneof![3 => Just(String::new()), 1 => "[ \t\r\n]{1,3}"]
}

/// A row object's exact text: arbitrary keys (duplicates too) and scalar values, with
/// whitespace between the tokens.
fn row_text() -> impl Strategy<Value = String> {
    let column = (ws(), json_string(), ws(), ws(), scalar(), ws());
    (vec(column, 0..6), ws()).prop_map(|(columns, end)| {
        let body: Vec<String> = columns
            .into_iter()
            .map(|(a, (_, key), b, c, value, d)| format!("{a}{key}{b}:{c}{value}{d}"))
            .collect();
        let body = body.join(",");
        format!("{{{body}{end}}}")
    })
}

/// Any JSON value, nested a few levels, as text.
fn json_value() -> impl Strategy<Value = String> {
    scalar().prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
            vec((json_string(), inner), 0..4).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|((_, key), value)| format!("{key}:{value}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// One change as generated: the operation and the exact row text.
#[derive(Debug, Clone)]
struct GenChange {
    operation: Operation,
    row: String,
    text: String,
}

/// One element of the trigger's array, written the ways a host may write it: `Operation`
/// as a number or a name in any case, either field name spelled `Operation` or
/// `operation`, the two in either order, maybe with a field rowcast ignores.
fn change() -> impl Strategy<Value = GenChange> {
    (
        0u8..=2,
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(scalar()),
        row_text(),
        ws(),
    )
        .prop_map(
            |(op, op_style, lower_op, lower_item, item_first, extra, row, pad)| {
                let (operation, name) = match op {
                    0 => (Operation::Insert, "insert"),
                    1 => (Operation::Update, "update"),
                    _ => (Operation::Delete, "delete"),
                };
                let op_value = match op_style {
                    0 => op.to_string(),
                    1 => format!("\"{name}\""),
                    _ => format!("\"{}\"", name.to_ascii_uppercase()),
                };
                let op_field = format!(
                    "\"{}\":{pad}{op_value}",
                    if lower_op { "operation" } else { "Operation" }
                );
                let item_field = format!(
                    "\"{}\":{pad}{row}",
                    if lower_item { "item" } else { "Item" }
                );
                let mut fields = if item_first {
                    vec![item_field, op_field]
                } else {
                    vec![op_field, item_field]
                };
                if let Some(extra) = extra {
                    fields.insert(1, format!("\"ChangeVersion\":{extra}"));
                }
                GenChange {
                    operation,
                    row,
                    text: format!("{{{pad}{}{pad}}}", fields.join(",")),
                }
            },
        )
}

/// A batch and its array text.
fn batch() -> impl Strategy<Value = (Vec<GenChange>, String)> {
    (vec(change(), 0..6), ws()).prop_map(|(changes, pad)| {
        let items: Vec<&str> = changes.iter().map(|c| c.text.as_str()).collect();
        let text = format!("[{pad}{}{pad}]", items.join(&format!(",{pad}")));
        (changes, text)
    })
}

/// Fragments that look like parts of an invocation, to glue into near-JSON.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "{", "}", "[", "]", ",", ":", "\"", "\\", "\\\"", "\"Data\"", "\"Metadata\"",
            "\"changes\"", "\"Changes\"", "\"req\"", "\"Operation\"", "\"operation\"",
            "\"Item\"", "\"Headers\"", "\"Query\"", "\"Url\"", "\"Method\"", "0", "1", "2", "7",
            "-1", "1e999999", "18446744073709551616", "null", "true", "\"insert\"",
            "\"\\ud800\"", "\"\\udc00\\ud800\"", "\"\\u00\"", "\"[]\"", "\"[\"", "\"\\\"[]\\\"\"",
            "\"x\"", " ", "\n", "\u{0}", "\u{ff}",
        ])
        .prop_map(str::to_owned),
        1 => scalar(),
        1 => json_string().prop_map(|(_, text)| text),
    ]
}

fn json_ish() -> impl Strategy<Value = String> {
    vec(token(), 0..40).prop_map(|tokens| tokens.concat())
}

/// A well-formed invocation of a random batch in a random encoding, then damaged by a few
/// byte edits: inserted fragments, deletions, overwritten bytes.
fn mutated_invocation() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), 0u8..3, token(), any::<u8>());
    (batch(), 0usize..3, vec(edit, 1..5)).prop_map(|((_, array), encoding, edits)| {
        let mut body = invocation_text("changes", &array, ENCODINGS[encoding]).into_bytes();
        for (at, kind, fragment, byte) in edits {
            let i = at.index(body.len() + 1);
            match kind {
                0 => {
                    body.splice(i..i, fragment.into_bytes());
                }
                1 => {
                    let end = (i + 1 + usize::from(byte % 8)).min(body.len());
                    body.drain(i.min(end)..end);
                }
                _ => {
                    if i < body.len() {
                        body[i] = byte;
                    }
                }
            }
        }
        body
    })
}

// ---------------------------------------------------------------------------------------
// Checks shared by the properties
// ---------------------------------------------------------------------------------------

/// A refusal must say where and what was expected.
fn assert_named(err: &DecodeError, input: &[u8]) {
    let input = String::from_utf8_lossy(input);
    assert!(!err.field.is_empty(), "no field for {input:?}: {err:?}");
    assert!(
        err.expected.contains("expected"),
        "{:?} does not say what was expected, for {input:?}",
        err.expected
    );
}

/// Runs a body through everything the server does with one before delivery: parse it,
/// find the `changes` binding and decode it, and read a `req` binding as negotiate would.
fn exercise_body(body: &[u8]) {
    let request = match InvocationRequest::parse(body) {
        Ok(request) => request,
        Err(err) => {
            assert_eq!(err.field, "body", "{err}");
            assert_named(&err, body);
            return;
        }
    };
    match request.binding("changes") {
        Ok(changes) => match decode(changes, "Data.changes") {
            Ok(changes) => {
                for change in changes {
                    assert!(change.row.get().starts_with('{'), "{}", change.row);
                }
            }
            Err(err) => {
                assert!(err.field.starts_with("Data.changes"), "{err}");
                assert_named(&err, body);
            }
        },
        Err(err) => assert_named(&err, body),
    }
    if let Ok(req) = request.binding("req") {
        if let Err(err) = HttpRequestData::from_binding(req, "req") {
            assert_eq!(err.field, "Data.req", "{err}");
            assert_named(&err, body);
        }
    }
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("generated text is JSON")
}

/// The three encodings of one array value, as `changes` would hold them.
fn encoded(array: &str, encoding: Encoding) -> String {
    match encoding {
        Encoding::Array => array.to_owned(),
        Encoding::String => serde_json::to_string(array).unwrap(),
        Encoding::DoubleString => {
            serde_json::to_string(&serde_json::to_string(array).unwrap()).unwrap()
        }
    }
}

/// Template text that mixes literals, escaped braces, stray braces and columns.
fn template_ish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => "[a-zA-Z0-9 _.:-]{1,4}",
        1 => prop::sample::select(vec![
            "{", "}", "{{", "}}", "{Id}", "{ Name }", "{}", "{ }", "{a{b}", "{é}", "{😀}",
            ":", "\u{0}", "\u{2003}",
        ])
        .prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
    ];
    vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

/// Text for a target: one of the kinds (in any case, with stray spaces) and a template.
fn target_ish() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec![
        "all", " ALL ", "user:", "User :", " group:", "GROUP: ", "room:", "user", "",
    ]);
    (kind, template_ish()).prop_map(|(kind, template)| {
        if kind.trim().eq_ignore_ascii_case("all") {
            kind.to_owned()
        } else {
            format!("{kind}{template}")
        }
    })
}

/// Columns that templates and rows share, so lookups hit as often as they miss.
const COLUMNS: [&str; 6] = ["Id", "id", "Name", "Owner", "é", "a b"];

/// A row whose keys are mostly the shared columns, holding any value.
fn row_with_columns() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        3 => prop::sample::select(COLUMNS.to_vec()).prop_map(|k| format!("\"{k}\"")),
        1 => json_string().prop_map(|(_, text)| text),
    ];
    vec((key, json_value()), 0..5).prop_map(|members| {
        let members: Vec<String> = members
            .into_iter()
            .map(|(key, value)| format!("{key}:{value}"))
            .collect();
        format!("{{{}}}", members.join(","))
    })
}

/// A template over the shared columns.
fn column_template() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        1 => "[a-z0-9:_-]{1,3}",
        1 => prop::sample::select(COLUMNS.to_vec()).prop_map(|c| format!("{{{c}}}")),
    ];
    vec(piece, 1..4).prop_map(|pieces| pieces.concat())
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes never panic the parser or the decoder, and every refusal is named.
    #[test]
    fn arbitrary_bytes_are_parsed_or_refused_by_name(body in vec(any::<u8>(), 0..512)) {
        exercise_body(&body);
    }

    /// Near-JSON built from invocation-shaped fragments, alone and as the `changes` value,
    /// never panics, and every refusal is named.
    #[test]
    fn json_ish_bodies_are_parsed_or_refused_by_name(text in json_ish()) {
        exercise_body(text.as_bytes());
        for wrapped in [
            format!(r#"{{"Data":{{"changes":{text}}}}}"#),
            format!(r#"{{"Data":{{"changes":{}}}}}"#, serde_json::to_string(&text).unwrap()),
            format!(r#"{{"Data":{{"changes":[{{"Operation":0,"Item":{text}}}]}}}}"#),
            format!(r#"{{"Data":{{"changes":[{{"Operation":{text},"Item":{{}}}}]}}}}"#),
            format!(r#"{{"Data":{{"req":{text}}}}}"#),
        ] {
            exercise_body(wrapped.as_bytes());
        }
    }

    /// Valid invocations damaged by a few byte edits never panic, and every refusal is named.
    #[test]
    fn damaged_invocations_are_parsed_or_refused_by_name(body in mutated_invocation()) {
        exercise_body(&body);
    }

    /// Any JSON value, and any string, as `changes` decodes or is refused on `Data.changes`.
    #[test]
    fn any_changes_value_decodes_or_is_refused_by_name(
        value in json_value(),
        (_, string) in json_string(),
        encoding in 0usize..3,
    ) {
        for text in [encoded(&value, ENCODINGS[encoding]), string] {
            if let Err(err) = decode(&raw(&text), "Data.changes") {
                prop_assert!(err.field.starts_with("Data.changes"), "{}", err);
                assert_named(&err, text.as_bytes());
            }
        }
    }

    /// A valid batch decodes to the same operations and byte-identical rows in each of the
    /// three encodings, through the whole invocation body.
    #[test]
    fn every_encoding_decodes_to_the_same_batch((changes, array) in batch()) {
        for encoding in ENCODINGS {
            let body = invocation_text("changes", &array, encoding);
            let request = InvocationRequest::parse(body.as_bytes())
                .unwrap_or_else(|err| panic!("{encoding:?} {body}: {err}"));
            let decoded = decode(request.binding("changes").unwrap(), "Data.changes")
                .unwrap_or_else(|err| panic!("{encoding:?} {body}: {err}"));
            prop_assert_eq!(decoded.len(), changes.len());
            for (got, want) in decoded.iter().zip(&changes) {
                prop_assert_eq!(got.operation, want.operation, "{:?}", encoding);
                prop_assert_eq!(got.row.get(), want.row.as_str(), "{:?}", encoding);
            }
        }
    }

    /// Any template text parses or is refused with a reason, quoting the template as
    /// written; targets built from it do the same.
    #[test]
    fn any_template_parses_or_is_refused_with_a_reason(
        text in prop_oneof![any::<String>(), template_ish()],
        target in target_ish(),
    ) {
        match Template::parse(&text) {
            Ok(template) => prop_assert!(!template.to_string().is_empty()),
            Err(RouteError::Template { template, reason }) => {
                prop_assert_eq!(template, text.clone());
                prop_assert!(!reason.is_empty());
            }
            Err(other) => prop_assert!(false, "{:?}: not a template error: {}", text, other),
        }
        for text in [target, format!("user:{text}"), format!("group:{text}"), text] {
            if let Err(err) = Target::parse(&text) {
                prop_assert!(err.to_string().starts_with("invalid "), "{}", err);
            }
        }
    }

    /// A template of literals only, braces escaped, renders to the literal text over any row,
    /// even one that is not an object.
    #[test]
    fn literal_templates_render_to_themselves(
        literal in vec(tricky_char(), 1..12).prop_map(String::from_iter),
        row in prop_oneof![row_text(), json_value()],
    ) {
        let escaped = literal.replace('{', "{{").replace('}', "}}");
        let template = Template::parse(&escaped).unwrap();
        prop_assert!(!template.uses_columns());
        prop_assert_eq!(template.render(&raw(&row)).unwrap(), literal);
        prop_assert_eq!(template.to_string(), escaped);
    }

    /// Rendering a column template over any row, object or not, answers without panicking,
    /// and a user or group target never yields an empty address.
    #[test]
    fn rendering_over_any_row_never_panics(
        template in column_template(),
        row in prop_oneof![3 => row_with_columns(), 1 => row_text(), 1 => json_value()],
    ) {
        let row = raw(&row);
        let parsed = Template::parse(&template).unwrap();
        if let Err(err) = parsed.render(&row) {
            prop_assert!(!err.to_string().is_empty());
        }
        for kind in ["user", "group"] {
            let target = Target::parse(&format!("{kind}:{template}")).unwrap();
            match target.address(&row) {
                Ok(address) => prop_assert!(address.to_string().len() > kind.len() + 1),
                Err(err) => prop_assert!(!err.to_string().is_empty()),
            }
        }
    }

    /// A string column renders as its decoded value, whatever escapes the row used.
    #[test]
    fn a_string_column_renders_as_its_value(
        key in "[A-Za-z_][A-Za-z0-9_]{0,8}",
        (value, text) in json_string(),
        before in row_text(),
    ) {
        // Another column first, under a name the template does not use.
        let others = before.trim_start_matches('{').trim_end_matches('}').trim();
        let row = if others.is_empty() {
            format!("{{\"{key}\":{text}}}")
        } else {
            format!("{{\"{key}\":{text},\"zz_{key}\":{{{others}}}}}")
        };
        let template = Template::parse(&format!("{{{key}}}")).unwrap();
        prop_assert_eq!(template.render(&raw(&row)).unwrap(), value);
    }

    /// Whatever parses as a target prints back as text that parses to the same target.
    #[test]
    fn targets_round_trip_through_display(text in target_ish()) {
        if let Ok(target) = Target::parse(&text) {
            let shown = target.to_string();
            prop_assert_eq!(Target::parse(&shown), Ok(target), "{:?} shown as {:?}", text, shown);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// An element that is an object but whose `Operation` cannot be read as JSON at all (a
    /// number out of `f64` range, a lone surrogate, nesting past the parser's limit, the
    /// field given twice) should be refused on that `Operation`, listing the valid values.
    #[test]
    fn an_unreadable_operation_is_refused_on_the_operation(
        operation in prop_oneof![
            "-?[1-9][0-9]{0,3}(\\.[0-9]{1,3})?[eE]\\+?[4-9][0-9]{3,5}",
            "\"x?\\\\ud[89ab][0-9a-f]{2}x?\"",
            (129usize..400).prop_map(|depth| format!("{}0{}", "[".repeat(depth), "]".repeat(depth))),
            (0u8..=2).prop_map(|op| format!("{op},\"Operation\":{op}")),
        ],
        index in 0usize..3,
    ) {
        let good = r#"{"Operation":0,"Item":{"Id":1}}"#;
        let mut items = vec![good.to_owned(); index];
        items.push(format!(r#"{{"Operation":{operation},"Item":{{"Id":1}}}}"#));
        let text = format!("[{}]", items.join(","));
        let err = decode(&raw(&text), "Data.changes").unwrap_err();
        prop_assert_eq!(err.field, format!("Data.changes[{index}].Operation"), "{}", err.expected);
        prop_assert!(
            err.expected.contains("0 (insert), 1 (update) or 2 (delete)"),
            "{}",
            err.expected
        );
    }
}

// ---------------------------------------------------------------------------------------
// Through the real server
// ---------------------------------------------------------------------------------------

const ROUTES: &str = r#"{"sql-changes":{"table":"dbo.Users"}}"#;

async fn stack(settings: &[(&str, &str)]) -> Stack {
    let mut all = vec![("WebPubSubHub", "h"), ("RowcastRoutes", ROUTES)];
    all.extend_from_slice(settings);
    Stack::start(&all).await
}

/// Posts raw bytes (not necessarily UTF-8) and returns the status and the answer's text.
async fn post_bytes(stack: &Stack, body: Vec<u8>) -> (u16, String) {
    let response = tokio::time::timeout(
        WAIT,
        stack
            .http
            .post(format!("http://{}/sql-changes", stack.handler_addr))
            .header("content-type", "application/json")
            .body(body)
            .send(),
    )
    .await
    .expect("the handler answered in time")
    .expect("the handler answered");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Checks a 400 whose error names a field starting with `field` and whose message contains
/// each of `expected`; returns the message.
fn assert_refused(what: &str, status: u16, text: &str, field: &str, expected: &[&str]) -> String {
    assert_eq!(status, 400, "{what}: {}", short(text));
    let answer: Value = serde_json::from_str(text)
        .unwrap_or_else(|_| panic!("{what}: answer is not JSON: {}", short(text)));
    let named = answer["error"]["field"].as_str().unwrap_or_default();
    assert!(
        named.starts_with(field),
        "{what}: field {named:?}, not {field:?}: {answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    for part in expected {
        assert!(
            message.contains(part),
            "{what}: message {message:?} lacks {part:?}"
        );
    }
    message.to_owned()
}

fn short(text: &str) -> String {
    text.chars().take(300).collect()
}

/// After whatever came before, the handler still delivers an ordinary batch.
async fn assert_still_serves(stack: &Stack) {
    let body = invocation_text(
        "changes",
        r#"[{"Operation":0,"Item":{"Id":1}}]"#,
        Encoding::DoubleString,
    );
    let (status, text) = stack.invoke_text("sql-changes", body).await;
    assert_eq!(status, 200, "{text}");
}

/// Deep nesting where the changes array or the body should be, balanced or not, is a 400
/// naming the place, never a stack overflow.
#[tokio::test]
async fn deeply_nested_changes_are_refused_by_name() {
    let stack = stack(&[]).await;
    let depth = 100_000;
    let open = "[".repeat(depth);
    let balanced = format!("{open}{}", "]".repeat(depth));
    let objects = "{\"a\":".repeat(depth);
    let cases: Vec<(&str, String, &str, &[&str])> = vec![
        (
            "unbalanced [ as changes",
            format!(r#"{{"Data":{{"changes":{open}}}}}"#),
            "body",
            &["expected an invocation", "expected value"],
        ),
        (
            "balanced [ as changes",
            format!(r#"{{"Data":{{"changes":{balanced}}}}}"#),
            "Data.changes[0]",
            &["expected an object", "got an array"],
        ),
        (
            "balanced [ in a string as changes",
            format!(
                r#"{{"Data":{{"changes":{}}}}}"#,
                serde_json::to_string(&balanced).unwrap()
            ),
            "Data.changes[0]",
            &["expected an object", "got an array"],
        ),
        (
            "unbalanced {\"a\": as changes",
            format!(r#"{{"Data":{{"changes":{objects}}}}}"#),
            "body",
            &["expected an invocation"],
        ),
        (
            "unbalanced [ in an Item",
            format!(r#"{{"Data":{{"changes":[{{"Operation":0,"Item":{{"a":{open}}}}}]}}}}"#),
            "body",
            &["expected an invocation"],
        ),
        (
            "unbalanced [ in Metadata",
            format!(r#"{{"Data":{{"changes":[]}},"Metadata":{open}}}"#),
            "body",
            &["expected an invocation"],
        ),
        (
            "balanced [ as the whole body",
            balanced.clone(),
            "body",
            &["expected an invocation"],
        ),
    ];
    for (what, body, field, expected) in cases {
        let (status, text) = post_bytes(&stack, body.into_bytes()).await;
        assert_refused(what, status, &text, field, expected);
    }
    assert_still_serves(&stack).await;
}

/// A row nested 100,000 deep is not a row any SQL table produces, and most subscribers'
/// parsers give up on it (or overflow their stack): it should be a 400 on that `Item`.
#[tokio::test]
async fn a_deeply_nested_item_is_refused_by_name() {
    let stack = stack(&[]).await;
    let depth = 100_000;
    let item = format!(
        r#"{{"Id":1,"a":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let array = format!(r#"[{{"Operation":0,"Item":{item}}}]"#);
    for encoding in ENCODINGS {
        let body = invocation_text("changes", &array, encoding);
        let (status, text) = post_bytes(&stack, body.into_bytes()).await;
        assert_refused(
            &format!("{encoding:?}"),
            status,
            &text,
            "Data.changes[0].Item",
            &["expected"],
        );
    }
    assert_still_serves(&stack).await;
}

/// Numbers no `f64` holds (`1e999999`, 10,000 digits) reach subscribers exactly as written,
/// or are refused with a 400 naming the row; nothing panics.
#[tokio::test]
async fn huge_numbers_in_a_row_are_delivered_verbatim() {
    let stack = stack(&[]).await;
    let mut subscriber = stack.subscribe("h", "hostile", &[]).await;
    let digits: String = (0..10_000)
        .map(|i| char::from(b'1' + (i % 9) as u8))
        .collect();
    let rows = [
        r#"{"Id":1,"Huge":1e999999,"Tiny":-1e-999999,"Neg":-0.0E+0}"#.to_owned(),
        format!(r#"{{"Id":2,"Digits":{digits},"Negative":-{digits}}}"#),
        format!(
            r#"{{"Id":3,"Decimal":{digits}.{digits}e-{}}}"#,
            "9".repeat(20)
        ),
    ];
    for row in &rows {
        for encoding in ENCODINGS {
            let array = format!(r#"[{{"Operation":1,"Item":{row}}}]"#);
            let body = invocation_text("changes", &array, encoding);
            let (status, text) = post_bytes(&stack, body.into_bytes()).await;
            if status == 400 {
                assert_refused(
                    "a huge number",
                    status,
                    &text,
                    "Data.changes[0]",
                    &["expected"],
                );
                continue;
            }
            assert_eq!(status, 200, "{encoding:?}: {}", short(&text));
            let message = subscriber.next_message_text().await;
            assert!(
                message.contains(&format!("\"row\":{row}")),
                "{encoding:?}: the row was not delivered verbatim: {}",
                short(&message)
            );
        }
    }
}

/// `Operation` as a number out of range is refused on the `Operation`, saying which numbers
/// are valid.
#[tokio::test]
async fn a_huge_operation_is_refused_on_the_operation() {
    let stack = stack(&[]).await;
    let digits = "9".repeat(10_000);
    for operation in ["1e999999", digits.as_str(), "\"\\ud800\""] {
        let array = format!(r#"[{{"Operation":{operation},"Item":{{"Id":1}}}}]"#);
        let body = invocation_text("changes", &array, Encoding::Array);
        let (status, text) = post_bytes(&stack, body.into_bytes()).await;
        assert_refused(
            &short(operation),
            status,
            &text,
            "Data.changes[0].Operation",
            &["0 (insert), 1 (update) or 2 (delete)"],
        );
    }
}

/// An `Operation` just past `u64` is still read as a number, and refused as one.
#[tokio::test]
async fn an_operation_past_u64_is_refused_on_the_operation() {
    let stack = stack(&[]).await;
    let array = r#"[{"Operation":18446744073709551616,"Item":{"Id":1}}]"#;
    let body = invocation_text("changes", array, Encoding::String);
    let (status, text) = post_bytes(&stack, body.into_bytes()).await;
    assert_refused(
        "2^64",
        status,
        &text,
        "Data.changes[0].Operation",
        &["0 (insert), 1 (update) or 2 (delete)", "got "],
    );
}

/// A lone surrogate escape where rowcast must decode a string (a string layer of
/// `changes`, a binding name) is a 400 that says so.
#[tokio::test]
async fn a_lone_surrogate_in_what_rowcast_decodes_is_refused_naming_it() {
    let stack = stack(&[]).await;
    let cases = [
        (
            "in the string layer of changes",
            r#"{"Data":{"changes":"[{\"Operation\":0,\"Item\":{\"a\":\"\ud800\"}}]"}}"#,
            "Data.changes",
        ),
        (
            "a low surrogate first",
            r#"{"Data":{"changes":"\udc00[]"}}"#,
            "Data.changes",
        ),
        (
            "in a binding name",
            r#"{"Data":{"\ud800":1,"changes":[]}}"#,
            "body",
        ),
    ];
    for (what, body, field) in cases {
        let (status, text) = post_bytes(&stack, body.as_bytes().to_vec()).await;
        let message = assert_refused(what, status, &text, field, &["expected"]);
        eprintln!("{what}: {message}");
        assert!(
            message.contains("surrogate") || message.contains("hex escape"),
            "{what}: {message}"
        );
    }
    assert_still_serves(&stack).await;
}

/// A lone surrogate escape in a row's value is valid JSON syntax and can come from SQL
/// Server's UTF-16 text, so the row is delivered as written rather than refused (a refusal
/// would make the trigger retry the batch until it gives the row up).
#[tokio::test]
async fn a_lone_surrogate_in_a_row_is_delivered_as_written() {
    let stack = stack(&[]).await;
    let array = r#"[{"Operation":0,"Item":{"Id":1,"Name":"\ud800"}}]"#;
    for encoding in ENCODINGS {
        let body = invocation_text("changes", array, encoding);
        let (status, text) = post_bytes(&stack, body.into_bytes()).await;
        assert_eq!(status, 200, "{encoding:?}: {text}");
        assert!(
            text.contains("1 changes, 1 messages"),
            "{encoding:?}: {text}"
        );
    }
}

/// A `{Column}` whose string holds a lone surrogate is reported as what it is, not as an
/// object or array.
#[test]
fn a_lone_surrogate_column_is_not_called_an_object() {
    let target = Target::parse("group:{Name}").unwrap();
    let err = target.address(&raw(r#"{"Name":"\ud800"}"#)).unwrap_err();
    assert!(!err.to_string().contains("object or array"), "{err}");
}

/// Raw bytes that are not UTF-8 in any part rowcast reads are a 400 that says the text is
/// not valid Unicode.
#[tokio::test]
async fn invalid_utf8_in_the_body_is_refused_naming_it() {
    let stack = stack(&[]).await;
    let cases: [(&str, &[u8], &[u8]); 4] = [
        (
            "in a row value",
            br#"{"Data":{"changes":[{"Operation":0,"Item":{"a":""#,
            br#""}}]}}"#,
        ),
        (
            "in a row key",
            br#"{"Data":{"changes":[{"Operation":0,"Item":{""#,
            br#"":1}}]}}"#,
        ),
        (
            "in the string layer",
            br#"{"Data":{"changes":"[{"#,
            br#"]"}}"#,
        ),
        (
            "in a binding name",
            br#"{"Data":{""#,
            br#"":1,"changes":[]}}"#,
        ),
    ];
    for (what, before, after) in cases {
        for bad in [&b"\xff"[..], b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x9f\x98"] {
            let body = [before, bad, after].concat();
            let (status, text) = post_bytes(&stack, body).await;
            assert_refused(
                what,
                status,
                &text,
                "body",
                &["expected an invocation", "invalid unicode code point"],
            );
        }
    }
    assert_still_serves(&stack).await;
}

/// `Metadata` is skipped, not decoded, so bytes that are not UTF-8 there do not stop a
/// batch whose `Data` is sound.
#[tokio::test]
async fn invalid_utf8_in_the_ignored_metadata_does_not_stop_the_batch() {
    let stack = stack(&[]).await;
    let body = br#"{"Data":{"changes":[]},"Metadata":{"sys":""#
        .iter()
        .chain(b"\xff")
        .chain(br#""}}"#)
        .copied()
        .collect();
    let (status, text) = post_bytes(&stack, body).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("0 changes"), "{text}");
}

/// A missing binding's message lists the bindings found, but stays readable when a body
/// brings thousands of them.
#[tokio::test]
async fn a_missing_binding_message_stays_short() {
    let stack = stack(&[]).await;
    let names: Vec<String> = (0..50_000).map(|i| format!("\"binding{i}\":1")).collect();
    let body = format!(r#"{{"Data":{{{}}}}}"#, names.join(","));
    let (status, text) = post_bytes(&stack, body.into_bytes()).await;
    let message = assert_refused(
        "50,000 bindings",
        status,
        &text,
        "Data.changes",
        &["missing"],
    );
    assert!(
        message.len() < 4096,
        "the message is {} bytes long",
        message.len()
    );
}

// ---------------------------------------------------------------------------------------
// Size limits and memory
// ---------------------------------------------------------------------------------------

/// 100 MB, over the default 64 MiB limit.
const HUGE: usize = 100_000_000;

/// What an HTTP answer read off a raw socket says.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    body: String,
    elapsed: Duration,
}

/// Streams a `total`-byte body as HTTP/1.1 chunks made on the fly (never held whole) to
/// `POST /sql-changes`, reading the answer while still sending: a handler that refuses
/// early may answer and close long before the last chunk.
async fn post_chunked(addr: SocketAddr, total: usize) -> RawAnswer {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        let head = format!(
            "POST /sql-changes HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        writer.write_all(head.as_bytes()).await?;
        let prefix = br#"{"Data":{"changes":[{"Operation":0,"Item":{"Id":1,"Pad":""#;
        let mut sent = 0;
        let chunk = |data: &[u8]| {
            let mut frame = format!("{:x}\r\n", data.len()).into_bytes();
            frame.extend_from_slice(data);
            frame.extend_from_slice(b"\r\n");
            frame
        };
        writer.write_all(&chunk(prefix)).await?;
        sent += prefix.len();
        let block = vec![b'x'; 64 * 1024];
        let full = chunk(&block);
        while sent < total {
            let n = block.len().min(total - sent);
            if n == block.len() {
                writer.write_all(&full).await?;
            } else {
                writer.write_all(&chunk(&block[..n])).await?;
            }
            sent += n;
        }
        writer.write_all(b"0\r\n\r\n").await?;
        Ok::<usize, std::io::Error>(sent)
    });

    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if complete_answer(&answer) {
                break;
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    sending.abort();
    assert!(read.is_ok(), "no answer within {WAIT:?}");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    RawAnswer {
        status,
        body,
        elapsed,
    }
}

/// Whether `answer` holds a whole response with a `content-length` body.
fn complete_answer(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .is_some_and(|length| body.len() >= length)
}

/// A 100 MB chunked body is refused with 413 within seconds, and the handler goes on
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_body_is_refused_quickly_and_the_handler_keeps_serving() {
    let stack = stack(&[]).await;
    let answer = post_chunked(stack.handler_addr, HUGE).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.elapsed < WAIT, "{answer:?}");
    eprintln!("100 MB refused in {:?}: {:?}", answer.elapsed, answer.body);
    assert!(answer.body.contains("RowcastMaxBodyBytes"), "{answer:?}");
    assert_still_serves(&stack).await;
}

/// With `RowcastMaxBodyBytes` at 64 KiB, a body of exactly 64 KiB (and one just under) is
/// delivered, and one byte more is a 413.
#[tokio::test]
async fn a_body_at_a_small_limit_passes_and_one_byte_more_is_refused() {
    const LIMIT: usize = 64 * 1024;
    let stack = stack(&[("RowcastMaxBodyBytes", "65536")]).await;
    let mut subscriber = stack.subscribe("h", "hostile", &[]).await;
    let body_of = |size: usize| {
        let empty = invocation_text(
            "changes",
            r#"[{"Operation":0,"Item":{"Id":1,"Pad":""}}]"#,
            Encoding::Array,
        );
        let pad = "p".repeat(size - empty.len());
        let body = invocation_text(
            "changes",
            &format!(r#"[{{"Operation":0,"Item":{{"Id":1,"Pad":"{pad}"}}}}]"#),
            Encoding::Array,
        );
        assert_eq!(body.len(), size);
        (body, pad)
    };
    for size in [LIMIT - 1, LIMIT] {
        let (body, pad) = body_of(size);
        let (status, text) = post_bytes(&stack, body.into_bytes()).await;
        assert_eq!(status, 200, "{size} bytes: {}", short(&text));
        let message = subscriber.next_message_text().await;
        assert!(message.contains(&pad), "{size} bytes: row not delivered");
    }
    let (body, _) = body_of(LIMIT + 1);
    let (status, text) = post_bytes(&stack, body.into_bytes()).await;
    assert_eq!(status, 413, "{}", short(&text));
    assert_still_serves(&stack).await;
}

/// The real handler binary, killed when dropped.
struct Handler {
    child: Child,
    base: String,
}

impl Handler {
    async fn start(connection: &str, max_body: Option<&str>) -> Handler {
        let port = closed_port().to_string();
        let mut command = Command::new(env!("CARGO_BIN_EXE_handler"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AzureWebJobsScriptRoot", REPO_ROOT)
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", &port)
            .env("WebPubSubConnectionString", connection)
            .env("WebPubSubHub", "h")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(max_body) = max_body {
            command.env("RowcastMaxBodyBytes", max_body);
        }
        let handler = Handler {
            child: command.spawn().expect("the handler binary starts"),
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let deadline = Instant::now() + WAIT;
        while http.get(&handler.base).send().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the handler never answered GET /"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        handler
    }

    fn addr(&self) -> SocketAddr {
        self.base.trim_start_matches("http://").parse().unwrap()
    }

    /// The process's peak resident memory so far, in bytes.
    fn peak_rss(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: usize = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kb * 1024
    }

    async fn deliver_one(&self) {
        let body = invocation_text(
            "changes",
            r#"[{"Operation":0,"Item":{"Id":1}}]"#,
            Encoding::DoubleString,
        );
        let response = reqwest::Client::builder()
            .no_proxy()
            .timeout(WAIT)
            .build()
            .unwrap()
            .post(format!("{}/sql-changes", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MIB: usize = 1024 * 1024;

/// Peak memory allowed beyond the body limit while refusing an oversized body.
const SLACK: usize = 16 * MIB;

/// While the real binary refuses a 100 MB body, its peak resident memory (`VmHWM`) grows by
/// no more than its body limit plus [`SLACK`].
///
/// Why that bound: the body arrives chunked, so its size is known only as it is read, and
/// the handler keeps what it has read until the limit is crossed (axum's `Limited` counts
/// bytes as they arrive; it does not look at a `content-length` up front). So the peak is
/// the limit plus hyper's read buffer, the chunk list and allocator rounding, measured at
/// well under 1 MiB over the limit. A 16 MiB limit plus 16 MiB of slack (32 MiB) is far
/// below the ~95 MiB that holding the whole body would take, so the test tells the two
/// apart with room to spare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_a_100_mb_body_keeps_the_handler_memory_bounded() {
    let emulator = start_emulator().await;
    let limit = 16 * MIB;
    let handler = Handler::start(&emulator.connection_string(), Some(&limit.to_string())).await;
    handler.deliver_one().await;
    let before = handler.peak_rss();

    let answer = post_chunked(handler.addr(), HUGE).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    let after = handler.peak_rss();
    let grown = after.saturating_sub(before);
    eprintln!(
        "peak RSS {} KiB -> {} KiB (+{} KiB) refusing 100 MB in {:?} with a {} MiB limit",
        before / 1024,
        after / 1024,
        grown / 1024,
        answer.elapsed,
        limit / MIB
    );
    assert!(
        grown < limit + SLACK,
        "peak RSS grew by {} MiB refusing the body",
        grown / MIB
    );
    handler.deliver_one().await;
}

/// The same with the default 64 MiB limit: the growth stays within the limit plus the same
/// slack (80 MiB), still below what the whole 100 MB body would take. A refused body costs
/// up to the limit, however large it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_a_100_mb_body_at_the_default_limit_costs_at_most_the_limit() {
    let emulator = start_emulator().await;
    let handler = Handler::start(&emulator.connection_string(), None).await;
    handler.deliver_one().await;
    let before = handler.peak_rss();
    let answer = post_chunked(handler.addr(), HUGE).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    let grown = handler.peak_rss().saturating_sub(before);
    eprintln!(
        "default limit: peak RSS +{} KiB refusing 100 MB in {:?}",
        grown / 1024,
        answer.elapsed
    );
    assert!(grown < 64 * MIB + SLACK, "grew by {} MiB", grown / MIB);
    handler.deliver_one().await;
}
