// End-to-end tests of smart-async with the classic official TypeScript SDK,
// @modelcontextprotocol/sdk 1.32.2 (`Client` + `StdioClientTransport`): a client that
// speaks `initialize` (protocol up to 2025-11-25) and does not know the tasks
// extension, with a 60 s default request timeout that progress does not reset
// unless asked (`resetTimeoutOnProgress`).
//
// What the client does that matters here (read from its dist/esm/shared/protocol.js):
// - `onprogress` in the request options makes it add `_meta.progressToken` (= the
//   numeric JSON-RPC id) to the request; each notifications/progress for that token
//   calls onprogress and, with `resetTimeoutOnProgress: true`, re-arms the timeout.
//   It does not check that progress increases.
// - When `timeout` expires it rejects with McpError(ErrorCode.RequestTimeout = -32001,
//   "Request timed out") and sends notifications/cancelled {requestId, reason} to the
//   server.
// - clientInfo is exactly what the constructor was given ({name, version}).
//
// Run from tests/clients: `node --test ts_classic.test.mjs` (scripts/clients.sh does).

import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { ErrorCode, McpError } from '@modelcontextprotocol/sdk/types.js';
import { connectClassic, onCleanup, workdir, show, sleep, tail, textOf } from './ts_helpers.mjs';

const JOB_STATUSES = ['pending', 'running', 'completed', 'failed', 'cancelled'];

/** structuredContent of a CallToolResult, failing clearly when it is missing. */
function structured(result, what, log) {
    assert.ok(
        result?.structuredContent && typeof result.structuredContent === 'object',
        `${what}: expected structuredContent, got ${show(result)}\n--- server log ---\n${tail(log)}`,
    );
    return result.structuredContent;
}

test('classic SDK: the tool list offers the command tools, the job tools and async_mode', async (t) => {
    const wd = workdir(t, 'classic-list');
    const { client, log } = await connectClassic(t, wd);
    const { tools } = await client.listTools();
    const names = tools.map((tool) => tool.name);
    for (const expected of ['sleep', 'sleep_then_touch', 'job_status', 'list_jobs', 'cancel_job', 'predictor_stats']) {
        assert.ok(names.includes(expected), `expected tool ${expected} in ${show(names)}\n${tail(log)}`);
    }
    const sleepTool = tools.find((tool) => tool.name === 'sleep');
    assert.ok(
        sleepTool.inputSchema?.properties?.async_mode,
        `expected sleep to accept async_mode, its input schema is ${show(sleepTool.inputSchema)}`,
    );
    assert.equal(client.getServerVersion()?.name, 'smart-async');
});

test('classic SDK: a short call answers inline', async (t) => {
    const wd = workdir(t, 'classic-inline');
    const { client, log } = await connectClassic(t, wd);
    const result = await client.callTool({ name: 'sleep', arguments: { seconds: 0.1 } });
    const sc = structured(result, 'sleep 0.1', log);
    assert.equal(sc.job_id, undefined, `expected an inline answer, got a job: ${show(result)}`);
    assert.equal(sc.exit_code, 0, `expected exit_code 0, got ${show(sc)}`);
    assert.notEqual(result.isError, true, `expected success, got ${show(result)}`);
});

