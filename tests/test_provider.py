"""Reading the provider's answers: task IDs in any of the known places, status bodies in and
out of a ``data`` envelope, and every HTTP answer classified."""

from __future__ import annotations

import pytest
import requests

from workers import provider
from workers.provider import AccountProblem, Rejected, Transient


@pytest.mark.parametrize(
    "body",
    [
        {"id": "t1"},
        {"task_id": "t1"},
        {"taskId": "t1"},
        {"jobId": "t1"},
        {"data": {"task_id": "t1"}},
        {"data": {"jobId": "t1"}, "request_id": "r"},
    ],
)
def test_task_id_is_found_where_providers_put_it(body):
    assert provider.find_task_id(body) == "t1"


def test_configured_task_id_field_wins():
    assert provider.find_task_id({"ticket": "t9", "id": "x"}, "ticket") == "t9"
    assert provider.find_task_id({"nothing": 1}) is None


def test_completed_status_keeps_the_providers_order():
    body = {
        "data": {
            "status": "COMPLETED",
            "output": [
                {
                    "content": [
                        {"type": "text", "text": "one"},
                        {"type": "image", "url": "https://x/1.png"},
                        {"type": "text", "text": "two"},
                    ],
                    "jobId": "t",
                }
            ],
            "usage": {"cost": "0.0300", "discount": 0, "image_count": 1},
            "metadata": {},
        }
    }
    status = provider.parse_status(body)
    assert status.done and status.state == "completed"
    assert [item.get("text") or item.get("url") for item in status.outputs] == [
        "one",
        "https://x/1.png",
        "two",
    ]
    assert status.usage == {"cost": "0.0300", "discount": 0, "image_count": 1}
    assert provider.cost_micros(status.usage) == 30_000


@pytest.mark.parametrize("state", ["pending", "processing", "queued", "something-new"])
def test_any_other_status_means_still_working(state):
    assert not provider.parse_status({"status": state}).done


def test_failed_status_keeps_the_remote_error():
    status = provider.parse_status(
        {"status": "failed", "error": {"code": "001021095", "message": "boom"}}
    )
    assert status.done and status.error == {"code": "001021095", "message": "boom"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"status": None},
        {"status": "completed"},
        {"status": "completed", "output": "x"},
        {"status": "completed", "output": [{"content": [{"type": "image"}]}]},
    ],
)
def test_unreadable_status_is_transient_and_marked(body):
    with pytest.raises(Transient) as caught:
        provider.parse_status(body)
    assert caught.value.unparseable


def answer(code: int, body: bytes = b"{}", headers: dict | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = code
    response._content = body
    response.headers.update(headers or {})
    return response


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (401, AccountProblem),
        (403, AccountProblem),
        (429, Transient),
        (500, Transient),
        (503, Transient),
        (400, Rejected),
        (404, Rejected),
    ],
)
def test_http_answers_are_classified(code, kind):
    with pytest.raises(kind):
        provider.classify(answer(code, b'{"error": {"code": "X", "message": "m"}}'))


def test_retry_after_and_remote_error_are_kept():
    with pytest.raises(Transient) as caught:
        provider.classify(
            answer(429, b'{"error": {"code": "429", "message": "slow"}}', {"Retry-After": "7"})
        )
    assert caught.value.retry_after == 7.0
    assert caught.value.remote() == {"http_status": 429, "code": "429", "message": "slow"}


def test_a_body_that_is_not_json_is_transient():
    with pytest.raises(Transient) as caught:
        provider.classify(answer(200, b"<html>gateway</html>"))
    assert caught.value.unparseable


@pytest.mark.parametrize(
    "hostile", ["../../admin", "a/b", "x?y=1", "a b", "..", "", "é", "x" * 129]
)
def test_a_task_id_unsafe_in_a_url_path_is_not_taken(hostile):
    assert provider.find_task_id({"id": hostile}) is None
    assert provider.find_task_id({"id": hostile, "data": {"task_id": "ok-1"}}) == "ok-1"


def test_the_provider_session_reads_proxies_and_ca_bundle_once(monkeypatch):
    """trust_env off for speed (workers.http), with the environment's settings kept."""
    from workers.http import new_session

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("NO_PROXY", "internal.example.test")
    proxied = new_session("wanq", only_url="https://api.example.test/v1/tasks")
    assert proxied.trust_env is False
    assert proxied.proxies.get("https") == "http://proxy.example.test:3128"
    assert proxied.verify == "/etc/ssl/certs/ca-certificates.crt"
    direct = new_session("wanq", only_url="https://internal.example.test/v1/tasks")
    assert not direct.proxies, "NO_PROXY still applies"
    assert new_session("wanq").trust_env is True, "sessions to any host keep requests' default"


def test_a_provider_call_goes_through_the_proxy_with_the_key_and_the_providers_cookies(
    monkeypatch,
):
    """Calls are prepared from the session and sent through it (workers.provider._call): the
    proxy the environment names, the API key and the cookies the provider set all still apply,
    as Session.request would apply them."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from workers import config

    seen: list[tuple[str, str, str]] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # an HTTP proxy gets the absolute URL
            seen.append((self.path, self.headers["Authorization"], self.headers["Cookie"] or ""))
            body = json.dumps({"output": {"task_status": "RUNNING"}, "status": "running"})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Set-Cookie", "lb=node-7; Path=/")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        env = {"WANQ_PROVIDER_URL": "http://api.example.test", "WANQ_API_KEY": "sk-test"}
        client = provider.ProviderClient(config.load(env))
        assert client.status("t1").state == "running"
        assert client.status("t2").state == "running"
    finally:
        server.shutdown()
    (first, key, cookie0), (second, _, cookie1) = seen
    assert first.startswith("http://api.example.test/") and first.endswith("/t1")
    assert second.endswith("/t2") and key == "Bearer sk-test"
    assert (cookie0, cookie1) == ("", "lb=node-7")


def test_a_redirect_from_the_provider_is_not_followed():
    """A 302 to a create or a status call is a transient fault with its status: neither the
    request (with its images) nor the status call goes to the address the answer chose."""
    from tests.canary import Canary, serve
    from workers import config

    elsewhere, answering = serve(Canary()), serve(Canary())
    target, provider_host = next(elsewhere), next(answering)
    try:
        hop = f"/redirect?to=http://{target.address}/"
        env = {
            "WANQ_PROVIDER_URL": f"http://{provider_host.address}",
            "WANQ_API_KEY": "sk-test",
            "WANQ_CREATE_PATH": hop + "create",
            "WANQ_STATUS_PATH": hop + "{task_id}",
        }
        client = provider.ProviderClient(config.load(env))
        with pytest.raises(Transient) as create:
            client.create({"model": "wan26_i2i", "input": {}})
        with pytest.raises(Transient) as status:
            client.status("t1")
    finally:
        for server in (elsewhere, answering):
            next(server, None)
    assert create.value.http_status == status.value.http_status == 302
    assert "redirect" in str(create.value) and not create.value.ambiguous
    assert len(provider_host.requests) == 2
    assert target.requests == [], "the redirect's target got nothing"
