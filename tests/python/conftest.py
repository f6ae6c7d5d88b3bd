"""Fixtures for running the official Python Web PubSub service SDK against the emulator.

The `emulator` fixture starts one real `webpubsub-emulator` process for the whole session
(`--port 0`, port read back from its "listening on http://127.0.0.1:PORT" line) and stops it
with SIGTERM at the end. The binary comes from WEBPUBSUB_EMULATOR_BIN, else target/debug.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.messaging.webpubsubservice import WebPubSubServiceClient
from websockets.sync.client import connect as ws_connect

ACCESS_KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"
JSON_PROTOCOL = "json.webpubsub.azure.v1"
RELIABLE_PROTOCOL = "json.reliable.webpubsub.azure.v1"
WAIT_S = 5.0
REPO_ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


def eventually(probe, what: str, timeout: float = WAIT_S):
    """Polls `probe` until it is true; fails after `timeout` seconds, naming `what`."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {what}")
        time.sleep(0.05)


@dataclass
class Emulator:
    port: int
    endpoint: str
    connection_string: str
    panics: list  # stderr lines of Rust panics seen so far


def _pump_stderr(stream, panics: list):
    # Forward the emulator's log unchanged, but remember panics: a panicking request task is a
    # bug even when the client-visible behaviour happens to look right.
    last_was_panic = False
    for line in stream:
        if last_was_panic and panics:
            panics[-1] += " " + line.strip()  # the panic message follows the location line
        last_was_panic = "panicked at" in line
        if last_was_panic:
            panics.append(line.strip())
        sys.stderr.write(line)


@pytest.fixture(scope="session")
def emulator():
    binary = os.environ.get("WEBPUBSUB_EMULATOR_BIN") or str(REPO_ROOT / "target" / "debug" / "webpubsub-emulator")
    proc = subprocess.Popen(
        [binary, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump():
        # Keep draining stdout for the whole run so the emulator never blocks on a full pipe.
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    panics: list[str] = []
    threading.Thread(target=_pump_stderr, args=(proc.stderr, panics), daemon=True).start()
    port = None
    try:
        while port is None:
            line = lines.get(timeout=20)
            if line is None:
                raise RuntimeError(f"emulator exited early with code {proc.wait()}")
            m = LISTENING.search(line)
            if m:
                port = int(m.group(1))
    except queue.Empty:
        proc.kill()
        raise RuntimeError("emulator did not start within 20 s")

    endpoint = f"http://127.0.0.1:{port}"
    yield Emulator(port, endpoint, f"Endpoint={endpoint};AccessKey={ACCESS_KEY};Version=1.0;", panics)

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def no_emulator_panic(emulator):
    """Fails the test if the emulator logged a panic while it ran."""
    seen = len(emulator.panics)
    yield
    time.sleep(0.1)  # a panic is logged just after the request that caused it
    new = emulator.panics[seen:]
    if new:
        pytest.fail(f"emulator panicked during this test: {new[0]}", pytrace=False)


@pytest.fixture
def hub(request) -> str:
    """A hub name unique to the test, so tests never see each other's connections."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:60]
    return f"py_{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def service(emulator, hub) -> WebPubSubServiceClient:
    return WebPubSubServiceClient.from_connection_string(emulator.connection_string, hub=hub)


class Subscriber:
    """A real WebSocket client on a client-access URL.

    With the JSON subprotocol it consumes the `connected` system message on open and exposes
    `connection_id` / `user_id`; `messages()` then yields decoded frames.
    """

    def __init__(self, url: str, subprotocol: str | None = JSON_PROTOCOL, handshake: bool = True):
        self.pending: list[dict] = []  # frames read past while waiting for an ack
        self.ws = ws_connect(
            url,
            subprotocols=[subprotocol] if subprotocol else None,
            open_timeout=WAIT_S,
            close_timeout=1,
        )
        self.subprotocol = self.ws.subprotocol
        self.connection_id = None
        self.user_id = None
        self.connected = None
        self._ack_id = 0
        if subprotocol and handshake:
            first = self.recv_json()
            assert first.get("type") == "system" and first.get("event") == "connected", first
            self.connected = first
            self.connection_id = first["connectionId"]
            self.user_id = first.get("userId")

    def recv_raw(self, timeout: float = WAIT_S):
        return self.ws.recv(timeout=timeout)

    def recv_json(self, timeout: float = WAIT_S) -> dict:
        frame = self.recv_raw(timeout)
        assert isinstance(frame, str), f"JSON subprotocol frames must be text, got {type(frame)}"
        return json.loads(frame)

    def next_message(self, timeout: float = WAIT_S) -> dict:
        """Next `type: message` frame (including ones read past by `request`), skipping others."""
        while True:
            m = self.pending.pop(0) if self.pending else self.recv_json(timeout)
            if m.get("type") == "message":
                # A REST send to a group has no sending user: `fromUserId` absent or null
                # (the official emulator writes null). Normalise to "absent".
                if m.get("from") == "group" and m.get("fromUserId", 0) is None:
                    del m["fromUserId"]
                return m

    def request(self, body: dict, timeout: float = WAIT_S) -> dict:
        """Sends a request with a fresh ackId and returns the matching ack."""
        self._ack_id += 1
        ack_id = self._ack_id
        self.ws.send(json.dumps({**body, "ackId": ack_id}))
        while True:
            m = self.recv_json(timeout)
            if m.get("type") == "ack" and m.get("ackId") == ack_id:
                return m
            self.pending.append(m)

    def close(self):
        self.ws.close()


@pytest.fixture
def subscribe(service):
    """subscribe(user_id=..., roles=..., groups=..., subprotocol=...) -> connected Subscriber."""
    opened: list[Subscriber] = []

    def make(subprotocol: str | None = JSON_PROTOCOL, client=None, **token_args) -> Subscriber:
        token = (client or service).get_client_access_token(**token_args)
        sub = Subscriber(token["url"], subprotocol)
        opened.append(sub)
        return sub

    yield make
    for sub in opened:
        try:
            sub.close()
        except Exception:
            pass


_fence_counter = 0


@pytest.fixture
def fence(service):
    """fence([subs]) broadcasts a marker and returns, per subscriber, the data messages before it.

    Delivery to one connection is ordered, so a message that should not have reached a
    subscriber shows up here; no sleeping needed to prove absence.
    """

    def run(subs: list[Subscriber]) -> list[list[dict]]:
        global _fence_counter
        _fence_counter += 1
        tag = f"fence-{_fence_counter}"
        service.send_to_all({"fence": tag})
        result = []
        for sub in subs:
            before = []
            while True:
                m = sub.next_message()
                data = m.get("data")
                if isinstance(data, dict) and "fence" in data:
                    if data["fence"] == tag:
                        break
                    continue
                before.append(m)
            result.append(before)
        return result

    return run
