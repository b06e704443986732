// A client nobody in this project wrote, the MCP TypeScript SDK, walks the OAuth test server:
// discovery, dynamic registration, authorization (PKCE S256), code exchange with RFC 8707
// `resource`, MCP calls, and a silent refresh after the access token expires.
//
// Usage: node sdk-client.mjs PATH/TO/oauth-test-server
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const serverBinary = process.argv[2];
if (!serverBinary) {
  console.error("usage: node sdk-client.mjs PATH/TO/oauth-test-server");
  process.exit(2);
}
const DEADLINE_MS = 60_000;
const REDIRECT_URL = "http://127.0.0.1:53682/callback"; // never listened on: the "browser" reads the redirect
const results = [];

function check(name, condition, detail = "") {
  results.push({ name, ok: Boolean(condition) });
  console.log(`${condition ? "ok  " : "FAIL"} ${name}${detail ? `: ${detail}` : ""}`);
}

/** Starts the server binary on an ephemeral port; resolves with its base URL and the child. */
function startServer() {
  const child = spawn(serverBinary, ["--port", "0", "--access-token-ttl", "60s", "--require-resource"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (line) => {
      const match = /^listening on (http:\/\/127\.0\.0\.1:\d+)$/.exec(line);
      match ? resolve({ child, baseUrl: match[1] }) : reject(new Error(`unexpected first line: ${line}`));
    });
    child.once("exit", (code) => reject(new Error(`oauth-test-server exited with ${code}`)));
  });
}

/** An in-memory OAuthClientProvider whose "browser" follows the authorization redirect once. */
class MemoryProvider {
  constructor() {
    this.client = undefined;
    this.savedTokens = undefined;
    this.verifier = undefined;
    this.authorizationUrl = undefined;
  }
  get redirectUrl() { return REDIRECT_URL; }
  get clientMetadata() {
    return { client_name: "mcp-sdk-interop", redirect_uris: [REDIRECT_URL], token_endpoint_auth_method: "none",
             grant_types: ["authorization_code", "refresh_token"], response_types: ["code"] };
  }
  state() { return "interop-state"; }
  clientInformation() { return this.client; }
  saveClientInformation(info) { this.client = info; }
  tokens() { return this.savedTokens; }
  saveTokens(tokens) { this.savedTokens = tokens; }
  redirectToAuthorization(url) { this.authorizationUrl = url; }
  saveCodeVerifier(v) { this.verifier = v; }
  codeVerifier() { return this.verifier; }
}

async function json(url, init) {
  const response = await fetch(url, init);
  return response.json();
}

async function main() {
  const { child, baseUrl } = await startServer();
  const timer = setTimeout(() => { console.error(`interop: no result after ${DEADLINE_MS} ms`); child.kill(); process.exit(1); }, DEADLINE_MS);
  try {
    const mcpUrl = new URL(`${baseUrl}/mcp`);
    const provider = new MemoryProvider();

    // 1. The first connect is refused; the SDK discovers, registers and asks for authorization.
    let refused = false;
    try {
      await new Client({ name: "interop", version: "1" }).connect(new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider }));
    } catch (e) {
      refused = e instanceof UnauthorizedError;
    }
    check("unauthenticated connect is refused with UnauthorizedError", refused);
    check("the SDK registered a client dynamically", provider.client?.client_id?.startsWith("client_"));
    const auth = provider.authorizationUrl;
    check("the SDK built an authorization URL with PKCE S256", auth?.searchParams.get("code_challenge_method") === "S256");
    check("the authorization URL carries resource", auth?.searchParams.get("resource") === mcpUrl.href, auth?.searchParams.get("resource"));

    // 2. The "browser": the server approves at once and redirects back with code, state and iss.
    const redirect = await fetch(auth, { redirect: "manual" });
    const location = new URL(redirect.headers.get("location"));
    check("authorization redirects to the client's redirect URI", redirect.status === 302 && location.href.startsWith(REDIRECT_URL));
    check("the redirect returns the client's state", location.searchParams.get("state") === "interop-state");
    const transport = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider });
    await transport.finishAuth(location.searchParams.get("code"));
    check("code exchange stored tokens with a refresh token", Boolean(provider.savedTokens?.refresh_token));

    // 3. Connected: MCP calls succeed.
    const client = new Client({ name: "interop", version: "1" });
    await client.connect(transport);
    const tools = await client.listTools();
    check("tools/list returns echo and get_time", tools.tools.map((t) => t.name).join(",") === "echo,get_time");
    const echo = await client.callTool({ name: "echo", arguments: { message: "hello" } });
    check("tools/call echo answers", echo.content?.[0]?.text === "hello");

    // 4. The access token expires (the server's clock moves past its lifetime): the SDK refreshes on 401.
    const oldAccess = provider.savedTokens.access_token;
    await fetch(`${baseUrl}/control/clock`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ advance_ms: 61_000 }) });
    const after = await client.callTool({ name: "echo", arguments: { message: "after refresh" } });
    check("a call after expiry succeeds", after.content?.[0]?.text === "after refresh");
    check("the SDK holds a new access token", provider.savedTokens.access_token !== oldAccess);

    const stats = await json(`${baseUrl}/control/stats`);
    check("exactly one authorization request", stats.authorize_requests === 1, JSON.stringify(stats.authorize_requests));
    check("one code exchange and one refresh", stats.token_requests.authorization_code === 1 && stats.token_requests.refresh_token === 1, JSON.stringify(stats.token_requests));
    check("one registration", stats.registrations === 1);
    check("the expired token was refused with 401", stats.mcp_401 >= 2, `mcp_401=${stats.mcp_401}`);
    check("every request named the MCP endpoint as resource", stats.resources_received.length >= 3 && stats.resources_received.every((r) => r === mcpUrl.href));
    await client.close();
  } finally {
    clearTimeout(timer);
    child.kill();
  }
}

main()
  .catch((e) => check("interop run completes", false, e?.stack ?? String(e)))
  .finally(() => {
    const failed = results.filter((r) => !r.ok).length;
    console.log(`interop: ${results.length - failed} passed, ${failed} failed`);
    process.exitCode = failed === 0 && results.length > 0 ? 0 : 1;
  });
