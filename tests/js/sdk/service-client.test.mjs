// The official `@azure/web-pubsub` service SDK drives the emulator's REST API while official
// `@azure/web-pubsub-client` WebSocket clients observe what actually gets delivered.
//
// Negative assertions ("bob got nothing") never sleep: after the operation under test a
// "fence" message is broadcast and every subscriber reads up to it. Delivery to one connection
// is ordered, so anything misrouted shows up before the fence.

import { test } from "node:test";
import assert from "node:assert/strict";
import { WebPubSubServiceClient, odata } from "@azure/web-pubsub";
import { WebPubSubClient, WebPubSubJsonProtocol } from "@azure/web-pubsub-client";
import { NO_KEEPALIVE, within, eventually, json, text, binary, useEmulator } from "../lib/sdk.mjs";

const { emulator, track, hubClient, fence, connectUrl, connect } = useEmulator();

// A REST send to a group reaches members as a group message without a sending user (the
// official emulator does the same: `from: "group"`, `fromUserId: null`).
const toGroup = (group, dataType, data) => ({ via: "group", dataType, data, group, fromUserId: null });
const gjson = (group, data) => toGroup(group, "json", data);

// ---------------------------------------------------------------------------------------------
// tokens and connections

test("getClientAccessToken URL connects; connected event carries userId; token groups and existence checks", async () => {
  const svc = hubClient("token");
  const { url } = await svc.getClientAccessToken({
    userId: "alice",
    roles: ["webpubsub.joinLeaveGroup"],
    groups: ["initial"],
  });
  // Plain JSON protocol, so that closing the socket ends the connection at once (a reliable
  // connection is legitimately kept for recovery after an abnormal close).
  const a = await connectUrl(url, { protocol: WebPubSubJsonProtocol() });
  assert.equal(a.userId, "alice");
  assert.equal(typeof a.connectionId, "string");
  assert.ok(a.connectionId.length > 0);

  assert.equal(await svc.connectionExists(a.connectionId), true);
  assert.equal(await svc.connectionExists("no-such-connection"), false);
  assert.equal(await svc.userExists("alice"), true);
  assert.equal(await svc.userExists("nobody"), false);
  // `webpubsub.group` claim: the connection starts inside "initial".
  assert.equal(await svc.groupExists("initial"), true);
  assert.equal(await svc.groupExists("never-used"), false);
  await svc.group("initial").sendToAll({ to: "initial" });
  assert.deepEqual(await a.inbox.next(), [gjson("initial", { to: "initial" })]);

  a.client.stop();
  await eventually(async () => !(await svc.connectionExists(a.connectionId)), "connection gone after client stop");
  assert.equal(await svc.userExists("alice"), false);
  assert.equal(await svc.groupExists("initial"), false);
});

test("requests and client tokens signed with a different key are rejected", async () => {
  const good = hubClient("badkey");
  const bad = new WebPubSubServiceClient(
    `Endpoint=${emulator().endpoint};AccessKey=${"Z".repeat(44)};Version=1.0;`,
    good.hubName,
    { allowInsecureConnection: true },
  );
  await assert.rejects(bad.sendToAll({ x: 1 }), (e) => {
    assert.equal(e.statusCode, 401);
    return true;
  });
  await assert.rejects(bad.userExists("u"), (e) => e.statusCode === 401);

  const { url } = await bad.getClientAccessToken({ userId: "mallory" });
  const client = track(new WebPubSubClient(url, { autoReconnect: false, ...NO_KEEPALIVE }));
  // ws reports the refused upgrade as "Unexpected server response: 401".
  await assert.rejects(within(client.start(), "start with forged token"), /401/);
  assert.equal(await good.userExists("mallory"), false);
});

// ---------------------------------------------------------------------------------------------
// sending

test("sendToAll delivers json, text and binary to every connection of the hub and no other hub", async () => {
  const svc = hubClient("all");
  const other = hubClient("all_other");
  const a = await connect(svc, { userId: "alice" });
  const b = await connect(svc, { userId: "bob" });
  const o = await connect(other, { userId: "alice" });

  const bytes = new Uint8Array([0, 1, 2, 127, 128, 254, 255]);
  await svc.sendToAll({ kind: "json", nested: { n: 1, list: [true, null, "x"] } });
  await svc.sendToAll("plain words", { contentType: "text/plain" });
  await svc.sendToAll(bytes);
  const expected = [
    json({ kind: "json", nested: { n: 1, list: [true, null, "x"] } }),
    text("plain words"),
    binary(bytes),
  ];
  assert.deepEqual(await a.inbox.next(3), expected);
  assert.deepEqual(await b.inbox.next(3), expected);
  const [fo] = await fence(other, [o]);
  assert.deepEqual(fo, [], "a connection of another hub must not receive the broadcast");
});

