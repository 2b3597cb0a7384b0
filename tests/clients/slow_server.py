"""A small MCP server (official Python SDK, mcp 2.x, stdio) to put behind `smart-async proxy`.

Its runtime depends on an argument, so the proxy can learn it:

- `slow(seconds)` sleeps that long and answers `slept 0.20 s` (text) with the structured
  content `{"slept_s": 0.2}`;
- `fail(message)` answers an isError result carrying the message;
- `rpc_error(code, message)` answers a JSON-RPC error with that code and message;
- `grow(name)` adds a tool `name` (it answers `NAME was added`) and sends
  `notifications/tools/list_changed`;
- the prompt `greet(name)` and the resource `slow://about` test pass-through.

Run it as `python slow_server.py [--log FILE]` (tests/clients/test_proxy.py and
inspector_e2e.sh do). With `--log`, it appends `started PID` when it starts and
`cancelled slow SECONDS` when a `slow` call is cancelled (notifications/cancelled), so a
test can see its upstream restart and its cancellations arrive.
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp import MCPError
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent

ABOUT = "slow_server: a test upstream for smart-async proxy"

LOG: str | None = None


def log(line: str) -> None:
    if LOG is not None:
        with open(LOG, "a") as f:
            f.write(line + "\n")


server = MCPServer(name="slow-server", version="1.0.0", log_level="WARNING")


@server.tool(description="Sleeps `seconds` seconds, then says how long it slept.")
async def slow(seconds: float) -> CallToolResult:
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        log(f"cancelled slow {seconds}")
        raise
    return CallToolResult(
        content=[TextContent(type="text", text=f"slept {seconds:.2f} s")],
        structured_content={"slept_s": seconds},
    )


@server.tool(description="Always fails with the given message (an isError result).", structured_output=False)
def fail(message: str) -> str:
    raise ToolError(message)


@server.tool(description="Always answers a JSON-RPC error with the given code and message.", structured_output=False)
def rpc_error(code: int, message: str) -> str:
    raise MCPError(code, message)


@server.tool(description="Adds a tool with the given name, then says the tool list changed.",
             structured_output=False)
async def grow(name: str, ctx: Context) -> str:
    def added() -> str:
        return f"{name} was added"

    server.add_tool(added, name=name, description=f"A tool added at run time by grow({name!r}).",
                    structured_output=False)
    await ctx.request_context.session.send_tool_list_changed()  # 2025-11-25 and earlier
    await ctx.notify_tools_changed()  # 2026-07-28: subscriptions/listen
    return f"added {name}"


@server.prompt(description="A greeting prompt.")
def greet(name: str) -> str:
    return f"Please greet {name} warmly."


@server.resource("slow://about", name="about", description="What this server is.", mime_type="text/plain")
def about() -> str:
    return ABOUT


if __name__ == "__main__":
    if sys.argv[1:2] == ["--log"] and len(sys.argv) == 3:
        LOG = sys.argv[2]
    elif len(sys.argv) > 1:
        sys.exit(f"usage: {sys.argv[0]} [--log FILE]")
    log(f"started {os.getpid()}")
    server.run()
