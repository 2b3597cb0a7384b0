//! The result codec: what a call's work becomes for the client. A tool's output, an
//! upstream's or a wrapped handler's answer become the call's result inline; a job
//! keeps the same as a [`JobOutput`], which reads back into the same result; a run's failure
//! becomes an `isError` result or a JSON-RPC error by its kind.

use rmcp::model::{CallToolResponse, CallToolResult, ConstString, ContentBlock, JsonObject};
use rmcp::ErrorData;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::wrapped::Handled;
use crate::engine::WorkOutput;
use crate::job::JobOutput;
use crate::jsonrpc::excerpt;
use crate::proxy::{MarkComplete, Proxied};
use crate::run_error::RunError;
use crate::tools::ToolOutput;

/// What a backend's work returns, as the engine carries it: turned into the call's
/// result when it answers inline, kept as a [`JobOutput`] (read back by
/// [`stored_result`]) when it runs as a job.
pub(super) trait Answer: WorkOutput {
    fn into_response(self) -> CallToolResponse;
}

impl WorkOutput for ToolOutput {
    fn into_output(self) -> JobOutput {
        JobOutput::Tool {
            text: self.text,
            structured: self.structured,
        }
    }
}

impl Answer for ToolOutput {
    fn into_response(self) -> CallToolResponse {
        text_and_structured(self.text, self.structured).into()
    }
}

impl Answer for Proxied {
    fn into_response(self) -> CallToolResponse {
        self.0.complete().into()
    }
}

/// A result as the proxy's is; a request for input as it came.
impl Answer for Handled {
    fn into_response(self) -> CallToolResponse {
        match self {
            Handled::Result(proxied) => proxied.into_response(),
            Handled::InputRequired(input) => CallToolResponse::InputRequired(*input),
        }
    }
}

/// The JSON-RPC error a run's failure is, when it was not the tool's own: the tool's
/// server's error as it sent it, or the restart that cut the run off.
pub(super) fn protocol_error(error: &RunError) -> Option<ErrorData> {
    match error {
        RunError::Rpc {
            code,
            message,
            data,
        } => Some(ErrorData::new(
            rmcp::model::ErrorCode(*code),
            message.clone(),
            data.clone(),
        )),
        RunError::Interrupted => Some(ErrorData::internal_error(
            "the job was interrupted by a restart of smart-async: call the tool again",
            None,
        )),
        _ => None,
    }
}

/// The `isError` result of a run that failed on the tool's terms: the tool's server's
/// own result whole when it sent one, else the failure in words.
pub(super) fn failed_result(error: RunError) -> CallToolResult {
    match error {
        RunError::Tool {
            result: Some(result),
            message,
        } => CallToolResult::deserialize(&result)
            .map(MarkComplete::complete)
            .unwrap_or_else(|_| error_result(message)),
        other => error_result(other.to_string()),
    }
}

pub(super) fn result_object(value: impl Serialize) -> JsonObject {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map,
        _ => JsonObject::new(),
    }
}

pub(super) fn text_and_structured(text: String, structured: Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(structured);
    result
}

pub(super) fn error_result(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// The result a job's output reads back into: the one its work would have answered
/// inline. A stored `CallToolResult` this rmcp cannot read is shown as the JSON it is.
pub(super) fn stored_result(output: JobOutput) -> CallToolResult {
    match output {
        JobOutput::CallResult { result } => CallToolResult::deserialize(&result)
            .map(MarkComplete::complete)
            .unwrap_or_else(|_| text_and_structured(result.to_string(), result)),
        JobOutput::Tool { text, structured } => text_and_structured(text, structured),
        JobOutput::Value { value } => text_and_structured(value.to_string(), value),
    }
}

/// The -32601 answer, saying what it is (rmcp's names only the method).
pub(super) fn method_not_found<M: ConstString>() -> ErrorData {
    not_found_method(M::VALUE)
}

pub(super) fn not_found_method(method: &str) -> ErrorData {
    ErrorData::new(
        rmcp::model::ErrorCode::METHOD_NOT_FOUND,
        format!("method not found: {}", excerpt(method)),
        None,
    )
}

pub(super) fn unknown_tool(name: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!(
            "unknown tool '{}': tools/list shows the available ones",
            excerpt(name)
        ),
        None,
    )
}
