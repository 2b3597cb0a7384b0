//! The `smart-async` binary as a user runs it: real processes, real databases.

use std::process::Command;

use serde_json::json;
use smart_async::{Engine, EngineConfig, ToolCall};

fn smart_async(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_smart-async"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[tokio::test]
async fn stats_fails_clearly_while_another_process_holds_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
    let out = smart_async(&["stats", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(
        stderr.contains("stop that process, or pass a different --data-dir"),
        "{stderr}"
    );
    engine.close().await.unwrap();
}

#[tokio::test]
async fn stats_shows_what_was_learned_as_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
        for n in 1..=8 {
            engine
                .call(ToolCall::new("index", json!({"files": n})), |_| async {
                    Ok(json!("ok"))
                })
                .await
                .unwrap();
        }
        engine.close().await.unwrap();
    }
    let data_dir = dir.path().to_str().unwrap();
    let out = smart_async(&["stats", "--data-dir", data_dir, "--tool", "index"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("index: warm (8 samples)"), "{text}");
    assert!(text.contains("decisions: learned 2, default 6"), "{text}");

    let out = smart_async(&["stats", "--data-dir", data_dir, "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tools: Vec<&str> = stats["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tool"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["index", "*"]);
    assert_eq!(stats["tools"][0]["samples"], 8);
    assert_eq!(stats["budget_s"], 50.0);
    assert!(stats["clients"].as_array().unwrap().is_empty());
}

#[test]
fn stats_for_an_unknown_tool_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = smart_async(&[
        "stats",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--tool",
        "nope",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nothing has been learned about tool 'nope' yet"),
        "{stderr}"
    );
}

fn traces() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/traces");
    let mut traces: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    traces.sort();
    traces
}

#[test]
fn replay_json_has_exactly_the_documented_shape_on_every_shipped_trace() {
    let traces = traces();
    assert_eq!(traces.len(), 7);
    for trace in traces {
        let out = smart_async(&["replay", trace.to_str().unwrap(), "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let keys: Vec<&str> = report
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "break_even_risk",
                "budget_s",
                "calls",
                "policies",
                "poll_cost_s",
                "risk",
                "unscored"
            ]
        );
        assert_eq!(report["calls"], 3000);
        let names: Vec<&str> = report["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "learned",
                "static",
                "always_sync",
                "last2_avg",
                "p90_history",
                "oracle"
            ]
        );
        for policy in report["policies"].as_array().unwrap() {
            let mut keys: Vec<&str> = policy
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort();
            assert_eq!(
                keys,
                [
                    "accuracy",
                    "background",
                    "coverage",
                    "coverage_after_1000",
                    "late",
                    "late_rate",
                    "name",
                    "needless",
                    "needless_rate",
                    "sync",
                    "wasted_s"
                ]
            );
        }
        let oracle = &report["policies"][5];
        assert_eq!(
            (oracle["late"].as_u64(), oracle["needless"].as_u64()),
            (Some(0), Some(0))
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("calls/s"),
            "prints its throughput: {stderr}"
        );
    }
}

/// `--policy` runs only the policies named (issue 18); a wrong name is refused before
/// any trace is read, naming the ones there are; `--risk` is reported beside the
/// break-even risk it overrides.
#[test]
fn replay_runs_only_the_policies_asked_for() {
    let trace = &traces()[0];
    let out = smart_async(&[
        "replay",
        trace.to_str().unwrap(),
        "--policy",
        "learned,oracle",
        "--risk",
        "0.05",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = (report["policies"].as_array().unwrap().iter())
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["learned", "oracle"]);
    assert_eq!(report["risk"], 0.05);
    assert!((report["break_even_risk"].as_f64().unwrap() - 1.0 / 11.0).abs() < 1e-12);
    let out = smart_async(&["replay", trace.to_str().unwrap(), "--policy", "p99"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no policy is named 'p99'") && stderr.contains("last2_avg"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("calls/s"),
        "refused before reading: {stderr}"
    );
}

/// Issue 15: a trace in another format (the archive's SWF) replayed "0 calls" and
/// printed an empty table; it is an error that says what a trace is.
#[test]
fn a_trace_of_which_no_line_is_a_call_is_an_error_that_says_what_a_trace_is() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("jobs.swf");
    std::fs::write(
        &trace,
        "; Version: 2.2\n1 0 10 1475 32 -1 -1 32 -1 -1 1 1 1 1 1 -1 -1 -1\n",
    )
    .unwrap();
    let out = smart_async(&["replay", trace.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is a call (2 skipped)"), "{stderr}");
    assert!(stderr.contains("one JSON object a line"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn replay_reports_bad_lines_by_number_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    std::fs::write(
        &trace,
        concat!(
            "{\"tool\": \"a\", \"args\": {\"n\": 1}, \"runtime_s\": 1.0}\n",
            "not json\n",
            "\n",
            "{\"tool\": \"a\", \"runtime_s\": -3}\n",
            "{\"tool\": \"a\", \"args\": {\"n\": 2}, \"runtime_s\": 80.0, \"ok\": false}\n",
        ),
    )
    .unwrap();
    let out = smart_async(&["replay", trace.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2: skipped:"), "{stderr}");
    assert!(
        stderr.contains("line 4: skipped: runtime_s must be a number of seconds ≥ 0"),
        "{stderr}"
    );
    assert!(stderr.contains("2 bad lines skipped"), "{stderr}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("2 calls, budget 50 s"), "{table}");
    assert!(table.contains("always_sync"), "{table}");
    let missing = smart_async(&["replay", "no/such/trace.jsonl"]);
    assert!(String::from_utf8_lossy(&missing.stderr)
        .contains("cannot open the trace no/such/trace.jsonl"));
}

/// Issue 15: errors printed their cause twice, a bad setting was blamed on the database,
/// and `--budget-s -1` got clap's "unexpected argument '-1'".
#[test]
fn errors_say_their_cause_once_and_bad_settings_say_what_is_wrong() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let missing = smart_async(&[
        "serve",
        "--data-dir",
        data_dir,
        "--config",
        "/no/such/config.toml",
    ]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    for (flag, value, says) in [
        (
            "--budget-s",
            "-1",
            "budget -1 s is not a positive number of seconds",
        ),
        ("--risk", "-0.5", "risk -0.5 is not between 0 and 1"),
    ] {
        let refused = smart_async(&["serve", "--data-dir", data_dir, flag, value]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success());
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("database"), "{flag} {value}: {stderr}");
    }
}

/// Issue 15: `serve` with stdin closed before any client connected exited 1 with
/// "connection closed: initialize request".
#[test]
fn serve_with_stdin_closed_before_a_client_exits_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_smart-async"))
        .args(["serve", "--data-dir", data.path().to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

/// Issue 15: `stats` opened the whole engine, which marks unfinished jobs interrupted,
/// prunes and writes (and now ends what interrupted jobs left running): it only reads.
#[tokio::test]
async fn stats_only_reads() {
    let data = tempfile::tempdir().unwrap();
    let job_id = {
        let engine = Engine::open(EngineConfig::new(data.path())).await.unwrap();
        let outcome = engine
            .call(ToolCall::new("slow", json!({"async_mode": true})), |_| {
                std::future::pending::<Result<serde_json::Value, smart_async::RunError>>()
            })
            .await
            .unwrap();
        let smart_async::CallOutcome::Job { job } = outcome else {
            panic!("async_mode gives a job")
        };
        for _ in 0..200 {
            if engine.job(job.id).unwrap().status() == smart_async::JobStatus::Running {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // As a stop leaves it: running on disk, read as interrupted by the next open.
        engine.close().await.unwrap();
        drop(engine);
        job.id
    };
    let stats = smart_async(&[
        "stats",
        "--json",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let store = smart_async::Store::open(data.path(), 1 << 20).unwrap();
    let job = store.job(job_id).unwrap().expect("the job is still stored");
    // Pending or running as the stop left it; an engine's open would have failed it.
    assert!(
        !job.status().is_terminal(),
        "stats marked the job {:?}",
        job.status()
    );
}

/// Issue 15: a command named like a job tool silently hid it (`list_jobs`).
#[test]
fn a_command_named_like_an_own_tool_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("config.toml");
    std::fs::write(
        &config,
        "[[command]]\nname = \"list_jobs\"\ndescription = \"x\"\nargv = [\"true\"]\n",
    )
    .unwrap();
    let refused = smart_async(&[
        "serve",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("command 'list_jobs' has the name of smart-async's own tool"),
        "{stderr}"
    );
}

/// Issue 15: a proxy whose upstream never came up left an empty database behind.
#[test]
fn a_failed_proxy_start_leaves_no_database_behind() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("fresh");
    let failed = smart_async(&[
        "proxy",
        "--data-dir",
        data.to_str().unwrap(),
        "--",
        "/no/such/upstream-server",
    ]);
    assert!(!failed.status.success());
    assert!(!data.exists(), "the database it created is removed");
    // One that existed before is kept, with what it held.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("keep"), "x").unwrap();
    let failed = smart_async(&[
        "proxy",
        "--data-dir",
        data.to_str().unwrap(),
        "--",
        "/no/such/upstream-server",
    ]);
    assert!(!failed.status.success());
    assert!(data.join("keep").exists());
}

/// Issue 15: the README's client snippets pointed at a config nobody had. `init` writes
/// a commented one where `serve` looks, refuses to overwrite it, and `serve` reads it.
#[test]
fn init_writes_a_config_that_serve_reads_by_default() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_smart-async"))
            .args(args)
            .env("XDG_CONFIG_HOME", home.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let written = run(&["init"]);
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let config = home.path().join("smart-async/config.toml");
    assert!(config.is_file());
    let said = String::from_utf8_lossy(&written.stdout);
    assert!(
        said.contains("claude mcp add smart-async -- smart-async serve"),
        "{said}"
    );

    let again = run(&["init"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(run(&["init", "--force"]).status.success());

    let data = home.path().join("data");
    let served = run(&["serve", "--data-dir", data.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&served.stderr);
    assert!(served.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("config: {}", config.display())),
        "{stderr}"
    );
}

/// Issue 15: `replay` took one trace and could not read gzip. Several traces give one
/// report each (the same as replaying each alone) and a total whose counts are their
/// sums; a `.gz` trace reads as the same trace uncompressed.
#[test]
fn replay_takes_several_traces_gzip_too_and_totals_them() {
    use std::io::Write;
    let traces = traces();
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("first.jsonl.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    encoder
        .write_all(&std::fs::read(&traces[0]).unwrap())
        .unwrap();
    encoder.finish().unwrap();
    let alone = |trace: &std::path::Path| -> serde_json::Value {
        let out = smart_async(&["replay", trace.to_str().unwrap(), "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let out = smart_async(&[
        "replay",
        traces[0].to_str().unwrap(),
        traces[1].to_str().unwrap(),
        gz.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports: Vec<&serde_json::Value> = all["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["report"])
        .collect();
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[0], &alone(&traces[0]));
    assert_eq!(reports[1], &alone(&traces[1]));
    assert_eq!(
        reports[2], reports[0],
        "the gzip trace reads as the plain one"
    );
    let total = &all["total"];
    assert_eq!(total["calls"], 9000);
    for (index, policy) in total["policies"].as_array().unwrap().iter().enumerate() {
        for count in ["sync", "background", "late", "needless"] {
            let summed: u64 = reports
                .iter()
                .map(|r| r["policies"][index][count].as_u64().unwrap())
                .sum();
            assert_eq!(
                policy[count].as_u64(),
                Some(summed),
                "{} {count}",
                policy["name"]
            );
        }
    }
}
