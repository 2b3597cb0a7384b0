//! What a client's message must be before rmcp sees it, and the answer when it is not.
//!
//! rmcp drops a line it cannot decode without a word (bare `NaN`, trailing garbage,
//! `"jsonrpc": "1.0"`, an id of `1.5`, arrays nested past serde's limit), so a client
//! that sent a request waits for an answer forever; and it reads a request for a
//! method it knows whose params do not fit (a `tools/call` without a `name`) as an
//! unknown method, answering "method not found" for one that exists. [`sift`] decides,
//! from the bytes alone, whether a message goes on to rmcp or gets a JSON-RPC error
//! here: -32700 for what is not JSON, -32600 for what is not a request MCP accepts,
//! -32602 for params that do not fit the method. A refusal carries the message's id
//! whenever one can be read, even from bytes that do not parse, and quotes at most a
//! short prefix of what was received. Both faces use it: stdio per line, HTTP per body.

use std::fmt::Write as _;

use rmcp::model::{
    self, ClientJsonRpcMessage, ClientRequest, ConstString, JsonRpcMessage, Request,
    RequestNoParam, RequestOptionalParam,
};
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// The largest message read (a line on stdio, a body over HTTP); a longer one is
/// refused, with its id if it comes early.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Invalid JSON.
pub const PARSE_ERROR: i32 = -32700;
/// JSON, but not a request MCP accepts.
pub const INVALID_REQUEST: i32 = -32600;
/// A known method whose params do not fit it.
pub const INVALID_PARAMS: i32 = -32602;
/// How much of a bad message a refusal quotes.
const QUOTED_CHARS: usize = 60;

/// What to do with one message.
#[derive(Debug)]
pub enum Sifted {
    /// Well formed: hand it to rmcp.
    Message(Box<ClientJsonRpcMessage>),
    /// Answer this error and drop the message.
    Refused(Refusal),
    /// A notification, response or blank line that cannot be used and has no id to
    /// answer: drop it, with the reason for the log.
    Ignored(String),
}

/// A JSON-RPC error answer to a message that never reaches rmcp.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The message's id as it was sent (a string or a number), or `null` when none
    /// could be read.
    pub id: Value,
    /// The JSON-RPC error code.
    pub code: i32,
    /// What was wrong and what to send instead.
    pub message: String,
}

impl Refusal {
    fn new(id: Value, code: i32, message: impl Into<String>) -> Refusal {
        Refusal {
            id,
            code,
            message: message.into(),
        }
    }

    /// The JSON-RPC error response.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": self.id,
            "error": { "code": self.code, "message": self.message },
        })
    }

    /// The response as one line, newline included (what stdio writes).
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = self.to_json().to_string().into_bytes();
        line.push(b'\n');
        line
    }
}

