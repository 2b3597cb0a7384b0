//! The official MCP conformance suite's fixture server, built on the library: an rmcp
//! handler offering the tools, prompts and resources the suite's scenarios call by
//! name, wrapped by `SmartServer::wrap`, so that every tool call goes through the
//! engine (and a long one becomes a job, or a task) while the prompts, resources,
//! completions and logging are the handler's own. `scripts/conformance.sh` runs it.
//!
//! Run: `cargo run --example conformance_fixture -- 127.0.0.1:3000 DATA_DIR`, then
//! point the suite at `http://127.0.0.1:3000/mcp`; with `--stdio` for the address it
//! serves stdio, as an upstream behind `smart-async proxy`.
//!
//! Its engine promotes a call to a job after 0.8 s: one that runs longer (the suite's
//! `slow_compute` of a second or more) answers with a task, as the tasks scenarios
//! want; `slow_compute` of 0 seconds answers inline.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

// Logging is deprecated in MCP (SEP-2577), and still tested by the suite.
use rmcp::model::ErrorCode;
use rmcp::model::SubscriptionFilter;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    ContentBlock, GetPromptRequestParams, GetPromptResponse, GetPromptResult, InputRequests,
    InputRequiredResult, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
    ServerCapabilities, ServerConfig, ServerRequest, SubscribeRequestParams, Tool as McpTool,
    UnsubscribeRequestParams,
};
#[allow(deprecated)]
use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam, SetLevelRequestParams};
use rmcp::service::{RequestContext, SubscriptionContext, SubscriptionSink};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use smart_async::SmartServer;
use smart_async::{Engine, EngineConfig, JobContext, Progress, StaticTable};
use smart_async::{HttpAccess, HttpLimits};
use tokio_util::sync::CancellationToken;

/// A 1×1 red PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A WAV header with no samples.
const WAV: &str = "UklGRiQAAABXQVZFZm10IBAAAAABAAEARKwAAIhYAQACABAAZGF0YQAAAAA=";
/// The state `test_input_required_result_request_state` hands out and checks.
const REQUEST_STATE: &str = "fixture-state-v1";

/// The tools: name, description, and the properties of the input schema (all of
/// them required).
const TOOLS: &[(&str, &str, &[&str])] = &[
    ("test_simple_text", "Returns a simple text.", &[]),
    ("test_image_content", "Returns an image.", &[]),
    ("test_audio_content", "Returns an audio clip.", &[]),
    (
        "test_embedded_resource",
        "Returns an embedded resource.",
        &[],
    ),
    (
        "test_multiple_content_types",
        "Returns text, an image and a resource.",
        &[],
    ),
    (
        "test_tool_with_logging",
        "Logs three messages while it runs.",
        &[],
    ),
    (
        "test_error_handling",
        "Always fails with a tool error.",
        &[],
    ),
    (
        "test_tool_with_progress",
        "Reports progress three times.",
        &[],
    ),
    (
        "test_sampling",
        "Asks the client's model to answer a prompt.",
        &["prompt"],
    ),
    (
        "test_elicitation",
        "Asks the user for a name and an email.",
        &["message"],
    ),
    (
        "test_elicitation_sep1034_defaults",
        "Asks the user, with defaults for every field.",
        &[],
    ),
    (
        "test_elicitation_sep1330_enums",
        "Asks the user to choose from every kind of enum.",
        &[],
    ),
    (
        "test_input_required_result_elicitation",
        "Needs the user's name (SEP-2322).",
        &[],
    ),
    (
        "test_input_required_result_sampling",
        "Needs a model's answer (SEP-2322).",
        &[],
    ),
    (
        "test_input_required_result_list_roots",
        "Needs the client's roots (SEP-2322).",
        &[],
    ),
    (
        "test_input_required_result_request_state",
        "Needs a confirmation, with state (SEP-2322).",
        &[],
    ),
    (
        "test_input_required_result_multiple_inputs",
        "Needs three inputs at once (SEP-2322).",
        &[],
    ),
    (
        "test_input_required_result_multi_round",
        "Needs two rounds of input (SEP-2322).",
        &[],
    ),
    (
        "test_input_required_result_tampered_state",
        "Refuses a state it did not issue (SEP-2322).",
        &[],
    ),
    ("greet", "Says hello.", &["name"]),
    (
        "slow_compute",
        "Sleeps for `seconds`, then answers.",
        &["seconds"],
    ),
    (
        "failing_job",
        "Fails with a tool error after a second.",
        &[],
    ),
    (
        "protocol_error_job",
        "Fails with a JSON-RPC error after a second.",
        &[],
    ),
    (
        "test_input_required_result_capabilities",
        "Asks only for what the client can give (SEP-2322).",
        &[],
    ),
    (
        "test_missing_capability",
        "Needs the client's sampling (SEP-2575).",
        &[],
    ),
    (
        "test_streaming_elicitation",
        "Asks the user, as an input request (SEP-2575).",
        &[],
    ),
    (
        "test_logging_tool",
        "Logs only when the request sets a log level (SEP-2575).",
        &[],
    ),
    (
        "json_schema_2020_12_tool",
        "Tool with JSON Schema 2020-12 features.",
        &[],
    ),
    (
        "test_custom_header",
        "Echoes a region also sent as a header (SEP-2243).",
        &[],
    ),
    (
        "test_trigger_tool_change",
        "Adds or removes test_dynamic_tool (SEP-2575).",
        &[],
    ),
    (
        "test_error_with_details",
        "After `seconds`, fails with an error result of text, an image and structured content.",
        &["seconds"],
    ),
];

