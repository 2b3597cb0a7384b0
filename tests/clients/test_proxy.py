"""End-to-end tests of `smart-async proxy` with real third-party pieces.

The official Python SDK (mcp 2.x, `mcp.Client`) talks to `smart-async proxy -- UPSTREAM`,
where the upstream is either `@modelcontextprotocol/server-everything` (npm, pinned in
package.json: run `npm ci` in tests/clients) or tests/clients/slow_server.py (the Python
SDK's MCPServer, run with this interpreter: the venv's). Each test gets its own temporary
data directory. The binary is SMART_ASYNC_BIN (default target/debug/smart-async under the
repository root). Run through scripts/clients.sh.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from mcp.client.stdio import StdioServerParameters

from harness import CLIENTS, READ_TIMEOUT_S, binary_params, call_ok, free_port, run, server_bin, text_of

SLOW_SERVER = CLIENTS / "slow_server.py"
EVERYTHING = CLIENTS / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
# A proxy that ignores `server/discover` makes the auto-mode probe wait 10 s; the
# upstream's own start (node, Python) counts here too.
MAX_CONNECT_S = 8.0

JOB_TOOLS = {"job_status", "list_jobs", "cancel_job", "predictor_stats"}
JOB_FIELDS = {"job_id", "status", "smart_async", "promoted", "reason", "predicted_s", "eta_s", "next"}
# The tools server-everything always registers (others depend on the client's capabilities).
EVERYTHING_TOOLS = {
    "echo",
    "get-annotated-message",
    "get-env",
    "get-resource-links",
    "get-resource-reference",
    "get-structured-content",
    "get-sum",
    "get-tiny-image",
    "gzip-file-as-resource",
    "toggle-simulated-logging",
    "toggle-subscriber-updates",
    "trigger-long-running-operation",
}
LONG_OP = "trigger-long-running-operation"


def everything_cmd() -> list[str]:
    if not EVERYTHING.is_file():
        pytest.fail(f"server-everything not installed at {EVERYTHING}: run `npm ci` in {CLIENTS}")
    return ["node", str(EVERYTHING), "stdio"]


def slow_cmd(log: Path | None = None) -> list[str]:
    return [sys.executable, str(SLOW_SERVER), *(["--log", str(log)] if log else [])]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A fresh data directory for one test."""
    return tmp_path / "data"


def proxy_args(data: Path, upstream: list[str], *extra: str) -> list[str]:
    return ["proxy", "--data-dir", str(data), *extra, "--", *upstream]


def proxy_params(data: Path, upstream: list[str], *extra: str, exit_file: Path | None = None) -> StdioServerParameters:
    return binary_params(proxy_args(data, upstream, *extra), exit_file)


def is_job(result: Any) -> bool:
    return isinstance(result.structured_content, dict) and "job_id" in result.structured_content


def check_job_answer(answer: dict[str, Any]) -> None:
    assert JOB_FIELDS <= set(answer), f"job answer lacks {JOB_FIELDS - set(answer)}: {answer}"
    assert answer["job_id"], answer
    assert answer["status"] in ("pending", "running", "completed"), answer


async def wait_job(client: Client, job_id: str, wait_s: float, deadline_s: float = 30.0) -> dict[str, Any]:
    """job_status until the job has ended (job_status caps wait_s below the budget)."""
    end = time.monotonic() + deadline_s
    while True:
        status = (await call_ok(client, "job_status", {"job_id": job_id, "wait_s": wait_s})).structured_content
        if status["status"] not in ("pending", "running") or time.monotonic() > end:
            return status


async def upstream_tools(upstream: list[str]) -> dict[str, Any]:
    """The upstream's own tools/list, asked directly (no proxy)."""
    params = StdioServerParameters(command=upstream[0], args=upstream[1:])
    async with Client(params, read_timeout_seconds=READ_TIMEOUT_S) as client:
        return {tool.name: tool for tool in (await client.list_tools()).tools}


def without_async_mode(schema: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schema)
    schema["properties"] = {k: v for k, v in schema.get("properties", {}).items() if k != "async_mode"}
    return schema


def log_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# ------------------------------------------------------- a. server-everything (npm)


