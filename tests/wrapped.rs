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
    GetPromptResponse, GetPromptResult, GetTaskParams, ListPromptsResult, ListToolsResult,
    PaginatedRequestParams, ProgressToken, Prompt, PromptMessage, Role, ServerCapabilities,
    ServerConfig, TaskPayload, Tool as McpTool,
};
use rmcp::service::{ClientServiceExt, RequestContext, RoleClient, RunningService};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::json;
use smart_async::SmartServer;
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
            tool("refuse"),
            tool("deny"),
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
            // Fail on their own terms (an error result with more than text) or with a
            // JSON-RPC error with data; past the deadline when asked to be slow.
            "refuse" | "deny" => {
                if request
                    .arguments
                    .as_ref()
                    .is_some_and(|a| a.contains_key("slow"))
                {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                }
                if request.name == "deny" {
                    return Err(ErrorData::new(
                        rmcp::model::ErrorCode(-32021),
                        "deny needs the client's sampling",
                        Some(json!({ "requiredCapabilities": { "sampling": {} } })),
                    ));
                }
                let mut refused = CallToolResult::error(vec![
                    ContentBlock::text("over quota"),
                    ContentBlock::image("iVBORw0KGgo=", "image/png"),
                ]);
                refused.structured_content =
                    Some(json!({ "reason": "quota", "retry_after_s": 60 }));
                refused
            }
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
    serve_for(client_info("wrapped-test", false)).await
}

/// The same, for a 2026-07-28 client that declares the tasks extension.
async fn serve_tasks_client() -> Served {
    serve_for(client_info("wrapped-tasks-test", true)).await
}

async fn serve_for(info: rmcp::model::ClientConfig) -> Served {
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
    let lifecycle = rmcp::service::ClientLifecycleMode::Discover {
        preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
    };
    let client = info
        .serve_with_lifecycle(client_io, lifecycle)
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
            "refuse",
            "deny",
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
    assert_eq!(served.client.list_all_tools().await.unwrap().len(), 10);
    served.engine.close().await.unwrap();
}

/// Issue 16: an error result was reduced to its text on the way through a job (and
/// through the proxy): its other blocks and structured content were lost.
#[tokio::test]
async fn an_error_result_reaches_the_client_whole_inline_in_job_status_and_in_tasks_get() {
    let served = serve().await;
    let inline = call(&served.client, "refuse", json!({})).await;
    assert!(common::is_error(&inline));
    assert_eq!(inline.content.len(), 2, "{inline:?}");
    assert_eq!(structured(&inline)["reason"], "quota");

    let answer = call(&served.client, "refuse", json!({ "slow": true })).await;
    let job_id = structured(&answer)["job_id"].as_str().unwrap().to_owned();
    let status = call(
        &served.client,
        "job_status",
        json!({ "job_id": job_id, "wait_s": 10 }),
    )
    .await;
    common::assert_the_whole_error_result(structured(&status));
    served.engine.close().await.unwrap();

    let served = serve_tasks_client().await;
    let payload = slow_task(&served, "refuse").await;
    let TaskPayload::Completed { result } = payload else {
        panic!("a tool's own error is a completed task with an isError result: {payload:?}")
    };
    assert_eq!(result["isError"], true);
    assert_eq!(result["content"][1]["type"], "image");
    assert_eq!(result["structuredContent"]["reason"], "quota");
    served.engine.close().await.unwrap();
}

/// Issue 16: a JSON-RPC error of the tool's server travelled through the engine as
/// text, and came back without its data (the conformance suite's -32021 check).
#[tokio::test]
async fn a_protocol_error_keeps_its_code_and_data_inline_and_in_a_failed_task() {
    let served = serve_tasks_client().await;
    let error = served
        .client
        .call_tool_once(CallToolRequestParams::new("deny"))
        .await
        .unwrap_err();
    let rmcp::ServiceError::McpError(error) = error else {
        panic!("expected a JSON-RPC error: {error}")
    };
    assert_eq!(error.code.0, -32021);
    assert_eq!(
        error.data,
        Some(json!({ "requiredCapabilities": { "sampling": {} } }))
    );

    let payload = slow_task(&served, "deny").await;
    let TaskPayload::Failed { error } = payload else {
        panic!("a protocol error is a failed task: {payload:?}")
    };
    assert_eq!(error["code"], -32021);
    assert_eq!(error["data"]["requiredCapabilities"]["sampling"], json!({}));
    served.engine.close().await.unwrap();
}

/// Calls `tool` slowly enough to become a task, and waits for the task's end.
async fn slow_task(served: &Served, tool: &'static str) -> TaskPayload {
    let params = CallToolRequestParams::new(tool)
        .with_arguments(json!({ "slow": true }).as_object().cloned().unwrap());
    let CallToolResponse::Task(created) = served.client.call_tool_once(params).await.unwrap()
    else {
        panic!("expected a task for {tool}")
    };
    finished_task(served, &created.task.task_id).await
}

/// Polls `tasks/get` until the task has ended; its payload.
async fn finished_task(served: &Served, task_id: &str) -> TaskPayload {
    for _ in 0..100 {
        let got = served
            .client
            .get_task(GetTaskParams::new(task_id.to_owned()))
            .await
            .unwrap();
        if got.task.task.status.is_terminal() {
            return got.task.payload;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("task {task_id} did not end in 10 s")
}
