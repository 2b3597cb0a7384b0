//! Issue 17: the limits that keep one caller from hurting others, each hit over real
//! HTTP against a real server and answered with its clear error while the server goes
//! on serving the others: background jobs per principal, requests in flight, and the
//! request body size.

mod common;

use std::time::Duration;

use common::AuthServer as Server;
use common::{call, is_error, structured, text, token_for, INITIALIZE};
use serde_json::json;

#[tokio::test]
async fn a_principal_past_its_background_jobs_is_refused_and_others_are_served() {
    let (alice_token, alice) = token_for("alice");
    let (bob_token, bob) = token_for("bob");
    let server = Server::start(
        &format!("max_jobs_per_principal = 2\n[auth]\n{alice}\n{bob}"),
        &[],
    )
    .await;
    let alice = server.connect(&alice_token).await;
    let bob = server.connect(&bob_token).await;
    let sleep = json!({"seconds": 30, "async_mode": true});
    let mut alices = Vec::new();
    for _ in 0..2 {
        let started = call(&alice, "sleep", sleep.clone()).await;
        assert!(!is_error(&started), "{}", text(&started));
        alices.push(structured(&started)["job_id"].as_str().unwrap().to_owned());
    }
    let refused = call(&alice, "sleep", sleep.clone()).await;
    assert!(is_error(&refused));
    assert!(
        text(&refused).contains("alice has 2 background jobs running or waiting")
            && text(&refused).contains("max_jobs_per_principal"),
        "{}",
        text(&refused)
    );
    let bobs = call(&bob, "sleep", sleep.clone()).await;
    assert!(!is_error(&bobs), "bob is served: {}", text(&bobs));
    // One of alice's ends: she may start another.
    call(&alice, "cancel_job", json!({"job_id": alices[0]})).await;
    let again = call(&alice, "sleep", sleep).await;
    assert!(!is_error(&again), "{}", text(&again));
}

#[tokio::test]
async fn requests_past_the_concurrency_limit_get_503_until_one_ends() {
    let (token, entry) = token_for("alice");
    let server = Server::start(
        &format!("[http]\nmax_concurrent_requests = 2\n[auth]\n{entry}"),
        &[],
    )
    .await;
    // Two open event streams (one per session) hold both slots.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let opened = server
            .post(Some(&token), INITIALIZE.into())
            .send()
            .await
            .unwrap();
        assert_eq!(opened.status(), 200);
        let session = opened.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        server
            .post(Some(&token), initialized.to_string())
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
            .await
            .unwrap();
        let stream = reqwest::Client::new()
            .get(server.url("/mcp"))
            .header("accept", "text/event-stream")
            .header("authorization", format!("Bearer {token}"))
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        streams.push(stream);
    }
    let refused = server
        .post(Some(&token), INITIALIZE.into())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("its maximum of 2 requests at once"));
    // A stream closes: its slot is free again.
    streams.pop();
    let mut status = 0;
    for _ in 0..100 {
        status = server
            .post(Some(&token), INITIALIZE.into())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "served once a stream ended");
}

#[tokio::test]
async fn a_body_past_the_configured_size_gets_413_with_the_limit() {
    let (token, entry) = token_for("alice");
    let server = Server::start(
        &format!("[http]\nmax_request_bytes = 2048\n[auth]\n{entry}"),
        &[],
    )
    .await;
    let big =
        json!({"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"pad": "x".repeat(4096)}});
    let refused = server
        .post(Some(&token), big.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 413);
    let answer: serde_json::Value = refused.json().await.unwrap();
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than 2 KiB"),
        "{answer}"
    );
    let served = server
        .post(Some(&token), INITIALIZE.into())
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200, "a small body is served");
}

#[tokio::test]
async fn a_principal_past_its_starts_per_minute_is_told_when_to_retry() {
    let (alice_token, alice) = token_for("alice");
    let (bob_token, bob) = token_for("bob");
    let server = Server::start(
        &format!("max_job_starts_per_minute = 2\n[auth]\n{alice}\n{bob}"),
        &[],
    )
    .await;
    let alice = server.connect(&alice_token).await;
    let bob = server.connect(&bob_token).await;
    let quick = json!({"seconds": 0, "async_mode": true});
    for _ in 0..2 {
        let started = call(&alice, "sleep", quick.clone()).await;
        assert!(!is_error(&started), "{}", text(&started));
    }
    let refused = call(&alice, "sleep", quick.clone()).await;
    assert!(is_error(&refused));
    assert!(
        text(&refused).contains("alice has started 2 background jobs within a minute")
            && text(&refused).contains("retry in"),
        "{}",
        text(&refused)
    );
    let bobs = call(&bob, "sleep", quick).await;
    assert!(!is_error(&bobs), "bob is served: {}", text(&bobs));
}