test("sendToAll honours excludedConnections and odata filters", async () => {
  const svc = hubClient("allfilter");
  const a = await connect(svc, { userId: "alice", groups: ["g1"] });
  const b = await connect(svc, { userId: "bob" });
  const q = await connect(svc, { userId: "o'brien", groups: ["g1"] });

  await svc.sendToAll({ step: "excluded" }, { excludedConnections: [a.connectionId, q.connectionId] });
  // The odata template doubles the quote; the emulator must undo it.
  await svc.sendToAll({ step: "quoted" }, { filter: odata`userId eq ${"o'brien"}` });
  await svc.sendToAll({ step: "or" }, { filter: odata`userId eq ${"alice"} or userId eq ${"bob"}` });
  await svc.sendToAll({ step: "groups" }, { filter: odata`${"g1"} in groups and not (userId eq ${"alice"})` });
  await svc.sendToAll(
    { step: "both" },
    { filter: odata`userId ne ${"bob"}`, excludedConnections: [q.connectionId] },
  );
  await svc.sendToAll({ step: "connid" }, { filter: odata`connectionId eq ${b.connectionId}` });

  const [fa, fb, fq] = await fence(svc, [a, b, q]);
  assert.deepEqual(fa, [json({ step: "or" }), json({ step: "both" })]);
  assert.deepEqual(fb, [json({ step: "excluded" }), json({ step: "or" }), json({ step: "connid" })]);
  assert.deepEqual(fq, [json({ step: "quoted" }), json({ step: "groups" })]);
});

test("sendToUser reaches every connection of that user only, honouring filter", async () => {
  const svc = hubClient("user");
  const a1 = await connect(svc, { userId: "alice" });
  const a2 = await connect(svc, { userId: "alice" });
  const b = await connect(svc, { userId: "bob" });

  const bytes = new Uint8Array([9, 8, 7]);
  await svc.sendToUser("alice", { to: "alice" });
  await svc.sendToUser("alice", "hi alice", { contentType: "text/plain" });
  await svc.sendToUser("alice", bytes);
  await svc.sendToUser("alice", { step: "filtered" }, { filter: odata`connectionId ne ${a1.connectionId}` });
  await svc.sendToUser("nobody", { to: "nobody" }); // accepted, delivered to no one

  const [f1, f2, fb] = await fence(svc, [a1, a2, b]);
  const common = [json({ to: "alice" }), text("hi alice"), binary(bytes)];
  assert.deepEqual(f1, common);
  assert.deepEqual(f2, [...common, json({ step: "filtered" })]);
  assert.deepEqual(fb, []);
});

test("group sendToAll reaches members only, honouring excludedConnections and filter", async () => {
  const svc = hubClient("groupsend");
  const a = await connect(svc, { userId: "alice", groups: ["red"] });
  const b = await connect(svc, { userId: "bob", groups: ["red", "blue"] });
  const c = await connect(svc, { userId: "carol", groups: ["blue"] });

  const red = svc.group("red");
  const bytes = new Uint8Array([255, 0, 255]);
  await red.sendToAll({ color: "red" });
  await red.sendToAll("red text", { contentType: "text/plain" });
  await red.sendToAll(bytes);
  await red.sendToAll({ step: "excluded" }, { excludedConnections: [a.connectionId] });
  await red.sendToAll({ step: "filter" }, { filter: odata`userId eq ${"alice"}` });

  const [fa, fb, fc] = await fence(svc, [a, b, c]);
  const common = [
    gjson("red", { color: "red" }),
    toGroup("red", "text", "red text"),
    toGroup("red", "binary", [...bytes]),
  ];
  assert.deepEqual(fa, [...common, gjson("red", { step: "filter" })]);
  assert.deepEqual(fb, [...common, gjson("red", { step: "excluded" })]);
  assert.deepEqual(fc, []);
});

// ---------------------------------------------------------------------------------------------
// group membership

test("group addUser / removeUser change membership of all the user's connections", async () => {
  const svc = hubClient("adduser");
  const a1 = await connect(svc, { userId: "alice" });
  const a2 = await connect(svc, { userId: "alice" });
  const b = await connect(svc, { userId: "bob" });
  const g = svc.group("team");

  assert.equal(await svc.groupExists("team"), false);
  await g.addUser("alice");
  assert.equal(await svc.groupExists("team"), true);
  await g.sendToAll({ step: "member" });
  await g.removeUser("alice");
  await g.sendToAll({ step: "removed" });
  assert.equal(await svc.groupExists("team"), false);

  const [f1, f2, fb] = await fence(svc, [a1, a2, b]);
  assert.deepEqual(f1, [gjson("team", { step: "member" })]);
  assert.deepEqual(f2, [gjson("team", { step: "member" })]);
  assert.deepEqual(fb, []);
});

