//! Every operation of the data-plane REST API (2024-12-01), over real sockets: the status
//! code the swagger gives for success, and the effect seen by real WebSocket subscribers.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    enc, expect_api_error, expect_silence_all, jwt_claims, Subscriber, TestEmulator, API,
};
use reqwest::Method;
use serde_json::{json, Value};

const SILENCE: Duration = Duration::from_millis(200);

/// `path` with the current `api-version` appended.
fn versioned(path: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{API}")
}

/// Sends `text` as text/plain to a send operation and returns the response.
async fn send_text(em: &TestEmulator, path: &str, text: &str) -> reqwest::Response {
    em.rest(Method::POST, &versioned(path))
        .header("content-type", "text/plain")
        .body(text.to_owned())
        .send()
        .await
        .unwrap()
}

/// The status of a body-less REST call to `path`.
async fn call(em: &TestEmulator, method: Method, path: &str) -> u16 {
    em.status(method, &versioned(path)).await
}

/// Sends `marker` to the whole hub, so each subscriber's [`Subscriber::data_until`] shows
/// exactly what reached it before.
async fn mark(em: &TestEmulator, hub: &str, marker: &str) -> Value {
    em.send_json(&format!("/api/hubs/{hub}/:send"), &json!(marker))
        .await;
    json!(marker)
}

/// Expects a `disconnected` system message with `reason`, then a normal close frame.
async fn expect_closed(sub: &mut Subscriber, reason: &str) {
    let frame = sub.next_json().await;
    assert_eq!(frame["type"], "system", "{frame}");
    assert_eq!(frame["event"], "disconnected", "{frame}");
    assert_eq!(frame["message"], reason, "{frame}");
    assert_eq!(sub.closed().await, (1000, reason.to_owned()));
}

/// One page of `ListConnectionsInGroup`.
async fn list_page(em: &TestEmulator, url: &str) -> Value {
    let response = em.rest_url(Method::GET, url).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.unwrap()
}

/// Follows `nextLink` from `first` until the listing ends; returns the page sizes and the
/// `(connectionId, userId)` entries in order.
async fn list_all(em: &TestEmulator, first: &str) -> (Vec<usize>, Vec<(String, Value)>) {
    let mut sizes = Vec::new();
    let mut entries = Vec::new();
    let mut next = Some(format!("{}{first}", em.endpoint()));
    while let Some(url) = next.take() {
        assert!(sizes.len() < 20, "paging does not end");
        let page = list_page(em, &url).await;
        let value = page["value"].as_array().unwrap();
        sizes.push(value.len());
        for item in value {
            entries.push((
                item["connectionId"].as_str().unwrap().to_owned(),
                item["userId"].clone(),
            ));
        }
        next = page["nextLink"].as_str().map(str::to_owned);
        if let Some(link) = &next {
            assert!(
                link.starts_with(&em.endpoint()),
                "nextLink {link} is absolute"
            );
        }
    }
    (sizes, entries)
}

