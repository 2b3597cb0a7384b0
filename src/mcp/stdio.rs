//! The stdio transport: newline-delimited JSON-RPC, each line sifted before rmcp sees
//! it, so every request with an id gets an answer.
//!
//! rmcp's own stdio transport drops a line it cannot decode, silently, and ends the
//! connection when the first message is not a request; this one answers what
//! [`crate::jsonrpc::sift`] refuses, refuses a line over
//! [`MAX_MESSAGE_BYTES`] with the id it starts with (reading on to the next newline
//! without keeping it), and until the client has initialized answers any other request
//! with "send initialize first" and drops notifications, rather than closing.

use std::future::Future;
use std::sync::Arc;

use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetMeta, JsonRpcMessage, ProtocolVersion};
use rmcp::service::{RoleServer, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::ServiceExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

use super::SmartServer;
use crate::jsonrpc::{self, Refusal, Sifted, INVALID_PARAMS, MAX_MESSAGE_BYTES};

/// JSON-RPC over a reader and a writer (stdin and stdout for `serve`).
pub(crate) struct SiftedLines<R, W> {
    reader: BufReader<R>,
    /// What has been read of the current line.
    line: Vec<u8>,
    /// Whether the current line has passed [`MAX_MESSAGE_BYTES`].
    oversized: bool,
    writer: Arc<Mutex<W>>,
    /// Whether a request that starts rmcp's lifecycle (an `initialize`, or one carrying
    /// 2026-07-28 metadata) has gone through.
    started: bool,
}

/// Serves on the process's stdin and stdout.
fn stdio() -> SiftedLines<tokio::io::Stdin, tokio::io::Stdout> {
    SiftedLines::new(tokio::io::stdin(), tokio::io::stdout())
}

/// One line as read, without its newline.
enum Line {
    Whole(Vec<u8>),
    /// Longer than [`MAX_MESSAGE_BYTES`]: its start only.
    Oversized(Vec<u8>),
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> SiftedLines<R, W> {
    pub(crate) fn new(reader: R, writer: W) -> Self {
        SiftedLines {
            reader: BufReader::with_capacity(64 * 1024, reader),
            line: Vec::new(),
            oversized: false,
            writer: Arc::new(Mutex::new(writer)),
            started: false,
        }
    }

    /// Reads until a whole line is in, keeping at most [`MAX_MESSAGE_BYTES`] of it;
    /// `None` at the end of input. Cancel-safe, as rmcp needs (it drops a pending
    /// receive whenever it has something to send): what was read of a line stays in
    /// `self.line` for the next call.
    async fn read_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                if self.line.is_empty() && !self.oversized {
                    return Ok(None);
                }
                return Ok(Some(self.take_line()));
            }
            let (taken, ended) = match available.iter().position(|&b| b == b'\n') {
                Some(at) => (at, true),
                None => (available.len(), false),
            };
            let room = MAX_MESSAGE_BYTES - self.line.len();
            self.oversized |= taken > room;
            self.line.extend_from_slice(&available[..taken.min(room)]);
            self.reader.consume(taken + usize::from(ended));
            if ended {
                return Ok(Some(self.take_line()));
            }
        }
    }

    fn take_line(&mut self) -> Line {
        let bytes = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.oversized) {
            Line::Oversized(bytes)
        } else {
            Line::Whole(bytes)
        }
    }

    /// Why a message may not reach rmcp before the lifecycle has started, if it may
    /// not: rmcp ends the connection on anything but a request there.
    fn before_start(&mut self, message: &ClientJsonRpcMessage) -> Option<Result<Refusal, String>> {
        if self.started {
            return None;
        }
        let JsonRpcMessage::Request(request) = message else {
            return Some(Err(
                "a notification or response before initialize".to_owned()
            ));
        };
        match &request.request {
            ClientRequest::PingRequest(_) | ClientRequest::DiscoverRequest(_) => None,
            ClientRequest::InitializeRequest(_) => {
                self.started = true;
                None
            }
            other => {
                let missing = other
                    .get_meta()
                    .missing_required_keys(&ProtocolVersion::V_2026_07_28);
                if missing.is_empty() {
                    self.started = true;
                    return None;
                }
                Some(Ok(Refusal {
                    id: request.id.clone().into_json_value(),
                    code: INVALID_PARAMS,
                    message: format!(
                        "the server is not initialized: send initialize first (or, on protocol 2026-07-28, carry {} in the request's _meta)",
                        missing.join(", ")
                    ),
                }))
            }
        }
    }
}

async fn write_line<W: AsyncWrite + Unpin>(writer: &Mutex<W>, line: &[u8]) -> std::io::Result<()> {
    let mut writer = writer.lock().await;
    writer.write_all(line).await?;
    writer.flush().await
}

impl<R, W> Transport<RoleServer> for SiftedLines<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let writer = self.writer.clone();
        async move {
            let mut line = serde_json::to_vec(&item)?;
            line.push(b'\n');
            write_line(&writer, &line).await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            let sifted = match self.read_line().await {
                Ok(None) => return None,
                Ok(Some(Line::Oversized(start))) => {
                    Sifted::Refused(jsonrpc::oversized(&start, MAX_MESSAGE_BYTES))
                }
                Ok(Some(Line::Whole(line))) => jsonrpc::sift(&line),
                Err(e) => {
                    tracing::error!("reading stdin failed: {e}; closing the connection");
                    return None;
                }
            };
            let refusal = match sifted {
                Sifted::Message(message) => match self.before_start(&message) {
                    None => return Some(*message),
                    Some(Ok(refusal)) => refusal,
                    Some(Err(why)) => {
                        tracing::debug!("dropped {why}");
                        continue;
                    }
                },
                Sifted::Refused(refusal) => refusal,
                Sifted::Ignored(why) => {
                    tracing::debug!("dropped a message: {why}");
                    continue;
                }
            };
            tracing::debug!(code = refusal.code, id = %refusal.id, "refused a message: {}", refusal.message);
            // Written by a task of its own: this receive may be dropped at its next await,
            // and a write cut there would lose the answer or leave half a line.
            let writer = self.writer.clone();
            tokio::spawn(async move {
                if let Err(e) = write_line(&writer, &refusal.to_line()).await {
                    tracing::error!("writing to stdout failed: {e}");
                }
            });
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.writer.lock().await.flush().await
    }
}

