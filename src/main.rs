//! The `smart-async` command: parse flags, turn them into settings, run, and map the
//! error to an exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use smart_async::{
    data_dir_or_default, default_config_path, default_data_dir, export_trace, Engine, EngineConfig,
    EngineError, HttpListen, Replay, ReplayConfig, ReplayReport, ServerFlags, Settings,
    SmartServer, StaticTable, Store, TraceFile, TraceWatch, Upstream, UpstreamCommand,
};
use tokio_util::sync::CancellationToken;

/// Keeps long MCP tool calls from timing out: learns each tool's runtime from its
/// arguments and answers inline or with a job handle.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the MCP server (stdio by default, Streamable HTTP with --http).
    ///
    /// It offers hash_files and search_text over the roots, the command tools of the
    /// config file, the job tools (job_status, list_jobs, cancel_job) and
    /// predictor_stats, and learns every tool's runtime as it runs.
    Serve(ServeArgs),
    /// Put an existing MCP server behind the engine: `smart-async proxy -- CMD ARGS...`
    ///
    /// Starts CMD as the upstream server over stdio and offers its tools (with
    /// async_mode), prompts and resources, plus the job tools and predictor_stats,
    /// learning each upstream tool's runtime. The upstream is restarted if it dies.
    Proxy(ProxyArgs),
    /// Backtest the decision policies on a runtime trace (JSON Lines; - for stdin).
    ///
    /// For each call every policy decides first, then learns the runtime. Prints a
    /// table (or JSON) of sync and background decisions, late and needless calls,
    /// accuracy, wasted seconds and bound coverage per policy.
    Replay {
        /// The traces: one {"tool", "args", "runtime_s", "ok"} object per line, `-` for
        /// stdin, gzip when the name ends in .gz. Each is replayed on its own (a table
        /// each), then all are scored together (a total).
        #[arg(required = true, value_name = "TRACE")]
        traces: Vec<PathBuf>,
        /// Seconds a call may take inline.
        #[arg(long, default_value_t = smart_async::DEFAULT_BUDGET_S)]
        budget_s: f64,
        /// Share of runtimes allowed above the learned bound [default: the break-even
        /// risk, poll cost / (budget + poll cost)].
        #[arg(long)]
        risk: Option<f64>,
        /// Seconds a needless background costs the caller (one poll).
        #[arg(long, default_value_t = smart_async::DEFAULT_POLL_COST_S)]
        poll_cost_s: f64,
        /// Only these policies, comma-separated or repeated (learned, static,
        /// always_sync, last2_avg, p90_history, oracle) [default: all].
        #[arg(long = "policy", value_name = "NAME", value_delimiter = ',')]
        policies: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write a commented config file where `serve` looks for one, and print how to
    /// connect a client to it.
    Init {
        /// Where to write it [default: smart-async/config.toml in the user config
        /// directory, e.g. ~/.config/smart-async/config.toml on Linux].
        #[arg(long, value_name = "FILE")]
        path: Option<PathBuf>,
        /// Replace a file that is already there.
        #[arg(long)]
        force: bool,
    },
    /// Write the stored runtime samples as a trace (JSON Lines) to stdout, for
    /// `smart-async replay -` with other budgets and risks.
    Export {
        /// Only this tool.
        #[arg(long)]
        tool: Option<String>,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Make a static bearer token for the HTTP face: prints the token (give it to its
    /// holder, once) and the [[auth.tokens]] entry to add to the config (it holds
    /// only the token's SHA-256).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Show what has been learned per tool, read from the database.
    ///
    /// The database can be open in one process at a time: stop a server that uses
    /// the same data directory first.
    Stats {
        /// Only this tool.
        #[arg(long)]
        tool: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataDirArg,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// A fresh random token for the principal NAME.
    New {
        /// Who the token is for: the owner of the jobs its calls start.
        #[arg(value_name = "NAME")]
        principal: String,
    },
}

#[derive(Debug, Args)]
struct DataDirArg {
    /// Where the database lives, also read from SMART_ASYNC_DATA_DIR [default: serve
    /// and stats: smart-async in the user data directory, e.g. ~/.local/share/smart-async
    /// on Linux; proxy: a folder per upstream command under its proxy/ folder].
    #[arg(long, env = "SMART_ASYNC_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// A directory the built-in tools may read (repeatable; relative paths in calls
    /// resolve against the first) [default: the current directory].
    #[arg(long = "root", value_name = "DIR")]
    roots: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct ProxyArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Seconds the upstream may take to start and answer the MCP handshake.
    #[arg(long, default_value_t = smart_async::DEFAULT_STARTUP_TIMEOUT.as_secs_f64())]
    startup_timeout_s: f64,
    /// The upstream MCP server's command and arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD ARGS")]
    upstream: Vec<String>,
}

/// What `serve` and `proxy` share: transport, database and decision settings.
#[derive(Debug, Args)]
struct ServerArgs {
    /// Serve Streamable HTTP at ADDR (PORT or HOST:PORT; a bare port binds 127.0.0.1)
    /// under the path /mcp, instead of stdio.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// With --http: a browser page's origin allowed to call the server, exactly as the
    /// browser sends it (http://localhost:6274); repeatable. Without it, requests
    /// that carry an Origin header from another host are refused.
    #[arg(
        long = "allowed-origin",
        visible_alias = "allow-origin",
        value_name = "ORIGIN"
    )]
    allow_origin: Vec<String>,
    /// With --http: a host name the server is reached by (mcp.example.com), besides
    /// the loopback names; repeatable. A request for any other Host is refused.
    #[arg(long = "allowed-host", value_name = "HOST")]
    allowed_hosts: Vec<String>,
    /// With --http on an address other machines reach: serve without [auth], because
    /// a gateway in front authenticates every request.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// With --http: serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// With --http: the private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// With --http behind a reverse proxy: the MCP endpoint's public URL
    /// (https://mcp.example.com/mcp), named in the OAuth metadata.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    #[command(flatten)]
    data: DataDirArg,
    /// Seconds a call may take inline; calls predicted longer run as jobs [default: 50].
    #[arg(long, allow_negative_numbers = true)]
    budget_s: Option<f64>,
    /// Share of runtimes allowed above the predicted bound [default: each call's
    /// break-even risk, poll cost / (budget + poll cost)].
    #[arg(long, allow_negative_numbers = true)]
    risk: Option<f64>,
    /// Seconds a call sent to the background needlessly costs its caller (one poll),
    /// which the default risk weighs [default: 5].
    #[arg(long, allow_negative_numbers = true)]
    poll_cost_s: Option<f64>,
    /// Seconds an inline call runs before it becomes a job [default: the budget].
    #[arg(long, allow_negative_numbers = true)]
    deadline_s: Option<f64>,
    /// A TOML config file: settings and command tools (see
    /// data/smart-async.example.toml) [default: the one `smart-async init` wrote, if
    /// there is one].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// `token new NAME`: the token on stdout, alone on its first line, then the entry.
fn new_token(principal: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !principal.trim().is_empty() && principal.len() <= 128,
        "the principal must be a name of 1 to 128 characters"
    );
    let (token, sha256) = smart_async::new_token();
    let quoted = toml::Value::String(principal.to_owned());
    println!("{token}");
    println!();
    println!("# Give the token above to {principal}, once; add this to the config's [auth]:");
    println!("[[auth.tokens]]\nprincipal = {quoted}\nsha256 = \"{sha256}\"");
    Ok(())
}

/// What `init` writes.
const CONFIG_TEMPLATE: &str = include_str!("../data/config.template.toml");

fn init(path: Option<PathBuf>, force: bool) -> anyhow::Result<()> {
    let path = match path {
        Some(path) => path,
        None => default_config_path()
            .context("this platform has no user config directory: pass --path")?,
    };
    anyhow::ensure!(
        force || !path.exists(),
        "{} exists already: edit it, or pass --force to replace it",
        path.display()
    );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, CONFIG_TEMPLATE)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let shown = path.display();
    println!("wrote {shown}: edit it to add roots and command tools.");
    let config_args = if Some(&path) == default_config_path().as_ref() {
        String::new()
    } else {
        format!(", \"--config\", {:?}", path.display().to_string())
    };
    println!(
        "\nClaude Desktop (claude_desktop_config.json):\n  \"smart-async\": {{ \"command\": \"smart-async\", \"args\": [\"serve\"{config_args}] }}"
    );
    let flag = if config_args.is_empty() {
        String::new()
    } else {
        format!(" --config {:?}", path.display().to_string())
    };
    println!("Claude Code:\n  claude mcp add smart-async -- smart-async serve{flag}");
    Ok(())
}

