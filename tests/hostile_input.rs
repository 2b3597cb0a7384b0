//! Hostile input (issue 14, break 8 and beyond): over stdio and over HTTP, a real
//! server is sent malformed JSON, envelopes that are not JSON-RPC 2.0, ids rmcp cannot
//! hold, params of the wrong shape, oversized messages, paths and ids that are not
//! its own, and noise without ids. Every request that has an id must be answered,
//! with that id where it can be read (`null` where it cannot), and the server must
//! still answer a ping at the end. On a86c8a7, 25 of these got no answer over stdio.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{free_local_addr, Setup, BIN};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One hostile message: the bytes, and the id its answer must carry (`None`: no answer
/// is owed, a notification or a response).
struct Hostile {
    what: &'static str,
    bytes: Vec<u8>,
    answered_with: Option<Value>,
}

fn case(what: &'static str, bytes: impl Into<Vec<u8>>, id: Option<Value>) -> Hostile {
    Hostile {
        what,
        bytes: bytes.into(),
        answered_with: id,
    }
}

fn request(id: i64, method: &str, params: Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        .to_string()
        .into_bytes()
}

/// A random id nobody has.
fn stranger() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn hostile(root: &str) -> Vec<Hostile> {
    let mut deep_unclosed = br#"{"jsonrpc":"2.0","id":105,"method":"ping","params":{"x":"#.to_vec();
    deep_unclosed.extend(std::iter::repeat_n(b'[', 100_000));
    let mut invalid_utf8 = br#"{"jsonrpc":"2.0","id":125,"method":"tools/call","params":{"name":"search_text","arguments":{"pattern":""#.to_vec();
    invalid_utf8.extend([0xff, 0xfe]);
    invalid_utf8.extend(br#""}}}"#);
    let mut oversized = br#"{"jsonrpc":"2.0","id":"oversized","method":"tools/call","params":{"name":"search_text","arguments":{"pattern":""#.to_vec();
    oversized.extend(std::iter::repeat_n(b'a', 17 * 1024 * 1024));
    oversized.extend(br#""}}}"#);
    let long_name = "x".repeat(100_000);
    vec![
        case("NaN", br#"{"jsonrpc":"2.0","id":101,"method":"tools/call","params":{"name":"sleep","arguments":{"seconds":NaN}}}"#, Some(json!(101))),
        case("Infinity", br#"{"jsonrpc":"2.0","id":102,"method":"ping","params":{"n":Infinity}}"#, Some(json!(102))),
        case("-Infinity", br#"{"jsonrpc":"2.0","id":103,"method":"ping","params":{"n":-Infinity}}"#, Some(json!(103))),
        case("1e999", br#"{"jsonrpc":"2.0","id":104,"method":"ping","params":{"n":1e999}}"#, Some(json!(104))),
        case("100,000 unclosed arrays", deep_unclosed, Some(json!(105))),
        case(
            "arrays nested 200 deep",
            format!(r#"{{"jsonrpc":"2.0","id":106,"method":"ping","params":{{"x":{}{}}}}}"#, "[".repeat(200), "]".repeat(200)),
            Some(json!(106)),
        ),
        case("a fractional id", br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#, Some(json!(1.5))),
        case("an id past 64 bits", br#"{"jsonrpc":"2.0","id":18446744073709551617,"method":"ping"}"#, Some(json!(18446744073709551617.0))),
        case("jsonrpc 1.0", br#"{"jsonrpc":"1.0","id":107,"method":"ping"}"#, Some(json!(107))),
        case("no jsonrpc", br#"{"id":108,"method":"ping"}"#, Some(json!(108))),
        case("trailing garbage", br#"{"jsonrpc":"2.0","id":109,"method":"ping"} {"more":1}"#, Some(json!(109))),
        case("params an array", request(110, "tools/call", json!(["sleep", {}])), Some(json!(110))),
        case("params a string", request(111, "tools/list", json!("all")), Some(json!(111))),
        case("tools/call without a name", request(112, "tools/call", json!({"arguments": {}})), Some(json!(112))),
        case("a tool name that is a number", request(113, "tools/call", json!({"name": 7})), Some(json!(113))),
        case("a tool name that is a path", request(114, "tools/call", json!({"name": "../../etc/passwd"})), Some(json!(114))),
        case("a 100 KB tool name", request(115, "tools/call", json!({"name": long_name})), Some(json!(115))),
        case("a path argument of the wrong type", request(116, "tools/call", json!({"name": "hash_files", "arguments": {"path": 5}})), Some(json!(116))),
        case("a 1 MB string for a number", request(133, "tools/call", json!({"name": "search_text", "arguments": {"path": ".", "pattern": "a", "max_matches": "9".repeat(1 << 20)}})), Some(json!(133))),
        case("a path outside the roots", request(117, "tools/call", json!({"name": "hash_files", "arguments": {"path": "/etc"}})), Some(json!(117))),
        case("a path climbing out of the root", request(118, "tools/call", json!({"name": "search_text", "arguments": {"path": format!("{root}/../../../etc"), "pattern": "root"}})), Some(json!(118))),
        case("async_mode as a string", request(119, "tools/call", json!({"name": "hash_files", "arguments": {"path": ".", "async_mode": "yes"}})), Some(json!(119))),
        case("job_status of someone else's id", request(120, "tools/call", json!({"name": "job_status", "arguments": {"job_id": stranger()}})), Some(json!(120))),
        case("job_status of a non-id", request(121, "tools/call", json!({"name": "job_status", "arguments": {"job_id": "'; DROP TABLE jobs; --"}})), Some(json!(121))),
        case("cancel_job of someone else's id", request(122, "tools/call", json!({"name": "cancel_job", "arguments": {"job_id": stranger()}})), Some(json!(122))),
        case("tasks/get of an unknown task", request(123, "tasks/get", json!({"taskId": stranger()})), Some(json!(123))),
        case("tasks/cancel of a non-id", request(124, "tasks/cancel", json!({"taskId": "../x"})), Some(json!(124))),
        case("invalid UTF-8", invalid_utf8, Some(json!(125))),
        case("a raw control character", b"{\"jsonrpc\":\"2.0\",\"id\":126,\"method\":\"ping\",\"params\":{\"s\":\"a\x01b\"}}".to_vec(), Some(json!(126))),
        case("an unknown method", request(127, "evil/exec", json!({"cmd": "rm -rf /"})), Some(json!(127))),
        case("an empty method", request(128, "", json!({})), Some(json!(128))),
        case("a method that is a number", br#"{"jsonrpc":"2.0","id":129,"method":42}"#, Some(json!(129))),
        case("resources/read outside the roots", request(130, "resources/read", json!({"uri": "file:///etc/passwd"})), Some(json!(130))),
        case("prompts/get of nothing", request(131, "prompts/get", json!({"name": "nothing"})), Some(json!(131))),
        case("a long string id", format!(r#"{{"jsonrpc":"2.0","id":"{}","method":"ping"}}"#, "i".repeat(5_000)), Some(json!("i".repeat(5_000)))),
        case("the smallest id", br#"{"jsonrpc":"2.0","id":-9223372036854775808,"method":"ping"}"#, Some(json!(i64::MIN))),
        case("a 17 MiB message", oversized, Some(json!("oversized"))),
        case("not JSON at all", "rm -rf / ; echo pwned", Some(Value::Null)),
        case("a batch", br#"[{"jsonrpc":"2.0","id":132,"method":"ping"}]"#, Some(Value::Null)),
        case("an empty object", "{}", Some(Value::Null)),
        case("a bare number", "42", Some(Value::Null)),
        case("null", "null", Some(Value::Null)),
        case("a notification with bad params", br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":"all"}"#, None),
        case("a cancel of a request never made", br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":999999}}"#, None),
        case("a response to no request", br#"{"jsonrpc":"2.0","id":424242,"result":{}}"#, None),
        case("an error response to no request", br#"{"jsonrpc":"2.0","id":"x","error":{"code":1,"message":"m"}}"#, None),
        case("a notification with jsonrpc 3.0", br#"{"jsonrpc":"3.0","method":"notifications/initialized"}"#, None),
    ]
}

/// Ids compared as JSON numbers or strings (an id past 64 bits comes back as a float).
fn same_id(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"hostile","version":"1"}}}"#;

#[tokio::test]
async fn break_8_over_stdio_every_hostile_request_with_an_id_is_answered_and_the_server_lives() {
    let setup = Setup::new();
    let root = setup.root.path().display().to_string();
    let mut server = tokio::process::Command::new(BIN)
        .arg("serve")
        .args(setup.args(&[]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = server.stdin.take().unwrap();
    let mut stdout = BufReader::new(server.stdout.take().unwrap()).lines();

    // Before initialize: a request is told to initialize, and nothing closes.
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
        .await
        .unwrap();
    stdin
        .write_all(&request(1, "tools/call", json!({"name": "hash_files"})))
        .await
        .unwrap();
    stdin.write_all(b"\n").await.unwrap();
    let early: Value = serde_json::from_str(&stdout.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(early["id"], 1);
    assert!(
        early["error"]["message"]
            .as_str()
            .unwrap()
            .contains("send initialize first"),
        "{early}"
    );

    stdin
        .write_all(format!("{INITIALIZE}\n").as_bytes())
        .await
        .unwrap();
    let initialized: Value =
        serde_json::from_str(&stdout.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(initialized["id"], 0, "{initialized}");
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\r\n\n  \n")
        .await
        .unwrap();

    let cases = hostile(&root);
    let writer = tokio::spawn({
        let lines: Vec<Vec<u8>> = cases.iter().map(|c| c.bytes.clone()).collect();
        async move {
            for line in lines {
                stdin.write_all(&line).await.unwrap();
                stdin.write_all(b"\n").await.unwrap();
            }
            stdin
                .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":\"last\",\"method\":\"ping\"}\n")
                .await
                .unwrap();
            stdin
        }
    });
    // Owed: one answer per case with an id, and the closing ping's. rmcp answers
    // concurrently, so the ping's may come before a slow one's.
    let owed = cases.iter().filter(|c| c.answered_with.is_some()).count() + 1;
    let mut answers = Vec::new();
    let read_all = async {
        while answers.len() < owed {
            let Some(line) = stdout.next_line().await.unwrap() else {
                break;
            };
            let answer: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:.200}"));
            if answer.get("method").is_none() {
                answers.push(answer);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(120), read_all).await;
    let _stdin = writer.await.unwrap();
    let unknown = answers
        .iter()
        .find(|a| a["id"] == 127)
        .expect("the unknown method's answer");
    assert_eq!(
        (
            unknown["error"]["code"].as_i64(),
            unknown["error"]["message"].as_str()
        ),
        (Some(-32601), Some("method not found: evil/exec")),
        "the -32601 says what it is"
    );
    let last = answers
        .iter()
        .position(|a| a["id"] == "last")
        .expect("the closing ping is answered");
    answers.remove(last);
    assert_answered(&cases, &answers);
    assert!(server.try_wait().unwrap().is_none(), "the server is alive");
}

/// Every owed answer arrived exactly once (rmcp answers concurrently, so in any order),
/// and nothing else.
fn assert_answered(cases: &[Hostile], answers: &[Value]) {
    let mut unclaimed: Vec<&Value> = answers.iter().collect();
    let mut missing = Vec::new();
    for case in cases {
        let Some(id) = &case.answered_with else {
            continue;
        };
        match unclaimed
            .iter()
            .position(|answer| same_id(&answer["id"], id))
        {
            Some(at) => {
                let answer = unclaimed.remove(at);
                let size = answer.to_string().len();
                assert!(
                    size < 8192,
                    "{}: a {size}-byte answer quotes too much: {answer:.300}",
                    case.what
                );
                assert!(
                    answer.get("result").is_some()
                        || answer["error"]["message"]
                            .as_str()
                            .is_some_and(|m| m.len() < 1000),
                    "{}: {answer:.300}",
                    case.what
                );
            }
            None => missing.push(case.what),
        }
    }
    let ids: Vec<String> = answers
        .iter()
        .map(|a| format!("{:.40}", a["id"].to_string()))
        .collect();
    assert!(
        missing.is_empty(),
        "no answer to: {missing:?}; answered: {ids:?}"
    );
    let extra: Vec<String> = unclaimed.iter().map(|a| format!("{a:.200}")).collect();
    assert!(extra.is_empty(), "answers to nothing owed: {extra:?}");
}

/// One POST of `body` to `/mcp`; the status and the JSON-RPC messages of the answer
/// (a JSON body, or the `data:` lines of an event stream).
async fn post(
    http: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    body: Vec<u8>,
) -> (u16, Option<String>, Vec<Value>) {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.unwrap();
    let messages = match serde_json::from_str::<Value>(&text) {
        Ok(value) => vec![value],
        Err(_) => text
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
            .filter(|message| message.get("method").is_none())
            .collect(),
    };
    (status, session, messages)
}

#[tokio::test]
async fn break_8_over_http_every_hostile_request_gets_an_answer_and_the_server_lives() {
    let setup = Setup::new();
    let root = setup.root.path().display().to_string();
    let addr = free_local_addr();
    let mut server = tokio::process::Command::new(BIN)
        .arg("serve")
        .args(setup.args(&["--http", &addr]))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{addr}/mcp");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, session, answer) = post(&http, &url, None, INITIALIZE.into()).await;
    assert_eq!(status, 200, "{answer:?}");
    let session = session.expect("a session id");
    let (status, _, _) = post(
        &http,
        &url,
        Some(&session),
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 202);

    let mut failures = Vec::new();
    for case in hostile(&root) {
        let (status, _, messages) = post(&http, &url, Some(&session), case.bytes.clone()).await;
        let Some(id) = &case.answered_with else {
            if !(status == 202 || status == 400) {
                failures.push(format!("{}: {status} {messages:?}", case.what));
            }
            continue;
        };
        let answered = messages.iter().any(|m| same_id(&m["id"], id));
        let fitting = if id.is_null() {
            status >= 400
        } else {
            status == 200 || (400..500).contains(&status)
        };
        if !answered || !fitting {
            failures.push(format!(
                "{}: {status} {:.300}",
                case.what,
                format!("{messages:?}")
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    let (status, _, answer) = post(
        &http,
        &url,
        Some(&session),
        br#"{"jsonrpc":"2.0","id":"last","method":"ping"}"#.to_vec(),
    )
    .await;
    assert_eq!((status, &answer[0]["id"]), (200, &json!("last")));
    assert!(server.try_wait().unwrap().is_none(), "the server is alive");
}