/// `HEAD /api/health` answers 200 without a token.
#[tokio::test]
async fn health_check_is_200() {
    let em = TestEmulator::start().await;
    let response = em
        .http
        .head(format!("{}/api/health", em.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = em
        .http
        .head(format!("{}/api/health?{API}", em.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// SendToAll answers 202 and reaches every connection of the hub as a server message,
/// except the repeated `excluded` ones and connections of other hubs.
#[tokio::test]
async fn send_to_all_reaches_the_hub_except_excluded_connections() {
    let em = TestEmulator::start().await;
    let mut a = em.subscribe("chat", Some("a"), &[], &[]).await;
    let mut b = em.subscribe("chat", None, &[], &["g"]).await;
    let mut c = em.subscribe("chat", Some("c"), &[], &[]).await;
    let mut d = em.subscribe("chat", Some("d"), &[], &[]).await;
    let mut elsewhere = em.subscribe("other", Some("a"), &[], &[]).await;

    let path = format!(
        "/api/hubs/chat/:send?excluded={}&excluded={}",
        c.connection_id, d.connection_id
    );
    let response = em
        .rest(Method::POST, &versioned(&path))
        .header("content-type", "application/json")
        .body(r#"{"k":1,"s":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    for sub in [&mut a, &mut b] {
        let message = sub.next_json().await;
        assert_eq!(
            message,
            json!({
                "type": "message",
                "from": "server",
                "dataType": "json",
                "data": { "k": 1, "s": "x" },
            })
        );
    }
    expect_silence_all([&mut c, &mut d, &mut elsewhere], SILENCE).await;
}

/// `messageTtlSeconds` from 0 to 300 is accepted on all four sends (and the message is
/// delivered); anything else is 400 naming the parameter, and nothing is delivered.
#[tokio::test]
async fn message_ttl_seconds_must_be_0_to_300_on_every_send() {
    let em = TestEmulator::start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &["g"]).await;
    let sends = [
        "/api/hubs/chat/:send".to_owned(),
        "/api/hubs/chat/groups/g/:send".to_owned(),
        "/api/hubs/chat/users/u1/:send".to_owned(),
        format!("/api/hubs/chat/connections/{}/:send", sub.connection_id),
    ];

    for path in &sends {
        for ttl in ["0", "300", "17"] {
            let tag = format!("{path} ttl {ttl}");
            let response = send_text(&em, &format!("{path}?messageTtlSeconds={ttl}"), &tag).await;
            assert_eq!(response.status(), 202, "{tag}");
            assert_eq!(sub.next_data().await, tag.as_str());
        }
        for ttl in ["301", "-1", "ten", "1.5", ""] {
            let response =
                send_text(&em, &format!("{path}?messageTtlSeconds={ttl}"), "refused").await;
            expect_api_error(response, 400, "messageTtlSeconds").await;
        }
    }
    sub.expect_silence(SILENCE).await;
}

/// SendToGroup answers 202 and reaches the group's members, not `excluded` ones and not
/// non-members; JSON subscribers see `from: group` and the group name.
#[tokio::test]
async fn send_to_group_reaches_members_except_excluded() {
    let em = TestEmulator::start().await;
    let mut member = em.subscribe("chat", Some("m1"), &[], &["g"]).await;
    let mut spared = em.subscribe("chat", Some("m2"), &[], &["g"]).await;
    let mut outsider = em.subscribe("chat", Some("n"), &[], &["h"]).await;

    let path = format!(
        "/api/hubs/chat/groups/g/:send?excluded={}",
        spared.connection_id
    );
    assert_eq!(send_text(&em, &path, "hi group").await.status(), 202);

    let message = member.next_json().await;
    assert_eq!(
        message,
        json!({
            "type": "message",
            "from": "group",
            "group": "g",
            "dataType": "text",
            "data": "hi group",
        })
    );
    expect_silence_all([&mut spared, &mut outsider], SILENCE).await;

    // A group nobody is in is still a 202.
    assert_eq!(
        send_text(&em, "/api/hubs/chat/groups/empty/:send", "x")
            .await
            .status(),
        202
    );
}

/// SendToUser answers 202 and reaches every connection of that user, and only them.
#[tokio::test]
async fn send_to_user_reaches_all_of_the_users_connections() {
    let em = TestEmulator::start().await;
    let mut first = em.subscribe("chat", Some("alice"), &[], &[]).await;
    let mut second = em.subscribe("chat", Some("alice"), &[], &[]).await;
    let mut bob = em.subscribe("chat", Some("bob"), &[], &[]).await;
    let mut prefix = em.subscribe("chat", Some("alice2"), &[], &[]).await;

    assert_eq!(
        send_text(&em, "/api/hubs/chat/users/alice/:send", "for alice")
            .await
            .status(),
        202
    );
    for sub in [&mut first, &mut second] {
        let message = sub.next_message().await;
        assert_eq!(message["from"], "server");
        assert_eq!(message["dataType"], "text");
        assert_eq!(message["data"], "for alice");
    }
    expect_silence_all([&mut bob, &mut prefix], SILENCE).await;

    assert_eq!(
        send_text(&em, "/api/hubs/chat/users/nobody/:send", "x")
            .await
            .status(),
        202
    );
}

/// SendToConnection answers 202 and reaches that connection only, even when its user has
/// others; an unknown connection is still 202 (fire and forget).
#[tokio::test]
async fn send_to_connection_reaches_only_that_connection() {
    let em = TestEmulator::start().await;
    let mut target = em.subscribe("chat", Some("u1"), &[], &[]).await;
    let mut sibling = em.subscribe("chat", Some("u1"), &[], &[]).await;

    let response = em
        .rest(
            Method::POST,
            &versioned(&format!(
                "/api/hubs/chat/connections/{}/:send",
                target.connection_id
            )),
        )
        .header("content-type", "application/octet-stream")
        .body(vec![1u8, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let message = target.next_message().await;
    assert_eq!(message["from"], "server");
    assert_eq!(message["dataType"], "binary");
    assert_eq!(message["data"], "AQID");

    // The connection id means nothing in another hub.
    let elsewhere = format!("/api/hubs/other/connections/{}", target.connection_id);
    assert_eq!(
        send_text(&em, &format!("{elsewhere}/:send"), "wrong hub")
            .await
            .status(),
        202
    );
    assert_eq!(call(&em, Method::HEAD, &elsewhere).await, 404);
    assert_eq!(call(&em, Method::DELETE, &elsewhere).await, 204);
    expect_silence_all([&mut target, &mut sibling], SILENCE).await;
    assert_eq!(em.emulator.connection_count("chat"), 2);

    assert_eq!(
        send_text(&em, "/api/hubs/chat/connections/missing/:send", "x")
            .await
            .status(),
        202
    );
}

/// AddConnectionToGroup (PUT, 200) puts a connection in a group so group sends reach it and
/// GroupExists says 200; RemoveConnectionFromGroup (DELETE, 204) takes it out again.
#[tokio::test]
async fn add_and_remove_connection_to_group() {
    let em = TestEmulator::start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;
    let membership = format!("/api/hubs/chat/groups/g/connections/{}", sub.connection_id);

    assert_eq!(
        call(&em, Method::HEAD, "/api/hubs/chat/groups/g").await,
        404
    );
    assert_eq!(call(&em, Method::PUT, &membership).await, 200);
    assert_eq!(
        call(&em, Method::HEAD, "/api/hubs/chat/groups/g").await,
        200
    );
    assert_eq!(
        send_text(&em, "/api/hubs/chat/groups/g/:send", "joined")
            .await
            .status(),
        202
    );
    assert_eq!(sub.next_message().await["group"], "g");

    assert_eq!(call(&em, Method::DELETE, &membership).await, 204);
    assert_eq!(
        call(&em, Method::HEAD, "/api/hubs/chat/groups/g").await,
        404
    );
    send_text(&em, "/api/hubs/chat/groups/g/:send", "left").await;
    let marker = mark(&em, "chat", "after remove").await;
    assert_eq!(sub.data_until(&marker).await, Vec::<Value>::new());

    // Removing again is idempotent; adding a connection that does not exist is 404.
    assert_eq!(call(&em, Method::DELETE, &membership).await, 204);
    assert_eq!(
        call(
            &em,
            Method::PUT,
            "/api/hubs/chat/groups/g/connections/missing"
        )
        .await,
        404
    );
}

/// RemoveConnectionFromAllGroups (DELETE, 204) takes a connection out of every group it
/// was in, and no other connection.
#[tokio::test]
async fn remove_connection_from_all_groups() {
    let em = TestEmulator::start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &["g1", "g2"]).await;
    let mut other = em.subscribe("chat", Some("u2"), &[], &["g1"]).await;

    let path = format!("/api/hubs/chat/connections/{}/groups", sub.connection_id);
    assert_eq!(call(&em, Method::DELETE, &path).await, 204);

    send_text(&em, "/api/hubs/chat/groups/g1/:send", "to g1").await;
    send_text(&em, "/api/hubs/chat/groups/g2/:send", "to g2").await;
    let marker = mark(&em, "chat", "end").await;
    assert_eq!(sub.data_until(&marker).await, Vec::<Value>::new());
    assert_eq!(other.data_until(&marker).await, vec![json!("to g1")]);
    assert_eq!(
        call(&em, Method::HEAD, "/api/hubs/chat/groups/g2").await,
        404
    );
}

/// AddUserToGroup (PUT, 200) covers the user's current connections and the ones it opens
/// later, even when the user had no connection at the time.
#[tokio::test]
async fn add_user_to_group_applies_to_current_and_later_connections() {
    let em = TestEmulator::start().await;
    let mut early = em.subscribe("chat", Some("alice"), &[], &[]).await;
    let mut bob = em.subscribe("chat", Some("bob"), &[], &[]).await;

    assert_eq!(
        call(&em, Method::PUT, "/api/hubs/chat/users/alice/groups/g").await,
        200
    );
    assert_eq!(
        call(&em, Method::PUT, "/api/hubs/chat/users/carol/groups/g").await,
        200
    );
    let mut late = em.subscribe("chat", Some("alice"), &[], &[]).await;
    let mut carol = em.subscribe("chat", Some("carol"), &[], &[]).await;

    assert_eq!(
        send_text(&em, "/api/hubs/chat/groups/g/:send", "to g")
            .await
            .status(),
        202
    );
    for sub in [&mut early, &mut late, &mut carol] {
        let message = sub.next_message().await;
        assert_eq!(
            (message["group"].as_str(), message["data"].as_str()),
            (Some("g"), Some("to g"))
        );
    }
    bob.expect_silence(SILENCE).await;
}

/// RemoveUserFromGroup (204) takes the user's connections out of one group and stops later
/// connections joining it; RemoveUserFromAllGroups (204) does so for every group.
#[tokio::test]
async fn remove_user_from_group_and_from_all_groups() {
    let em = TestEmulator::start().await;
    assert_eq!(
        call(&em, Method::PUT, "/api/hubs/chat/users/alice/groups/g1").await,
        200
    );
    assert_eq!(
        call(&em, Method::PUT, "/api/hubs/chat/users/alice/groups/g2").await,
        200
    );
    let mut first = em.subscribe("chat", Some("alice"), &[], &[]).await;

    assert_eq!(
        call(&em, Method::DELETE, "/api/hubs/chat/users/alice/groups/g1").await,
        204
    );
    let mut second = em.subscribe("chat", Some("alice"), &[], &[]).await;
    send_text(&em, "/api/hubs/chat/groups/g1/:send", "g1").await;
    send_text(&em, "/api/hubs/chat/groups/g2/:send", "g2").await;
    let marker = mark(&em, "chat", "one").await;
    for sub in [&mut first, &mut second] {
        assert_eq!(sub.data_until(&marker).await, vec![json!("g2")]);
    }

    assert_eq!(
        call(&em, Method::DELETE, "/api/hubs/chat/users/alice/groups").await,
        204
    );
    let mut third = em.subscribe("chat", Some("alice"), &[], &[]).await;
    send_text(&em, "/api/hubs/chat/groups/g1/:send", "g1").await;
    send_text(&em, "/api/hubs/chat/groups/g2/:send", "g2").await;
    let marker = mark(&em, "chat", "two").await;
    for sub in [&mut first, &mut second, &mut third] {
        assert_eq!(sub.data_until(&marker).await, Vec::<Value>::new());
    }
    assert_eq!(
        call(&em, Method::HEAD, "/api/hubs/chat/groups/g2").await,
        404
    );
}

/// `:addToGroups` (200) adds every connection to each listed group; `:removeFromGroups`
/// (200) takes them out of the listed groups only; a body that is not the documented shape
/// is 400.
#[tokio::test]
async fn add_to_groups_and_remove_from_groups() {
    let em = TestEmulator::start().await;
    let mut a = em.subscribe("chat", Some("a"), &[], &[]).await;
    let mut b = em.subscribe("chat", None, &[], &[]).await;

    let response = em
        .post_json(
            "/api/hubs/chat/:addToGroups",
            &json!({ "groups": ["g1", "g2"] }),
        )
        .await;
    assert_eq!(response.status(), 200);
    send_text(&em, "/api/hubs/chat/groups/g1/:send", "g1").await;
    send_text(&em, "/api/hubs/chat/groups/g2/:send", "g2").await;
    let marker = mark(&em, "chat", "added").await;
    for sub in [&mut a, &mut b] {
        assert_eq!(
            sub.data_until(&marker).await,
            vec![json!("g1"), json!("g2")]
        );
    }

    let response = em
        .post_json(
            "/api/hubs/chat/:removeFromGroups",
            &json!({ "groups": ["g1"] }),
        )
        .await;
    assert_eq!(response.status(), 200);
    send_text(&em, "/api/hubs/chat/groups/g1/:send", "g1").await;
    send_text(&em, "/api/hubs/chat/groups/g2/:send", "g2").await;
    let marker = mark(&em, "chat", "removed").await;
    for sub in [&mut a, &mut b] {
        assert_eq!(sub.data_until(&marker).await, vec![json!("g2")]);
    }

    for body in [
        json!({ "group": "g1" }),
        json!({ "groups": "g1" }),
        json!(["g1"]),
    ] {
        let response = em.post_json("/api/hubs/chat/:addToGroups", &body).await;
        expect_api_error(response, 400, "groups").await;
    }
}

/// CloseAllConnections (204) sends each connection a `disconnected` message with the
/// reason and a close frame; `excluded` connections stay open and keep receiving.
#[tokio::test]
async fn close_all_connections_spares_excluded() {
    let em = TestEmulator::start().await;
    let mut a = em.subscribe("chat", Some("a"), &[], &[]).await;
    let mut b = em.subscribe("chat", Some("b"), &[], &[]).await;
    let mut kept = em.subscribe("chat", Some("c"), &[], &[]).await;

    let path = format!(
        "/api/hubs/chat/:closeConnections?excluded={}&reason=maintenance",
        kept.connection_id
    );
    assert_eq!(call(&em, Method::POST, &path).await, 204);
    expect_closed(&mut a, "maintenance").await;
    expect_closed(&mut b, "maintenance").await;

    em.wait_for_connections("chat", 1).await;
    assert_eq!(
        call(
            &em,
            Method::HEAD,
            &format!("/api/hubs/chat/connections/{}", a.connection_id)
        )
        .await,
        404
    );
    em.send_json("/api/hubs/chat/:send", &json!("still here"))
        .await;
    assert_eq!(kept.next_data().await, "still here");
}

/// CloseConnection (DELETE, 204) closes one connection with its reason; its user's other
/// connection stays.
#[tokio::test]
async fn close_connection_closes_only_that_connection() {
    let em = TestEmulator::start().await;
    let mut closed = em.subscribe("chat", Some("u1"), &[], &[]).await;
    let mut sibling = em.subscribe("chat", Some("u1"), &[], &[]).await;

    let path = format!(
        "/api/hubs/chat/connections/{}?reason={}",
        closed.connection_id,
        enc("bye now")
    );
    assert_eq!(call(&em, Method::DELETE, &path).await, 204);
    expect_closed(&mut closed, "bye now").await;

    em.wait_for_connections("chat", 1).await;
    em.send_json("/api/hubs/chat/users/u1/:send", &json!("sibling"))
        .await;
    assert_eq!(sibling.next_data().await, "sibling");

    // A reason longer than a close frame can hold is cut in the frame, not in the message.
    let mut third = em.subscribe("chat", Some("u2"), &[], &[]).await;
    let long = "r".repeat(200);
    let path = format!(
        "/api/hubs/chat/connections/{}?reason={long}",
        third.connection_id
    );
    assert_eq!(call(&em, Method::DELETE, &path).await, 204);
    let frame = third.next_json().await;
    assert_eq!(frame["message"], long.as_str());
    let (code, reason) = third.closed().await;
    assert_eq!(code, 1000);
    assert!(
        reason.len() <= 123 && long.starts_with(&reason),
        "close reason {reason:?}"
    );

    // Without a reason the client is still told it was disconnected.
    let path = format!("/api/hubs/chat/connections/{}", sibling.connection_id);
    assert_eq!(call(&em, Method::DELETE, &path).await, 204);
    let frame = sibling.next_json().await;
    assert_eq!(frame["event"], "disconnected");
    assert!(!frame["message"].as_str().unwrap().is_empty());
    assert_eq!(sibling.closed().await.0, 1000);
}

/// CloseGroupConnections (204) closes the group's members except `excluded`; others stay.
#[tokio::test]
async fn close_group_connections_spares_excluded_and_non_members() {
    let em = TestEmulator::start().await;
    let mut member = em.subscribe("chat", Some("m1"), &[], &["g"]).await;
    let mut spared = em.subscribe("chat", Some("m2"), &[], &["g"]).await;
    let mut outsider = em.subscribe("chat", Some("n"), &[], &[]).await;

    let path = format!(
        "/api/hubs/chat/groups/g/:closeConnections?excluded={}&reason=done",
        spared.connection_id
    );
    assert_eq!(call(&em, Method::POST, &path).await, 204);
    expect_closed(&mut member, "done").await;

    em.wait_for_connections("chat", 2).await;
    let marker = mark(&em, "chat", "alive").await;
    assert!(spared.data_until(&marker).await.is_empty());
    assert!(outsider.data_until(&marker).await.is_empty());
}

/// CloseUserConnections (204) closes that user's connections except `excluded`; other
/// users stay.
#[tokio::test]
async fn close_user_connections_spares_excluded_and_other_users() {
    let em = TestEmulator::start().await;
    let mut first = em.subscribe("chat", Some("alice"), &[], &[]).await;
    let mut second = em.subscribe("chat", Some("alice"), &[], &[]).await;
    let mut spared = em.subscribe("chat", Some("alice"), &[], &[]).await;
    let mut bob = em.subscribe("chat", Some("bob"), &[], &[]).await;

    let path = format!(
        "/api/hubs/chat/users/alice/:closeConnections?excluded={}&reason=logout",
        spared.connection_id
    );
    assert_eq!(call(&em, Method::POST, &path).await, 204);
    expect_closed(&mut first, "logout").await;
    expect_closed(&mut second, "logout").await;

    em.wait_for_connections("chat", 2).await;
    let marker = mark(&em, "chat", "alive").await;
    assert!(spared.data_until(&marker).await.is_empty());
    assert!(bob.data_until(&marker).await.is_empty());
    assert_eq!(
        call(&em, Method::HEAD, "/api/hubs/chat/users/alice").await,
        200
    );
}

/// ConnectionExists, GroupExists and UserExists answer 200 or 404 with an empty body, and
/// follow connections as they come and go.
#[tokio::test]
async fn exists_operations_answer_200_or_404() {
    let em = TestEmulator::start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &["g"]).await;
    let connection = format!("/api/hubs/chat/connections/{}", sub.connection_id);

    for (path, expected) in [
        (connection.as_str(), 200),
        ("/api/hubs/chat/connections/nope", 404),
        ("/api/hubs/chat/groups/g", 200),
        ("/api/hubs/chat/groups/nope", 404),
        ("/api/hubs/chat/users/u1", 200),
        ("/api/hubs/chat/users/nope", 404),
        ("/api/hubs/other/users/u1", 404),
    ] {
        let response = em
            .rest(Method::HEAD, &versioned(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "HEAD {path}");
        assert!(
            response.bytes().await.unwrap().is_empty(),
            "HEAD {path} has no body"
        );
    }

    assert_eq!(call(&em, Method::DELETE, &connection).await, 204);
    sub.closed().await;
    em.wait_for_connections("chat", 0).await;
    for path in [
        connection.as_str(),
        "/api/hubs/chat/groups/g",
        "/api/hubs/chat/users/u1",
    ] {
        assert_eq!(
            call(&em, Method::HEAD, path).await,
            404,
            "HEAD {path} after close"
        );
    }
}

/// ListConnectionsInGroup pages with `maxpagesize`, and following `nextLink` until it is
/// absent lists every member exactly once with its userId (null when anonymous). The group
/// name needs percent-encoding, which the links keep.
#[tokio::test]
async fn list_connections_in_group_pages_by_next_link() {
    let em = TestEmulator::start().await;
    let group = enc("room 7/a");
    let mut expected = BTreeSet::new();
    let mut subs = Vec::new();
    for i in 0..7 {
        let user = format!("u{i}");
        let sub = em
            .subscribe(
                "chat",
                (i != 3).then_some(user.as_str()),
                &[],
                &["room 7/a"],
            )
            .await;
        let user = if i == 3 { Value::Null } else { json!(user) };
        expected.insert((sub.connection_id.clone(), user.to_string()));
        subs.push(sub);
    }
    let _outsider = em.subscribe("chat", Some("x"), &[], &["other"]).await;

    let (sizes, entries) = list_all(
        &em,
        &format!("/api/hubs/chat/groups/{group}/connections?{API}&maxpagesize=3"),
    )
    .await;
    assert_eq!(sizes, [3, 3, 1]);
    let listed: BTreeSet<(String, String)> = entries
        .iter()
        .map(|(id, user)| (id.clone(), user.to_string()))
        .collect();
    assert_eq!(listed.len(), entries.len(), "no connection listed twice");
    assert_eq!(listed, expected);

    // Without maxpagesize everything fits on one page.
    let (sizes, _) = list_all(
        &em,
        &format!("/api/hubs/chat/groups/{group}/connections?{API}"),
    )
    .await;
    assert_eq!(sizes, [7]);
}

/// `top` caps the total across pages, a `continuationToken` taken from a `nextLink`
/// resumes after the last listed connection, and out-of-range numbers are 400.
#[tokio::test]
async fn list_connections_in_group_honours_top_and_continuation_token() {
    let em = TestEmulator::start().await;
    let mut all = BTreeSet::new();
    let mut subs = Vec::new();
    for i in 0..7 {
        let sub = em
            .subscribe("chat", Some(&format!("u{i}")), &[], &["g"])
            .await;
        all.insert(sub.connection_id.clone());
        subs.push(sub);
    }

    let (sizes, entries) = list_all(
        &em,
        &format!("/api/hubs/chat/groups/g/connections?{API}&maxpagesize=2&top=5"),
    )
    .await;
    assert_eq!(sizes, [2, 2, 1]);
    let ids: BTreeSet<String> = entries.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), 5);
    assert!(ids.is_subset(&all));

    // Take the token from the first page's link and resume with a larger page.
    let first = list_page(
        &em,
        &format!(
            "{}/api/hubs/chat/groups/g/connections?{API}&maxpagesize=2",
            em.endpoint()
        ),
    )
    .await;
    let link = first["nextLink"].as_str().unwrap();
    let token = link
        .split("continuationToken=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let rest = list_page(
        &em,
        &format!(
            "{}/api/hubs/chat/groups/g/connections?{API}&maxpagesize=50&continuationToken={token}",
            em.endpoint()
        ),
    )
    .await;
    assert!(rest.get("nextLink").is_none(), "{rest}");
    let mut seen: Vec<String> = first["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["connectionId"].as_str().unwrap().to_owned())
        .collect();
    seen.extend(
        rest["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["connectionId"].as_str().unwrap().to_owned()),
    );
    assert_eq!(seen.len(), 7);
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), all);

    let empty = list_page(
        &em,
        &format!(
            "{}/api/hubs/chat/groups/nobody/connections?{API}",
            em.endpoint()
        ),
    )
    .await;
    assert_eq!(empty, json!({ "value": [] }));

    for query in [
        "maxpagesize=0",
        "maxpagesize=201",
        "top=0",
        "top=many",
        "continuationToken=%21%21",
    ] {
        let response = em
            .rest(
                Method::GET,
                &format!("/api/hubs/chat/groups/g/connections?{API}&{query}"),
            )
            .send()
            .await
            .unwrap();
        let name = query.split('=').next().unwrap();
        expect_api_error(response, 400, name).await;
    }
}

/// `:generateToken` (200) returns a token that connects with its userId, roles and groups,
/// and expires after `minutesToExpire`.
#[tokio::test]
async fn generate_token_connects_with_its_user_roles_and_groups() {
    let em = TestEmulator::start().await;
    let query = "userId=alice&role=webpubsub.joinLeaveGroup&role=webpubsub.sendToGroup.room\
                 &group=g1&group=g2&minutesToExpire=5";
    let response = em
        .rest(
            Method::POST,
            &versioned(&format!("/api/hubs/chat/:generateToken?{query}")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let token = body["token"].as_str().unwrap();

    let claims = jwt_claims(token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], format!("{}/client/hubs/chat", em.endpoint()));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );

    let url = format!(
        "{}/client/hubs/chat?access_token={token}",
        em.endpoint().replace("http", "ws")
    );
    let mut sub = Subscriber::connect(&url, Some("json.webpubsub.azure.v1")).await;
    assert_eq!(
        call(&em, Method::HEAD, "/api/hubs/chat/users/alice").await,
        200
    );

    // Its groups: a send to g2 arrives.
    em.send_json("/api/hubs/chat/groups/g2/:send", &json!("to g2"))
        .await;
    assert_eq!(sub.next_message().await["group"], "g2");

    // Its roles: join any group, send to 'room' but not to 'lobby'.
    let ack = sub
        .request_ack(json!({ "type": "joinGroup", "group": "anything" }), 1)
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    let ack = sub
        .request_ack(
            json!({ "type": "sendToGroup", "group": "room", "data": 1 }),
            2,
        )
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    let ack = sub
        .request_ack(
            json!({ "type": "sendToGroup", "group": "lobby", "data": 1 }),
            3,
        )
        .await;
    assert_eq!(ack["error"]["name"], "Forbidden", "{ack}");

    // Without userId the connection is anonymous.
    let response = em
        .rest(Method::POST, &versioned("/api/hubs/chat/:generateToken"))
        .send()
        .await
        .unwrap();
    let token = response.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(jwt_claims(&token).get("sub").is_none());
    let url = format!(
        "{}/client/hubs/chat?access_token={token}",
        em.endpoint().replace("http", "ws")
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        )
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "json.webpubsub.azure.v1".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let connected = futures_util::StreamExt::next(&mut ws)
        .await
        .unwrap()
        .unwrap();
    let connected: Value = serde_json::from_str(connected.to_text().unwrap()).unwrap();
    assert_eq!(connected["event"], "connected");
    assert_eq!(connected["userId"], Value::Null);

    for bad in ["minutesToExpire=0", "minutesToExpire=soon"] {
        let response = em
            .rest(
                Method::POST,
                &versioned(&format!("/api/hubs/chat/:generateToken?{bad}")),
            )
            .send()
            .await
            .unwrap();
        expect_api_error(response, 400, "minutesToExpire").await;
    }
}

/// GrantPermission (PUT, 200), CheckPermission (HEAD, 200/404) and RevokePermission
/// (DELETE, 204) decide whether the client's own `joinGroup` and `leaveGroup` succeed.
#[tokio::test]
async fn join_leave_permission_grant_check_and_revoke() {
    let em = TestEmulator::start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;
    let permission = format!(
        "/api/hubs/chat/permissions/joinLeaveGroup/connections/{}",
        sub.connection_id
    );
    let on_g = format!("{permission}?targetName=g");

    assert_eq!(call(&em, Method::HEAD, &on_g).await, 404);
    let ack = sub
        .request_ack(json!({ "type": "joinGroup", "group": "g" }), 1)
        .await;
    assert_eq!(ack["success"], false);
    assert_eq!(ack["error"]["name"], "Forbidden");

    assert_eq!(call(&em, Method::PUT, &on_g).await, 200);
    assert_eq!(call(&em, Method::HEAD, &on_g).await, 200);
    assert_eq!(
        call(&em, Method::HEAD, &format!("{permission}?targetName=h")).await,
        404
    );
    let ack = sub
        .request_ack(json!({ "type": "joinGroup", "group": "g" }), 2)
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    em.send_json("/api/hubs/chat/groups/g/:send", &json!("member now"))
        .await;
    assert_eq!(sub.next_data().await, "member now");
    let ack = sub
        .request_ack(json!({ "type": "joinGroup", "group": "h" }), 3)
        .await;
    assert_eq!(ack["error"]["name"], "Forbidden", "{ack}");

    assert_eq!(call(&em, Method::DELETE, &on_g).await, 204);
    assert_eq!(call(&em, Method::HEAD, &on_g).await, 404);
    let ack = sub
        .request_ack(json!({ "type": "leaveGroup", "group": "g" }), 4)
        .await;
    assert_eq!(ack["error"]["name"], "Forbidden", "{ack}");

    let response = em
        .rest(
            Method::PUT,
            &versioned(&format!(
                "/api/hubs/chat/permissions/admin/connections/{}",
                sub.connection_id
            )),
        )
        .send()
        .await
        .unwrap();
    expect_api_error(response, 400, "admin").await;
    let missing = "/api/hubs/chat/permissions/joinLeaveGroup/connections/missing?targetName=g";
    assert_eq!(call(&em, Method::PUT, missing).await, 404);
}

/// A granted sendToGroup permission lets a client publish to that group, and revoking it
/// stops it again; members see `from: group` with the sender's userId.
#[tokio::test]
async fn send_to_group_permission_grant_and_revoke() {
    let em = TestEmulator::start().await;
    let mut sender = em.subscribe("chat", Some("sender"), &[], &[]).await;
    let mut member = em.subscribe("chat", Some("member"), &[], &["g"]).await;
    let permission = format!(
        "/api/hubs/chat/permissions/sendToGroup/connections/{}?targetName=g",
        sender.connection_id
    );
    let publish = |data: &str| {
        let mut frame = json!({ "type": "sendToGroup", "group": "g", "dataType": "text" });
        frame["data"] = json!(data);
        frame
    };

    let ack = sender.request_ack(publish("denied"), 1).await;
    assert_eq!(ack["error"]["name"], "Forbidden", "{ack}");

    assert_eq!(call(&em, Method::PUT, &permission).await, 200);
    assert_eq!(call(&em, Method::HEAD, &permission).await, 200);
    let ack = sender.request_ack(publish("allowed"), 2).await;
    assert_eq!(ack["success"], true, "{ack}");
    let message = member.next_message().await;
    assert_eq!(
        message,
        json!({
            "type": "message", "from": "group", "group": "g", "fromUserId": "sender",
            "dataType": "text", "data": "allowed"
        })
    );

    assert_eq!(call(&em, Method::DELETE, &permission).await, 204);
    let ack = sender.request_ack(publish("revoked"), 3).await;
    assert_eq!(ack["error"]["name"], "Forbidden", "{ack}");
    member.expect_silence(SILENCE).await;
}

/// Hub names are case-insensitive: REST calls on `CHAT` and `Chat` reach subscribers of
/// `chat`.
#[tokio::test]
async fn hub_names_are_case_insensitive() {
    let em = TestEmulator::start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;

    em.send_json("/api/hubs/CHAT/:send", &json!("upper")).await;
    assert_eq!(sub.next_data().await, "upper");
    assert_eq!(
        call(
            &em,
            Method::PUT,
            &format!("/api/hubs/Chat/groups/g/connections/{}", sub.connection_id)
        )
        .await,
        200
    );
    em.send_json("/api/hubs/cHaT/groups/g/:send", &json!("mixed"))
        .await;
    assert_eq!(sub.next_data().await, "mixed");
    assert_eq!(
        call(&em, Method::HEAD, "/api/hubs/CHAT/users/u1").await,
        200
    );
    assert_eq!(em.emulator.connection_count("CHAT"), 1);
}

/// Percent-encoded path segments are decoded once: user `u/1` and group `g 1` work on
/// every operation that names them, and do not match user `u` or group `g`.
#[tokio::test]
async fn percent_encoded_user_and_group_segments_work() {
    let em = TestEmulator::start().await;
    let mut slash = em.subscribe("chat", Some("u/1"), &[], &[]).await;
    let mut plain = em.subscribe("chat", Some("u"), &[], &["g"]).await;
    let user = enc("u/1");
    let group = enc("g 1");
    assert_eq!(user, "u%2F1");
    assert_eq!(group, "g%201");

    em.send_json(
        &format!("/api/hubs/chat/users/{user}/:send"),
        &json!("to u/1"),
    )
    .await;
    assert_eq!(slash.next_data().await, "to u/1");
    assert_eq!(
        call(&em, Method::HEAD, &format!("/api/hubs/chat/users/{user}")).await,
        200
    );

    assert_eq!(
        call(
            &em,
            Method::PUT,
            &format!("/api/hubs/chat/users/{user}/groups/{group}")
        )
        .await,
        200
    );
    em.send_json(
        &format!("/api/hubs/chat/groups/{group}/:send"),
        &json!("to g 1"),
    )
    .await;
    let message = slash.next_message().await;
    assert_eq!(message["group"], "g 1");
    assert_eq!(
        call(&em, Method::HEAD, &format!("/api/hubs/chat/groups/{group}")).await,
        200
    );

    let (_, entries) = list_all(
        &em,
        &format!("/api/hubs/chat/groups/{group}/connections?{API}"),
    )
    .await;
    assert_eq!(entries, vec![(slash.connection_id.clone(), json!("u/1"))]);

    assert_eq!(
        call(
            &em,
            Method::DELETE,
            &format!("/api/hubs/chat/users/{user}/groups/{group}")
        )
        .await,
        204
    );
    em.send_json(
        &format!("/api/hubs/chat/groups/{group}/:send"),
        &json!("gone"),
    )
    .await;
    let marker = mark(&em, "chat", "end").await;
    assert!(slash.data_until(&marker).await.is_empty());
    assert!(plain.data_until(&marker).await.is_empty());
}

/// Every stable api-version is accepted; a missing or unknown one is 400 naming the
/// parameter, and nothing is sent.
#[tokio::test]
async fn older_api_versions_are_accepted_and_missing_or_unknown_are_400() {
    let em = TestEmulator::start().await;
    let mut sub = em.subscribe("chat", Some("u1"), &[], &[]).await;

    for version in [
        "2021-10-01",
        "2022-11-01",
        "2023-07-01",
        "2024-01-01",
        "2024-12-01",
    ] {
        let response = em
            .rest(
                Method::POST,
                &format!("/api/hubs/chat/:send?api-version={version}"),
            )
            .header("content-type", "text/plain")
            .body(version)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "api-version {version}");
        assert_eq!(sub.next_data().await, version);
    }

    for query in [
        "",
        "?api-version=2020-01-01",
        "?api-version=latest",
        "?api-version=",
    ] {
        let response = em
            .rest(Method::POST, &format!("/api/hubs/chat/:send{query}"))
            .header("content-type", "text/plain")
            .body("refused")
            .send()
            .await
            .unwrap();
        expect_api_error(response, 400, "api-version").await;
    }
    sub.expect_silence(SILENCE).await;
}

/// A path or method that is no operation is 404 in the error shape.
#[tokio::test]
async fn unknown_operations_are_404() {
    let em = TestEmulator::start().await;
    for (method, path) in [
        (Method::GET, "/api/hubs/chat/:send"),
        (Method::POST, "/api/hubs/chat/:broadcast"),
        (Method::PUT, "/api/hubs/chat/users/u1"),
        (Method::GET, "/api/things"),
    ] {
        let response = em
            .rest(method.clone(), &versioned(path))
            .send()
            .await
            .unwrap();
        expect_api_error(response, 404, "operation").await;
    }
}
