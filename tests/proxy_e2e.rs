//! `smart-async proxy` end to end: the real binary in front of a real upstream MCP
//! server (here `smart-async serve` itself, which needs nothing outside this
//! repository), driven by rmcp's client. Third-party upstreams (the Python SDK, the
//! everything server) are tested in tests/clients.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientConfig, GetTaskParams,
    ProgressNotificationParam, TaskPayload,
};
use rmcp::service::{NotificationContext, RoleClient};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{json, Value};

mod common;
use common::*;

/// A proxy in front of `smart-async serve` with the sleep tool; returns the proxy's
/// arguments and the upstream's command line (to find its process).
struct ProxySetup {
    setup: Setup,
    upstream_data: tempfile::TempDir,
    config: String,
}

impl ProxySetup {
    fn new() -> ProxySetup {
        let setup = Setup::new();
        let config = write_config(setup.root.path(), TEST_CONFIG);
        ProxySetup {
            setup,
            upstream_data: tempfile::tempdir().unwrap(),
            config,
        }
    }

    fn upstream_argv(&self) -> Vec<&str> {
        vec![
            BIN,
            "serve",
            "--data-dir",
            path_str(self.upstream_data.path()),
            "--root",
            path_str(self.setup.root.path()),
            "--config",
            &self.config,
        ]
    }

    fn proxy_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--data-dir", path_str(self.setup.data.path())];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend(self.upstream_argv());
        args
    }
}

/// Starts `smart-async proxy ARGS` on stdio with `handler` as the client.
async fn connect_proxy<H: ClientHandler>(
    handler: H,
    args: &[&str],
) -> rmcp::service::RunningService<RoleClient, H> {
    let transport = spawn("proxy", args);
    handler
        .serve(transport)
        .await
        .expect("the MCP handshake with the proxy succeeds")
}

