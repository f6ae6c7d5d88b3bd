// Shared harness for the SDK compatibility tests in sdk/: one emulator per test file, a fresh
// hub per test, official WebPubSubClient connections with their messages recorded, and the
// bookkeeping that stops every client after each test.

import { before, after, afterEach } from "node:test";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { WebPubSubClient } from "@azure/web-pubsub-client";
import { startEmulator } from "./emulator.mjs";

export const WAIT_MS = 5000;
// The SDK's keep-alive loops sleep on timers that stop() cannot cancel, which would keep each
// test process alive for ~40 s after the last test. These tests are far shorter than any
// keep-alive period, so the loops are simply not started.
export const NO_KEEPALIVE = { keepAliveIntervalInMs: 0, keepAliveTimeoutInMs: 0 };

export function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export async function eventually(probe, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await probe()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Records every data message a WebPubSubClient emits; `cursor` marks what a test consumed. */
export class Inbox {
  constructor(client) {
    this.items = [];
    this.cursor = 0;
    this.listeners = new Set();
    client.on("server-message", (e) => this.push({ via: "server", ...e.message }));
    client.on("group-message", (e) => this.push({ via: "group", ...e.message }));
  }
  push(m) {
    this.items.push(m);
    for (const l of this.listeners) l();
  }
  /** Waits until some message (old or new) satisfies pred; returns its index. */
  waitIndex(pred, what, ms = WAIT_MS) {
    let check;
    return within(
      new Promise((resolve) => {
        check = () => {
          const i = this.items.findIndex(pred);
          if (i >= 0) resolve(i);
        };
        this.listeners.add(check);
        check();
      }),
      what,
      ms,
    ).finally(() => this.listeners.delete(check));
  }
  /** Next `n` unconsumed messages, simplified. */
  async next(n = 1, what = "next message") {
    const want = this.cursor + n;
    await this.waitIndex((_, i) => i === want - 1, `${what} (${n} message(s))`);
    const out = this.items.slice(this.cursor, want).map(view);
    this.cursor = want;
    return out;
  }
}

/** Drops SDK bookkeeping fields so results compare with deepEqual. */
export function view(m) {
  const v = {
    via: m.via,
    dataType: m.dataType,
    data: m.data instanceof ArrayBuffer ? [...new Uint8Array(m.data)] : m.data,
  };
  if (m.via === "group") {
    v.group = m.group;
    // REST group sends have no sending user; absent and null mean the same.
    v.fromUserId = m.fromUserId ?? null;
  }
  return v;
}

export const json = (data) => ({ via: "server", dataType: "json", data });
export const text = (data) => ({ via: "server", dataType: "text", data });
export const binary = (bytes) => ({ via: "server", dataType: "binary", data: [...bytes] });

/**
 * Call once at the top of a test file. Registers the hooks that start the emulator before the
 * first test, stop every tracked client after each test, and stop the emulator (failing on a
 * panic or unclean exit) after the last one. Returns the helpers bound to that emulator.
 */
export function useEmulator() {
  let emu;
  let live = [];
  let hubCounter = 0;
  let fenceCounter = 0;

  before(async () => {
    emu = await startEmulator();
  });
  afterEach(() => {
    for (const c of live) c.stop();
    live = [];
  });
  after(async () => {
    await emu?.stop();
  });

  /** The running emulator (`{ endpoint, port, connectionString, ... }`); set once `before` ran. */
  const emulator = () => emu;

  /** Stops `client` after the current test; returns it. */
  function track(client) {
    live.push(client);
    return client;
  }

  /** A fresh hub per test keeps tests independent and parallel-safe. */
  function hubClient(label, key) {
    const hub = `sdk_${label}_${process.pid}_${++hubCounter}`;
    const cs = key ? `Endpoint=${emu.endpoint};AccessKey=${key};Version=1.0;` : emu.connectionString;
    return new WebPubSubServiceClient(cs, hub, { allowInsecureConnection: true });
  }

  /** Broadcasts a fence and returns, per subscriber, the unconsumed messages that preceded it. */
  async function fence(svc, subs) {
    const tag = `fence-${++fenceCounter}`;
    await svc.sendToAll({ fence: tag });
    return Promise.all(
      subs.map(async (s) => {
        const i = await s.inbox.waitIndex((m) => m.data?.fence === tag, `${tag} at ${s.userId}`);
        const before = s.inbox.items.slice(s.inbox.cursor, i).filter((m) => m.data?.fence === undefined);
        s.inbox.cursor = i + 1;
        return before.map(view);
      }),
    );
  }

  async function connectUrl(url, clientOptions = {}) {
    // autoReconnect off: a silently re-created connection must not mask a server-side close.
    // No message retries: a rejected ack must surface at once.
    const client = track(
      new WebPubSubClient(url, {
        autoReconnect: false,
        messageRetryOptions: { maxRetries: 0 },
        ...NO_KEEPALIVE,
        ...clientOptions,
      }),
    );
    const inbox = new Inbox(client);
    const connected = new Promise((resolve) => client.on("connected", resolve));
    const stopped = new Promise((resolve) => client.on("stopped", resolve));
    const disconnected = new Promise((resolve) => client.on("disconnected", resolve));
    await within(client.start(), "client.start()");
    const { connectionId, userId } = await within(connected, "connected event");
    return { client, inbox, connectionId, userId, stopped, disconnected };
  }

  async function connect(svc, tokenOptions = {}, clientOptions = {}) {
    const { url } = await svc.getClientAccessToken(tokenOptions);
    return connectUrl(url, clientOptions);
  }

  return { emulator, track, hubClient, fence, connectUrl, connect };
}