/// What a prompt of the fixture takes: name, description, arguments (all required).
const PROMPTS: &[(&str, &str, &[&str])] = &[
    ("test_simple_prompt", "A prompt without arguments.", &[]),
    (
        "test_prompt_with_arguments",
        "A prompt with two arguments.",
        &["arg1", "arg2"],
    ),
    (
        "test_prompt_with_embedded_resource",
        "A prompt embedding a resource.",
        &["resourceUri"],
    ),
    ("test_prompt_with_image", "A prompt with an image.", &[]),
    (
        "test_input_required_result_prompt",
        "A prompt that needs the user's context (SEP-2322).",
        &[],
    ),
];

/// The conformance handler: what it serves besides tools keeps a little state.
#[derive(Default)]
struct Fixture {
    subscriptions: Mutex<BTreeSet<String>>,
    /// Open `subscriptions/listen` streams, told when the tool list changes.
    listeners: Mutex<Vec<SubscriptionSink>>,
    /// Whether `test_trigger_tool_change` has added `test_dynamic_tool` (it toggles).
    dynamic_tool: AtomicBool,
}

/// The tool `test_trigger_tool_change` adds and removes.
const DYNAMIC_TOOL: (&str, &str, &[&str]) = ("test_dynamic_tool", "Comes and goes.", &[]);

/// Reads the wire shape of `T` from JSON written in this file.
fn wire<T: DeserializeOwned>(value: Value) -> Result<T, ErrorData> {
    serde_json::from_value(value)
        .map_err(|e| ErrorData::internal_error(format!("fixture: bad wire shape: {e}"), None))
}

fn tool(name: &str, description: &str, required: &[&str]) -> Result<McpTool, ErrorData> {
    let special = match name {
        "json_schema_2020_12_tool" => Some(schema_2020_12()),
        // SEP-2243: the argument travels in an `Mcp-Param-Region` header too, which
        // the server checks against the body.
        "test_custom_header" => Some(json!({
            "type": "object",
            "properties": { "region": { "type": "string", "x-mcp-header": "Region" } },
            "required": ["region"],
        })),
        _ => None,
    };
    if let Some(schema) = special {
        return wire(json!({ "name": name, "description": description, "inputSchema": schema }));
    }
    let properties: serde_json::Map<String, Value> = required
        .iter()
        .map(|property| {
            let kind = if *property == "seconds" {
                "number"
            } else {
                "string"
            };
            ((*property).to_owned(), json!({ "type": kind }))
        })
        .collect();
    wire(json!({
        "name": name,
        "description": description,
        "inputSchema": { "type": "object", "properties": properties, "required": required },
    }))
}

