//! Regression test for issue 14, break 10: over HTTP a request from
//! `Origin: http://evil.example` with a good Host was served, and an empty Host was
//! accepted. Both are refused with 403 now, by a real server over a real socket.

mod common;

use std::time::Duration;

use common::{free_local_addr, Setup, BIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one raw `initialize` POST with these extra header lines; returns the status
/// line and the body.
async fn post(addr: &str, headers: &str) -> (String, String) {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let request = format!(
        "POST /mcp HTTP/1.1\r\n{headers}Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.lines().next().unwrap_or("").to_owned();
    (status, answer)
}

#[tokio::test]
async fn break_10_a_foreign_origin_and_an_empty_host_are_refused_with_403() {
    let setup = Setup::new();
    let addr = free_local_addr();
    let mut server = tokio::process::Command::new(BIN)
        .arg("serve")
        .args(setup.args(&["--http", &addr]))
        .args(["--allow-origin", "http://localhost:6274"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let host = format!("Host: {addr}\r\n");
    // Up until the server answers at all: an empty answer is a connection closed before
    // the server listened (seen once in a loaded run), not a refusal.
    let mut served = String::new();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            served = post(&addr, &host).await.0;
            if !served.is_empty() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served.contains(" 200 "),
        "a plain client is served: {served}"
    );

    let (status, answer) = post(&addr, &format!("{host}Origin: http://evil.example\r\n")).await;
    assert!(status.contains(" 403 "), "{answer}");
    assert!(
        answer.contains("--allowed-origin http://evil.example"),
        "{answer}"
    );
    let (status, answer) = post(&addr, "Host: \r\n").await;
    assert!(
        status.contains(" 403 ") || status.contains(" 400 "),
        "{answer}"
    );
    let (status, answer) = post(&addr, "Host: evil.example\r\n").await;
    assert!(status.contains(" 403 "), "{answer}");
    let allowed = format!("{host}Origin: http://localhost:6274\r\n");
    let (status, answer) = post(&addr, &allowed).await;
    assert!(
        status.contains(" 200 "),
        "an allowed origin is served: {answer}"
    );
    server.kill().await.unwrap();
}

/// Issue 15: a DELETE of a session answered 202, where clients expect 200 or 204 (the
/// Python SDK warns); the session is gone after it.
#[tokio::test]
async fn deleting_a_session_answers_204_and_ends_it() {
    let setup = Setup::new();
    let addr = free_local_addr();
    let _server = tokio::process::Command::new(BIN)
        .arg("serve")
        .args(setup.args(&["--http", &addr]))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{addr}/mcp");
    let http = reqwest::Client::new();
    let mut session = None;
    for _ in 0..100 {
        let initialize = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#)
            .send()
            .await;
        if let Ok(response) = initialize {
            session = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let session = session.expect("a session id");
    let deleted = http
        .delete(&url)
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let again = http
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .body(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 404, "the session is gone");
}
