//! What a run can end in besides its result: one typed error from a tool's work
//! through the engine and the job store to the MCP face, so that what the client gets
//! (an `isError` result, a JSON-RPC error with its code and data, a failed task) is
//! decided by the kind of the failure, never by the words of its message.
//!
//! A job keeps its error as JSON. A database written before this type existed stored
//! a message; [`RunError`] reads one back as the kind its words named then.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Why a run ended without a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunError {
    /// The tool failed on its own terms: what it said, and the whole `isError` result
    /// (an MCP `CallToolResult` as JSON: every content block, structured content) when
    /// its server sent one.
    #[error("{message}")]
    Tool {
        /// For a model or a person to read.
        message: String,
        /// The tool's own error result, passed on whole.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
    },
    /// The tool's server (the proxy's upstream, a wrapped handler) answered the call
    /// with a JSON-RPC error: given back to the client with its code and data.
    #[error("the tool's server answered with JSON-RPC error {code}: {message}")]
    Rpc {
        /// The JSON-RPC error code.
        code: i32,
        /// Its message.
        message: String,
        /// Its data, when it had some.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
    },
    /// Stopped on request (the client's cancel, `cancel_job`, shutdown).
    #[error("cancelled")]
    Cancelled,
    /// A restart of smart-async cut the run off: nothing is running it any more.
    #[error("interrupted by restart")]
    Interrupted,
    /// The work panicked.
    #[error("the tool panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The run passed its hard time limit and was stopped.
    #[error("timed out after {} and was stopped", crate::policy::Seconds(*after_s))]
    TimedOut {
        /// The limit, in seconds.
        after_s: f64,
    },
}

impl RunError {
    /// A tool's own failure, as it worded it.
    pub fn tool(message: impl Into<String>) -> RunError {
        RunError::Tool {
            message: message.into(),
            result: None,
        }
    }
}

/// A tool's work may fail with a message: it is the tool's own failure.
impl From<String> for RunError {
    fn from(message: String) -> RunError {
        RunError::tool(message)
    }
}

impl From<&str> for RunError {
    fn from(message: &str) -> RunError {
        RunError::tool(message)
    }
}

/// A job's stored error: a [`RunError`], or (written before it existed) a message.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Typed(RunError),
    Message(String),
}

/// Reads a job's stored error, a message of the release before as the kind its words
/// named: the restart sentinel, and the proxy's upstream errors ("… answered with
/// JSON-RPC error CODE: MESSAGE"); any other message is the tool's own failure.
pub(crate) fn stored<'de, D: Deserializer<'de>>(deserializer: D) -> Result<RunError, D::Error> {
    let message = match Stored::deserialize(deserializer)? {
        Stored::Typed(error) => return Ok(error),
        Stored::Message(message) => message,
    };
    if message == "interrupted by restart" {
        return Ok(RunError::Interrupted);
    }
    let rpc = message
        .strip_prefix("the upstream server answered with JSON-RPC error ")
        .and_then(|rest| rest.split_once(": "))
        .and_then(|(code, text)| Some((code.parse().ok()?, text)));
    Ok(match rpc {
        Some((code, text)) => RunError::Rpc {
            code,
            message: text.to_owned(),
            data: None,
        },
        None => RunError::tool(message),
    })
}

/// The message a panic carried, if it was a string.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "no message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_reads_back_as_it_was_written() {
        let kinds = [
            RunError::tool("no such file"),
            RunError::Tool {
                message: "bad".to_owned(),
                result: Some(json!({ "content": [], "isError": true })),
            },
            RunError::Rpc {
                code: -32021,
                message: "needs sampling".to_owned(),
                data: Some(json!({ "requiredCapabilities": { "sampling": {} } })),
            },
            RunError::Cancelled,
            RunError::Interrupted,
            RunError::Panicked {
                message: "boom".to_owned(),
            },
            RunError::TimedOut { after_s: 2.5 },
        ];
        for kind in kinds {
            let json = serde_json::to_value(&kind).unwrap();
            assert_eq!(
                serde_json::from_value::<RunError>(json.clone()).unwrap(),
                kind
            );
            let text = json.to_string();
            let mut stored = serde_json::Deserializer::from_str(&text);
            assert_eq!(super::stored(&mut stored).unwrap(), kind);
        }
    }

    /// A database of the release before kept a job's error as its message.
    #[test]
    fn a_stored_message_reads_as_the_kind_it_named() {
        #[derive(Deserialize)]
        struct Failed {
            #[serde(deserialize_with = "stored")]
            error: RunError,
        }
        let read = |message: &str| {
            serde_json::from_value::<Failed>(json!({ "error": message }))
                .unwrap()
                .error
        };
        assert_eq!(read("interrupted by restart"), RunError::Interrupted);
        assert_eq!(
            read("the upstream server answered with JSON-RPC error -32602: bad args"),
            RunError::Rpc {
                code: -32602,
                message: "bad args".to_owned(),
                data: None
            }
        );
        assert_eq!(read("exit status 2"), RunError::tool("exit status 2"));
    }

    #[test]
    fn the_message_says_what_happened() {
        assert_eq!(
            RunError::Rpc {
                code: -32603,
                message: "oops".to_owned(),
                data: None
            }
            .to_string(),
            "the tool's server answered with JSON-RPC error -32603: oops"
        );
        assert_eq!(RunError::tool("exit 1").to_string(), "exit 1");
    }
}
