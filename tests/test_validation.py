"""validate_request: every provider code, wanq's type codes, the check order and the edges."""

from __future__ import annotations

import base64
import copy
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from producers.validation import DEFAULT_OPTIONS, ValidationOptions, validate_request
from workers import errors
from workers.errors import ValidationError

IMAGE_URL = "https://example.com/cat.png"
CONTENT = "input.messages[0].content"


def request(*images: object, text: str = "make it a watercolor", **parameters: object) -> dict:
    """A valid request (one URL image by default); ``parameters`` are added when given."""
    content: list[dict] = [{"text": text}] + [{"image": ref} for ref in images or (IMAGE_URL,)]
    body: dict = {
        "model": "wan26_i2i",
        "input": {"messages": [{"role": "user", "content": content}]},
    }
    if parameters:
        body["parameters"] = parameters
    return body


def text_only(**parameters: object) -> dict:
    body = request(**parameters)
    body["input"]["messages"][0]["content"] = [{"text": "a fox"}]
    return body


def images(count: int, **parameters: object) -> dict:
    return request(*[f"https://example.com/{i}.png" for i in range(count)], **parameters)


def changed(path: str, value: object, body: dict | None = None) -> dict:
    """``body`` (default ``request()``) with a dotted path set to ``value`` (``...``: deleted)."""
    body = body if body is not None else request()
    *parents, last = path.split(".")
    node = body
    for name in parents:
        node = node[_key(node, name)]
    if value is ...:
        del node[_key(node, last)]
    else:
        node[_key(node, last)] = value
    return body


def _key(node: dict | list, name: str) -> str | int:
    return int(name) if isinstance(node, list) else name


def refused(body: object, options: ValidationOptions = DEFAULT_OPTIONS) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        validate_request(body, options)
    return caught.value


MSG = "input.messages.0"
TEXT = f"{CONTENT}[0].text"
SIZE = "parameters.size"
INTERLEAVE = {"enable_interleave": True}
MESSAGE = request()["input"]["messages"][0]

