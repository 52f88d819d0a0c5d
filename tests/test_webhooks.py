"""Webhook deliveries against a real HTTP receiver on 127.0.0.1: signatures that verify,
the same webhook-id on every retry, and each answer classified for the caller's retries."""

from __future__ import annotations

import base64
import functools
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.canary import Canary, serve
from workers import netguard, webhooks
from workers.webhooks import (
    Delivery,
    WebhookVerificationError,
    generate_secret,
    message_id,
    sign,
    verify,
)

# the receivers here listen on loopback: allowed explicitly, as a user allows their own
OWN_RECEIVERS = netguard.Policy.from_setting("127.0.0.1")
deliver = functools.partial(webhooks.deliver, policy=OWN_RECEIVERS)

PAYLOAD = {"custom_id": "café-001", "state": "succeeded", "outputs": [{"type": "text"}]}
HOLD_LIMIT = 10.0  # a held reply waits at most this long if teardown never releases it


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False  # wait for the receiver's release before answering


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers each POST with the next scripted reply (200 when the script runs out)."""

    url: str = ""
    script: list[Reply] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_reply(self, request: Received) -> Reply:
        with self.lock:
            self.received.append(request)
            return self.script.pop(0) if self.script else Reply()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            reply = state.next_reply(Received(dict(self.headers.items()), body))
            if reply.hold:
                state.release.wait(HOLD_LIMIT)
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the client gave up (read timeout) before the answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/batch-1"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def secret() -> str:
    return generate_secret()


MSG = message_id("job", "job-1", "succeeded")


def test_receiver_verifies_the_signature_and_gets_the_payload_back(receiver, secret):
    result = deliver(receiver.url, secret, MSG, PAYLOAD)

    assert result == Delivery(True, 200, False, None, "HTTP 200")
    [request] = receiver.received
    assert request.headers["webhook-id"] == MSG
    assert request.headers["Content-Type"] == "application/json"
    assert request.body == json.dumps(PAYLOAD, separators=(",", ":"), ensure_ascii=False).encode()
    assert verify(secret, request.headers, request.body) == PAYLOAD
    assert secret not in json.dumps(request.headers)


def test_wrong_secret_and_tampered_body_are_refused(receiver, secret):
    deliver(receiver.url, secret, MSG, PAYLOAD)
    [request] = receiver.received

    with pytest.raises(WebhookVerificationError):
        verify(generate_secret(), request.headers, request.body)
    tampered = request.body.replace(b"succeeded", b"failed")
    with pytest.raises(WebhookVerificationError):
        verify(secret, request.headers, tampered)
    with pytest.raises(WebhookVerificationError):
        verify(secret, {**request.headers, "webhook-id": "msg_other"}, request.body)


def test_malformed_signature_headers_are_verification_errors(secret):
    body = json.dumps(PAYLOAD)
    headers = sign(secret, MSG, datetime.now(UTC), body)
    for broken in ("garbage", "v1,not-base64!", "v1,abc"):
        with pytest.raises(WebhookVerificationError):
            verify(secret, {**headers, "webhook-signature": broken}, body)
    del headers["webhook-signature"]
    with pytest.raises(WebhookVerificationError):
        verify(secret, headers, body)


def test_a_retry_after_500_carries_the_same_webhook_id_and_verifies(receiver, secret):
    receiver.script[:] = [Reply(500)]

    first = deliver(receiver.url, secret, MSG, PAYLOAD)
    second = deliver(receiver.url, secret, MSG, PAYLOAD)

    assert (first.ok, first.status, first.retry) == (False, 500, True)
    assert (second.ok, second.status, second.retry) == (True, 200, False)
    assert secret not in first.detail
    assert [r.headers["webhook-id"] for r in receiver.received] == [MSG, MSG]
    for request in receiver.received:
        assert verify(secret, request.headers, request.body) == PAYLOAD


def test_429_with_retry_after_is_retried_after_the_given_seconds(receiver, secret):
    receiver.script[:] = [Reply(429, {"Retry-After": "2"})]

    result = deliver(receiver.url, secret, MSG, PAYLOAD)

    assert result == Delivery(False, 429, True, 2.0, "HTTP 429, retry after 2s")


def test_retry_after_as_an_http_date(receiver, secret):
    when = datetime.now(UTC) + timedelta(hours=1)
    receiver.script[:] = [Reply(503, {"Retry-After": when.strftime("%a, %d %b %Y %H:%M:%S GMT")})]

    result = deliver(receiver.url, secret, MSG, PAYLOAD)

    assert result.retry and result.retry_after is not None
    assert 3500 < result.retry_after <= 3600


@pytest.mark.parametrize(
    ("status", "retry"),
    [(400, False), (404, False), (410, False), (408, True), (500, True), (503, True)],
)
def test_status_codes_are_classified(receiver, secret, status, retry):
    receiver.script[:] = [Reply(status)]

    result = deliver(receiver.url, secret, MSG, PAYLOAD)

    assert result == Delivery(False, status, retry, None, f"HTTP {status}")


def test_redirects_are_not_followed(receiver, secret):
    receiver.script[:] = [Reply(307, {"Location": receiver.url + "/elsewhere"})]

    result = deliver(receiver.url, secret, MSG, PAYLOAD)

    assert (result.ok, result.status, result.retry) == (False, 307, False)
    assert len(receiver.received) == 1


def test_connection_refused_is_retried(secret):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    result = deliver(f"http://127.0.0.1:{port}/hook", secret, MSG, PAYLOAD)

    assert (result.ok, result.status, result.retry, result.retry_after) == (False, None, True, None)
    assert result.detail == "ConnectionError posting the webhook"


def test_a_receiver_slower_than_the_read_timeout_is_retried(receiver, secret):
    receiver.script[:] = [Reply(200, hold=True)]

    result = deliver(receiver.url, secret, MSG, PAYLOAD, timeout=(2.0, 0.3))

    assert (result.ok, result.status, result.retry) == (False, None, True)
    assert result.detail == "ReadTimeout posting the webhook"
    assert len(receiver.received) == 1


def test_a_given_session_is_used_and_left_open(receiver, secret):
    with requests.Session() as session:
        for _ in range(2):
            assert deliver(receiver.url, secret, MSG, PAYLOAD, session=session).ok
    assert len(receiver.received) == 2


def test_message_id_is_stable_and_distinct():
    assert message_id("job", "j1", "succeeded") == message_id("job", "j1", "succeeded")
    assert message_id("job", "j1", "succeeded") != message_id("job", "j1", "failed")
    assert message_id("job", "j1", "succeeded") != message_id("job", "j2", "succeeded")
    assert message_id("ab", "c") != message_id("a", "bc")
    ident = message_id("batch", "b1", "ended")
    assert ident.startswith("msg_") and len(ident) == 28
    int(ident[4:], 16)


def test_generated_secret_round_trips_through_sign_and_verify():
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert generate_secret() != secret

    body = json.dumps(PAYLOAD)
    headers = sign(secret, MSG, datetime.now(UTC), body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature", "Content-Type"}
    assert verify(secret, headers, body) == PAYLOAD
    assert verify(secret, headers, body.encode()) == PAYLOAD


def test_timestamps_in_other_zones_sign_the_same_instant(secret):
    body = json.dumps(PAYLOAD)
    now = datetime.now(UTC)
    in_utc = sign(secret, MSG, now, body)
    in_tokyo = sign(secret, MSG, now.astimezone(timezone(timedelta(hours=9))), body)
    assert in_tokyo == in_utc
    assert verify(secret, in_tokyo, body) == PAYLOAD


def test_stale_signatures_are_refused(secret):
    body = json.dumps(PAYLOAD)
    headers = sign(secret, MSG, datetime.now(UTC) - timedelta(minutes=10), body)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(secret, headers, body)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/hook", "file:///etc/passwd", "example.com/hook", "http://", "", "ws://x"],
)
def test_only_http_urls_are_accepted(secret, url):
    with pytest.raises(ValueError, match="http"):
        deliver(url, secret, MSG, PAYLOAD)


@pytest.mark.parametrize("bad", ["", "whsec_", "whsec_!!!", "not base64"])
def test_unusable_secrets_are_value_errors(bad):
    with pytest.raises(ValueError, match="secret"):
        sign(bad, MSG, datetime.now(UTC), "{}")


def test_loopback_receivers_are_refused_unless_allowed(receiver, secret):
    result = webhooks.deliver(receiver.url, secret, MSG, PAYLOAD)

    assert (result.ok, result.status, result.retry) == (False, None, False)
    assert "127.0.0.1, a loopback address" in result.detail
    assert receiver.received == [], "nothing was sent"


@pytest.mark.parametrize(
    "shape",
    ["http://127.0.0.1:{port}\\@hooks.example.test/h", "http://x@127.0.0.1:{port}/h"],
)
def test_ambiguous_receiver_urls_are_refused(receiver, secret, shape):
    port = receiver.url.split(":")[2].split("/")[0]
    with pytest.raises(ValueError, match="URL refused"):
        deliver(shape.format(port=port), secret, MSG, PAYLOAD)
    assert receiver.received == []


def test_an_endless_answer_body_is_never_read(secret):
    for canary in serve(Canary(dribble=True)):  # 200, then one byte a second, forever
        result = deliver(f"http://{canary.address}/hook", secret, MSG, PAYLOAD)
        assert (result.ok, result.status) == (True, 200)
        assert canary.paths == ["/hook"]
