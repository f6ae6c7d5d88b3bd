"""The json.reliable.webpubsub.azure.v1 wire protocol, spoken directly with `websockets`, with
messages published by the official Python service SDK: sequence ids, sequenceAck, recovery
after a lost socket, refusal of unrecoverable sessions and the unacked-buffer limit."""

from __future__ import annotations

import json
import socket
import struct
import time
from urllib.parse import quote

import pytest
from websockets.exceptions import ConnectionClosed

from conftest import RELIABLE_PROTOCOL, Subscriber, eventually


def lose_socket(sub: Subscriber):
    """Drops the TCP connection with a reset: no close frame, like a network failure."""
    sock = sub.ws.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def round_trip(sub: Subscriber):
    """ping -> pong; frames are handled in order, so everything sent before is processed."""
    sub.ws.send(json.dumps({"type": "ping"}))
    while True:
        m = sub.recv_json()
        if m.get("type") == "pong":
            return
        sub.pending.append(m)


def recovery_url(emulator, hub: str, sub: Subscriber) -> str:
    # The spec's recovery URL carries no access token, only the two awps_ parameters.
    token = sub.connected["reconnectionToken"]
    return (
        f"ws://127.0.0.1:{emulator.port}/client/hubs/{hub}"
        f"?awps_connection_id={quote(sub.connection_id, safe='')}"
        f"&awps_reconnection_token={quote(token, safe='')}"
    )


def expect_closed(sub: Subscriber) -> int:
    """Reads until the server closes; returns the close code it sent."""
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(100000):
            sub.recv_raw()
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code


def test_connected_carries_reconnection_token_and_pong(subscribe):
    sub = subscribe(subprotocol=RELIABLE_PROTOCOL, user_id="rel")
    assert sub.subprotocol == RELIABLE_PROTOCOL
    assert isinstance(sub.connected.get("reconnectionToken"), str) and sub.connected["reconnectionToken"]
    round_trip(sub)


def test_recovery_replays_exactly_the_unacked_messages(service, subscribe, emulator, hub, fence):
    sub = subscribe(subprotocol=RELIABLE_PROTOCOL, user_id="rel")
    for i in range(3):
        service.send_to_connection(sub.connection_id, {"i": i})
    first = [sub.next_message() for _ in range(3)]
    assert [m["data"] for m in first] == [{"i": 0}, {"i": 1}, {"i": 2}]
    seq = [m["sequenceId"] for m in first]
    assert seq[0] >= 1 and seq == [seq[0], seq[0] + 1, seq[0] + 2], seq

    # Acknowledge only the first two, make sure the service has processed that, then vanish.
    sub.ws.send(json.dumps({"type": "sequenceAck", "sequenceId": seq[1]}))
    round_trip(sub)
    lose_socket(sub)
    time.sleep(0.2)
    assert service.connection_exists(sub.connection_id) is True, "session must be kept for recovery"

    # Published while the client is away: must be queued, not dropped.
    service.send_to_connection(sub.connection_id, {"i": 3})
    service.send_to_all({"i": 4})

    back = Subscriber(recovery_url(emulator, hub, sub), RELIABLE_PROTOCOL, handshake=False)
    try:
        assert back.subprotocol == RELIABLE_PROTOCOL
        replay = [back.next_message() for _ in range(3)]
        assert [m["data"] for m in replay] == [{"i": 2}, {"i": 3}, {"i": 4}]
        assert [m["sequenceId"] for m in replay] == [seq[2], seq[2] + 1, seq[2] + 2]
        (after,) = fence([back])
        assert after == [], "nothing may be replayed twice"
        assert service.connection_exists(sub.connection_id) is True
    finally:
        back.close()


def test_recovery_after_rest_close_is_refused_with_1008(service, subscribe, emulator, hub):
    sub = subscribe(subprotocol=RELIABLE_PROTOCOL, user_id="rel")
    service.close_connection(sub.connection_id, reason="done")
    frame = sub.recv_json()
    assert frame["type"] == "system" and frame["event"] == "disconnected", frame
    eventually(lambda: not service.connection_exists(sub.connection_id), "connection removed")

    # Spec: a failed recovery is answered by closing the WebSocket with 1008, which tells the
    # client to stop retrying (an HTTP error would make it retry for 30 s).
    back = Subscriber(recovery_url(emulator, hub, sub), RELIABLE_PROTOCOL, handshake=False)
    assert expect_closed(back) == 1008


def test_unacked_buffer_limit_closes_connection_with_1008(service, subscribe):
    sub = subscribe(subprotocol=RELIABLE_PROTOCOL, user_id="slow")
    sent = 0

    def publish(n):
        # The client keeps reading (so TCP never backs up) but never sends sequenceAck.
        nonlocal sent
        for _ in range(n):
            service.send_to_connection(sub.connection_id, {"n": sent})
            sent += 1
        for _ in range(n):
            sub.next_message()

    for _ in range(9):
        publish(100)
    assert service.connection_exists(sub.connection_id) is True, "900 unacked messages are within the 1000 limit"

    for _ in range(300):
        try:
            service.send_to_connection(sub.connection_id, {"n": sent})
        except Exception:
            break
        sent += 1
    assert expect_closed(sub) == 1008
    eventually(lambda: not service.connection_exists(sub.connection_id), "overflowed connection removed")
