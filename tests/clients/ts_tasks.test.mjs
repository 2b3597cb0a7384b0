// End-to-end tests of smart-async's MCP Tasks face (extension
// `io.modelcontextprotocol/tasks`, SEP-2663, protocol 2026-07-28) with the official
// 2026-07-28 TypeScript client, @modelcontextprotocol/client 2.4.0, and its tasks
// package @modelcontextprotocol/ext-tasks 0.2.2.
//
// The API, as read from the installed packages (ext-tasks README, dist/client/*.d.ts,
// dist/client/sdk-client-adapter.js, dist/core/v2/schemas.js; client dist/*.mjs):
//
// Connect (2026-07-28, `server/discover` probe with fallback to `initialize`):
//   const capabilities = { extensions: { 'io.modelcontextprotocol/tasks': {} } };
//   const client = new Client({ name, version }, { capabilities, versionNegotiation: { mode: 'auto' } });
//   await client.connect(new StdioClientTransport({ command, args, stderr: 'pipe' }));
//   client.getProtocolEra() === 'modern'; client.getNegotiatedProtocolVersion() === '2026-07-28'
//   Over stdio the auto mode probes on a throw-away sibling process started with the same
//   command and arguments (stderr ignored, reaped before connect() resolves), then starts
//   the real server: every connect starts the server twice.
//
// Declare the extension: in the client capabilities above. The 2026-07-28 Client puts
// its capabilities into every request's `_meta` ("io.modelcontextprotocol/clientCapabilities",
// with "io.modelcontextprotocol/protocolVersion" and ".../clientInfo"), and ext-tasks
// adds `extensions["io.modelcontextprotocol/tasks"] = {}` to the capabilities of every
// tools/call and tasks/* request it frames itself.
//
// Tasks session:
//   const session = createTaskSessionFromClient(client, {
//     endpointId,                       // any stable string
//     rawDispatch,                      // (request, {signal, context}) => Promise<{kind:'result', result} | {kind:'error', error}>
//     v2RequestFraming: { protocolVersion, clientInfo, clientCapabilities },
//   });
//   The session is V2 ("generation v2") only when the server's capabilities carry
//   `extensions: {"io.modelcontextprotocol/tasks": {}}` with an EMPTY object (any key in
//   it makes the adapter treat the server as tasks-unaware) on a modern connection; V2
//   requires rawDispatch + v2RequestFraming (createTaskSessionFromClient throws
//   otherwise), because the Client's own response funnel rejects `resultType: "task"`
//   (SdkErrorCode.UnsupportedResultType). rawDispatch must be a host-owned coordinator
//   of request ids and responses: here RawDispatcher in ts_helpers.mjs, on the
//   transport, with string ids.
//
// Call as task (the server decides; the client only declares support):
//   const execution = await session.callTool('sleep', { seconds: 2, async_mode: true }, { task: { preference: 'allow' } });
//   execution.kind === 'task' when tools/call answered a CreateTaskResult:
//     { resultType: 'task', taskId, status, statusMessage?, createdAt, lastUpdatedAt,
//       ttlMs: int | null, pollIntervalMs?: int }       (flat: no `task` wrapper in V2)
//   execution.handle.taskId is its taskId; execution.kind === 'immediate' for a normal
//   CallToolResult (which must carry resultType: 'complete').
//   await execution.settle({ onEvent }) polls tasks/get (at the server's pollIntervalMs,
//   at least a package minimum) until a terminal status; {outcome: {status:
//   'completed', result} | {status: 'failed', error} | {status: 'cancelled'}}.
//
// tasks/get:   await session.task(taskId).snapshot()  -> TaskView {taskId, status,
//   statusMessage, retentionMs (= ttlMs), suggestedPollIntervalMs, raw}. Wire result:
//   the detailed task, flat, with resultType 'complete'; when completed it carries
//   `result` (the CallToolResult, which ext-tasks validates with `resultType: 'complete'`
//   inside it), when failed `error: {code, message}`.
// tasks/cancel: await execution.cancel() (or session.cancelTask(taskId)); wire result
//   { resultType: 'complete' }. It resolves on the server's acknowledgement, not on the
//   task reaching `cancelled`.
// Note: execution.close() and session.close() cancel unsettled task executions.
//
// Run from tests/clients: `node --test ts_tasks.test.mjs` (scripts/clients.sh does).

