//! Command tools: commands the user declared in the config, run without a shell,
//! with typed parameters, a bounded output tail and a process group to stop.
//!
//! Only configured commands run. Parameters fill `{name}` placeholders in the argv
//! template, each as one argument (an element that is only a placeholder of a missing
//! optional parameter is dropped), so no value can become two arguments or a shell
//! command. With `shell = true` the single argv element is run by `sh -c`, and
//! parameters reach it only as environment variables (`filter` → `$FILTER`), never
//! spliced into the script.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::params::{fill, placeholders, values};
pub use super::params::{ParamSpec, ParamType};
use super::roots::Roots;
use super::{Tool, ToolOutput, ToolWork};
use crate::engine::ToolOptions;
use crate::features::ASYNC_MODE_ARG;
use crate::jobs::JobContext;
use crate::reap::{end_runs, RUN_VAR};
use crate::run_error::RunError;

mod group;
mod progress;

use group::{die_with_the_server, stop_group, GroupGuard};
use progress::ProgressLines;

/// Output kept per stream, from the end, when the config does not say.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// A command tool as declared in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// Tool name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// Program and arguments; `{param}` placeholders are filled per call.
    pub argv: Vec<String>,
    /// Working directory (relative paths are relative to the config file's directory).
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Kill the command after this many seconds.
    pub timeout_s: Option<f64>,
    /// Run `argv[0]` with `sh -c` (parameters become environment variables).
    #[serde(default)]
    pub shell: bool,
    /// Background until learned (LLM work and the like).
    #[serde(default)]
    pub expensive: bool,
    /// Bytes of output kept per stream, from the end.
    pub max_output_bytes: Option<usize>,
    /// Typed parameters by name.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// A regex for output lines that report progress, with a named group `done` and
    /// optionally `total` (`'\[(?P<done>\d+)/(?P<total>\d+)\]'`); the matching line is
    /// the progress message. Without it a command reports no progress.
    pub progress: Option<String>,
}

/// A command tool ready to run.
#[derive(Debug, Clone)]
pub struct CommandTool {
    spec: CommandSpec,
    cwd: PathBuf,
    progress: Option<Regex>,
    /// Where `path` parameters must lie.
    roots: Arc<Roots>,
}

impl CommandTool {
    /// Checks the spec; `base_dir` anchors a relative `cwd`, `roots` are where `path`
    /// parameters must lie.
    pub fn new(
        spec: CommandSpec,
        base_dir: &std::path::Path,
        roots: Arc<Roots>,
    ) -> Result<CommandTool, String> {
        let name = &spec.name;
        if !valid_tool_name(name) {
            return Err(format!(
                "command '{}': a tool name is 1 to 128 letters, digits, '_', '.' or '-' (what MCP clients accept): rename it",
                crate::jsonrpc::excerpt(name)
            ));
        }
        if spec.argv.is_empty() || spec.argv[0].is_empty() {
            return Err(format!("command '{name}': argv must name a program"));
        }
        if !spec.shell && placeholders(&spec.argv[0]).next().is_some() {
            return Err(format!(
                "command '{name}': the program (argv's first element) must be fixed: a parameter may not choose what runs"
            ));
        }
        for (param, param_spec) in &spec.params {
            param_spec.check(name, param, &roots)?;
        }
        if spec.shell && spec.argv.len() != 1 {
            return Err(format!(
                "command '{name}': with shell = true, argv must be one script string"
            ));
        }
        if spec.params.contains_key(ASYNC_MODE_ARG) {
            return Err(format!(
                "command '{name}': '{ASYNC_MODE_ARG}' is reserved; rename that parameter"
            ));
        }
        if let Some(timeout_s) = spec.timeout_s {
            if !(timeout_s.is_finite() && timeout_s > 0.0) {
                return Err(format!(
                    "command '{name}': timeout_s must be a positive number of seconds"
                ));
            }
        }
        if !spec.shell {
            for element in &spec.argv {
                for placeholder in placeholders(element) {
                    if !spec.params.contains_key(placeholder) {
                        return Err(format!(
                            "command '{name}': argv uses {{{placeholder}}} but no parameter '{placeholder}' is declared"
                        ));
                    }
                }
            }
        }
        let cwd = match &spec.cwd {
            Some(dir) if dir.is_absolute() => dir.clone(),
            Some(dir) => base_dir.join(dir),
            None => base_dir.to_path_buf(),
        };
        let progress = match &spec.progress {
            Some(pattern) => {
                let regex = Regex::new(pattern)
                    .map_err(|e| format!("command '{name}': progress is not a valid regex: {e}"))?;
                if !regex.capture_names().any(|group| group == Some("done")) {
                    return Err(format!(
                        "command '{name}': the progress regex needs a group named done, as in '(?P<done>\\d+)/(?P<total>\\d+)'"
                    ));
                }
                Some(regex)
            }
            None => None,
        };
        Ok(CommandTool {
            spec,
            cwd,
            progress,
            roots,
        })
    }

