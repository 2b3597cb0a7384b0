//! `SmartServer::wrap`: an rmcp handler of one's own behind smart-async, with a real
//! rmcp client over an in-memory stream. Its tools go through the engine (a call that
//! overruns the deadline becomes a job whose result is the tool's whole answer), its
//! prompts and resources pass through, the tool runs with its request's context but
//! for the progress and cancellation tokens, and an unknown tool reaches nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, ListPromptsResult, ListToolsResult, PaginatedRequestParams,
    ProgressToken, Prompt, PromptMessage, Role, ServerCapabilities, ServerConfig, Tool as McpTool,
};
use rmcp::service::{RequestContext, RoleClient, RunningService};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::json;
use smart_async::mcp::SmartServer;
use smart_async::{Engine, EngineConfig, JobContext, Progress};

mod common;
use common::{call, client_info, structured, text};

/// A handler with three tools and one prompt; it tells whether a tool's run was cancelled.
#[derive(Default)]
struct Mine {
    cancelled: Arc<AtomicBool>,
}

fn tool(name: &'static str) -> McpTool {
    McpTool::new(name, "a test tool", Arc::new(serde_json::Map::new()))
}

impl ServerHandler for Mine {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_prompts().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![
            tool("picture"),
            tool("context"),
            tool("wait_for_cancel"),
            tool("explode"),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        Ok(match request.name.as_ref() {
            // Overruns the test's 0.3 s deadline, and answers more than text.
            "picture" => {
                tokio::time::sleep(Duration::from_millis(600)).await;
                CallToolResult::success(vec![
                    ContentBlock::text("a red pixel"),
                    ContentBlock::image("iVBORw0KGgo=", "image/png"),
                ])
            }
            "context" => {
                let run = ctx.extensions.get::<JobContext>();
                if let Some(run) = run {
                    run.report_progress(Progress {
                        done: 1.0,
                        total: Some(1.0),
                        message: None,
                    });
                }
                CallToolResult::success(vec![ContentBlock::text(format!(
                    "progress token: {}, run: {}, async_mode: {}",
                    ctx.meta.get_progress_token().is_some(),
                    run.is_some(),
                    request
                        .arguments
                        .as_ref()
                        .is_some_and(|a| a.contains_key("async_mode"))
                ))])
            }
            "wait_for_cancel" => {
                ctx.ct.cancelled().await;
                self.cancelled.store(true, Ordering::SeqCst);
                CallToolResult::success(vec![ContentBlock::text("stopped")])
            }
            "explode" => panic!("the handler's tool panicked"),
            other => return Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        }
        .into())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(vec![Prompt::new(
            "hello",
            Some("says hello"),
            None,
        )]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let message = PromptMessage::new_text(Role::User, format!("hello from {}", request.name));
        Ok(GetPromptResponse::Complete(GetPromptResult::new(vec![
            message,
        ])))
    }
}

struct Served {
    client: RunningService<RoleClient, rmcp::model::ClientConfig>,
    engine: Engine,
    cancelled: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

/// `Mine` wrapped by smart-async with a 0.3 s deadline, and a client of it.
async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.deadline_s = Some(0.3);
    let engine = Engine::open(config).await.unwrap();
    let mine = Mine::default();
    let cancelled = mine.cancelled.clone();
    let server = SmartServer::wrap(engine.clone(), mine);
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        if let Ok(running) = server.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    let client = client_info("wrapped-test", false)
        .serve(client_io)
        .await
        .unwrap();
    Served {
        client,
        engine,
        cancelled,
        _dir: dir,
    }
}

#[tokio::test]
async fn the_handlers_tools_list_with_async_mode_beside_the_job_tools_and_its_prompts_pass() {
    let served = serve().await;
    let tools = served.client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "picture",
            "context",
            "wait_for_cancel",
            "explode",
            "job_status",
            "list_jobs",
            "cancel_job",
            "predictor_stats"
        ]
    );
    assert!(tools[0].input_schema["properties"]["async_mode"].is_object());
    let prompts = served.client.list_all_prompts().await.unwrap();
    assert_eq!(prompts[0].name, "hello");
    let prompt = served
        .client
        .get_prompt(GetPromptRequestParams::new("hello"))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&prompt.messages[0].content).unwrap()["text"],
        "hello from hello"
    );
    served.engine.close().await.unwrap();
}

#[tokio::test]
async fn a_call_past_the_deadline_becomes_a_job_whose_result_is_the_whole_answer() {
    let served = serve().await;
    let answer = call(&served.client, "picture", json!({})).await;
    let job_id = structured(&answer)["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a job handle: {answer:?}"))
        .to_owned();
    assert_eq!(structured(&answer)["promoted"], true);
    let status = call(
        &served.client,
        "job_status",
        json!({ "job_id": job_id, "wait_s": 10 }),
    )
    .await;
    let view = structured(&status);
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["content"][0]["text"], "a red pixel");
    assert_eq!(view["content"][1]["type"], "image");
    assert_eq!(view["content"][1]["mimeType"], "image/png");
    served.engine.close().await.unwrap();
}

#[tokio::test]
async fn the_tool_runs_with_the_runs_context_and_smart_async_owns_the_progress_token() {
    let served = serve().await;
    let mut params = CallToolRequestParams::new("context")
        .with_arguments(json!({ "async_mode": false }).as_object().cloned().unwrap());
    let mut meta = rmcp::model::RequestMetaObject::default();
    meta.set_progress_token(ProgressToken(rmcp::model::NumberOrString::Number(7)));
    params.meta = Some(meta);
    let answer = served.client.call_tool(params).await.unwrap();
    assert_eq!(
        text(&answer),
        "progress token: false, run: true, async_mode: false"
    );
    served.engine.close().await.unwrap();
}

#[tokio::test]
async fn cancelling_a_job_fires_the_tools_cancellation_token() {
    let served = serve().await;
    let answer = call(&served.client, "wait_for_cancel", json!({})).await;
    let job_id = structured(&answer)["job_id"].as_str().unwrap().to_owned();
    call(&served.client, "cancel_job", json!({ "job_id": job_id })).await;
    common::wait_until(
        || served.cancelled.load(Ordering::SeqCst),
        "the tool's token fires",
    )
    .await;
    let status = call(&served.client, "job_status", json!({ "job_id": job_id })).await;
    assert_eq!(structured(&status)["status"], "cancelled");
    served.engine.close().await.unwrap();
}

#[tokio::test]
async fn an_unknown_tool_is_invalid_params_and_teaches_nothing() {
    let served = serve().await;
    let error = served
        .client
        .call_tool(CallToolRequestParams::new("no_such_tool"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("unknown tool 'no_such_tool'"),
        "{error}"
    );
    assert!(served.engine.report(Some("no_such_tool")).tools.is_empty());
    served.engine.close().await.unwrap();
}

/// A handler's tool that panics is a failed call the model can read, and the server
/// goes on serving.
#[tokio::test]
async fn a_tool_that_panics_fails_its_call_and_nothing_else() {
    let served = serve().await;
    let answer = call(&served.client, "explode", json!({})).await;
    assert!(common::is_error(&answer), "{answer:?}");
    assert!(text(&answer).contains("panicked"), "{}", text(&answer));
    assert_eq!(served.client.list_all_tools().await.unwrap().len(), 8);
    served.engine.close().await.unwrap();
}
