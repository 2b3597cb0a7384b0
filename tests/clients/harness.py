"""What the Python client tests share: the binary under test, starting it over stdio or
as a `serve --http` child process, bearer tokens made with `smart-async token new`,
connecting over Streamable HTTP (with or without a token), running async test bodies,
and reading results.

The binary is SMART_ASYNC_BIN (default target/debug/smart-async under the repository
root); scripts/clients.sh sets it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parents[2]
CLIENTS = Path(__file__).resolve().parent
# Per-request limit for the SDK: every call in these tests answers in well under this.
READ_TIMEOUT_S = 30.0


def server_bin() -> str:
    configured = Path(os.environ.get("SMART_ASYNC_BIN", "target/debug/smart-async"))
    path = configured if configured.is_absolute() else REPO / configured
    if not path.is_file():
        pytest.fail(f"smart-async binary not found at {path}: run `cargo build` or set SMART_ASYNC_BIN")
    return str(path)


def run(test_body: Any) -> None:
    """Runs an async test body (no pytest async plugin is needed)."""
    anyio.run(test_body)


def binary_params(args: list[str], exit_file: Path | None = None) -> StdioServerParameters:
    """How the SDK starts `smart-async ARGS` over stdio.

    With `exit_file`, a small sh wrapper writes the binary's exit code there once it
    exits by itself: the SDK closes stdin to stop a server and kills the whole process
    group (wrapper included) if it is still running 2 s later, so the file exists only
    after a clean, timely stop.
    """
    if exit_file is None:
        return StdioServerParameters(command=server_bin(), args=args)
    script = '"$0" "$@"; echo $? > "$SMART_ASYNC_TEST_EXIT_FILE"'
    return StdioServerParameters(
        command="/bin/sh",
        args=["-c", script, server_bin(), *args],
        env={"SMART_ASYNC_TEST_EXIT_FILE": str(exit_file)},
    )


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def call_ok(client: Client, tool: str, arguments: dict[str, Any], **kwargs: Any) -> Any:
    result = await client.call_tool(tool, arguments, **kwargs)
    assert not result.is_error, f"{tool}({arguments}) failed: {text_of(result)}"
    return result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_args(data: Path, root: Path, *extra: str) -> list[str]:
    return ["serve", "--data-dir", str(data), "--root", str(root), *extra]


class HttpServer:
    """`smart-async ARGS --http 127.0.0.1:PORT` as a child process (ARGS: `serve ...`),
    stopped with Ctrl-C (SIGINT). Its stderr goes to `log`."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.origin = ""
        for _ in range(5):  # another process may take the port between probe and bind
            port = free_port()
            with open(log, "wb") as err:
                self.proc = subprocess.Popen(
                    [server_bin(), *args, "--http", f"127.0.0.1:{port}"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            if self._wait_listening():
                self.origin = f"http://127.0.0.1:{port}"
                self.url = f"{self.origin}/mcp"
                return
            self.kill()
        pytest.fail(f"the HTTP server did not start:\n{self.logs()}")

    def _wait_listening(self, timeout_s: float = 15.0) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if "listening for MCP clients" in self.logs():
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout_s: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# ------------------------------------------------------------------ authentication


def new_token(principal: str) -> tuple[str, str]:
    """A fresh token for `principal` from `smart-async token new`: (token, the
    `[[auth.tokens]]` entry it prints for the config file)."""
    done = subprocess.run([server_bin(), "token", "new", principal], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"token new {principal} exited {done.returncode}: {done.stderr}"
    lines = done.stdout.splitlines() or [""]
    token = lines[0].strip()
    assert token and " " not in token, f"token new {principal}: no token on the first line:\n{done.stdout}"
    starts = [i for i, line in enumerate(lines) if line.strip() == "[[auth.tokens]]"]
    assert len(starts) == 1, f"token new {principal}: expected one [[auth.tokens]] entry:\n{done.stdout}"
    entry = "\n".join(lines[starts[0]:]).strip()
    assert f'principal = "{principal}"' in entry, entry
    assert token not in entry, "the config entry must hold the token's hash, not the token"
    assert f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"' in entry, f"not the token's SHA-256: {entry}"
    return token, entry


def write_auth_config(path: Path, principals: list[str], admins: list[str] | None = None) -> dict[str, str]:
    """Writes a config file at `path`: [auth] with `admins` and a token per principal
    (made by `new_token`). Returns each principal's token."""
    tokens: dict[str, str] = {}
    entries: list[str] = []
    for principal in principals:
        tokens[principal], entry = new_token(principal)
        entries.append(entry)
    admin_list = ", ".join(f'"{name}"' for name in (admins or []))
    path.write_text(f"[auth]\nadmins = [{admin_list}]\n\n" + "\n\n".join(entries) + "\n")
    return tokens


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def http_client(token: str | None = None) -> httpx2.AsyncClient:
    """An httpx2 client sending `Authorization: Bearer TOKEN` (none without a token),
    with the SDK's default timeouts (30 s, 300 s to read a stream). It ignores proxy
    settings from the environment: the servers under test are on loopback."""
    return httpx2.AsyncClient(
        headers=bearer(token),
        timeout=httpx2.Timeout(30.0, read=300.0),
        trust_env=False,
    )


@asynccontextmanager
async def connect_http(url: str, token: str | None = None, **client_kwargs: Any) -> AsyncIterator[Client]:
    """The SDK's Client over its Streamable HTTP transport, every request carrying the
    bearer token: the headers are the httpx2 client's, which the SDK uses but does not
    close (this does)."""
    client_kwargs.setdefault("read_timeout_seconds", READ_TIMEOUT_S)
    async with http_client(token) as http:
        async with Client(streamable_http_client(url, http_client=http), **client_kwargs) as client:
            yield client
