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
    let tools: Vec<&str> = stats
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tool"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["index", "*"]);
    assert_eq!(stats[0]["samples"], 8);
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
