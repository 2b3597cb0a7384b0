//! The job handle a tool call answers with instead of its result, when it goes to the
//! background: its structured form, and the output schema that admits it beside a
//! tool's own. Both faces that list tools need the schema: the MCP server for its own
//! tools' answers, the proxy for an upstream's tools.

use rmcp::model::JsonObject;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};

use crate::tools::output_schema_of;

/// The structured content of a call answered with a job handle.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct JobAnswer {
    /// The job's id, for job_status and cancel_job.
    pub job_id: String,
    /// pending or running.
    pub status: &'static str,
    /// Whether smart-async chose the background (false when the call asked for it).
    pub smart_async: bool,
    /// Whether the call began inline and overran its deadline.
    pub promoted: bool,
    /// Why it was decided so.
    pub reason: String,
    /// The predicted runtime, when a model spoke.
    pub predicted_s: Option<f64>,
    /// Seconds to the predicted end.
    pub eta_s: Option<f64>,
    /// What to call next.
    pub next: String,
}

/// A tool's output schema that also admits the job answer, for a tool whose calls can
/// come back as jobs: strict clients check structured content against it.
pub(crate) fn or_job_answer(schema: &JsonObject) -> JsonObject {
    let mut job_answer = output_schema_of::<JobAnswer>();
    job_answer.remove("$schema");
    let mut widened = JsonObject::new();
    widened.insert("type".to_owned(), json!("object"));
    widened.insert(
        "anyOf".to_owned(),
        json!([Value::Object(schema.clone()), Value::Object(job_answer)]),
    );
    widened
}
