"""Archiving outputs before their URLs expire: the simulator's real results over HTTP, and a
small local server for what the simulator cannot do (redirects, flaky and lying answers)."""

from __future__ import annotations

import hashlib
import random
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from ops import sim_images
from ops.localstack import LocalStack, free_port, wait_for
from ops.sample import request as sample_request
from workers import provider
from workers.archive import (
    ArchiveError,
    DownloadLimits,
    archive_dir,
    archive_outputs,
    download,
    new_session,
)

CREATE_PATH = "/model/v1/generation"
AUTH = {"Authorization": "Bearer x"}
PNG = sim_images.png_for((64, 48), 1)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the simulator ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stack = LocalStack(tmp_path_factory.mktemp("archive-sim"))
    url = stack.start_simulator(
        {
            "WANQ_SIM_API_KEY": "",  # any Bearer key is accepted
            "WANQ_SIM_CREATE_PATH": CREATE_PATH,
            "WANQ_SIM_STATUS_PATH": CREATE_PATH + "/{task_id}",
            "WANQ_SIM_LATENCY": "0.3",
            "WANQ_SIM_LATENCY_JITTER": "0",
            "WANQ_SIM_P_500": "0",
            "WANQ_SIM_P_FAIL": "0",
            "WANQ_SIM_SEED": "5",
        }
    )
    yield url
    stack.stop()


def sim_limits(sim_url: str, **changes: object) -> DownloadLimits:
    return DownloadLimits(allowed_hosts=frozenset({urlsplit(sim_url).netloc}), **changes)


def finished_task(sim_url: str, body: dict) -> tuple[str, list[dict]]:
    """Create a task over HTTP and poll until it completes: its ID and outputs."""
    created = requests.post(sim_url + CREATE_PATH, json=body, headers=AUTH, timeout=5)
    created.raise_for_status()
    task_id = provider.find_task_id(created.json())
    assert task_id

    def completed() -> provider.Status | None:
        answer = requests.get(f"{sim_url}{CREATE_PATH}/{task_id}", headers=AUTH, timeout=5)
        status = provider.parse_status(answer.json())
        return status if status.state == "completed" else None

    status = wait_for(completed, "the simulated task", timeout=30, interval=0.1)
    return task_id, status.outputs


def interleaved_body() -> dict:
    body = sample_request(1, random.Random(3), interleave=True)
    body["parameters"]["max_images"] = 3
    return body


def two_images_body() -> dict:
    body = sample_request(2, random.Random(4), interleave=False)
    body["parameters"]["n"] = 2
    return body


def sim_downloads(sim_url: str) -> int:
    return requests.get(sim_url + "/_sim/stats", timeout=5).json()["downloads"]


def test_outputs_are_archived_in_order_with_the_served_bytes(simulator, tmp_path):
    _, outputs = finished_task(simulator, interleaved_body())
    assert [item["type"] for item in outputs[:2]] == ["text", "image"]
    directory = tmp_path / "batch" / "job-1"

    archived, errors = archive_outputs(outputs, directory, sim_limits(simulator))

    assert errors == []
    expected = [f"{i:02d}.{'txt' if o['type'] == 'text' else 'png'}" for i, o in enumerate(outputs)]
    assert sorted(p.name for p in directory.iterdir()) == expected
    for index, (item, saved) in enumerate(zip(outputs, archived, strict=True)):
        path = Path(saved["path"])
        assert path.name == expected[index]
        data = path.read_bytes()
        assert saved["bytes"] == len(data)
        assert saved["sha256"] == sha256(data)
        if item["type"] == "image":
            served = requests.get(item["url"], timeout=5).content
            assert saved["sha256"] == sha256(served) and saved["bytes"] == len(served)
            assert saved["url"] == item["url"]
        else:
            assert data.decode("utf-8") == item["text"] == saved["text"]
    assert all("path" not in item for item in outputs)  # the caller's list is left alone


