"""Inline images of a batch being submitted: one copy each, on disk, until the batch is written.

Validation turns a local file into a data URI, and a JSON Lines file may carry data URIs
itself. The request written to Redis keeps a reference in their place (``workers.images``);
each distinct image's bytes go once to an anonymous spool file, keyed by SHA-256, and to
Redis once when the batch is written. Memory holds only a bounded window of recently seen
data URIs (a file named on 10,000 lines is one string, decoded and hashed once), so it does
not grow with the number of lines nor with the number of jobs sharing an image.

A data URI whose base64 is not canonical (stray padding bits) would not come back byte for
byte from the stored bytes: it stays inline in its request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import tempfile
from collections.abc import Iterator
from typing import Any

from producers.images import Window
from workers import images, keys

WINDOW_CHARS = 48 * 1024 * 1024  # data URIs remembered (by their text) with their hash


class InlineImages:
    """The distinct inline images of one submission, spooled to an anonymous temporary file."""

    def __init__(self) -> None:
        self.index: dict[str, tuple[int, int]] = {}  # sha256 -> (offset, length)
        self.window = Window(WINDOW_CHARS)
        self.uses = 0  # image uses replaced by a reference

    def __enter__(self) -> InlineImages:
        self.file = tempfile.TemporaryFile(prefix="wanq-images-")
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def externalize(self, request: dict[str, Any]) -> list[str]:
        """Replace the request's data URIs by references, in place; the image keys it now
        references, one per use, in order."""
        held = []
        for item in images.image_items(request):
            value = item["image"]
            if value[:5].lower() != "data:":
                continue
            reference = self._reference(value)
            if reference is not None:
                item["image"] = reference
                sha, _ = images.parse(reference) or ("", "")
                held.append(keys.image(sha))
                self.uses += 1
        return held

    def _reference(self, uri: str) -> str | None:
        cached = self.window.get(uri)
        if cached is not None:
            return cached or None
        header, _, payload = uri.partition(",")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            data = b""
        canonical = bool(data) and base64.b64encode(data).decode("ascii") == payload
        reference = ""
        if canonical:
            sha = hashlib.sha256(data).hexdigest()
            self._spool(sha, data)
            reference = images.ref(sha, header)
        self.window.put(uri, reference, len(uri))
        return reference or None

    def _spool(self, sha: str, data: bytes) -> None:
        if sha in self.index:
            return
        offset = self.file.seek(0, 2)
        self.file.write(data)
        self.index[sha] = (offset, len(data))

    def sizes(self) -> dict[str, int]:
        """Each distinct image's size in bytes."""
        return {sha: length for sha, (_, length) in self.index.items()}

    def read(self, sha: str) -> bytes:
        offset, length = self.index[sha]
        self.file.seek(offset)
        return self.file.read(length)

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)