def test_everything_through_proxy(data: Path, record_property: Any) -> None:
    upstream = everything_cmd()
    budget_s = 2.0

    async def body() -> None:
        direct = await upstream_tools(upstream)
        assert EVERYTHING_TOOLS <= set(direct), sorted(direct)

        started = time.monotonic()
        async with Client(proxy_params(data, upstream, "--budget-s", str(budget_s)),
                          read_timeout_seconds=READ_TIMEOUT_S) as client:
            connect_s = time.monotonic() - started
            print(f"\nproxy + server-everything: connect {connect_s:.3f} s, protocol {client.protocol_version}")
            record_property("proxy connect s", f"{connect_s:.3f}")
            assert connect_s < MAX_CONNECT_S, f"connecting took {connect_s:.2f} s (server/discover ignored?)"
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert EVERYTHING_TOOLS | JOB_TOOLS <= set(listed), sorted(listed)
            for name in EVERYTHING_TOOLS:
                tool, original = listed[name], direct[name]
                schema = tool.input_schema
                assert schema["properties"]["async_mode"]["type"] == "boolean", (name, schema)
                assert "async_mode" not in schema.get("required", []), (name, schema)
                assert without_async_mode(schema) == without_async_mode(original.input_schema), name
                assert tool.description == original.description, name
            assert "job_id" in listed["job_status"].input_schema["properties"]

            # echo answers inline with the upstream's own result.
            echo = await call_ok(client, "echo", {"message": "hello through the proxy"})
            assert text_of(echo) == "Echo: hello through the proxy", echo
            assert echo.structured_content is None, echo

            # get-sum: numbers go through as numbers.
            total = await call_ok(client, "get-sum", {"a": 2, "b": 40})
            assert "42" in text_of(total), total

            # The long-running operation lasts 4 s, over the 2 s budget: a job, at the latest
            # when the deadline promotes it.
            started = time.monotonic()
            answer = await call_ok(client, LONG_OP, {"duration": 4, "steps": 4})
            answer_s = time.monotonic() - started
            print(f"{LONG_OP} 4 s: answered in {answer_s:.2f} s: {answer.structured_content}")
            record_property("long op answer s", f"{answer_s:.2f}")
            assert is_job(answer), f"a 4 s call with a 2 s budget answered inline: {text_of(answer)}"
            job = answer.structured_content
            check_job_answer(job)
            assert answer_s < budget_s + 1.5, f"the job answer took {answer_s:.2f} s"
            assert job["promoted"] or job["reason"].startswith("learned:"), job

            status = await wait_job(client, job["job_id"], wait_s=budget_s * 0.75)
            done_s = time.monotonic() - started
            record_property("long op completed s", f"{done_s:.2f}")
            assert status["status"] == "completed", status
            assert status["job_id"] == job["job_id"]
            assert status["tool"] == LONG_OP, status
            expected = "Long running operation completed. Duration: 4 seconds, Steps: 4."
            assert [b.get("text") for b in status["content"]] == [expected], status
            assert status.get("result") is None, status
            final = await call_ok(client, "job_status", {"job_id": job["job_id"]})
            assert expected in text_of(final), text_of(final)

            jobs = (await call_ok(client, "list_jobs", {})).structured_content["jobs"]
            assert job["job_id"] in [j["job_id"] for j in jobs], jobs

    run(body)


def test_everything_progress_is_forwarded(data: Path) -> None:
    """An inline call's upstream progress (1 of 3, 2 of 3…) shows in the proxy's progress."""
    upstream = everything_cmd()

    async def body() -> None:
        async with Client(proxy_params(data, upstream, "--budget-s", "10"),
                          read_timeout_seconds=READ_TIMEOUT_S) as client:
            seen: list[tuple[float, float | None, str | None]] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append((progress, total, message))

            result = await call_ok(client, LONG_OP, {"duration": 2.5, "steps": 3}, progress_callback=on_progress)
            print(f"\nprogress seen: {seen}")
            assert not is_job(result), result.structured_content
            assert text_of(result) == "Long running operation completed. Duration: 2.5 seconds, Steps: 3."
            assert seen, "no progress notification reached the client"
            messages = " | ".join(m or "" for _, _, m in seen)
            assert re.search(r"\b[123] of 3\b", messages), f"upstream progress not in the messages: {seen}"

    run(body)


