"""Image references checked as the provider would: http(s) URL, base64 data URI or local file.

The provider takes JPEG, PNG (no transparency), BMP and WEBP, 384-5000 px a side, at most
10 MB. Everything is checked from bytes in memory, cheapest rule first, so a 10 MB data URI
is refused by its length before it is decoded and an image is never decoded past its header
unless its alpha channel has to be read. Local files become data URIs: the provider cannot
read our disk.

Also home of the two helpers that render user values in error details (``describe``,
``json_type``); validation and batch reading use them too.
"""

from __future__ import annotations

import base64
import os
import re
import reprlib
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import requests
from PIL import Image

from producers.options import ValidationOptions
from workers import errors
from workers.errors import ValidationError

MAX_BYTES = 10 * 1024 * 1024
MIN_SIDE = 384
MAX_SIDE = 5000
PROBE_TIMEOUT = 5.0
# Pillow names a JPEG holding several pictures (common from phone cameras) "MPO".
MIME_BY_FORMAT = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
}
# The provider forbids transparency in PNG; WEBP carries alpha the same way.
ALPHA_CHECKED_FORMATS = {"PNG", "WEBP"}

# Twice the largest image we accept: Pillow warns above this and refuses above double.
Image.MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE * 2

_WHITESPACE = re.compile(r"\s")
_ECHO_LIMIT = 40
_repr = reprlib.Repr()
_repr.maxstring = _ECHO_LIMIT
_repr.maxother = _ECHO_LIMIT


def describe(value: object) -> str:
    """Render a user value for an error detail, capped so a 10 MB string is never echoed."""
    try:
        text = _repr.repr(value)
    except ValueError:  # an int too long for str() (Python caps it at 4300 digits)
        text = f"<{json_type(value)}>"
    return text if len(text) <= _ECHO_LIMIT else text[: _ECHO_LIMIT - 1] + "…"


