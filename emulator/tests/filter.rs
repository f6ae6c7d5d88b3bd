//! The OData `filter` of REST sends and of `:addToGroups`/`:removeFromGroups`, end to end:
//! real subscribers with different users and groups, and which of them each filter reaches.
//!
//! Each test sends its filtered messages and then one unfiltered marker to the whole hub.
//! Frames to one connection keep their order, so whatever a subscriber got before the
//! marker is exactly what the filters let through to it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{enc, expect_api_error, expect_silence_all, Subscriber, TestEmulator, API};
use reqwest::Method;
use serde_json::json;

const HUB: &str = "f";

/// The subscribers every filter is tried against.
struct Crowd {
    em: TestEmulator,
    subs: BTreeMap<&'static str, Subscriber>,
}

/// Name, userId (`None` is anonymous) and initial groups of each subscriber. Lengths:
/// alice 5, bob 3, bobby 5, carol 5, o'neil 6.
const PEOPLE: [(&str, Option<&str>, &[&str]); 6] = [
    ("alice", Some("alice"), &["a"]),
    ("bob", Some("bob"), &["b"]),
    ("bobby", Some("bobby"), &[]),
    ("carol", Some("carol"), &["a", "b"]),
    ("oneil", Some("o'neil"), &["a"]),
    ("anon", None, &[]),
];

impl Crowd {
    async fn start() -> Crowd {
        let em = TestEmulator::start().await;
        let mut subs = BTreeMap::new();
        for (name, user, groups) in PEOPLE {
            subs.insert(name, em.subscribe(HUB, user, &[], groups).await);
        }
        em.wait_for_connections(HUB, PEOPLE.len()).await;
        Crowd { em, subs }
    }

    fn id(&self, name: &str) -> String {
        self.subs[name].connection_id.clone()
    }

    /// Sends `tag` as JSON to `path` (no query yet) with `filter` and any `extra` query, and
    /// expects 202.
    async fn send(&self, path: &str, filter: &str, extra: &str, tag: &str) {
        let response = self
            .em
            .rest(
                Method::POST,
                &format!("{path}?{API}&filter={}{extra}", enc(filter)),
            )
            .header("content-type", "application/json")
            .body(json!(tag).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            202,
            "filter {filter:?}: {}",
            response.text().await.unwrap()
        );
    }

    /// Sends the marker and checks that each subscriber received exactly the tags listed for
    /// it in `expected` (in order) before it.
    async fn expect(&mut self, expected: &BTreeMap<&str, Vec<String>>) {
        self.em
            .send_json(&format!("/api/hubs/{HUB}/:send"), &json!("marker"))
            .await;
        for (name, sub) in &mut self.subs {
            let got: Vec<String> = sub
                .data_until(&json!("marker"))
                .await
                .into_iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            let want = expected.get(name).cloned().unwrap_or_default();
            assert_eq!(got, want, "messages that reached {name}");
        }
    }

    /// Ends a test: after the marker, nobody receives anything more.
    async fn expect_quiet(&mut self) {
        expect_silence_all(self.subs.values_mut(), Duration::from_millis(200)).await;
    }
}

/// Runs `cases` (filter, names it must reach) as sends to the whole hub and checks every
/// subscriber.
async fn check_send_to_all(crowd: &mut Crowd, cases: &[(&str, &[&str])]) {
    let mut expected: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (filter, reached) in cases {
        crowd
            .send(&format!("/api/hubs/{HUB}/:send"), filter, "", filter)
            .await;
        for name in *reached {
            expected.entry(name).or_default().push((*filter).to_owned());
        }
    }
    crowd.expect(&expected).await;
}

/// `eq` and `ne` on userId compare exactly; null (anonymous) is unequal to any string.
#[tokio::test]
async fn user_id_eq_and_ne() {
    let mut crowd = Crowd::start().await;
    check_send_to_all(
        &mut crowd,
        &[
            ("userId eq 'alice'", &["alice"]),
            ("userId eq 'Alice'", &[]),
            (
                "userId ne 'alice'",
                &["bob", "bobby", "carol", "oneil", "anon"],
            ),
            ("UserId eq 'carol'", &["carol"]),
            ("userId in ('alice', 'bobby')", &["alice", "bobby"]),
            ("userId gt 'bob'", &["bobby", "carol", "oneil"]),
        ],
    )
    .await;
    crowd.expect_quiet().await;
}

