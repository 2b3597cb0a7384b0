// Issue 17: bearer-token authentication on the Streamable HTTP face, seen by the classic
// official TypeScript SDK, @modelcontextprotocol/sdk 1.32.2 (`Client` +
// `StreamableHTTPClientTransport`). The server is the real `smart-async serve --http`,
// its config holding [[auth.tokens]] entries made by the real `smart-async token new`.
//
// What the client does that matters here (read from its dist/esm/client/streamableHttp.js):
// - `requestInit.headers` are added to every request it makes (the POSTs and the GET
//   stream), so `{ Authorization: 'Bearer TOKEN' }` there authenticates the session.
// - Without an authProvider, a 401 answer to a POST rejects the send (and so
//   `client.connect`) with StreamableHTTPError, `code` 401 and the message
//   "Streamable HTTP error: Error POSTing to endpoint: <the response body>".
// - With an authProvider it would read the challenge with extractWWWAuthenticateParams
//   and discover the Protected Resource Metadata (RFC 9728); both are checked here
//   directly against the server's 401 and metadata.
//
// Run from tests/clients: `node --test ts_auth.test.mjs` (scripts/clients.sh does).

import test from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
    discoverOAuthProtectedResourceMetadata,
    extractWWWAuthenticateParams,
} from '@modelcontextprotocol/sdk/client/auth.js';
import {
    connectClassicHttp,
    show,
    startHttpServer,
    tail,
    textOf,
    workdir,
    writeAuthConfig,
} from './ts_helpers.mjs';

/** A server with tokens for alice and bob; ops is an admin without a token here. */
async function authServer(t, name) {
    const wd = workdir(t, name);
    const tokens = writeAuthConfig(wd, ['alice', 'bob'], { admins: ['ops'] });
    const server = await startHttpServer(t, wd);
    return { wd, tokens, server };
}

/** structuredContent of a successful CallToolResult, failing clearly otherwise. */
function structured(result, what, log) {
    assert.notEqual(result?.isError, true, `${what} failed: ${show(result)}\n--- server log ---\n${tail(log)}`);
    assert.ok(
        result?.structuredContent && typeof result.structuredContent === 'object',
        `${what}: expected structuredContent, got ${show(result)}\n--- server log ---\n${tail(log)}`,
    );
    return result.structuredContent;
}

/** `tool {job_id}` must fail for this client; its error text with the id made generic. */
async function unknownTo(client, tool, jobId) {
    const result = await client.callTool({ name: tool, arguments: { job_id: jobId } });
    assert.equal(result.isError, true, `${tool}(${jobId}) should fail for this caller, got ${show(result)}`);
    return textOf(result).replaceAll(jobId, 'ID');
}

test('classic SDK over HTTP: with its bearer token in requestInit.headers, the client lists tools and calls them', async (t) => {
    const { tokens, server } = await authServer(t, 'auth-ok');
    const { client: alice } = await connectClassicHttp(t, server.url, { token: tokens.alice, name: 'alice' });
    assert.equal(alice.getServerVersion()?.name, 'smart-async');

    const { tools } = await alice.listTools();
    const names = tools.map((tool) => tool.name);
    for (const expected of ['sleep', 'hash_files', 'job_status', 'list_jobs', 'cancel_job']) {
        assert.ok(names.includes(expected), `expected tool ${expected} in ${show(names)}\n${tail(server.log)}`);
    }

    const inline = structured(await alice.callTool({ name: 'sleep', arguments: { seconds: 0.1 } }), 'sleep 0.1', server.log);
    assert.equal(inline.job_id, undefined, `expected an inline answer, got ${show(inline)}`);
    assert.equal(inline.exit_code, 0, `expected exit_code 0, got ${show(inline)}`);

    // A job started with alice's token is alice's: bob's token sees it as an id nobody had.
    const job = structured(
        await alice.callTool({ name: 'sleep', arguments: { seconds: 0.2, async_mode: true } }),
        'sleep with async_mode',
        server.log,
    );
    assert.equal(typeof job.job_id, 'string', `expected a job handle, got ${show(job)}`);
    const { client: bob } = await connectClassicHttp(t, server.url, { token: tokens.bob, name: 'bob' });
    assert.equal(
        await unknownTo(bob, 'job_status', job.job_id),
        await unknownTo(bob, 'job_status', randomUUID()),
        "to bob, alice's job must read exactly like an unknown id",
    );
    const bobsJobs = structured(await bob.callTool({ name: 'list_jobs', arguments: {} }), 'list_jobs (bob)', server.log);
    assert.deepEqual(bobsJobs.jobs, [], `bob started no job: ${show(bobsJobs)}`);

    const status = structured(
        await alice.callTool({ name: 'job_status', arguments: { job_id: job.job_id, wait_s: 20 } }),
        'job_status (alice)',
        server.log,
    );
    assert.equal(status.job_id, job.job_id);
    assert.equal(status.status, 'completed', `expected alice's job completed, got ${show(status)}`);
    const alicesJobs = structured(await alice.callTool({ name: 'list_jobs', arguments: {} }), 'list_jobs (alice)', server.log);
    assert.deepEqual(alicesJobs.jobs.map((j) => j.job_id), [job.job_id], show(alicesJobs));

    await alice.close();
    await bob.close();
    const exit = await server.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, `the server on Ctrl-C: ${show(exit)}\n${tail(server.log)}`);
});

test('classic SDK over HTTP: without a token, or with a wrong one, connect fails with a 401', async (t) => {
    const { tokens, server } = await authServer(t, 'auth-refused');

    for (const [what, token, says] of [
        ['no token', undefined, 'needs a bearer token'],
        ['a wrong token', 'sa_not-a-token-of-this-server', "not one of this server's"],
    ]) {
        await assert.rejects(
            connectClassicHttp(t, server.url, { token, name: `refused-${what}` }),
            (error) => {
                assert.ok(error instanceof StreamableHTTPError, `${what}: expected StreamableHTTPError, got ${error}`);
                assert.equal(error.code, 401, `${what}: ${error}`);
                assert.ok(error.message.includes(says), `${what}: the error should carry the server's ${show(says)}: ${error.message}`);
                return true;
            },
        );
    }

    // The challenge names the Protected Resource Metadata, as the SDK's own parser reads it,
    // and the SDK's discovery finds that metadata from the endpoint's URL alone.
    const refused = await fetch(server.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
    });
    await refused.body?.cancel();
    assert.equal(refused.status, 401);
    const challenge = extractWWWAuthenticateParams(refused);
    assert.equal(
        challenge.resourceMetadataUrl?.href,
        `${server.origin}/.well-known/oauth-protected-resource/mcp`,
        `WWW-Authenticate: ${refused.headers.get('www-authenticate')}`,
    );
    assert.equal(challenge.error, undefined, 'no token was sent, so none was invalid');
    const metadata = await discoverOAuthProtectedResourceMetadata(server.url);
    assert.equal(metadata.resource, server.url, show(metadata));
    assert.ok(metadata.bearer_methods_supported?.includes('header'), show(metadata));

    // The refusals did not hurt the server: the right token is served.
    const { client } = await connectClassicHttp(t, server.url, { token: tokens.alice });
    const result = await client.callTool({ name: 'sleep', arguments: { seconds: 0 } });
    assert.equal(structured(result, 'sleep 0', server.log).exit_code, 0);
});
