// Drives the emulator's browser test console (emulator/console/index.html, served at GET /)
// in a real headless Chromium: generate a client URL, connect, receive messages the official
// server SDK sends, and use the group controls. Leaves a screenshot in test-artifacts/.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { startEmulator } from "../lib/emulator.mjs";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const artifacts = path.join(repoRoot, "test-artifacts");

// The machine has no internet: these flags stop Chromium from trying to reach Google services.
const CHROMIUM_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const WAIT = { timeout: 10_000 };

/** Log entries of one kind, newest last. */
const entries = (page, kind) => page.locator(`#log li.entry[data-kind="${kind}"]`);

/** Fills the generator form and returns the generated URL. */
async function generate(page, { hub, user, groups, joinLeave = true, sendToGroup = true }) {
  await page.fill("#hub", hub);
  await page.fill("#user", user);
  await page.setChecked("#role-join-leave", joinLeave);
  await page.setChecked("#role-send-to-group", sendToGroup);
  await page.fill("#groups", groups);
  await page.fill("#url", "");
  await page.click("#generate");
  await page.waitForFunction(() => document.querySelector("#url").value !== "", null, WAIT);
  return page.inputValue("#url");
}

async function connect(page) {
  await page.click("#connect");
  await page.waitForSelector('#status[data-state="connected"]', WAIT);
}

