//! The protocol-native faces of `smart-async serve`, end to end with rmcp's client:
//! the tasks extension for clients that declare it (and the tool-level face for those
//! that do not), progress notifications during inline calls, cancellation of inline
//! calls, and budgets learned from a client that keeps timing out.

use std::time::Duration;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CancelTaskParams, ClientConfig,
    ClientRequest, CreateTaskResult, GetTaskParams, ServerResult, TaskPayload, TaskStatus,
};
use rmcp::service::{PeerRequestOptions, RoleClient, RunningService, ServiceError};
use rmcp::Peer;
use serde_json::{json, Value};

mod common;
use common::*;

fn params(tool: &str, args: Value) -> CallToolRequestParams {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    CallToolRequestParams::new(tool.to_owned()).with_arguments(args)
}

/// A server with the test tools (and `extra` flags), and a 2026-07-28 client of it
/// called `name`, declaring the tasks extension or not.
async fn connect_client(
    setup: &Setup,
    extra: &[&str],
    name: &str,
    tasks: bool,
) -> RunningService<RoleClient, ClientConfig> {
    let config = write_config(setup.root.path(), TEST_CONFIG);
    let mut args = vec!["--config", config.as_str()];
    args.extend_from_slice(extra);
    connect_as(&setup.args(&args), client_info(name, tasks)).await
}

/// Calls `tool` with `args`, expecting a task.
async fn start_task(client: &Peer<RoleClient>, tool: &str, args: Value) -> CreateTaskResult {
    let answer = client.call_tool_once(params(tool, args)).await.unwrap();
    let CallToolResponse::Task(created) = answer else {
        panic!("expected a task for {tool}, got {answer:?}")
    };
    created
}

/// Polls `tasks/get` until the task ends (at most `limit`), returning every status seen.
async fn poll_task(
    peer: &Peer<RoleClient>,
    task_id: &str,
    limit: Duration,
) -> (Vec<TaskStatus>, TaskPayload) {
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    loop {
        let got = peer
            .get_task(GetTaskParams::new(task_id.to_owned()))
            .await
            .expect("tasks/get answers");
        let status = got.task.task.status;
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if status.is_terminal() {
            return (seen, got.task.payload);
        }
        assert!(
            started.elapsed() < limit,
            "still {status:?} after {limit:?}"
        );
        let poll_ms = got
            .task
            .task
            .poll_interval_ms
            .expect("a working task says when to poll");
        tokio::time::sleep(Duration::from_millis(poll_ms.min(200))).await;
    }
}