impl ServerArgs {
    /// The flags as the settings resolver takes them; `roots` are `serve`'s.
    fn into_flags(self, roots: Vec<PathBuf>) -> ServerFlags {
        ServerFlags {
            config: self.config,
            data_dir: self.data.data_dir,
            budget_s: self.budget_s,
            risk: self.risk,
            poll_cost_s: self.poll_cost_s,
            deadline_s: self.deadline_s,
            http: self.http,
            allow_origin: self.allow_origin,
            allowed_hosts: self.allowed_hosts,
            allow_unauthenticated: self.allow_unauthenticated,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            public_url: self.public_url,
            roots,
        }
    }
}

/// Resolves the settings, saying which config file was read.
fn settings(
    flags: ServerFlags,
    default_data_dir: impl FnOnce() -> Result<PathBuf, smart_async::SettingsError>,
) -> anyhow::Result<Settings> {
    let settings = Settings::resolve(flags, default_data_dir)?;
    if let Some(path) = &settings.config_path {
        tracing::info!("config: {}", path.display());
    }
    Ok(settings)
}

async fn open_engine(config: EngineConfig) -> anyhow::Result<Engine> {
    let data_dir = config.data_dir.clone();
    // Only a store error is about the database; a bad setting says so by itself.
    Engine::open(config).await.map_err(|e| match e {
        EngineError::Store(_) => anyhow::Error::new(e).context(format!(
            "cannot open the database in {}",
            data_dir.display()
        )),
        other => other.into(),
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = settings(args.server.into_flags(args.roots), default_data_dir)?;
    let (roots, tools) = settings.tools()?;
    let Settings {
        engine: config,
        http,
        ..
    } = settings;
    let data_dir = config.data_dir.clone();
    let budget_s = config.budget_s;
    let engine = open_engine(config).await?;
    let tool_names: Vec<&str> = tools.iter().map(|t| t.name()).collect();
    tracing::info!(
        "smart-async {}: data in {}, roots {}, budget {budget_s} s, tools: {}",
        env!("CARGO_PKG_VERSION"),
        data_dir.display(),
        roots.describe(),
        tool_names.join(", ")
    );
    let server = SmartServer::new(engine.clone(), tools);
    let served = run_server(server, http, "smart-async serve").await;
    // Finished jobs and what was learned are flushed; running jobs will read as
    // interrupted on the next start.
    engine.close().await?;
    tracing::info!("stopped");
    served
}

async fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.startup_timeout_s.is_finite() && args.startup_timeout_s > 0.0,
        "--startup-timeout-s must be a positive number of seconds, for example 120"
    );
    let mut upstream = args.upstream.into_iter();
    let command = UpstreamCommand {
        program: upstream
            .next()
            .context("give the upstream server's command after --")?,
        args: upstream.collect(),
        startup_timeout: Duration::from_secs_f64(args.startup_timeout_s),
    };
    // Each upstream learns in a database of its own, so that a client can run several
    // proxies at once (a database is one process's at a time).
    let settings = settings(args.server.into_flags(Vec::new()), || {
        Ok(default_data_dir()?.join("proxy").join(command.slug()))
    })?;
    let Settings {
        engine: config,
        file,
        http,
        ..
    } = settings;
    if !file.commands.is_empty() {
        tracing::warn!("the config's command tools are not offered by the proxy: use `smart-async serve` for them");
    }
    let data_dir = config.data_dir.clone();
    let budget_s = config.budget_s;
    let fresh = !data_dir.exists();
    let engine = open_engine(config).await?;
    let upstream = match Upstream::start(command, engine.clone()).await {
        Ok(upstream) => upstream,
        Err(e) => {
            engine.close().await?;
            drop(engine);
            // A start that never came up leaves no empty database behind.
            if fresh {
                if let Err(removed) = std::fs::remove_dir_all(&data_dir) {
                    tracing::warn!("could not remove {}: {removed}", data_dir.display());
                }
            }
            return Err(e.into());
        }
    };
    let tool_names: Vec<String> = upstream
        .tools()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    tracing::info!(
        "smart-async {} proxy: data in {}, budget {budget_s} s, upstream `{}` with tools: {}",
        env!("CARGO_PKG_VERSION"),
        data_dir.display(),
        upstream.command(),
        tool_names.join(", ")
    );
    let server = SmartServer::proxy(engine.clone(), upstream.clone());
    let served = run_server(server, http, "smart-async proxy -- CMD").await;
    engine.close().await?;
    upstream.close().await;
    tracing::info!("stopped");
    served
}

