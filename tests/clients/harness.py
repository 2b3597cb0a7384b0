"""What the Python client tests share: the binary under test, starting it over stdio,
running async test bodies, and reading results.

The binary is SMART_ASYNC_BIN (default target/debug/smart-async under the repository
root); scripts/clients.sh sets it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

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
