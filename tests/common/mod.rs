//! Helpers shared by the end-to-end tests: start the real binary, call its tools
//! with rmcp's client, read the answers.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::Stdio;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, Peer, RunningService};
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_smart-async");

pub type Client = RunningService<RoleClient, ()>;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts `smart-async serve` on stdio with these flags.
pub fn spawn_server(args: &[&str]) -> TokioChildProcess {
    spawn("serve", args)
}

/// Starts `smart-async SUBCOMMAND ARGS` with stdio as its MCP transport.
pub fn spawn(subcommand: &str, args: &[&str]) -> TokioChildProcess {
    let command = tokio::process::Command::new(BIN).configure(|c| {
        c.arg(subcommand).args(args);
    });
    let (transport, _) = TokioChildProcess::builder(command)
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts");
    transport
}

/// Starts `smart-async serve` on stdio with these flags and connects to it.
pub async fn connect(args: &[&str]) -> Client {
    ().serve(spawn_server(args))
        .await
        .expect("the MCP handshake succeeds")
}

/// Connects as the client `info` says (its name and capabilities), with the
/// 2026-07-28 lifecycle (`server/discover`, per-request metadata).
pub async fn connect_as(
    args: &[&str],
    info: ClientConfig,
) -> RunningService<RoleClient, ClientConfig> {
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    info.serve_with_lifecycle(spawn_server(args), lifecycle)
        .await
        .expect("the 2026-07-28 discovery succeeds")
}

/// A client called `name`, declaring the tasks extension or not.
pub fn client_info(name: &str, tasks: bool) -> ClientConfig {
    let capabilities = if tasks {
        ClientCapabilities::builder().enable_tasks().build()
    } else {
        ClientCapabilities::default()
    };
    ClientConfig::new(capabilities, Implementation::new(name, "1.0.0"))
}

/// Writes a config file with `toml` in `dir`; returns its path.
pub fn write_config(dir: &Path, toml: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).expect("the config is written");
    path.display().to_string()
}

pub async fn call(client: &Peer<RoleClient>, tool: &str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool} failed at the protocol level: {e}"))
}

pub fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("")
}

pub fn structured(result: &CallToolResult) -> &Value {
    result
        .structured_content
        .as_ref()
        .expect("structured content")
}

pub fn is_error(result: &CallToolResult) -> bool {
    result.is_error == Some(true)
}

/// A data dir and a root with a few small files.
pub struct Setup {
    pub data: TempDir,
    pub root: TempDir,
}

impl Setup {
    pub fn new() -> Setup {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("small")).unwrap();
        for i in 0..3 {
            std::fs::write(
                root.path().join(format!("small/f{i}.txt")),
                format!("file {i}\n"),
            )
            .unwrap();
        }
        Setup {
            data: tempfile::tempdir().unwrap(),
            root,
        }
    }

    pub fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "--data-dir",
            path_str(self.data.path()),
            "--root",
            path_str(self.root.path()),
        ];
        args.extend_from_slice(extra);
        args
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

pub fn example_config() -> String {
    repo()
        .join("data/smart-async.example.toml")
        .display()
        .to_string()
}

/// Pids of processes whose command line is exactly `argv`.
pub fn pids_running(argv: &[&str]) -> Vec<u32> {
    let wanted = argv.join("\0") + "\0";
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            (cmdline == wanted.as_bytes() && !zombie).then_some(pid)
        })
        .collect()
}

/// Waits (up to 10 s) until `condition` holds.
pub async fn wait_until(condition: impl Fn() -> bool, what: &str) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("timed out waiting: {what}");
}

/// A loopback address with a port nobody listens on, and none handed out before in this
/// test binary: the kernel can give the port just let go to the next caller, and two
/// tests running at once then start their servers on one port (one fails to bind, and
/// its test talks to the other's server as it stops).
pub fn free_local_addr() -> String {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return format!("127.0.0.1:{port}");
        }
    }
}

