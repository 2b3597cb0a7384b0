//! Tools the server offers: the built-in file tools and command tools from the config.
//!
//! A [`Tool`] validates its arguments at once ([`Tool::start`]), so bad input is a
//! clear error before anything runs, and hands back the work for the engine to run
//! inline or as a job. Tools know nothing of MCP: they return a [`ToolOutput`] (text for
//! a model to read, structured JSON for programs), which the MCP face turns into a result.

use std::future::Future;
use std::pin::Pin;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::ToolOptions;
use crate::features::ASYNC_MODE_ARG;
use crate::jobs::JobContext;

pub mod command;
pub mod files;
pub mod params;
pub mod roots;
pub mod walk;

/// What a tool returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// For a model or a person to read.
    pub text: String,
    /// The same, for programs.
    pub structured: Value,
}

/// The future of a tool's work.
pub type ToolFuture = Pin<Box<dyn Future<Output = Result<ToolOutput, String>> + Send>>;
/// A tool's validated work, waiting for its [`JobContext`].
pub type ToolWork = Box<dyn FnOnce(JobContext) -> ToolFuture + Send>;

/// A tool the server offers.
pub trait Tool: Send + Sync {
    /// Its name.
    fn name(&self) -> &str;
    /// What it does, for the model choosing tools.
    fn description(&self) -> &str;
    /// JSON Schema of its arguments (an object schema, without `async_mode`, which the
    /// server adds to every tool).
    fn input_schema(&self) -> Map<String, Value>;
    /// How the engine should treat it.
    fn options(&self) -> ToolOptions {
        ToolOptions::default()
    }
    /// Checks the arguments and returns the work, or says what is wrong with them.
    fn start(&self, args: &Value) -> Result<ToolWork, String>;
}

/// Reads a tool's arguments into `T`, ignoring `async_mode`; the error names the tool.
pub fn parse_args<T: DeserializeOwned>(tool: &str, args: &Value) -> Result<T, String> {
    let mut args = match args {
        Value::Object(map) => map.clone(),
        Value::Null => Map::new(),
        other => {
            return Err(format!(
                "{tool}: arguments must be a JSON object, got {}",
                crate::jsonrpc::excerpt(&other.to_string())
            ))
        }
    };
    args.remove(ASYNC_MODE_ARG);
    serde_json::from_value(Value::Object(args)).map_err(|e| {
        format!(
            "{tool}: invalid arguments: {}",
            crate::jsonrpc::cut(&e.to_string())
        )
    })
}

/// The JSON Schema of `T` as an object.
pub fn schema_of<T: JsonSchema>() -> Map<String, Value> {
    match serde_json::to_value(schemars::schema_for!(T)) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// `schema` with the optional `async_mode` property every tool accepts.
pub fn with_async_mode(mut schema: Map<String, Value>) -> Map<String, Value> {
    schema
        .entry("type")
        .or_insert_with(|| Value::from("object"));
    let properties = schema
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(properties) = properties {
        properties.insert(
            ASYNC_MODE_ARG.to_owned(),
            serde_json::json!({
                "type": "boolean",
                "description": "Set true to run in the background and get a job_id at once; \
                                otherwise smart-async decides from the predicted runtime."
            }),
        );
    }
    schema
}