# (code, field, body): one or more failing requests for every provider request code.
PROVIDER_CASES = [
    (errors.MISSING_INPUT, "input", changed("input", ...)),
    (errors.MISSING_INPUT, "input", changed("input", "make it blue")),
    (errors.MESSAGES_NOT_ONE, "input.messages", changed("input.messages", ...)),
    (errors.MESSAGES_NOT_ONE, "input.messages", changed("input.messages", [])),
    (errors.MESSAGES_NOT_ONE, "input.messages", changed("input.messages", MESSAGE)),
    (errors.MESSAGES_NOT_ONE, "input.messages", changed("input.messages", [MESSAGE, MESSAGE])),
    (errors.MESSAGES_NOT_ONE, "input.messages[0]", changed(MSG, "hello")),
    (errors.ROLE_NOT_USER, "input.messages[0].role", changed(f"{MSG}.role", "assistant")),
    (errors.ROLE_NOT_USER, "input.messages[0].role", changed(f"{MSG}.role", ...)),
    (errors.CONTENT_NOT_ARRAY, CONTENT, changed(f"{MSG}.content", "make it blue")),
    (errors.CONTENT_NOT_ARRAY, CONTENT, changed(f"{MSG}.content", ...)),
    (errors.CONTENT_TEXT_NOT_ONE, CONTENT, changed(f"{MSG}.content.0", ...)),
    (errors.CONTENT_TEXT_NOT_ONE, CONTENT, changed(f"{MSG}.content.1", {"text": "again"})),
    (errors.TEXT_LENGTH, TEXT, request(text="")),
    (errors.TEXT_LENGTH, TEXT, request(text="x" * 2001)),
    (errors.TEXT_LENGTH, TEXT, request(text="水" * 2001)),
    (errors.INTERLEAVE_IMAGES, CONTENT, images(2, **INTERLEAVE)),
    (errors.EDIT_IMAGES, CONTENT, text_only()),
    (errors.EDIT_IMAGES, CONTENT, text_only(enable_interleave=False)),
    (errors.EDIT_IMAGES, CONTENT, images(5)),
    (
        errors.NEGATIVE_PROMPT_LENGTH,
        "parameters.negative_prompt",
        request(negative_prompt="x" * 501),
    ),
    (errors.INTERLEAVE_N, "parameters.n", text_only(n=2, **INTERLEAVE)),
    (errors.N_RANGE, "parameters.n", request(n=0)),
    (errors.N_RANGE, "parameters.n", request(n=5)),
    (errors.MAX_IMAGES_MODE, "parameters.max_images", request(max_images=2)),
    (
        errors.MAX_IMAGES_MODE,
        "parameters.max_images",
        request(max_images=2, enable_interleave=False),
    ),
    (errors.MAX_IMAGES_RANGE, "parameters.max_images", text_only(max_images=0, **INTERLEAVE)),
    (errors.MAX_IMAGES_RANGE, "parameters.max_images", text_only(max_images=6, **INTERLEAVE)),
    (errors.SEED_RANGE, "parameters.seed", request(seed=-1)),
    (errors.SEED_RANGE, "parameters.seed", request(seed=2147483648)),
    (errors.SIZE_FORMAT, SIZE, request(size="1024x1024")),
    (errors.SIZE_FORMAT, SIZE, request(size="")),
    (errors.SIZE_PIXELS, SIZE, request(size="767*768")),
    (errors.SIZE_PIXELS, SIZE, request(size="1281*1280")),
    (errors.SIZE_PIXELS, SIZE, request(size="9" * 5000 + "*1")),
    (errors.SIZE_ASPECT, SIZE, request(size="639*2560")),
    (errors.SIZE_ASPECT, SIZE, request(size="2000*400")),
    (errors.SIZE_INTEGERS, SIZE, request(size="1024*abc")),
    (errors.SIZE_INTEGERS, SIZE, request(size="1024*")),
    (errors.SIZE_INTEGERS, SIZE, request(size="1024*1024*1")),
    (errors.SIZE_INTEGERS, SIZE, request(size="0*1024")),
    (errors.SIZE_INTEGERS, SIZE, request(size="-1024*1024")),
    (errors.SIZE_INTEGERS, SIZE, request(size="1024.0*1024")),
    (errors.SIZE_INTEGERS, SIZE, request(size=" 1024*1024")),
    (errors.SIZE_INTEGERS, SIZE, request(size="１０２４*1024")),
]


@pytest.mark.parametrize(("code", "field", "body"), PROVIDER_CASES)
def test_provider_code(code: str, field: str, body: dict) -> None:
    error = refused(body)
    assert (error.code, error.field) == (code, field)


def test_every_provider_request_code_has_a_case() -> None:
    request_codes = {f"0010210{n:02d}" for n in range(1, 19)}
    assert request_codes <= {code for code, _field, _body in PROVIDER_CASES}


# (code, field, body) for wanq's own codes about the request's shape and JSON types.
WANQ_CASES = [
    (errors.MODEL, "model", changed("model", ...)),
    (errors.MODEL, "model", changed("model", "wan2.6-image")),
    (errors.FIELD_TYPE, f"{CONTENT}[1]", changed(f"{MSG}.content.1", IMAGE_URL)),
    (errors.FIELD_TYPE, f"{CONTENT}[1]", changed(f"{MSG}.content.1", {"type": "image"})),
    (
        errors.FIELD_TYPE,
        f"{CONTENT}[1]",
        changed(f"{MSG}.content.1", {"text": "a", "image": IMAGE_URL}),
    ),
    (errors.FIELD_TYPE, TEXT, request(text=42)),
    (errors.FIELD_TYPE, "parameters", changed("parameters", [])),
    (errors.FIELD_TYPE, "parameters.enable_interleave", request(enable_interleave="true")),
    (errors.FIELD_TYPE, "parameters.enable_interleave", request(enable_interleave=0)),
    (errors.FIELD_TYPE, "parameters.negative_prompt", request(negative_prompt=None)),
    (errors.FIELD_TYPE, SIZE, request(size=1024)),
    (errors.FIELD_TYPE, "parameters.prompt_extend", request(prompt_extend="yes")),
    (errors.FIELD_TYPE, "parameters.watermark", request(watermark=1)),
    (errors.FIELD_TYPE, f"{CONTENT}[1].image", request(123)),
]


