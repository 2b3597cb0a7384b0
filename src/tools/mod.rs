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
use crate::run_error::RunError;

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
/// Its error is a [`RunError`]: a message (`"…".into()`) is the tool's own failure.
pub type ToolFuture = Pin<Box<dyn Future<Output = Result<ToolOutput, RunError>> + Send>>;
/// A tool's validated work, waiting for its [`JobContext`].
pub type ToolWork = Box<dyn FnOnce(JobContext) -> ToolFuture + Send>;

/// A tool the server offers.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use serde_json::{json, Map, Value};
/// use smart_async::{parse_args, schema_of, CallOutcome, Engine, EngineConfig, ToolCall};
/// use smart_async::{JobContext, Tool, ToolOutput, ToolWork};
///
/// struct Count;
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct CountArgs {
///     /// Up to what.
///     to: u32,
/// }
///
/// impl Tool for Count {
///     fn name(&self) -> &str {
///         "count"
///     }
///     fn description(&self) -> &str {
///         "Count up to a number."
///     }
///     fn input_schema(&self) -> Map<String, Value> {
///         schema_of::<CountArgs>()
///     }
///     fn start(&self, args: &Value) -> Result<ToolWork, String> {
///         // Bad arguments are refused here, before anything runs.
///         let args: CountArgs = parse_args(self.name(), args)?;
///         Ok(Box::new(move |ctx: JobContext| {
///             Box::pin(async move {
///                 let mut counted = 0;
///                 while counted < args.to && !ctx.is_cancelled() {
///                     counted += 1;
///                 }
///                 Ok(ToolOutput { text: format!("counted to {counted}"), structured: json!(counted) })
///             })
///         }))
///     }
/// }
///
/// assert!(Count.start(&json!({ "to": "ten" })).err().unwrap().contains("count"));
/// let dir = tempfile::tempdir()?;
/// let engine = Engine::open(EngineConfig::new(dir.path())).await?;
/// let args = json!({ "to": 10 });
/// let work = Count.start(&args)?;
/// match engine.call(ToolCall::new("count", args), work).await? {
///     CallOutcome::Done { result, .. } => assert_eq!(result?.text, "counted to 10"),
///     other => panic!("a quick count went to the background: {other:?}"),
/// }
/// engine.close().await?;
/// # Ok(()) }
/// ```
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
            crate::jsonrpc::cut(&e.to_string(), crate::jsonrpc::ERROR_CHARS)
        )
    })
}

/// The JSON Schema of a tool's arguments `T` as an object, its optional properties
/// without null unions.
pub fn schema_of<T: JsonSchema>() -> Map<String, Value> {
    let mut schema = output_schema_of::<T>();
    optional_without_null(&mut schema);
    schema
}

/// The JSON Schema of a result `T` as an object, as schemars writes it: an optional
/// field sent as `null` must validate.
pub fn output_schema_of<T: JsonSchema>() -> Map<String, Value> {
    match serde_json::to_value(schemars::schema_for!(T)) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// schemars writes an `Option` as `"type": ["integer", "null"]` (or an `anyOf` with
/// `{"type": "null"}`), which the Inspector's `--strict` flags as unportable: an
/// optional property is optional by not being `required`, so its null is dropped.
fn optional_without_null(schema: &mut Map<String, Value>) {
    let required: Vec<String> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let Some(Value::Object(properties)) = schema.get_mut("properties") else {
        return;
    };
    for (name, property) in properties.iter_mut() {
        let Value::Object(property) = property else {
            continue;
        };
        if required.contains(name) {
            continue;
        }
        if let Some(Value::Array(types)) = property.get_mut("type") {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let only = types.remove(0);
                property.insert("type".to_owned(), only);
            }
        }
        if let Some(Value::Array(choices)) = property.get_mut("anyOf") {
            choices.retain(|choice| choice.get("type").is_none_or(|t| t != "null"));
            if choices.len() == 1 {
                if let Value::Object(only) = choices.remove(0) {
                    property.remove("anyOf");
                    for (key, value) in only {
                        property.entry(key).or_insert(value);
                    }
                }
            }
        }
        if property.get("default") == Some(&Value::Null) {
            property.remove("default");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15: optional properties were `["integer", "null"]` unions.
    #[test]
    fn an_optional_property_has_one_type_and_is_not_required() {
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        struct Args {
            /// Where.
            path: String,
            /// How many.
            limit: Option<u32>,
            /// Which.
            status: Option<String>,
        }
        let schema = schema_of::<Args>();
        let properties = schema["properties"].as_object().unwrap();
        assert_eq!(properties["limit"]["type"], "integer");
        assert_eq!(properties["status"]["type"], "string");
        assert_eq!(properties["limit"]["description"], "How many.");
        assert_eq!(schema["required"], serde_json::json!(["path"]));
        assert!(!serde_json::to_string(&schema).unwrap().contains("null"));
        // A result's optional field may be sent as null: its schema keeps the union
        // (the Python SDK validates job answers against it).
        let output = output_schema_of::<Args>();
        assert_eq!(
            output["properties"]["limit"]["type"],
            serde_json::json!(["integer", "null"])
        );
    }
}