/// `startswith`, `endswith` and `contains` test userId; anonymous connections match none.
#[tokio::test]
async fn string_functions_on_user_id() {
    let mut crowd = Crowd::start().await;
    check_send_to_all(
        &mut crowd,
        &[
            ("startswith(userId, 'bob')", &["bob", "bobby"]),
            ("startswith(userId, 'o')", &["oneil"]),
            ("endswith(userId, 'ol')", &["carol"]),
            ("endswith(userId, 'b')", &["bob"]),
            ("contains(userId, 'o')", &["bob", "bobby", "carol", "oneil"]),
            (
                "contains(userId, '')",
                &["alice", "bob", "bobby", "carol", "oneil"],
            ),
            ("not startswith(userId, 'b')", &["alice", "carol", "oneil"]),
        ],
    )
    .await;
    crowd.expect_quiet().await;
}

/// `tolower`, `toupper`, `trim`, `substring`, `indexof` and `concat` build values that
/// compare like any other; `length(groups)` counts the groups a connection is in, including
/// groups joined over REST. Anonymous connections have a null userId, so only `length(groups)`
/// reaches them.
#[tokio::test]
async fn string_functions_that_build_values() {
    let mut crowd = Crowd::start().await;
    let shouting = crowd.em.subscribe(HUB, Some(" ALICE "), &[], &["a"]).await;
    crowd.subs.insert("shouting", shouting);
    crowd.em.wait_for_connections(HUB, PEOPLE.len() + 1).await;
    check_send_to_all(
        &mut crowd,
        &[
            ("tolower(userId) eq 'alice'", &["alice"]),
            ("tolower(trim(userId)) eq 'alice'", &["alice", "shouting"]),
            ("toupper(userId) eq 'BOB'", &["bob"]),
            ("trim(userId) eq 'ALICE'", &["shouting"]),
            ("substring(userId, 0, 3) eq 'bob'", &["bob", "bobby"]),
            ("substring(userId, 3) eq 'by'", &["bobby"]),
            ("indexof(userId, '''') eq 1", &["oneil"]),
            ("indexof(userId, 'o') eq -1", &["alice", "shouting"]),
            ("concat(userId, '!') eq 'carol!'", &["carol"]),
            ("length(groups) eq 2", &["carol"]),
            ("length(groups) eq 0", &["bobby", "anon"]),
        ],
    )
    .await;

    let path = format!("/api/hubs/{HUB}/users/bobby/groups/c?{API}");
    assert_eq!(crowd.em.status(Method::PUT, &path).await, 200);
    check_send_to_all(&mut crowd, &[("length(groups) eq 0", &["anon"])]).await;
    crowd.expect_quiet().await;
}

/// `length(userId)` compares as an integer with every comparison operator.
#[tokio::test]
async fn length_comparisons() {
    let mut crowd = Crowd::start().await;
    check_send_to_all(
        &mut crowd,
        &[
            ("length(userId) eq 3", &["bob"]),
            ("length(userId) gt 5", &["oneil"]),
            ("length(userId) ge 5", &["alice", "bobby", "carol", "oneil"]),
            ("length(userId) lt 5", &["bob"]),
            ("length(userId) le 3", &["bob"]),
            ("length(userId) ne 5", &["bob", "oneil", "anon"]),
            ("6 eq length(userId)", &["oneil"]),
        ],
    )
    .await;
    crowd.expect_quiet().await;
}

/// `'g' in groups` tests membership, including membership gained over REST after connecting.
#[tokio::test]
async fn in_groups_tests_membership() {
    let mut crowd = Crowd::start().await;
    check_send_to_all(
        &mut crowd,
        &[
            ("'a' in groups", &["alice", "carol", "oneil"]),
            ("'b' in groups", &["bob", "carol"]),
            ("'c' in groups", &[]),
        ],
    )
    .await;

    let path = format!("/api/hubs/{HUB}/users/bobby/groups/c?{API}");
    assert_eq!(crowd.em.status(Method::PUT, &path).await, 200);
    check_send_to_all(&mut crowd, &[("'c' in groups", &["bobby"])]).await;
    crowd.expect_quiet().await;
}

