// Spec scenario 7: the web page shows the OAuth status correctly, live, against a real daemon
// and the OAuth test server. Screenshots go to tests/e2e/artifacts/ (gitignored).
import { test, expect } from "@playwright/test";
import fs from "node:fs";
import path from "node:path";
import { startDaemon } from "./daemon.js";

const shots = path.join(import.meta.dirname, "artifacts");
fs.mkdirSync(shots, { recursive: true });
const shot = (page, name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
const seconds = (text) => {
  // "expires in 1m 05s" / "expires in 7s"
  const m = text.match(/expires in (?:(\d+)m )?(\d+)s/);
  return m ? Number(m[1] || 0) * 60 + Number(m[2]) : null;
};

let daemon;
test.describe.configure({ mode: "serial" });
test.afterEach(async () => {
  if (!daemon) return;
  const stopped = await daemon.stop();
  const log = fs.readFileSync(path.join(daemon.dir, "serve.log"), "utf8");
  daemon = null;
  expect(stopped, "serve stops cleanly on SIGTERM").toEqual({ code: 0, signal: null });
  expect(log).toContain('"signal":"SIGTERM"');
  expect(log).toContain('"message":"stopped"');
});

// A daemon started with `options` and its page opened: the demo server's card.
async function openCard(page, options) {
  daemon = await startDaemon(options);
  await page.goto(daemon.pageUrl);
  return page.getByTestId("card-demo");
}

// A daemon without a browser, its page opened, the login asked for: the demo server's card.
async function loginWithoutBrowser(page) {
  const card = await openCard(page, { noBrowser: true });
  await expect(card.getByTestId("expiry")).toHaveText("no token");
  await card.getByTestId("login").click();
  return card;
}

test("log in, watch a refresh live, see a refresh fault, open the timeline, log out", async ({ page }) => {
  const card = await openCard(page);
  await expect(page.getByTestId("live")).toContainText("live");
  // Non-interactive and no token yet: the page asks for a login.
  await expect(card.getByTestId("expiry")).toHaveText("no token");
  await shot(page, "1-needs-login");

  // Log in from the page.
  await card.getByTestId("login").click();
  await expect(card.getByTestId("phase")).toHaveText("connected");
  await expect(card.getByTestId("expiry")).toContainText("expires in");
  // The summary line counts down with the token row.
  const validFor = async () => Number((await card.getByTestId("summary").textContent()).match(/valid for (\d+) s/)?.[1]);
  const first = await validFor();
  expect(first, "the summary says how long the token lasts").toBeGreaterThan(0);
  await expect.poll(validFor, { timeout: 5_000, message: "the summary counts down" }).toBeLessThan(first);
  await shot(page, "2-logged-in");

  // A proactive refresh happens (75% of 8 s) and the countdown resets, without a reload.
  // (On a loaded machine the first refresh may already be on the card: wait for the next.)
  const loads = [];
  page.on("load", () => loads.push(Date.now()));
  const before = (await card.getByTestId("last-refresh").textContent()).replace(/ \(.*\)$/, "");
  let lowest = 99;
  await expect.poll(async () => {
    const s = seconds(await card.getByTestId("expiry").textContent());
    if (s !== null) lowest = Math.min(lowest, s);
    return (await card.getByTestId("last-refresh").textContent()).replace(/ \(.*\)$/, "");
  }, { timeout: 20_000, message: "a refresh shows up on the card" }).not.toBe(before);
  const after = seconds(await card.getByTestId("expiry").textContent());
  expect(after, `the countdown went back up (lowest seen ${lowest})`).toBeGreaterThan(lowest);
  expect(loads, "no reload happened").toEqual([]);
  await shot(page, "3-refreshed-live");

  // A refresh fault at the test server: the error and its correlation ID on the card.
  await daemon.control("POST", "/control/faults", { target: "refresh", kind: "temporarily_unavailable", count: 1000 });
  await card.getByTestId("refresh").click();
  const error = card.getByTestId("last-error");
  await expect(error).toContainText("temporarily_unavailable");
  await expect(error).toContainText("HTTP 503");
  const errorId = (await card.getByTestId("error-correlation-id").textContent()).trim();
  expect(errorId).toMatch(/^[0-9a-f-]{36}$/);
  const view = await daemon.api("/api/v1/servers/demo");
  expect(view.last_error.correlation_id, "the card shows the API's correlation ID").toBe(errorId);
  await shot(page, "4-refresh-fault");

  // The flow timeline of the failed flow.
  await card.getByTestId("timeline-open").click();
  const timeline = page.getByTestId("timeline");
  await expect(timeline).toBeVisible();
  const shownId = (await timeline.getByTestId("timeline-id").textContent()).trim();
  const trace = await daemon.api(`/api/v1/flows/${shownId}`);
  expect(trace.flow.kind).toBe("refresh");
  await expect(timeline.getByTestId("timeline-step").first()).toContainText("started");
  await expect(timeline.getByTestId("timeline-step").filter({ hasText: "failed" }).first()).toBeVisible();
  await shot(page, "5-timeline");
  await page.getByTestId("timeline-close").click();
  await expect(timeline).toBeHidden();

  // The fault clears; log out from the page.
  await daemon.control("DELETE", "/control/faults");
  await card.getByTestId("logout").click();
  await expect(card.getByTestId("expiry")).toHaveText("no token");
  const after_logout = await daemon.api("/api/v1/servers/demo");
  expect(after_logout.authenticated).toBe(false);
  expect(after_logout.oauth_status).toBe("none");
  await shot(page, "6-logged-out");

  // No secret the test server issued is on the page or in any API answer.
  const secrets = await daemon.control("GET", "/control/secrets");
  const all = Object.values(secrets).flat().filter((s) => typeof s === "string" && s.length > 8);
  expect(all.length).toBeGreaterThan(0);
  const html = await page.content();
  const api = JSON.stringify(await daemon.api("/api/v1/servers")) + JSON.stringify(await daemon.api("/api/v1/flows"));
  for (const secret of all) {
    expect(html.includes(secret), "a secret on the page").toBe(false);
    expect(api.includes(secret), "a secret in the API").toBe(false);
  }
});

test("without a browser, the banner carries the authorization link and the login finishes from it", async ({ page }) => {
  const card = await loginWithoutBrowser(page);
  const banner = page.getByTestId("banner-demo");
  await expect(banner).toContainText("The browser could not be opened");
  await expect(banner).toContainText("--no-browser");
  const link = banner.getByTestId("auth-link");
  const href = await link.getAttribute("href");
  expect(href.startsWith(daemon.oauthUrl + "/authorize?")).toBe(true);
  await expect(card.getByTestId("active-flow")).toContainText("Running login");
  await shot(page, "7-login-link-banner");
  // The person opens the link (a new tab): the test server approves, the callback lands.
  const [popup] = await Promise.all([page.waitForEvent("popup"), link.click()]);
  await popup.waitForLoadState();
  await expect(card.getByTestId("phase")).toHaveText("connected");
  await expect(banner).toHaveCount(0);
  await shot(page, "8-logged-in-from-link");
  await popup.close();
});

test("a browser on another machine: the address it ended on, pasted into the card, finishes the login", async ({ page }) => {
  const card = await loginWithoutBrowser(page);
  const href = await page.getByTestId("banner-demo").getByTestId("auth-link").getAttribute("href");
  // The person's browser elsewhere approves and ends on the loopback redirect URI, which it
  // cannot reach: that address is what they copy. (Node's fetch stops at the redirect.)
  const approved = await fetch(href, { redirect: "manual" });
  expect(approved.status).toBe(302);
  const endedOn = approved.headers.get("location");
  expect(endedOn).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/callback\?/);
  const code = new URL(endedOn).searchParams.get("code");
  const field = card.getByTestId("paste-url");
  // A wrong state is refused with the reason, and the login keeps waiting.
  const forged = new URL(endedOn);
  forged.searchParams.set("state", "forged-state-0123456789");
  await field.fill(forged.toString());
  await card.getByTestId("paste-submit").click();
  await expect(card.getByTestId("paste-result")).toContainText("state mismatch");
  await expect(card.getByTestId("phase")).toHaveText("authorizing");
  await shot(page, "9-paste-refused");
  await card.getByTestId("paste-url").fill(endedOn);
  await card.getByTestId("paste-submit").click();
  await expect(card.getByTestId("phase")).toHaveText("connected");
  await expect(card.getByTestId("paste-url")).toHaveCount(0);
  await shot(page, "10-logged-in-by-paste");
  const html = await page.content();
  const log = fs.readFileSync(path.join(daemon.dir, "serve.log"), "utf8");
  expect(html.includes(code), "the code on the page").toBe(false);
  expect(log.includes(code), "the code in the log").toBe(false);
});