/// Decides what to do with one message (a line without its newline, or a body).
pub fn sift(bytes: &[u8]) -> Sifted {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Sifted::Ignored("a blank line".to_owned());
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => {
            return Sifted::Refused(Refusal::new(
                early_id(bytes),
                PARSE_ERROR,
                format!(
                    "parse error: {e}, in a message that began {}; send one JSON-RPC object per message (no NaN or Infinity, nothing after it)",
                    quoted(bytes)
                ),
            ))
        }
    };
    let object = match &value {
        Value::Object(object) => object,
        Value::Array(_) => {
            return Sifted::Refused(Refusal::new(
                Value::Null,
                INVALID_REQUEST,
                "invalid request: a batch (a JSON array) is not part of MCP; send each message on its own",
            ))
        }
        other => {
            return Sifted::Refused(Refusal::new(
                Value::Null,
                INVALID_REQUEST,
                format!(
                    "invalid request: a message must be a JSON-RPC object, not {}",
                    kind(other)
                ),
            ))
        }
    };
    let id = object.get("id");
    let answer_id = id.map(echoed).unwrap_or(Value::Null);
    let method = object.get("method");
    // What is neither a request nor has an id is a notification or nothing: there is
    // no one to answer.
    let expects_answer = id.is_some() && method.is_some();
    let refuse = |code, message: String| {
        if expects_answer || method.is_none() && id.is_none() {
            Sifted::Refused(Refusal::new(answer_id.clone(), code, message))
        } else {
            Sifted::Ignored(message)
        }
    };
    match object.get("jsonrpc") {
        Some(Value::String(version)) if version == "2.0" => {}
        Some(other) => {
            return refuse(
                INVALID_REQUEST,
                format!(
                    "invalid request: \"jsonrpc\" must be \"2.0\", not {}",
                    quoted(other.to_string().as_bytes())
                ),
            )
        }
        None => {
            return refuse(
                INVALID_REQUEST,
                "invalid request: \"jsonrpc\": \"2.0\" is missing".to_owned(),
            )
        }
    }
    if let Some(id) = id {
        if !valid_id(id) {
            let message = format!(
                "invalid request: an id must be a string or an integer of at most 64 bits, not {}",
                quoted(id.to_string().as_bytes())
            );
            // A response with a bad id answers nothing we asked: drop it.
            if method.is_none() {
                return Sifted::Ignored(message);
            }
            return refuse(INVALID_REQUEST, message);
        }
    }
    let method = match method {
        None if id.is_none() => {
            return refuse(
                INVALID_REQUEST,
                "invalid request: a message needs a \"method\" (a request or notification) or an \"id\" with a result or error (a response)".to_owned(),
            )
        }
        None => None,
        Some(Value::String(method)) => Some(method.as_str()),
        Some(other) => {
            return refuse(
                INVALID_REQUEST,
                format!("invalid request: \"method\" must be a string, not {}", kind(other)),
            )
        }
    };
    if let (Some(method), Some(params)) = (method, object.get("params")) {
        if !params.is_object() {
            return refuse(
                INVALID_PARAMS,
                format!(
                    "invalid params for {}: params must be an object, not {}",
                    quoted(method.as_bytes()),
                    kind(params)
                ),
            );
        }
    }
    let message = match ClientJsonRpcMessage::deserialize(&value) {
        Ok(message) => message,
        Err(e) => {
            return refuse(
                INVALID_REQUEST,
                format!("invalid request: {}", cut(&e.to_string(), ERROR_CHARS)),
            )
        }
    };
    if let JsonRpcMessage::Request(request) = &message {
        if let ClientRequest::CustomRequest(custom) = &request.request {
            // A 2026-07-28 request for a method that revision removed is rmcp's to
            // answer (404 and -32601 over HTTP), whatever its params.
            let removed =
                stateless(object) && REMOVED_IN_2026_07_28.contains(&custom.method.as_str());
            if let Some(error) = params_error(custom.method.as_str(), object).filter(|_| !removed) {
                return refuse(
                    INVALID_PARAMS,
                    format!(
                        "invalid params for {}: {}",
                        quoted(custom.method.as_bytes()),
                        cut(&error.to_string(), ERROR_CHARS)
                    ),
                );
            }
        }
    }
    Sifted::Message(Box::new(message))
}

