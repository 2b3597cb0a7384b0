//! A server of your own with smart async: one custom tool, served over stdio with the
//! job tools and predictor_stats for free.
//!
//! Run: `cargo run --example own_server` and connect an MCP client to its stdio, e.g.
//! `npx @modelcontextprotocol/inspector cargo run --example own_server`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use smart_async::SmartServer;
use smart_async::{parse_args, schema_of, Tool, ToolOutput, ToolWork};
use smart_async::{Engine, EngineConfig, JobContext, RunError};

/// Renders a report: 0.2 s per page, so a 500-page report would time a client out.
struct RenderReport;

#[derive(Deserialize, schemars::JsonSchema)]
struct RenderArgs {
    /// How many pages to render.
    pages: u32,
}

impl Tool for RenderReport {
    fn name(&self) -> &str {
        "render_report"
    }

    fn description(&self) -> &str {
        "Render a report of the given number of pages (0.2 s a page)."
    }

    fn input_schema(&self) -> Map<String, Value> {
        schema_of::<RenderArgs>()
    }

    fn start(&self, args: &Value) -> Result<ToolWork, String> {
        let args: RenderArgs = parse_args(self.name(), args)?;
        Ok(Box::new(move |ctx: JobContext| {
            Box::pin(async move {
                for _ in 0..args.pages {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = ctx.cancelled() => return Err(RunError::Cancelled),
                    }
                }
                Ok(ToolOutput {
                    text: format!("rendered {} pages", args.pages),
                    structured: json!({ "pages": args.pages }),
                })
            })
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs must go to stderr: stdout is the MCP channel.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let data_dir = std::env::temp_dir().join("smart-async-own-server");
    let engine = Engine::open(EngineConfig::new(&data_dir)).await?;
    let server = SmartServer::new(engine.clone(), vec![Arc::new(RenderReport)]);
    server.serve_stdio().await?;
    engine.close().await?;
    Ok(())
}