import test from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { TASKS_EXTENSION, connectModern, workdir, show, sleep, tail, textOf } from './ts_helpers.mjs';

/** Fails with a clear message unless `execution` is a task; returns its task id. */
async function expectTask(execution, what, log) {
    if (execution.kind !== 'task') {
        let seen;
        try {
            seen = show(await execution.result());
        } catch (error) {
            seen = String(error);
        }
        assert.fail(
            `${what}: expected a CreateTaskResult (resultType "task") for a client that declared ` +
                `${TASKS_EXTENSION}, got an immediate answer: ${seen}\n--- server log ---\n${tail(log)}`,
        );
    }
    return execution.handle.taskId;
}

/** The raw CreateTaskResult the server answered to the last tools/call (via rawDispatch). */
function lastCreateTaskResult(raw) {
    const calls = raw.exchangesFor('tools/call');
    assert.ok(calls.length > 0, 'no tools/call went through rawDispatch');
    return calls[calls.length - 1].response.result;
}

/** Checks the wire shape of a CreateTaskResult against the job it stands for. */
function checkCreateTaskResult(created, taskId) {
    assert.equal(created?.resultType, 'task', `expected resultType "task" in ${show(created)}`);
    assert.equal(created.taskId, taskId);
    assert.ok(['working', 'completed'].includes(created.status), `unexpected status in ${show(created)}`);
    assert.equal(typeof created.pollIntervalMs, 'number', `expected pollIntervalMs in ${show(created)}`);
    assert.ok(created.pollIntervalMs > 0, `expected a positive pollIntervalMs in ${show(created)}`);
    assert.equal(typeof created.ttlMs, 'number', `expected a numeric ttlMs in ${show(created)}`);
    assert.ok(created.ttlMs > 0, `expected a positive ttlMs in ${show(created)}`);
    assert.equal(typeof created.statusMessage, 'string', `expected a statusMessage in ${show(created)}`);
    assert.ok(created.statusMessage.trim().length > 10, `expected a statusMessage in words in ${show(created)}`);
    for (const key of ['createdAt', 'lastUpdatedAt']) {
        assert.ok(!Number.isNaN(Date.parse(created[key])), `expected an ISO time ${key} in ${show(created)}`);
    }
}

/** job_status for a job id, through the same client (the tool-level face). */
async function jobStatus(client, jobId, log, waitS) {
    const args = waitS === undefined ? { job_id: jobId } : { job_id: jobId, wait_s: waitS };
    const result = await client.callTool({ name: 'job_status', arguments: args });
    assert.ok(result?.structuredContent, `job_status answered no structuredContent: ${show(result)}\n${tail(log)}`);
    return result.structuredContent;
}

/** Polls tasks/get until the task is terminal (or the time is up); returns the statuses seen. */
async function pollUntilTerminal(session, taskId, limitMs) {
    const statuses = [];
    const until = Date.now() + limitMs;
    for (;;) {
        const view = await session.task(taskId).snapshot();
        statuses.push(view.status);
        if (['completed', 'failed', 'cancelled'].includes(view.status) || Date.now() > until) {
            return { statuses, view };
        }
        await sleep(200);
    }
}

test('2026-07-28 client: the server negotiates 2026-07-28 and advertises the tasks extension', async (t) => {
    const wd = workdir(t, 'tasks-caps');
    const { client, session, log } = await connectModern(t, wd);
    assert.equal(client.getProtocolEra(), 'modern', `expected the modern era, negotiated ${client.getNegotiatedProtocolVersion()}`);
    assert.equal(client.getNegotiatedProtocolVersion(), '2026-07-28');
    const caps = client.getServerCapabilities();
    assert.deepEqual(
        caps?.extensions?.[TASKS_EXTENSION],
        {},
        `expected server capabilities extensions["${TASKS_EXTENSION}"] = {} (ext-tasks needs it empty), ` +
            `got ${show(caps)}\n${tail(log)}`,
    );
    assert.equal(session.capabilities.execution, true, `ext-tasks sees no task execution: ${show(session.capabilities)}`);
    assert.equal(session.capabilities.cancellation, true, `ext-tasks sees no task cancellation: ${show(session.capabilities)}`);
});