def test_everything_logs_and_resource_updates_are_relayed(data: Path) -> None:
    """Issue 15: the proxy answered logging/setLevel and resources/subscribe with -32601
    and dropped the upstream's log messages and resource updates. Now they are passed
    on: the level and the subscription upstream, the messages and updates back down,
    an update only to the session subscribed to its resource."""
    upstream = everything_cmd()

    async def body() -> None:
        logs: list[Any] = []
        updates: list[str] = []

        async def on_log(params: Any) -> None:
            logs.append(params)

        async def on_message(message: Any) -> None:
            root = getattr(message, "root", message)
            if getattr(root, "method", None) == "notifications/resources/updated":
                updates.append(str(root.params.uri))

        async with Client(proxy_params(data, upstream), mode="legacy", read_timeout_seconds=READ_TIMEOUT_S,
                          logging_callback=on_log, message_handler=on_message) as client:
            capabilities = client.server_capabilities
            assert capabilities.logging is not None, capabilities
            assert capabilities.resources is not None and capabilities.resources.subscribe, capabilities
            await client.set_logging_level("debug")
            await call_ok(client, "toggle-simulated-logging", {})
            with anyio.fail_after(10):
                while not logs:
                    await anyio.sleep(0.05)
            print(f"\nrelayed log: {logs[0]}")

            uri = (await client.list_resources()).resources[0].uri
            await client.subscribe_resource(uri)
            await call_ok(client, "toggle-subscriber-updates", {})
            with anyio.fail_after(10):
                while str(uri) not in updates:
                    await anyio.sleep(0.05)
            await client.unsubscribe_resource(uri)
            await call_ok(client, "toggle-subscriber-updates", {})
            assert set(updates) == {str(uri)}, updates

    run(body)


def test_everything_output_schema_tool_as_job(data: Path) -> None:
    """get-structured-content declares an outputSchema; the SDK validates results against
    the listed schema, so a job answer for it must not break the client."""
    upstream = everything_cmd()
    weather = {"temperature": 36, "conditions": "Light rain / drizzle", "humidity": 82}

    async def body() -> None:
        async with Client(proxy_params(data, upstream, "--budget-s", "5"),
                          read_timeout_seconds=READ_TIMEOUT_S) as client:
            inline = await call_ok(client, "get-structured-content", {"location": "Chicago"})
            assert inline.structured_content == weather, inline
            answer = await call_ok(client, "get-structured-content", {"location": "Chicago", "async_mode": True})
            assert is_job(answer), answer
            check_job_answer(answer.structured_content)
            assert answer.structured_content["reason"].startswith("explicit:"), answer.structured_content
            status = await wait_job(client, answer.structured_content["job_id"], wait_s=3)
            assert status["status"] == "completed", status
            assert status["result"] == weather, status

    run(body)


# ----------------------------------------------- b. a Python upstream that is learned


