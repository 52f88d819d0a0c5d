"""Keep a finished job's outputs on disk: provider URLs expire after about 24 hours.

An overnight batch would otherwise lose its images by the time anyone looks. Every output
is saved under an archive directory in the provider's order (``00.png``, ``01.txt``...).

A failed download never fails the job (it was paid for): the item keeps its URL and gets an
``archive_error``, and calling ``archive_outputs`` again fetches only what is missing.

The URLs come from a remote answer, so they are not trusted: ``workers.netguard`` reads each
one strictly, resolves it once, refuses private, loopback or otherwise non-public addresses
unless explicitly allowed, and connects to the very address it checked (every redirect hop
checked the same way). A size cap, per-read timeouts and a total deadline per download (a host
that dribbles a byte a second cannot hold a thread for longer), and a session of its own, never
the provider's (whose headers carry the API key). Error messages name the host, never the full
URL: signed URLs carry credentials in their query string.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import requests
import urllib3

from workers import destination, netguard
from workers.destination import Location
from workers.errors import WanqError

CHUNK_BYTES = 64 * 1024
MAX_REDIRECTS = 3
BACKOFF_SECONDS = 0.5  # first retry delay, doubled after each further failure
EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/pjpeg": "jpg",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/x-ms-bmp": "bmp",
}
DEFAULT_EXTENSION = "png"
ARCHIVE_FIELDS = ("path", "bytes", "sha256", "archive_error")
UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
MAX_NAME = 100  # well under any filesystem's 255-byte limit, with room for the hash suffix


@dataclass(frozen=True)
class DownloadLimits:
    max_bytes: int = 50 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    attempts: int = 3  # retried with backoff (0.5 s, 1 s ...) on connection errors, 429, 5xx
    deadline: float = 120.0  # seconds for the whole download: attempts, redirects, every byte
    allow_private: bool = False  # True: fetch from any address, private networks included
    allowed_hosts: frozenset[str] = frozenset()  # "host", "host:port" or a network, allowed

    @property
    def policy(self) -> netguard.Policy:
        allowed = frozenset(host.lower() for host in self.allowed_hosts)
        return netguard.Policy(self.allow_private, allowed)


class ArchiveError(WanqError):
    """A download or write that failed, in plain words (never the URL or any secret)."""


class _Retryable(ArchiveError):
    """A failure worth another attempt: connection errors, timeouts, 429, 5xx."""


def new_session() -> requests.Session:
    """A session for downloads only: no credentials, no proxy, no hidden retries, and TLS
    done for the checked name while connecting to the checked address (netguard)."""
    return netguard.guarded_session("wanq-archive")


# --- public API ------------------------------------------------------------------------------


def download(
    url: str, dest: Location, limits: DownloadLimits, session: requests.Session | None = None
) -> tuple[int, str]:
    """Stream url into dest (via ``dest.with_suffix('.part')``, renamed atomically).

    Returns (bytes, sha256 hex); raises ArchiveError, leaving neither dest nor a part file
    behind on failure.
    """
    _path, size, digest = _download(url, lambda _content_type: dest, limits, session)
    return size, digest


def archive_outputs(
    outputs: list[dict[str, Any]],
    directory: Location,
    limits: DownloadLimits,
    session: requests.Session | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Save a job's outputs under directory as ``{index:02d}.{ext}``, index = position in list.

    Returns the outputs (copies; saved items get "path", "bytes" and "sha256", failed ones an
    "archive_error" and keep their URL) and the error messages. Never raises for one item;
    items already archived (file present with the recorded size) are not fetched again.
    """
    own_session = session is None
    session = session or new_session()
    archived: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        for index, item in enumerate(outputs):
            result = _archive_item(index, item, directory, limits, session)
            archived.append(result)
            if "archive_error" in result:
                errors.append(f"output {index}: {result['archive_error']}")
    finally:
        if own_session:
            session.close()
    return archived, errors


def archive_dir(root: Location, batch_id: str, custom_id: str) -> Location:
    """root/batch_id/custom_id, both made filesystem-safe: never outside root, never shared.
    ``root`` is a local directory or an fsspec URL (``workers.destination``)."""
    return destination.join(root, _safe_name(batch_id), _safe_name(custom_id))


# --- outputs ---------------------------------------------------------------------------------


