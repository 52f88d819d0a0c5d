"""What a request can cost at most: the images it may generate, before the provider says.

Billing is unit price x images generated. Image editing (``enable_interleave`` false or
absent) makes ``n`` images (default 1); interleaved output makes at most ``max_images``
(default 5, and ``n`` must be 1). Used for dry-run estimates by producers and for budget
reservations by workers, so it is pure and imports nothing from wanq.
"""

from __future__ import annotations

DEFAULT_N = 1
MAX_N = 4
DEFAULT_MAX_IMAGES = 5
MAX_MAX_IMAGES = 5


def worst_case_images(request: dict) -> int:
    """The most images ``request`` can be billed for.

    Meant for validated requests; for anything else it errs high: a parameter that is not
    an integer in its range counts as the mode's maximum, never as zero.
    """
    params = request.get("parameters") if isinstance(request, dict) else None
    if not isinstance(params, dict):
        params = {}
    if params.get("enable_interleave") is True:
        return _count(params, "max_images", DEFAULT_MAX_IMAGES, MAX_MAX_IMAGES)
    return _count(params, "n", DEFAULT_N, MAX_N)


def _count(params: dict, key: str, default: int, maximum: int) -> int:
    if key not in params:
        return default
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        return maximum
    return value