/// The schema the suite's `json-schema-2020-12` scenario looks for, keyword by keyword.
fn schema_2020_12() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": { "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": { "street": { "type": "string" }, "city": { "type": "string" } },
        }},
        "properties": {
            "name": { "type": "string" },
            "address": { "$ref": "#/$defs/address" },
            "contactMethod": { "type": "string", "enum": ["phone", "email"] },
            "phone": { "type": "string" },
            "email": { "type": "string" },
        },
        "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
        "if": { "properties": { "contactMethod": { "const": "phone" } }, "required": ["contactMethod"] },
        "then": { "required": ["phone"] },
        "else": { "required": ["email"] },
        "additionalProperties": false,
    })
}

fn text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

fn argument<'a>(request: &'a CallToolRequestParams, name: &str) -> Option<&'a Value> {
    request.arguments.as_ref()?.get(name)
}

/// The client's answer to the input request `key`, when this call carries it.
fn input_response<'a>(request: &'a CallToolRequestParams, key: &str) -> Option<&'a Value> {
    request.input_responses.as_ref()?.get(key)
}

fn elicit_name(message: &str) -> Value {
    json!({
        "method": "elicitation/create",
        "params": {
            "message": message,
            "requestedSchema": {
                "type": "object",
                "properties": { "name": { "type": "string" } },
                "required": ["name"],
            },
        },
    })
}

fn input_required(requests: Value, state: Option<&str>) -> Result<CallToolResponse, ErrorData> {
    let requests: InputRequests = wire(requests)?;
    Ok(CallToolResponse::InputRequired(InputRequiredResult::new(
        Some(requests),
        state.map(str::to_owned),
    )))
}

