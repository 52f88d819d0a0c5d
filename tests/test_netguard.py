"""The outbound address policy against a canary HTTP server of our own on 127.0.0.1: every
bypass shape is refused before a byte is sent (the canary counts zero requests), the address
checked is the address connected to, and TLS is done for the name, not the IP."""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.canary import Canary, serve
from workers import netguard
from workers.archive import ArchiveError, DownloadLimits, download, new_session

NAME = "outputs.example.test"  # never resolved for real: tests pass their own resolver


@pytest.fixture
def canary() -> Iterator[Canary]:
    yield from serve(Canary())


def strict(**changes: object) -> DownloadLimits:
    return DownloadLimits(attempts=1, connect_timeout=2, read_timeout=2, **changes)


# --- URLs that two parsers read differently, all aimed at the canary -------------------------


BYPASSES = [
    "http://127.0.0.1:{port}\\@outputs.example.test/x",  # the reproduction
    "http://127.0.0.1:{port}\\x@outputs.example.test/x",
    "http://outputs.example.test@127.0.0.1:{port}/x",  # userinfo
    "http://user:pw@127.0.0.1:{port}/x",
    "http://127.1:{port}/x",  # short, octal, hex and integer IPv4 forms
    "http://0177.0.0.1:{port}/x",
    "http://0x7f.0.0.1:{port}/x",
    "http://2130706433:{port}/x",
    "http://127.0.0.1:{port} /x",  # whitespace, control characters
    "http://127.0.0.1:{port}/x\r\nHost: evil",
    "\thttp://127.0.0.1:{port}/x",
    "http://127.0.0.1%2e:{port}/x",  # percent-encoded host
    "http://[::1%25lo]:{port}/x",  # zone ID
    "http://outputs.example.test:{port}:80/x",  # two ports
    "http://ou\u0442puts.example.test:{port}/x",  # non-ASCII look-alike
]


@pytest.mark.parametrize("shape", BYPASSES)
def test_ambiguous_urls_are_refused_and_the_canary_sees_nothing(canary, tmp_path, shape):
    # even with the name allowed: the form itself is refused, never read as another host
    limits = strict(allowed_hosts=frozenset({NAME}))
    with pytest.raises(ArchiveError) as caught:
        download(shape.format(port=canary.port), tmp_path / "x.png", limits)
    assert canary.requests == []
    assert str(caught.value).startswith("URL refused: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[::ffff:7f00:1]", "loopback"),
        ("[2002:7f00:1::]", "loopback"),  # 6to4 around 127.0.0.1
    ],
)
def test_loopback_in_any_spelling_is_refused_without_the_allow_list(canary, tmp_path, host, kind):
    with pytest.raises(ArchiveError, match=f"a {kind} address"):
        download(f"http://{host}:{canary.port}/x", tmp_path / "x.png", strict())
    assert canary.requests == []


@pytest.mark.parametrize(
    ("url", "resolved"),
    [
        ("http://169.254.169.254/latest/meta-data/", None),  # checked only: never connected to
        ("http://metadata.example.test/latest/meta-data/", ["169.254.169.254"]),
        ("http://[fd00:ec2::254]/latest/meta-data/", None),
    ],
)
def test_the_metadata_address_is_refused_by_the_check(url, resolved):
    resolve = (lambda host, port: resolved) if resolved else None
    with pytest.raises(netguard.Refused, match=r"a (link-local|private) address"):
        netguard.check(url, netguard.Policy(), resolve)


def test_a_redirect_to_the_canary_in_a_bypass_form_is_refused(canary, tmp_path):
    allowed = strict(allowed_hosts=frozenset({f"127.0.0.1:{canary.port}"}))
    hop = f"http://127.0.0.1:{canary.port}/redirect?to=http://127.0.0.1:{canary.port}%5C@x/y"
    with pytest.raises(ArchiveError, match="backslash"):
        download(hop, tmp_path / "x.png", allowed)
    assert canary.paths == [hop.split(str(canary.port), 1)[1]]
    # the canary answered the first hop only: the redirect's target was never requested


# --- the checked address is the connected one ------------------------------------------------


