// Reliable subprotocol (json.reliable.webpubsub.azure.v1) end to end: the official
// WebPubSubClient sits behind a small TCP proxy owned by the test, so the test can break the
// socket mid-stream the way a flaky network would (no close frame, bytes in flight lost).
// The client must come back through `awps_connection_id` + `awps_reconnection_token` and see
// every message exactly once, in order.

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { WebPubSubClient } from "@azure/web-pubsub-client";
import { NO_KEEPALIVE, within, useEmulator } from "../lib/sdk.mjs";

const { emulator, track, hubClient } = useEmulator();
let proxies = [];

// Runs after the harness has stopped the test's clients.
afterEach(async () => {
  for (const p of proxies) await p.close();
  proxies = [];
});

/**
 * TCP proxy in front of the emulator. It records the request line of every WebSocket upgrade
 * and rewrites Host to the emulator's own address, so the emulator sees exactly what a direct
 * client would send. `blackhole()` silently swallows server->client bytes on the current
 * sockets; `sever()` destroys them without a close handshake.
 */
async function startProxy(targetPort) {
  const requestLines = [];
  const pairs = new Set();
  const stats = { swallowedBytes: 0 };
  const server = net.createServer((downstream) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    const pair = { downstream, upstream, swallow: false };
    pairs.add(pair);
    let head = Buffer.alloc(0);
    let headDone = false;
    downstream.on("data", (chunk) => {
      if (headDone) return void upstream.write(chunk);
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      headDone = true;
      const text = head.subarray(0, end).toString("latin1");
      requestLines.push(text.split("\r\n")[0]);
      const rewritten = text.replace(/^host:.*$/im, `Host: 127.0.0.1:${targetPort}`);
      upstream.write(Buffer.concat([Buffer.from(rewritten, "latin1"), head.subarray(end)]));
    });
    upstream.on("data", (chunk) => {
      if (pair.swallow) stats.swallowedBytes += chunk.length;
      else downstream.write(chunk);
    });
    const drop = () => {
      downstream.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    for (const s of [downstream, upstream]) {
      s.on("error", drop);
      s.on("close", drop);
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const proxy = {
    port: server.address().port,
    requestLines,
    stats,
    blackhole() {
      for (const p of pairs) p.swallow = true;
    },
    sever() {
      for (const p of [...pairs]) {
        p.downstream.destroy();
        p.upstream.destroy();
        pairs.delete(p);
      }
    },
    async close() {
      this.sever();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  proxies.push(proxy);
  return proxy;
}

test("reliable client recovers a severed socket and receives every message exactly once, in order", async () => {
  const TOTAL = 200;
  const BLACKHOLE_AT = 60; // received messages before the network starts losing bytes
  const SEVER_AFTER = 40; // further REST sends that vanish before the socket is cut

  const svc = hubClient("reliable");
  const proxy = await startProxy(emulator().port);
  const { url } = await svc.getClientAccessToken({ userId: "alice", groups: ["stream"] });
  const viaProxy = new URL(url);
  viaProxy.port = String(proxy.port);

  // Default protocol of the SDK is json.reliable.webpubsub.azure.v1. autoReconnect is off so a
  // failed recovery cannot be papered over by a brand-new connection.
  const client = track(new WebPubSubClient(viaProxy.toString(), { autoReconnect: false, ...NO_KEEPALIVE }));
  const events = { connected: [], disconnected: [], stopped: 0 };
  const received = [];
  let notify = () => {};
  const connectedOnce = new Promise((resolve) => client.on("connected", resolve));
  client.on("connected", (e) => events.connected.push(e));
  client.on("disconnected", (e) => events.disconnected.push(e));
  client.on("stopped", () => events.stopped++);
  client.on("server-message", (e) => {
    received.push(e.message);
    notify();
  });
  client.on("group-message", (e) => {
    received.push(e.message);
    notify();
  });
  const untilReceived = (n, what, ms) =>
    within(
      new Promise((resolve) => {
        notify = () => received.length >= n && resolve();
        notify();
      }),
      what,
      ms,
    );

  await within(client.start(), "client.start()");
  const { connectionId } = await within(connectedOnce, "connected event");

  // Publisher: REST sends spaced out a little so the cut lands mid-stream.
  let sent = 0;
  const publisher = (async () => {
    for (let i = 0; i < TOTAL; i++) {
      await svc.group("stream").sendToAll({ i });
      sent = i + 1;
      await new Promise((r) => setTimeout(r, 5));
    }
  })();

  await untilReceived(BLACKHOLE_AT, `first ${BLACKHOLE_AT} messages`);
  proxy.blackhole();
  const lostFrom = sent;
  await within(
    (async () => {
      while (sent < Math.min(TOTAL, lostFrom + SEVER_AFTER)) await new Promise((r) => setTimeout(r, 5));
    })(),
    "publisher progress while the network swallows bytes",
  );
  const seenAtCut = received.length;
  const sentAtCut = sent;
  proxy.sever();

  await within(publisher, "publisher finished", 20000);
  await untilReceived(TOTAL, `all ${TOTAL} messages after recovery`, 20000);
  // Give stray duplicates a moment to show up before judging "exactly once".
  await new Promise((r) => setTimeout(r, 300));

  assert.deepEqual(
    received.map((m) => m.data.i),
    Array.from({ length: TOTAL }, (_, i) => i),
    "every message exactly once and in order",
  );
  const seq = received.map((m) => m.sequenceId);
  for (let i = 1; i < seq.length; i++) assert.equal(seq[i], seq[i - 1] + 1, "sequenceIds stay consecutive across recovery");

  // The cut really lost data in flight, so the emulator had to replay from its buffer.
  assert.ok(proxy.stats.swallowedBytes > 0, "the network swallowed some bytes");
  assert.ok(seenAtCut < sentAtCut, `client had ${seenAtCut} of ${sentAtCut} accepted messages at the cut`);

  // The second upgrade is a recovery of the same connection, not a new one.
  assert.ok(proxy.requestLines.length >= 2, `expected a reconnect, saw ${proxy.requestLines.length} upgrade(s)`);
  const recovery = new URL(proxy.requestLines.at(-1).split(" ")[1], "http://x");
  assert.equal(recovery.searchParams.get("awps_connection_id"), connectionId);
  assert.ok(recovery.searchParams.get("awps_reconnection_token"), "recovery carries a reconnection token");
  assert.equal(events.connected.length, 1, "recovery must not look like a fresh connection");
  assert.deepEqual(events.disconnected, []);
  assert.equal(events.stopped, 0);
  assert.equal(await svc.connectionExists(connectionId), true);

  // Still the same live connection afterwards.
  await svc.sendToUser("alice", { after: "recovery" });
  await untilReceived(TOTAL + 1, "message after recovery");
  assert.deepEqual(received.at(-1).data, { after: "recovery" });
});

test("recovery with a forged reconnection token is refused with close code 1008", async () => {
  const svc = hubClient("forged");
  const proxy = await startProxy(emulator().port);
  const { url } = await svc.getClientAccessToken({ userId: "bob" });
  const viaProxy = new URL(url);
  viaProxy.port = String(proxy.port);

  const client = track(new WebPubSubClient(viaProxy.toString(), { autoReconnect: false, ...NO_KEEPALIVE }));
  const connected = new Promise((resolve) => client.on("connected", resolve));
  const stopped = new Promise((resolve) => client.on("stopped", resolve));
  await within(client.start(), "client.start()");
  const { connectionId } = await within(connected, "connected event");

  // Tamper with the token the SDK will present on recovery. A compliant service refuses it
  // with 1008, which makes the SDK give up at once instead of retrying for 30 s.
  client._reconnectionToken = "forged-token";
  proxy.sever();
  await within(stopped, "client gives up recovery after 1008", 10000);
  assert.equal(client._lastCloseEvent?.code, 1008);
  const recovery = new URL(proxy.requestLines.at(-1).split(" ")[1], "http://x");
  assert.equal(recovery.searchParams.get("awps_connection_id"), connectionId);
  assert.equal(recovery.searchParams.get("awps_reconnection_token"), "forged-token");
});
