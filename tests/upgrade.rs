//! Upgrades lose nothing: a database written by an earlier release (a fixture made by
//! `examples/upgrade_fixture.rs` at that release, with what its `stats`, `export` and
//! `list_jobs` showed) opens in this one with every sample, model, client budget and
//! job intact, and learning goes on from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use smart_async::{CallOutcome, Engine, EngineConfig, JobFilter, ToolCall};

fn fixture(format: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format-{format}"))
}

/// A copy of the fixture's database, so the test never changes the fixture.
fn copy_of_database(format: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = fixture(format).join("db");
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        // sled's files sit flat in its directory (its `blobs` folder stays empty, and
        // git keeps no empty folder).
        if entry.file_type().unwrap().is_dir() {
            continue;
        }
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn smart_async(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_smart-async"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn read(format: u32, file: &str) -> String {
    std::fs::read_to_string(fixture(format).join(file)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_3_database_opens_with_everything_intact_and_learning_goes_on() {
    let dir = copy_of_database(3);
    let data_dir = dir.path().to_str().unwrap();

    // The first open migrates; `stats` and `export` show what the old release showed.
    let mut stats: Value =
        serde_json::from_str(&smart_async(&["stats", "--json", "--data-dir", data_dir])).unwrap();
    let mut before: Value = serde_json::from_str(&read(3, "stats.json")).unwrap();
    // Since format 6 (issue 18) a record also has a calibration offset and a count of
    // censored runs, which an older model starts at 0; and the coverage target is the
    // break-even risk's, not the 0.05 the fixture's release used.
    for tool in stats["tools"].as_array_mut().unwrap() {
        let tool = tool.as_object_mut().unwrap();
        assert_eq!(tool.remove("calibration_offset"), Some(json!(0.0)));
        assert_eq!(tool.remove("censored"), Some(json!(0)));
        tool.remove("bound_level");
        tool.remove("coverage_target");
    }
    for tool in before["tools"].as_array_mut().unwrap() {
        tool.as_object_mut().unwrap().remove("coverage_target");
    }
    assert_eq!(stats, before);
    // The export is the old one plus the cancelled runs, which the old release left
    // out and which are now censored lines (issue 18).
    let export = smart_async(&["export", "--data-dir", data_dir]);
    let (censored, rest): (Vec<&str>, Vec<&str>) = export
        .lines()
        .partition(|line| line.ends_with(r#""censored":true}"#));
    assert_eq!(rest.join("\n") + "\n", read(3, "export.jsonl"));
    assert_eq!(censored.len(), 4, "{export}");

    // Every job, in every state it ended in, reads back the same; a completed job's
    // result is typed since format 5 (the fixture's are values an engine caller's work
    // returned), and is the same value.
    // The fixture's jobs ended when it was made: kept past the default 24 h retention,
    // which had made this test fail a day after the fixture was written.
    let mut config = EngineConfig::new(dir.path());
    config.jobs.retention = std::time::Duration::from_secs(100 * 365 * 24 * 3600);
    let engine = Engine::open(config).await.unwrap();
    let jobs = serde_json::to_value(engine.list_jobs(&JobFilter::default()).unwrap()).unwrap();
    let mut jobs_before: Value = serde_json::from_str(&read(3, "jobs.json")).unwrap();
    for job in jobs_before.as_array_mut().unwrap() {
        if let Some(result) = job.get_mut("result") {
            *result = json!({ "kind": "value", "value": result.take() });
        }
    }
    assert_eq!(jobs, jobs_before);
    let statuses: Vec<&str> = (jobs.as_array().unwrap().iter())
        .map(|job| job["status"].as_str().unwrap())
        .collect();
    for status in ["completed", "failed", "cancelled"] {
        assert!(statuses.contains(&status), "{statuses:?}");
    }
    // The client budget learned from cancels is still in force.
    let budget = engine.client_budget(Some("impatient-client"));
    assert!(budget.budget_s < 1.0, "{budget:?}");

    // Learning goes on from the migrated model: resize is warm and learns one more.
    let call = ToolCall::new("resize", json!({ "images": 40, "format": "png" }));
    let outcome = engine
        .call(call, |_ctx| async { Ok(json!("resized")) })
        .await
        .unwrap();
    let CallOutcome::Done { decision, .. } = outcome else {
        panic!("a quick call went to the background");
    };
    assert_eq!(
        decision.source,
        smart_async::Source::Learned,
        "{decision:?}"
    );
    engine.close().await.unwrap();
    drop(engine);

    let after: Value = serde_json::from_str(&smart_async(&[
        "stats",
        "--json",
        "--tool",
        "resize",
        "--data-dir",
        data_dir,
    ]))
    .unwrap();
    let resize_before = (before["tools"].as_array().unwrap().iter())
        .find(|tool| tool["tool"] == "resize")
        .unwrap();
    assert_eq!(
        after["tools"][0]["samples"].as_u64().unwrap(),
        resize_before["samples"].as_u64().unwrap() + 1
    );
    assert_eq!(
        after["tools"][0]["checked_predictions"].as_u64().unwrap(),
        resize_before["checked_predictions"].as_u64().unwrap() + 1
    );
    let exported = smart_async(&["export", "--data-dir", data_dir]);
    let old = read(3, "export.jsonl");
    let lines: std::collections::HashSet<&str> = exported.lines().collect();
    assert!(old.lines().all(|line| lines.contains(line)), "{exported}");
    // The new run, beside the old lines and the 4 censored ones.
    assert_eq!(exported.lines().count(), old.lines().count() + 4 + 1);
}