    fn command(&self, values: &BTreeMap<String, String>) -> tokio::process::Command {
        let mut command = if self.spec.shell {
            let mut command = tokio::process::Command::new("sh");
            command.arg("-c").arg(&self.spec.argv[0]);
            for (param, value) in values {
                command.env(param.to_uppercase(), value);
            }
            command
        } else {
            let argv = fill(&self.spec.argv, values);
            let mut command = tokio::process::Command::new(&argv[0]);
            command.args(&argv[1..]);
            command
        };
        command
            .current_dir(&self.cwd)
            .envs(&self.spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        die_with_the_server(&mut command);
        command
    }
}

/// Whether `name` is a tool name every MCP client accepts: `[A-Za-z0-9_.-]{1,128}`.
fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Tool for CommandTool {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn description(&self) -> &str {
        &self.spec.description
    }

    fn input_schema(&self) -> Map<String, Value> {
        let properties: Map<String, Value> = self
            .spec
            .params
            .iter()
            .map(|(name, spec)| (name.clone(), spec.schema()))
            .collect();
        let required: Vec<&String> = self
            .spec
            .params
            .iter()
            .filter(|(_, s)| s.required)
            .map(|(n, _)| n)
            .collect();
        let mut schema = Map::new();
        schema.insert("type".into(), json!("object"));
        schema.insert("properties".into(), Value::Object(properties));
        schema.insert("required".into(), json!(required));
        schema
    }

    fn options(&self) -> ToolOptions {
        ToolOptions {
            expensive: self.spec.expensive,
            extractor: None,
        }
    }

    fn start(&self, args: &Value) -> Result<ToolWork, String> {
        let values = values(&self.spec.name, &self.spec.params, args, &self.roots)?;
        let mut command = self.command(&values);
        let name = self.spec.name.clone();
        let timeout = self.spec.timeout_s.map(Duration::from_secs_f64);
        let max_bytes = self
            .spec
            .max_output_bytes
            .unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
        let progress = self.progress.clone();
        Ok(Box::new(move |ctx: JobContext| {
            let progress = progress.map(|regex| ProgressLines::new(regex, ctx.clone()));
            Box::pin(
                async move { run(&name, &mut command, timeout, max_bytes, progress, &ctx).await },
            )
        }))
    }
}

/// The end of a stream, at most `max` bytes, and how many bytes were dropped before it;
/// lines are shown to `progress` as they come.
async fn tail(
    mut stream: impl AsyncRead + Unpin,
    max: usize,
    mut progress: Option<ProgressLines>,
) -> (Vec<u8>, u64) {
    let mut kept = VecDeque::with_capacity(max.min(1 << 16));
    let mut dropped = 0u64;
    let mut buffer = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        if let Some(progress) = &mut progress {
            progress.feed(&buffer[..n]);
        }
        kept.extend(&buffer[..n]);
        let excess = kept.len().saturating_sub(max);
        kept.drain(..excess);
        dropped += excess as u64;
    }
    if let Some(progress) = &mut progress {
        progress.end_line();
    }
    (kept.into(), dropped)
}

