"""End-to-end tests of the smart-async MCP server with the official Python SDK (mcp 2.x).

Each test starts the real binary (env SMART_ASYNC_BIN, default target/debug/smart-async
under the repository root) on its own temporary data directory and root, and talks
to it with `mcp.Client`: over stdio (the SDK spawns the server) or over Streamable
HTTP (`serve --http`, started here). Run through scripts/clients.sh.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from harness import READ_TIMEOUT_S, HttpServer, binary_params, call_ok, run, serve_args, text_of

# A server that ignores `server/discover` makes the auto-mode probe wait 10 s.
MAX_CONNECT_S = 5.0
MIB = 1024 * 1024

EXPECTED_TOOLS = {
    "hash_files",
    "search_text",
    "job_status",
    "list_jobs",
    "cancel_job",
    "predictor_stats",
}
JOB_TOOLS = {"job_status", "list_jobs", "cancel_job", "predictor_stats"}
REASON_PREFIXES = ("learned:", "pooled over all tools", "static:", "default:", "explicit:")


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh data directory and a fresh root for one test."""
    data = tmp_path / "data"
    root = tmp_path / "root"
    root.mkdir()
    return data, root


def stdio_params(data: Path, root: Path, *extra: str, exit_file: Path | None = None) -> StdioServerParameters:
    return binary_params(serve_args(data, root, *extra), exit_file)