@pytest.mark.parametrize(("code", "field", "body"), WANQ_CASES)
def test_wanq_code(code: str, field: str, body: dict) -> None:
    error = refused(body)
    assert (error.code, error.field) == (code, field)


@pytest.mark.parametrize("body", [None, [], "request", 42])
def test_body_must_be_an_object(body: object) -> None:
    assert refused(body).code == errors.BODY_TYPE


@pytest.mark.parametrize("key", ["n", "max_images", "seed"])
@pytest.mark.parametrize("value", [True, False, 1.0, "1", None])
def test_integers_must_be_json_integers(key: str, value: object) -> None:
    codes = {"n": errors.N_RANGE, "max_images": errors.MAX_IMAGES_RANGE, "seed": errors.SEED_RANGE}
    body = text_only(**INTERLEAVE, **{key: value})
    assert refused(body).code == codes[key]


def test_invalid_n_under_interleave_is_a_range_error_not_a_mode_error() -> None:
    assert refused(text_only(n=7, **INTERLEAVE)).code == errors.N_RANGE


def test_max_images_mode_comes_before_its_range() -> None:
    assert refused(request(max_images=99)).code == errors.MAX_IMAGES_MODE


def test_first_problem_in_table_order_wins() -> None:
    body = request(size="1x1", seed=-1, n=9)
    body["input"]["messages"][0]["role"] = "system"
    assert refused(body).code == errors.ROLE_NOT_USER
    assert refused(request(size="1x1", seed=-1, n=9)).code == errors.N_RANGE
    assert refused(request(size="1x1", seed=-1)).code == errors.SEED_RANGE


def test_request_checks_come_before_image_checks() -> None:
    error = refused(request("ftp://example.com/a.png", size="1024x1024"))
    assert error.code == errors.SIZE_FORMAT


def test_images_are_checked_in_order() -> None:
    error = refused(request(IMAGE_URL, "http://", "no/such/file.png"))
    assert (error.code, error.field) == (errors.IMAGE_REFERENCE, f"{CONTENT}[2].image")


@pytest.mark.parametrize(
    "body",
    [
        request(text="x" * 2000),
        request(text="水" * 2000),
        request(text="😀" * 2000),
        request(negative_prompt="x" * 500),
        request(negative_prompt=""),
        request(n=1),
        request(n=4),
        request(seed=0),
        request(seed=2147483647),
        request(size="768*768"),
        request(size="1280*1280"),
        request(size="384*1536"),  # 1:4 at the pixel floor
        request(size="2560*640"),  # 4:1 at the pixel ceiling
        request(size="1344*576"),
        images(4),
        images(1, enable_interleave=False),
        text_only(**INTERLEAVE),
        images(1, **INTERLEAVE),
        text_only(n=1, max_images=1, **INTERLEAVE),
        text_only(max_images=5, **INTERLEAVE),
        request(prompt_extend=False, watermark=True),
        request(),
    ],
)
def test_valid_edge_cases(body: dict) -> None:
    assert validate_request(body) == body


def test_result_is_a_new_dict_and_input_is_unchanged() -> None:
    body = request(negative_prompt="n" * 600, text="t" * 2100)
    before = copy.deepcopy(body)
    result = validate_request(body, ValidationOptions(truncate=True))
    assert body == before
    assert result is not body
    assert result["input"] is not body["input"]


def test_no_defaults_are_added() -> None:
    body = request()
    assert "parameters" not in validate_request(body)
    assert validate_request(request(seed=3))["parameters"] == {"seed": 3}


