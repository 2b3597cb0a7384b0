// Shared helpers for the TypeScript-client end-to-end tests (ts_*.test.mjs, run with
// `node --test` from tests/clients; scripts/clients.sh does that).
//
// Each test gets its own temporary directory with a data directory, a root and a
// config file declaring a few command tools, starts the real `smart-async serve`
// over stdio through the client's own StdioClientTransport, and closes the client
// (which stops the server) at the end. The server's stderr is captured so that a
// failing assertion can show what the server logged. Tests of the Streamable HTTP
// face start `serve --http` as a child process instead (startHttpServer), optionally
// with [auth] tokens made by the real `smart-async token new` (writeAuthConfig).

import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFileSync, mkdtempSync, mkdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client as ClassicClient } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport as ClassicStdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport as ClassicHttpClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { Client as ModernClient } from '@modelcontextprotocol/client';
import { StdioClientTransport as ModernStdioClientTransport } from '@modelcontextprotocol/client/stdio';
import { createTaskSessionFromClient } from '@modelcontextprotocol/ext-tasks/client';

export const CLIENTS_DIR = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(CLIENTS_DIR, '..', '..');

/** The server binary: $SMART_ASYNC_BIN (relative paths resolve against the repo). */
export function serverBin() {
    const configured = process.env.SMART_ASYNC_BIN || 'target/debug/smart-async';
    const bin = path.isAbsolute(configured) ? configured : path.join(REPO, configured);
    if (!existsSync(bin)) {
        throw new Error(`smart-async binary not found at ${bin}: run \`cargo build\` or set SMART_ASYNC_BIN`);
    }
    return bin;
}

/** Command tools every test server offers. */
export const CONFIG_TOML = `
[[command]]
name = "sleep"
description = "Sleep for a number of seconds"
argv = ["sleep", "{seconds}"]
timeout_s = 600
[command.params.seconds]
type = "number"
description = "Seconds to sleep"
required = true

[[command]]
name = "sleep_then_touch"
description = "Sleep, then create a file"
argv = ["sh", "-c", "sleep \\"$0\\" && touch \\"$1\\"", "{seconds}", "{path}"]
timeout_s = 600
[command.params.seconds]
type = "number"
description = "Seconds to sleep"
required = true
[command.params.path]
type = "string"
description = "File to create"
required = true
`;

/**
 * A fresh working directory for one test: `data/` (sled), `root/`, `config.toml`.
 * Registers its removal with the test context `t` (node:test) when given.
 */
export function workdir(t, name = 'ts') {
    const dir = mkdtempSync(path.join(tmpdir(), `smart-async-${name}-`));
    const root = path.join(dir, 'root');
    mkdirSync(root);
    const config = path.join(dir, 'config.toml');
    writeFileSync(config, CONFIG_TOML);
    const wd = { dir, data: path.join(dir, 'data'), root, config };
    onCleanup(t, () => rmSync(dir, { recursive: true, force: true }));
    return wd;
}

const cleanupStacks = new WeakMap();

/**
 * Registers `fn` to run after test `t`, last registered first (node:test runs its
 * own `after` hooks first registered first, which would remove a directory before
 * stopping the server that uses it).
 */
export function onCleanup(t, fn) {
    if (!t) return;
    let stack = cleanupStacks.get(t);
    if (!stack) {
        stack = [];
        cleanupStacks.set(t, stack);
        t.after(async () => {
            while (stack.length > 0) {
                try {
                    await stack.pop()();
                } catch (error) {
                    console.error(`cleanup failed: ${error}`);
                }
            }
        });
    }
    stack.push(fn);
}

/** `serve` arguments for a working directory, plus extra flags (e.g. --deadline-s 1). */
export function serveArgs(wd, extra = []) {
    return ['serve', '--data-dir', wd.data, '--root', wd.root, '--config', wd.config, ...extra];
}

/** Server parameters for a StdioClientTransport (either SDK: the shape is the same). */
export function stdioParams(wd, extra = []) {
    return {
        command: serverBin(),
        args: serveArgs(wd, extra),
        cwd: wd.dir,
        // RUST_LOG may be set by the caller for more detail; stderr is captured.
        env: process.env.RUST_LOG ? { RUST_LOG: process.env.RUST_LOG } : {},
        stderr: 'pipe',
    };
}