def make_sparse(path: Path, size: int) -> None:
    """A file of `size` bytes that takes no disk space (and hashes quickly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


async def call_error(client: Client, tool: str, arguments: dict[str, Any], says: str | None = None) -> str:
    result = await client.call_tool(tool, arguments)
    text = text_of(result)
    assert result.is_error, f"{tool}({arguments}) should fail but answered: {text}"
    if says is not None:
        assert says in text, f"{tool}({arguments}) error should say {says!r}: {text}"
    return text


async def hash_stats(client: Client) -> dict[str, Any]:
    """The hash_files entry of predictor_stats(tool="hash_files")."""
    result = await call_ok(client, "predictor_stats", {"tool": "hash_files"})
    tools = [t for t in result.structured_content["tools"] if t["tool"] == "hash_files"]
    assert len(tools) == 1, result.structured_content
    return tools[0]


def effect(stats: dict[str, Any], name: str) -> dict[str, Any]:
    found = [e for e in stats["effects"] if e["name"] == name]
    assert found, f"no effect {name!r} in {stats['effects']}"
    return found[0]


async def wait_job(client: Client, job_id: str, wait_s: float = 10.0, deadline_s: float = 60.0) -> dict[str, Any]:
    """job_status until the job has ended (job_status caps wait_s below the budget)."""
    end = time.monotonic() + deadline_s
    while True:
        status = (await call_ok(client, "job_status", {"job_id": job_id, "wait_s": wait_s})).structured_content
        if status["status"] not in ("pending", "running") or time.monotonic() > end:
            return status


# ------------------------------------------------------------------------- a. stdio


def test_stdio_tools_inline_and_async(dirs: tuple[Path, Path], record_property: Any) -> None:
    data, root = dirs
    (root / "small").mkdir()
    contents = {"a.txt": b"hello smart-async\n", "b.bin": bytes(range(256)) * 4, "c/d.txt": b"nested\n"}
    for name, body in contents.items():
        (root / "small" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "small" / name).write_bytes(body)

    async def body() -> None:
        started = time.monotonic()
        async with Client(stdio_params(data, root), mode="auto", read_timeout_seconds=READ_TIMEOUT_S) as client:
            connect_s = time.monotonic() - started
            print(f"\nPython SDK stdio connect (mode=auto): {connect_s:.3f} s, protocol {client.protocol_version}")
            record_property("stdio connect s (mode=auto)", f"{connect_s:.3f}")
            assert connect_s < MAX_CONNECT_S, f"connecting took {connect_s:.2f} s (server/discover ignored?)"
            assert client.server_info is None or client.server_info.name == "smart-async"

            listed = await client.list_tools()
            tools = {tool.name: tool for tool in listed.tools}
            assert EXPECTED_TOOLS <= set(tools), sorted(tools)
            for name, tool in tools.items():
                schema = tool.input_schema
                assert schema.get("type") == "object", (name, schema)
                if name not in JOB_TOOLS:
                    assert schema["properties"]["async_mode"]["type"] == "boolean", (name, schema)
            assert "path" in tools["hash_files"].input_schema["properties"]
            assert "job_id" in tools["job_status"].input_schema["properties"]

            # A small tree answers inline with the manifest.
            inline = await call_ok(client, "hash_files", {"path": "small"})
            manifest = inline.structured_content
            assert "job_id" not in manifest, manifest
            assert manifest["files"] == len(contents)
            assert manifest["bytes"] == sum(len(b) for b in contents.values())
            assert manifest["truncated"] is False
            entries = {e["path"]: e["sha256"] for e in manifest["entries"]}
            assert entries["a.txt"] == hashlib.sha256(contents["a.txt"]).hexdigest()
            assert entries["b.bin"] == hashlib.sha256(contents["b.bin"]).hexdigest()
            assert manifest["digest"] in text_of(inline)

            # async_mode=true gives a job at once; job_status waits for its result.
            job = (await call_ok(client, "hash_files", {"path": "small", "async_mode": True})).structured_content
            assert job["job_id"], job
            assert job["status"] in ("pending", "running", "completed"), job
            assert job["smart_async"] is False and job["reason"].startswith("explicit:"), job
            status = (await call_ok(client, "job_status", {"job_id": job["job_id"], "wait_s": 10})).structured_content
            assert status["job_id"] == job["job_id"]
            assert status["tool"] == "hash_files"
            assert status["status"] == "completed", status
            assert status["result"]["files"] == len(contents)
            assert status["result"]["digest"] == manifest["digest"]

            jobs = (await call_ok(client, "list_jobs", {"tool": "hash_files"})).structured_content["jobs"]
            assert job["job_id"] in [j["job_id"] for j in jobs]

    run(body)


# ------------------------------------------------------- b. learning across restarts


def training_sizes(count: int = 14, smallest: int = 16 * 1024, largest: int = 8 * MIB) -> list[int]:
    ratio = (largest / smallest) ** (1 / (count - 1))
    return [round(smallest * ratio**i) for i in range(count)]


def test_learning_survives_restart(dirs: tuple[Path, Path], record_property: Any) -> None:
    data, root = dirs
    sizes = training_sizes()
    for i, total in enumerate(sizes):
        files = 3 + i % 3  # 3 to 5 files: path.files does not just follow path.bytes
        for j in range(files):
            make_sparse(root / f"train{i:02}" / f"part{j}.bin", total // files)
    make_sparse(root / "huge" / "disk.img", 4 * 1024 * MIB)
    (root / "tiny").mkdir()
    (root / "tiny" / "note.txt").write_text("tiny\n")
    budget = ("--budget-s", "0.5")

    async def body() -> None:
        # First server: learn hash_files from calls on trees of growing size.
        first_exit = data.parent / "first.exit"
        async with Client(stdio_params(data, root, *budget, exit_file=first_exit),
                          read_timeout_seconds=READ_TIMEOUT_S) as client:
            for i, total in enumerate(sizes):
                answer = (await call_ok(client, "hash_files", {"path": f"train{i:02}"})).structured_content
                if "job_id" in answer:  # sent to the background: let it finish so it is learned
                    assert answer["reason"].startswith(REASON_PREFIXES), answer
                    answer = await wait_job(client, answer["job_id"], wait_s=0.4)
                    assert answer["status"] == "completed", answer
                    answer = answer["result"]
                assert answer["bytes"] == total - total % (3 + i % 3), (i, answer)
            stats = await hash_stats(client)
            print(f"\nafter training: {stats['samples']} samples, {stats['state']}, effects {stats['effects']}")
            assert stats["state"] == "warm", stats
            assert stats["samples"] >= len(sizes), stats
            assert effect(stats, "path.bytes")["elasticity"] > 0, stats
            learned_samples = stats["samples"]
        assert first_exit.exists(), "the first server did not exit by itself within 2 s of stdin closing"
        assert first_exit.read_text().strip() == "0", f"first server exit code {first_exit.read_text()!r}"

        # Second server on the same data directory: what was learned is still there.
        second_exit = data.parent / "second.exit"
        async with Client(stdio_params(data, root, *budget, exit_file=second_exit),
                          read_timeout_seconds=READ_TIMEOUT_S) as client:
            stats = await hash_stats(client)
            assert stats["state"] == "warm", stats
            assert stats["samples"] == learned_samples, stats
            assert effect(stats, "path.bytes")["elasticity"] > 0, stats

            # 4 GiB is far beyond the budget: the learned model sends it to the background.
            job = (await call_ok(client, "hash_files", {"path": "huge"})).structured_content
            assert "job_id" in job, f"a 4 GiB hash answered inline: {job}"
            assert job["smart_async"] is True, job
            assert job["reason"].startswith("learned:"), job
            print(f"4 GiB call: predicted {job['predicted_s']} s, reason {job['reason']!r}")
            record_property("4 GiB decision", job["reason"])

            started = time.monotonic()
            cancelled = (await call_ok(client, "cancel_job", {"job_id": job["job_id"]})).structured_content
            cancel_s = time.monotonic() - started
            print(f"cancel_job answered in {cancel_s:.2f} s")
            record_property("cancel_job s", f"{cancel_s:.2f}")
            assert cancelled["job_id"] == job["job_id"]
            assert cancelled["status"] == "cancelled", cancelled
            status = (await call_ok(client, "job_status", {"job_id": job["job_id"]})).structured_content
            assert status["status"] == "cancelled", status

            tiny = (await call_ok(client, "hash_files", {"path": "tiny"})).structured_content
            assert "job_id" not in tiny, f"a tiny tree went to the background: {tiny}"
            assert tiny["files"] == 1
        # The cancelled job stopped, so nothing holds the server up when stdin closes.
        assert second_exit.exists(), "the second server did not exit by itself within 2 s of stdin closing"
        assert second_exit.read_text().strip() == "0", f"second server exit code {second_exit.read_text()!r}"

    run(body)


# ------------------------------------------------------------ c. Streamable HTTP


@pytest.fixture
def http_server(dirs: tuple[Path, Path]) -> Iterator[tuple[HttpServer, Path]]:
    data, root = dirs
    server = HttpServer(serve_args(data, root), data.parent / "server.log")
    try:
        yield server, root
    finally:
        server.kill()
        sys.stderr.write(server.logs()[-4000:])  # shown by pytest when the test fails


def test_streamable_http(http_server: tuple[HttpServer, Path], record_property: Any,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    server, root = http_server
    (root / "web").mkdir()
    (root / "web" / "index.html").write_text("<h1>hi</h1>\n")
    (root / "web" / "app.js").write_text("console.log('hi')\n")
    # Loopback never goes through a proxy, whatever the environment says.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")

    async def body() -> None:
        started = time.monotonic()
        async with Client(server.url, mode="auto", read_timeout_seconds=READ_TIMEOUT_S) as client:
            connect_s = time.monotonic() - started
            print(f"\nPython SDK Streamable HTTP connect: {connect_s:.3f} s, protocol {client.protocol_version}")
            record_property("http connect s (mode=auto)", f"{connect_s:.3f}")
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert EXPECTED_TOOLS <= tools, sorted(tools)

            inline = (await call_ok(client, "hash_files", {"path": "web"})).structured_content
            assert "job_id" not in inline, inline
            assert inline["files"] == 2
            entries = {e["path"]: e["sha256"] for e in inline["entries"]}
            assert entries["app.js"] == hashlib.sha256(b"console.log('hi')\n").hexdigest()

            job = (await call_ok(client, "hash_files", {"path": "web", "async_mode": True})).structured_content
            assert job["job_id"] and job["reason"].startswith("explicit:"), job
            status = (await call_ok(client, "job_status", {"job_id": job["job_id"], "wait_s": 10})).structured_content
            assert status["status"] == "completed", status
            assert status["result"]["digest"] == inline["digest"]

    run(body)
    code = server.stop()
    assert code == 0, f"the HTTP server exited with {code} on Ctrl-C:\n{server.logs()}"


# -------------------------------------------------------------------------- d. errors


def test_errors_are_tool_results(dirs: tuple[Path, Path]) -> None:
    data, root = dirs
    (root / "ok").mkdir()
    (root / "ok" / "f.txt").write_text("fine\n")

    async def body() -> None:
        async with Client(stdio_params(data, root), read_timeout_seconds=READ_TIMEOUT_S) as client:
            await call_error(client, "hash_files", {"path": ".."}, says="outside the allowed roots")
            await call_error(client, "hash_files", {"path": "/"}, says="outside the allowed roots")
            await call_error(client, "search_text", {"path": "..", "pattern": "x"}, says="outside the allowed roots")
            await call_error(client, "job_status", {"job_id": "00000000-0000-4000-8000-000000000000"},
                             says="no job with id")
            await call_error(client, "cancel_job", {"job_id": "00000000-0000-4000-8000-000000000000"},
                             says="no job with id")
            await call_error(client, "job_status", {"job_id": "not-a-uuid"}, says="is not a job id")
            # Bad arguments: missing, unknown, of the wrong type, out of range.
            await call_error(client, "hash_files", {})
            await call_error(client, "hash_files", {"path": "ok", "bogus": 1})
            await call_error(client, "hash_files", {"path": 42})
            await call_error(client, "job_status", {"job_id": "00000000-0000-4000-8000-000000000000", "wait_s": -1})
            await call_error(client, "search_text", {"path": "ok", "pattern": "("})
            await call_error(client, "list_jobs", {"status": "sleeping"})

            # The server is still there and still right.
            answer = (await call_ok(client, "hash_files", {"path": "ok"})).structured_content
            assert answer["files"] == 1
            assert {t.name for t in (await client.list_tools()).tools} >= EXPECTED_TOOLS

    run(body)