def json_type(value: object) -> str:
    """The JSON name of a value's type, the vocabulary of people writing request files."""
    names = {bool: "boolean", dict: "object", list: "array", str: "string", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return "number" if isinstance(value, int | float) else type(value).__name__


def check_image(ref: object, options: ValidationOptions, field: str) -> str:
    """Check one image reference; return it normalized (a local file becomes a data URI)."""
    if not isinstance(ref, str):
        raise ValidationError(errors.FIELD_TYPE, f"expected string, got {json_type(ref)}", field)
    scheme = ref[:8].lower()
    if scheme.startswith(("http://", "https://")):
        return _check_url(ref, options, field)
    if scheme.startswith("data:"):
        return _check_data_uri(ref, options, field)
    return _check_local_file(ref, options, field)


def _check_url(url: str, options: ValidationOptions, field: str) -> str:
    """Check the URL's form; reach it only when the caller opts in (it costs a round trip)."""
    if not _is_well_formed_url(url):
        raise ValidationError(errors.IMAGE_REFERENCE, f"malformed URL {describe(url)}", field)
    if options.probe_urls:
        _probe(url, field)
    return url


def _is_well_formed_url(url: str) -> bool:
    if _WHITESPACE.search(url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and bool(parts.hostname)


def _probe(url: str, field: str) -> None:
    """The URL must answer 2xx to HEAD, or to GET for servers that refuse HEAD."""
    try:
        status = _probe_status(url)
    except requests.RequestException as exc:
        detail = f"{type(exc).__name__} for {describe(url)}"
        raise ValidationError(errors.IMAGE_PROBE, detail, field) from exc
    if not 200 <= status < 300:
        raise ValidationError(errors.IMAGE_PROBE, f"HTTP {status} for {describe(url)}", field)


def _probe_status(url: str) -> int:
    response = requests.head(url, timeout=PROBE_TIMEOUT, allow_redirects=True)
    if 200 <= response.status_code < 300:
        return response.status_code
    with requests.get(url, timeout=PROBE_TIMEOUT, stream=True) as response:
        return response.status_code


def _check_data_uri(uri: str, options: ValidationOptions, field: str) -> str:
    """``data:{mime};base64,{data}``: form, declared type and size before decoding anything."""
    header, comma, payload = uri.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        detail = f"expected data:{{mime}};base64,{{data}}, got {describe(header)}"
        raise ValidationError(errors.IMAGE_REFERENCE, detail, field)
    mime = header[len("data:") : -len(";base64")]
    if not mime.lower().startswith("image/"):
        raise ValidationError(errors.IMAGE_FORMAT, f"declared {describe(mime)}", field)
    _check_byte_count(len(payload) * 3 // 4 - payload[-2:].count("="), field)
    data = _decode_base64(payload, field)
    if options.check_images:
        _inspect(data, field)
    return uri


def _decode_base64(payload: str, field: str) -> bytes:
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII characters
        raise ValidationError(errors.IMAGE_DECODE, "invalid base64", field) from exc
    if not data:
        raise ValidationError(errors.IMAGE_DECODE, "empty data", field)
    return data


def _check_local_file(ref: str, options: ValidationOptions, field: str) -> str:
    """Read a local image (always decoded: its real format names the data URI's type).

    A batch often names the same file on every line: the data URI is kept in a bounded
    window keyed by (path, size, mtime), so the file is read, decoded and encoded once, and
    every line shares one string (which ``producers.inline`` then hashes once)."""
    path, stat = _stat_local_file(ref, options.base_dir, field)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    cached = _LOCAL_WINDOW.get(key)
    if cached is not None:
        return cached
    data = _read_local_file(ref, path, field)
    mime = _inspect(data, field)
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    _LOCAL_WINDOW.put(key, uri, len(uri))
    return uri


def _stat_local_file(ref: str, base_dir: Path | None, field: str) -> tuple[Path, os.stat_result]:
    try:
        path = Path(ref).expanduser()
        if base_dir is not None:
            path = Path(base_dir).expanduser() / path  # an absolute path stays absolute
        if not path.is_file():
            detail = f"not a URL, data URI or existing file: {describe(ref)}"
            raise ValidationError(errors.IMAGE_REFERENCE, detail, field)
        stat = path.stat()
    except (OSError, ValueError, RuntimeError) as exc:  # unreadable, NUL byte, no home dir
        detail = f"cannot read {describe(ref)}: {type(exc).__name__}"
        raise ValidationError(errors.IMAGE_REFERENCE, detail, field) from exc
    _check_byte_count(stat.st_size, field)
    return path, stat


def _read_local_file(ref: str, path: Path, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        detail = f"cannot read {describe(ref)}: {type(exc).__name__}"
        raise ValidationError(errors.IMAGE_REFERENCE, detail, field) from exc


class Window:
    """A least-recently-used map bounded by the size its caller gives each entry."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.items: OrderedDict[object, tuple[str, int]] = OrderedDict()
        self.size = 0

    def get(self, key: object) -> str | None:
        found = self.items.get(key)
        if found is None:
            return None
        self.items.move_to_end(key)
        return found[0]

    def put(self, key: object, value: str, size: int) -> None:
        if key in self.items or size > self.max_size:
            return
        self.items[key] = (value, size)
        self.size += size
        while self.size > self.max_size:
            _, (_, dropped) = self.items.popitem(last=False)
            self.size -= dropped


LOCAL_WINDOW_CHARS = 48 * 1024 * 1024  # data URIs of local files kept (about 3 of 10 MB each)
_LOCAL_WINDOW = Window(LOCAL_WINDOW_CHARS)


def _check_byte_count(size: int, field: str) -> None:
    if size > MAX_BYTES:
        raise ValidationError(errors.IMAGE_BYTES, f"got {size:,} bytes", field)


def _inspect(data: bytes, field: str) -> str:
    """Apply the provider's image rules with Pillow; return the MIME type of the real format."""
    with _pillow_errors(field):
        image = Image.open(BytesIO(data))
    with image:
        if image.format not in MIME_BY_FORMAT:
            detail = f"got {image.format or 'an unknown format'}"
            raise ValidationError(errors.IMAGE_FORMAT, detail, field)
        width, height = image.size
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            raise ValidationError(errors.IMAGE_DIMENSIONS, f"got {width}x{height}", field)
        if image.format in ALPHA_CHECKED_FORMATS:
            with _pillow_errors(field):
                transparent = _has_transparency(image)
            if transparent:
                detail = f"{image.format} has transparent pixels"
                raise ValidationError(errors.IMAGE_TRANSPARENCY, detail, field)
        return MIME_BY_FORMAT[image.format]


def _has_transparency(image: Image.Image) -> bool:
    """A transparency key, or an alpha channel with any pixel below fully opaque."""
    if "transparency" in image.info:
        return True
    if "A" not in image.getbands():
        return False
    extrema = image.getchannel("A").getextrema()
    lowest = extrema[0] if isinstance(extrema, tuple) else extrema
    return bool(float(lowest) < 255)  # type: ignore[arg-type]  # one band: (min, max) of ints


@contextmanager
def _pillow_errors(field: str) -> Iterator[None]:
    """Map Pillow's failures to codes: a decompression bomb is oversized, the rest undecodable."""
    try:
        with warnings.catch_warnings(action="error", category=Image.DecompressionBombWarning):
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValidationError(errors.IMAGE_DIMENSIONS, "too many pixels", field) from exc
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, ValueError, ...
        raise ValidationError(errors.IMAGE_DECODE, "not a readable image", field) from exc