// ------------------------------------------------------------ HTTP and tokens

/**
 * A fresh token for `principal` from `smart-async token new`: {token, entry}, the
 * token its first stdout line, entry the `[[auth.tokens]]` table it prints.
 */
export function newToken(principal) {
    const out = execFileSync(serverBin(), ['token', 'new', principal], { encoding: 'utf8', timeout: 30_000 });
    const lines = out.split('\n');
    const token = lines[0].trim();
    if (!token || /\s/.test(token)) throw new Error(`token new ${principal}: no token on the first line:\n${out}`);
    const start = lines.findIndex((line) => line.trim() === '[[auth.tokens]]');
    if (start < 0) throw new Error(`token new ${principal}: no [[auth.tokens]] entry:\n${out}`);
    const entry = lines.slice(start).join('\n').trim();
    const sha256 = createHash('sha256').update(token).digest('hex');
    if (!entry.includes(`principal = "${principal}"`) || !entry.includes(`sha256 = "${sha256}"`) || entry.includes(token)) {
        throw new Error(`token new ${principal}: the entry should name the principal and hold the token's SHA-256 (${sha256}):\n${entry}`);
    }
    return { token, entry };
}

/**
 * Appends an [auth] table to the working directory's config: `admins`, and a token
 * per principal (newToken). Returns {principal: token}.
 */
export function writeAuthConfig(wd, principals, { admins = [] } = {}) {
    const tokens = {};
    const entries = [];
    for (const principal of principals) {
        const { token, entry } = newToken(principal);
        tokens[principal] = token;
        entries.push(entry);
    }
    const adminList = admins.map((name) => JSON.stringify(name)).join(', ');
    appendFileSync(wd.config, `\n[auth]\nadmins = [${adminList}]\n\n${entries.join('\n\n')}\n`);
    return tokens;
}

/** A TCP port free on 127.0.0.1 a moment ago. */
export function freePort() {
    return new Promise((resolve, reject) => {
        const probe = createServer();
        probe.once('error', reject);
        probe.listen(0, '127.0.0.1', () => {
            const { port } = probe.address();
            probe.close(() => resolve(port));
        });
    });
}

/** Resolves when `proc` exits ({code, signal}), or with null after `ms`. */
function exitOf(proc, ms) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
        return Promise.resolve({ code: proc.exitCode, signal: proc.signalCode });
    }
    return new Promise((resolve) => {
        const timer = setTimeout(() => resolve(null), ms);
        proc.once('exit', (code, signal) => {
            clearTimeout(timer);
            resolve({ code, signal });
        });
    });
}

/**
 * `smart-async serve --http 127.0.0.1:PORT` for a working directory (serveArgs plus
 * `extra`), up once it logs that it listens. Returns {url, origin, log, proc, stop};
 * `stop()` sends Ctrl-C (SIGINT) and resolves the exit {code, signal}. After `t` it is
 * stopped (killed if Ctrl-C does not stop it within 10 s).
 */
export async function startHttpServer(t, wd, extra = []) {
    for (let attempt = 0; attempt < 5; attempt++) { // the port may be taken between probe and bind
        const port = await freePort();
        const proc = spawn(serverBin(), serveArgs(wd, [...extra, '--http', `127.0.0.1:${port}`]), {
            cwd: wd.dir,
            stdio: ['ignore', 'ignore', 'pipe'],
        });
        const log = captureStderr(proc);
        const listening = await new Promise((resolve) => {
            const timer = setTimeout(() => resolve(false), 15_000);
            const check = () => {
                if (log.text.includes('listening for MCP clients')) done(true);
            };
            const done = (value) => {
                clearTimeout(timer);
                proc.stderr.off('data', check);
                proc.off('exit', onExit);
                resolve(value);
            };
            const onExit = () => done(false);
            proc.stderr.on('data', check);
            proc.once('exit', onExit);
            check();
        });
        const stop = async () => {
            if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGINT');
            const exit = await exitOf(proc, 10_000);
            if (exit) return exit;
            proc.kill('SIGKILL');
            return (await exitOf(proc, 10_000)) ?? { code: null, signal: 'SIGKILL' };
        };
        if (!listening) {
            await stop();
            if (attempt === 4) throw new Error(`the HTTP server did not start:\n${tail(log)}`);
            continue;
        }
        onCleanup(t, stop);
        const origin = `http://127.0.0.1:${port}`;
        return { url: `${origin}/mcp`, origin, log, proc, stop };
    }
}

