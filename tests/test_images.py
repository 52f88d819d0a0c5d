"""check_image: URLs, data URIs and local files, with real images made by Pillow."""

from __future__ import annotations

import base64
import struct
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import pytest
import requests
from PIL import Image

from producers import images
from producers.images import MAX_BYTES, check_image, describe, json_type
from producers.validation import DEFAULT_OPTIONS, ValidationOptions
from workers import errors
from workers.errors import ValidationError

FIELD = "input.messages[0].content[1].image"
FAST = ValidationOptions(check_images=False)


def encode(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def picture(size: tuple[int, int] = (400, 400), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    return encode(Image.new(mode, size, "white" if mode != "P" else 0), fmt)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def transparent_pixel(mode: str) -> Image.Image:
    image = Image.new(mode, (400, 400), "white")
    image.putalpha(255)
    image.putpixel((7, 7), (0, 0, 0, 0) if mode == "RGB" else (0, 0))
    return image


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's calling card)."""
    data = bytearray(picture((1, 1), "L"))
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def refused(ref: object, options: ValidationOptions = DEFAULT_OPTIONS) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        check_image(ref, options, FIELD)
    assert caught.value.field == FIELD
    return caught.value


# --- data URIs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("BMP", "image/bmp"), ("WEBP", "image/webp")],
)
def test_supported_formats_are_accepted_unchanged(fmt: str, mime: str) -> None:
    uri = data_uri(picture(fmt=fmt), mime)
    assert check_image(uri, DEFAULT_OPTIONS, FIELD) == uri


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "ICO"])
def test_other_formats_are_refused(fmt: str) -> None:
    error = refused(data_uri(picture((400, 400), "RGB" if fmt != "GIF" else "P", fmt)))
    assert error.code == errors.IMAGE_FORMAT
    assert fmt in error.detail


@pytest.mark.parametrize("size", [(100, 100), (383, 400), (400, 383), (5001, 400), (400, 5001)])
def test_dimensions_outside_384_to_5000_are_refused(size: tuple[int, int]) -> None:
    error = refused(data_uri(picture(size)))
    assert error.code == errors.IMAGE_DIMENSIONS
    assert f"{size[0]}x{size[1]}" in error.detail


@pytest.mark.parametrize("size", [(384, 384), (5000, 384), (384, 5000)])
def test_dimension_boundaries_are_accepted(size: tuple[int, int]) -> None:
    uri = data_uri(picture(size))
    assert check_image(uri, DEFAULT_OPTIONS, FIELD) == uri


@pytest.mark.parametrize(
    ("image", "fmt", "save"),
    [
        (transparent_pixel("RGB"), "PNG", {}),
        (transparent_pixel("L"), "PNG", {}),
        (Image.new("P", (400, 400), 0), "PNG", {"transparency": 0}),
        (Image.new("RGB", (400, 400), "black"), "PNG", {"transparency": (0, 0, 0)}),
        (transparent_pixel("RGB"), "WEBP", {"lossless": True}),
    ],
    ids=["RGBA", "LA", "P-tRNS", "RGB-tRNS", "WEBP-RGBA"],
)
def test_transparency_is_refused(image: Image.Image, fmt: str, save: dict) -> None:
    error = refused(data_uri(encode(image, fmt, **save), f"image/{fmt.lower()}"))
    assert error.code == errors.IMAGE_TRANSPARENCY
    assert f"{fmt} has transparent pixels" in str(error) and "PNG images" not in str(error)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_fully_opaque_alpha_is_accepted(mode: str) -> None:
    data = encode(Image.new(mode, (400, 400), "white"))
    assert Image.open(BytesIO(data)).mode == mode  # the alpha channel is really there
    uri = data_uri(data)
    assert check_image(uri, DEFAULT_OPTIONS, FIELD) == uri


@pytest.mark.parametrize("mime", ["image/jpg", "image/jpeg", "IMAGE/PNG", "image/webp"])
def test_declared_image_mime_need_not_match_the_real_format(mime: str) -> None:
    uri = data_uri(picture(fmt="PNG"), mime)
    assert check_image(uri, DEFAULT_OPTIONS, FIELD) == uri


@pytest.mark.parametrize("mime", ["text/plain", "application/octet-stream", ""])
def test_declared_mime_must_be_an_image_type(mime: str) -> None:
    assert refused(data_uri(picture(), mime), FAST).code == errors.IMAGE_FORMAT


@pytest.mark.parametrize(
    "uri",
    ["data:image/png,abc", "data:image/png;base64", "data:image/png;utf8,AAAA"],
)
def test_malformed_data_uri_is_a_reference_error(uri: str) -> None:
    assert refused(uri, FAST).code == errors.IMAGE_REFERENCE


