// Client-side protocol features of the official `@azure/web-pubsub-client`: joining and leaving
// groups, publishing to groups, custom events, acks and ackId idempotency, role enforcement.
// Messages are observed by other real WebPubSubClient connections.

import { test } from "node:test";
import assert from "node:assert/strict";
import { WebPubSubJsonProtocol, SendMessageError } from "@azure/web-pubsub-client";
import { useEmulator } from "../lib/sdk.mjs";

const { hubClient, connect, fence } = useEmulator();

const ROLES = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"];
const fromGroup = (group, fromUserId, dataType, data) => ({ via: "group", dataType, data, group, fromUserId });
const forbidden = (e) => {
  assert.ok(e instanceof SendMessageError, `expected SendMessageError, got ${e}`);
  assert.equal(e.errorDetail?.name, "Forbidden");
  return true;
};

test("joinGroup / sendToGroup / leaveGroup between clients, with acks", async () => {
  const svc = hubClient("pubsub");
  const a = await connect(svc, { userId: "alice", roles: ROLES });
  const b = await connect(svc, { userId: "bob", roles: ROLES });
  const c = await connect(svc, { userId: "carol", roles: ROLES });

  const ja = await a.client.joinGroup("chat");
  const jb = await b.client.joinGroup("chat");
  assert.equal(typeof ja.ackId, "number");
  assert.equal(ja.isDuplicated, false);
  assert.equal(jb.isDuplicated, false);
  assert.equal(await svc.groupExists("chat"), true);

  const bytes = new Uint8Array([1, 2, 3, 250]);
  const sent = await a.client.sendToGroup("chat", { hello: "json" }, "json");
  assert.equal(typeof sent.ackId, "number");
  assert.notEqual(sent.ackId, ja.ackId, "ackIds are unique per connection");
  await a.client.sendToGroup("chat", "hello text", "text");
  await a.client.sendToGroup("chat", bytes.buffer, "binary");
  const expected = [
    fromGroup("chat", "alice", "json", { hello: "json" }),
    fromGroup("chat", "alice", "text", "hello text"),
    fromGroup("chat", "alice", "binary", [...bytes]),
  ];
  assert.deepEqual(await b.inbox.next(3), expected);
  // Without noEcho the sender is a member like any other and gets its own messages.
  assert.deepEqual(await a.inbox.next(3), expected);

  await b.client.leaveGroup("chat");
  await a.client.sendToGroup("chat", "after bob left", "text");
  const [fa, fb, fc] = await fence(svc, [a, b, c]);
  assert.deepEqual(fa, [fromGroup("chat", "alice", "text", "after bob left")]);
  assert.deepEqual(fb, []);
  assert.deepEqual(fc, [], "carol never joined");
});

test("noEcho suppresses only the sender's own copy", async () => {
  const svc = hubClient("noecho");
  const a = await connect(svc, { userId: "alice", roles: ROLES, groups: ["room"] });
  const b = await connect(svc, { userId: "bob", roles: ROLES, groups: ["room"] });

  await a.client.sendToGroup("room", { n: 1 }, "json", { noEcho: true });
  await a.client.sendToGroup("room", { n: 2 }, "json", { noEcho: false });
  const [fa, fb] = await fence(svc, [a, b]);
  assert.deepEqual(fa, [fromGroup("room", "alice", "json", { n: 2 })]);
  assert.deepEqual(fb, [
    fromGroup("room", "alice", "json", { n: 1 }),
    fromGroup("room", "alice", "json", { n: 2 }),
  ]);
});

test("sendToGroup reaches members without the sender having joined", async () => {
  const svc = hubClient("outsider");
  const a = await connect(svc, { userId: "alice", roles: ["webpubsub.sendToGroup"] });
  const b = await connect(svc, { userId: "bob", groups: ["room"] });
  await a.client.sendToGroup("room", "from outside", "text");
  const [fa, fb] = await fence(svc, [a, b]);
  assert.deepEqual(fa, []);
  assert.deepEqual(fb, [fromGroup("room", "alice", "text", "from outside")]);
});

test("group-scoped roles allow exactly their group; a missing role rejects with a Forbidden ack", async () => {
  const svc = hubClient("roles");
  const a = await connect(svc, {
    userId: "alice",
    roles: ["webpubsub.joinLeaveGroup.red", "webpubsub.sendToGroup.red"],
  });
  const b = await connect(svc, { userId: "bob", groups: ["red", "blue"] });
  const none = await connect(svc, { userId: "nobody" });

  await a.client.joinGroup("red");
  await assert.rejects(a.client.joinGroup("blue"), forbidden);
  await a.client.sendToGroup("red", "red ok", "text");
  await assert.rejects(a.client.sendToGroup("blue", "blue denied", "text"), forbidden);

  await assert.rejects(none.client.joinGroup("red"), forbidden);
  await assert.rejects(none.client.sendToGroup("red", "denied", "text"), forbidden);

  const [fb, fnone] = await fence(svc, [b, none]);
  assert.deepEqual(fb, [fromGroup("red", "alice", "text", "red ok")]);
  assert.deepEqual(fnone, [], "a Forbidden joinGroup must not have joined the group");
  assert.equal(await svc.connectionExists(none.connectionId), true, "a denied request does not close the connection");
});

