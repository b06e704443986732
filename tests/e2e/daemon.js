// Starts the real binaries for the page tests: the OAuth test server (8 s access tokens) and
// `mcpproxy-oauth serve --listen 127.0.0.1:0 --non-interactive`, both on ephemeral loopback
// ports, in a fresh data directory. Every wait is bounded. The page is opened through the URL
// serve prints (`pageUrl`, with the API key it created in the data directory, or `apiKey`).
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const root = path.resolve(import.meta.dirname, "../..");
const bin = (name) => process.env[`${name.toUpperCase().replaceAll("-", "_")}_BIN`] || path.join(root, "target/debug", name);

function waitForLine(child, stream, pattern, what, ms = 30_000) {
  return new Promise((resolve, reject) => {
    let seen = "";
    const timer = setTimeout(() => reject(new Error(`${what} did not start within ${ms} ms:\n${seen}`)), ms);
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`${what} exited (${code}):\n${seen}`)); });
    child[stream].on("data", (chunk) => {
      seen += chunk.toString();
      const m = seen.match(pattern);
      if (m) { clearTimeout(timer); resolve(m); }
    });
  });
}

function daemonEnv(apiKey) {
  const env = { ...process.env };
  delete env.MCPPROXY_OAUTH_API_KEY;
  if (apiKey) env.MCPPROXY_OAUTH_API_KEY = apiKey;
  return env;
}

export async function startDaemon({ noBrowser = false, apiKey = null, dpopRequired = false } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mcpproxy-oauth-e2e-"));
  const oauth = spawn(bin("oauth-test-server"), ["--port", "0", "--access-token-ttl", "8s", ...(dpopRequired ? ["--dpop-required"] : [])], { stdio: ["ignore", "pipe", "pipe"] });
  // Its stderr is drained to a file: an unread pipe would stop the server once full.
  const oauthLog = fs.openSync(path.join(dir, "oauth-test-server.log"), "a");
  oauth.stderr.on("data", (chunk) => fs.writeSync(oauthLog, chunk));
  const [, oauthUrl] = await waitForLine(oauth, "stdout", /listening on (http:\/\/\S+)/, "the OAuth test server");
  const config = path.join(dir, "mcp_config.json");
  fs.writeFileSync(config, JSON.stringify({ mcpServers: [{ name: "demo", url: `${oauthUrl}/mcp`, oauth: {} }] }));
  const log = fs.openSync(path.join(dir, "serve.log"), "a");
  const serve = spawn(bin("mcpproxy-oauth"), [
    "serve", "--config", config, "--data-dir", path.join(dir, "data"), "--listen", "127.0.0.1:0", "--non-interactive",
    // The test server approves at once: following its redirect is the whole "browser" login.
    // With noBrowser the link is only printed: a person opens it from the page's banner.
    ...(noBrowser ? ["--no-browser"] : ["--browser-command", "curl -s -o /dev/null -L"]),
    "--log-format", "json",
  ], { stdio: ["ignore", "pipe", "pipe"], env: daemonEnv(apiKey) });
  serve.stderr.on("data", (chunk) => fs.writeSync(log, chunk));
  // serve prints the page's URL, with the API key, on its standard output (never in the log).
  const [, pageUrl, apiUrl, key] = await waitForLine(serve, "stdout", /Open the web page: ((http:\/\/127\.0\.0\.1:\d+)\/\?apikey=(\S+))/, "mcpproxy-oauth serve");
  return {
    oauthUrl, apiUrl, pageUrl, key, dir,
    async control(method, route, body) {
      const r = await fetch(`${oauthUrl}${route}`, { method, headers: { "content-type": "application/json" }, body: body && JSON.stringify(body) });
      if (!r.ok) throw new Error(`${method} ${route}: ${r.status} ${await r.text()}`);
      return r.status === 204 ? null : r.json().catch(() => null);
    },
    async api(route, method = "GET") {
      const r = await fetch(`${apiUrl}${route}`, { method, headers: { "x-api-key": key } });
      return r.json();
    },
    async stop() {
      // SIGTERM: the same clean shutdown as Ctrl-C.
      const exited = new Promise((resolve) => serve.on("exit", (code, signal) => resolve({ code, signal })));
      serve.kill("SIGTERM");
      const timer = new Promise((resolve) => setTimeout(() => resolve(null), 10_000));
      const result = await Promise.race([exited, timer]);
      if (!result) serve.kill("SIGKILL");
      oauth.kill("SIGTERM");
      return result;
    },
  };
}