/// Connects over Streamable HTTP to `http://ADDR/mcp`, waiting (up to 5 s) for the
/// server to listen.
pub async fn connect_http(addr: &str) -> Client {
    let url = format!("http://{addr}/mcp");
    for _ in 0..100 {
        if let Ok(client) = ().serve(StreamableHttpClientTransport::from_uri(url.clone())).await {
            return client;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("could not connect to {url}");
}

/// Command tools for the protocol and proxy tests: `sleep {seconds}`, and `steps`,
/// four half-second steps that report their progress.
pub const TEST_CONFIG: &str = r#"
[[command]]
name = "sleep"
description = "Sleep for a number of seconds."
argv = ["sleep", "{seconds}"]
timeout_s = 600
[command.params.seconds]
type = "number"
description = "Seconds"
required = true

[[command]]
name = "steps"
description = "Four steps, each reported on stdout."
argv = ["sh", "-c", "for i in 1 2 3 4; do echo \"[$i/4] step $i\"; sleep 0.5; done"]
progress = '\[(?P<done>\d+)/(?P<total>\d+)\]'
"#;

/// Asserts that `tools` lists every name in `expected`.
pub fn assert_lists(tools: &[rmcp::model::Tool], expected: &[&str]) {
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for name in expected {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
}

/// The `job_status` view of a failed job whose tool answered the error result of the
/// test tools that fail with more than text (`refuse` in tests/wrapped.rs, the
/// fixture's `test_error_with_details`): every block and the structured content.
pub fn assert_the_whole_error_result(view: &Value) {
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error"], "over quota");
    assert_eq!(view["content"][1]["type"], "image");
    assert_eq!(view["result"]["retry_after_s"], 60);
}

/// `smart-async serve --http` on a free loopback port with a config (the test command
/// tools appended) and extra flags, stopped when dropped.
pub struct AuthServer {
    pub addr: String,
    _setup: Setup,
    _process: tokio::process::Child,
}

impl AuthServer {
    pub async fn start(config: &str, extra: &[&str]) -> AuthServer {
        let setup = Setup::new();
        let addr = free_local_addr();
        let path = setup.data.path().join("config.toml");
        std::fs::write(&path, format!("{config}\n{TEST_CONFIG}")).unwrap();
        let process = tokio::process::Command::new(BIN)
            .arg("serve")
            .args(setup.args(&["--http", &addr, "--config", path_str(&path)]))
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        AuthServer {
            addr,
            _setup: setup,
            _process: process,
        }
    }

    /// `http://ADDR` and `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A Streamable HTTP transport to `/mcp` that sends `token` as its bearer.
    pub fn transport(&self, token: &str) -> StreamableHttpClientTransport<reqwest::Client> {
        let config =
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                self.url("/mcp"),
            )
            .auth_header(token.to_owned());
        StreamableHttpClientTransport::from_config(config)
    }

    pub async fn connect(&self, token: &str) -> Client {
        ().serve(self.transport(token)).await.unwrap()
    }

    /// A client that declared the tasks extension, for `tasks/get` and `tasks/cancel`.
    pub async fn connect_tasks(&self, token: &str) -> RunningService<RoleClient, ClientConfig> {
        client_info("tasks", true)
            .serve(self.transport(token))
            .await
            .unwrap()
    }

    /// A POST of `body` to `/mcp`, with `token` as its bearer when given.
    pub fn post(&self, token: Option<&str>, body: String) -> reqwest::RequestBuilder {
        let request = reqwest::Client::new()
            .post(self.url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        match token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// An `initialize` POST with this `Authorization` header, if any.
    pub async fn initialize(&self, authorization: Option<&str>) -> reqwest::Response {
        let mut request = self.post(None, INITIALIZE.to_owned());
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        request.send().await.unwrap()
    }
}

/// An `initialize` request of a 2025-11-25 client.
pub const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

/// A static token for `principal`, made by `smart-async token new`: the token and the
/// `[[auth.tokens]]` entry it printed.
pub fn token_for(principal: &str) -> (String, String) {
    let output = std::process::Command::new(BIN)
        .args(["token", "new", principal])
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let token = printed.lines().next().unwrap().to_owned();
    let entry: Vec<&str> = printed
        .lines()
        .skip_while(|line| *line != "[[auth.tokens]]")
        .collect();
    (token, entry.join("\n"))
}
