"""The wan26_i2i request model: refuse locally what the provider would refuse, with its code.

``validate_request`` walks a request in the order of the provider's error table, so the
first problem found carries the code the API itself would have answered, before anything is
queued or billed. Checks the provider names without a code (model, JSON types, images) use
wanq's ``WQ`` codes. The result is a normalized copy ready to POST: local image files become
data URIs, over-long prompts are truncated only when the caller opts in, and no defaults are
added (the provider applies its own).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from producers.images import check_image, describe, json_type
from producers.options import DEFAULT_OPTIONS, ValidationOptions
from workers import errors
from workers.errors import ValidationError

MODEL = "wan26_i2i"
MAX_TEXT = 2000
MAX_NEGATIVE_PROMPT = 500
MAX_EDIT_IMAGES = 4
MAX_N = 4
MAX_MAX_IMAGES = 5
MAX_SEED = 2_147_483_647
MIN_PIXELS = 768 * 768
MAX_PIXELS = 1280 * 1280
MAX_ASPECT = 4  # the long side may be at most 4 times the short side

CONTENT = "input.messages[0].content"
_DIGITS = re.compile(r"[0-9]+")


def validate_request(body: object, options: ValidationOptions = DEFAULT_OPTIONS) -> dict:
    """Return a normalized copy of ``body``; raise ValidationError for its first problem."""
    if not isinstance(body, dict):
        raise ValidationError(errors.BODY_TYPE, f"got {json_type(body)}")
    request = _checked_copy(body)
    if request.get("model") != MODEL:
        raise ValidationError(errors.MODEL, _got(request, "model"), "model")
    content = _message_content(request)
    text_index = _text_index(content)
    text_field = f"{CONTENT}[{text_index}].text"
    content[text_index]["text"] = _check_text(content[text_index]["text"], text_field, options)
    params = _parameters(request)
    interleave = _check_image_count(content, params)
    _check_negative_prompt(params, options)
    _check_counts(params, interleave)
    _check_size(params)
    for flag in ("prompt_extend", "watermark"):
        _optional_bool(params, flag)
    _check_images(content, options)
    return request


MAX_DEPTH = 32  # a valid request nests 6 deep; far deeper is junk (and would blow the stack)
_IMMUTABLE = (str, int, float, bool, type(None))


def _checked_copy(value: Any, depth: int = 1) -> Any:
    """A deep copy that refuses absurd nesting on the way down: the recursion stops at
    MAX_DEPTH, so junk cannot blow the stack. Dicts and lists (the JSON containers) are
    copied as plain ones, the immutable scalars shared, anything else deep-copied."""
    if depth > MAX_DEPTH:
        raise ValidationError(errors.FIELD_TYPE, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        return {check_encodable(key): _checked_copy(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_checked_copy(item, depth + 1) for item in value]
    if isinstance(value, str):
        return check_encodable(value)
    return value if type(value) in _IMMUTABLE else copy.deepcopy(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_encodable(text: str, field: str | None = None) -> str:
    """``text`` if it can be stored as UTF-8; WQ004 for a lone surrogate (JSON's
    ``"\\ud800"`` decodes to one), which would fail submission halfway, after other jobs
    were written. ASCII text (data URIs) is passed at once."""
    found = None if text.isascii() else _SURROGATE.search(text)
    if found:
        raise ValidationError(errors.TEXT_ENCODING, f"at character {found.start()}", field)
    return text


def _message_content(request: dict) -> list:
    """Check ``input``, its single message and the role; return the message's content list."""
    request_input = request.get("input")
    if not isinstance(request_input, dict):
        raise ValidationError(errors.MISSING_INPUT, _got(request, "input"), "input")
    messages = request_input.get("messages")
    if not isinstance(messages, list) or len(messages) != 1:
        if isinstance(messages, list):
            detail = f"got {len(messages)} messages"
        else:
            detail = _got(request_input, "messages")
        raise ValidationError(errors.MESSAGES_NOT_ONE, detail, "input.messages")
    message = messages[0]
    if not isinstance(message, dict):
        detail = f"got {json_type(message)}"
        raise ValidationError(errors.MESSAGES_NOT_ONE, detail, "input.messages[0]")
    if message.get("role") != "user":
        raise ValidationError(errors.ROLE_NOT_USER, _got(message, "role"), "input.messages[0].role")
    content = message.get("content")
    if not isinstance(content, list):
        raise ValidationError(errors.CONTENT_NOT_ARRAY, _got(message, "content"), CONTENT)
    return content


def _text_index(content: list) -> int:
    """Every item is a text or an image object, and exactly one is a text: return its index."""
    for i, item in enumerate(content):
        keys = {"text", "image"} & set(item) if isinstance(item, dict) else set()
        if len(keys) != 1:
            detail = f"expected an object with one of 'text' or 'image', got {describe(item)}"
            raise ValidationError(errors.FIELD_TYPE, detail, f"{CONTENT}[{i}]")
    text_indexes = [i for i, item in enumerate(content) if "text" in item]
    if len(text_indexes) != 1:
        detail = f"got {len(text_indexes)} text objects"
        raise ValidationError(errors.CONTENT_TEXT_NOT_ONE, detail, CONTENT)
    return text_indexes[0]


