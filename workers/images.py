"""Content-addressed images: each distinct image is stored once, however many jobs use it.

A request payload keeps a reference (``wanq-image:<sha256>:<data URI header>``) where the
user's request had an inline image; the image itself lives once, as raw bytes, in the hash
``wanq:image:<sha256>`` with ``refs``, the number of references held on it. References are
taken and dropped only inside the atomic steps that move jobs: enqueue.lua (one per use),
finish.lua (a succeeded or cancelled job drops its own), purge.lua (a purged job drops what
it still holds); a batch being submitted holds one pin per image while it writes its jobs
(pin.lua / unpin.lua), so an image shared with a batch that ends meanwhile is never deleted
under it. An image goes when its count reaches zero.

The create task rebuilds the exact request the user wrote: ``header + "," + base64(bytes)``
gives the same string (a data URI whose base64 is not canonical is never referenced: it stays
inline, see ``producers.inline``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from redis.client import NEVER_DECODE

from workers import keys
from workers.scripts import load_script

REF = "wanq-image:"  # never a user's image: validation turns every image into http(s) or data:
IMAGE_PREFIX = keys.image("")
UNPIN_SLICE = 500  # pins released per script call


class ImageMissing(LookupError):
    """A referenced image is not stored: a bug in the reference counting, never a user error."""


def ref(sha256: str, header: str) -> str:
    """What a payload stores in place of ``header,base64`` (header: data:image/png;base64)."""
    return f"{REF}{sha256}:{header}"


def parse(value: str) -> tuple[str, str] | None:
    """(sha256, header) of a reference, or None for any other image string."""
    if not value.startswith(REF):
        return None
    sha256, _, header = value[len(REF) :].partition(":")
    return sha256, header


def image_items(request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The request's ``{"image": ...}`` content items, in order (a stored request is valid)."""
    for message in request.get("input", {}).get("messages", []):
        content = message.get("content") if isinstance(message, dict) else None
        for item in content if isinstance(content, list) else []:
            if isinstance(item, dict) and isinstance(item.get("image"), str):
                yield item


def resolve(client: redis.Redis, request: dict[str, Any]) -> dict[str, Any]:
    """The request as the provider must receive it: every reference back to its data URI."""
    items = [(item, parse(item["image"])) for item in image_items(request)]
    wanted = [(item, found) for item, found in items if found]
    if not wanted:
        return request
    pipe = client.pipeline(transaction=False)
    for _, (sha, _) in wanted:  # raw bytes: the client decodes answers, not these
        pipe.execute_command("HGET", keys.image(sha), "data", **{NEVER_DECODE: True})
    for (item, (sha, header)), data in zip(wanted, pipe.execute(), strict=True):
        if data is None:
            raise ImageMissing(f"image {sha} is not stored")
        item["image"] = f"{header},{base64.b64encode(data).decode('ascii')}"
    return request


class ImageStore:
    """The producer's and the purge's side of the images: pins, and their release."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._pin = load_script(client, "pin")
        self._unpin = load_script(client, "unpin")

    def pin(self, batch_id: str, sha256: str, data: bytes | None = None) -> bool:
        """Pin one image for the batch; False when it is not stored and ``data`` was None."""
        args: list[Any] = [sha256, "0"] if data is None else [sha256, "1", data]
        pinned = self._pin(keys=[keys.image(sha256), keys.batch_images(batch_id)], args=args)
        return bool(pinned)

    def unpin(self, batch_id: str) -> None:
        """Release every pin of the batch's submission (its jobs hold their own references)."""
        while self._unpin(keys=[keys.batch_images(batch_id)], args=[IMAGE_PREFIX, UNPIN_SLICE]):
            pass

    def stored(self, shas: Iterable[str]) -> set[str]:
        """Which of these images Redis holds already."""
        shas = list(shas)
        pipe = self.redis.pipeline(transaction=False)
        for sha in shas:
            pipe.exists(keys.image(sha))
        return {sha for sha, there in zip(shas, pipe.execute(), strict=True) if there}
