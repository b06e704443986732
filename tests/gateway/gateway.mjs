// The MCP TypeScript SDK, a client nobody in this project wrote, uses OAuth-protected servers
// through mcpproxy-oauth, with NO auth provider of its own:
//   1. Streamable HTTP through `serve --listen`'s /mcp/{server} at a 2 s token lifetime:
//      tools/call every 100 ms across at least 10 refreshes, 0 failed calls; progress
//      notifications streamed over SSE, each seen before the result (the test server sends the
//      next one only once the client has seen the previous one).
//   2. A refresh outage while the token is still valid: 0 failed calls.
//   3. A refresh outage with the token expired: 503 with Retry-After and a JSON-RPC error naming
//      the phase (never a 401), then calls succeed again by themselves once the fault clears.
//   4. The SDK's stdio client spawning `mcpproxy-oauth stdio`, three bridges at once on the
//      daemon's data directory: one refresh per token lifetime at the test server, and each
//      bridge exits 0 when its stdin closes.
// Then every log line (daemon and bridges, at debug level) is scanned for every secret the test
// servers issued or received and for the API key.
//
// Usage: node gateway.mjs PATH/TO/mcpproxy-oauth PATH/TO/oauth-test-server
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [proxyBinary, serverBinary] = process.argv.slice(2);
if (!proxyBinary || !serverBinary) {
  console.error("usage: node gateway.mjs PATH/TO/mcpproxy-oauth PATH/TO/oauth-test-server");
  process.exit(2);
}
const DEADLINE_MS = 150_000;
const KEY = `gateway-sdk-key-${randomUUID()}`;
const dir = mkdtempSync(join(tmpdir(), "mcpproxy-oauth-gateway-"));
const children = [];
const results = [];