/// `not`, `and`, `or` and parentheses combine with `and` binding tighter than `or`.
#[tokio::test]
async fn not_and_or_and_parentheses() {
    let mut crowd = Crowd::start().await;
    check_send_to_all(
        &mut crowd,
        &[
            ("not ('a' in groups)", &["bob", "bobby", "anon"]),
            ("'a' in groups and 'b' in groups", &["carol"]),
            ("userId eq 'alice' or userId eq 'bob'", &["alice", "bob"]),
            (
                "userId eq 'alice' or userId eq 'bob' and 'b' in groups",
                &["alice", "bob"],
            ),
            (
                "(userId eq 'alice' or userId eq 'bob') and 'b' in groups",
                &["bob"],
            ),
            (
                "not (userId eq 'alice' or 'b' in groups)",
                &["bobby", "oneil", "anon"],
            ),
            (
                "('a' in groups) and not (userId eq 'carol')",
                &["alice", "oneil"],
            ),
            ("true", &["alice", "bob", "bobby", "carol", "oneil", "anon"]),
            ("false", &[]),
        ],
    )
    .await;
    crowd.expect_quiet().await;
}

/// Anonymous connections have a null userId: `eq null` finds them, `ne null` the rest.
#[tokio::test]
async fn null_user_id_for_anonymous_connections() {
    let mut crowd = Crowd::start().await;
    check_send_to_all(
        &mut crowd,
        &[
            ("userId eq null", &["anon"]),
            (
                "userId ne null",
                &["alice", "bob", "bobby", "carol", "oneil"],
            ),
            ("null eq userId and not ('a' in groups)", &["anon"]),
        ],
    )
    .await;
    crowd.expect_quiet().await;
}

/// A quote inside a string literal is written `''`.
#[tokio::test]
async fn doubled_quotes_in_literals() {
    let mut crowd = Crowd::start().await;
    check_send_to_all(
        &mut crowd,
        &[
            ("userId eq 'o''neil'", &["oneil"]),
            ("contains(userId, '''')", &["oneil"]),
            ("startswith(userId, 'o''')", &["oneil"]),
        ],
    )
    .await;
    crowd.expect_quiet().await;
}

/// `connectionId` picks one connection; combined with `excluded` the exclusion still wins.
#[tokio::test]
async fn connection_id_and_excluded_combine() {
    let mut crowd = Crowd::start().await;
    let bob = crowd.id("bob");
    let carol = crowd.id("carol");
    let path = format!("/api/hubs/{HUB}/:send");

    crowd
        .send(&path, &format!("connectionId eq '{bob}'"), "", "one")
        .await;
    crowd
        .send(&path, "'a' in groups", &format!("&excluded={carol}"), "two")
        .await;
    crowd
        .send(
            &path,
            &format!("connectionId eq '{carol}'"),
            &format!("&excluded={carol}"),
            "three",
        )
        .await;

    let mut expected = BTreeMap::new();
    expected.insert("bob", vec!["one".to_owned()]);
    expected.insert("alice", vec!["two".to_owned()]);
    expected.insert("oneil", vec!["two".to_owned()]);
    crowd.expect(&expected).await;
    crowd.expect_quiet().await;
}

/// SendToGroup applies its filter within the group, and SendToUser within the user's
/// connections.
#[tokio::test]
async fn filters_narrow_group_and_user_sends() {
    let mut crowd = Crowd::start().await;
    let second = crowd.em.subscribe(HUB, Some("carol"), &[], &[]).await;
    crowd.subs.insert("carol2", second);
    let carol2 = crowd.id("carol2");

    crowd
        .send(
            &format!("/api/hubs/{HUB}/groups/a/:send"),
            "userId ne 'alice'",
            "",
            "group",
        )
        .await;
    crowd
        .send(
            &format!("/api/hubs/{HUB}/users/carol/:send"),
            &format!("connectionId eq '{carol2}'"),
            "",
            "user",
        )
        .await;
    crowd
        .send(
            &format!("/api/hubs/{HUB}/users/carol/:send"),
            "'b' in groups",
            "",
            "user b",
        )
        .await;

    let mut expected = BTreeMap::new();
    expected.insert("carol", vec!["group".to_owned(), "user b".to_owned()]);
    expected.insert("oneil", vec!["group".to_owned()]);
    expected.insert("carol2", vec!["user".to_owned()]);
    crowd.expect(&expected).await;
    crowd.expect_quiet().await;
}