/// Methods the 2026-07-28 revision removed (its requests carry their own metadata).
const REMOVED_IN_2026_07_28: [&str; 4] = [
    "initialize",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// Whether a request carries 2026-07-28 per-request metadata (its protocol version in
/// `_meta`), so it is served without a session.
fn stateless(object: &serde_json::Map<String, Value>) -> bool {
    object
        .get("params")
        .and_then(|params| params.get("_meta"))
        .and_then(|meta| meta.get("io.modelcontextprotocol/protocolVersion"))
        .and_then(Value::as_str)
        .is_some_and(|version| version >= model::ProtocolVersion::V_2026_07_28.as_str())
}

/// The refusal of a message longer than `limit_bytes` (stdio's is
/// [`MAX_MESSAGE_BYTES`]), of which `prefix` is the start: its id is read from there
/// when it comes early.
pub fn oversized(prefix: &[u8], limit_bytes: usize) -> Refusal {
    Refusal::new(
        early_id(prefix),
        INVALID_REQUEST,
        format!(
            "invalid request: the message is longer than {}; send large inputs as files inside the roots and pass their paths",
            byte_size(limit_bytes)
        ),
    )
}

/// A size in bytes as people read it: `16 MiB`, `64 KiB`, `1000 bytes`.
fn byte_size(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

/// Whether rmcp can hold this id: a string, or an integer that fits an `i64`.
fn valid_id(id: &Value) -> bool {
    match id {
        Value::String(_) => true,
        Value::Number(number) => number.is_i64(),
        _ => false,
    }
}

/// The id to answer with: as sent when it is a string or a number (so the client can
/// match it even when it is one we refuse), `null` otherwise.
fn echoed(id: &Value) -> Value {
    match id {
        Value::String(_) | Value::Number(_) => id.clone(),
        _ => Value::Null,
    }
}

/// The id of a message that may not parse: read up to where it stops parsing, so an
/// id that comes before a bad token (or before the cut of an oversized message) is
/// found.
fn early_id(bytes: &[u8]) -> Value {
    let mut found = None;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let _ = IdSeeker(&mut found).deserialize(&mut deserializer);
    found.as_ref().map(echoed).unwrap_or(Value::Null)
}

/// Walks the top-level object's keys and keeps the value of `id`, skipping the rest
/// without building them.
struct IdSeeker<'a>(&'a mut Option<Value>);

impl<'de> DeserializeSeed<'de> for IdSeeker<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for IdSeeker<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON-RPC object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // An id is kept only once what follows it has been read: a number cut by the
        // end of the bytes (`"id":12` of `"id":123,`) parses, but is not the id.
        let mut unconfirmed = None;
        loop {
            let key = map.next_key::<String>()?;
            if let Some(id) = unconfirmed.take() {
                *self.0 = Some(id);
            }
            match key {
                None => return Ok(()),
                Some(key) if key == "id" && self.0.is_none() => {
                    unconfirmed = Some(map.next_value()?);
                }
                Some(_) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
    }
}

/// Why a request for a method MCP defines does not fit it, if it names one: rmcp
/// reads such a request as a custom (unknown) method.
#[allow(deprecated)]
fn params_error(
    method: &str,
    object: &serde_json::Map<String, Value>,
) -> Option<serde_json::Error> {
    let request = serde_json::json!({
        "method": method,
        "params": object.get("params").cloned().unwrap_or(Value::Null),
    });
    macro_rules! check {
        ($($request:ty),* $(,)?) => {
            $(
                if method == <$request as Known>::METHOD {
                    return <$request>::deserialize(&request).err();
                }
            )*
        };
    }
    check!(
        model::PingRequest,
        model::InitializeRequest,
        model::DiscoverRequest,
        model::CompleteRequest,
        // Deprecated in MCP, still served to the clients that send them.
        model::SetLevelRequest,
        model::GetPromptRequest,
        model::ListPromptsRequest,
        model::ListResourcesRequest,
        model::ListResourceTemplatesRequest,
        model::ReadResourceRequest,
        model::SubscriptionsListenRequest,
        model::SubscribeRequest,
        model::UnsubscribeRequest,
        model::CallToolRequest,
        model::ListToolsRequest,
        model::GetTaskRequest,
        model::UpdateTaskRequest,
        model::CancelTaskRequest,
        model::ListSkillsRequest,
        model::GetSkillRequest,
        model::ReadResourceDirectoryRequest,
    );
    None
}

/// The method name of one of rmcp's typed requests.
trait Known: DeserializeOwned {
    const METHOD: &'static str;
}

impl<M: ConstString + DeserializeOwned, P: DeserializeOwned> Known for Request<M, P> {
    const METHOD: &'static str = M::VALUE;
}

impl<M: ConstString + DeserializeOwned, P: DeserializeOwned> Known for RequestOptionalParam<M, P> {
    const METHOD: &'static str = M::VALUE;
}

impl<M: ConstString + DeserializeOwned> Known for RequestNoParam<M> {
    const METHOD: &'static str = M::VALUE;
}

/// What kind of JSON value this is, for a message.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The start of what was received, escaped and cut to [`QUOTED_CHARS`].
fn quoted(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(QUOTED_CHARS * 4)]);
    let mut shown: String = text.chars().take(QUOTED_CHARS).collect();
    let cut_short = shown.len() < text.len() || bytes.len() > QUOTED_CHARS * 4;
    shown = format!("{shown:?}");
    if cut_short {
        let _ = write!(shown, " (cut at {QUOTED_CHARS} characters)");
    }
    shown
}

