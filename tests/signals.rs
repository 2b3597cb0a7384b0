//! Regression test for issue 14, break 6: SIGTERM did not stop the stdio server while
//! its client kept stdin open (the runtime waited for the thread blocked reading
//! stdin). It stops within a grace now, with its running jobs cut off as on a crash.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Setup, BIN};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Far longer than a clean stop takes: reaching it means SIGTERM was ignored.
const STUCK_AFTER: Duration = Duration::from_secs(30);

#[tokio::test]
async fn break_6_sigterm_stops_the_stdio_server_while_the_client_keeps_stdin_open() {
    let setup = Setup::new();
    let config = common::write_config(setup.data.path(), common::TEST_CONFIG);
    let mut server = tokio::process::Command::new(BIN)
        .arg("serve")
        .args(setup.args(&["--config", &config]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = server.stdin.take().unwrap();
    let mut stdout = BufReader::new(server.stdout.take().unwrap()).lines();
    let requests = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "sleep", "arguments": {"seconds": 300, "async_mode": true}}}),
    ];
    for request in requests {
        stdin
            .write_all(format!("{request}\n").as_bytes())
            .await
            .unwrap();
    }
    let mut job_id = None;
    while let Some(line) = stdout.next_line().await.unwrap() {
        let message: Value = serde_json::from_str(&line).unwrap();
        if message["id"] == 2 {
            job_id = message["result"]["structuredContent"]["job_id"]
                .as_str()
                .map(str::to_owned);
            break;
        }
    }
    let job_id = job_id.expect("the job started");
    let pid = nix::unistd::Pid::from_raw(server.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(STUCK_AFTER, server.wait())
        .await
        .expect("the server stops on SIGTERM with stdin still open")
        .unwrap();
    assert!(status.success(), "{status}");
    drop(stdin);

    // The job was cut off and says so; its command is gone with it.
    let engine = smart_async::Engine::open(smart_async::EngineConfig::new(setup.data.path()))
        .await
        .unwrap();
    let job = engine.job(job_id.parse().unwrap()).unwrap();
    assert_eq!(
        job.state,
        smart_async::JobState::Failed {
            error: smart_async::INTERRUPTED.to_owned()
        }
    );
    assert!(
        common::pids_running(&["sleep", "300"]).is_empty(),
        "the job's command outlived the server"
    );
}

/// Issue 14, break 7 (the part that is fixed): after a `kill -9` of the server, the
/// commands of its running jobs kept running. The kernel now kills a command when the
/// server dies.
#[tokio::test]
async fn break_7_a_command_dies_with_a_server_killed_by_sigkill() {
    let setup = Setup::new();
    let config = common::write_config(setup.data.path(), common::TEST_CONFIG);
    let client = common::connect(&setup.args(&["--config", &config])).await;
    let started = common::call(
        &client,
        "sleep",
        json!({ "seconds": 307, "async_mode": true }),
    )
    .await;
    assert!(!common::is_error(&started), "{started:?}");
    let command = ["sleep", "307"];
    common::wait_until(
        || !common::pids_running(&command).is_empty(),
        "the command runs",
    )
    .await;
    let server = server_pid(&setup).expect("the server's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    common::wait_until(
        || common::pids_running(&command).is_empty(),
        "the command died with the server",
    )
    .await;
    drop(client);
}

/// The pid of the `serve` process using this setup's data directory.
fn server_pid(setup: &Setup) -> Option<u32> {
    let data = setup.data.path().to_str()?.to_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let serves = args.contains(&b"serve".as_slice());
            let ours = args.contains(&data.as_bytes());
            (serves && ours).then_some(pid)
        })
}