impl Fixture {
    async fn call(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let answer = match request.name.as_ref() {
            "test_simple_text" => text("This is a simple text response for testing."),
            "test_image_content" => {
                CallToolResult::success(vec![ContentBlock::image(PNG, "image/png")])
            }
            "test_audio_content" => wire(json!({
                "content": [{ "type": "audio", "data": WAV, "mimeType": "audio/wav" }],
            }))?,
            "test_embedded_resource" => wire(json!({
                "content": [{ "type": "resource", "resource": {
                    "uri": "test://embedded-resource",
                    "mimeType": "text/plain",
                    "text": "This is an embedded resource content.",
                }}],
            }))?,
            "test_multiple_content_types" => wire(json!({
                "content": [
                    { "type": "text", "text": "Multiple content types test:" },
                    { "type": "image", "data": PNG, "mimeType": "image/png" },
                    { "type": "resource", "resource": {
                        "uri": "test://mixed-content-resource",
                        "mimeType": "application/json",
                        "text": "{\"test\":\"data\",\"value\":123}",
                    }},
                ],
            }))?,
            // Logging is deprecated in MCP (SEP-2577), and still tested by the suite.
            #[allow(deprecated)]
            "test_tool_with_logging" => {
                for message in [
                    "Tool execution started",
                    "Tool processing data",
                    "Tool execution completed",
                ] {
                    let note =
                        LoggingMessageNotificationParam::new(LoggingLevel::Info, json!(message))
                            .with_logger("conformance-fixture");
                    if let Err(e) = ctx.peer.notify_logging_message(note).await {
                        tracing::warn!(error = %e, "could not send a log message");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                text("Logging test completed")
            }
            "test_error_handling" => CallToolResult::error(vec![ContentBlock::text(
                "This tool intentionally returns an error for testing",
            )]),
            "test_tool_with_progress" => {
                // smart-async owns the progress token: the tool reports to its run, and
                // each report reaches the client as a notification.
                let run = ctx.extensions.get::<JobContext>().cloned();
                for done in [0.0, 50.0, 100.0] {
                    if let Some(run) = &run {
                        run.report_progress(Progress {
                            done,
                            total: Some(100.0),
                            message: None,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                text("Progress test completed")
            }
            "test_sampling" => {
                let prompt = argument(&request, "prompt")
                    .and_then(Value::as_str)
                    .unwrap_or("Hello");
                let asked = json!({
                    "method": "sampling/createMessage",
                    "params": {
                        "messages": [{ "role": "user", "content": { "type": "text", "text": prompt } }],
                        "maxTokens": 100,
                    },
                });
                match ask(&ctx, asked).await? {
                    Ok(answer) => text(format!(
                        "LLM response: {}",
                        answer["content"]["text"].as_str().unwrap_or_default()
                    )),
                    Err(e) => CallToolResult::error(vec![ContentBlock::text(format!(
                        "sampling failed: {e}"
                    ))]),
                }
            }
            "test_elicitation" => {
                let message = argument(&request, "message")
                    .and_then(Value::as_str)
                    .unwrap_or("Who are you?");
                let schema = json!({
                    "type": "object",
                    "properties": {
                        "username": { "type": "string", "description": "User's response" },
                        "email": { "type": "string", "description": "User's email address" },
                    },
                    "required": ["username", "email"],
                });
                elicit(&ctx, message, schema, "User response").await?
            }
            "test_elicitation_sep1034_defaults" => {
                let schema = json!({
                    "type": "object",
                    "properties": {
                        "name": { "type": "string", "default": "John Doe" },
                        "age": { "type": "integer", "default": 30 },
                        "score": { "type": "number", "default": 95.5 },
                        "status": { "type": "string", "enum": ["active", "inactive", "pending"], "default": "active" },
                        "verified": { "type": "boolean", "default": true },
                    },
                });
                elicit(
                    &ctx,
                    "Please confirm the defaults",
                    schema,
                    "Elicitation completed",
                )
                .await?
            }
            "test_elicitation_sep1330_enums" => {
                let schema = json!({
                    "type": "object",
                    "properties": {
                        "untitledSingle": { "type": "string", "enum": ["option1", "option2", "option3"] },
                        "titledSingle": { "type": "string", "oneOf": [
                            { "const": "value1", "title": "First Option" },
                            { "const": "value2", "title": "Second Option" },
                            { "const": "value3", "title": "Third Option" },
                        ]},
                        "legacyEnum": { "type": "string", "enum": ["opt1", "opt2", "opt3"],
                            "enumNames": ["Option One", "Option Two", "Option Three"] },
                        "untitledMulti": { "type": "array", "items": { "type": "string", "enum": ["option1", "option2", "option3"] } },
                        "titledMulti": { "type": "array", "items": { "anyOf": [
                            { "const": "value1", "title": "First Choice" },
                            { "const": "value2", "title": "Second Choice" },
                            { "const": "value3", "title": "Third Choice" },
                        ]}},
                    },
                });
                elicit(&ctx, "Please choose", schema, "Elicitation completed").await?
            }
            // An answer that is not an accepted form with a name is asked again.
            "test_input_required_result_elicitation" => match input_response(&request, "user_name")
                .and_then(|answer| answer["content"]["name"].as_str())
            {
                Some(name) => text(format!("Hello, {name}!")),
                None => {
                    return input_required(
                        json!({ "user_name": elicit_name("What is your name?") }),
                        None,
                    )
                }
            },
            "test_input_required_result_sampling" => {
                match input_response(&request, "capital_question") {
                    Some(answer) => text(format!(
                        "The model said: {}",
                        answer["content"]["text"].as_str().unwrap_or("")
                    )),
                    None => {
                        return input_required(
                            json!({ "capital_question": {
                                "method": "sampling/createMessage",
                                "params": {
                                    "messages": [{ "role": "user", "content": { "type": "text", "text": "What is the capital of France?" } }],
                                    "maxTokens": 100,
                                },
                            }}),
                            None,
                        )
                    }
                }
            }
            "test_input_required_result_list_roots" => {
                match input_response(&request, "client_roots") {
                    Some(answer) => {
                        let roots: Vec<&str> = answer["roots"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|r| r["uri"].as_str())
                            .collect();
                        text(format!("The client's roots: {}", roots.join(", ")))
                    }
                    None => {
                        return input_required(
                            json!({ "client_roots": { "method": "roots/list", "params": {} } }),
                            None,
                        )
                    }
                }
            }
            "test_input_required_result_request_state"
            | "test_input_required_result_tampered_state" => {
                match (input_response(&request, "confirm"), request.request_state.as_deref()) {
                    (Some(_), Some(REQUEST_STATE)) => text("state-ok: confirmed"),
                    (Some(_), _) => return Err(ErrorData::invalid_params(
                        "the requestState is not one this server issued: call the tool again without it",
                        None,
                    )),
                    (None, _) => return input_required(json!({ "confirm": {
                        "method": "elicitation/create",
                        "params": {
                            "message": "Please confirm",
                            "requestedSchema": { "type": "object", "properties": { "ok": { "type": "boolean" } }, "required": ["ok"] },
                        },
                    }}), Some(REQUEST_STATE)),
                }
            }
            "test_input_required_result_multiple_inputs" => {
                let keys = ["user_name", "greeting", "client_roots"];
                if keys
                    .iter()
                    .all(|key| input_response(&request, key).is_some())
                    && request.request_state.as_deref() == Some(REQUEST_STATE)
                {
                    text("all three inputs received")
                } else {
                    return input_required(
                        json!({
                            "user_name": elicit_name("What is your name?"),
                            "greeting": { "method": "sampling/createMessage", "params": {
                                "messages": [{ "role": "user", "content": { "type": "text", "text": "Generate a greeting" } }],
                                "maxTokens": 50,
                            }},
                            "client_roots": { "method": "roots/list", "params": {} },
                        }),
                        Some(REQUEST_STATE),
                    );
                }
            }
            "test_input_required_result_multi_round" => {
                match (
                    request.request_state.as_deref(),
                    input_response(&request, "step1"),
                    input_response(&request, "step2"),
                ) {
                    (Some("round-2"), _, Some(_)) => text("multi-round complete"),
                    (Some("round-1"), Some(_), _) => {
                        return input_required(
                            json!({ "step2": elicit_name("Step 2: Confirm your name") }),
                            Some("round-2"),
                        )
                    }
                    _ => {
                        return input_required(
                            json!({ "step1": elicit_name("Step 1: What is your name?") }),
                            Some("round-1"),
                        )
                    }
                }
            }
            "greet" => text(format!(
                "Hello, {}!",
                argument(&request, "name")
                    .and_then(Value::as_str)
                    .unwrap_or("world")
            )),
            "slow_compute" => {
                let seconds = argument(&request, "seconds")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
                    .clamp(0.0, 600.0);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs_f64(seconds)) => {}
                    _ = ctx.ct.cancelled() => return Err(ErrorData::internal_error("cancelled", None)),
                }
                text(format!("computed in {seconds} s"))
            }
            // Both run past the fixture's 1 s budget, so they end as tasks.
            "failing_job" => {
                tokio::time::sleep(Duration::from_millis(1200)).await;
                CallToolResult::error(vec![ContentBlock::text(
                    "failing_job failed, as it always does",
                )])
            }
            "protocol_error_job" => {
                tokio::time::sleep(Duration::from_millis(1200)).await;
                return Err(ErrorData::internal_error(
                    "protocol_error_job: an internal failure, on purpose",
                    None,
                ));
            }
            "test_input_required_result_capabilities" => {
                let declared = ctx.client_capabilities().unwrap_or_default();
                let mut requests = serde_json::Map::new();
                if declared.elicitation.is_some() {
                    requests.insert("user_name".to_owned(), elicit_name("What is your name?"));
                }
                if declared.sampling.is_some() {
                    requests.insert("greeting".to_owned(), json!({ "method": "sampling/createMessage", "params": {
                        "messages": [{ "role": "user", "content": { "type": "text", "text": "Generate a greeting" } }],
                        "maxTokens": 50,
                    }}));
                }
                let answered = request
                    .input_responses
                    .as_ref()
                    .is_some_and(|r| requests.keys().all(|k| r.contains_key(k)));
                if answered || requests.is_empty() {
                    text(format!(
                        "asked for: {}",
                        requests.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                } else {
                    return input_required(Value::Object(requests), None);
                }
            }
            "test_missing_capability" => {
                if ctx
                    .client_capabilities()
                    .unwrap_or_default()
                    .sampling
                    .is_none()
                {
                    return Err(ErrorData::new(
                        ErrorCode(-32021),
                        "test_missing_capability needs the client's sampling capability",
                        Some(json!({ "requiredCapabilities": { "sampling": {} } })),
                    ));
                }
                text("the client can sample")
            }
            "test_streaming_elicitation" => match input_response(&request, "user_name") {
                Some(_) => text("thanks"),
                None => {
                    return input_required(
                        json!({ "user_name": elicit_name("What is your name?") }),
                        None,
                    )
                }
            },
            #[allow(deprecated)] // as `test_tool_with_logging`
            "test_logging_tool" => {
                if ctx.meta.get("io.modelcontextprotocol/logLevel").is_some() {
                    let note = LoggingMessageNotificationParam::new(
                        LoggingLevel::Info,
                        json!("the request asked for logs"),
                    );
                    if let Err(e) = ctx.peer.notify_logging_message(note).await {
                        tracing::warn!(error = %e, "could not send a log message");
                    }
                }
                text("logged only if asked")
            }
            "json_schema_2020_12_tool" => text("ok"),
            // Not the suite's: for the proxy's tests, an error result that is more than text.
            "test_error_with_details" => {
                let seconds = argument(&request, "seconds")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
                    .clamp(0.0, 60.0);
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                wire(json!({
                    "isError": true,
                    "content": [
                        { "type": "text", "text": "over quota" },
                        { "type": "image", "data": PNG, "mimeType": "image/png" },
                    ],
                    "structuredContent": { "reason": "quota", "retry_after_s": 60 },
                }))?
            }
            "test_trigger_tool_change" | "test_dynamic_tool" => {
                let added = !self.dynamic_tool.fetch_xor(true, Ordering::SeqCst);
                // Streams that can no longer be told are dropped.
                let listeners = std::mem::take(&mut *smart_async_lock(&self.listeners));
                let mut open = Vec::with_capacity(listeners.len());
                for listener in listeners {
                    if listener.notify_tool_list_changed().await.is_ok() {
                        open.push(listener);
                    }
                }
                smart_async_lock(&self.listeners).extend(open);
                text(if added {
                    "test_dynamic_tool added"
                } else {
                    "test_dynamic_tool removed"
                })
            }
            "test_custom_header" => text(format!(
                "region: {}",
                argument(&request, "region")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            )),
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool '{other}'"),
                    None,
                ))
            }
        };
        Ok(answer.into())
    }

    fn prompt(&self, request: &GetPromptRequestParams) -> Result<GetPromptResponse, ErrorData> {
        let argument = |name: &str| {
            request
                .arguments
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let messages = match request.name.as_str() {
            "test_simple_prompt" => json!([
                { "role": "user", "content": { "type": "text", "text": "This is a simple prompt for testing." } },
            ]),
            "test_prompt_with_arguments" => json!([
                { "role": "user", "content": { "type": "text",
                    "text": format!("Prompt with arguments: arg1='{}', arg2='{}'", argument("arg1"), argument("arg2")) } },
            ]),
            "test_prompt_with_embedded_resource" => json!([
                { "role": "user", "content": { "type": "resource", "resource": {
                    "uri": argument("resourceUri"), "mimeType": "text/plain", "text": "Embedded resource content for testing.",
                }}},
                { "role": "user", "content": { "type": "text", "text": "Please process the embedded resource above." } },
            ]),
            "test_input_required_result_prompt" => {
                let context = request
                    .input_responses
                    .as_ref()
                    .and_then(|r| r.get("user_context"));
                match context {
                    Some(answer) => json!([{ "role": "user", "content": { "type": "text",
                        "text": format!("Use this context: {}", answer["content"]["context"].as_str().unwrap_or_default()) } }]),
                    None => {
                        let requests: InputRequests = wire(json!({ "user_context": {
                            "method": "elicitation/create",
                            "params": {
                                "message": "What context should the prompt use?",
                                "requestedSchema": { "type": "object", "properties": { "context": { "type": "string" } }, "required": ["context"] },
                            },
                        }}))?;
                        return Ok(GetPromptResponse::InputRequired(InputRequiredResult::new(
                            Some(requests),
                            None,
                        )));
                    }
                }
            }
            "test_prompt_with_image" => json!([
                { "role": "user", "content": { "type": "image", "data": PNG, "mimeType": "image/png" } },
                { "role": "user", "content": { "type": "text", "text": "Please analyze the image above." } },
            ]),
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown prompt '{other}'"),
                    None,
                ))
            }
        };
        let result: GetPromptResult = wire(json!({ "messages": messages }))?;
        Ok(GetPromptResponse::Complete(result))
    }

    fn resource(&self, uri: &str) -> Result<Value, ErrorData> {
        let contents = match uri {
            "test://static-text" => {
                json!({ "uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource." })
            }
            "test://static-binary" => json!({ "uri": uri, "mimeType": "image/png", "blob": PNG }),
            "test://watched-resource" => {
                json!({ "uri": uri, "mimeType": "text/plain", "text": "A resource to subscribe to." })
            }
            _ => match uri
                .strip_prefix("test://template/")
                .and_then(|rest| rest.strip_suffix("/data"))
            {
                Some(id) if !id.is_empty() && !id.contains('/') => json!({
                    "uri": uri,
                    "mimeType": "application/json",
                    "text": json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") }).to_string(),
                }),
                _ => {
                    return Err(ErrorData::invalid_params(
                        "Resource not found",
                        Some(json!({ "uri": uri })),
                    ))
                }
            },
        };
        Ok(json!({ "contents": [contents] }))
    }
}

/// Sends the client a request of its own (sampling, elicitation) while the call is
/// inline, and gives back its answer, or why there is none.
async fn ask(
    ctx: &RequestContext<RoleServer>,
    request: Value,
) -> Result<Result<Value, String>, ErrorData> {
    let request: ServerRequest = wire(request)?;
    Ok(match ctx.peer.send_request(request).await {
        Ok(answer) => serde_json::to_value(answer).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    })
}

/// Asks the user through the client and says what came back.
async fn elicit(
    ctx: &RequestContext<RoleServer>,
    message: &str,
    schema: Value,
    said: &str,
) -> Result<CallToolResult, ErrorData> {
    let asked = json!({
        "method": "elicitation/create",
        "params": { "mode": "form", "message": message, "requestedSchema": schema },
    });
    Ok(match ask(ctx, asked).await? {
        Ok(answer) => text(format!(
            "{said}: action={}, content={}",
            answer["action"].as_str().unwrap_or("unknown"),
            answer["content"]
        )),
        Err(e) => {
            CallToolResult::error(vec![ContentBlock::text(format!("elicitation failed: {e}"))])
        }
    })
}

impl ServerHandler for Fixture {
    #[allow(deprecated)] // logging: as `test_tool_with_logging`
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_prompts()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_completions()
            .enable_logging()
            .build();
        ServerConfig::new(capabilities)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let dynamic = self
            .dynamic_tool
            .load(Ordering::SeqCst)
            .then_some(&DYNAMIC_TOOL);
        let tools = TOOLS
            .iter()
            .chain(dynamic)
            .map(|(name, description, required)| tool(name, description, required));
        Ok(ListToolsResult::with_all_items(
            tools.collect::<Result<_, _>>()?,
        ))
    }

