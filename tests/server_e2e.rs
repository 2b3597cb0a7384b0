//! `smart-async serve` end to end: the real binary, driven by rmcp's client over stdio
//! and over Streamable HTTP.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rmcp::model::CallToolRequestParams;
use serde_json::{json, Value};

mod common;
use common::*;

#[tokio::test]
async fn tools_are_listed_and_answer_inline_or_as_jobs_over_stdio() {
    let setup = Setup::new();
    let config = example_config();
    let client = connect(&setup.args(&["--config", &config])).await;

    let tools = client.list_all_tools().await.unwrap();
    assert_lists(
        &tools,
        &[
            "hash_files",
            "search_text",
            "count_lines",
            "sleep",
            "job_status",
            "list_jobs",
            "cancel_job",
            "predictor_stats",
        ],
    );
    let hash = tools.iter().find(|t| t.name == "hash_files").unwrap();
    assert_eq!(
        hash.input_schema["properties"]["async_mode"]["type"],
        "boolean"
    );
    assert_eq!(hash.input_schema["required"], json!(["path"]));

    let inline = call(&client, "hash_files", json!({"path": "small"})).await;
    assert!(!is_error(&inline), "{}", text(&inline));
    assert_eq!(structured(&inline)["files"], 3);
    assert!(
        structured(&inline).get("job_id").is_none(),
        "answered inline"
    );

    let started = call(
        &client,
        "hash_files",
        json!({"path": "small", "async_mode": true}),
    )
    .await;
    let answer = structured(&started);
    assert_eq!(answer["smart_async"], false, "asked for, not chosen");
    assert!(answer["reason"].as_str().unwrap().starts_with("explicit:"));
    assert!(
        text(&started).contains("job_status"),
        "says what to call next: {}",
        text(&started)
    );
    let job_id = answer["job_id"].as_str().unwrap().to_owned();
    let done = call(
        &client,
        "job_status",
        json!({"job_id": job_id, "wait_s": 10}),
    )
    .await;
    assert_eq!(structured(&done)["status"], "completed", "{}", text(&done));
    assert_eq!(structured(&done)["result"]["files"], 3);
    assert_eq!(
        structured(&done)["result"]["digest"],
        structured(&inline)["digest"]
    );

    let listed = call(&client, "list_jobs", json!({"status": "completed"})).await;
    assert_eq!(structured(&listed)["jobs"][0]["job_id"], job_id.as_str());
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_call_that_overruns_the_deadline_is_promoted_and_completes() {
    let setup = Setup::new();
    let config = example_config();
    let client = connect(&setup.args(&["--config", &config, "--deadline-s", "0.3"])).await;
    let started = call(&client, "sleep", json!({"seconds": 1.2})).await;
    let answer = structured(&started);
    assert_eq!(answer["promoted"], true, "{}", text(&started));
    assert!(
        text(&started).contains("still running at the"),
        "{}",
        text(&started)
    );
    let done = call(
        &client,
        "job_status",
        json!({"job_id": answer["job_id"], "wait_s": 10}),
    )
    .await;
    assert_eq!(structured(&done)["status"], "completed", "{}", text(&done));
    assert!(structured(&done)["elapsed_s"].as_f64().unwrap() >= 1.2);
    let stats = call(&client, "predictor_stats", json!({"tool": "sleep"})).await;
    assert_eq!(structured(&stats)["tools"][0]["promotions"], 1);
    assert_eq!(
        structured(&stats)["tools"][0]["samples"],
        1,
        "its runtime was learned"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn cancel_job_stops_a_running_command_and_its_process() {
    let setup = Setup::new();
    let config = example_config();
    let client = connect(&setup.args(&["--config", &config])).await;
    // A duration no other test uses, to find the process.
    let started = call(
        &client,
        "sleep",
        json!({"seconds": 317.25, "async_mode": true}),
    )
    .await;
    let job_id = structured(&started)["job_id"].clone();
    let mut running = Vec::new();
    for _ in 0..200 {
        running = pids_running(&["sleep", "317.25"]);
        if !running.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!running.is_empty(), "the command never started");
    let cancelled = call(&client, "cancel_job", json!({"job_id": job_id})).await;
    assert_eq!(
        structured(&cancelled)["status"],
        "cancelled",
        "{}",
        text(&cancelled)
    );
    let gone = async {
        while !pids_running(&["sleep", "317.25"]).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the process is gone");
    let again = call(&client, "cancel_job", json!({"job_id": job_id})).await;
    assert!(
        is_error(&again) && text(&again).contains("already ended (cancelled)"),
        "{}",
        text(&again)
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let setup = Setup::new();
    let client = connect(&setup.args(&[])).await;
    let cases = [
        (
            "job_status",
            json!({"job_id": "00000000-0000-4000-8000-000000000000"}),
            "no job with id",
        ),
        (
            "job_status",
            json!({"job_id": "nope"}),
            "'nope' is not a job id",
        ),
        (
            "hash_files",
            json!({"path": ".."}),
            "outside the allowed roots",
        ),
        (
            "hash_files",
            json!({"path": "/etc"}),
            "outside the allowed roots",
        ),
        (
            "hash_files",
            json!({"dir": "small"}),
            "hash_files: invalid arguments",
        ),
        (
            "search_text",
            json!({"path": ".", "pattern": "("}),
            "pattern is not a valid regex",
        ),
        (
            "list_jobs",
            json!({"status": "done"}),
            "unknown job status 'done'",
        ),
    ];
    for (tool, args, expected) in cases {
        let result = call(&client, tool, args.clone()).await;
        assert!(is_error(&result), "{tool} {args}: {}", text(&result));
        assert!(
            text(&result).contains(expected),
            "{tool} {args}: {}",
            text(&result)
        );
    }
    let unknown = client
        .call_tool(CallToolRequestParams::new("no_such_tool").with_arguments(Default::default()))
        .await;
    assert!(
        format!("{unknown:?}").contains("unknown tool 'no_such_tool'"),
        "{unknown:?}"
    );
    let still = call(&client, "hash_files", json!({"path": "small"})).await;
    assert_eq!(structured(&still)["files"], 3);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_command_tool_from_the_example_config_runs_end_to_end() {
    let data = tempfile::tempdir().unwrap();
    let config = example_config();
    // The example's root is the project; `dir` is a path inside it.
    let repo = common::repo();
    let args = [
        "--data-dir",
        path_str(data.path()),
        "--root",
        path_str(&repo),
        "--config",
        &config,
    ];
    let client = connect(&args).await;
    let counted = call(&client, "count_lines", json!({"dir": "src"})).await;
    assert!(!is_error(&counted), "{}", text(&counted));
    assert!(
        text(&counted).contains("count_lines: exit code 0"),
        "{}",
        text(&counted)
    );
    assert!(
        structured(&counted)["stdout"]
            .as_str()
            .unwrap()
            .contains(&format!("{}/src/", repo.canonicalize().unwrap().display())),
        "{}",
        text(&counted)
    );
    client.cancel().await.unwrap();
}

/// Writes a directory of `files` sparse files totalling `bytes`.
fn sparse_dir(path: &Path, files: u64, bytes: u64) {
    std::fs::create_dir_all(path).unwrap();
    for i in 0..files {
        let file = std::fs::File::create(path.join(format!("part{i}.bin"))).unwrap();
        file.set_len(bytes / files).unwrap();
    }
}

#[tokio::test]
async fn learning_survives_a_restart_and_decides_from_arguments() {
    let setup = Setup::new();
    let budget = ["--budget-s", "0.5"];
    let client = connect(&setup.args(&budget)).await;
    for step in 0..14u32 {
        let kib = 16u64 << (step % 10); // 16 KiB .. 8 MiB
        let dir = format!("train{step}");
        sparse_dir(
            &setup.root.path().join(&dir),
            1 + u64::from(step % 4),
            kib * 1024,
        );
        let result = call(&client, "hash_files", json!({ "path": dir })).await;
        assert!(!is_error(&result), "{}", text(&result));
    }
    let stats = call(&client, "predictor_stats", json!({"tool": "hash_files"})).await;
    let hash = &structured(&stats)["tools"][0];
    assert_eq!(hash["state"], "warm", "{}", text(&stats));
    let bytes = hash["effects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "path.bytes")
        .unwrap();
    assert!(
        bytes["elasticity"].as_f64().unwrap() > 0.0,
        "{}",
        text(&stats)
    );
    let samples = hash["samples"].clone();
    client.cancel().await.unwrap();

    let client = connect(&setup.args(&budget)).await;
    let stats = call(&client, "predictor_stats", json!({"tool": "hash_files"})).await;
    assert_eq!(structured(&stats)["tools"][0]["state"], "warm");
    assert_eq!(structured(&stats)["tools"][0]["samples"], samples);

    sparse_dir(&setup.root.path().join("huge"), 2, 4 << 30);
    let big = call(&client, "hash_files", json!({"path": "huge"})).await;
    let answer = structured(&big);
    assert_eq!(answer["smart_async"], true, "{}", text(&big));
    assert!(
        answer["reason"].as_str().unwrap().starts_with("learned:"),
        "{}",
        text(&big)
    );
    call(&client, "cancel_job", json!({"job_id": answer["job_id"]})).await;

    let small = call(&client, "hash_files", json!({"path": "small"})).await;
    assert!(
        structured(&small).get("job_id").is_none(),
        "{}",
        text(&small)
    );
    assert_eq!(structured(&small)["files"], 3);
    client.cancel().await.unwrap();

    // What the server learned exports as a trace that replays.
    let export = std::process::Command::new(BIN)
        .args(["export", "--data-dir", path_str(setup.data.path())])
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let lines = String::from_utf8_lossy(&export.stdout);
    assert_eq!(
        lines.lines().count(),
        16,
        "14 training calls, the cancelled run (censored) and the small one"
    );
    let censored: Vec<Value> = (lines.lines())
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|line: &Value| line["censored"] == true)
        .collect();
    assert_eq!(censored.len(), 1, "{lines}");
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["tool"], "hash_files");
    assert_eq!(first["args"]["path.bytes"], 16.0 * 1024.0);
    let mut replay = std::process::Command::new(BIN)
        .args(["replay", "-", "--budget-s", "0.5", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    replay
        .stdin
        .take()
        .unwrap()
        .write_all(&export.stdout)
        .unwrap();
    let replayed = replay.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&replayed.stdout).unwrap();
    // The cut run is scored only if it had already passed the budget.
    let scored = report["calls"].as_u64().unwrap();
    assert_eq!(scored + report["unscored"].as_u64().unwrap(), 16);
    assert_eq!(report["budget_s"], 0.5);
}

#[tokio::test]
async fn the_same_flow_works_over_streamable_http() {
    let setup = Setup::new();
    let addr = free_local_addr();
    let mut server = tokio::process::Command::new(BIN)
        .arg("serve")
        .args(setup.args(&["--http", &addr]))
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = connect_http(&addr).await;
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "predictor_stats"));
    let inline = call(&client, "hash_files", json!({"path": "small"})).await;
    assert_eq!(structured(&inline)["files"], 3);
    let started = call(
        &client,
        "hash_files",
        json!({"path": "small", "async_mode": true}),
    )
    .await;
    let done = call(
        &client,
        "job_status",
        json!({"job_id": structured(&started)["job_id"], "wait_s": 10}),
    )
    .await;
    assert_eq!(structured(&done)["status"], "completed", "{}", text(&done));
    client.cancel().await.unwrap();
    // SIGTERM stops it cleanly: the database is flushed and closed, exit code 0.
    let pid = nix::unistd::Pid::from_raw(server.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Regression: a background job on a blocking thread (hashing a huge tree) kept the
/// process alive after its client closed stdin, until the hash ended.
#[tokio::test]
async fn closing_stdin_stops_the_server_promptly_even_with_a_job_running() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let setup = Setup::new();
    // 64 GiB of sparse zeros: minutes of hashing.
    sparse_dir(&setup.root.path().join("huge"), 4, 64 << 30);
    let mut server = tokio::process::Command::new(BIN)
        .arg("serve")
        .args(setup.args(&[]))
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
            "name": "hash_files", "arguments": {"path": "huge", "async_mode": true}}}),
    ];
    for request in requests {
        stdin
            .write_all(format!("{request}\n").as_bytes())
            .await
            .unwrap();
    }
    let mut job_started = false;
    while let Some(line) = stdout.next_line().await.unwrap() {
        let message: Value = serde_json::from_str(&line).unwrap();
        if message["id"] == 2 {
            job_started = message["result"]["structuredContent"]["job_id"].is_string();
            break;
        }
    }
    assert!(job_started);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("the server exits without finishing the hash")
        .unwrap();
    assert!(status.success(), "{status}");
}
