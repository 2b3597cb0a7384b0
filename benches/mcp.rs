//! MCP overhead: a no-op tool called through the smart-async server vs through a plain
//! rmcp server with the same tool, side by side in one run.
//!
//! Run: `cargo bench --bench mcp`. Criterion's two groups call each server over an
//! in-memory duplex pipe, so only the server code differs; each iteration is 2,000
//! sequential calls. Then it prints the ratio smart_async / plain as the median of
//! rounds that alternate the two servers, with a 95% interval for that median, twice:
//! over that pipe, and over stdio with each server in a process of its own, as
//! `smart-async serve` is run (this binary, started again with [`SERVE_ENV`] set,
//! serves one of the two). Target ≤ 1.05. `cargo bench --bench mcp -- none` skips
//! criterion's groups (no benchmark is named so) and measures only the ratios.
//!
//! Time on a shared machine is noisy; instructions are not. With [`COUNT_ENV`] set to
//! `plain:N` or `smart:N` this binary only makes N calls through that server on a
//! current-thread runtime, so that under
//! `valgrind --tool=callgrind --separate-threads=yes` the runtime thread's totals at two
//! N, differenced and divided by the difference in N, are what a call costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool as McpTool,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::{ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Map, Value};
use smart_async::SmartServer;
use smart_async::{Engine, EngineConfig, JobContext};
use smart_async::{Tool, ToolOutput, ToolWork};
use tokio::process::{Child, Command};

const CALLS: usize = 2000;

/// The tool both servers offer.
struct Noop;

impl Tool for Noop {
    fn name(&self) -> &str {
        "noop"
    }
    fn description(&self) -> &str {
        "Does nothing."
    }
    fn input_schema(&self) -> Map<String, Value> {
        let mut schema = Map::new();
        schema.insert("type".into(), json!("object"));
        schema
    }
    fn start(&self, _: &Value) -> Result<ToolWork, String> {
        Ok(Box::new(|_: JobContext| {
            Box::pin(async {
                Ok(ToolOutput {
                    text: "ok".into(),
                    structured: json!({"ok": true}),
                })
            })
        }))
    }
}

/// A plain rmcp server with the same tool: what people run today.
#[derive(Clone)]
struct Plain;

impl ServerHandler for Plain {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![McpTool::new(
            "noop",
            "Does nothing.",
            Arc::new(Noop.input_schema()),
        )]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let work = Noop
            .start(&Value::Object(request.arguments.unwrap_or_default()))
            .map_err(|e| ErrorData::invalid_params(e, None))?;
        let output = work(JobContext::new(Default::default()))
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let mut result = CallToolResult::success(vec![ContentBlock::text(output.text)]);
        result.structured_content = Some(output.structured);
        Ok(result.into())
    }
}

async fn connect<S: ServerHandler>(server: S) -> RunningService<RoleClient, ()> {
    let (client_end, server_end) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        if let Ok(running) = server.serve(server_end).await {
            let _ = running.waiting().await;
        }
    });
    ().serve(client_end).await.expect("handshake")
}

async fn calls(client: &RunningService<RoleClient, ()>, n: usize) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        let args = json!({ "i": i % 10 });
        let Value::Object(args) = args else {
            unreachable!()
        };
        let result = client
            .call_tool(CallToolRequestParams::new("noop").with_arguments(args))
            .await
            .expect("call");
        assert_ne!(result.is_error, Some(true));
    }
    started.elapsed()
}

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (plain, smart, engine) = runtime.block_on(async {
        let engine = Engine::open(EngineConfig::new(dir.path()))
            .await
            .expect("engine");
        let smart = connect(SmartServer::new(engine.clone(), vec![Arc::new(Noop)])).await;
        (connect(Plain).await, smart, engine)
    });
    let mut group = c.benchmark_group("mcp_overhead_2000_calls");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("plain_rmcp", |b| {
        b.iter_custom(|iters| runtime.block_on(calls_n(&plain, iters)))
    });
    group.bench_function("smart_async", |b| {
        b.iter_custom(|iters| runtime.block_on(calls_n(&smart, iters)))
    });
    group.finish();
    // `cargo test` runs this once to check it works: the side-by-side rounds are for
    // `cargo bench`.
    if !std::env::args().any(|arg| arg == "--bench") {
        runtime.block_on(engine.close()).expect("close");
        return;
    }
    let ratio = runtime.block_on(interleaved_ratio(&plain, &smart));
    println!(
        "mcp overhead ratio, smart_async / plain_rmcp, in-memory pipe, median of {ROUNDS} interleaved rounds of {CALLS} calls: {ratio}"
    );
    runtime.block_on(engine.close()).expect("close");
    let ratio = runtime.block_on(async {
        let data = tempfile::tempdir().expect("temp dir");
        let (plain_process, plain) = spawn_server("plain", data.path()).await;
        let (smart_process, smart) = spawn_server("smart", data.path()).await;
        let ratio = interleaved_ratio(&plain, &smart).await;
        for (mut process, client) in [(plain_process, plain), (smart_process, smart)] {
            let _ = client.cancel().await;
            let _ = process.wait().await;
        }
        ratio
    });
    println!(
        "mcp overhead ratio, smart_async / plain_rmcp, stdio to server processes, median of {ROUNDS} interleaved rounds of {CALLS} calls: {ratio}"
    );
}