/// What an error message quotes of a string a client sent (a tool name, an id): its
/// first [`QUOTED_CHARS`] characters, so a 100 KB name is not sent back whole.
pub(crate) fn excerpt(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()).into(),
        None => text.into(),
    }
}

/// How much of a serde error a message keeps (it can quote an input).
pub(crate) const ERROR_CHARS: usize = 300;

/// `text` cut to its first `max_chars` characters, with `…` where it was cut.
pub(crate) fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn refused(bytes: &[u8]) -> Refusal {
        match sift(bytes) {
            Sifted::Refused(refusal) => refusal,
            other => panic!(
                "{} was not refused: {other:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    #[test]
    fn a_well_formed_request_goes_to_rmcp() {
        let line = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"sleep","arguments":{}}}"#;
        assert!(matches!(sift(line), Sifted::Message(_)));
        let custom = br#"{"jsonrpc":"2.0","id":"a","method":"vendor/thing","params":{"x":1}}"#;
        assert!(
            matches!(sift(custom), Sifted::Message(_)),
            "unknown methods are rmcp's to answer"
        );
        let notification = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert!(matches!(sift(notification), Sifted::Message(_)));
        let with_bom = b"\xEF\xBB\xBF{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\r";
        assert!(matches!(sift(with_bom), Sifted::Message(_)));
    }

    /// Regression (issue 14, break 8): each of these got no answer at all over stdio.
    #[test]
    fn break_8_every_malformed_request_with_an_id_is_answered_with_it() {
        let cases: &[(&[u8], Value, i32)] = &[
            (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"n":NaN}}}"#, 1.into(), PARSE_ERROR),
            (br#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"n":Infinity}}"#, 2.into(), PARSE_ERROR),
            (br#"{"jsonrpc":"2.0","id":3,"method":"ping","params":{"n":1e999}}"#, 3.into(), PARSE_ERROR),
            (br#"{"jsonrpc":"2.0","id":4,"method":"ping"} trailing"#, 4.into(), PARSE_ERROR),
            (br#"{"jsonrpc":"1.0","id":5,"method":"ping"}"#, 5.into(), INVALID_REQUEST),
            (br#"{"id":6,"method":"ping"}"#, 6.into(), INVALID_REQUEST),
            (br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#, serde_json::json!(1.5), INVALID_REQUEST),
            (br#"{"jsonrpc":"2.0","id":18446744073709551617,"method":"ping"}"#, serde_json::json!(18446744073709551617.0), INVALID_REQUEST),
            (br#"{"jsonrpc":"2.0","id":"s","method":"tools/call","params":[1,2]}"#, "s".into(), INVALID_PARAMS),
            (br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"arguments":{}}}"#, 7.into(), INVALID_PARAMS),
            (br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":5}}"#, 8.into(), INVALID_PARAMS),
            (br#"{"jsonrpc":"2.0","id":9,"method":"resources/read","params":{"uri":[]}}"#, 9.into(), INVALID_PARAMS),
            (br#"{"jsonrpc":"2.0","id":10,"method":17}"#, 10.into(), INVALID_REQUEST),
        ];
        for (line, id, code) in cases {
            let refusal = refused(line);
            assert_eq!(
                (&refusal.id, refusal.code),
                (id, *code),
                "{}: {}",
                String::from_utf8_lossy(line),
                refusal.message
            );
        }
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":11,"method":"ping","params":{{"x":{}{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(refused(deep.as_bytes()).id, 11);
    }

    #[test]
    fn a_method_removed_in_2026_07_28_is_left_to_rmcp_on_that_revision() {
        let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
        let stateless =
            json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"_meta": meta}});
        assert!(matches!(
            sift(stateless.to_string().as_bytes()),
            Sifted::Message(_)
        ));
        let legacy = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}});
        assert_eq!(refused(legacy.to_string().as_bytes()).code, INVALID_PARAMS);
    }

    #[test]
    fn a_tools_call_without_a_name_says_so_rather_than_method_not_found() {
        let refusal = refused(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#);
        assert_eq!(refusal.code, INVALID_PARAMS);
        assert!(
            refusal.message.contains("\"tools/call\"") && refusal.message.contains("name"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn what_cannot_be_read_is_answered_with_a_null_id() {
        for line in [
            &b"not json"[..],
            b"[]",
            b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]",
            b"42",
            b"{}",
            b"{\"jsonrpc\":\"2.0\"}",
        ] {
            assert_eq!(
                refused(line).id,
                Value::Null,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        // An object or boolean id cannot be matched by anyone: answered with null.
        assert_eq!(
            refused(br#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#).id,
            Value::Null
        );
    }

    #[test]
    fn bad_notifications_and_responses_are_dropped_without_an_answer() {
        for line in [
            &br#"{"jsonrpc":"1.0","method":"notifications/initialized"}"#[..],
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":7}"#,
            br#"{"jsonrpc":"2.0","id":1.5,"result":{}}"#,
            b"   ",
        ] {
            assert!(
                matches!(sift(line), Sifted::Ignored(_)),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn a_refusal_quotes_only_a_short_prefix() {
        let mut line =
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"x\":\"".to_vec();
        line.extend(std::iter::repeat_n(b'a', 1 << 20));
        line.extend(b"\"}} garbage");
        let refusal = refused(&line);
        assert_eq!(refusal.id, 1);
        assert!(
            refusal.message.len() < 600,
            "{} bytes",
            refusal.message.len()
        );
    }

    #[test]
    fn an_excerpt_cuts_long_text_on_a_character_boundary() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(100);
        let shown = excerpt(&long);
        assert!(
            shown.starts_with(&"é".repeat(QUOTED_CHARS)) && shown.ends_with("… (200 bytes)"),
            "{shown}"
        );
    }

    #[test]
    fn an_oversized_message_is_answered_with_its_early_id() {
        let prefix = br#"{"jsonrpc":"2.0","id":"big","method":"tools/call","params":{"name":"x","arguments":{"blob":"aaaa"#;
        let refusal = oversized(prefix, MAX_MESSAGE_BYTES);
        assert_eq!(
            (refusal.id, refusal.code),
            (Value::from("big"), INVALID_REQUEST)
        );
        assert!(refusal.message.contains("16 MiB"));
    }

    #[test]
    fn the_answer_is_a_jsonrpc_error_line() {
        let line = refused(br#"{"jsonrpc":"2.0","id":3,"method":"ping"} x"#).to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        let answer: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(answer["jsonrpc"], "2.0");
        assert_eq!(answer["id"], 3);
        assert_eq!(answer["error"]["code"], PARSE_ERROR);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z]{0,6}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any bytes at all: never a panic, and a refusal always quotes little.
        #[test]
        fn any_bytes_are_sifted_without_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Sifted::Refused(refusal) = sift(&bytes) {
                prop_assert!(refusal.message.len() < 800);
            }
        }

        /// A request with a valid id is always either passed on or answered with that
        /// id, whatever its method and params; cut anywhere, it is answered with the
        /// id or with null, never dropped.
        #[test]
        fn a_request_with_an_id_is_never_dropped(
            id in prop_oneof![any::<i64>().prop_map(Value::from), "[a-z0-9]{1,8}".prop_map(Value::from)],
            method in prop_oneof![Just("tools/call".to_owned()), Just("ping".to_owned()), Just("tasks/get".to_owned()), "[a-z/]{1,12}"],
            params in json_value(),
            cut_at in any::<prop::sample::Index>(),
        ) {
            let line = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
            match sift(line.as_bytes()) {
                Sifted::Message(_) => {}
                Sifted::Refused(refusal) => prop_assert_eq!(&refusal.id, &id),
                Sifted::Ignored(why) => prop_assert!(false, "dropped: {}", why),
            }
            let cut = &line.as_bytes()[..cut_at.index(line.len())];
            if let Sifted::Refused(refusal) = sift(cut) {
                prop_assert!(refusal.id == id || refusal.id.is_null());
            } else {
                prop_assert!(cut.iter().all(u8::is_ascii_whitespace));
            }
        }
    }
}
