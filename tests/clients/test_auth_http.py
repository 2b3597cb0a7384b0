"""Issue 17: bearer-token authentication on the Streamable HTTP face, seen by the
official Python SDK (mcp 2.x) and by plain HTTP (httpx2, which the SDK uses).

The server is the real binary (`serve --http --config FILE`), its config holding two
`[[auth.tokens]]` entries (alice, bob) made by the real `smart-async token new`. The
SDK's Client connects through its Streamable HTTP transport over an httpx2 client that
sends `Authorization: Bearer TOKEN` on every request. Run through scripts/clients.sh.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError

from harness import HttpServer, call_ok, connect_http, http_client, run, serve_args, text_of, write_auth_config

JOB_TOOLS = {"job_status", "list_jobs", "cancel_job"}
# A client's first POST, sent by hand to see the HTTP answer the SDK does not expose.
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "smart-async-auth-test", "version": "0.0.0"},
    },
}
MCP_POST_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@dataclass
class AuthServer:
    server: HttpServer
    tokens: dict[str, str]
    root: Path


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[AuthServer]:
    """`serve --http` with [auth] holding tokens for alice and bob (ops is an admin
    without a token here), over a root with a few files to hash."""
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("alpha\n")
    (root / "docs" / "b.txt").write_text("beta\n")
    (root / "c.bin").write_bytes(bytes(range(256)))
    config = tmp_path / "config.toml"
    tokens = write_auth_config(config, ["alice", "bob"], admins=["ops"])
    server = HttpServer(serve_args(tmp_path / "data", root, "--config", str(config)), tmp_path / "server.log")
    try:
        yield AuthServer(server, tokens, root)
    finally:
        server.kill()
        sys.stderr.write(server.logs()[-4000:])  # shown by pytest when the test fails


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups: the SDK's Client raises from
    its task groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


async def sdk_connect_fails(url: str, token: str | None) -> list[BaseException]:
    """Connects the SDK's Client with `token` (None: no Authorization header); the
    connection must fail with an MCPError. Returns what was raised."""
    try:
        async with connect_http(url, token) as client:
            tools = await client.list_tools()
    except Exception as error:  # an ExceptionGroup from the SDK's task groups
        raised = leaves(error)
        assert any(isinstance(leaf, MCPError) for leaf in raised), f"expected an MCPError, got {raised!r}"
        return raised
    pytest.fail(f"the SDK connected {'without a token' if token is None else 'with a bad token'}: {tools}")


def job_ids(listed: Any) -> list[str]:
    return [job["job_id"] for job in listed.structured_content["jobs"]]


async def unknown_to(client: Client, tool: str, job_id: str) -> str:
    """`tool {job_id}` must fail; returns its error text with the id made generic."""
    result = await client.call_tool(tool, {"job_id": job_id})
    text = text_of(result)
    assert result.is_error, f"{tool}({job_id}) should fail for this caller but answered: {text}"
    return text.replace(job_id, "ID")


# ----------------------------------------------------------------- no token, bad token


def test_without_a_token_the_server_says_401_and_where_to_get_one(auth_server: AuthServer) -> None:
    server = auth_server.server
    metadata_url = f"{server.origin}/.well-known/oauth-protected-resource/mcp"

    async def body() -> None:
        async with http_client() as http:
            refused = await http.post(server.url, json=INITIALIZE, headers=MCP_POST_HEADERS)
            assert refused.status_code == 401, (refused.status_code, refused.text)
            challenge = refused.headers.get("www-authenticate", "")
            assert challenge.startswith("Bearer "), challenge
            assert f'resource_metadata="{metadata_url}"' in challenge, challenge
            assert "invalid_token" not in challenge, f"no token was sent, none was invalid: {challenge}"

            # The metadata the challenge names is served without a token, and names this endpoint.
            metadata = await http.get(metadata_url)
            assert metadata.status_code == 200, (metadata.status_code, metadata.text)
            document = metadata.json()
            assert document["resource"] == server.url, document
            assert "header" in document["bearer_methods_supported"], document

        async with http_client("sa_not-a-token-of-this-server") as http:
            refused = await http.post(server.url, json=INITIALIZE, headers=MCP_POST_HEADERS)
            assert refused.status_code == 401, (refused.status_code, refused.text)
            challenge = refused.headers.get("www-authenticate", "")
            assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge, challenge
            assert f'resource_metadata="{metadata_url}"' in challenge, challenge

        # The SDK's Client cannot connect either way.
        await sdk_connect_fails(server.url, None)
        await sdk_connect_fails(server.url, "sa_not-a-token-of-this-server")

        # A valid token is served on the same endpoint.
        async with http_client(auth_server.tokens["alice"]) as http:
            served = await http.post(server.url, json=INITIALIZE, headers=MCP_POST_HEADERS)
            assert served.status_code == 200, (served.status_code, served.text)
            assert '"serverInfo"' in served.text, served.text

    run(body)


# ------------------------------------------------------------- jobs and principals


def test_jobs_belong_to_the_principal_whose_token_started_them(auth_server: AuthServer) -> None:
    server, tokens = auth_server.server, auth_server.tokens

    async def body() -> None:
        async with connect_http(server.url, tokens["alice"]) as alice, \
                connect_http(server.url, tokens["bob"]) as bob:
            tools = {tool.name: tool for tool in (await alice.list_tools()).tools}
            assert {"hash_files"} | JOB_TOOLS <= set(tools), sorted(tools)
            hash_args = tools["hash_files"].input_schema["properties"]
            assert {"path", "async_mode"} <= set(hash_args), hash_args

            inline = (await call_ok(alice, "hash_files", {"path": "."})).structured_content
            assert "job_id" not in inline and inline["files"] == 3, inline
            job = (await call_ok(alice, "hash_files", {"path": ".", "async_mode": True})).structured_content
            alices = job["job_id"]
            assert alices and job["reason"].startswith("explicit:"), job
            bobs = (await call_ok(bob, "hash_files", {"path": "docs", "async_mode": True})).structured_content["job_id"]
            never = str(uuid.uuid4())

            # To bob, alice's job is exactly an id nobody ever had: same error, word for word.
            for tool in ("job_status", "cancel_job"):
                theirs = await unknown_to(bob, tool, alices)
                missing = await unknown_to(bob, tool, never)
                assert theirs == missing, f"{tool}: alice's job {theirs!r} vs an unknown id {missing!r}"
            assert job_ids(await call_ok(bob, "list_jobs", {})) == [bobs]

            # Bob's cancel_job did not touch it: alice's job runs to completion, and is hers to read.
            status = (await call_ok(alice, "job_status", {"job_id": alices, "wait_s": 10})).structured_content
            assert status["job_id"] == alices and status["status"] == "completed", status
            assert status["result"]["digest"] == inline["digest"], (status, inline)
            assert job_ids(await call_ok(alice, "list_jobs", {})) == [alices]
            assert await unknown_to(alice, "job_status", bobs) == await unknown_to(alice, "job_status", never)

            # Bob's own job is his.
            status = (await call_ok(bob, "job_status", {"job_id": bobs, "wait_s": 10})).structured_content
            assert status["status"] == "completed" and status["result"]["files"] == 2, status

    run(body)
    code = server.stop()
    assert code == 0, f"the HTTP server exited with {code} on Ctrl-C:\n{server.logs()}"