/// `:addToGroups` with a filter adds only the matching connections, and
/// `:removeFromGroups` with a filter removes only the matching ones.
#[tokio::test]
async fn add_to_groups_and_remove_from_groups_with_a_filter() {
    let mut crowd = Crowd::start().await;

    let filter = "startswith(userId, 'bob') or 'a' in groups and userId ne 'alice'";
    let response = crowd
        .em
        .post_json(
            &format!("/api/hubs/{HUB}/:addToGroups"),
            &json!({ "groups": ["vip", "b"], "filter": filter }),
        )
        .await;
    assert_eq!(response.status(), 200);
    crowd
        .em
        .send_json(&format!("/api/hubs/{HUB}/groups/vip/:send"), &json!("vip"))
        .await;

    let response = crowd
        .em
        .post_json(
            &format!("/api/hubs/{HUB}/:removeFromGroups"),
            &json!({ "groups": ["b"], "filter": "userId eq 'carol' or userId eq null" }),
        )
        .await;
    assert_eq!(response.status(), 200);
    crowd
        .em
        .send_json(&format!("/api/hubs/{HUB}/groups/b/:send"), &json!("b"))
        .await;

    let mut expected = BTreeMap::new();
    for name in ["bob", "bobby"] {
        expected.insert(name, vec!["vip".to_owned(), "b".to_owned()]);
    }
    expected.insert("carol", vec!["vip".to_owned()]);
    expected.insert("oneil", vec!["vip".to_owned(), "b".to_owned()]);
    crowd.expect(&expected).await;
    crowd.expect_quiet().await;
}

/// Filters outside the supported grammar are 400 with a message naming the offending part,
/// on sends and on `:addToGroups`, and nothing is delivered or joined.
#[tokio::test]
async fn unsupported_filters_are_400_naming_the_part() {
    let mut crowd = Crowd::start().await;
    let too_long = format!("userId eq '{}'", "x".repeat(4096));
    let cases: [(&str, &str); 11] = [
        ("year(userId) eq 2020", "year"),
        ("substringof('a', userId)", "substringof"),
        ("userId eq 'a' AND userId eq 'b'", "AND"),
        (
            "substring(userId, 'x') eq 'a'",
            "expected an integer as argument 2 of substring",
        ),
        ("region eq 'eu'", "region"),
        ("userId eq", "end of filter"),
        ("userId eq 'open", "unterminated"),
        ("userId eq 1", "cannot compare"),
        ("userId eq 'a' eq 'b'", "cannot follow another comparison"),
        ("userId # 'a'", "'#'"),
        (&too_long, "longer than 4096"),
    ];
    let sends = [
        format!("/api/hubs/{HUB}/:send"),
        format!("/api/hubs/{HUB}/groups/a/:send"),
        format!("/api/hubs/{HUB}/users/alice/:send"),
    ];
    for (filter, part) in cases {
        for path in &sends {
            let response = crowd
                .em
                .rest(
                    Method::POST,
                    &format!("{path}?{API}&filter={}", enc(filter)),
                )
                .header("content-type", "application/json")
                .body("\"refused\"")
                .send()
                .await
                .unwrap();
            let message = expect_api_error(response, 400, part).await;
            assert!(message.starts_with("invalid filter"), "{message}");
        }
        let response = crowd
            .em
            .post_json(
                &format!("/api/hubs/{HUB}/:addToGroups"),
                &json!({ "groups": ["z"], "filter": filter }),
            )
            .await;
        expect_api_error(response, 400, part).await;
    }

    // None of the refused calls delivered a message or put anyone in group z.
    crowd
        .em
        .send_json(&format!("/api/hubs/{HUB}/groups/z/:send"), &json!("z"))
        .await;
    crowd.expect(&BTreeMap::new()).await;
    let status = crowd
        .em
        .status(Method::HEAD, &format!("/api/hubs/{HUB}/groups/z?{API}"))
        .await;
    assert_eq!(status, 404);
}

/// An empty `filter` parameter is no filter at all.
#[tokio::test]
async fn empty_filter_reaches_everyone() {
    let mut crowd = Crowd::start().await;
    let response = crowd
        .em
        .rest(
            Method::POST,
            &format!("/api/hubs/{HUB}/:send?{API}&filter="),
        )
        .header("content-type", "application/json")
        .body("\"all\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let everyone: BTreeMap<&str, Vec<String>> = PEOPLE
        .iter()
        .map(|(name, _, _)| (*name, vec!["all".to_owned()]))
        .collect();
    crowd.expect(&everyone).await;
}