/** Request headers that carry `Authorization: Bearer TOKEN` (none without a token). */
export function bearer(token) {
    return token === undefined ? {} : { Authorization: `Bearer ${token}` };
}

/**
 * The classic TypeScript SDK's Client over its StreamableHTTPClientTransport to `url`,
 * every request carrying the bearer token (requestInit.headers). Returns {client,
 * transport, clientErrors}; the client is closed after `t`. Rejects as connect does.
 */
export async function connectClassicHttp(t, url, { token, name = 'smart-async-ts-classic-http' } = {}) {
    const transport = new ClassicHttpClientTransport(new URL(url), { requestInit: { headers: bearer(token) } });
    const client = new ClassicClient({ name, version: '0.0.0' });
    const clientErrors = [];
    client.onerror = (error) => clientErrors.push(String(error));
    onCleanup(t, () => client.close());
    await client.connect(transport);
    return { client, transport, clientErrors };
}

/** Collects a transport's piped stderr (the server's log) into a string, capped. */
export function captureStderr(transport, limit = 64 * 1024) {
    const log = { text: '' };
    transport.stderr?.on('data', (chunk) => {
        log.text += chunk.toString();
        if (log.text.length > limit) log.text = log.text.slice(-limit);
    });
    return log;
}

/** The last lines of a captured server log, for failure messages. */
export function tail(log, lines = 25) {
    const all = log.text.trimEnd().split('\n');
    return all.slice(-lines).join('\n');
}