def test_slow_server_learned(data: Path, record_property: Any) -> None:
    log = data.parent / "slow.log"
    exit_file = data.parent / "proxy.exit"
    budget_s = 3.0
    training = [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6]

    async def body() -> None:
        async with Client(proxy_params(data, slow_cmd(log), "--budget-s", str(budget_s), exit_file=exit_file),
                          read_timeout_seconds=READ_TIMEOUT_S) as client:
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert {"slow", "fail", "rpc_error"} | JOB_TOOLS <= set(listed), sorted(listed)
            assert listed["slow"].input_schema["properties"]["seconds"]["type"] == "number"
            assert listed["slow"].input_schema["properties"]["async_mode"]["type"] == "boolean"
            assert listed["slow"].description == "Sleeps `seconds` seconds, then says how long it slept."

            # Training: short calls answer inline with the upstream's result, unchanged.
            for seconds in training:
                result = await call_ok(client, "slow", {"seconds": seconds})
                if is_job(result):  # an unsure model may send one to the background: let it finish
                    print(f"slow {seconds}: went to the background: {result.structured_content}")
                    status = await wait_job(client, result.structured_content["job_id"], wait_s=2)
                    assert status["status"] == "completed", status
                    assert status["result"] == {"slept_s": seconds}, status
                    continue
                assert text_of(result) == f"slept {seconds:.2f} s", result
                assert result.structured_content == {"slept_s": seconds}, result

            stats = (await call_ok(client, "predictor_stats", {"tool": "slow"})).structured_content
            assert stats["budget_s"] == budget_s, stats
            entries = [t for t in stats["tools"] if t["tool"] == "slow"]
            assert len(entries) == 1, stats
            print(f"\nslow after training: {entries[0]}")
            assert entries[0]["state"] == "warm", entries[0]
            assert entries[0]["samples"] >= len(training), entries[0]

            # 30 s is far beyond what was learned and the budget: a job at once, by the model.
            started = time.monotonic()
            answer = await call_ok(client, "slow", {"seconds": 30})
            answer_s = time.monotonic() - started
            record_property("slow 30 s answer s", f"{answer_s:.3f}")
            assert is_job(answer), f"slow 30 s answered inline: {text_of(answer)}"
            job = answer.structured_content
            print(f"slow 30 s: answered in {answer_s:.3f} s: {job}")
            record_property("slow 30 s decision", job["reason"])
            check_job_answer(job)
            assert job["reason"].startswith("learned:"), job
            assert job["smart_async"] is True and job["promoted"] is False, job
            assert answer_s < 1.0, f"the learned job answer took {answer_s:.2f} s"

            cancelled = (await call_ok(client, "cancel_job", {"job_id": job["job_id"]})).structured_content
            assert cancelled["status"] == "cancelled", cancelled
            status = (await call_ok(client, "job_status", {"job_id": job["job_id"]})).structured_content
            assert status["status"] == "cancelled", status
            # The cancellation reaches the upstream (notifications/cancelled).
            end = time.monotonic() + 5
            while "cancelled slow 30.0" not in log_lines(log) and time.monotonic() < end:
                await anyio.sleep(0.1)
            assert "cancelled slow 30.0" in log_lines(log), f"the upstream never saw the cancel: {log_lines(log)}"

            # Errors keep their meaning: an isError result, a JSON-RPC error with its code.
            failed = await client.call_tool("fail", {"message": "kaput"})
            assert failed.is_error, failed
            assert "kaput" in text_of(failed), failed
            with pytest.raises(MCPError) as raised:
                await client.call_tool("rpc_error", {"code": -32050, "message": "no such widget"})
            assert raised.value.code == -32050, raised.value.error
            assert "no such widget" in raised.value.message, raised.value.error

            # Prompts and resources pass through.
            prompts = {p.name: p for p in (await client.list_prompts()).prompts}
            assert "greet" in prompts, prompts
            prompt = await client.get_prompt("greet", {"name": "Ada"})
            assert prompt.messages[0].content.text == "Please greet Ada warmly.", prompt
            resources = {str(r.uri): r for r in (await client.list_resources()).resources}
            assert "slow://about" in resources, resources
            read = await client.read_resource("slow://about")
            assert read.contents[0].text == "slow_server: a test upstream for smart-async proxy", read

        # Closing stdin stops the proxy, and the proxy stops its upstream.
        assert exit_file.exists(), "the proxy did not exit by itself within 2 s of stdin closing"
        assert exit_file.read_text().strip() == "0", f"proxy exit code {exit_file.read_text()!r}"
        pids = [int(line.split()[1]) for line in log_lines(log) if line.startswith("started ")]
        assert len(pids) == 1, log_lines(log)
        assert not alive(pids[0], wait_s=5), f"the upstream (pid {pids[0]}) outlived the proxy"

    run(body)


def test_upstream_tool_list_changed(data: Path) -> None:
    """The upstream adds a tool and says so (tools/list_changed): the proxy offers it."""

    async def body() -> None:
        async with Client(proxy_params(data, slow_cmd()), read_timeout_seconds=READ_TIMEOUT_S) as client:
            assert "extra" not in {tool.name for tool in (await client.list_tools()).tools}
            # A 2026-07-28 client listens for the change (subscriptions/listen).
            async with client.listen(tools_list_changed=True) as subscription:
                assert subscription.honored.tools_list_changed, subscription.honored
                grown = await call_ok(client, "grow", {"name": "extra"})
                assert text_of(grown) == "added extra", grown
                with anyio.fail_after(5):
                    event = await subscription.__anext__()
                assert type(event).__name__ == "ToolsListChanged", event
            end = time.monotonic() + 5
            while True:
                listed = {tool.name: tool for tool in (await client.list_tools()).tools}
                if "extra" in listed:
                    break
                assert time.monotonic() < end, f"the added tool is not listed after 5 s: {sorted(listed)}"
                await anyio.sleep(0.2)
            assert listed["extra"].input_schema["properties"]["async_mode"]["type"] == "boolean", listed["extra"]
            assert JOB_TOOLS <= set(listed), sorted(listed)
            extra = await call_ok(client, "extra", {})
            assert text_of(extra) == "extra was added", extra

    run(body)


def alive(pid: int, wait_s: float) -> bool:
    """Whether process `pid` still runs (not a zombie) after up to `wait_s` seconds."""
    end = time.monotonic() + wait_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state == "Z" or time.monotonic() > end:
            return state != "Z"
        time.sleep(0.1)


