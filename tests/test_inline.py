"""Submission's image handling (issue 12): each distinct inline image is decoded, hashed and
spooled once, requests keep references in its place, and a local file named on every line is
read once; memory holds a bounded window, not one copy per line."""

from __future__ import annotations

import base64
import hashlib

from producers import images as producer_images
from producers.images import Window, check_image
from producers.inline import InlineImages
from producers.validation import ValidationOptions
from tests.test_shared_images import data_uri, make_jpeg
from workers import images, keys


def request(*refs: str) -> dict:
    content = [{"text": "t"}] + [{"image": ref} for ref in refs]
    return {"model": "wan26_i2i", "input": {"messages": [{"role": "user", "content": content}]}}


def test_each_distinct_image_is_spooled_once_and_referenced_in_order(tmp_path):
    a, b = data_uri(make_jpeg(tmp_path / "a.jpg", 1)), data_uri(make_jpeg(tmp_path / "b.jpg", 2))
    url = "https://example.com/x.png"
    with InlineImages() as inline:
        bodies = [request(a, url, b) if i % 2 else request(b, a) for i in range(50)]
        held = [inline.externalize(body) for body in bodies]
        sha_a = hashlib.sha256(base64.b64decode(a.split(",")[1])).hexdigest()
        sha_b = hashlib.sha256(base64.b64decode(b.split(",")[1])).hexdigest()
        assert sorted(inline.sizes()) == sorted([sha_a, sha_b])
        assert held[1] == [keys.image(sha_a), keys.image(sha_b)]
        assert held[0] == [keys.image(sha_b), keys.image(sha_a)]
        items = bodies[1]["input"]["messages"][0]["content"]
        assert items[2] == {"image": url}
        assert items[1]["image"] == images.ref(sha_a, "data:image/jpeg;base64")
        assert base64.b64encode(inline.read(sha_a)).decode() == a.split(",")[1]


def test_a_data_uri_whose_base64_is_not_canonical_stays_inline():
    # "/x==" decodes to the byte 0xff as "/w==" does (the bits past the byte are ignored):
    # the stored bytes would come back as "/w==", not what the user wrote
    odd = "data:image/png;base64,/x=="
    body = request(odd)
    with InlineImages() as inline:
        assert inline.externalize(body) == []
        assert inline.sizes() == {}
    assert body["input"]["messages"][0]["content"][1]["image"] == odd


def test_a_local_file_is_read_once_whatever_the_number_of_lines(tmp_path, monkeypatch):
    path = make_jpeg(tmp_path / "a.jpg", 4)
    reads = []
    real = producer_images._read_local_file
    monkeypatch.setattr(producer_images, "_read_local_file", lambda *a: reads.append(a) or real(*a))
    options = ValidationOptions(base_dir=tmp_path)
    uris = [check_image("a.jpg", options, "image") for _ in range(20)]
    assert len(reads) <= 1 and all(uri is uris[0] for uri in uris)
    assert uris[0] == data_uri(path)


def test_the_window_is_bounded_by_size():
    window = Window(10)
    for n in range(10):
        window.put(n, "x", 4)
    assert window.size <= 10 and len(window.items) == 2
    assert window.get(9) == "x" and window.get(0) is None
