"""The simulator's own reading of the wan26_i2i contract (shared/contract.md).

Written apart from ``producers.validation`` on purpose: if the validator gets a rule wrong,
the simulator answers as the provider would and the end-to-end tests catch the difference,
instead of the validator confirming itself. It checks the request's form only (the simulator
never downloads or decodes images), in the order of the provider's error table, and answers
with the provider's code, or a ``WQ`` code where the contract names none.
"""

from __future__ import annotations

import re
from typing import Any

from workers import errors
from workers.errors import ValidationError

_REMOTE = ("http://", "https://")
_DATA_URI = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)
_SIZE = re.compile(r"^\s*([^*]+)\*([^*]+)\s*$")


def check(body: Any) -> None:
    """Raise ValidationError with the code the provider would answer ``body`` with."""
    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        _refuse(errors.MISSING_INPUT, "input")
    if body.get("model") != "wan26_i2i":
        _refuse(errors.MODEL, "model")
    messages = body["input"].get("messages")
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
        _refuse(errors.MESSAGES_NOT_ONE, "input.messages")
    message = messages[0]
    if message.get("role") != "user":
        _refuse(errors.ROLE_NOT_USER, "role")
    content = message.get("content")
    if not isinstance(content, list):
        _refuse(errors.CONTENT_NOT_ARRAY, "content")
    texts = [item for item in content if isinstance(item, dict) and "text" in item]
    images = [item for item in content if isinstance(item, dict) and "image" in item]
    if len(texts) + len(images) != len(content) or any(len(item) != 1 for item in content):
        _refuse(errors.FIELD_TYPE, "content items are {text} or {image} objects")
    if len(texts) != 1:
        _refuse(errors.CONTENT_TEXT_NOT_ONE, "content")
    text = texts[0]["text"]
    if not isinstance(text, str) or not 1 <= len(text) <= 2000:
        _refuse(errors.TEXT_LENGTH, "text")
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        _refuse(errors.FIELD_TYPE, "parameters")
    _check_parameters(params, len(images))
    for item in images:
        _check_reference(item["image"])


def _check_parameters(params: dict[str, Any], image_count: int) -> None:
    interleave = params.get("enable_interleave", False)
    if not isinstance(interleave, bool):
        _refuse(errors.FIELD_TYPE, "enable_interleave")
    if interleave and image_count > 1:
        _refuse(errors.INTERLEAVE_IMAGES, "images")
    if not interleave and not 1 <= image_count <= 4:
        _refuse(errors.EDIT_IMAGES, "images")
    negative = params.get("negative_prompt", "")
    if not isinstance(negative, str) or len(negative) > 500:
        _refuse(errors.NEGATIVE_PROMPT_LENGTH, "negative_prompt")
    if "n" in params:
        if interleave and params["n"] != 1:
            _refuse(errors.INTERLEAVE_N, "n")
        if not _integer_in(params["n"], 1, 4):
            _refuse(errors.N_RANGE, "n")
    if "max_images" in params:
        if not interleave:
            _refuse(errors.MAX_IMAGES_MODE, "max_images")
        if not _integer_in(params["max_images"], 1, 5):
            _refuse(errors.MAX_IMAGES_RANGE, "max_images")
    if "seed" in params and not _integer_in(params["seed"], 0, 2_147_483_647):
        _refuse(errors.SEED_RANGE, "seed")
    if "size" in params:
        _check_size(params["size"])
    for flag in ("prompt_extend", "watermark"):
        if flag in params and not isinstance(params[flag], bool):
            _refuse(errors.FIELD_TYPE, flag)


def _check_size(size: Any) -> None:
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match is None:
        _refuse(errors.SIZE_FORMAT, "size")
    sides = [side.strip() for side in match.groups()]
    if not all(side.isdigit() and int(side) > 0 for side in sides):
        _refuse(errors.SIZE_INTEGERS, "size")
    width, height = (int(side) for side in sides)
    if not 768 * 768 <= width * height <= 1280 * 1280:
        _refuse(errors.SIZE_PIXELS, "size")
    if max(width, height) > 4 * min(width, height):
        _refuse(errors.SIZE_ASPECT, "size")


def _check_reference(image: Any) -> None:
    """Only URLs and data URIs: the real API cannot read a file on our disk."""
    if not isinstance(image, str) or not (
        image[:8].lower().startswith(_REMOTE) or _DATA_URI.match(image[:64])
    ):
        _refuse(errors.IMAGE_REFERENCE, "image")


def _integer_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _refuse(code: str, field: str) -> Any:
    raise ValidationError(code, f"invalid {field}", field)