async fn run(
    name: &str,
    command: &mut tokio::process::Command,
    timeout: Option<Duration>,
    max_bytes: usize,
    progress: Option<ProgressLines>,
    ctx: &JobContext,
) -> Result<ToolOutput, RunError> {
    let started = Instant::now();
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    // Inherited by everything the command starts, so a cancel reaches what left its group.
    command.env(RUN_VAR, ctx.run_id().to_string());
    let mut child = command
        .spawn()
        .map_err(|e| format!("{name}: cannot start '{program}': {e}"))?;
    let group = child.id().map(|id| Pid::from_raw(id as i32));
    let mut dropped_with = GroupGuard(group.map(|group| (group, ctx.run_id())));
    let stdout = child
        .stdout
        .take()
        .map(|s| tokio::spawn(tail(s, max_bytes, progress.clone())));
    let stderr = child
        .stderr
        .take()
        .map(|s| tokio::spawn(tail(s, max_bytes, progress)));
    let deadline = async {
        match timeout {
            Some(timeout) => tokio::time::sleep(timeout).await,
            None => std::future::pending().await,
        }
    };
    let stopped = tokio::select! {
        status = child.wait() => Ok(status),
        _ = ctx.cancelled() => Err(RunError::Cancelled),
        _ = deadline => Err(RunError::TimedOut {
            after_s: timeout.unwrap_or_default().as_secs_f64(),
        }),
    };
    let status = match stopped {
        Ok(status) => {
            // It ended by itself: whatever it left running in its group is its business.
            dropped_with.0 = None;
            status.map_err(|e| format!("{name}: waiting for the command failed: {e}"))?
        }
        Err(reason) => {
            stop_group(group, &mut child).await;
            dropped_with.0 = None;
            let run = ctx.run_id();
            let _ = tokio::task::spawn_blocking(move || end_runs(&[run])).await;
            return Err(reason);
        }
    };
    let collect = |handle: Option<tokio::task::JoinHandle<(Vec<u8>, u64)>>| async move {
        match handle {
            Some(handle) => handle.await.unwrap_or_default(),
            None => (Vec::new(), 0),
        }
    };
    let (stdout, stdout_dropped) = collect(stdout).await;
    let (stderr, stderr_dropped) = collect(stderr).await;
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    let runtime_s = started.elapsed().as_secs_f64();
    let exit = status.code().map_or_else(
        || format!("killed by a signal ({status})"),
        |c| format!("exit code {c}"),
    );
    let mut text = format!("{name}: {exit} after {runtime_s:.1} s\n");
    for (label, body, dropped) in [
        ("stdout", &stdout, stdout_dropped),
        ("stderr", &stderr, stderr_dropped),
    ] {
        if body.is_empty() {
            continue;
        }
        if dropped > 0 {
            text.push_str(&format!(
                "--- {label} (last {} bytes; {dropped} earlier bytes cut) ---\n",
                body.len()
            ));
        } else {
            text.push_str(&format!("--- {label} ---\n"));
        }
        text.push_str(body);
        if !body.ends_with('\n') {
            text.push('\n');
        }
    }
    if !status.success() {
        return Err(RunError::tool(text));
    }
    let structured = json!({
        "exit_code": status.code(),
        "runtime_s": runtime_s,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_bytes_cut": stdout_dropped,
        "stderr_bytes_cut": stderr_dropped,
    });
    Ok(ToolOutput { text, structured })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    /// Issue 15: tool names were not checked; clients refuse some, and a name with
    /// spaces or slashes cannot be called by many.
    #[test]
    fn a_tool_name_must_be_one_every_client_accepts() {
        for bad in ["", "has space", "a/b", "ünï", &"x".repeat(129)] {
            let mut s = spec(&["true"]);
            s.name = bad.to_owned();
            let err = CommandTool::new(s, std::path::Path::new("."), roots()).unwrap_err();
            assert!(err.contains("1 to 128 letters, digits"), "{bad:?}: {err}");
        }
        for good in ["build", "run_tests.v2", "a-b", &"x".repeat(128)] {
            let mut s = spec(&["true"]);
            s.name = good.to_owned();
            assert!(
                CommandTool::new(s, std::path::Path::new("."), roots()).is_ok(),
                "{good}"
            );
        }
    }

    pub(super) fn spec(argv: &[&str]) -> CommandSpec {
        CommandSpec {
            name: "cmd".into(),
            description: "test".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            env: BTreeMap::new(),
            timeout_s: None,
            shell: false,
            expensive: false,
            max_output_bytes: None,
            params: BTreeMap::new(),
            progress: None,
        }
    }

    fn param(kind: ParamType, required: bool) -> ParamSpec {
        ParamSpec {
            required,
            ..ParamSpec::new(kind)
        }
    }

    pub(super) fn roots() -> Arc<Roots> {
        Arc::new(Roots::new(&[std::env::temp_dir()]).unwrap())
    }

    /// Runs `tool`; an error in words, whether its arguments or its run failed.
    async fn run_tool(tool: &CommandTool, args: Value) -> Result<ToolOutput, String> {
        let work = tool.start(&args)?;
        work(JobContext::new(CancellationToken::new()))
            .await
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn runs_with_typed_parameters_and_captures_output() {
        let mut s = spec(&["sh", "-c", "echo \"$0 $1\"; echo err >&2", "{word}", "{n}"]);
        s.params
            .insert("word".into(), param(ParamType::String, true));
        s.params
            .insert("n".into(), param(ParamType::Integer, false));
        let tool = CommandTool::new(s, &std::env::temp_dir(), roots()).unwrap();
        let out = run_tool(&tool, json!({"word": "hi there", "n": 3}))
            .await
            .unwrap();
        assert_eq!(out.structured["stdout"], "hi there 3\n");
        assert_eq!(out.structured["stderr"], "err\n");
        assert!(
            out.text.starts_with("cmd: exit code 0 after"),
            "{}",
            out.text
        );
        let err = run_tool(&tool, json!({"n": 3})).await.unwrap_err();
        assert!(err.contains("parameter 'word' is required"), "{err}");
        let err = run_tool(&tool, json!({"word": "x", "n": 1.5}))
            .await
            .unwrap_err();
        assert!(
            err.contains("parameter 'n' must be of type integer, got 1.5"),
            "{err}"
        );
        let err = run_tool(&tool, json!({"word": "x", "bogus": 1}))
            .await
            .unwrap_err();
        assert!(err.contains("unknown parameter 'bogus'"), "{err}");
    }

    #[tokio::test]
    async fn a_failing_command_is_an_error_with_its_output() {
        let tool = CommandTool::new(
            spec(&["sh", "-c", "echo boom; exit 3"]),
            &std::env::temp_dir(),
            roots(),
        )
        .unwrap();
        let err = run_tool(&tool, json!({})).await.unwrap_err();
        assert!(err.contains("exit code 3") && err.contains("boom"), "{err}");
        let missing =
            CommandTool::new(spec(&["/no/such/program"]), &std::env::temp_dir(), roots()).unwrap();
        let err = run_tool(&missing, json!({})).await.unwrap_err();
        assert!(err.contains("cannot start '/no/such/program'"), "{err}");
    }

    #[tokio::test]
    async fn output_keeps_the_tail_within_the_bound() {
        let mut s = spec(&["sh", "-c", "seq 1 20000"]);
        s.max_output_bytes = Some(100);
        let tool = CommandTool::new(s, &std::env::temp_dir(), roots()).unwrap();
        let out = run_tool(&tool, json!({})).await.unwrap();
        let stdout = out.structured["stdout"].as_str().unwrap();
        assert_eq!(stdout.len(), 100);
        assert!(stdout.ends_with("19999\n20000\n"));
        assert!(out.text.contains("earlier bytes cut"), "{}", out.text);
    }

    #[tokio::test]
    async fn shell_mode_passes_parameters_as_environment_only() {
        let mut s = spec(&["printf '%s' \"$WORD\""]);
        s.shell = true;
        s.params
            .insert("word".into(), param(ParamType::String, true));
        let tool = CommandTool::new(s, &std::env::temp_dir(), roots()).unwrap();
        let out = run_tool(&tool, json!({"word": "$(echo injected)"}))
            .await
            .unwrap();
        assert_eq!(out.structured["stdout"], "$(echo injected)");
    }

    #[tokio::test]
    async fn a_hard_timeout_stops_the_command() {
        let mut s = spec(&["sleep", "30"]);
        s.timeout_s = Some(0.2);
        let tool = CommandTool::new(s, &std::env::temp_dir(), roots()).unwrap();
        let err = run_tool(&tool, json!({})).await.unwrap_err();
        assert!(err.contains("timed out after 0.20 s"), "{err}");
    }

    #[test]
    fn bad_specs_say_what_to_fix() {
        let err = CommandTool::new(spec(&["echo", "{nope}"]), &std::env::temp_dir(), roots())
            .unwrap_err();
        assert!(err.contains("no parameter 'nope' is declared"), "{err}");
        let err = CommandTool::new(spec(&[]), &std::env::temp_dir(), roots()).unwrap_err();
        assert!(err.contains("argv must name a program"), "{err}");
        // Issue 14 (same class as break 2): `["{cmd}"]` let a value choose the program,
        // and panicked when the parameter was left out.
        let mut chosen = spec(&["{cmd}", "x"]);
        chosen
            .params
            .insert("cmd".into(), param(ParamType::String, false));
        let err = CommandTool::new(chosen, &std::env::temp_dir(), roots()).unwrap_err();
        assert!(
            err.contains("program (argv's first element) must be fixed"),
            "{err}"
        );
        let mut s = spec(&["a", "b"]);
        s.shell = true;
        assert!(CommandTool::new(s, &std::env::temp_dir(), roots())
            .unwrap_err()
            .contains("one script string"));
    }

    #[test]
    fn the_schema_lists_typed_parameters_and_required_ones() {
        let mut s = spec(&["echo", "{a}"]);
        s.params.insert("a".into(), param(ParamType::Number, true));
        let schema = CommandTool::new(s, &std::env::temp_dir(), roots())
            .unwrap()
            .input_schema();
        assert_eq!(schema["properties"]["a"]["type"], "number");
        assert_eq!(schema["required"], json!(["a"]));
    }
}