/// Serves MCP over stdio or HTTP until the client leaves or a signal comes.
async fn run_server(
    server: SmartServer,
    http: Option<HttpListen>,
    how_to_run: &str,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    match http {
        Some(HttpListen {
            addr,
            limits,
            access,
        }) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr}: is another server using that port?")
            })?;
            let bound = listener.local_addr()?;
            let scheme = if access.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let who = if access.auth.is_some() {
                "callers with a bearer token"
            } else {
                "any caller (no [auth] configured)"
            };
            tracing::info!(
                "listening for MCP clients on {scheme}://{bound}/mcp (Streamable HTTP), serving {who}; Ctrl-C stops"
            );
            server.serve_http(listener, shutdown, limits, access).await
        }
        None => {
            tracing::info!(
                "waiting for an MCP client on stdin/stdout: configure your client to run `{how_to_run}` \
                 (or use --http PORT); Ctrl-D or closing stdin stops"
            );
            tokio::select! {
                served = server.serve_stdio() => served,
                _ = shutdown.cancelled() => Ok(()),
            }
        }
    }
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM, so the database is flushed and closed.
async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("stopping on signal");
    shutdown.cancel();
}

async fn stats(tool: Option<String>, json: bool, data: DataDirArg) -> anyhow::Result<()> {
    let data_dir = data_dir_or_default(data.data_dir)?;
    let config = EngineConfig::new(&data_dir);
    let wanted = tool.clone();
    // Read only: an engine would mark jobs, prune and write (and opening blocks).
    let report =
        tokio::task::spawn_blocking(move || Engine::read_report(&config, wanted.as_deref()))
            .await?
            .with_context(|| format!("cannot read the statistics in {}", data_dir.display()))?;
    if let (Some(tool), true) = (&tool, report.tools.is_empty()) {
        anyhow::bail!(
            "nothing has been learned about tool '{tool}' yet: run it through smart-async first"
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Proxy(args) => proxy(args).await,
        Command::Stats { tool, json, data } => stats(tool, json, data).await,
        Command::Init { path, force } => init(path, force),
        Command::Token {
            action: TokenAction::New { principal },
        } => new_token(&principal),
        Command::Replay {
            traces,
            budget_s,
            risk,
            poll_cost_s,
            policies,
            json,
        } => {
            let policy = match risk {
                Some(risk) => smart_async::Policy::new(budget_s, risk, StaticTable::default())?
                    .with_poll_cost_s(poll_cost_s)?,
                None => {
                    smart_async::Policy::break_even(budget_s, poll_cost_s, StaticTable::default())?
                }
            };
            let config = ReplayConfig { policy, policies };
            // A wrong name is reported before any trace is read.
            Replay::new(config.clone())?;
            replay_all(&traces, &config, json)
        }
        Command::Export { tool, data } => export(tool, data),
    }
}

/// Replays a trace file, or stdin for `-`, with a progress bar on stderr.
/// Replays each trace on its own, then scores them together when there are several.
fn replay_all(traces: &[PathBuf], config: &ReplayConfig, json: bool) -> anyhow::Result<()> {
    let mut replays = Vec::with_capacity(traces.len());
    for trace in traces {
        replays.push(replay(trace, config.clone())?);
    }
    let reports: Vec<ReplayReport> = replays.iter().map(Replay::report).collect();
    let total = Replay::total(&replays).context("no trace given")?;
    if let [report] = reports.as_slice() {
        if json {
            println!("{}", serde_json::to_string(report)?);
        } else {
            print!("{report}");
        }
        return Ok(());
    }
    if json {
        let traces: Vec<serde_json::Value> = traces
            .iter()
            .zip(&reports)
            .map(|(trace, report)| serde_json::json!({"trace": trace.display().to_string(), "report": report}))
            .collect();
        println!("{}", serde_json::json!({"traces": traces, "total": total}));
    } else {
        for (trace, report) in traces.iter().zip(&reports) {
            println!("== {}", trace.display());
            print!("{report}");
            println!();
        }
        println!("== total of {} traces", traces.len());
        print!("{total}");
    }
    Ok(())
}

/// What reading a trace shows on stderr: a bar (of bytes, against the file's size when
/// it is known) and the first bad lines.
struct Shown {
    bar: ProgressBar,
    skipped: u64,
}

impl TraceWatch for Shown {
    fn read(&mut self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn skipped(&mut self, line: usize, reason: &str) {
        self.skipped += 1;
        if self.skipped <= MAX_BAD_LINES_SHOWN {
            self.bar
                .suspend(|| eprintln!("line {line}: skipped: {reason}"));
        }
    }
}

/// Replays one trace, with a progress bar on stderr.
fn replay(trace: &Path, config: ReplayConfig) -> anyhow::Result<Replay> {
    let file = TraceFile::open(trace)?;
    let bar = match file.size_bytes() {
        Some(size) => ProgressBar::new(size).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner(),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    let mut shown = Shown { bar, skipped: 0 };
    let started = std::time::Instant::now();
    let mut replay = Replay::new(config)?;
    let count = file.for_each(&mut shown, |record| replay.step(record));
    shown.bar.finish_and_clear();
    let count = count?;
    let elapsed_s = started.elapsed().as_secs_f64();
    if count.skipped > 0 {
        eprintln!("{}: {} bad lines skipped", trace.display(), count.skipped);
    }
    eprintln!(
        "{}: replayed {} calls in {elapsed_s:.2} s ({:.0} calls/s)",
        trace.display(),
        count.calls,
        count.calls as f64 / elapsed_s.max(1e-9)
    );
    Ok(replay)
}

/// Writes the stored samples as a trace to stdout.
fn export(tool: Option<String>, data: DataDirArg) -> anyhow::Result<()> {
    let data_dir = data_dir_or_default(data.data_dir)?;
    let store = Store::open(&data_dir, 16 << 20)
        .with_context(|| format!("cannot read the samples in {}", data_dir.display()))?;
    let out = std::io::BufWriter::new(std::io::stdout().lock());
    export_trace(&store, tool.as_deref(), out)?;
    Ok(())
}

/// How long blocking threads get to end once the work is done, before the process
/// exits without them.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Bad trace lines reported one by one; past this only the count is given.
const MAX_BAD_LINES_SHOWN: u64 = 20;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ran = runtime.block_on(run(cli));
    // A blocking thread can be held for good: stdin's reader while a client keeps it
    // open, a file read on a stuck disk. Dropping the runtime would wait for them; what
    // had to be stored was stored by `run`, so the process exits after a grace.
    runtime.shutdown_timeout(EXIT_GRACE);
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: a message that already quotes its cause
/// (`cannot read FILE: No such file…`) is not followed by the cause again.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