    fn get_tool(&self, name: &str) -> Option<McpTool> {
        let dynamic = self
            .dynamic_tool
            .load(Ordering::SeqCst)
            .then_some(&DYNAMIC_TOOL);
        let (name, description, required) = TOOLS
            .iter()
            .chain(dynamic)
            .find(|(tool, ..)| *tool == name)?;
        tool(name, description, required).ok()
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::new();
        accepted.tools_list_changed = requested.tools_list_changed;
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        smart_async_lock(&self.listeners).push(context.sink().clone());
        context.cancelled().await;
        Ok(())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.call(request, ctx).await
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let prompts: Vec<Value> = PROMPTS
            .iter()
            .map(|(name, description, arguments)| {
                let arguments: Vec<Value> = arguments
                    .iter()
                    .map(|argument| json!({ "name": argument, "description": argument, "required": true }))
                    .collect();
                json!({ "name": name, "description": description, "arguments": arguments })
            })
            .collect();
        wire(json!({ "prompts": prompts }))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        self.prompt(&request)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        wire(json!({ "resources": [
            { "uri": "test://static-text", "name": "static-text", "description": "A static text.", "mimeType": "text/plain" },
            { "uri": "test://static-binary", "name": "static-binary", "description": "A static image.", "mimeType": "image/png" },
            { "uri": "test://watched-resource", "name": "watched-resource", "description": "A resource to subscribe to.", "mimeType": "text/plain" },
        ]}))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        wire(json!({ "resourceTemplates": [{
            "uriTemplate": "test://template/{id}/data",
            "name": "template-data",
            "description": "Data for an id.",
            "mimeType": "application/json",
        }]}))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        Ok(ReadResourceResponse::Complete(wire(
            self.resource(&request.uri)?,
        )?))
    }