function check(name, condition, detail = "") {
  results.push({ name, ok: Boolean(condition) });
  console.log(`${condition ? "ok  " : "FAIL"} ${name}${detail ? `: ${detail}` : ""}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `done` (async) until it is true, at most `ms`. */
async function waitFor(what, ms, done) {
  const deadline = Date.now() + ms;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(50);
  }
}

/** Starts one OAuth test server on an ephemeral port; resolves with its base URL. */
function testServer(args) {
  const child = spawn(serverBinary, ["--port", "0", ...args], { stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).once("line", (line) => {
      const match = /^listening on (http:\/\/127\.0\.0\.1:\d+)$/.exec(line);
      match ? resolve(match[1]) : reject(new Error(`unexpected first line: ${line}`));
    });
    child.once("exit", (code) => reject(new Error(`oauth-test-server exited with ${code}`)));
  });
}

const control = async (base, path, init) => (await fetch(`${base}${path}`, init)).json();
const stats = (base) => control(base, "/control/stats");
const refreshes = async (base) => (await stats(base)).token_requests.refresh_token ?? 0;
async function fault(base, body) {
  const response = await fetch(`${base}/control/faults`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`arming ${JSON.stringify(body)}: ${response.status}`);
}
const clearFaults = (base) => fetch(`${base}/control/faults`, { method: "DELETE" });

/** `serve --listen` on an ephemeral port; resolves with the listener's base URL. */
async function startDaemon(config, logFile) {
  const child = spawn(proxyBinary, [
    "serve", "--config", config, "--data-dir", join(dir, "data"), "--listen", "127.0.0.1:0",
    "--api-key-file", join(dir, "api-key"), "--browser-command", "curl -s -o /dev/null -L",
    "--refresh-stagger", "0s", "--log-format", "json", "--log-level", "debug", "--log-file", logFile,
  ], { stdio: ["ignore", "inherit", "inherit"] });
  children.push(child);
  let base;
  await waitFor("the daemon's listener", 30_000, () => {
    if (child.exitCode !== null) throw new Error(`serve exited with ${child.exitCode}`);
    if (!existsSync(logFile)) return false;
    base = /operator API and web page on (http:\/\/127\.0\.0\.1:\d+)\//.exec(readFileSync(logFile, "utf8"))?.[1];
    return Boolean(base);
  });
  return { child, base };
}

/** A fetch that records every answer the SDK gets: status, Retry-After, challenges, 503 bodies. */
function recordingFetch(seen) {
  return async (url, init) => {
    const response = await fetch(url, init);
    const entry = {
      status: response.status,
      retryAfter: response.headers.get("retry-after"),
      challenge: response.headers.get("www-authenticate"),
    };
    if (response.status === 503) entry.body = await response.clone().json().catch(() => null);
    seen.push(entry);
    return response;
  };
}

/** An SDK client on the gateway: no auth provider, only the gateway's API key. */
async function httpClient(gateway, server, seen) {
  const transport = new StreamableHTTPClientTransport(new URL(`${gateway}/mcp/${server}`), {
    requestInit: { headers: { "X-API-Key": KEY } },
    fetch: recordingFetch(seen),
  });
  const client = new Client({ name: `sdk-${server}`, version: "1" });
  await client.connect(transport);
  return client;
}

/** tools/call echo every `everyMs` until `until()`; counts what came back. */
async function callEvery(client, label, everyMs, deadlineMs, until) {
  const outcome = { ok: 0, failed: [] };
  const deadline = Date.now() + deadlineMs;
  for (let n = 1; !(await until(outcome)); n++) {
    if (Date.now() > deadline) throw new Error(`${label}: not done within ${deadlineMs} ms (${JSON.stringify(outcome)})`);
    const started = Date.now();
    try {
      const result = await client.callTool({ name: "echo", arguments: { message: `${label} ${n}` } });
      if (result.content?.[0]?.text === `${label} ${n}`) outcome.ok++;
      else outcome.failed.push(`wrong result: ${JSON.stringify(result)}`);
    } catch (e) {
      outcome.failed.push(String(e?.message ?? e));
    }
    await sleep(Math.max(0, everyMs - (Date.now() - started)));
  }
  return outcome;
}

/** 1. 2 s tokens: at least 10 refreshes under calls every 100 ms, none failing. */
async function steadyRefreshes(gateway, base) {
  const seen = [];
  const client = await httpClient(gateway, "steady", seen);
  const first = await refreshes(base);
  const outcome = await callEvery(client, "steady", 100, 60_000, async () => (await refreshes(base)) - first >= 10);
  check("2 s tokens: at least 10 refreshes under tools/call every 100 ms", (await refreshes(base)) - first >= 10,
    `${(await refreshes(base)) - first} refreshes, ${outcome.ok} calls`);
  check("2 s tokens: 0 failed calls", outcome.failed.length === 0, outcome.failed.slice(0, 3).join("; "));
  check("2 s tokens: the client never saw a 401 or a challenge",
    seen.every((s) => s.status !== 401 && !s.challenge), JSON.stringify(seen.filter((s) => s.status >= 400).slice(0, 3)));
  await client.close();
}

/** 1b. Progress notifications are streamed: each one releases the next, then the result. */
async function streaming(gateway) {
  const client = await httpClient(gateway, "steady", []);
  const key = randomUUID();
  const order = [];
  const releases = [];
  const result = await client.callTool({ name: "progress", arguments: { steps: 3, key } }, undefined, {
    timeout: 30_000,
    onprogress: (progress) => {
      order.push(`progress ${progress.progress}`);
      releases.push(client.callTool({ name: "progress_release", arguments: { key } }));
    },
  });
  order.push("result");
  const released = await Promise.all(releases);
  check("streaming: each progress notification reached the client before the result",
    order.join(",") === "progress 1,progress 2,progress 3,result", order.join(","));
  check("streaming: the server was released after each notification",
    result.content?.[0]?.text === "3 of 3 notifications released" && !result.isError
      && released.every((r) => r.content?.[0]?.text === "true"), JSON.stringify(result));
  await client.close();
}

/** 2. A refresh outage while the token is still valid: no call fails. */
async function outageWhileValid(gateway, base) {
  const seen = [];
  const client = await httpClient(gateway, "outage", seen);
  // The next two refreshes fail (503 temporarily_unavailable); the third succeeds, all within
  // the 40 s token's life (refresh at ~75%, retries after ~1 s and ~2 s).
  await fault(base, { target: "refresh", kind: "temporarily_unavailable", count: 2 });
  const outcome = await callEvery(client, "outage", 100, 60_000, async () => {
    const s = await stats(base);
    return (s.faults_fired.refresh ?? 0) >= 2 && (s.token_requests.refresh_token ?? 0) >= 3;
  });
  const s = await stats(base);
  check("outage with a valid token: the refreshes failed, then one succeeded",
    s.faults_fired.refresh === 2 && s.token_requests.refresh_token === 3, JSON.stringify(s.token_requests));
  check("outage with a valid token: 0 failed calls", outcome.failed.length === 0 && outcome.ok > 0,
    `${outcome.ok} ok, ${outcome.failed.length} failed: ${outcome.failed.slice(0, 3).join("; ")}`);
  await client.close();
}

/** 3. A refresh outage with the token expired: 503 + Retry-After, then recovery by itself. */
async function outageExpired(gateway, base) {
  const seen = [];
  const client = await httpClient(gateway, "expired", seen);
  await fault(base, { target: "refresh", kind: "temporarily_unavailable" });
  const down = await callEvery(client, "expired", 100, 30_000, async () => seen.some((s) => s.status === 503));
  const unavailable = seen.find((s) => s.status === 503);
  const data = unavailable?.body?.error?.data ?? {};
  check("expired token, failing refresh: 503 with Retry-After",
    Number(unavailable?.retryAfter) >= 1 && !unavailable?.challenge, JSON.stringify(unavailable));
  check("expired token: the 503 body is a JSON-RPC error naming the phase and what to do",
    unavailable?.body?.jsonrpc === "2.0" && ["backing_off", "retrying", "refreshing"].includes(data.phase)
      && data.action === "wait" && data.server === "expired", JSON.stringify(unavailable?.body));
  check("expired token: every failed call was a 503, never a 401",
    down.failed.length > 0 && down.failed.every((f) => f.includes("503")) && seen.every((s) => s.status !== 401),
    down.failed.slice(0, 2).join("; "));
  await clearFaults(base);
  let recovered = false;
  await callEvery(client, "recovered", 100, 40_000, async (o) => (recovered = o.ok > 0));
  check("expired token: calls succeed again by themselves once the fault clears", recovered);
  await client.close();
}

/** 4. Three stdio bridges and the daemon on one data directory: one refresh per lifetime. */
async function bridges(config, base, ttlSeconds, bridgeLogs) {
  const clients = [];
  for (let i = 0; i < 3; i++) {
    const transport = new StdioClientTransport({
      command: proxyBinary,
      args: ["stdio", "shared", "--config", config, "--data-dir", join(dir, "data"), "--non-interactive",
        "--log-format", "json", "--log-level", "debug"],
      stderr: "pipe",
    });
    transport.stderr.on("data", (chunk) => bridgeLogs.push(chunk.toString()));
    const client = new Client({ name: `bridge-${i}`, version: "1" });
    await client.connect(transport);
    clients.push({ client, transport });
  }
  const before = await refreshes(base);
  const started = Date.now();
  const windowMs = 4 * ttlSeconds * 1000;
  const outcomes = await Promise.all(clients.map(({ client }, i) =>
    callEvery(client, `bridge ${i}`, 200, windowMs + 20_000, async () => Date.now() - started >= windowMs)));
  const elapsed = (Date.now() - started) / 1000;
  const made = (await refreshes(base)) - before;
  // Refreshed at ~75% of its life: about elapsed / (0.75 ttl) refreshes for everyone together;
  // four processes refreshing on their own would make four times as many.
  const ideal = elapsed / (0.75 * ttlSeconds);
  check("stdio: three bridges and the daemon share one refresh per token lifetime",
    made >= 1 && made <= Math.ceil(ideal) + 1, `${made} refreshes in ${elapsed.toFixed(1)} s (one per lifetime: ~${ideal.toFixed(1)})`);
  const s = await stats(base);
  check("stdio: no refresh token reused, no second login",
    s.refresh_token_reuse === 0 && s.authorize_requests === 1, JSON.stringify({ reuse: s.refresh_token_reuse, logins: s.authorize_requests }));
  check("stdio: every call through every bridge succeeded",
    outcomes.every((o) => o.failed.length === 0 && o.ok > 0),
    outcomes.map((o) => `${o.ok} ok, ${o.failed.length} failed ${o.failed.slice(0, 1)}`).join("; "));
  for (const [i, { client, transport }] of clients.entries()) {
    const child = transport._process; // the SDK ends stdin, waits up to 2 s, then kills
    await client.close();
    check(`stdio: bridge ${i} exits 0 when its stdin closes`, child.exitCode === 0 && child.signalCode === null,
      `exit ${child.exitCode}, signal ${child.signalCode}`);
  }
}

async function main() {
  const [steady, outage, expired, shared] = await Promise.all([
    testServer(["--access-token-ttl", "2s"]),
    testServer(["--access-token-ttl", "40s"]),
    testServer(["--access-token-ttl", "2s"]),
    testServer(["--access-token-ttl", "4s"]),
  ]);
  writeFileSync(join(dir, "api-key"), KEY, { mode: 0o600 });
  const config = join(dir, "mcp_config.json");
  writeFileSync(config, JSON.stringify({ mcpServers: [
    { name: "steady", url: `${steady}/mcp`, oauth: {} },
    { name: "outage", url: `${outage}/mcp`, oauth: {} },
    { name: "expired", url: `${expired}/mcp`, oauth: {} },
    { name: "shared", url: `${shared}/mcp`, oauth: {} },
  ] }));
  const logFile = join(dir, "serve.log");
  const daemon = await startDaemon(config, logFile);
  await waitFor("every server logged in", 30_000, async () => {
    const response = await fetch(`${daemon.base}/api/v1/servers`, { headers: { "X-API-Key": KEY } });
    const { servers } = await response.json();
    return servers.length === 4 && servers.every((s) => s.authenticated);
  });
  const bridgeLogs = [];
  await Promise.all([
    (async () => { await streaming(daemon.base); await steadyRefreshes(daemon.base, steady); })(),
    outageWhileValid(daemon.base, outage),
    outageExpired(daemon.base, expired),
    bridges(config, shared, 4, bridgeLogs),
  ]);
  daemon.child.kill("SIGTERM");
  await waitFor("serve stopped after SIGTERM", 20_000, () => daemon.child.exitCode !== null);
  check("serve exits 0 on SIGTERM", daemon.child.exitCode === 0, `exit ${daemon.child.exitCode}`);

  const logs = readFileSync(logFile, "utf8") + bridgeLogs.join("");
  const leaked = [];
  for (const base of [steady, outage, expired, shared]) {
    const secrets = await control(base, "/control/secrets");
    for (const value of Object.values(secrets).flat()) {
      if (typeof value === "string" && value.length >= 8 && logs.includes(value)) leaked.push(value.slice(0, 6));
    }
  }
  if (logs.includes(KEY)) leaked.push("the API key");
  check("no token, code, secret or API key in any log line", leaked.length === 0 && logs.length > 0,
    `${logs.split("\n").length} lines scanned; leaked: ${leaked.join(", ")}`);
}

const timer = setTimeout(() => {
  console.error(`gateway: no result after ${DEADLINE_MS} ms`);
  for (const child of children) child.kill("SIGKILL");
  process.exit(1);
}, DEADLINE_MS);
try {
  await main();
} catch (e) {
  check("the run completed", false, e?.stack ?? String(e));
} finally {
  clearTimeout(timer);
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
}
const failed = results.filter((r) => !r.ok);
console.log(`${results.length - failed.length}/${results.length} checks passed`);
process.exit(failed.length === 0 && results.length > 0 ? 0 : 1);
