//! Regression tests for issue 14, break 2: a command parameter became an option, and
//! the shipped example config deleted the project (`count_lines` with
//! `{"dir": "-delete"}` ran `find -delete` in the project root). The example config is
//! used here as shipped, from a copy in a temp tree laid out like the project, so
//! nothing but that tree is at stake.

mod common;

use common::{call, connect, is_error, path_str, structured, text};
use serde_json::json;

/// A temp tree like the project: the config in `data/`, files beside it, since the
/// example's root and working directory are `..`.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("src/lib.rs"), "fn a() {}\nfn b() {}\n").unwrap();
        std::fs::write(root.join("README.md"), "keep me\n").unwrap();
        std::fs::copy(
            common::repo().join("data/smart-async.example.toml"),
            root.join("data/smart-async.example.toml"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/", root.join("to_root")).unwrap();
        Project { dir }
    }

    fn config(&self) -> String {
        let path = self.dir.path().join("data/smart-async.example.toml");
        path.display().to_string()
    }

    fn intact(&self) -> bool {
        let root = self.dir.path();
        root.join("src/lib.rs").is_file() && root.join("README.md").is_file()
    }
}

#[tokio::test]
async fn break_2_no_value_of_the_example_config_s_tools_is_read_as_an_option() {
    let project = Project::new();
    let data = tempfile::tempdir().unwrap();
    let config = project.config();
    let client = connect(&["--data-dir", path_str(data.path()), "--config", &config]).await;

    for (tool, args, says) in [
        ("count_lines", json!({"dir": "-delete"}), "parameter 'dir'"),
        (
            "count_lines",
            json!({"dir": "--version"}),
            "parameter 'dir'",
        ),
        (
            "count_lines",
            json!({"dir": "../.."}),
            "outside the allowed roots",
        ),
        (
            "count_lines",
            json!({"dir": "to_root"}),
            "outside the allowed roots",
        ),
        (
            "count_lines",
            json!({"dir": "/etc"}),
            "outside the allowed roots",
        ),
        (
            "sleep",
            json!({"seconds": -5}),
            "between 0 and 3600, got -5",
        ),
        ("sleep", json!({"seconds": 1e12}), "between 0 and 3600"),
        (
            "run_tests",
            json!({"filter": "--help"}),
            "may not start with '-'",
        ),
        (
            "run_tests",
            json!({"filter": "-q"}),
            "allow_leading_dash = true",
        ),
    ] {
        let refused = call(&client, tool, args.clone()).await;
        assert!(is_error(&refused), "{tool} {args} ran: {}", text(&refused));
        assert!(
            text(&refused).contains(says),
            "{tool} {args}: {}",
            text(&refused)
        );
        assert!(project.intact(), "{tool} {args} deleted files");
    }

    // What the tool is for still works, with the path passed absolute.
    let counted = call(&client, "count_lines", json!({"dir": "src"})).await;
    assert!(!is_error(&counted), "{}", text(&counted));
    let stdout = structured(&counted)["stdout"].as_str().unwrap().to_owned();
    let lib = project
        .dir
        .path()
        .canonicalize()
        .unwrap()
        .join("src/lib.rs");
    assert!(stdout.contains(&format!("2 {}", lib.display())), "{stdout}");
    client.cancel().await.unwrap();
    assert!(project.intact());
}

#[tokio::test]
async fn a_command_whose_parameter_chooses_the_program_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        dir.path(),
        r#"
[[command]]
name = "run"
description = "Runs what it is told."
argv = ["{cmd}", "x"]
[command.params.cmd]
type = "string"
"#,
    );
    let output = std::process::Command::new(common::BIN)
        .args([
            "serve",
            "--data-dir",
            path_str(dir.path()),
            "--config",
            &config,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("command 'run': the program (argv's first element) must be fixed"),
        "{stderr}"
    );
}