#[tokio::test]
async fn a_tasks_client_gets_tasks_for_long_calls_and_inline_answers_for_short_ones() {
    let setup = Setup::new();
    let client = connect_client(&setup, &["--deadline-s", "0.4"], "tasks-client", true).await;

    // A short call still answers inline.
    let short = client
        .call_tool_once(params("sleep", json!({"seconds": 0.05})))
        .await
        .unwrap();
    assert!(matches!(short, CallToolResponse::Complete(_)), "{short:?}");

    // async_mode=true: a task at once.
    let created = start_task(
        &client,
        "sleep",
        json!({"seconds": 1.0, "async_mode": true}),
    )
    .await;
    let task = &created.task;
    assert_eq!(task.status, TaskStatus::Working);
    assert_eq!(task.ttl_ms, Some(24 * 3600 * 1000), "the retention setting");
    assert!(task.poll_interval_ms.is_some_and(|ms| ms >= 500));
    assert!(task.created_at.starts_with("20") && task.created_at.ends_with('Z'));
    let message = task.status_message.clone().unwrap_or_default();
    assert!(!message.is_empty(), "the status is said in words");

    // The tool face sees the same job.
    let viewed = call(&client, "job_status", json!({"job_id": task.task_id})).await;
    assert_eq!(structured(&viewed)["job_id"], json!(task.task_id));
    let listed = call(&client, "list_jobs", json!({})).await;
    assert!(text(&listed).contains(&task.task_id), "{}", text(&listed));

    let (seen, payload) = poll_task(&client, &task.task_id, Duration::from_secs(20)).await;
    assert_eq!(seen, [TaskStatus::Working, TaskStatus::Completed]);
    let TaskPayload::Completed { result } = payload else {
        panic!("expected the result, got {payload:?}")
    };
    assert_eq!(result["structuredContent"]["exit_code"], 0, "{result:?}");

    // Promoted at the deadline: also a task.
    let created = start_task(&client, "sleep", json!({"seconds": 1.2})).await;
    let (_, payload) = poll_task(&client, &created.task.task_id, Duration::from_secs(20)).await;
    assert!(
        matches!(payload, TaskPayload::Completed { .. }),
        "{payload:?}"
    );
    let done = call(
        &client,
        "job_status",
        json!({"job_id": created.task.task_id}),
    )
    .await;
    assert_eq!(structured(&done)["status"], "completed");
    assert_eq!(structured(&done)["promoted"], true);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn tasks_cancel_ends_in_cancelled_and_stops_the_process() {
    let setup = Setup::new();
    let client = connect_client(&setup, &[], "tasks-client", true).await;
    // A duration no other test uses, to find the process.
    let created = start_task(
        &client,
        "sleep",
        json!({"seconds": 291.75, "async_mode": true}),
    )
    .await;
    let argv = ["sleep", "291.75"];
    wait_until(|| !pids_running(&argv).is_empty(), "the command starts").await;
    client
        .cancel_task(CancelTaskParams::new(created.task.task_id.clone()))
        .await
        .expect("tasks/cancel is acknowledged");
    let (_, payload) = poll_task(&client, &created.task.task_id, Duration::from_secs(10)).await;
    assert!(matches!(payload, TaskPayload::Cancelled), "{payload:?}");
    wait_until(|| pids_running(&argv).is_empty(), "the process is gone").await;
    let viewed = call(
        &client,
        "job_status",
        json!({"job_id": created.task.task_id}),
    )
    .await;
    assert_eq!(structured(&viewed)["status"], "cancelled");
    let unknown = client
        .get_task(GetTaskParams::new("not-a-task".to_owned()))
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("unknown task"), "{unknown}");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_client_without_the_extension_gets_the_tool_level_job_answer() {
    let setup = Setup::new();
    let client = connect_client(&setup, &[], "plain-client", false).await;
    let answer = client
        .call_tool_once(params("sleep", json!({"seconds": 0.2, "async_mode": true})))
        .await
        .unwrap();
    let CallToolResponse::Complete(result) = answer else {
        panic!("expected a tool result, got {answer:?}")
    };
    let job_id = structured(&result)["job_id"].clone();
    assert!(job_id.is_string(), "{}", text(&result));
    assert!(text(&result).contains("job_status"), "{}", text(&result));
    let done = call(
        &client,
        "job_status",
        json!({"job_id": job_id, "wait_s": 10}),
    )
    .await;
    assert_eq!(structured(&done)["status"], "completed");
    client.cancel().await.unwrap();
    // The legacy handshake without tasks: the same.
    let config = write_config(setup.root.path(), TEST_CONFIG);
    let legacy = connect(&setup.args(&["--config", &config])).await;
    let result = call(
        &legacy,
        "sleep",
        json!({"seconds": 0.2, "async_mode": true}),
    )
    .await;
    assert!(
        structured(&result)["job_id"].is_string(),
        "{}",
        text(&result)
    );
    legacy.cancel().await.unwrap();
}

/// Calls a tool with a request timeout, as a client with a fixed timeout does (rmcp
/// sends `notifications/cancelled` when it gives up).
async fn call_with_timeout(
    peer: &Peer<RoleClient>,
    call: CallToolRequestParams,
    timeout: Duration,
    reset_on_progress: bool,
) -> Result<ServerResult, ServiceError> {
    let mut options = PeerRequestOptions::with_timeout(timeout);
    options.reset_timeout_on_progress = reset_on_progress;
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(call));
    peer.send_request_with_option(request, options)
        .await?
        .await_response()
        .await
}