/** JSON for messages, cut to a readable length. */
export function show(value, max = 1500) {
    let text;
    try {
        text = JSON.stringify(value);
    } catch {
        text = String(value);
    }
    if (text === undefined) text = String(value);
    return text.length > max ? `${text.slice(0, max)}…` : text;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The text of a CallToolResult's content blocks, joined. */
export function textOf(result) {
    return (result?.content ?? [])
        .filter((block) => block.type === 'text')
        .map((block) => block.text)
        .join('\n');
}

/**
 * A host-owned JSON-RPC request coordinator on top of a connected client's
 * transport: what ext-tasks calls `rawDispatch` ("must use the host coordinator
 * that owns request IDs and response matching"). The SDK Client of
 * @modelcontextprotocol/client 2.4.0 rejects `resultType: "task"` answers
 * (SdkErrorCode.UnsupportedResultType), so task-shaped traffic (tools/call,
 * tasks/*) must bypass its response funnel.
 *
 * It uses string ids ("raw-N"), which never collide with the Client's numeric ids,
 * and takes the responses to them out of the transport's message stream before
 * the Client sees them; everything else goes on to the Client unchanged. Requests
 * are sent as given: ext-tasks already frames them with the 2026-07-28 `_meta`
 * envelope (protocol version, client info, client capabilities + tasks extension).
 *
 * It also records every message sent through it and every response it received, so
 * tests can check the raw wire shapes (CreateTaskResult, tasks/get results).
 */
export class RawDispatcher {
    constructor(transport, { defaultTimeoutMs = 30_000 } = {}) {
        this.transport = transport;
        this.defaultTimeoutMs = defaultTimeoutMs;
        this.pending = new Map();
        this.nextId = 1;
        this.exchanges = []; // {request, response}
        this.notifications = []; // every server notification seen on the wire
        const clientOnMessage = transport.onmessage;
        if (typeof clientOnMessage !== 'function') {
            throw new Error('RawDispatcher: attach after client.connect() (transport.onmessage is not set)');
        }
        transport.onmessage = (message, extra) => {
            if (message && typeof message === 'object' && 'id' in message && !('method' in message)) {
                const waiter = this.pending.get(message.id);
                if (waiter) {
                    this.pending.delete(message.id);
                    waiter(message);
                    return;
                }
            }
            if (message && typeof message === 'object' && 'method' in message && !('id' in message)) {
                this.notifications.push(message);
            }
            return clientOnMessage.call(transport, message, extra);
        };
        // Bound so it can be passed around as a bare function.
        this.dispatch = this.dispatch.bind(this);
    }

    /** Sends one request; resolves {kind: "result", result} or {kind: "error", error}. */
    dispatch(request, options = {}) {
        const id = `raw-${this.nextId++}`;
        const message = { jsonrpc: '2.0', id, method: request.method };
        if (request.params !== undefined) message.params = request.params;
        const timeoutMs = options.context?.requestTimeoutMs ?? this.defaultTimeoutMs;
        return new Promise((resolve, reject) => {
            let timer;
            const finish = () => {
                clearTimeout(timer);
                this.pending.delete(id);
                options.signal?.removeEventListener('abort', onAbort);
            };
            const onAbort = () => {
                finish();
                reject(options.signal.reason ?? new Error('aborted'));
            };
            if (options.signal?.aborted) {
                reject(options.signal.reason ?? new Error('aborted'));
                return;
            }
            options.signal?.addEventListener('abort', onAbort, { once: true });
            timer = setTimeout(() => {
                finish();
                reject(new Error(`no answer to ${request.method} within ${timeoutMs} ms`));
            }, timeoutMs);
            this.pending.set(id, (response) => {
                finish();
                const exchange = { request: message, response };
                this.exchanges.push(exchange);
                if (response.error !== undefined) resolve({ kind: 'error', error: response.error });
                else resolve({ kind: 'result', result: response.result });
            });
            this.transport.send(message).catch((error) => {
                finish();
                reject(error);
            });
        });
    }

    /** The raw exchanges for one method (e.g. "tools/call", "tasks/get"). */
    exchangesFor(method) {
        return this.exchanges.filter((exchange) => exchange.request.method === method);
    }
}

// --------------------------------------------------------------------- connecting

export const TASKS_EXTENSION = 'io.modelcontextprotocol/tasks';

/**
 * The classic TypeScript SDK (@modelcontextprotocol/sdk 1.x: `initialize`, protocol
 * up to 2025-11-25, no tasks extension) connected to a fresh server.
 * Returns {client, transport, log, clientErrors}; the client is closed (server stopped)
 * after `t`.
 */
export async function connectClassic(t, wd, { name = 'smart-async-ts-classic', extra = [] } = {}) {
    const transport = new ClassicStdioClientTransport(stdioParams(wd, extra));
    const log = captureStderr(transport);
    const client = new ClassicClient({ name, version: '0.0.0' });
    // Progress for an unknown token and the like are reported here, not thrown.
    const clientErrors = [];
    client.onerror = (error) => clientErrors.push(String(error));
    onCleanup(t, () => client.close());
    await client.connect(transport);
    return { client, transport, log, clientErrors };
}

/**
 * The 2026-07-28 TypeScript client (@modelcontextprotocol/client 2.x,
 * `versionNegotiation: {mode: 'auto'}`: `server/discover` first, `initialize` as
 * the fallback). With `tasks: true` it declares the tasks extension in its
 * capabilities and opens an ext-tasks session with a RawDispatcher (see above).
 * Returns {client, transport, log, raw, session, clientInfo, capabilities, clientErrors}.
 */
export async function connectModern(t, wd, { name = 'smart-async-ts-modern', extra = [], tasks = true } = {}) {
    const transport = new ModernStdioClientTransport(stdioParams(wd, extra));
    const log = captureStderr(transport);
    const clientInfo = { name, version: '0.0.0' };
    const capabilities = tasks ? { extensions: { [TASKS_EXTENSION]: {} } } : {};
    const client = new ModernClient(clientInfo, { capabilities, versionNegotiation: { mode: 'auto' } });
    const clientErrors = [];
    client.onerror = (error) => clientErrors.push(String(error));
    onCleanup(t, () => client.close());
    await client.connect(transport);
    const raw = new RawDispatcher(transport);
    let session;
    if (tasks) {
        session = createTaskSessionFromClient(client, {
            endpointId: `smart-async-test-${path.basename(wd.dir)}`,
            rawDispatch: raw.dispatch,
            v2RequestFraming: {
                protocolVersion: client.getNegotiatedProtocolVersion(),
                clientInfo,
                clientCapabilities: capabilities,
            },
        });
        // Closing a session cancels its unsettled task executions: tests settle
        // (or cancel) theirs first.
        onCleanup(t, () => session.close());
    }
    return { client, transport, log, raw, session, clientInfo, capabilities, clientErrors };
}