def test_unknown_keys_are_kept() -> None:
    body = request(future_option="x")
    body["input"]["messages"][0]["content"][0]["type"] = "text"
    assert validate_request(body) == body


def test_truncation_is_opt_in() -> None:
    body = request(text="t" * 2001, negative_prompt="n" * 501)
    assert refused(body).code == errors.TEXT_LENGTH
    result = validate_request(body, ValidationOptions(truncate=True))
    assert result["input"]["messages"][0]["content"][0]["text"] == "t" * 2000
    assert result["parameters"]["negative_prompt"] == "n" * 500


def test_truncation_counts_code_points() -> None:
    result = validate_request(request(text="水" * 2500), ValidationOptions(truncate=True))
    assert result["input"]["messages"][0]["content"][0]["text"] == "水" * 2000


def test_truncation_does_not_make_an_empty_text_valid() -> None:
    assert refused(request(text=""), ValidationOptions(truncate=True)).code == errors.TEXT_LENGTH


def test_negative_prompt_over_limit_without_truncation() -> None:
    error = refused(request(negative_prompt="n" * 501))
    assert error.code == errors.NEGATIVE_PROMPT_LENGTH
    assert "501" in error.detail


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (request(size="1024x1024"), "'1024x1024'"),
        (images(5), "got 5 images"),
        (request(text="x" * 2001), "got 2001 characters"),
        (request(n=0), "got 0"),
    ],
)
def test_details_say_what_was_wrong(body: dict, expected: str) -> None:
    assert expected in refused(body).detail


@pytest.mark.parametrize(
    "body",
    [
        request(size="x" * 100_000),
        request(n="9" * 100_000),
        {"model": "m" * 100_000},
        request("h" * 100_000),
    ],
)
def test_details_never_echo_huge_values(body: dict) -> None:
    error = refused(body)
    assert len(error.detail) < 120
    assert len(str(error)) < 300


def test_local_image_becomes_data_uri(tmp_path: Path) -> None:
    buffer = BytesIO()
    Image.new("RGB", (400, 400), "teal").save(buffer, "JPEG")
    (tmp_path / "photo.jpg").write_bytes(buffer.getvalue())
    result = validate_request(request("photo.jpg"), ValidationOptions(base_dir=tmp_path))
    image = result["input"]["messages"][0]["content"][1]["image"]
    assert image == "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_check_images_false_skips_decoding_but_not_form() -> None:
    tiny = BytesIO()
    Image.new("RGB", (10, 10)).save(tiny, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(tiny.getvalue()).decode()
    assert refused(request(uri)).code == errors.IMAGE_DIMENSIONS
    fast = ValidationOptions(check_images=False)
    assert validate_request(request(uri), fast) == request(uri)
    assert refused(request("data:image/png;base64,@@@@"), fast).code == errors.IMAGE_DECODE


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
PARAMETER_KEYS = [
    "enable_interleave",
    "negative_prompt",
    "n",
    "max_images",
    "seed",
    "size",
    "prompt_extend",
    "watermark",
]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(PARAMETER_KEYS), JSON | st.from_regex(r"[0-9]{1,5}\*[0-9]{1,5}")
    )
)
def test_any_parameters_give_a_result_or_a_known_code(parameters: dict) -> None:
    body = request(**parameters)
    try:
        assert validate_request(body, ValidationOptions(check_images=False)) == body
    except ValidationError as error:
        assert error.code in errors.MESSAGES


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_any_json_body_gives_a_result_or_a_known_code(body: object) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_request(body)
    assert caught.value.code in errors.MESSAGES


def test_absurd_nesting_is_refused_before_it_is_copied() -> None:
    nested: object = "x"
    for _ in range(100_000):
        nested = [{"a": nested}]
    body = request(future_option=nested)
    with pytest.raises(ValidationError) as refused:
        validate_request(body)
    assert refused.value.code == errors.FIELD_TYPE
    assert "nested deeper than 32 levels" in str(refused.value)
