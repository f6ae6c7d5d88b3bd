"""The official `azure-messaging-webpubsubservice` SDK against the emulator, observed by real
WebSocket subscribers (`websockets`, subprotocol json.webpubsub.azure.v1 unless noted)."""

from __future__ import annotations

import base64
import json

import pytest
from azure.core.exceptions import HttpResponseError
from azure.messaging.webpubsubservice import WebPubSubServiceClient

# The generated (un-patched) operation calls REST :generateToken; the public wrapper signs
# tokens locally instead. Reaching it lets the test cover the service-side token endpoint.
from azure.messaging.webpubsubservice._operations._operations import (
    WebPubSubServiceClientOperationsMixin as GeneratedOperations,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import JSON_PROTOCOL, Subscriber, eventually

WRONG_KEY = "Z" * 44


def server_msg(data_type: str, data) -> dict:
    return {"type": "message", "from": "server", "dataType": data_type, "data": data}


def rest_group_msg(group: str, data_type: str, data) -> dict:
    """What a REST send to `group` looks like to a member: a group message with no sender."""
    return {"type": "message", "from": "group", "group": group, "dataType": data_type, "data": data}


# ---------------------------------------------------------------------------------------------
# tokens, connections, auth


def test_client_access_token_connects_with_user_roles_and_groups(service, subscribe):
    sub = subscribe(user_id="alice", roles=["webpubsub.joinLeaveGroup"], groups=["initial"])
    assert sub.subprotocol == JSON_PROTOCOL, "the emulator must select the requested subprotocol"
    assert sub.user_id == "alice"
    assert isinstance(sub.connection_id, str) and sub.connection_id

    assert service.connection_exists(sub.connection_id) is True
    assert service.connection_exists("no-such-connection") is False
    assert service.user_exists("alice") is True
    assert service.user_exists("nobody") is False
    assert service.group_exists("initial") is True  # from the webpubsub.group claim
    assert service.group_exists("never-used") is False

    # The role from the token lets the client join any group itself.
    ack = sub.request({"type": "joinGroup", "group": "self-joined"})
    assert ack == {"type": "ack", "ackId": ack["ackId"], "success": True}
    service.send_to_group("self-joined", {"to": "self-joined"})
    assert sub.next_message() == rest_group_msg("self-joined", "json", {"to": "self-joined"})

    sub.close()
    eventually(lambda: not service.connection_exists(sub.connection_id), "connection removed after close")
    assert service.user_exists("alice") is False
    assert service.group_exists("initial") is False


def test_generate_token_rest_endpoint(service, emulator, hub):
    # POST /api/hubs/{hub}/:generateToken?userId=..&role=..&group=..&minutesToExpire=..
    resp = GeneratedOperations.get_client_access_token(
        service,
        user_id="gen-user",
        roles=["webpubsub.sendToGroup"],
        groups=["gen-group"],
        minutes_to_expire=5,
    )
    token = resp["token"]
    assert isinstance(token, str) and token.count(".") == 2, resp
    sub = Subscriber(f"ws://127.0.0.1:{emulator.port}/client/hubs/{hub}?access_token={token}")
    try:
        assert sub.user_id == "gen-user"
        service.send_to_group("gen-group", {"via": "rest"})
        assert sub.next_message() == rest_group_msg("gen-group", "json", {"via": "rest"})
        ack = sub.request({"type": "sendToGroup", "group": "gen-group", "dataType": "text", "data": "hi"})
        assert ack["success"] is True, ack
        assert sub.next_message() == {
            "type": "message",
            "from": "group",
            "group": "gen-group",
            "fromUserId": "gen-user",
            "dataType": "text",
            "data": "hi",
        }
    finally:
        sub.close()


def test_wrong_access_key_is_rejected_with_401(emulator, hub, service):
    bad = WebPubSubServiceClient.from_connection_string(
        f"Endpoint={emulator.endpoint};AccessKey={WRONG_KEY};Version=1.0;", hub=hub
    )
    with pytest.raises(HttpResponseError) as err:
        bad.send_to_all({"x": 1})
    assert err.value.status_code == 401
    with pytest.raises(HttpResponseError) as err:
        bad.user_exists("anyone")
    assert err.value.status_code == 401

    # A client token signed with the wrong key must not open a connection either.
    url = bad.get_client_access_token(user_id="mallory")["url"]
    with pytest.raises(InvalidStatus) as refused:
        Subscriber(url)
    assert refused.value.response.status_code == 401
    assert service.user_exists("mallory") is False


# ---------------------------------------------------------------------------------------------
# sending


def test_send_to_all_json_text_binary(service, subscribe, emulator, hub):
    a = subscribe(user_id="alice")
    b = subscribe(user_id="bob")
    other = WebPubSubServiceClient.from_connection_string(emulator.connection_string, hub=hub + "_x")
    o = subscribe(client=other, user_id="alice")

    payload = {"kind": "json", "nested": {"n": 1, "list": [True, None, "x"]}}
    raw = bytes([0, 1, 2, 127, 128, 254, 255])
    service.send_to_all(payload)
    service.send_to_all("plain words", content_type="text/plain")
    service.send_to_all(raw, content_type="application/octet-stream")
    expected = [
        server_msg("json", payload),
        server_msg("text", "plain words"),
        server_msg("binary", base64.b64encode(raw).decode()),
    ]
    for sub in (a, b):
        assert [sub.next_message() for _ in range(3)] == expected

    other.send_to_all({"fence": "other-hub"})
    assert o.next_message() == server_msg("json", {"fence": "other-hub"}), "hubs must be isolated"


def test_send_to_all_filter_and_excluded(service, subscribe, fence):
    a = subscribe(user_id="alice", groups=["g1"])
    b = subscribe(user_id="bob")
    q = subscribe(user_id="o'brien", groups=["g1"])

    service.send_to_all({"step": "excluded"}, excluded=[a.connection_id, q.connection_id])
    service.send_to_all({"step": "quoted"}, filter="userId eq 'o''brien'")
    service.send_to_all({"step": "or"}, filter="userId eq 'alice' or userId eq 'bob'")
    service.send_to_all({"step": "groups"}, filter="'g1' in groups and not (userId eq 'alice')")
    service.send_to_all({"step": "both"}, filter="userId ne 'bob'", excluded=[q.connection_id])

    fa, fb, fq = fence([a, b, q])
    assert fa == [server_msg("json", {"step": "or"}), server_msg("json", {"step": "both"})]
    assert fb == [server_msg("json", {"step": "excluded"}), server_msg("json", {"step": "or"})]
    assert fq == [server_msg("json", {"step": "quoted"}), server_msg("json", {"step": "groups"})]


def test_send_to_user(service, subscribe, fence):
    a1 = subscribe(user_id="alice")
    a2 = subscribe(user_id="alice")
    b = subscribe(user_id="bob")

    service.send_to_user("alice", {"to": "alice"})
    service.send_to_user("alice", "hi alice", content_type="text/plain")
    service.send_to_user("alice", {"step": "filtered"}, filter=f"connectionId ne '{a1.connection_id}'")
    service.send_to_user("nobody", {"to": "nobody"})  # accepted, reaches no one

    f1, f2, fb = fence([a1, a2, b])
    common = [server_msg("json", {"to": "alice"}), server_msg("text", "hi alice")]
    assert f1 == common
    assert f2 == common + [server_msg("json", {"step": "filtered"})]
    assert fb == []


def test_send_to_group_with_filter_and_excluded(service, subscribe, fence):
    a = subscribe(user_id="alice")
    b = subscribe(user_id="bob")
    c = subscribe(user_id="carol")
    service.add_connection_to_group("red", a.connection_id)
    service.add_connection_to_group("red", b.connection_id)

    service.send_to_group("red", {"color": "red"})
    service.send_to_group("red", "red text", content_type="text/plain")
    service.send_to_group("red", {"step": "excluded"}, excluded=[a.connection_id])
    service.send_to_group("red", {"step": "filter"}, filter="userId eq 'alice'")

    fa, fb, fc = fence([a, b, c])
    common = [rest_group_msg("red", "json", {"color": "red"}), rest_group_msg("red", "text", "red text")]
    assert fa == common + [rest_group_msg("red", "json", {"step": "filter"})]
    assert fb == common + [rest_group_msg("red", "json", {"step": "excluded"})]
    assert fc == []


def test_send_to_connection(service, subscribe, fence):
    a = subscribe(user_id="alice")
    b = subscribe(user_id="alice")
    service.send_to_connection(a.connection_id, {"only": "a"})
    fa, fb = fence([a, b])
    assert fa == [server_msg("json", {"only": "a"})]
    assert fb == []


# ---------------------------------------------------------------------------------------------
# groups


def test_add_and_remove_user_from_group(service, subscribe, fence):
    a1 = subscribe(user_id="alice")
    a2 = subscribe(user_id="alice")
    b = subscribe(user_id="bob")

    assert service.group_exists("team") is False
    service.add_user_to_group("team", "alice")
    assert service.group_exists("team") is True
    service.send_to_group("team", {"step": "member"})
    service.remove_user_from_group("team", "alice")
    service.send_to_group("team", {"step": "removed"})
    assert service.group_exists("team") is False

    f1, f2, fb = fence([a1, a2, b])
    assert f1 == [rest_group_msg("team", "json", {"step": "member"})]
    assert f2 == [rest_group_msg("team", "json", {"step": "member"})]
    assert fb == []


def test_connection_group_membership(service, subscribe, fence):
    a = subscribe(user_id="alice")
    b = subscribe(user_id="bob")

    service.add_connection_to_group("x", a.connection_id)
    service.add_connection_to_group("y", a.connection_id)
    service.add_connection_to_group("x", b.connection_id)
    service.send_to_group("x", {"step": "x1"})
    service.remove_connection_from_group("x", b.connection_id)
    service.send_to_group("x", {"step": "x2"})
    service.remove_connection_from_all_groups(a.connection_id)
    service.send_to_group("x", {"step": "x3"})
    service.send_to_group("y", {"step": "y3"})
    assert service.group_exists("x") is False
    assert service.group_exists("y") is False

    fa, fb = fence([a, b])
    assert fa == [rest_group_msg("x", "json", {"step": "x1"}), rest_group_msg("x", "json", {"step": "x2"})]
    assert fb == [rest_group_msg("x", "json", {"step": "x1"})]


def test_list_connections_pages(service, subscribe):
    members = [subscribe(user_id=f"user{i}", groups=["crowd"]) for i in range(5)]
    subscribe(user_id="outsider")
    expected = sorted((m.connection_id, m.user_id) for m in members)

    pages = list(service.list_connections(group="crowd", maxpagesize=2).by_page())
    pages = [list(p) for p in pages]
    assert len(pages) >= 3, f"5 members at maxpagesize 2 need >= 3 pages, got {len(pages)}"
    assert all(len(p) <= 2 for p in pages)
    assert sorted((m.connection_id, m.user_id) for p in pages for m in p) == expected
    assert sorted((m.connection_id, m.user_id) for m in service.list_connections(group="crowd")) == expected
    assert len(list(service.list_connections(group="crowd", top=3))) == 3


# ---------------------------------------------------------------------------------------------
# closing


def test_close_connection_sends_disconnected_with_reason(service, subscribe):
    a = subscribe(user_id="alice")
    b = subscribe(user_id="bob")
    service.close_connection(a.connection_id, reason="closed-by-test")

    frame = a.recv_json()
    assert frame["type"] == "system" and frame["event"] == "disconnected", frame
    assert "closed-by-test" in frame.get("message", ""), frame
    with pytest.raises(ConnectionClosed):
        a.recv_raw()
    assert service.connection_exists(a.connection_id) is False
    assert service.connection_exists(b.connection_id) is True


def test_close_user_connections(service, subscribe):
    a1 = subscribe(user_id="alice")
    a2 = subscribe(user_id="alice")
    b = subscribe(user_id="bob")
    service.close_user_connections("alice", reason="user-closed")
    for sub in (a1, a2):
        with pytest.raises(ConnectionClosed):
            while True:  # a disconnected system message may precede the close
                sub.recv_raw()
    assert service.user_exists("alice") is False
    assert service.user_exists("bob") is True
    service.send_to_user("bob", {"still": "here"})
    assert b.next_message() == server_msg("json", {"still": "here"})


# ---------------------------------------------------------------------------------------------
# permissions


def test_grant_check_revoke_permission(service, subscribe, fence):
    a = subscribe(user_id="alice")  # no roles
    b = subscribe(user_id="bob", groups=["vip"])

    assert service.has_permission("joinLeaveGroup", a.connection_id, target_name="vip") is False
    denied = a.request({"type": "joinGroup", "group": "vip"})
    assert denied["success"] is False and denied["error"]["name"] == "Forbidden", denied

    service.grant_permission("joinLeaveGroup", a.connection_id, target_name="vip")
    assert service.has_permission("joinLeaveGroup", a.connection_id, target_name="vip") is True
    assert service.has_permission("joinLeaveGroup", a.connection_id, target_name="other") is False
    assert a.request({"type": "joinGroup", "group": "vip"})["success"] is True
    other = a.request({"type": "joinGroup", "group": "other"})
    assert other["success"] is False and other["error"]["name"] == "Forbidden", other

    send = a.request({"type": "sendToGroup", "group": "vip", "dataType": "text", "data": "early"})
    assert send["success"] is False and send["error"]["name"] == "Forbidden", send
    service.grant_permission("sendToGroup", a.connection_id, target_name="vip")
    assert service.has_permission("sendToGroup", a.connection_id, target_name="vip") is True
    send = a.request({"type": "sendToGroup", "group": "vip", "dataType": "text", "data": "allowed", "noEcho": True})
    assert send["success"] is True, send

    service.revoke_permission("joinLeaveGroup", a.connection_id, target_name="vip")
    assert service.has_permission("joinLeaveGroup", a.connection_id, target_name="vip") is False
    leave = a.request({"type": "leaveGroup", "group": "vip"})
    assert leave["success"] is False and leave["error"]["name"] == "Forbidden", leave

    fb, = fence([b])
    assert fb == [
        {"type": "message", "from": "group", "group": "vip", "fromUserId": "alice", "dataType": "text", "data": "allowed"}
    ]


# ---------------------------------------------------------------------------------------------
# simple WebSocket clients (no subprotocol): raw frames


def test_simple_websocket_client_gets_raw_frames(service, subscribe):
    raw = subscribe(subprotocol=None, user_id="plain")
    assert raw.subprotocol is None
    eventually(lambda: service.user_exists("plain"), "simple client registered")

    service.send_to_all("hello text", content_type="text/plain")
    service.send_to_all({"hello": "json"})
    service.send_to_all("a json string", content_type="application/json")
    service.send_to_all(b"\x00\x01\xff", content_type="application/octet-stream")

    assert raw.recv_raw() == "hello text"
    frame = raw.recv_raw()
    assert isinstance(frame, str) and json.loads(frame) == {"hello": "json"}
    assert raw.recv_raw() == '"a json string"'
    assert raw.recv_raw() == b"\x00\x01\xff"


# ---------------------------------------------------------------------------------------------
# limits and token scope


def test_client_token_is_bound_to_its_hub(service, emulator, hub):
    # The token's audience is .../client/hubs/<hub>; presenting it on another hub must fail.
    token = service.get_client_access_token(user_id="alice")["token"]
    with pytest.raises(InvalidStatus) as refused:
        Subscriber(f"ws://127.0.0.1:{emulator.port}/client/hubs/{hub}_other?access_token={token}")
    assert refused.value.response.status_code == 401


def test_message_size_limit_is_one_megabyte(service, subscribe):
    sub = subscribe(user_id="big")
    near_limit = "x" * 1_000_000
    service.send_to_all(near_limit, content_type="text/plain")
    assert sub.next_message() == server_msg("text", near_limit)
    with pytest.raises(HttpResponseError) as err:
        service.send_to_all("y" * 2_000_000, content_type="text/plain")
    assert 400 <= err.value.status_code < 500, err.value.status_code


def test_expired_client_token_is_refused(service, emulator, hub):
    # minutes_to_expire < 0 signs an `exp` in the past (well beyond any clock-skew allowance).
    url = service.get_client_access_token(user_id="late", minutes_to_expire=-30)["url"]
    with pytest.raises(InvalidStatus) as refused:
        Subscriber(url)
    assert refused.value.response.status_code == 401
    assert service.user_exists("late") is False


def test_client_send_to_group_defaults_to_json(service, subscribe):
    a = subscribe(user_id="alice", roles=["webpubsub.sendToGroup"])
    b = subscribe(user_id="bob", groups=["room"])
    ack = a.request({"type": "sendToGroup", "group": "room", "data": {"k": [1, 2]}})
    assert ack["success"] is True, ack
    assert b.next_message() == {
        "type": "message",
        "from": "group",
        "group": "room",
        "fromUserId": "alice",
        "dataType": "json",
        "data": {"k": [1, 2]},
    }
