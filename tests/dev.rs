//! `handler dev` as a library call: the embedded emulator, the handler and the printed
//! subscriber URL work together on one machine, and the demo feeds that subscriber.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{invocation, AppRoot, Encoding, Subscriber, REPO_ROOT};
use rowcast::dev::{self, Dev, DevOptions};
use rowcast::settings::Settings;
use serde_json::json;

/// Both listeners on free loopback ports.
fn options(demo: bool) -> DevOptions {
    DevOptions {
        emulator: ([127, 0, 0, 1], 0).into(),
        handler: ([127, 0, 0, 1], 0).into(),
        demo,
    }
}

/// The `ws://` URL among the printed lines, exactly as printed.
fn subscriber_url(dev: &Dev) -> String {
    let line = dev
        .lines
        .iter()
        .find(|line| line.contains("ws://"))
        .unwrap_or_else(|| panic!("no ws:// line in {:#?}", dev.lines));
    let start = line.find("ws://").unwrap();
    line[start..].split_whitespace().next().unwrap().to_owned()
}

/// Stops the stack within the usual wait and checks it stopped cleanly.
async fn shut_down(dev: Dev) {
    tokio::time::timeout(common::WAIT, dev.shutdown())
        .await
        .expect("shutdown finished in time")
        .expect("shutdown succeeded");
}

/// Receives `n` demo changes within 5 s and checks each is a `dbo.Users` change.
async fn expect_demo_changes(subscriber: &mut Subscriber, n: usize) {
    let changes = tokio::time::timeout(Duration::from_secs(5), subscriber.changes(n))
        .await
        .expect("demo changes arrived within 5 s");
    for change in changes {
        assert_eq!(change["table"], "dbo.Users", "{change}");
        assert!(
            ["insert", "update", "delete"].contains(&change["operation"].as_str().unwrap()),
            "{change}"
        );
        assert!(change["row"]["Id"].is_u64(), "{change}");
        assert_eq!(change["id"].as_str().unwrap().len(), 32, "{change}");
    }
}

/// `dev --demo` on the repository as app root: the printed subscriber URL connects as is
/// and receives the demo's dbo.Users changes, and the stack then shuts down cleanly.
#[tokio::test]
async fn demo_changes_reach_the_printed_subscriber_url() {
    let dev = dev::start(
        &options(true),
        Settings::from_pairs([("WebPubSubHub", "SQLUsers")]),
        Path::new(REPO_ROOT),
    )
    .await
    .expect("dev starts");
    let url = subscriber_url(&dev);
    assert!(
        url.starts_with(&format!(
            "ws://{}/client/hubs/SQLUsers?access_token=",
            dev.emulator.local_addr()
        )),
        "{url}"
    );

    let mut subscriber = Subscriber::connect(&url).await;
    expect_demo_changes(&mut subscriber, 2).await;
    shut_down(dev).await;
    subscriber.expect_closed().await;
}

/// `AzureWebJobsScriptRoot`, when given, is where the function folders are found, while
/// `local.settings.json` still comes from the app root.
#[tokio::test]
async fn the_script_root_setting_locates_the_functions() {
    let root = AppRoot::new("dev-script-root");
    let settings = Settings::from_pairs([("AzureWebJobsScriptRoot", root.as_str())]);
    let dev = dev::start(&options(true), settings, Path::new(REPO_ROOT))
        .await
        .expect("dev starts");
    let mut subscriber = Subscriber::connect(&subscriber_url(&dev)).await;
    expect_demo_changes(&mut subscriber, 1).await;
    shut_down(dev).await;
}

/// Without `--demo` nothing is posted, the printed lines describe the handler and its
/// function, and an invocation posted to the handler's address reaches the subscriber.
#[tokio::test]
async fn without_demo_the_stack_only_carries_what_is_posted() {
    let dev = dev::start(&options(false), Settings::default(), Path::new(REPO_ROOT))
        .await
        .expect("dev starts");
    let handler = dev.handler_addr;
    assert!(
        dev.lines
            .iter()
            .any(|l| l.contains(&format!("http://{handler}/"))),
        "{:#?}",
        dev.lines
    );
    let function = dev
        .lines
        .iter()
        .find(|l| l.contains("/sql-changes"))
        .expect("a function line");
    assert!(
        function.contains("dbo.Users") && function.contains("SQLUsers"),
        "{function}"
    );

    let mut subscriber = Subscriber::connect(&subscriber_url(&dev)).await;
    subscriber.expect_silence(Duration::from_millis(1500)).await;

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let changes = json!([{"Operation": 1, "Item": {"Id": 99, "OwnerId": "12345"}}]);
    let response = tokio::time::timeout(
        common::WAIT,
        http.post(format!("http://{handler}/sql-changes"))
            .header("content-type", "application/json")
            .body(invocation("changes", &changes, Encoding::DoubleString))
            .send(),
    )
    .await
    .expect("the handler answered")
    .unwrap();
    assert_eq!(response.status(), 200);
    let change = subscriber.next_change().await;
    assert_eq!(change["row"]["Id"], 99);
    assert_eq!(change["table"], "dbo.Users");
    shut_down(dev).await;
}