test("browser test console against the emulator", async (t) => {
  const emulator = await startEmulator();
  t.after(() => emulator.stop());

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_BIN ?? "/usr/bin/chromium",
    args: CHROMIUM_ARGS,
  });
  t.after(() => browser.close());

  const service = new WebPubSubServiceClient(emulator.connectionString, "SQLUsers", {
    allowInsecureConnection: true,
  });

  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  // Anything the page throws or logs as an error is a bug in the page.
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("console", (m) => {
    // Chromium reports every 4xx response as a console error; the page expects those.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) pageErrors.push(m.text());
  });
  // The page must be self-contained: record any request that leaves the emulator's origin.
  const foreign = [];
  page.on("request", (r) => {
    if (!r.url().startsWith(emulator.endpoint) && !r.url().startsWith(`ws://127.0.0.1:${emulator.port}`)) {
      foreign.push(r.url());
    }
  });

  await t.test("serves the console and shows the emulator connection string", async () => {
    const res = await page.goto(`${emulator.endpoint}/`);
    assert.equal(res.status(), 200);
    assert.match(res.headers()["content-type"] ?? "", /text\/html/);
    await page.waitForFunction(
      () => document.querySelector("#connection-string").textContent.includes("AccessKey="),
      null,
      WAIT,
    );
    const shown = (await page.textContent("#connection-string")).trim();
    assert.match(shown, new RegExp(`^Endpoint=${emulator.endpoint.replace(/\./g, "\\.")};AccessKey=[^;]+;`));
    await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: emulator.endpoint });
    await page.click("#copy-connection-string");
    await page.waitForFunction(() => document.querySelector("#copy-result").textContent === "Copied", null, WAIT);
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), shown);
    assert.equal(await page.getAttribute("#status", "data-state"), "disconnected");
    // Group actions are meaningless without a connection.
    assert.equal(await page.isDisabled("#join"), true);
  });

  await t.test("generates a client URL and connects as user 12345", async () => {
    const url = await generate(page, { hub: "SQLUsers", user: "12345", groups: "g1" });
    assert.match(url, new RegExp(`^ws://127\\.0\\.0\\.1:${emulator.port}/client/hubs/SQLUsers\\?access_token=[\\w.-]+`));
    assert.equal(await page.textContent("#generate-error"), "");

    await connect(page);
    const status = await page.textContent("#status");
    assert.match(status, /Connected as user 12345, connection id \S+/);

    const connected = entries(page, "system").last();
    assert.match(await connected.locator(".ts").textContent(), /^\d{2}:\d{2}:\d{2}\.\d{3}$/);
    const frame = JSON.parse(await connected.locator("pre.data").textContent());
    assert.equal(frame.event, "connected");
    assert.equal(frame.userId, "12345");
    assert.ok(status.includes(frame.connectionId), "status shows the connection id from the frame");
    assert.equal(await page.isEnabled("#join"), true);
  });

  await t.test("shows a JSON message sent to the user over the REST API", async () => {
    await service.sendToUser("12345", { hello: "rowcast" });
    const entry = entries(page, "server").last();
    await entry.waitFor(WAIT);
    assert.match(await entry.locator(".meta").textContent(), /dataType json/);
    assert.deepEqual(JSON.parse(await entry.locator("pre.data").textContent()), { hello: "rowcast" });
    assert.equal(await entry.getAttribute("data-direction"), "in");
  });

  await t.test("shows a text message sent to the initial group g1", async () => {
    await service.group("g1").sendToAll("hi group one", { contentType: "text/plain" });
    const entry = entries(page, "group").filter({ hasText: "hi group one" });
    await entry.waitFor(WAIT);
    const meta = await entry.locator(".meta").textContent();
    assert.match(meta, /group g1/);
    assert.match(meta, /dataType text/);
    assert.equal(await entry.locator("pre.data").textContent(), "hi group one");
  });

  await t.test("joins a group from the page and shows the ack", async () => {
    await page.fill("#group", "g2");
    await page.click("#join");
    await page.waitForFunction(() => /ack #1 (succeeded|failed)/.test(document.querySelector("#group-result").textContent), null, WAIT);
    assert.match(await page.textContent("#group-result"), /Join g2: ack #1 succeeded/);

    const sent = JSON.parse(await entries(page, "joinGroup").last().locator("pre.data").textContent());
    assert.deepEqual(sent, { type: "joinGroup", group: "g2", ackId: 1 });
    const ack = JSON.parse(await entries(page, "ack").last().locator("pre.data").textContent());
    assert.equal(ack.ackId, 1);
    assert.equal(ack.success, true);

    // The join really took effect on the server: a REST message to g2 reaches the page.
    await service.group("g2").sendToAll({ to: "g2" });
    const entry = entries(page, "group").filter({ hasText: '"to": "g2"' });
    await entry.waitFor(WAIT);
    assert.match(await entry.locator(".meta").textContent(), /group g2/);
  });

  await t.test("sends JSON to a group from the page and receives the echo", async () => {
    await page.fill("#send-data", '{"n": 42}');
    await page.selectOption("#send-type", "json");
    await page.setChecked("#no-echo", false);
    await page.click("#send");
    await page.waitForFunction(() => /ack #2 (succeeded|failed)/.test(document.querySelector("#send-result").textContent), null, WAIT);
    assert.match(await page.textContent("#send-result"), /Send to g2: ack #2 succeeded/);

    const echo = entries(page, "group").filter({ hasText: '"n": 42' });
    await echo.waitFor(WAIT);
    const meta = await echo.locator(".meta").textContent();
    assert.match(meta, /group g2/);
    assert.match(meta, /from user 12345/);
    assert.match(meta, /dataType json/);
  });

  await t.test("noEcho keeps the page's own group message from coming back", async () => {
    await page.fill("#send-data", "quiet please");
    await page.selectOption("#send-type", "text");
    await page.setChecked("#no-echo", true);
    await page.click("#send");
    await page.waitForFunction(() => /ack #3 (succeeded|failed)/.test(document.querySelector("#send-result").textContent), null, WAIT);
    assert.match(await page.textContent("#send-result"), /Send to g2: ack #3 succeeded/);
    const sent = JSON.parse(await entries(page, "sendToGroup").last().locator("pre.data").textContent());
    assert.equal(sent.noEcho, true);
    assert.equal(sent.dataType, "text");
    await service.sendToUser("12345", "marker after noEcho", { contentType: "text/plain" });
    await entries(page, "server").filter({ hasText: "marker after noEcho" }).waitFor(WAIT);
    assert.equal(await entries(page, "group").filter({ hasText: "quiet please" }).count(), 0);
    await page.setChecked("#no-echo", false);
  });

  await t.test("sends a client event and stays connected", async () => {
    await page.fill("#event-name", "hello");
    await page.fill("#event-data", "from the console");
    await page.click("#send-event");
    const sent = JSON.parse(await entries(page, "event").last().locator("pre.data").textContent());
    assert.deepEqual(sent, { type: "event", event: "hello", dataType: "text", data: "from the console" });
    assert.match(await page.textContent("#event-result"), /Event hello: sent/);
    // With no upstream handler the event goes nowhere, but the connection must survive it.
    await service.sendToUser("12345", "still here", { contentType: "text/plain" });
    await entries(page, "server").filter({ hasText: "still here" }).waitFor(WAIT);
    assert.equal(await page.getAttribute("#status", "data-state"), "connected");
  });

  await t.test("leaves the group and stops receiving its messages", async () => {
    await page.click("#leave");
    await page.waitForFunction(() => /ack #4 (succeeded|failed)/.test(document.querySelector("#group-result").textContent), null, WAIT);
    assert.match(await page.textContent("#group-result"), /Leave g2: ack #4 succeeded/);

    // Order on one connection is preserved, so once the user message arrives the g2 one would have too.
    await service.group("g2").sendToAll("after leaving", { contentType: "text/plain" });
    await service.sendToUser("12345", "marker after leave", { contentType: "text/plain" });
    await entries(page, "server").filter({ hasText: "marker after leave" }).waitFor(WAIT);
    assert.equal(await page.locator("#log li.entry", { hasText: "after leaving" }).count(), 0);

    // Newest entry at the bottom, and the log has followed it there.
    assert.match(await page.locator("#log li.entry").last().textContent(), /marker after leave/);
    const scroll = await page.$eval("#log", (l) => ({ top: l.scrollTop, client: l.clientHeight, height: l.scrollHeight }));
    assert.ok(scroll.height > scroll.client, "enough entries to overflow the log");
    assert.ok(scroll.height - scroll.top - scroll.client < 2, `log not scrolled to the bottom: ${JSON.stringify(scroll)}`);

    await mkdir(artifacts, { recursive: true });
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(artifacts, "console.png") });
  });

  await t.test("fits a narrow window without horizontal scrolling", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = await page.evaluate(
      () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
    );
    assert.ok(overflow <= 0, `page is ${overflow}px wider than a 390px window`);
    assert.equal(await page.isVisible("#log"), true);
    await page.screenshot({ path: path.join(artifacts, "console-narrow.png"), fullPage: true });
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  await t.test("disconnect shows the disconnected status and disables group actions", async () => {
    await page.click("#disconnect");
    await page.waitForSelector('#status[data-state="disconnected"]', WAIT);
    assert.match(await page.textContent("#status"), /^Disconnected: closed by you/);
    assert.equal(await page.isDisabled("#join"), true);
    assert.equal(await page.isEnabled("#connect"), true);
  });

  await t.test("clear empties the log", async () => {
    assert.ok((await page.locator("#log li.entry").count()) > 0);
    await page.click("#clear-log");
    assert.equal(await page.locator("#log li.entry").count(), 0);
  });

  await t.test("connects with a pasted URL from the server SDK; no roles means Forbidden", async () => {
    const p2 = await context.newPage();
    p2.on("pageerror", (e) => pageErrors.push(e.message));
    await p2.goto(`${emulator.endpoint}/`);
    // The first page's connection made the hub known; a fresh page offers it as a suggestion.
    await p2.waitForSelector('#hubs option[value="sqlusers"]', { ...WAIT, state: "attached" });
    // What rowcast's negotiate function hands out: a URL signed by the server SDK.
    const { url } = await service.getClientAccessToken({ userId: "pasted-user" });
    await p2.fill("#url", url);
    await connect(p2);
    assert.match(await p2.textContent("#status"), /Connected as user pasted-user/);
    await p2.fill("#group", "g3");
    await p2.click("#join");
    await p2.waitForFunction(() => /ack #1 (succeeded|failed)/.test(document.querySelector("#group-result").textContent), null, WAIT);
    assert.match(await p2.textContent("#group-result"), /Join g3: ack #1 failed: Forbidden/);
    assert.equal(await p2.getAttribute("#group-result", "class"), "result bad");
    await p2.close();
  });

  await t.test("an empty user id connects anonymously", async () => {
    await generate(page, { hub: "SQLUsers", user: "", groups: "" });
    await connect(page);
    assert.match(await page.textContent("#status"), /Connected as anonymous user, connection id \S+/);
    // Ack ids start again from 1 on a new connection.
    await page.fill("#group", "anon");
    await page.click("#join");
    await page.waitForFunction(() => /ack #\d+ (succeeded|failed)/.test(document.querySelector("#group-result").textContent), null, WAIT);
    assert.match(await page.textContent("#group-result"), /Join anon: ack #1 succeeded/);
    await page.click("#disconnect");
    await page.waitForSelector('#status[data-state="disconnected"]', WAIT);
  });

  await t.test("shows the emulator's error message when the URL cannot be generated", async () => {
    await page.fill("#hub", "not a valid hub!");
    await page.click("#generate");
    await page.waitForFunction(() => document.querySelector("#generate-error").textContent !== "", null, WAIT);
    // The emulator's own message is shown, not a generic failure.
    assert.match(await page.textContent("#generate-error"), /^Could not generate a URL: .*hub/i);
  });

  await t.test("a URL that is not ws:// is refused without connecting", async () => {
    await page.fill("#url", "https://example.invalid/client/hubs/x");
    await page.click("#connect");
    assert.match(await page.textContent("#status"), /must start with ws:\/\/ or wss:\/\//);
    assert.equal(await page.getAttribute("#status", "data-state"), "disconnected");
  });

  await t.test("log time stamps are local HH:MM:SS.mmm", async () => {
    const ctx = await browser.newContext({ timezoneId: "Asia/Kolkata" });
    t.after(() => ctx.close());
    const p3 = await ctx.newPage();
    // 03:35:07.042 UTC is 09:05:07.042 in Kolkata (UTC+05:30, no daylight saving).
    await p3.clock.setFixedTime(new Date(Date.UTC(2024, 0, 15, 3, 35, 7, 42)));
    await p3.goto(`${emulator.endpoint}/`);
    await p3.click("#generate");
    const entry = p3.locator("#log li.entry").last();
    await entry.waitFor(WAIT);
    assert.equal(await entry.locator("time.ts").textContent(), "09:05:07.042");
  });

  await t.test("the page stayed self-contained and error free", () => {
    assert.deepEqual(foreign, []);
    assert.deepEqual(pageErrors, []);
  });
});