#[tokio::test]
async fn the_proxy_offers_the_upstream_tools_and_runs_long_calls_as_jobs() {
    let proxy = ProxySetup::new();
    let client = connect_proxy((), &proxy.proxy_args(&["--budget-s", "1"])).await;
    let tools = client.list_all_tools().await.unwrap();
    assert_lists(
        &tools,
        &[
            "sleep",
            "hash_files",
            "job_status",
            "list_jobs",
            "cancel_job",
            "predictor_stats",
        ],
    );
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "job_status").count(),
        1,
        "the upstream's own job tools are shadowed, not listed twice: {names:?}"
    );
    let sleep = tools.iter().find(|t| t.name == "sleep").unwrap();
    assert_eq!(
        sleep.description.as_deref(),
        Some("Sleep for a number of seconds.")
    );
    assert_eq!(
        sleep.input_schema["properties"]["async_mode"]["type"],
        "boolean"
    );
    assert_eq!(
        sleep.input_schema["properties"]["seconds"]["type"],
        "number"
    );

    // Inline: the upstream's answer, unchanged.
    let quick = call(&client, "sleep", json!({"seconds": 0.05})).await;
    assert!(!is_error(&quick), "{}", text(&quick));
    assert_eq!(structured(&quick)["exit_code"], 0, "{}", text(&quick));

    // Over the budget: promoted to a job that completes with the upstream's result.
    let long = call(&client, "sleep", json!({"seconds": 1.6})).await;
    let job_id = structured(&long)["job_id"].clone();
    assert!(job_id.is_string(), "{}", text(&long));
    assert_eq!(structured(&long)["promoted"], true);
    let done = call(
        &client,
        "job_status",
        json!({"job_id": job_id, "wait_s": 0.8}),
    )
    .await;
    let done = if structured(&done)["status"] == "completed" {
        done
    } else {
        call(
            &client,
            "job_status",
            json!({"job_id": job_id, "wait_s": 0.8}),
        )
        .await
    };
    assert_eq!(structured(&done)["status"], "completed", "{}", text(&done));
    assert_eq!(structured(&done)["result"]["exit_code"], 0);
    assert!(structured(&done)["content"][0]["text"].is_string());

    // Errors keep their meaning: the upstream's isError result stays one.
    let bad = call(&client, "sleep", json!({"seconds": "soon"})).await;
    assert!(is_error(&bad), "{}", text(&bad));
    assert!(text(&bad).contains("seconds"), "{}", text(&bad));

    let stats = call(&client, "predictor_stats", json!({"tool": "sleep"})).await;
    assert_eq!(
        structured(&stats)["tools"][0]["samples"],
        2,
        "{}",
        text(&stats)
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_tasks_client_gets_tasks_for_proxied_calls() {
    let proxy = ProxySetup::new();
    let client = connect_proxy(client_info("tasks", true), &proxy.proxy_args(&[])).await;
    let Value::Object(args) = json!({"seconds": 0.3, "async_mode": true}) else {
        unreachable!()
    };
    let answer = client
        .call_tool_once(CallToolRequestParams::new("sleep").with_arguments(args))
        .await
        .unwrap();
    let CallToolResponse::Task(created) = answer else {
        panic!("expected a task, got {answer:?}")
    };
    let payload = loop {
        let got = client
            .get_task(GetTaskParams::new(created.task.task_id.clone()))
            .await
            .unwrap();
        if got.task.task.status.is_terminal() {
            break got.task.payload;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let TaskPayload::Completed { result } = payload else {
        panic!("expected the upstream's result, got {payload:?}")
    };
    assert_eq!(result["structuredContent"]["exit_code"], 0, "{result:?}");
    client.cancel().await.unwrap();
}

/// A client that keeps the messages of the progress notifications it gets.
#[derive(Clone, Default)]
struct ProgressRecorder {
    messages: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for ProgressRecorder {
    fn get_info(&self) -> ClientConfig {
        client_info("progress-recorder", false)
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let mut messages = self.messages.lock().unwrap();
        messages.push(params.message.unwrap_or_default());
    }
}

#[tokio::test]
async fn upstream_progress_reaches_the_inline_caller() {
    let proxy = ProxySetup::new();
    let recorder = ProgressRecorder::default();
    let client = connect_proxy(recorder.clone(), &proxy.proxy_args(&[])).await;
    let done = call(&client, "sleep", json!({"seconds": 2.6})).await;
    assert!(!is_error(&done), "{}", text(&done));
    let messages = recorder.messages.lock().unwrap().clone();
    // The upstream (smart-async serve) reports its own progress each second; the
    // proxy's notifications carry it in parentheses.
    assert!(
        messages.iter().any(|m| m.contains("(running for")),
        "the upstream's progress is forwarded: {messages:?}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_dead_upstream_fails_its_calls_clearly_and_is_restarted() {
    let proxy = ProxySetup::new();
    let client = connect_proxy((), &proxy.proxy_args(&[])).await;
    let argv = proxy.upstream_argv();
    let pid = pids_running(&argv);
    assert_eq!(pid.len(), 1, "one upstream runs");

    // A job and an inline call are running when the upstream is killed.
    let job = call(
        &client,
        "sleep",
        json!({"seconds": 6.5, "async_mode": true}),
    )
    .await;
    let job_id = structured(&job)["job_id"].clone();
    let inline = {
        let peer = client.peer().clone();
        tokio::spawn(async move { call(&peer, "sleep", json!({"seconds": 6.25})).await })
    };
    wait_until(
        || !pids_running(&["sleep", "6.25"]).is_empty(),
        "the inline call runs",
    )
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let inline = inline.await.unwrap();
    assert!(is_error(&inline), "{}", text(&inline));
    assert!(
        text(&inline).contains("stopped while the call ran")
            && text(&inline).contains("killed by signal 9"),
        "{}",
        text(&inline)
    );
    let failed = call(
        &client,
        "job_status",
        json!({"job_id": job_id, "wait_s": 5}),
    )
    .await;
    assert_eq!(structured(&failed)["status"], "failed", "{}", text(&failed));
    assert!(
        structured(&failed)["error"]
            .as_str()
            .unwrap()
            .contains("killed by signal 9"),
        "{}",
        text(&failed)
    );

    // Restarted: the next call is served by a new upstream process.
    let again = call(&client, "sleep", json!({"seconds": 0.05})).await;
    assert!(!is_error(&again), "{}", text(&again));
    let restarted = pids_running(&argv);
    assert_eq!(restarted.len(), 1);
    assert_ne!(restarted, pid, "a new process");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn the_proxy_serves_http_and_stops_its_upstream_on_sigterm() {
    let proxy = ProxySetup::new();
    let addr = free_local_addr();
    let mut server = tokio::process::Command::new(BIN)
        .arg("proxy")
        .args(proxy.proxy_args(&["--http", &addr]))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = connect_http(&addr).await;
    let quick = call(&client, "sleep", json!({"seconds": 0.05})).await;
    assert_eq!(structured(&quick)["exit_code"], 0, "{}", text(&quick));
    client.cancel().await.unwrap();
    let upstream = proxy.upstream_argv();
    assert_eq!(pids_running(&upstream).len(), 1);
    let pid = nix::unistd::Pid::from_raw(server.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    wait_until(
        || pids_running(&upstream).is_empty(),
        "the upstream stops with it",
    )
    .await;
}

#[test]
fn a_wrong_upstream_command_fails_fast_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let run = |upstream: &[&str]| {
        let started = std::time::Instant::now();
        let out = std::process::Command::new(BIN)
            .args(["proxy", "--data-dir", path_str(data.path())])
            .args(upstream)
            .stdin(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(15));
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--", "/nonexistent/mcp-server", "--flag"]);
    assert!(
        err.contains("/nonexistent/mcp-server") && err.contains("command not found"),
        "{err}"
    );
    let err = run(&["--", "sh", "-c", "echo 'bad token' >&2; exit 3"]);
    assert!(
        err.contains("exited with code 3") && err.contains("bad token"),
        "{err}"
    );
    let err = run(&["--", "echo", "not an MCP server"]);
    assert!(err.contains("cannot start the upstream"), "{err}");
    // Issue 14, break 11: only "connection closed: initialize request" was said. (An
    // upstream that exits before the handshake is even sent, as `echo` may, has its
    // output unread: the exit code is what is said then.)
    let script = "echo not an MCP server; sleep 2";
    let err = run(&["--", "sh", "-c", script]);
    assert!(
        err.contains(&format!("`sh -c {script}`"))
            && err.contains(r#"it printed on stdout: "not an MCP server""#),
        "{err}"
    );
    let err = run(&["--startup-timeout-s", "0.5", "--", "sleep", "30"]);
    assert!(
        err.contains("did not answer the MCP handshake within 0.5 s"),
        "{err}"
    );
}

/// The conformance fixture (`examples/conformance_fixture.rs`, which `cargo test`
/// builds with the tests), built here when a single test binary runs alone.
fn fixture_binary() -> std::path::PathBuf {
    let deps = std::env::current_exe().expect("the test binary's path");
    let profile = deps
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/PROFILE/deps");
    let fixture = profile.join("examples").join("conformance_fixture");
    if !fixture.exists() {
        let built = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", "conformance_fixture"])
            .status()
            .expect("cargo runs");
        assert!(built.success(), "cargo build --example conformance_fixture");
    }
    fixture
}

/// Issue 16: an upstream's `isError` result was reduced to its text (in a job, even
/// that only as the error message): its image and structured content were lost.
#[tokio::test]
async fn an_upstream_error_result_reaches_the_client_whole_inline_and_in_job_status() {
    let setup = Setup::new();
    let upstream_data = tempfile::tempdir().unwrap();
    let fixture = fixture_binary();
    let args = [
        "--data-dir",
        path_str(setup.data.path()),
        "--deadline-s",
        "0.5",
        "--",
        fixture.to_str().unwrap(),
        "--stdio",
        path_str(upstream_data.path()),
    ];
    let client = connect_proxy((), &args).await;
    let inline = call(&client, "test_error_with_details", json!({ "seconds": 0 })).await;
    assert!(is_error(&inline), "{inline:?}");
    assert_eq!(inline.content.len(), 2, "{inline:?}");
    assert_eq!(structured(&inline)["reason"], "quota");

    let answer = call(
        &client,
        "test_error_with_details",
        json!({ "seconds": 1.5 }),
    )
    .await;
    let job_id = structured(&answer)["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a job: {answer:?}"))
        .to_owned();
    let status = call(
        &client,
        "job_status",
        json!({ "job_id": job_id, "wait_s": 20 }),
    )
    .await;
    assert_the_whole_error_result(structured(&status));
    client.cancel().await.unwrap();
}