/// Set to `plain` or `smart`, this binary serves that server over stdio (with its
/// data in [`DATA_ENV`]) instead of benchmarking.
const SERVE_ENV: &str = "SMART_ASYNC_BENCH_SERVE";
const DATA_ENV: &str = "SMART_ASYNC_BENCH_DATA";
/// Set to `plain:N` or `smart:N`, this binary makes N calls through that server in
/// this process and exits (see the module's doc).
const COUNT_ENV: &str = "SMART_ASYNC_BENCH_COUNT";

/// Makes the calls [`COUNT_ENV`] asks for, on one thread.
fn count(spec: &str) {
    let (which, n) = spec.split_once(':').expect("plain:N or smart:N");
    let n: usize = n.parse().expect("a number of calls");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    runtime.block_on(async {
        // Opened for both, so that the start-up work is the same and cancels out.
        let engine = Engine::open(EngineConfig::new(dir.path()))
            .await
            .expect("engine");
        let client = if which == "smart" {
            connect(SmartServer::new(engine.clone(), vec![Arc::new(Noop)])).await
        } else {
            connect(Plain).await
        };
        calls(&client, n).await;
        engine.close().await.expect("close");
    });
}

/// This binary started again as one of the two servers, and a client connected to it.
async fn spawn_server(
    which: &str,
    data: &std::path::Path,
) -> (Child, RunningService<RoleClient, ()>) {
    let exe = std::env::current_exe().expect("own path");
    let mut process = Command::new(exe)
        .env(SERVE_ENV, which)
        .env(DATA_ENV, data.join(which))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the server");
    let stdin = process.stdin.take().expect("stdin");
    let stdout = process.stdout.take().expect("stdout");
    let client = ().serve((stdout, stdin)).await.expect("handshake");
    (process, client)
}

/// Serves `which` over stdio until the client goes away.
fn serve(which: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        if which == "plain" {
            let running = Plain.serve(rmcp::transport::stdio()).await.expect("serve");
            let _ = running.waiting().await;
        } else {
            let data = std::env::var_os(DATA_ENV).expect("data dir");
            let engine = Engine::open(EngineConfig::new(data)).await.expect("engine");
            let server = SmartServer::new(engine.clone(), vec![Arc::new(Noop)]);
            server.serve_stdio().await.expect("serve");
            engine.close().await.expect("close");
        }
    });
}

/// Rounds of the side-by-side measurement: enough that the interval around the
/// median is a few percent wide on this kind of machine.
const ROUNDS: usize = 41;

/// The ratios of rounds that alternate the two servers, so that both see the same
/// machine: on a shared 2-core machine the medians of two runs a minute apart differ
/// by more than the overhead.
struct Ratio {
    median: f64,
    /// A distribution-free 95% interval for the median (see [`median_interval`]).
    low: f64,
    high: f64,
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} (95% interval of the median {:.3} to {:.3})",
            self.median, self.low, self.high
        )
    }
}

async fn interleaved_ratio(
    plain: &RunningService<RoleClient, ()>,
    smart: &RunningService<RoleClient, ()>,
) -> Ratio {
    let mut ratios = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let plain_s = calls(plain, CALLS).await.as_secs_f64();
        let smart_s = calls(smart, CALLS).await.as_secs_f64();
        ratios.push(smart_s / plain_s);
    }
    ratios.sort_by(f64::total_cmp);
    let (low, high) = median_interval(ROUNDS);
    Ratio {
        median: ratios[ROUNDS / 2],
        low: ratios[low],
        high: ratios[high],
    }
}

/// The ranks (from 0) of the sorted values that hold the median of `n` between them
/// with at least 95% confidence, whatever the noise's distribution: the count of
/// values below the median is Binomial(n, ½), and the outer ranks whose tails hold at
/// most 2.5% each are taken.
fn median_interval(n: usize) -> (usize, usize) {
    let mut below = 0.0;
    let mut rank = 0;
    // P(count = rank), starting at 2⁻ⁿ.
    let mut chance = 0.5f64.powi(n as i32);
    while below + chance <= 0.025 {
        below += chance;
        rank += 1;
        chance *= (n - rank + 1) as f64 / rank as f64;
    }
    (rank.saturating_sub(1), n - rank.max(1))
}

async fn calls_n(client: &RunningService<RoleClient, ()>, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        total += calls(client, CALLS).await;
    }
    total
}

criterion_group!(benches, overhead);

fn main() {
    if let Ok(which) = std::env::var(SERVE_ENV) {
        serve(&which);
        return;
    }
    if let Ok(spec) = std::env::var(COUNT_ENV) {
        count(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