test("sendEvent is acknowledged for a client without roles", async () => {
  const svc = hubClient("event");
  const a = await connect(svc, { userId: "alice" });
  const r1 = await a.client.sendEvent("ping", { at: 1 }, "json");
  const r2 = await a.client.sendEvent("note", "some text", "text");
  const r3 = await a.client.sendEvent("blob", new Uint8Array([1, 2]).buffer, "binary");
  for (const r of [r1, r2, r3]) {
    assert.equal(typeof r.ackId, "number");
    assert.equal(r.isDuplicated, false);
  }
  assert.equal(new Set([r1.ackId, r2.ackId, r3.ackId]).size, 3);
  // Events are for the upstream server, not for other subscribers.
  const [fa] = await fence(svc, [a]);
  assert.deepEqual(fa, []);
});

test("a reused ackId is acknowledged as duplicate and the message is delivered once", async () => {
  const svc = hubClient("dup");
  const a = await connect(svc, { userId: "alice", roles: ROLES });
  const b = await connect(svc, { userId: "bob", groups: ["room"] });

  const first = await a.client.sendToGroup("room", "once", "text", { ackId: 777 });
  assert.deepEqual(first, { ackId: 777, isDuplicated: false });
  const second = await a.client.sendToGroup("room", "twice", "text", { ackId: 777 });
  assert.deepEqual(second, { ackId: 777, isDuplicated: true });
  const [fb] = await fence(svc, [b]);
  assert.deepEqual(fb, [fromGroup("room", "alice", "text", "once")]);
});

test("reliable protocol numbers data messages with consecutive sequenceIds; plain JSON does not", async () => {
  const svc = hubClient("seq");
  const r = await connect(svc, { userId: "reliable" });
  const p = await connect(svc, { userId: "plain" }, { protocol: WebPubSubJsonProtocol() });
  for (let i = 0; i < 5; i++) await svc.sendToAll({ i });
  await r.inbox.next(5);
  await p.inbox.next(5);
  const seq = r.inbox.items.map((m) => m.sequenceId);
  assert.ok(seq.every((s) => Number.isInteger(s) && s > 0), `sequenceIds: ${seq}`);
  for (let i = 1; i < seq.length; i++) assert.equal(seq[i], seq[i - 1] + 1, `sequenceIds: ${seq}`);
  assert.deepEqual(
    p.inbox.items.map((m) => m.sequenceId),
    [undefined, undefined, undefined, undefined, undefined],
  );
  assert.deepEqual(r.inbox.items.map((m) => m.data), [0, 1, 2, 3, 4].map((i) => ({ i })));
});

test("wildcard group roles (joinLeaveGroups / sendToGroups patterns) match as documented", async () => {
  const svc = hubClient("wildcard");
  const a = await connect(svc, {
    userId: "alice",
    roles: [
      "webpubsub.joinLeaveGroups.public.*", // one segment under public
      "webpubsub.joinLeaveGroups.clientA.rooms.?1", // exactly one non-dot char before 1
      "webpubsub.sendToGroups.clientA.**", // anything below clientA
    ],
  });
  const b = await connect(svc, { userId: "bob", groups: ["clientA.alpha.room1"] });

  await a.client.joinGroup("public.lobby");
  await a.client.joinGroup("public."); // `*` also matches zero characters
  await assert.rejects(a.client.joinGroup("public.a.b"), forbidden);
  await assert.rejects(a.client.joinGroup("publicx"), forbidden);
  await a.client.joinGroup("clientA.rooms.a1");
  await assert.rejects(a.client.joinGroup("clientA.rooms.1"), forbidden);
  await assert.rejects(a.client.joinGroup("clientA.rooms.a.1"), forbidden);
  // A send pattern does not grant join/leave.
  await assert.rejects(a.client.joinGroup("clientA.alpha"), forbidden);

  await a.client.sendToGroup("clientA.alpha.room1", "deep", "text");
  await assert.rejects(a.client.sendToGroup("clientB.alpha", "other tenant", "text"), forbidden);
  await assert.rejects(a.client.sendToGroup("public.lobby", "join is not send", "text"), forbidden);
  const [fb] = await fence(svc, [b]);
  assert.deepEqual(fb, [fromGroup("clientA.alpha.room1", "alice", "text", "deep")]);
});