def test_download_returns_size_and_digest_and_leaves_no_part_file(simulator, tmp_path):
    _, outputs = finished_task(simulator, two_images_body())
    dest = tmp_path / "deep" / "dir" / "one.png"

    size, digest = download(outputs[0]["url"], dest, sim_limits(simulator))

    served = requests.get(outputs[0]["url"], timeout=5).content
    assert (size, digest) == (len(served), sha256(served))
    assert dest.read_bytes() == served
    assert not dest.with_suffix(".part").exists()


def test_loopback_is_refused_by_default_and_allowed_on_request(simulator, tmp_path):
    _, outputs = finished_task(simulator, two_images_body())
    url = outputs[0]["url"]

    with pytest.raises(ArchiveError, match="loopback"):
        download(url, tmp_path / "refused.png", DownloadLimits())
    assert list(tmp_path.iterdir()) == []

    size, _ = download(url, tmp_path / "allowed.png", DownloadLimits(allow_private=True))
    assert size == (tmp_path / "allowed.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_non_public_addresses_are_refused_before_connecting(tmp_path, host, kind):
    with pytest.raises(ArchiveError, match=kind):
        download(f"http://{host}:9/x.png", tmp_path / "x.png", DownloadLimits(attempts=1))


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "gopher://example.com/x",
        "data:image/png;base64,iVBORw0KGgo=",
        "//example.com/x.png",
    ],
)
def test_only_http_and_https_are_fetched(tmp_path, url):
    with pytest.raises(ArchiveError, match="only http and https"):
        download(url, tmp_path / "x.png", DownloadLimits(allow_private=True))
    assert list(tmp_path.iterdir()) == []


def test_oversize_image_is_refused_and_nothing_is_left_behind(simulator, tmp_path):
    _, outputs = finished_task(simulator, two_images_body())
    served = requests.get(outputs[0]["url"], timeout=5).content
    limits = sim_limits(simulator, max_bytes=len(served) - 1)
    dest = tmp_path / "job" / "00.png"

    with pytest.raises(ArchiveError, match="limit"):
        download(outputs[0]["url"], dest, limits)
    archived, errors = archive_outputs(outputs[:1], dest.parent, limits)

    assert "limit" in archived[0]["archive_error"] and len(errors) == 1
    assert archived[0]["url"] == outputs[0]["url"]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_failed_item_is_marked_and_only_it_is_fetched_again(simulator, tmp_path):
    task_id, outputs = finished_task(simulator, two_images_body())
    good_url = outputs[1]["url"]
    missing_url = f"{simulator}/files/{task_id}/9.png?Signature=s3cr3t"
    items = [outputs[0], {"type": "text", "text": "a caption"}, {**outputs[1], "url": missing_url}]
    directory, limits = tmp_path / "job", sim_limits(simulator)

    before = sim_downloads(simulator)
    first, errors = archive_outputs(items, directory, limits)

    assert sim_downloads(simulator) - before == 1
    assert "path" in first[0] and "path" in first[1]
    assert "HTTP 404" in first[2]["archive_error"] and "path" not in first[2]
    assert first[2]["url"] == missing_url
    assert len(errors) == 1 and errors[0].startswith("output 2:") and "s3cr3t" not in errors[0]
    assert sorted(p.name for p in directory.iterdir()) == ["00.png", "01.txt"]

    before = sim_downloads(simulator)
    retried = [*first[:2], {**first[2], "url": good_url}]
    second, errors = archive_outputs(retried, directory, limits)

    assert errors == [] and sim_downloads(simulator) - before == 1
    assert second[:2] == first[:2]
    assert "archive_error" not in second[2]
    assert second[2]["sha256"] == sha256(requests.get(good_url, timeout=5).content)
    assert sorted(p.name for p in directory.iterdir()) == ["00.png", "01.txt", "02.png"]

    before = sim_downloads(simulator)
    assert archive_outputs(second, directory, limits) == (second, [])
    assert sim_downloads(simulator) - before == 0

    Path(second[0]["path"]).unlink()  # a file gone from disk is fetched again
    third, errors = archive_outputs(second, directory, limits)
    assert errors == [] and sim_downloads(simulator) - before == 1
    assert third == second