def test_the_connection_goes_to_the_checked_address_with_the_name_as_host(canary):
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    policy = netguard.Policy(allowed=frozenset({NAME}))
    target = netguard.check(f"http://{NAME}:{canary.port}/img.png?sig=1", policy, resolve)
    assert target.address == "127.0.0.1" and target.pinned_url.startswith("http://127.0.0.1:")
    with netguard.guarded_session() as session:
        response = netguard.send(session, "GET", target, timeout=5)
    assert response.content == b"canary"
    assert calls == [NAME], "resolved once, by the check"
    assert canary.requests == [("/img.png?sig=1", f"{NAME}:{canary.port}")]


def test_a_name_resolving_to_any_private_address_is_refused():
    def rebinding(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]

    with pytest.raises(netguard.Refused, match=r"10\.0\.0\.7, a private address"):
        netguard.check("https://cdn.example.test/x.png", netguard.Policy(), rebinding)


def test_public_addresses_pass_and_allow_list_networks_match_the_ip():
    public = netguard.check(
        "https://cdn.example.test/a", netguard.Policy(), lambda h, p: ["8.8.8.8"]
    )
    assert (public.address, public.port, public.host_header) == ("8.8.8.8", 443, "cdn.example.test")
    office = netguard.Policy.from_setting("hooks.internal:8443, 10.1.0.0/16")
    inside = netguard.check("http://recv.lan/h", office, lambda h, p: ["10.1.2.3"])
    assert inside.address == "10.1.2.3"
    by_name = netguard.check("https://hooks.internal:8443/", office, lambda h, p: ["10.9.9.9"])
    assert by_name.address == "10.9.9.9"
    with pytest.raises(netguard.Refused, match="private"):
        netguard.check("https://hooks.internal:9999/", office, lambda h, p: ["10.9.9.9"])


def test_the_environment_proxy_is_not_used(canary, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would be a connection error
    policy = netguard.Policy(allowed=frozenset({"127.0.0.1"}))
    target = netguard.check(f"http://127.0.0.1:{canary.port}/p", policy)
    with netguard.guarded_session() as session:
        assert netguard.send(session, "GET", target, timeout=5).content == b"canary"


# --- TLS: SNI and the certificate are for the name, the socket for the checked IP ------------


@pytest.fixture
def tls_canary(tmp_path: Path) -> Iterator[tuple[Canary, Path]]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", f"/CN={NAME}"),
            *("-addext", f"subjectAltName=DNS:{NAME}"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    seen: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: seen.append(name)  # type: ignore[assignment]
    server = Canary()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.sni_seen = seen  # type: ignore[attr-defined]
    for running in serve(server):
        yield running, cert


def test_https_sends_the_name_as_sni_and_checks_the_certificate_for_it(tls_canary):
    server, cert = tls_canary
    policy = netguard.Policy(allowed=frozenset({NAME}))
    target = netguard.check(f"https://{NAME}:{server.port}/t", policy, lambda h, p: ["127.0.0.1"])
    with netguard.guarded_session() as session:
        response = netguard.send(session, "GET", target, timeout=5, verify=str(cert))
    assert response.content == b"canary"
    assert server.sni_seen == [NAME]  # type: ignore[attr-defined]
    assert server.requests[0][1] == f"{NAME}:{server.port}"


def test_https_to_a_name_the_certificate_does_not_cover_fails(tls_canary):
    server, cert = tls_canary
    policy = netguard.Policy(allow_private=True)
    target = netguard.check(
        f"https://other.example.test:{server.port}/t", policy, lambda h, p: ["127.0.0.1"]
    )
    with (
        netguard.guarded_session() as session,
        pytest.raises(Exception, match=r"(?i)certificate|hostname"),
    ):
        netguard.send(session, "GET", target, timeout=5, verify=str(cert))
    assert server.requests == []


# --- a slow output host ----------------------------------------------------------------------


def test_a_host_dribbling_a_byte_a_second_fails_within_the_deadline(canary, tmp_path):
    limits = DownloadLimits(
        allowed_hosts=frozenset({f"127.0.0.1:{canary.port}"}), read_timeout=30, deadline=3
    )
    started = time.monotonic()
    with pytest.raises(ArchiveError, match="took longer than its deadline of 3 s"):
        download(f"http://127.0.0.1:{canary.port}/dribble", tmp_path / "x.png", limits)
    assert time.monotonic() - started < 3 + 1.5  # the deadline plus at most one read
    assert list(tmp_path.iterdir()) == []


def test_new_session_is_guarded():
    session = new_session()
    assert isinstance(session.get_adapter("https://x.test/"), netguard.GuardedAdapter)
    assert session.trust_env is False