def _archive_item(
    index: int,
    item: dict[str, Any],
    directory: Location,
    limits: DownloadLimits,
    session: requests.Session,
) -> dict[str, Any]:
    if item.get("type") not in ("image", "text") or _already_archived(item):
        return dict(item)
    fresh = {key: value for key, value in item.items() if key not in ARCHIVE_FIELDS}
    try:
        path, size, digest = _save(index, fresh, directory, limits, session)
    except Exception as exc:  # a paid job must never fail because its archive did
        reason = str(exc) if isinstance(exc, ArchiveError) else f"unexpected {type(exc).__name__}"
        return {**fresh, "archive_error": reason}
    return {**fresh, "path": str(path), "bytes": size, "sha256": digest}


def _save(
    index: int,
    item: dict[str, Any],
    directory: Location,
    limits: DownloadLimits,
    session: requests.Session,
) -> tuple[Location, int, str]:
    stem = f"{index:02d}"
    if item["type"] == "text":
        text = item.get("text")
        if not isinstance(text, str):
            raise ArchiveError("text item has no text")
        return _write_text(destination.join(directory, f"{stem}.txt"), text)
    url = item.get("url")
    if not isinstance(url, str) or not url:
        raise ArchiveError("image item has no URL")

    def name(content_type: str) -> Location:
        return destination.join(directory, f"{stem}.{_extension(content_type)}")

    return _download(url, name, limits, session)


def _already_archived(item: dict[str, Any]) -> bool:
    path = item.get("path")
    if not isinstance(path, str) or not isinstance(item.get("bytes"), int):
        return False
    return destination.size(path) == item["bytes"]


def _extension(content_type: str) -> str:
    mime = content_type.split(";", 1)[0].strip().lower()
    return EXTENSIONS.get(mime, DEFAULT_EXTENSION)


def _write_text(path: Location, text: str) -> tuple[Location, int, str]:
    data = text.encode("utf-8")
    with _atomic_file(path) as handle:
        handle.write(data)
    return path, len(data), hashlib.sha256(data).hexdigest()


# --- downloading -----------------------------------------------------------------------------


def _download(
    url: str,
    dest_for: Callable[[str], Location],
    limits: DownloadLimits,
    session: requests.Session | None,
) -> tuple[Location, int, str]:
    """Fetch with retries, all within ``limits.deadline``; dest_for maps the answer's
    Content-Type to the file to write."""
    own_session = session is None
    session = session or new_session()
    attempts = max(1, limits.attempts)
    clock = _Deadline(limits.deadline)
    try:
        for attempt in range(1, attempts):
            try:
                return _fetch_once(url, dest_for, limits, session, clock)
            except _Retryable:
                time.sleep(min(BACKOFF_SECONDS * 2 ** (attempt - 1), clock.left()))
        try:
            return _fetch_once(url, dest_for, limits, session, clock)
        except _Retryable as exc:
            raise ArchiveError(f"{exc} (gave up after {attempts} attempts)") from None
    finally:
        if own_session:
            session.close()


class _Deadline:
    """The total time a download may take, whatever the server does between bytes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.ends - time.monotonic())

    def check(self, host: str) -> float:
        """Seconds left; ArchiveError (not retried: the time is spent) once there are none."""
        left = self.left()
        if left <= 0:
            raise ArchiveError(
                f"the download from {host} took longer than its deadline of {self.seconds:g} s"
            )
        return left


def _fetch_once(
    url: str,
    dest_for: Callable[[str], Location],
    limits: DownloadLimits,
    session: requests.Session,
    clock: _Deadline,
) -> tuple[Location, int, str]:
    response, host = _open(url, limits, session, clock)
    with response:
        _check_announced_length(response, limits.max_bytes)
        dest = dest_for(response.headers.get("Content-Type", ""))
        size, digest = _stream(response, dest, limits, host, clock)
    return dest, size, digest


def _open(
    url: str, limits: DownloadLimits, session: requests.Session, clock: _Deadline
) -> tuple[requests.Response, str]:
    """GET url, following at most MAX_REDIRECTS redirects, each hop checked before it is sent
    and sent to the address that was checked."""
    for _hop in range(MAX_REDIRECTS + 1):
        target = _check_url(url, limits)
        left = clock.check(target.host)
        with _network_errors(target.host):
            response = netguard.send(
                session,
                "GET",
                target,
                stream=True,
                timeout=(min(limits.connect_timeout, left), min(limits.read_timeout, left)),
                headers={"Authorization": None},  # drop one a caller's session may carry
            )
        if not response.is_redirect:
            _check_status(response, target.host)
            return response, target.host
        location = response.headers["Location"]
        response.close()
        url = urljoin(url, location)
    raise ArchiveError(f"more than {MAX_REDIRECTS} redirects")


@contextmanager
def _network_errors(host: str) -> Iterator[None]:
    """requests' exceptions as ArchiveErrors, worded without the URL they carry."""
    try:
        yield
    except (requests.Timeout, urllib3.exceptions.TimeoutError):
        raise _Retryable(f"timed out talking to {host}") from None
    except (
        requests.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.ProtocolError,
    ):
        raise _Retryable(f"connection to {host} failed") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise ArchiveError(f"download from {host} failed ({type(exc).__name__})") from None