    #[allow(deprecated)] // resources/subscribe: the legacy lifecycle's
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        smart_async_lock(&self.subscriptions).insert(request.uri);
        Ok(())
    }

    #[allow(deprecated)] // as `subscribe`
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        smart_async_lock(&self.subscriptions).remove(&request.uri);
        Ok(())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let typed = request.argument.value.to_lowercase();
        let values: Vec<&str> = ["paris", "park", "party"]
            .into_iter()
            .filter(|v| v.starts_with(&typed))
            .collect();
        wire(json!({ "completion": { "values": values, "total": values.len(), "hasMore": false } }))
    }

    #[allow(deprecated)] // logging/setLevel: deprecated in MCP, still tested
    async fn set_level(
        &self,
        _request: SetLevelRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }
}

fn smart_async_lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(data_dir)) = (args.next(), args.next()) else {
        anyhow::bail!(
            "usage: conformance_fixture ADDR|--stdio DATA_DIR (e.g. 127.0.0.1:3000 /tmp/fixture)"
        );
    };
    let mut config = EngineConfig::new(data_dir);
    // Over HTTP, calls are promoted to jobs (tasks) after 0.8 s, where a server for
    // real clients waits most of their budget: the suite's `slow_compute` of a second
    // becomes a task, as the tasks scenarios want, and all else answers inline. On
    // stdio, behind a proxy, the proxy decides.
    if addr != "--stdio" {
        config.deadline_s = Some(0.8);
    }
    // No tool here is expensive: the built-in table takes a name containing "embed"
    // for embeddings work, and would send `test_embedded_resource` to the background
    // until its runtime is learned.
    config.static_table = StaticTable::from_toml("")?;
    let engine = Engine::open(config).await?;
    let server = SmartServer::wrap(engine.clone(), Fixture::default());
    if addr == "--stdio" {
        // As an upstream behind `smart-async proxy` (tests/proxy_e2e.rs).
        server.serve_stdio().await?;
        engine.close().await?;
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let limits = HttpLimits::loopback(listener.local_addr()?.ip());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.cancel();
        }
    });
    server
        .serve_http(listener, shutdown, limits, HttpAccess::default())
        .await?;
    engine.close().await?;
    Ok(())
}
