"""Where archived outputs are written: a local directory or any fsspec URL.

``WANQ_ARCHIVE_DIR`` is a plain path (each worker machine's own disk, or a shared mount) or
an fsspec URL that every worker of a cluster reaches, so one batch's outputs land in one
place: ``s3://bucket/prefix`` through s3fs (credentials and endpoint from the usual AWS
variables, ``AWS_ENDPOINT_URL`` for S3-compatible servers), ``gs://``, ``abfs://``,
``file:///...`` and any other fsspec protocol whose package is installed.

Writes are all or nothing either way: a local file is written beside its name (``.part``)
and renamed; a remote one is buffered and uploaded in one call once complete, so a reader
never sees half a file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

Location = str | Path


def is_remote(location: Location) -> bool:
    """An fsspec URL other than a local path (``file://`` counts as local)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def join(root: Location, *parts: str) -> Location:
    """``root/part/...``: a Path for a local root, a URL string for a remote one."""
    if not is_remote(root):
        return Path(str(root).removeprefix("file://")).joinpath(*parts)
    return "/".join([str(root).rstrip("/"), *parts])


def size(location: Location) -> int | None:
    """The file's size in bytes, or None when it is not there (or cannot be reached)."""
    try:
        if not is_remote(location):
            return Path(location).stat().st_size
        fs, path = _filesystem(str(location))
        return int(fs.size(path))
    except (OSError, ValueError):
        return None


class WriteError(OSError):
    """The destination refused the file (no space, no permission, unreachable store)."""


@contextmanager
def atomic_write(location: Location) -> Iterator[IO[bytes]]:
    """A binary file handle whose content appears at ``location`` only once complete."""
    if is_remote(location):
        with _remote_write(str(location)) as handle:
            yield handle
        return
    dest = Path(location)
    part = dest.with_suffix(".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


@contextmanager
def _remote_write(url: str) -> Iterator[IO[bytes]]:
    buffer = io.BytesIO()  # archived files are capped (WANQ_ARCHIVE_MAX_BYTES)
    yield buffer
    try:
        fs, path = _filesystem(url)
        fs.pipe_file(path, buffer.getvalue())
    except OSError:
        raise
    except Exception as exc:  # botocore and friends raise their own hierarchies
        raise WriteError(f"{type(exc).__name__}: {exc}") from exc


def _filesystem(url: str):
    import fsspec  # only archives to a URL need it

    return fsspec.core.url_to_fs(url)