test("a server that requires DPoP gets a bound token, and the card says so", async ({ page }) => {
  const card = await openCard(page, { dpopRequired: true });
  await expect(card.getByTestId("dpop")).toHaveCount(0);
  await card.getByTestId("login").click();
  await expect(card.getByTestId("phase")).toHaveText("connected");
  const view = await daemon.api("/api/v1/servers/demo");
  expect(view.token_type).toBe("DPoP");
  expect(view.dpop_jkt).toMatch(/^[A-Za-z0-9_-]{43}$/);
  await expect(card.getByTestId("dpop")).toHaveText("DPoP (RFC 9449) · key " + view.dpop_jkt.slice(0, 12) + "…");
  await shot(page, "9-dpop-bound");
});

test("the page opens through the printed URL, keeps its key across a reload, and cannot be framed", async ({ page, context }) => {
  daemon = await startDaemon();
  const key = daemon.key;
  expect(key).toMatch(/^[A-Za-z0-9_-]{43}$/);
  expect(fs.readFileSync(path.join(daemon.dir, "data", "api-key"), "utf8").trim(), "the key serve created").toBe(key);
  // Without the key nothing is served, the page included.
  expect((await fetch(daemon.apiUrl + "/api/v1/servers")).status).toBe(401);
  expect((await fetch(daemon.apiUrl + "/api/v1/events")).status).toBe(401);
  const bare = await page.goto(daemon.apiUrl + "/");
  expect(bare.status()).toBe(401);
  await expect(page.locator("body")).toContainText("apikey=KEY");

  // Opened through the printed URL: the key leaves the address bar for a cookie.
  await page.goto(daemon.pageUrl);
  expect(page.url()).toBe(daemon.apiUrl + "/");
  const card = page.getByTestId("card-demo");
  await expect(card).toBeVisible();
  await expect(page.getByTestId("live")).toContainText("live");
  const cookies = await context.cookies(daemon.apiUrl);
  expect(cookies.length).toBe(1);
  expect(cookies[0].httpOnly).toBe(true);
  expect(cookies[0].sameSite).toBe("Strict");
  expect(cookies[0].value).not.toBe(key);
  expect(await page.evaluate(() => document.cookie), "the script cannot read it").toBe("");

  // "Recent events" starts with the flows in the database: log in, then reload.
  await card.getByTestId("login").click();
  await expect(card.getByTestId("phase")).toHaveText("connected");
  await page.reload();
  await expect(card.getByTestId("phase")).toHaveText("connected");
  // Short tokens may have refreshed since: the login is among the flows read back, not
  // necessarily the newest.
  await expect(page.getByTestId("event").filter({ hasText: "demo: login succeeded" }).first()).toBeVisible();
  expect(await page.content()).not.toContain(key);
  await shot(page, "10-opened-by-url");

  // Another page cannot frame it (X-Frame-Options DENY, frame-ancestors 'none').
  await page.setContent(`<iframe id="f" src="${daemon.apiUrl}/"></iframe>`);
  const frame = await (await page.locator("#f").elementHandle()).contentFrame();
  await frame.waitForLoadState();
  expect(await frame.locator('[data-testid="cards"]').count(), "no page inside a frame").toBe(0);
  expect(frame.url(), "the browser refused to show it in a frame").toBe("chrome-error://chromewebdata/");

  const log = fs.readFileSync(path.join(daemon.dir, "serve.log"), "utf8");
  expect(log).not.toContain(key);
});

test("a key given in the environment is the one in the printed URL", async ({ page }) => {
  const key = "e2e-api-key-0123456789abcdef";
  daemon = await startDaemon({ apiKey: key });
  expect(daemon.key).toBe(key);
  expect(fs.existsSync(path.join(daemon.dir, "data", "api-key")), "no key file is created").toBe(false);
  await page.goto(daemon.pageUrl);
  await expect(page.getByTestId("card-demo")).toBeVisible();
  await expect(page.getByTestId("live")).toContainText("live");
  expect(await page.content()).not.toContain(key);
  const log = fs.readFileSync(path.join(daemon.dir, "serve.log"), "utf8");
  expect(log).not.toContain(key);
});