@pytest.mark.parametrize(
    "uri",
    [
        "data:image/png;base64,!!!!",
        "data:image/png;base64,AAA",  # bad padding
        "data:image/png;base64,AA AA",  # whitespace is not strict base64
        "data:image/png;base64,ÄÄÄÄ",
        "data:image/png;base64,",
    ],
)
def test_invalid_base64_is_a_decode_error_even_on_the_fast_path(uri: str) -> None:
    assert refused(uri, FAST).code == errors.IMAGE_DECODE


def test_bytes_that_are_not_an_image_are_a_decode_error() -> None:
    assert refused(data_uri(b"GIF? no, just text " * 50)).code == errors.IMAGE_DECODE


def test_corrupt_pixel_data_is_a_decode_error() -> None:
    truncated = encode(transparent_pixel("RGB"))[:200]
    assert refused(data_uri(truncated)).code == errors.IMAGE_DECODE


def test_oversized_data_uri_is_refused_before_decoding() -> None:
    # The trailing "!" is invalid base64: reaching the decoder would give WQ015, not WQ014.
    uri = "data:image/png;base64," + "A" * (MAX_BYTES * 4 // 3 + 8) + "!"
    error = refused(uri)
    assert error.code == errors.IMAGE_BYTES
    assert len(error.detail) < 40


def test_ten_megabytes_exactly_is_allowed() -> None:
    at_limit = data_uri(bytes(MAX_BYTES))
    assert check_image(at_limit, FAST, FIELD) == at_limit
    assert refused(data_uri(bytes(MAX_BYTES + 1)), FAST).code == errors.IMAGE_BYTES


def test_fast_path_skips_pillow_for_data_uris() -> None:
    tiny = data_uri(picture((10, 10)))
    assert refused(tiny).code == errors.IMAGE_DIMENSIONS
    assert check_image(tiny, FAST, FIELD) == tiny


@pytest.mark.parametrize("size", [(20_000, 20_000), (8_000, 8_000)], ids=["error", "warning"])
def test_decompression_bombs_are_refused_without_warnings(size: tuple[int, int]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        error = refused(data_uri(png_claiming(*size)))
    assert error.code == errors.IMAGE_DIMENSIONS
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pillow_pixel_limit_is_twice_the_largest_accepted_image() -> None:
    assert Image.MAX_IMAGE_PIXELS == 5000 * 5000 * 2


# --- local files ------------------------------------------------------------------------


def test_local_file_becomes_a_data_uri_of_its_real_format(tmp_path: Path) -> None:
    data = picture(fmt="PNG")
    (tmp_path / "really-a-png.jpg").write_bytes(data)
    result = check_image(str(tmp_path / "really-a-png.jpg"), DEFAULT_OPTIONS, FIELD)
    assert result == data_uri(data, "image/png")


def test_multi_picture_jpeg_counts_as_jpeg(tmp_path: Path) -> None:
    second = Image.new("RGB", (400, 400), "blue")
    data = encode(Image.new("RGB", (400, 400), "red"), "MPO", save_all=True, append_images=[second])
    assert Image.open(BytesIO(data)).format == "MPO"
    (tmp_path / "camera.jpg").write_bytes(data)
    assert check_image(str(tmp_path / "camera.jpg"), DEFAULT_OPTIONS, FIELD) == data_uri(
        data, "image/jpeg"
    )


def test_relative_path_is_resolved_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    data = picture(fmt="JPEG")
    (tmp_path / "in" / "a.jpeg").write_bytes(data)
    options = ValidationOptions(base_dir=tmp_path)
    assert check_image("in/a.jpeg", options, FIELD) == data_uri(data, "image/jpeg")
    assert refused("a.jpeg", options).code == errors.IMAGE_REFERENCE


def test_absolute_path_ignores_base_dir(tmp_path: Path) -> None:
    (tmp_path / "a.bmp").write_bytes(picture(fmt="BMP"))
    options = ValidationOptions(base_dir=tmp_path / "elsewhere")
    assert check_image(str(tmp_path / "a.bmp"), options, FIELD).startswith("data:image/bmp;")


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "a.webp").write_bytes(picture(fmt="WEBP"))
    assert check_image("~/a.webp", DEFAULT_OPTIONS, FIELD).startswith("data:image/webp;")


@pytest.mark.parametrize("name", ["missing.png", ".", "nul\0byte.png", "x" * 5000, ""])
def test_missing_or_unreadable_path_is_a_reference_error(tmp_path: Path, name: str) -> None:
    error = refused(name, ValidationOptions(base_dir=tmp_path))
    assert error.code == errors.IMAGE_REFERENCE
    assert len(error.detail) < 120


def test_local_file_over_ten_megabytes_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: nothing is written
    assert refused(str(big)).code == errors.IMAGE_BYTES


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (picture((100, 100)), errors.IMAGE_DIMENSIONS),
        (picture(mode="P", fmt="GIF"), errors.IMAGE_FORMAT),
        (encode(transparent_pixel("RGB")), errors.IMAGE_TRANSPARENCY),
        (b"not an image", errors.IMAGE_DECODE),
    ],
)
def test_local_files_are_decoded_even_on_the_fast_path(
    tmp_path: Path, data: bytes, code: str
) -> None:
    (tmp_path / "image").write_bytes(data)
    assert refused(str(tmp_path / "image"), FAST).code == code


# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://wanx.alicdn.com/material/xxx.jpeg",
        "https://example.com:8443/a.png?sig=abc#frag",
        "HTTPS://EXAMPLE.COM/A.PNG",
        "https://[::1]/a.png",
    ],
)
def test_well_formed_urls_are_accepted_unchanged(url: str) -> None:
    assert check_image(url, DEFAULT_OPTIONS, FIELD) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://",
        "https:///a.png",
        "https://exa mple.com/a.png",
        "https://example.com/a b.png",
        "http://example.com:99999/a.png",
        "http://[::1/a.png",
        "ftp://example.com/a.png",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    assert refused(url).code == errors.IMAGE_REFERENCE


class FakeHTTP:
    """Stands in for requests.head/get: answers with given statuses and records the calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, head: object, get: object = 200) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.answers = {"HEAD": head, "GET": get}
        monkeypatch.setattr(images.requests, "head", self.answer("HEAD"))
        monkeypatch.setattr(images.requests, "get", self.answer("GET"))

    def answer(self, method: str):
        def call(url: str, *, timeout: float, **_kwargs: object) -> requests.Response:
            self.calls.append((method, url, timeout))
            answer = self.answers[method]
            if isinstance(answer, Exception):
                raise answer
            response = requests.Response()
            response.status_code = answer
            response.raw = BytesIO()
            return response

        return call


PROBE = ValidationOptions(probe_urls=True)
URL = "https://example.com/a.png"


def test_urls_are_not_probed_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    http = FakeHTTP(monkeypatch, head=404, get=404)
    assert check_image(URL, DEFAULT_OPTIONS, FIELD) == URL
    assert http.calls == []


def test_probe_accepts_2xx_head_with_a_five_second_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    http = FakeHTTP(monkeypatch, head=204)
    assert check_image(URL, PROBE, FIELD) == URL
    assert http.calls == [("HEAD", URL, 5.0)]


def test_probe_falls_back_to_get_when_head_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    http = FakeHTTP(monkeypatch, head=405, get=200)
    assert check_image(URL, PROBE, FIELD) == URL
    assert [method for method, _url, _timeout in http.calls] == ["HEAD", "GET"]


@pytest.mark.parametrize(
    ("head", "get", "expected"),
    [
        (404, 404, "HTTP 404"),
        (405, 500, "HTTP 500"),
        (requests.ConnectionError("refused"), 200, "ConnectionError"),
        (requests.Timeout("slow"), 200, "Timeout"),
    ],
)
def test_probe_failures_are_refused(
    monkeypatch: pytest.MonkeyPatch, head: object, get: object, expected: str
) -> None:
    FakeHTTP(monkeypatch, head=head, get=get)
    error = refused(URL, PROBE)
    assert error.code == errors.IMAGE_PROBE
    assert expected in error.detail


def test_probe_does_not_reach_malformed_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    http = FakeHTTP(monkeypatch, head=200)
    assert refused("https://exa mple.com/", PROBE).code == errors.IMAGE_REFERENCE
    assert http.calls == []


# --- shapes and helpers -----------------------------------------------------------------


@pytest.mark.parametrize("ref", [None, 123, b"data:image/png;base64,AAAA", {"url": URL}])
def test_reference_must_be_a_string(ref: object) -> None:
    assert refused(ref).code == errors.FIELD_TYPE


@pytest.mark.parametrize(
    "value",
    ["x" * 10_000, list(range(10_000)), 10**5000, {"k": "v" * 99}],
    ids=["str", "list", "huge-int", "dict"],
)
def test_describe_is_capped(value: object) -> None:
    assert len(describe(value)) <= 40


@pytest.mark.parametrize(
    ("value", "name"),
    [(True, "boolean"), (1, "number"), (1.5, "number"), ("", "string"), (None, "null")],
)
def test_json_type_names(value: object, name: str) -> None:
    assert json_type(value) == name
