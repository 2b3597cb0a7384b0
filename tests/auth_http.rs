//! Issue 17: over HTTP anyone who reached the port could run commands, and a job one
//! caller started could be read and cancelled by another (on a86c8a7 B's `list_jobs`
//! showed A's jobs, B's `job_status` returned A's output, B's `cancel_job` cancelled
//! A's running job, and a third session's `tasks/get` returned A's result).
//!
//! A real server process over real HTTP: every refusal with its status and
//! `WWW-Authenticate` challenge, the Protected Resource Metadata, static tokens and
//! JWTs (signed with keys made here, their JWKS served here and rotated), and each
//! principal's jobs its own.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::AuthServer as Server;
use common::{call, free_local_addr, is_error, path_str, structured, text, token_for, Setup, BIN};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rmcp::model::{ClientRequest, GetTaskParams, Request};
use rmcp::service::RunningService;
use rmcp::{Peer, RoleClient};
use serde_json::{json, Value};

type Client = RunningService<RoleClient, ()>;

fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn static_tokens_refuse_no_token_and_a_wrong_one_and_serve_a_valid_one() {
    let (alice, entry) = token_for("alice");
    let server = Server::start(&format!("[auth]\n{entry}"), &[]).await;
    let metadata_url = server.url("/.well-known/oauth-protected-resource/mcp");

    let response = server.initialize(None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        challenge(&response),
        format!("Bearer resource_metadata=\"{metadata_url}\"")
    );
    for wrong in [
        "Bearer sa_not-a-token".to_owned(),
        format!("Bearer {}", &alice[..alice.len() - 1]),
        format!("Basic {alice}"),
    ] {
        let response = server.initialize(Some(&wrong)).await;
        assert_eq!(response.status(), 401, "{wrong}");
        let header = challenge(&response);
        assert!(
            header.starts_with("Bearer error=\"invalid_token\"")
                && header.contains(&format!("resource_metadata=\"{metadata_url}\"")),
            "{header}"
        );
    }
    let response = server.initialize(Some(&format!("Bearer {alice}"))).await;
    assert_eq!(response.status(), 200);

    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let document: Value = reqwest::get(server.url(path))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(document["resource"], server.url("/mcp"), "{path}");
        assert_eq!(document["bearer_methods_supported"], json!(["header"]));
        assert_eq!(document["authorization_servers"], json!([]));
        assert!(document["scopes_supported"].is_array());
    }
}

/// A call of `sleep` for `seconds` sent to the background: its job id.
async fn start_job(client: &Client, seconds: u32) -> String {
    let result = call(
        client,
        "sleep",
        json!({"seconds": seconds, "async_mode": true}),
    )
    .await;
    assert!(!is_error(&result), "{}", text(&result));
    structured(&result)["job_id"]
        .as_str()
        .expect("a job handle")
        .to_owned()
}

/// `tasks/get` of a task id, as a raw request: the answer or the error's message.
async fn tasks_get(client: &Peer<RoleClient>, task_id: &str) -> Result<Value, String> {
    let request = ClientRequest::GetTaskRequest(Request::new(GetTaskParams::new(task_id)));
    match client.send_request(request).await {
        Ok(answer) => Ok(serde_json::to_value(answer).unwrap()),
        Err(rmcp::ServiceError::McpError(error)) => Err(error.message.to_string()),
        Err(other) => panic!("{other}"),
    }
}

async fn tasks_cancel(client: &Peer<RoleClient>, task_id: &str) -> Result<(), String> {
    let request =
        ClientRequest::CancelTaskRequest(Request::new(rmcp::model::CancelTaskParams::new(task_id)));
    match client.send_request(request).await {
        Ok(_) => Ok(()),
        Err(rmcp::ServiceError::McpError(error)) => Err(error.message.to_string()),
        Err(other) => panic!("{other}"),
    }
}

/// The message for a job id the caller cannot see, with the id made generic.
fn unknown(message: &str, id: &str) -> String {
    message.replace(id, "ID")
}