test('classic SDK (no tasks extension): async_mode answers the tool-level job face; job_status waits for the result', async (t) => {
    const wd = workdir(t, 'classic-job');
    const { client, log } = await connectClassic(t, wd);
    const started = Date.now();
    const answer = await client.callTool({ name: 'sleep', arguments: { seconds: 1, async_mode: true } });
    const job = structured(answer, 'sleep with async_mode', log);
    assert.ok(Date.now() - started < 900, `the async_mode call took ${Date.now() - started} ms: it should answer at once`);
    assert.equal(typeof job.job_id, 'string', `expected structuredContent.job_id, got ${show(answer)}`);
    assert.ok(['pending', 'running'].includes(job.status), `expected status pending or running, got ${show(job)}`);
    assert.equal(job.smart_async, false, `async_mode was asked for: smart_async should be false in ${show(job)}`);
    assert.equal(job.promoted, false, `expected promoted false in ${show(job)}`);
    for (const key of ['reason', 'next']) {
        assert.equal(typeof job[key], 'string', `expected a string ${key} in ${show(job)}`);
    }
    assert.ok('predicted_s' in job && 'eta_s' in job, `expected predicted_s and eta_s in ${show(job)}`);
    assert.match(textOf(answer), new RegExp(job.job_id), 'the text should name the job id');

    const status = await client.callTool(
        { name: 'job_status', arguments: { job_id: job.job_id, wait_s: 20 } },
        undefined,
        { timeout: 30_000 },
    );
    const view = structured(status, 'job_status', log);
    assert.equal(view.job_id, job.job_id);
    assert.equal(view.tool, 'sleep');
    assert.ok(JOB_STATUSES.includes(view.status), `unknown job status in ${show(view)}`);
    assert.equal(view.status, 'completed', `expected the job completed after job_status wait_s, got ${show(view)}`);
    assert.equal(view.result?.exit_code, 0, `expected the sleep's result (exit_code 0) in ${show(view)}`);
});

test('classic SDK: progress every ~1 s keeps a 5 s inline call alive past a 2 s timeout with resetTimeoutOnProgress', async (t) => {
    const wd = workdir(t, 'classic-progress');
    const { client, log, clientErrors } = await connectClassic(t, wd);
    const progress = [];
    const started = Date.now();
    let result;
    try {
        result = await client.callTool({ name: 'sleep', arguments: { seconds: 5 } }, undefined, {
            timeout: 2000,
            resetTimeoutOnProgress: true,
            onprogress: (p) => progress.push({ atMs: Date.now() - started, ...p }),
        });
    } catch (error) {
        assert.fail(
            `expected the 5 s call to complete (the server sends notifications/progress about every second, ` +
                `which resets the client's 2 s timeout), but it failed after ${Date.now() - started} ms: ${error}\n` +
                `progress seen: ${show(progress)}\n--- server log ---\n${tail(log)}`,
        );
    }
    const sc = structured(result, 'sleep 5', log);
    assert.equal(sc.job_id, undefined, `expected an inline answer (budget 50 s), got a job: ${show(sc)}`);
    assert.equal(sc.exit_code, 0, `expected exit_code 0, got ${show(sc)}`);
    assert.ok(progress.length >= 2, `expected at least 2 progress notifications, got ${show(progress)}`);
    for (let i = 1; i < progress.length; i++) {
        assert.ok(
            progress[i].progress > progress[i - 1].progress,
            `progress should increase: ${show(progress)}`,
        );
    }
    assert.deepEqual(clientErrors, [], 'the client reported errors');
});

test('classic SDK: without resetTimeoutOnProgress the same call times out (-32001) at 2 s', async (t) => {
    const wd = workdir(t, 'classic-timeout');
    const { client, log } = await connectClassic(t, wd);
    let progressCount = 0;
    const started = Date.now();
    await assert.rejects(
        client.callTool({ name: 'sleep', arguments: { seconds: 5 } }, undefined, {
            timeout: 2000,
            onprogress: () => {
                progressCount += 1;
            },
        }),
        (error) => {
            assert.ok(error instanceof McpError, `expected an McpError, got ${error}`);
            assert.equal(
                error.code,
                ErrorCode.RequestTimeout,
                `expected code ${ErrorCode.RequestTimeout} (request timeout), got ${error.code}: ${error.message}\n${tail(log)}`,
            );
            return true;
        },
    );
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 4000, `the timeout should fire at about 2 s, it took ${elapsed} ms`);
    // Progress still arrived while the call ran: it just did not extend the timeout.
    assert.ok(progressCount >= 1, `expected progress before the timeout, got ${progressCount} notifications\n${tail(log)}`);
});