def test_upstream_killed_mid_call(data: Path, record_property: Any) -> None:
    """The upstream dies during an inline call: a clear error, then a restarted upstream."""
    log = data.parent / "slow.log"

    async def body() -> None:
        async with Client(proxy_params(data, slow_cmd(log), "--budget-s", "10"),
                          read_timeout_seconds=READ_TIMEOUT_S) as client:
            await call_ok(client, "slow", {"seconds": 0.05})
            first = [int(line.split()[1]) for line in log_lines(log) if line.startswith("started ")]
            assert len(first) == 1, log_lines(log)

            outcome: dict[str, Any] = {}

            async def long_call() -> None:
                try:
                    outcome["result"] = await client.call_tool("slow", {"seconds": 5})
                except MCPError as e:
                    outcome["error"] = e

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call)
                await anyio.sleep(0.8)
                os.kill(first[0], signal.SIGKILL)
            error_s = time.monotonic() - started
            if "error" in outcome:
                message = outcome["error"].message
            else:
                result = outcome["result"]
                assert result.is_error, f"the call survived its upstream's death: {result}"
                message = text_of(result)
            print(f"\nupstream killed: error after {error_s:.2f} s: {message!r}")
            record_property("killed upstream error", message)
            assert error_s < 4.5, f"the error came after {error_s:.2f} s (the call would have ended at 5 s)"
            assert re.search(r"upstream|exit|died|killed|signal|closed|terminated", message, re.I), message

            # The proxy restarts the upstream (with backoff): calls work again.
            end = time.monotonic() + 15
            while True:
                try:
                    result = await client.call_tool("slow", {"seconds": 0.05})
                    if not result.is_error:
                        break
                    last = text_of(result)
                except MCPError as e:
                    last = e.message
                assert time.monotonic() < end, f"no restarted upstream after 15 s: {last}"
                await anyio.sleep(0.25)
            assert text_of(result) == "slept 0.05 s", result
            restart_s = time.monotonic() - started
            record_property("upstream back after s", f"{restart_s:.2f}")
            pids = [int(line.split()[1]) for line in log_lines(log) if line.startswith("started ")]
            assert len(pids) >= 2 and pids[-1] != first[0], log_lines(log)

    run(body)


# ----------------------------------------------------- c. a wrong upstream command


def run_proxy_expecting_failure(data: Path, upstream: list[str], timeout_s: float = 15.0) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [server_bin(), *proxy_args(data, upstream)],
        stdin=subprocess.PIPE,  # open: the proxy must not wait for its client to leave
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the proxy was still running after {timeout_s} s; stderr:\n{err.decode(errors='replace')}")
    return proc.returncode, err.decode(errors="replace"), time.monotonic() - started


def test_wrong_upstream_command_fails_fast(data: Path, record_property: Any) -> None:
    code, err, took_s = run_proxy_expecting_failure(data, ["/nonexistent/cmd"])
    print(f"\n/nonexistent/cmd: exit {code} after {took_s:.2f} s; stderr:\n{err}")
    record_property("nonexistent cmd fails after s", f"{took_s:.2f}")
    assert code != 0, err
    assert "/nonexistent/cmd" in err, err
    assert re.search(r"not found|no such file", err, re.I), err

    code, err, took_s = run_proxy_expecting_failure(data.parent / "data2", ["sh", "-c", "echo boom >&2; exit 3"])
    print(f"sh exit 3: exit {code} after {took_s:.2f} s; stderr:\n{err}")
    record_property("exit 3 cmd fails after s", f"{took_s:.2f}")
    assert code != 0, err
    assert "boom" in err, err
    assert re.search(r"\b3\b", err), err


# ------------------------------------------------------------ d. Streamable HTTP


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_proxy_over_http(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    port = free_port()
    log = data.parent / "proxy.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [server_bin(), *proxy_args(data, slow_cmd(), "--http", f"127.0.0.1:{port}")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        end = time.monotonic() + 15
        while not listening(port):
            assert proc.poll() is None, f"the proxy exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < end, f"the proxy is not listening on {port}:\n{log.read_text()}"
            time.sleep(0.05)

        async def body() -> None:
            async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=READ_TIMEOUT_S) as client:
                tools = {tool.name for tool in (await client.list_tools()).tools}
                assert {"slow", "fail"} | JOB_TOOLS <= tools, sorted(tools)
                result = await call_ok(client, "slow", {"seconds": 0.1})
                assert text_of(result) == "slept 0.10 s", result
                job = (await call_ok(client, "slow", {"seconds": 0.1, "async_mode": True})).structured_content
                assert job["reason"].startswith("explicit:"), job
                status = await wait_job(client, job["job_id"], wait_s=5)
                assert status["status"] == "completed" and status["result"] == {"slept_s": 0.1}, status

        run(body)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(10)
        assert code == 0, f"the proxy exited with {code} on Ctrl-C:\n{log.read_text()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sys.stderr.write(log.read_text(errors="replace")[-4000:])