#[tokio::test]
async fn a_principals_jobs_are_its_own_and_an_admin_sees_all() {
    let (alice_token, alice_entry) = token_for("alice");
    let (bob_token, bob_entry) = token_for("bob");
    let (ops_token, ops_entry) = token_for("ops");
    let config = format!("[auth]\nadmins = [\"ops\"]\n{alice_entry}\n{bob_entry}\n{ops_entry}");
    let server = Server::start(&config, &[]).await;
    let alice = server.connect(&alice_token).await;
    let bob = server.connect(&bob_token).await;
    let ops = server.connect(&ops_token).await;
    let alice_tasks = server.connect_tasks(&alice_token).await;
    let bob_tasks = server.connect_tasks(&bob_token).await;

    let alices = start_job(&alice, 30).await;
    let bobs = start_job(&bob, 30).await;
    let never = uuid::Uuid::new_v4().to_string();

    // To bob, alice's job is exactly an unknown id.
    for tool in ["job_status", "cancel_job"] {
        let theirs = call(&bob, tool, json!({"job_id": alices})).await;
        let missing = call(&bob, tool, json!({"job_id": never})).await;
        assert!(is_error(&theirs) && is_error(&missing), "{tool}");
        assert_eq!(
            unknown(&text(&theirs), &alices),
            unknown(&text(&missing), &never),
            "{tool}"
        );
    }
    let listed = |result: &rmcp::model::CallToolResult| -> Vec<String> {
        structured(result)["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| job["job_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        listed(&call(&bob, "list_jobs", json!({})).await),
        std::slice::from_ref(&bobs)
    );
    let theirs = tasks_get(&bob_tasks, &alices).await.unwrap_err();
    let missing = tasks_get(&bob_tasks, &never).await.unwrap_err();
    assert_eq!(
        unknown(&theirs, &alices),
        unknown(&missing, &never),
        "tasks/get"
    );
    let theirs = tasks_cancel(&bob_tasks, &alices).await.unwrap_err();
    let missing = tasks_cancel(&bob_tasks, &never).await.unwrap_err();
    assert_eq!(
        unknown(&theirs, &alices),
        unknown(&missing, &never),
        "tasks/cancel"
    );

    // Alice's job still runs, and is hers to read.
    let status = call(&alice, "job_status", json!({"job_id": alices})).await;
    assert_eq!(
        structured(&status)["status"],
        "running",
        "{}",
        text(&status)
    );
    let got = tasks_get(&alice_tasks, &alices).await;
    assert!(got.is_ok(), "{got:?}");
    assert_eq!(
        listed(&call(&alice, "list_jobs", json!({})).await),
        std::slice::from_ref(&alices)
    );

    // The admin sees both, and may cancel either.
    let mut seen = listed(&call(&ops, "list_jobs", json!({})).await);
    seen.sort();
    let mut both = vec![alices.clone(), bobs.clone()];
    both.sort();
    assert_eq!(seen, both);
    let cancelled = call(&ops, "cancel_job", json!({"job_id": alices})).await;
    assert_eq!(
        structured(&cancelled)["status"],
        "cancelled",
        "{}",
        text(&cancelled)
    );
    let cancelled = call(&alice, "cancel_job", json!({"job_id": alices})).await;
    assert!(
        text(&cancelled).contains("already ended"),
        "{}",
        text(&cancelled)
    );
    assert!(tasks_cancel(&bob_tasks, &bobs).await.is_ok());
}

#[tokio::test]
async fn a_session_is_its_openers() {
    let (alice_token, alice_entry) = token_for("alice");
    let (bob_token, bob_entry) = token_for("bob");
    let server = Server::start(&format!("[auth]\n{alice_entry}\n{bob_entry}"), &[]).await;
    let opened = server
        .initialize(Some(&format!("Bearer {alice_token}")))
        .await;
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let list = json!({"jsonrpc":"2.0","id":2,"method":"tools/list"});
    let send = |token: String| {
        reqwest::Client::new()
            .post(server.url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .header("authorization", format!("Bearer {token}"))
            .body(list.to_string())
            .send()
    };
    let bobs = send(bob_token).await.unwrap();
    assert_eq!(bobs.status(), 404, "bob cannot use alice's session");
    assert!(bobs.text().await.unwrap().contains("Session not found"));
}

/// An authorization server made here: RSA keys made with openssl, their JWKS served
/// over loopback (and replaceable: a key rotation), and tokens signed with them.
struct Issuer {
    url: String,
    jwks: Arc<Mutex<JwkSet>>,
    dir: tempfile::TempDir,
}

const AUDIENCE: &str = "https://mcp.example.test/mcp";

impl Issuer {
    async fn start() -> Issuer {
        let jwks = Arc::new(Mutex::new(JwkSet { keys: vec![] }));
        let served = jwks.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let served = served.clone();
                async move { axum::Json(served.lock().unwrap().clone()) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Issuer {
            url,
            jwks,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A new RSA key named `kid`: its signing key, and its public JWK.
    fn key(&self, kid: &str) -> (EncodingKey, Jwk) {
        let path = self.dir.path().join(format!("{kid}.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&path)
            .output()
            .expect("openssl makes the test's keys");
        assert!(made.status.success(), "{made:?}");
        let key = EncodingKey::from_rsa_pem(&std::fs::read(&path).unwrap()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        (key, jwk)
    }

    fn publish(&self, keys: Vec<Jwk>) {
        self.jwks.lock().unwrap().keys = keys;
    }

    fn config(&self, scopes: &[&str]) -> String {
        format!(
            "[auth.jwt]\nissuer = \"{}\"\njwks = \"{}/jwks.json\"\naudience = \"{AUDIENCE}\"\nscopes = {scopes:?}\n",
            self.url, self.url
        )
    }

    /// Claims valid now for `sub`, with these changes.
    fn claims(&self, sub: &str, changes: Value) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut claims = json!({
            "iss": self.url, "aud": AUDIENCE, "sub": sub,
            "iat": now, "exp": now + 600, "scope": "mcp:tools",
        });
        for (name, value) in changes.as_object().unwrap() {
            claims[name] = value.clone();
        }
        claims
    }
}

fn sign(key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A token with `alg: none`: a header and claims, no signature.
fn unsigned(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
    format!("{header}.{}.", b64.encode(claims.to_string()))
}

#[tokio::test]
async fn jwt_access_tokens_are_checked_for_signature_issuer_audience_time_and_scope() {
    let issuer = Issuer::start().await;
    let (key, jwk) = issuer.key("k1");
    let (other_key, _) = issuer.key("other");
    issuer.publish(vec![jwk.clone()]);
    let server = Server::start(&issuer.config(&["mcp:tools"]), &[]).await;
    let metadata = "https://mcp.example.test/.well-known/oauth-protected-resource/mcp";
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let response = server.initialize(None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        challenge(&response),
        format!("Bearer resource_metadata=\"{metadata}\", scope=\"mcp:tools\"")
    );
    let refused = [
        (
            "expired",
            sign(
                &key,
                "k1",
                &issuer.claims("alice", json!({"exp": now - 3600})),
            ),
            "expired",
        ),
        (
            "another audience",
            sign(
                &key,
                "k1",
                &issuer.claims("alice", json!({"aud": "https://other.example/mcp"})),
            ),
            "another audience",
        ),
        (
            "another issuer",
            sign(
                &key,
                "k1",
                &issuer.claims("alice", json!({"iss": "https://evil.example"})),
            ),
            "another issuer",
        ),
        (
            "signed by another key",
            sign(&other_key, "k1", &issuer.claims("alice", json!({}))),
            "signature",
        ),
        (
            "alg none",
            unsigned(&issuer.claims("alice", json!({}))),
            "signed JWT",
        ),
        (
            "not yet valid",
            sign(
                &key,
                "k1",
                &issuer.claims("alice", json!({"nbf": now + 3600})),
            ),
            "not valid yet",
        ),
        (
            "no subject",
            sign(&key, "k1", &issuer.claims("", json!({}))),
            "'sub' claim",
        ),
    ];
    for (what, token, said) in refused {
        let response = server.initialize(Some(&format!("Bearer {token}"))).await;
        assert_eq!(response.status(), 401, "{what}");
        let header = challenge(&response);
        assert!(
            header.starts_with("Bearer error=\"invalid_token\"")
                && header.contains(said)
                && header.contains(metadata),
            "{what}: {header}"
        );
    }
    let no_scope = sign(
        &key,
        "k1",
        &issuer.claims("alice", json!({"scope": "read"})),
    );
    let response = server.initialize(Some(&format!("Bearer {no_scope}"))).await;
    assert_eq!(response.status(), 403);
    assert!(
        challenge(&response)
            .starts_with("Bearer error=\"insufficient_scope\", scope=\"mcp:tools\""),
        "{}",
        challenge(&response)
    );

    let valid = sign(&key, "k1", &issuer.claims("alice", json!({})));
    assert_eq!(
        server
            .initialize(Some(&format!("Bearer {valid}")))
            .await
            .status(),
        200
    );
    let client = server.connect(&valid).await;
    let job = start_job(&client, 0).await;
    assert!(!job.is_empty());

    // The issuer rotates to a new key: a token with its id is fetched for and served,
    // once the refetch gap has passed since the last fetch.
    let (new_key, new_jwk) = issuer.key("k2");
    issuer.publish(vec![new_jwk]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let rotated = sign(&new_key, "k2", &issuer.claims("alice", json!({})));
    assert_eq!(
        server
            .initialize(Some(&format!("Bearer {rotated}")))
            .await
            .status(),
        200,
        "a token of the rotated key"
    );

    let document: Value = reqwest::get(server.url("/.well-known/oauth-protected-resource/mcp"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["resource"], AUDIENCE);
    assert_eq!(document["authorization_servers"], json!([issuer.url]));
    assert_eq!(document["scopes_supported"], json!(["mcp:tools"]));
}

#[tokio::test]
async fn a_non_loopback_bind_without_auth_refuses_to_start_and_says_why() {
    let setup = Setup::new();
    let output = tokio::process::Command::new(BIN)
        .arg("serve")
        .args(setup.args(&["--http", "0.0.0.0:0"]))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("can be reached from other machines")
            && said.contains("--allow-unauthenticated"),
        "{said}"
    );
}

#[tokio::test]
async fn an_allowed_host_is_served_and_another_host_is_refused() {
    let (token, entry) = token_for("alice");
    let server = Server::start(
        &format!("[auth]\n{entry}"),
        &["--allowed-host", "mcp.example.test"],
    )
    .await;
    let with_host = |host: &str| {
        reqwest::Client::new()
            .post(server.url("/mcp"))
            .header("host", host)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("Bearer {token}"))
            .body(
                json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
                "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})
                .to_string(),
            )
            .send()
    };
    assert_eq!(with_host("mcp.example.test").await.unwrap().status(), 200);
    let refused = with_host("evil.example").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("--allowed-host"));
}

#[tokio::test]
async fn tls_serves_https_with_the_given_certificate() {
    let (token, entry) = token_for("alice");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes the test's certificate");
    assert!(made.status.success(), "{made:?}");
    let server = Server::start(
        &format!("[auth]\n{entry}"),
        &["--tls-cert", path_str(&cert), "--tls-key", path_str(&key)],
    )
    .await;
    let url = format!("https://{}/mcp", server.addr);
    let metadata_url = format!(
        "https://{}/.well-known/oauth-protected-resource/mcp",
        server.addr
    );
    let answer = tokio::task::spawn_blocking(move || {
        // A self-signed certificate for a name the test does not connect by.
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(true)
            .build();
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .tls_config(tls)
                .http_status_as_error(false)
                .build(),
        );
        let post = |authorization: Option<&str>| {
            let mut request = agent
                .post(&url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream");
            if let Some(authorization) = authorization {
                request = request.header("authorization", authorization);
            }
            let response = request.send(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#).unwrap();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|value| value.to_str().unwrap().to_owned());
            (response.status().as_u16(), challenge)
        };
        (post(None), post(Some(&format!("Bearer {token}"))))
    })
    .await
    .unwrap();
    let ((refused, challenge), (served, _)) = answer;
    assert_eq!(refused, 401);
    assert_eq!(
        challenge.unwrap(),
        format!("Bearer resource_metadata=\"{metadata_url}\""),
        "the metadata is named with https"
    );
    assert_eq!(served, 200);
    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::get(server.url("/mcp")).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// The README's "Deploy over HTTP" config is the config the server takes: with a real
/// digest for its placeholder, it resolves to what it says.
#[test]
fn the_readmes_deploy_config_resolves_as_documented() {
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let section = readme.split("## Deploy over HTTP").nth(1).unwrap();
    let block = section
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let (_, digest) = smart_async::new_token();
    let config = block.replace("3f8c…", &digest);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let flags = smart_async::ServerFlags {
        config: Some(path),
        data_dir: Some(dir.path().join("data")),
        http: Some("0.0.0.0:8443".into()),
        ..Default::default()
    };
    let settings = smart_async::Settings::resolve(flags, smart_async::default_data_dir).unwrap();
    let http = settings.http.unwrap();
    assert!(http
        .limits
        .allowed_hosts
        .contains(&"mcp.example.com".to_owned()));
    assert_eq!(http.limits.max_request_bytes, 4_194_304);
    assert!(http.access.auth.is_some() && http.access.tls.is_some());
    assert_eq!(settings.engine.jobs.max_active_per_principal, 100);
}

#[tokio::test]
async fn with_allow_unauthenticated_a_non_loopback_bind_serves_the_local_user() {
    let setup = Setup::new();
    let port = free_local_addr().rsplit(':').next().unwrap().to_owned();
    let bind = format!("0.0.0.0:{port}");
    let _process = tokio::process::Command::new(BIN)
        .arg("serve")
        .args(setup.args(&["--http", &bind, "--allow-unauthenticated"]))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = common::connect_http(&format!("127.0.0.1:{port}")).await;
    let listed = client.list_all_tools().await.unwrap();
    assert!(listed.iter().any(|tool| tool.name == "job_status"));
}

#[tokio::test]
async fn an_unreachable_jwks_is_a_503_that_says_so() {
    let unreachable = free_local_addr();
    let config = format!(
        "[auth.jwt]\nissuer = \"https://issuer.example\"\njwks = \"http://{unreachable}/jwks.json\"\naudience = \"{AUDIENCE}\"\n"
    );
    let server = Server::start(&config, &[]).await;
    let issuer = Issuer::start().await;
    let (key, _) = issuer.key("k1");
    let token = sign(&key, "k1", &issuer.claims("alice", json!({})));
    let response = server.initialize(Some(&format!("Bearer {token}"))).await;
    assert_eq!(response.status(), 503);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("keys cannot be fetched"));
}