def _check_text(text: object, field: str, options: ValidationOptions) -> str:
    text = _check_length(text, MAX_TEXT, errors.TEXT_LENGTH, field, options)
    if not text:
        raise ValidationError(errors.TEXT_LENGTH, "got 0 characters", field)
    return text


def _parameters(request: dict) -> dict:
    """The request's parameters, or an empty stand-in (never added to the request)."""
    params = request.get("parameters", {})
    if not isinstance(params, dict):
        raise ValidationError(errors.FIELD_TYPE, _expected("object", params), "parameters")
    return params


def _check_image_count(content: list, params: dict) -> bool:
    """Image count by mode: 0-1 interleaved, 1-4 editing. Return the mode (absent: editing)."""
    interleave = _optional_bool(params, "enable_interleave") or False
    count = sum("image" in item for item in content)
    if interleave and count > 1:
        raise ValidationError(errors.INTERLEAVE_IMAGES, f"got {count} images", CONTENT)
    if not interleave and not 1 <= count <= MAX_EDIT_IMAGES:
        raise ValidationError(errors.EDIT_IMAGES, f"got {count} images", CONTENT)
    return interleave


def _check_negative_prompt(params: dict, options: ValidationOptions) -> None:
    if "negative_prompt" in params:
        params["negative_prompt"] = _check_length(
            params["negative_prompt"],
            MAX_NEGATIVE_PROMPT,
            errors.NEGATIVE_PROMPT_LENGTH,
            "parameters.negative_prompt",
            options,
        )


def _check_counts(params: dict, interleave: bool) -> None:
    """n, max_images and seed; n and max_images also depend on the mode."""
    n = _optional_int(params, "n", 1, MAX_N, errors.N_RANGE)
    if interleave and n not in (None, 1):
        raise ValidationError(errors.INTERLEAVE_N, f"got n={n}", "parameters.n")
    if not interleave and "max_images" in params:
        detail = "enable_interleave is false or absent"
        raise ValidationError(errors.MAX_IMAGES_MODE, detail, "parameters.max_images")
    _optional_int(params, "max_images", 1, MAX_MAX_IMAGES, errors.MAX_IMAGES_RANGE)
    _optional_int(params, "seed", 0, MAX_SEED, errors.SEED_RANGE)


def _check_size(params: dict) -> None:
    """``"W*H"``: format, then total pixels, then aspect ratio, as the provider orders them."""
    if "size" not in params:
        return
    size, field = params["size"], "parameters.size"
    if not isinstance(size, str):
        raise ValidationError(errors.FIELD_TYPE, _expected("string", size), field)
    if "*" not in size:
        raise ValidationError(errors.SIZE_FORMAT, f"got {describe(size)}", field)
    width, height = _size_sides(size, field)
    if not MIN_PIXELS <= width * height <= MAX_PIXELS:
        detail = f"got {describe(size)} = {width * height:,} pixels"
        raise ValidationError(errors.SIZE_PIXELS, detail, field)
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ValidationError(errors.SIZE_ASPECT, f"got {width}:{height}", field)


def _size_sides(size: str, field: str) -> tuple[int, int]:
    """Two positive decimal integers around a single ``*``."""
    parts = size.split("*")
    if len(parts) != 2 or not all(_DIGITS.fullmatch(p) and p.strip("0") for p in parts):
        raise ValidationError(errors.SIZE_INTEGERS, f"got {describe(size)}", field)
    return _side(parts[0]), _side(parts[1])


def _side(digits: str) -> int:
    """A side's value; beyond 9 digits it is capped (too big anyway, and int() has a limit)."""
    significant = digits.lstrip("0")
    return int(significant) if len(significant) <= 9 else 10**9


def _check_images(content: list, options: ValidationOptions) -> None:
    """Check each image in order and store its normalized reference (local files inlined)."""
    for i, item in enumerate(content):
        if "image" in item:
            item["image"] = check_image(item["image"], options, f"{CONTENT}[{i}].image")


def _check_length(
    value: object, limit: int, code: str, field: str, options: ValidationOptions
) -> str:
    """A string of at most ``limit`` code points; truncated instead when the caller opts in."""
    if not isinstance(value, str):
        raise ValidationError(errors.FIELD_TYPE, _expected("string", value), field)
    if len(value) <= limit:
        return value
    if options.truncate:
        return value[:limit]
    raise ValidationError(code, f"got {len(value)} characters", field)


def _optional_int(params: dict, key: str, low: int, high: int, code: str) -> int | None:
    """An optional integer in ``[low, high]``; booleans, floats and strings are refused."""
    if key not in params:
        return None
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(code, f"got {describe(value)}", f"parameters.{key}")
    return value


def _optional_bool(params: dict, key: str) -> bool | None:
    """An optional JSON boolean (``1`` and ``"true"`` are refused, not coerced)."""
    value = params.get(key)
    if key in params and not isinstance(value, bool):
        raise ValidationError(errors.FIELD_TYPE, _expected("boolean", value), f"parameters.{key}")
    return value


def _got(container: dict, key: str) -> str:
    return f"got {describe(container[key])}" if key in container else "missing"


def _expected(json_name: str, value: object) -> str:
    return f"expected {json_name}, got {json_type(value)}"