test('2026-07-28 client with tasks: a short call still answers inline', async (t) => {
    const wd = workdir(t, 'tasks-inline');
    const { session, log } = await connectModern(t, wd);
    const execution = await session.callTool('sleep', { seconds: 0.1 });
    const { outcome } = await execution.settle();
    assert.equal(execution.kind, 'immediate', `expected an inline answer for sleep 0.1, got a task ${show(execution.handle)}`);
    assert.equal(outcome.status, 'completed', `expected completed, got ${show(outcome)}\n${tail(log)}`);
    assert.equal(outcome.result.structuredContent?.exit_code, 0, `expected exit_code 0 in ${show(outcome.result)}`);
    assert.equal(outcome.result.structuredContent?.job_id, undefined, `expected no job for a short call: ${show(outcome.result)}`);
});

test('2026-07-28 client with tasks: async_mode answers a CreateTaskResult; tasks/get goes working -> completed; job_status sees the same job', async (t) => {
    const wd = workdir(t, 'tasks-async');
    const { client, session, raw, log } = await connectModern(t, wd);
    const started = Date.now();
    const execution = await session.callTool('sleep', { seconds: 2, async_mode: true });
    const taskId = await expectTask(execution, 'sleep 2 with async_mode', log);
    assert.ok(Date.now() - started < 1000, `the task answer took ${Date.now() - started} ms: it should come at once`);
    const created = lastCreateTaskResult(raw);
    checkCreateTaskResult(created, taskId);
    assert.equal(created.status, 'working', `a 2 s sleep should still be working: ${show(created)}`);

    // The task is the job: the tool-level face shows it under the same id.
    const job = await jobStatus(client, taskId, log);
    assert.equal(job.job_id, taskId, `job_status for the task id answered ${show(job)}`);
    assert.equal(job.tool, 'sleep');
    assert.ok(['pending', 'running'].includes(job.status), `expected pending or running, got ${show(job)}`);

    const first = await session.task(taskId).snapshot();
    assert.equal(first.status, 'working', `tasks/get right after the call: ${show(first.raw)}`);
    assert.equal(typeof first.statusMessage, 'string', `expected a statusMessage from tasks/get: ${show(first.raw)}`);

    const events = [];
    const { outcome } = await execution.settle({
        onEvent: (event) => {
            if (event.type === 'task') events.push(event.task.status);
        },
    });
    assert.equal(outcome.status, 'completed', `expected the task completed, got ${show(outcome)}\n${tail(log)}`);
    const result = outcome.result;
    assert.equal(result.structuredContent?.exit_code, 0, `expected the sleep's CallToolResult (exit_code 0), got ${show(result)}`);
    assert.equal(typeof result.structuredContent?.runtime_s, 'number', `expected runtime_s in ${show(result.structuredContent)}`);
    assert.match(textOf(result), /exit code 0/, `expected the command's text in ${show(result)}`);
    assert.notEqual(result.isError, true);
    assert.ok(Date.now() - started >= 1900, 'the task completed before the 2 s sleep could have');

    // The raw tasks/get answers: working first, completed with the result last.
    const gets = raw.exchangesFor('tasks/get').map((exchange) => exchange.response.result);
    assert.ok(gets.length >= 2, `expected several tasks/get answers, got ${show(gets)}`);
    assert.equal(gets[0].status, 'working', `first tasks/get: ${show(gets[0])}`);
    const last = gets[gets.length - 1];
    assert.equal(last.resultType, 'complete', `tasks/get answers resultType "complete": ${show(last)}`);
    assert.equal(last.status, 'completed', `last tasks/get: ${show(last)}`);
    assert.equal(last.taskId, taskId);
    assert.deepEqual(last.result?.structuredContent, result.structuredContent);
    assert.ok(events.every((status) => ['working', 'completed'].includes(status)), `statuses seen: ${show(events)}`);

    const done = await jobStatus(client, taskId, log);
    assert.equal(done.status, 'completed', `job_status after the task completed: ${show(done)}`);
    assert.equal(done.result?.exit_code, 0, `job_status result: ${show(done)}`);
});