test("group addConnection / removeConnection / removeConnectionFromAllGroups / removeUserFromAllGroups", async () => {
  const svc = hubClient("addconn");
  const a = await connect(svc, { userId: "alice" });
  const b = await connect(svc, { userId: "bob" });
  const x = svc.group("x");
  const y = svc.group("y");

  await x.addConnection(a.connectionId);
  await y.addConnection(a.connectionId);
  await x.addConnection(b.connectionId);
  await x.sendToAll({ step: "x1" });
  await y.sendToAll({ step: "y1" });

  await x.removeConnection(b.connectionId);
  await x.sendToAll({ step: "x2" });

  await svc.removeConnectionFromAllGroups(a.connectionId);
  await x.sendToAll({ step: "x3" });
  await y.sendToAll({ step: "y3" });
  assert.equal(await svc.groupExists("x"), false);
  assert.equal(await svc.groupExists("y"), false);

  await y.addConnection(b.connectionId);
  await svc.removeUserFromAllGroups("bob");
  await y.sendToAll({ step: "y4" });

  const [fa, fb] = await fence(svc, [a, b]);
  assert.deepEqual(fa, [gjson("x", { step: "x1" }), gjson("y", { step: "y1" }), gjson("x", { step: "x2" })]);
  assert.deepEqual(fb, [gjson("x", { step: "x1" })]);
});

test("addConnectionsToGroups / removeConnectionsFromGroups select connections by filter", async () => {
  const svc = hubClient("bulkgroups");
  const a = await connect(svc, { userId: "alice" });
  const b = await connect(svc, { userId: "bob" });

  await svc.addConnectionsToGroups(["p", "q"], odata`userId eq ${"alice"}`);
  await svc.group("p").sendToAll({ step: "p" });
  await svc.group("q").sendToAll({ step: "q" });
  await svc.removeConnectionsFromGroups(["p"], odata`userId eq ${"alice"}`);
  await svc.group("p").sendToAll({ step: "p-after" });

  const [fa, fb] = await fence(svc, [a, b]);
  assert.deepEqual(fa, [gjson("p", { step: "p" }), gjson("q", { step: "q" })]);
  assert.deepEqual(fb, []);
});

test("group listConnections pages through every member", async () => {
  const svc = hubClient("list");
  const members = [];
  for (let i = 0; i < 5; i++) members.push(await connect(svc, { userId: `user${i}`, groups: ["crowd"] }));
  await connect(svc, { userId: "outsider" });
  const expected = members
    .map((m) => ({ connectionId: m.connectionId, userId: m.userId }))
    .sort((l, r) => l.connectionId.localeCompare(r.connectionId));
  const norm = (list) =>
    list
      .map((m) => ({ connectionId: m.connectionId, userId: m.userId }))
      .sort((l, r) => l.connectionId.localeCompare(r.connectionId));

  const pages = [];
  for await (const page of (await svc.group("crowd").listConnections({ maxPageSize: 2 })).byPage()) {
    pages.push(page);
  }
  assert.ok(pages.length >= 3, `5 members at maxPageSize 2 need >= 3 pages, got ${pages.length}`);
  for (const p of pages) assert.ok(p.length <= 2, `page of ${p.length} exceeds maxPageSize 2`);
  assert.deepEqual(norm(pages.flat()), expected);

  const all = [];
  for await (const m of await svc.group("crowd").listConnections()) all.push(m);
  assert.deepEqual(norm(all), expected);

  const top = [];
  for await (const m of await svc.group("crowd").listConnections({ top: 3, maxPageSize: 2 })) top.push(m);
  assert.equal(top.length, 3, "top caps the total number of members returned");

  const none = [];
  for await (const m of await svc.group("empty").listConnections()) none.push(m);
  assert.deepEqual(none, []);
});

// ---------------------------------------------------------------------------------------------
// closing connections

