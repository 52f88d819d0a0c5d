"""Signed webhook deliveries, the Standard Webhooks way: one attempt per call, classified.

Every ended job (and, once, every ended batch) is POSTed as JSON to the batch's webhook URL
with ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers (HMAC-SHA256 over
``id.timestamp.body`` with the ``whsec_`` secret). The id is derived from the event, never
from a time: a job's from the ``event_id`` its ending wrote (its ID and round: ``wanq retry``
starts a new one), a batch's from how many times it ended, so every retry, and a replay after
Redis lost the end of its AOF, carries the same one and receivers can drop duplicates; the
timestamp is signed afresh on each attempt. Receivers are reached through
``workers.netguard``: a URL resolving to a private or loopback address is refused unless the
allow-list (``WANQ_WEBHOOK_ALLOW_HOSTS``) names it, and the POST goes to the address that was
checked. Retries and their countdowns belong to the caller: ``deliver`` never sleeps or loops,
it makes one POST and says whether another is worth it.

A receiver verifies with the ``standardwebhooks`` package, on the raw body bytes::

    from standardwebhooks import Webhook, WebhookVerificationError
    try:  # HMAC compared with hmac.compare_digest; timestamps older/newer than 5 min refused
        event = Webhook(SECRET).verify(raw_body, request_headers)
    except (WebhookVerificationError, ValueError):  # ValueError: malformed signature header
        return 400  # and skip any webhook-id already processed: retries reuse it

``standardwebhooks`` (1.1) recomputes the v1 signature and compares the raw digests with
``hmac.compare_digest`` (constant time), against each space-separated ``v1,`` signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from standardwebhooks import Webhook, WebhookVerificationError
from standardwebhooks.webhooks import EmptyWebhookSecretError

from workers import http as wanq_http
from workers import netguard

STRICT = netguard.Policy()  # public addresses only


@dataclass(frozen=True)
class Delivery:
    """The outcome of one attempt, for the job record and the caller's retry decision."""

    ok: bool
    status: int | None  # HTTP status, None on connection error/timeout
    retry: bool  # connection errors, timeouts, 408, 429, 5xx; not success, 3xx or other 4xx
    retry_after: float | None  # seconds from a Retry-After header, when present
    detail: str  # short plain text: never the secret, the URL or the receiver's body


def message_id(*parts: str) -> str:
    """A stable id for one event (e.g. "job", job_id, "succeeded"): the same on every retry,
    so receivers can deduplicate, and with no state to keep."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return f"msg_{digest[:24]}"


def generate_secret() -> str:
    """A fresh ``whsec_`` secret: 32 random bytes, base64 (for docs and the CLI)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """The headers of one signed request. ``Webhook.sign`` stamps any datetime as UTC without
    converting it, so an aware timestamp is converted first (a naive one is taken as UTC)."""
    if timestamp.tzinfo is not None:
        timestamp = timestamp.astimezone(UTC)
    seconds = math.floor(timestamp.replace(tzinfo=UTC).timestamp())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(seconds),
        "webhook-signature": _webhook(secret).sign(msg_id, timestamp, body),
        "Content-Type": "application/json",
    }


def deliver(
    url: str,
    secret: str,
    msg_id: str,
    payload: dict[str, Any],
    *,
    policy: netguard.Policy = STRICT,
    timeout: tuple[float, float] = (5.0, 10.0),
    session: requests.Session | None = None,
) -> Delivery:
    """One signed POST to the address ``policy`` allows. Redirects are not followed: a POST
    redirected may lose its body or carry the signature to another host, so a 3xx is a
    (permanent) misconfiguration. A malformed URL raises ValueError; an address the policy
    refuses is a permanent failure, a name that does not resolve a retryable one."""
    netguard.parse(url)  # ValueError (netguard.Refused) for a URL that is not plainly http(s)
    try:
        target = netguard.check(url, policy)
    except netguard.Unresolved as exc:
        return Delivery(False, None, True, None, str(exc))
    except netguard.Refused as exc:
        return Delivery(False, None, False, None, str(exc))
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    headers = sign(secret, msg_id, datetime.now(UTC), body)
    http = session or netguard.guarded_session("wanq-webhooks")
    try:
        with netguard.send(  # stream: the receiver's body is never read (it could be endless)
            http, "POST", target, data=body.encode(), headers=headers, timeout=timeout, stream=True
        ) as response:
            code = response.status_code
            retry_after = wanq_http.retry_after(response.headers.get("Retry-After"))
    except requests.RequestException as exc:
        return Delivery(False, None, True, None, f"{type(exc).__name__} posting the webhook")
    finally:
        if session is None:
            http.close()
    ok = 200 <= code < 300
    retry = code in (408, 429) or code >= 500
    detail = f"HTTP {code}"
    if 300 <= code < 400:
        detail += " redirect not followed"
    if retry_after is not None:
        detail += f", retry after {retry_after:g}s"
    return Delivery(ok, code, retry, retry_after, detail)


def verify(secret: str, headers: Mapping[str, str], body: bytes | str) -> dict[str, Any]:
    """The receiver's check (``Webhook.verify``: constant-time comparison, 5-minute timestamp
    tolerance); malformed headers or a non-UTF-8 body, which the library lets out as plain
    ValueError, are raised as WebhookVerificationError too."""
    webhook = _webhook(secret)
    try:
        webhook.verify(body, dict(headers.items()), json_parse=False)
    except ValueError as exc:
        raise WebhookVerificationError("malformed webhook headers or body") from exc
    payload = json.loads(body)
    if not isinstance(payload, dict):
        raise ValueError("webhook body is not a JSON object")
    return payload


def _webhook(secret: str) -> Webhook:
    try:
        return Webhook(secret)
    except (ValueError, EmptyWebhookSecretError):
        raise ValueError("webhook secret must be 'whsec_' followed by base64") from None


__all__ = [
    "Delivery",
    "WebhookVerificationError",
    "deliver",
    "generate_secret",
    "message_id",
    "sign",
    "verify",
]
