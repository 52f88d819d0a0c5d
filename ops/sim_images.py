"""The simulator's result images: real PNGs, encoded once per (width, height, colour).

A benchmark downloads thousands of results; encoding a PNG per download would make the
simulator the bottleneck, so the few distinct images are built once and served from memory.
"""

from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image, ImageDraw

DEFAULT_SIZE = (1024, 1024)  # the provider's size when parameters.size is absent
MAX_PIXELS = 25_000_000  # guard against absurd sizes when validation is bypassed
PALETTE = ((214, 96, 77), (86, 140, 200), (96, 170, 110), (222, 184, 80))


def parse_size(size: object) -> tuple[int, int]:
    """``"W*H"`` -> ``(W, H)``; anything else falls back to the default size.

    Requests are validated before a task exists, so the fallback only matters when a
    caller bypasses validation; it keeps the file endpoint from ever failing on a size.
    """
    if not isinstance(size, str):
        return DEFAULT_SIZE
    left, sep, right = size.partition("*")
    try:
        width, height = int(left), int(right)
    except ValueError:
        return DEFAULT_SIZE
    if not sep or width <= 0 or height <= 0 or width * height > MAX_PIXELS:
        return DEFAULT_SIZE
    return width, height


def png_for(size: tuple[int, int], index: int) -> bytes:
    """The PNG served as result ``index`` of a task with this size (colours cycle by index)."""
    width, height = size
    return _png(width, height, index % len(PALETTE))


@lru_cache(maxsize=256)
def _png(width: int, height: int, variant: int) -> bytes:
    colour = PALETTE[variant]
    image = Image.new("RGB", (width, height), colour)
    # a darker band at the bottom makes the variants easy to tell apart by eye
    shade = (colour[0] // 2, colour[1] // 2, colour[2] // 2)
    ImageDraw.Draw(image).rectangle((0, height * 3 // 4, width, height), fill=shade)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