test("closeConnection sends disconnected with the reason and removes the connection", async () => {
  const svc = hubClient("close");
  // Plain JSON protocol: the reliable one would try to recover the closed connection.
  const a = await connect(svc, { userId: "alice" }, { protocol: WebPubSubJsonProtocol() });
  const b = await connect(svc, { userId: "bob" }, { protocol: WebPubSubJsonProtocol() });

  await svc.closeConnection(a.connectionId, { reason: "closed-by-test" });
  const d = await within(a.disconnected, "disconnected event after closeConnection");
  assert.equal(d.connectionId, a.connectionId);
  assert.match(d.message?.message ?? "", /closed-by-test/);
  await within(a.stopped, "stopped after closeConnection");
  assert.equal(await svc.connectionExists(a.connectionId), false);
  assert.equal(await svc.connectionExists(b.connectionId), true);
  const [fb] = await fence(svc, [b]);
  assert.deepEqual(fb, []);
});

test("closeUserConnections closes every connection of that user only", async () => {
  const svc = hubClient("closeuser");
  const opts = { protocol: WebPubSubJsonProtocol() };
  const a1 = await connect(svc, { userId: "alice" }, opts);
  const a2 = await connect(svc, { userId: "alice" }, opts);
  const b = await connect(svc, { userId: "bob" }, opts);

  await svc.closeUserConnections("alice", { reason: "user-closed" });
  await within(Promise.all([a1.stopped, a2.stopped]), "both alice connections stopped");
  assert.equal(await svc.userExists("alice"), false);
  assert.equal(await svc.userExists("bob"), true);
  await svc.sendToAll({ still: "here" });
  assert.deepEqual(await b.inbox.next(), [json({ still: "here" })]);
});

test("group closeAllConnections closes members only; hub closeAllConnections closes the rest", async () => {
  const svc = hubClient("closeall");
  const opts = { protocol: WebPubSubJsonProtocol() };
  const a = await connect(svc, { userId: "alice", groups: ["doomed"] }, opts);
  const b = await connect(svc, { userId: "bob" }, opts);
  const c = await connect(svc, { userId: "carol" }, opts);

  await svc.group("doomed").closeAllConnections({ reason: "group-closed" });
  await within(a.stopped, "group member stopped");
  assert.equal(await svc.connectionExists(b.connectionId), true);

  await svc.closeAllConnections({ reason: "hub-closed" });
  await within(Promise.all([b.stopped, c.stopped]), "all connections stopped");
  assert.equal(await svc.userExists("bob"), false);
  assert.equal(await svc.userExists("carol"), false);
});

// ---------------------------------------------------------------------------------------------
// permissions

test("grantPermission / hasPermission / revokePermission gate the client's joinGroup and sendToGroup", async () => {
  const svc = hubClient("perm");
  const a = await connect(svc, { userId: "alice" }); // no roles at all
  const b = await connect(svc, { userId: "bob", groups: ["vip"] });
  const forbidden = (e) => {
    assert.equal(e.errorDetail?.name, "Forbidden", `expected a Forbidden ack, got ${e}`);
    return true;
  };

  assert.equal(await svc.hasPermission(a.connectionId, "joinLeaveGroup", { targetName: "vip" }), false);
  await assert.rejects(a.client.joinGroup("vip"), forbidden);

  await svc.grantPermission(a.connectionId, "joinLeaveGroup", { targetName: "vip" });
  assert.equal(await svc.hasPermission(a.connectionId, "joinLeaveGroup", { targetName: "vip" }), true);
  assert.equal(await svc.hasPermission(a.connectionId, "joinLeaveGroup", { targetName: "other" }), false);
  assert.equal(await svc.hasPermission(a.connectionId, "sendToGroup", { targetName: "vip" }), false);
  await a.client.joinGroup("vip");
  await assert.rejects(a.client.joinGroup("other"), forbidden);
  await svc.group("vip").sendToAll({ to: "vip" });
  assert.deepEqual(await a.inbox.next(), [gjson("vip", { to: "vip" })]);
  assert.deepEqual(await b.inbox.next(), [gjson("vip", { to: "vip" })]);

  // Joined, but sending still needs its own permission.
  await assert.rejects(a.client.sendToGroup("vip", "too early", "text"), forbidden);
  await svc.grantPermission(a.connectionId, "sendToGroup", { targetName: "vip" });
  assert.equal(await svc.hasPermission(a.connectionId, "sendToGroup", { targetName: "vip" }), true);
  await a.client.sendToGroup("vip", "now allowed", "text", { noEcho: true });
  const [got] = await b.inbox.next();
  assert.deepEqual(got, { via: "group", dataType: "text", data: "now allowed", group: "vip", fromUserId: "alice" });

  await svc.revokePermission(a.connectionId, "joinLeaveGroup", { targetName: "vip" });
  assert.equal(await svc.hasPermission(a.connectionId, "joinLeaveGroup", { targetName: "vip" }), false);
  await assert.rejects(a.client.leaveGroup("vip"), forbidden);
});
