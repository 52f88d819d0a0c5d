"""How a request is checked: the options validation and image checks share (its own module,
so that ``producers.images`` and ``producers.validation`` do not import each other)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ValidationOptions:
    """How lenient and how expensive validation is; the defaults never touch the network."""

    base_dir: Path | None = None  # where relative local image paths are resolved
    truncate: bool = False  # over-long text/negative_prompt are truncated instead of refused
    probe_urls: bool = False  # HEAD/GET http(s) image URLs (5 s timeout) -> WQ016 on failure
    check_images: bool = True  # False: skip decoding images (form checks still apply)


DEFAULT_OPTIONS = ValidationOptions()
