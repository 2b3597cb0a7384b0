//! The upstream's answers as smart-async carries them: a result whole (inline, and in a
//! job as the result it reads back into), an `isError` result as the call's error
//! with the result kept for the client, a JSON-RPC error with its code and data, and
//! every passed-on result marked complete for 2026-07-28 clients.

use rmcp::model::{
    CallToolResult, CompleteResult, GetPromptResponse, GetPromptResult, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ProgressNotificationParam,
    ReadResourceResponse, ReadResourceResult, ResultType,
};
use rmcp::service::ServiceError;
use rmcp::ErrorData;

use crate::engine::WorkOutput;
use crate::jobs::{JobOutput, Progress};
use crate::run_error::RunError;

/// An upstream's result as the engine carries it: as it came for an inline answer, and
/// as a whole [`JobOutput::CallResult`] in the job store.
#[derive(Debug)]
pub struct Proxied(pub CallToolResult);

impl WorkOutput for Proxied {
    fn into_output(self) -> JobOutput {
        // A result's JSON has only string keys, so this does not fail; were it to, the
        // job says why rather than losing its end.
        match serde_json::to_value(&self.0) {
            Ok(result) => JobOutput::CallResult { result },
            Err(e) => serde_json::json!({
                "error": format!("the upstream's result cannot be stored: {e}")
            })
            .into(),
        }
    }
}

/// The upstream's answer as the engine carries it; an `isError` result is the call's
/// error (counted as failed, not taught): its text for people, and the whole result
/// (every content block, structured content) for the client.
pub(crate) fn carried(result: CallToolResult) -> Result<Proxied, RunError> {
    if result.is_error == Some(true) {
        let text: Vec<String> = result
            .content
            .iter()
            .filter_map(|block| block.as_text().map(|t| t.text.clone()))
            .collect();
        return Err(RunError::Tool {
            message: text.join("\n"),
            result: serde_json::to_value(&result).ok(),
        });
    }
    Ok(Proxied(result))
}

/// A result passed on from the upstream, marked `resultType: complete`: an upstream
/// that speaks an older protocol leaves it out, and 2026-07-28 clients require it
/// (rmcp removes it again for clients of older versions).
pub trait MarkComplete {
    /// The result with its `resultType` set.
    fn complete(self) -> Self;
}

macro_rules! mark_complete {
    ($($result:ty),*) => {$(
        impl MarkComplete for $result {
            fn complete(mut self) -> Self {
                self.result_type = Some(ResultType::COMPLETE);
                self
            }
        }
    )*};
}

mark_complete!(
    CallToolResult,
    CompleteResult,
    ListPromptsResult,
    GetPromptResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ReadResourceResult
);

/// `logging/setLevel` answers an empty result, which has no result type to mark.
impl MarkComplete for () {
    fn complete(self) -> Self {}
}

impl MarkComplete for GetPromptResponse {
    fn complete(self) -> Self {
        match self {
            GetPromptResponse::Complete(result) => GetPromptResponse::Complete(result.complete()),
            other => other,
        }
    }
}

impl MarkComplete for ReadResourceResponse {
    fn complete(self) -> Self {
        match self {
            ReadResourceResponse::Complete(result) => {
                ReadResourceResponse::Complete(result.complete())
            }
            other => other,
        }
    }
}

/// A JSON-RPC error of the tool's server, as a run's error: given back with its code
/// and data.
pub(crate) fn rpc_error(error: ErrorData) -> RunError {
    RunError::Rpc {
        code: error.code.0,
        message: error.message.into_owned(),
        data: error.data,
    }
}

/// An upstream's error on a pass-through request, as the downstream client's error.
pub fn upstream_error(error: ServiceError) -> ErrorData {
    match error {
        ServiceError::McpError(error) => error,
        other => ErrorData::internal_error(format!("the upstream server failed: {other}"), None),
    }
}

pub(super) fn upstream_progress(note: ProgressNotificationParam) -> Progress {
    Progress {
        done: note.progress,
        total: note.total,
        message: note.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ErrorCode;

    #[test]
    fn an_upstream_rpc_error_keeps_its_code_message_and_data() {
        let data = serde_json::json!({ "field": "seconds" });
        let error = ErrorData::invalid_params("missing field `seconds`", Some(data.clone()));
        assert_eq!(
            rpc_error(error),
            RunError::Rpc {
                code: ErrorCode::INVALID_PARAMS.0,
                message: "missing field `seconds`".to_owned(),
                data: Some(data),
            }
        );
    }

    #[test]
    fn an_is_error_result_is_the_call_error_with_its_text() {
        let failed = CallToolResult::error(vec![rmcp::model::ContentBlock::text("no such file")]);
        match carried(failed.clone()).err() {
            Some(RunError::Tool { message, result }) => {
                assert_eq!(message, "no such file");
                // Whole, for the client: every block, the isError flag.
                assert_eq!(result, serde_json::to_value(&failed).ok());
            }
            other => panic!("{other:?}"),
        }
        let ok = CallToolResult::success(vec![rmcp::model::ContentBlock::text("fine")]);
        let carried = carried(ok).unwrap();
        assert_eq!(carried.0.content[0].as_text().unwrap().text, "fine");
        // A job keeps it whole, as the result it reads back into.
        let JobOutput::CallResult { result } = carried.into_output() else {
            panic!("a proxied result is kept as a CallToolResult");
        };
        assert_eq!(result["content"][0]["text"], "fine");
    }
}
