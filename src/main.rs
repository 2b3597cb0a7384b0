//! The `smart-async` command: parse, run, map errors to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use smart_async::{Engine, EngineConfig};

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
        /// Where the database lives [default: the user data directory, e.g.
        /// ~/.local/share/smart-async on Linux].
        #[arg(long, env = "SMART_ASYNC_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    dirs::data_dir()
        .map(|dir| dir.join("smart-async"))
        .context("this platform has no user data directory: pass --data-dir")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Stats {
            tool,
            json,
            data_dir,
        } => {
            let data_dir = match data_dir {
                Some(dir) => dir,
                None => default_data_dir()?,
            };
            let engine = Engine::open(EngineConfig::new(&data_dir))
                .await
                .with_context(|| format!("cannot read the statistics in {}", data_dir.display()))?;
            let stats = engine.stats(tool.as_deref());
            engine.close().await?;
            if let (Some(tool), true) = (&tool, stats.is_empty()) {
                anyhow::bail!("nothing has been learned about tool '{tool}' yet: run it through smart-async first");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                for tool in &stats {
                    println!("{tool}\n");
                }
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
