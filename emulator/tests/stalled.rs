//! A subscriber that stops reading must not hold up anyone else, and must not make the
//! emulator buffer without bound.

mod common;

use std::time::Duration;

use common::{TestEmulator, API};
use webpubsub_emulator::Config;

/// One subscriber never reads its socket while 400 messages of 64 KiB (25 MiB, far more
/// than the kernel's socket buffers hold) go to the hub. The healthy subscriber gets every
/// message in order; the stalled one is disconnected with 1013 once its queue is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_delay_the_others() {
    let config = Config {
        outbound_queue: 16,
        ..Config::default()
    };
    let emu = TestEmulator::start_with(config).await;
    let mut stalled = emu.subscribe("slow", Some("stalled"), &[], &[]).await;
    let mut healthy = emu.subscribe("slow", Some("healthy"), &[], &[]).await;
    emu.wait_for_connections("slow", 2).await;

    let body = "x".repeat(64 * 1024);
    let reader = tokio::spawn(async move {
        for n in 0..400 {
            let message = healthy.next_message().await;
            let data = message["data"].as_str().unwrap();
            assert!(
                data.starts_with(&format!("{n}:")),
                "message {n} out of order"
            );
        }
        healthy
    });
    for n in 0..400 {
        let response = emu
            .rest(
                reqwest::Method::POST,
                &format!("/api/hubs/slow/:send?{API}"),
            )
            .header("content-type", "text/plain")
            .body(format!("{n}:{body}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    let _healthy = reader.await.unwrap();

    // Only the healthy subscriber is left in the hub.
    emu.wait_for_connections("slow", 1).await;

    // When the stalled client finally reads, it finds the close at the end of what was
    // already on the wire.
    let (code, reason) = tokio::time::timeout(Duration::from_secs(20), stalled.closed())
        .await
        .expect("stalled subscriber was never closed");
    assert_eq!(code, 1013, "reason: {reason}");
}