def _check_status(response: requests.Response, host: str) -> None:
    code = response.status_code
    if 200 <= code < 300:
        return
    response.close()
    if code == 429 or code >= 500:
        raise _Retryable(f"HTTP {code} from {host}")
    raise ArchiveError(f"HTTP {code} from {host}")


def _check_announced_length(response: requests.Response, max_bytes: int) -> None:
    try:
        announced = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return  # absent or garbled: the streamed count still enforces the limit
    if announced > max_bytes:
        raise ArchiveError(
            f"the server announces {announced} bytes (Content-Length), "
            f"more than the limit of {max_bytes}"
        )


def _stream(
    response: requests.Response,
    dest: Location,
    limits: DownloadLimits,
    host: str,
    clock: _Deadline,
) -> tuple[int, str]:
    """Copy the body to dest. ``read1`` returns after one socket read, whatever arrived, so
    the deadline is looked at between reads (``iter_content`` would block until 64 KB came
    in, a byte at a time if the server likes); each read may wait only for the time left."""
    digest, size = hashlib.sha256(), 0
    raw = response.raw
    # network errors are translated inside the file's context: requests' exceptions are
    # OSErrors, which _atomic_file would otherwise report as a failed write
    with _atomic_file(dest) as handle, _network_errors(host):
        while True:
            _shrink_read_timeout(raw, min(limits.read_timeout, clock.check(host)))
            chunk = raw.read1(CHUNK_BYTES, decode_content=True)
            if not chunk:
                break
            size += len(chunk)
            if size > limits.max_bytes:
                raise ArchiveError(f"the file is larger than the limit of {limits.max_bytes} bytes")
            digest.update(chunk)
            handle.write(chunk)
        clock.check(host)
    return size, digest.hexdigest()


def _shrink_read_timeout(raw: urllib3.BaseHTTPResponse, seconds: float) -> None:
    """Let the next socket read wait at most ``seconds`` (best effort: urllib3 internals)."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


@contextmanager
def _atomic_file(dest: Location) -> Iterator[Any]:
    """All or nothing: a reader never sees half a file (``workers.destination``)."""
    try:
        with destination.atomic_write(dest) as handle:
            yield handle
    except OSError as exc:
        name = str(dest).rsplit("/", 1)[-1]
        raise ArchiveError(f"cannot write {name}: {exc.strerror or exc}") from None


# --- which addresses may be fetched ----------------------------------------------------------


def _check_url(url: str, limits: DownloadLimits) -> netguard.Target:
    """The checked target (address included) if the URL may be fetched; ArchiveError if not."""
    try:
        return netguard.check(url, limits.policy)
    except netguard.Unresolved as exc:
        raise _Retryable(str(exc)) from None
    except netguard.Refused as exc:
        raise ArchiveError(str(exc)) from None


def _safe_name(raw: str) -> str:
    """raw as one path component; a hash of raw is appended whenever anything was changed."""
    safe = UNSAFE_CHARS.sub("_", raw)[:MAX_NAME]
    if not safe.strip("."):  # "", "." and ".." are not names of their own
        safe = "_" * max(1, len(safe))
    if safe != raw:
        raw_bytes = raw.encode("utf-8", "surrogatepass")
        safe += "-" + hashlib.sha1(raw_bytes, usedforsecurity=False).hexdigest()[:8]
    return safe


__all__ = [
    "ArchiveError",
    "DownloadLimits",
    "archive_dir",
    "archive_outputs",
    "download",
    "new_session",
]