test('2026-07-28 client with tasks: a call still running at the deadline becomes a task', async (t) => {
    const wd = workdir(t, 'tasks-deadline');
    const { session, raw, log } = await connectModern(t, wd, { extra: ['--deadline-s', '1'] });
    const started = Date.now();
    const execution = await session.callTool('sleep', { seconds: 2.5 });
    const answeredMs = Date.now() - started;
    const taskId = await expectTask(execution, 'sleep 2.5 with --deadline-s 1', log);
    assert.ok(answeredMs >= 900 && answeredMs < 2300, `the task should be answered at the 1 s deadline, it took ${answeredMs} ms`);
    checkCreateTaskResult(lastCreateTaskResult(raw), taskId);
    const { outcome } = await execution.settle();
    assert.equal(outcome.status, 'completed', `expected completed, got ${show(outcome)}\n${tail(log)}`);
    assert.equal(outcome.result.structuredContent?.exit_code, 0, `expected exit_code 0 in ${show(outcome.result)}`);
});

test('2026-07-28 client with tasks: tasks/cancel ends the task cancelled and stops the work', async (t) => {
    const wd = workdir(t, 'tasks-cancel');
    const { client, session, raw, log } = await connectModern(t, wd);
    const marker = path.join(wd.dir, 'touched');
    const started = Date.now();
    const execution = await session.callTool('sleep_then_touch', { seconds: 2, path: marker, async_mode: true });
    const taskId = await expectTask(execution, 'sleep_then_touch with async_mode', log);
    await sleep(300);
    await execution.cancel();
    const cancels = raw.exchangesFor('tasks/cancel');
    assert.equal(cancels.length, 1, `expected one tasks/cancel on the wire, saw ${show(cancels)}`);
    assert.equal(cancels[0].response.error, undefined, `tasks/cancel failed: ${show(cancels[0].response)}\n${tail(log)}`);
    assert.equal(cancels[0].response.result?.resultType, 'complete', `tasks/cancel answer: ${show(cancels[0].response)}`);

    const { statuses, view } = await pollUntilTerminal(session, taskId, 2000);
    assert.equal(view.status, 'cancelled', `expected tasks/get to reach cancelled, saw ${show(statuses)}: ${show(view.raw)}`);
    const job = await jobStatus(client, taskId, log);
    assert.equal(job.status, 'cancelled', `job_status after tasks/cancel: ${show(job)}`);

    // The command would have touched the file at 2 s: give it a margin past that.
    await sleep(Math.max(0, 3000 - (Date.now() - started)));
    assert.equal(existsSync(marker), false, `the command kept running after tasks/cancel (it created ${marker})\n${tail(log)}`);
});

test('2026-07-28 client WITHOUT the tasks extension: async_mode answers the tool-level job face', async (t) => {
    const wd = workdir(t, 'tasks-none');
    const { client, log } = await connectModern(t, wd, { tasks: false });
    assert.equal(client.getNegotiatedProtocolVersion(), '2026-07-28');
    const answer = await client.callTool({ name: 'sleep', arguments: { seconds: 1, async_mode: true } });
    const job = answer.structuredContent;
    assert.equal(typeof job?.job_id, 'string', `expected structuredContent.job_id, got ${show(answer)}\n${tail(log)}`);
    assert.ok(['pending', 'running'].includes(job.status), `expected pending or running, got ${show(job)}`);
    const done = await jobStatus(client, job.job_id, log, 20);
    assert.equal(done.status, 'completed', `job_status with wait_s: ${show(done)}`);
});