impl SmartServer {
    /// Serves one client over stdin/stdout until it disconnects.
    pub async fn serve_stdio(self) -> anyhow::Result<()> {
        let running = match self.serve(stdio()).await {
            Ok(running) => running,
            // Nobody connected: stdin ended before a first request. Not an error.
            Err(rmcp::service::ServerInitializeError::ConnectionClosed(_)) => {
                tracing::info!("stdin closed before a client connected");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        running.waiting().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    /// Feeds `input` through the transport; returns what reached rmcp and what was
    /// written back.
    async fn run(input: Vec<u8>) -> (Vec<Value>, Vec<Value>) {
        let (mut client, server_out) = tokio::io::duplex(1 << 16);
        let mut transport = SiftedLines::new(std::io::Cursor::new(input), server_out);
        let mut passed = Vec::new();
        while let Some(message) = transport.receive().await {
            passed.push(serde_json::to_value(&message).unwrap());
        }
        drop(transport);
        let mut written = String::new();
        client.read_to_string(&mut written).await.unwrap();
        let answers = written
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        (passed, answers)
    }

    fn initialize() -> String {
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})
        .to_string()
    }

    #[tokio::test]
    async fn break_8_bad_lines_are_answered_and_good_ones_pass_in_order() {
        let input = [
            initialize(),
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"} junk".to_owned(),
            String::new(),
            "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}".to_owned(),
        ]
        .join("\n");
        let (passed, answers) = run(input.into_bytes()).await;
        let methods: Vec<&str> = passed
            .iter()
            .map(|m| m["method"].as_str().unwrap())
            .collect();
        assert_eq!(methods, ["initialize", "tools/list"]);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0]["id"], 1);
        assert_eq!(answers[0]["error"]["code"], -32700);
    }

    /// Regression: rmcp drops a pending receive whenever it has something to send; a
    /// line read across such a drop was cut in two (both halves refused as unparseable,
    /// with a null id), and a refusal being written there was lost.
    #[tokio::test]
    async fn a_receive_dropped_midway_loses_nothing() {
        let (mut client_in, server_in) = tokio::io::duplex(1024);
        let (mut client_out, server_out) = tokio::io::duplex(1 << 16);
        let mut transport = SiftedLines::new(server_in, server_out);
        let feeder = tokio::spawn(async move {
            let name = "x".repeat(100_000);
            let lines = [
                initialize(),
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"} junk".to_owned(),
                json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":name}})
                    .to_string(),
            ];
            for line in lines {
                for chunk in format!("{line}\n").as_bytes().chunks(4096) {
                    client_in.write_all(chunk).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut passed = Vec::new();
        while passed.len() < 2 {
            // Dropped after a moment, as rmcp's select does.
            if let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_micros(50), transport.receive()).await
            {
                passed.push(serde_json::to_value(&message).unwrap());
            }
        }
        feeder.await.unwrap();
        assert_eq!(
            passed[1]["params"]["name"].as_str().map(str::len),
            Some(100_000)
        );
        drop(transport);
        let mut written = String::new();
        client_out.read_to_string(&mut written).await.unwrap();
        let answers: Vec<Value> = written
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(answers.len(), 1, "{written}");
        assert_eq!(answers[0]["id"], 1);
    }

    #[tokio::test]
    async fn break_8_a_line_over_the_limit_is_refused_with_its_id_and_the_next_is_read() {
        let mut input = br#"{"jsonrpc":"2.0","id":"huge","method":"tools/call","params":{"name":"x","arguments":{"blob":""#.to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_MESSAGE_BYTES + 10));
        input.extend(b"\"}}}\n");
        input.extend(initialize().as_bytes());
        let (passed, answers) = run(input).await;
        assert_eq!(
            passed.len(),
            1,
            "the line after the oversized one is read whole"
        );
        assert_eq!(passed[0]["method"], "initialize");
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0]["id"], "huge");
        assert!(answers[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("16 MiB"));
    }

    /// Regression (issue 14, break 11): a `tools/call` before `initialize` was answered
    /// with a message about request metadata, and a notification sent first closed the
    /// connection.
    #[tokio::test]
    async fn break_11_before_initialize_a_request_is_told_to_initialize_and_a_notification_is_dropped(
    ) {
        let input = [
            "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}".to_owned(),
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"x\"}}"
                .to_owned(),
            "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}".to_owned(),
            initialize(),
            "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"x\"}}"
                .to_owned(),
        ]
        .join("\n");
        let (passed, answers) = run(input.into_bytes()).await;
        let ids: Vec<&Value> = passed.iter().map(|m| &m["id"]).collect();
        assert_eq!(ids, [&json!(2), &json!(0), &json!(3)]);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0]["id"], 1);
        let message = answers[0]["error"]["message"].as_str().unwrap();
        assert!(message.contains("send initialize first"), "{message}");
    }
}
