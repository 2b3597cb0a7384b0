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
            error: smart_async::RunError::Interrupted
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
    kill_server(&setup);
    common::wait_until(
        || common::pids_running(&command).is_empty(),
        "the command died with the server",
    )
    .await;
    drop(client);
}

/// `kill -9` of the `serve` process using this setup's data directory.
fn kill_server(setup: &Setup) {
    let server = server_pid(setup).expect("the server's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
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

/// Command tools that leave processes behind: `escape` starts a grandchild in a session
/// of its own (out of the command's process group), `spawn` one in the group; both then
/// wait. Each grandchild is a `sleep` with a seconds value no other test uses.
const LEAVING_CONFIG: &str = r#"
[[command]]
name = "escape"
description = "Starts a grandchild that leaves the process group, then waits."
argv = ["sh", "-c", "setsid sleep 3601.25 & sleep 3601.5"]

[[command]]
name = "spawn"
description = "Starts a grandchild in its process group, then waits."
argv = ["sh", "-c", "sleep 3602.25 & sleep 3602.5"]
"#;

/// Regression (issue 14, break 7): a grandchild started with `setsid` left the
/// command's process group, so `cancel_job`, which killed the group, missed it.
#[tokio::test]
async fn break_7_cancel_job_ends_a_grandchild_that_left_the_process_group() {
    let setup = Setup::new();
    let config = common::write_config(setup.data.path(), LEAVING_CONFIG);
    let client = common::connect(&setup.args(&["--config", &config])).await;
    let started = common::call(&client, "escape", json!({ "async_mode": true })).await;
    let job_id = common::structured(&started)["job_id"]
        .as_str()
        .expect("a job id")
        .to_owned();
    let escaped = ["sleep", "3601.25"];
    common::wait_until(
        || !common::pids_running(&escaped).is_empty(),
        "the grandchild runs",
    )
    .await;
    let cancelled = common::call(&client, "cancel_job", json!({ "job_id": job_id })).await;
    assert!(!common::is_error(&cancelled), "{cancelled:?}");
    common::wait_until(
        || {
            common::pids_running(&escaped).is_empty()
                && common::pids_running(&["sleep", "3601.5"]).is_empty()
        },
        "the grandchild that left the group is ended with the job",
    )
    .await;
    drop(client);
}

/// Regression (issue 14, break 7): after a `kill -9` of the server, what its commands
/// had started kept running (30 orphans over 10 rounds) while their jobs read
/// "interrupted by restart". The command itself dies with the server; the next start
/// ends what it left.
#[tokio::test]
async fn break_7_the_next_start_ends_what_a_killed_server_s_jobs_left_running() {
    let setup = Setup::new();
    let config = common::write_config(setup.data.path(), LEAVING_CONFIG);
    let args = setup.args(&["--config", &config]);
    let client = common::connect(&args).await;
    for tool in ["escape", "spawn"] {
        let started = common::call(&client, tool, json!({ "async_mode": true })).await;
        assert!(!common::is_error(&started), "{started:?}");
    }
    let left = [["sleep", "3601.25"], ["sleep", "3602.25"]];
    common::wait_until(
        || {
            left.iter()
                .all(|argv| !common::pids_running(argv).is_empty())
        },
        "both grandchildren run",
    )
    .await;
    kill_server(&setup);
    drop(client);
    common::wait_until(|| server_pid(&setup).is_none(), "the server is gone").await;
    // The kernel ended the commands; their children were left to init.
    assert!(
        left.iter()
            .all(|argv| !common::pids_running(argv).is_empty()),
        "the grandchildren outlived the server"
    );
    let restarted = common::connect(&args).await;
    common::wait_until(
        || {
            left.iter()
                .all(|argv| common::pids_running(argv).is_empty())
        },
        "the next start ended what the interrupted jobs left",
    )
    .await;
    let listed = common::call(&restarted, "list_jobs", json!({})).await;
    let jobs = common::structured(&listed)["jobs"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(jobs.len(), 2);
    for job in jobs {
        let id = job["job_id"].as_str().unwrap();
        let status = common::call(&restarted, "job_status", json!({ "job_id": id })).await;
        assert!(
            common::text(&status).contains("interrupted by restart"),
            "{}",
            common::text(&status)
        );
    }
    drop(restarted);
}