#[tokio::test]
async fn progress_keeps_a_client_that_resets_its_timeout_waiting() {
    let setup = Setup::new();
    let client = connect_client(&setup, &[], "resetting-client", false).await;
    let slow = || params("sleep", json!({"seconds": 3.0}));
    let answer = call_with_timeout(&client, slow(), Duration::from_millis(1500), true).await;
    assert!(
        matches!(answer, Ok(ServerResult::CallToolResult(_))),
        "progress every second resets a 1.5 s timeout: {answer:?}"
    );
    let answer = call_with_timeout(&client, slow(), Duration::from_millis(1500), false).await;
    assert!(
        matches!(answer, Err(ServiceError::Timeout { .. })),
        "without the reset the same call times out: {answer:?}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_client_that_keeps_timing_out_gets_a_budget_below_its_timeout() {
    let setup = Setup::new();
    let client = connect_client(&setup, &[], "impatient-rmcp", false).await;
    let argv = ["sleep", "30.5"];
    for _ in 0..3 {
        let answer = call_with_timeout(
            &client,
            params("sleep", json!({"seconds": 30.5})),
            Duration::from_millis(1200),
            false,
        )
        .await;
        assert!(
            matches!(answer, Err(ServiceError::Timeout { .. })),
            "{answer:?}"
        );
        // The cancel reached the server: the inline command was stopped.
        wait_until(
            || pids_running(&argv).is_empty(),
            "the inline command stops",
        )
        .await;
    }
    let stats = call(&client, "predictor_stats", json!({})).await;
    let clients = structured(&stats)["clients"].as_array().unwrap().clone();
    let me = clients
        .iter()
        .find(|c| c["name"] == "impatient-rmcp")
        .unwrap_or_else(|| panic!("the client is shown: {clients:?}"));
    assert_eq!(me["source"], "learned", "{me}");
    assert!(me["budget_s"].as_f64().unwrap() < 1.2, "{me}");
    assert!(text(&stats).contains("impatient-rmcp"), "{}", text(&stats));

    // Its next long call comes back as a job well inside its timeout.
    let answer = call_with_timeout(
        &client,
        params("sleep", json!({"seconds": 30.5})),
        Duration::from_millis(1200),
        false,
    )
    .await;
    let Ok(ServerResult::CallToolResult(result)) = answer else {
        panic!("expected a job answer in time, got {answer:?}")
    };
    let job_id = structured(&result)["job_id"].clone();
    assert!(job_id.is_string(), "{}", text(&result));
    call(&client, "cancel_job", json!({"job_id": job_id})).await;
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_jobs_own_progress_shows_in_job_status_and_tasks_get() {
    let setup = Setup::new();
    let client = connect_client(&setup, &[], "tasks-client", true).await;
    let created = start_task(&client, "steps", json!({"async_mode": true})).await;
    let task_id = created.task.task_id;
    let mut seen = Value::Null;
    for _ in 0..100 {
        let status = call(&client, "job_status", json!({"job_id": task_id})).await;
        seen = structured(&status)["progress"].clone();
        if seen.is_object() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen["total"], 4.0,
        "job_status shows the command's progress: {seen}"
    );
    assert!(seen["message"].as_str().unwrap().contains("step"), "{seen}");
    let got = client
        .get_task(GetTaskParams::new(task_id.clone()))
        .await
        .unwrap();
    let message = got.task.task.status_message.unwrap_or_default();
    assert!(
        message.contains("/4] step"),
        "tasks/get says it in words: {message}"
    );
    client.cancel().await.unwrap();
}