def test_text_is_written_as_utf8(tmp_path):
    text = "把这张照片变成水彩画 ✓"
    archived, errors = archive_outputs([{"type": "text", "text": text}], tmp_path, DownloadLimits())

    assert errors == []
    assert (tmp_path / "00.txt").read_text(encoding="utf-8") == text
    assert archived[0]["bytes"] == len(text.encode("utf-8"))


def test_items_without_a_url_or_of_unknown_type_do_not_raise(tmp_path):
    items = [{"type": "image"}, {"type": "video", "url": "x"}, {"type": "text", "text": None}]
    archived, errors = archive_outputs(items, tmp_path, DownloadLimits())

    assert archived[0]["archive_error"] == "image item has no URL"
    assert archived[1] == items[1]
    assert "archive_error" in archived[2]
    assert len(errors) == 2


# --- a local server for redirects, flaky answers and lies ------------------------------------


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: Counter[str] = Counter()
        self.authorization: list[str | None] = []
        self.release = threading.Event()  # lets a handler that holds its connection go

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def limits(self, **changes: object) -> DownloadLimits:
        return DownloadLimits(allowed_hosts=frozenset({self.host_port}), **changes)


class Handler(BaseHTTPRequestHandler):
    server: LocalServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        self.server.hits[parts.path] += 1
        self.server.authorization.append(self.headers.get("Authorization"))
        route = parts.path.strip("/").split("/")[0] or "png"
        getattr(self, f"route_{route.replace('-', '_')}")(query)

    def log_message(self, *args: object) -> None:
        pass

    def answer(self, code: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(code)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def route_png(self, query: dict[str, str]) -> None:
        self.answer(200, PNG, **{"Content-Type": query.get("type", "image/png")})

    def route_redirect(self, query: dict[str, str]) -> None:
        self.answer(302, Location=query["to"])

    def route_loop(self, query: dict[str, str]) -> None:
        self.answer(302, Location="/loop")

    def route_flaky(self, query: dict[str, str]) -> None:
        if self.server.hits["/flaky"] <= 2:
            self.answer(500, b"try again")
        else:
            self.route_png(query)

    def route_status(self, query: dict[str, str]) -> None:
        self.answer(int(query["code"]), b"no")

    def route_announce_big(self, query: dict[str, str]) -> None:
        """Announces 10 MB, sends 10 bytes and holds on: only streaming would notice."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(10 * 1024 * 1024))
        self.end_headers()
        self.wfile.write(PNG[:10])
        self.wfile.flush()
        self.server.release.wait(10)

    def route_unannounced(self, query: dict[str, str]) -> None:
        """No Content-Length: the body ends when the connection closes (HTTP/1.0)."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(PNG * 4)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    local = LocalServer()
    thread = threading.Thread(target=local.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield local
    local.release.set()
    local.shutdown()
    local.server_close()
    thread.join(5)


def test_redirects_within_allowed_hosts_are_followed(server, tmp_path):
    size, digest = download(f"{server.url}/redirect?to=/png", tmp_path / "x.png", server.limits())
    assert (size, digest) == (len(PNG), sha256(PNG))
    assert server.hits["/redirect"] == 1 and server.hits["/png"] == 1


@pytest.mark.parametrize("target", ["http://localhost:{port}/png", "http://127.0.0.1:{other}/png"])
def test_redirect_to_a_loopback_host_not_allowed_is_refused(server, tmp_path, target):
    to = target.format(port=server.server_address[1], other=free_port())
    with pytest.raises(ArchiveError, match="loopback"):
        download(f"{server.url}/redirect?to={to}", tmp_path / "x.png", server.limits())
    assert server.hits["/png"] == 0
    assert list(tmp_path.iterdir()) == []


def test_redirect_chains_are_cut_after_three_hops(server, tmp_path):
    with pytest.raises(ArchiveError, match="more than 3 redirects"):
        download(f"{server.url}/loop", tmp_path / "x.png", server.limits())
    assert server.hits["/loop"] == 4


def test_server_errors_are_retried_until_they_pass(server, tmp_path):
    size, digest = download(f"{server.url}/flaky", tmp_path / "x.png", server.limits(attempts=3))
    assert (size, digest) == (len(PNG), sha256(PNG))
    assert server.hits["/flaky"] == 3


@pytest.mark.parametrize(("code", "tries"), [(503, 2), (429, 2), (404, 1), (403, 1)])
def test_only_transient_answers_are_retried(server, tmp_path, code, tries):
    with pytest.raises(ArchiveError, match=f"HTTP {code}"):
        download(f"{server.url}/status?code={code}", tmp_path / "x.png", server.limits(attempts=2))
    assert server.hits["/status"] == tries


def test_announced_oversize_is_refused_before_streaming(server, tmp_path):
    limits = server.limits(max_bytes=1000, read_timeout=2)
    dest = tmp_path / "x.png"
    with pytest.raises(ArchiveError, match="announces"):
        download(f"{server.url}/announce-big", dest, limits)
    assert list(tmp_path.iterdir()) == []


def test_oversize_found_while_streaming_removes_the_part_file(server, tmp_path):
    dest = tmp_path / "job" / "x.png"
    with pytest.raises(ArchiveError, match="larger than the limit"):
        download(f"{server.url}/unannounced", dest, server.limits(max_bytes=len(PNG) * 2))
    assert list(dest.parent.iterdir()) == []


def test_a_closed_port_fails_in_plain_words(tmp_path):
    limits = DownloadLimits(allow_private=True, attempts=1, connect_timeout=2)
    url = f"http://127.0.0.1:{free_port()}/x.png?Signature=s3cr3t"
    with pytest.raises(ArchiveError, match=r"connection to 127\.0\.0\.1 failed") as caught:
        download(url, tmp_path / "x.png", limits)
    assert "s3cr3t" not in str(caught.value)


def test_the_callers_authorization_header_is_never_sent(server, tmp_path):
    session = new_session()
    session.headers["Authorization"] = "Bearer sk-provider-key"
    download(f"{server.url}/redirect?to=/png", tmp_path / "x.png", server.limits(), session)
    assert server.authorization == [None, None]


@pytest.mark.parametrize(
    ("content_type", "name"),
    [
        ("image/png", "00.png"),
        ("image/jpeg", "00.jpg"),
        ("image/webp", "00.webp"),
        ("image/bmp", "00.bmp"),
        ("IMAGE/JPEG; charset=binary", "00.jpg"),
        ("application/octet-stream", "00.png"),
    ],
)
def test_extension_follows_content_type(server, tmp_path, content_type, name):
    url = f"{server.url}/png?" + requests.compat.urlencode({"type": content_type})
    archived, errors = archive_outputs([{"type": "image", "url": url}], tmp_path, server.limits())
    assert errors == []
    assert Path(archived[0]["path"]) == tmp_path / name


# --- archive directories ---------------------------------------------------------------------


def test_archive_dir_keeps_safe_ids_as_they_are(tmp_path):
    assert (
        archive_dir(tmp_path, "nightly-42", "cat-001.v2") == tmp_path / "nightly-42" / "cat-001.v2"
    )


@pytest.mark.parametrize(
    ("batch_id", "custom_id"),
    [("b", "../../etc"), ("../..", "x"), ("b", ".."), ("b", "."), ("b", ""), ("/abs", "/etc/x")],
)
def test_archive_dir_never_escapes_root(tmp_path, batch_id, custom_id):
    path = archive_dir(tmp_path, batch_id, custom_id)
    assert path.resolve().parent.parent == tmp_path.resolve()
    assert path.name not in ("", ".", "..")


def test_ids_differing_only_in_unsafe_chars_get_different_dirs(tmp_path):
    first, second = archive_dir(tmp_path, "b", "a/b"), archive_dir(tmp_path, "b", "a?b")
    assert first != second
    assert first.name.startswith("a_b-") and second.name.startswith("a_b-")
    assert archive_dir(tmp_path, "b", "a_b").name == "a_b"