test("classic SDK: the notifications/cancelled a request timeout sends stops the inline command", async (t) => {
    const wd = workdir(t, 'classic-cancelled');
    const { client, log } = await connectClassic(t, wd);
    const marker = path.join(wd.dir, 'touched');
    const started = Date.now();
    await assert.rejects(
        client.callTool({ name: 'sleep_then_touch', arguments: { seconds: 2, path: marker } }, undefined, {
            timeout: 1000,
        }),
        (error) => error instanceof McpError && error.code === ErrorCode.RequestTimeout,
    );
    // The command would have touched the file at 2 s: give it a margin past that.
    await sleep(Math.max(0, 3000 - (Date.now() - started)));
    assert.equal(
        existsSync(marker),
        false,
        `the command kept running after the client cancelled the request (it created ${marker})\n${tail(log)}`,
    );
});

test('classic SDK: a client that keeps timing out at 3 s gets its budget learned and then a job', async (t) => {
    const wd = workdir(t, 'classic-budget');
    const { client, log } = await connectClassic(t, wd, { name: 'impatient-client' });
    for (let i = 1; i <= 3; i++) {
        const started = Date.now();
        await assert.rejects(
            client.callTool({ name: 'sleep', arguments: { seconds: 10 } }, undefined, { timeout: 3000 }),
            (error) => {
                assert.ok(
                    error instanceof McpError && error.code === ErrorCode.RequestTimeout,
                    `call ${i}: expected the client's own request timeout (-32001) at 3 s, got ${error} ` +
                        `after ${Date.now() - started} ms\n${tail(log)}`,
                );
                return true;
            },
        );
    }

    // The last notifications/cancelled went out just before: allow the server a
    // moment to take it into account (poll for up to 2 s).
    let sc;
    let me;
    for (const until = Date.now() + 2000; ; ) {
        const stats = await client.callTool({ name: 'predictor_stats', arguments: {} });
        sc = structured(stats, 'predictor_stats', log);
        assert.ok(Array.isArray(sc.clients), `expected predictor_stats structuredContent.clients to be a list, got ${show(sc)}`);
        me = sc.clients.find((c) => c?.name === 'impatient-client');
        if ((typeof me?.budget_s === 'number' && me.budget_s < 3) || Date.now() > until) break;
        await sleep(200);
    }
    assert.ok(me, `expected a clients entry named impatient-client in ${show(sc.clients)}\n${tail(log)}`);
    assert.equal(typeof me.budget_s, 'number', `expected a numeric budget_s in ${show(me)}`);
    assert.ok(me.budget_s < 3, `expected the learned budget_s below the client's 3 s timeout, got ${show(me)}`);

    const started = Date.now();
    const answer = await client.callTool({ name: 'sleep', arguments: { seconds: 10 } }, undefined, { timeout: 30_000 });
    const elapsed = Date.now() - started;
    const job = structured(answer, 'sleep 10 after the budget was learned', log);
    onCleanup(t, async () => {
        if (typeof job.job_id === 'string') {
            await client.callTool({ name: 'cancel_job', arguments: { job_id: job.job_id } }).catch(() => {});
        }
    });
    assert.equal(
        typeof job.job_id,
        'string',
        `expected a job for sleep 10 once the client's budget (${me.budget_s} s) is learned; ` +
            `the call ran inline for ${elapsed} ms: ${show(answer)}`,
    );
    assert.ok(['pending', 'running'].includes(job.status), `expected pending or running, got ${show(job)}`);
    assert.ok(elapsed < 3000, `the job answer took ${elapsed} ms: it should come within the client's budget`);
    const cancelled = await client.callTool({ name: 'cancel_job', arguments: { job_id: job.job_id } });
    const view = structured(cancelled, 'cancel_job', log);
    assert.equal(view.status, 'cancelled', `expected cancel_job to cancel, got ${show(view)}`);
});
