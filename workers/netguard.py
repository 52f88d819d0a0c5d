"""Which addresses wanq may connect to for URLs it did not choose, and connecting only there.

Output URLs come from the provider's answer and webhook URLs from a batch file: neither is
trusted. Checking ``urlsplit(url).hostname`` and then letting requests connect leaves two
parsers and two DNS lookups between the check and the socket:
``http://127.0.0.1:PORT\\@outputs.example.test/x`` is ``outputs.example.test`` to urlsplit and
127.0.0.1 to urllib3, and a name can resolve to a public address for the check and to a private
one for the connection. So here the URL is read once, strictly (anything two parsers might read
differently is refused: backslashes, userinfo, whitespace and control characters, non-ASCII,
numeric hosts in other forms than a plain dotted quad, zone IDs), the host is resolved once,
every address it resolves to is checked, and the request goes to that checked IP with the
original name in the ``Host`` header, as TLS SNI and for certificate checks
(``GuardedAdapter``). Redirects are the caller's to follow, each hop through ``check`` again.

    Refused        the policy will not fetch this URL (permanent; message names the host only)
    └── Unresolved the host does not resolve now (worth another try later)
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from workers.errors import WanqError

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL = 8192
# most specific first: loopback, link-local... addresses are also "private" to ipaddress
NON_PUBLIC = ("loopback", "link_local", "multicast", "unspecified", "reserved", "private")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")  # WHATWG: such a last label means IPv4
_SAFE_TEXT = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]


class Refused(WanqError, ValueError):
    """A URL the policy will not connect to, in plain words (never the full URL: signed URLs
    carry credentials in their query string)."""


class Unresolved(Refused):
    """The host name does not resolve right now: worth another attempt later."""


@dataclass(frozen=True)
class Policy:
    """What may be reached besides public addresses: explicit entries only.

    ``allowed`` entries are ``host`` (any port), ``host:port`` (``[v6]:port``) or a network
    such as ``10.0.0.0/8`` (matched against the resolved addresses).
    """

    allow_private: bool = False
    allowed: frozenset[str] = frozenset()

    @classmethod
    def from_setting(cls, raw: str, allow_private: bool = False) -> Policy:
        """From a comma-separated setting such as ``WANQ_WEBHOOK_ALLOW_HOSTS``."""
        entries = frozenset(e.strip().lower() for e in raw.split(",") if e.strip())
        return cls(allow_private, entries)

    def permits(self, host: str, port: int, address: Address) -> bool:
        if self.allow_private:
            return True
        with_port = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if {host, with_port} & self.allowed:
            return True
        return any(address in network for network in self._networks())

    def _networks(self) -> Iterable[Network]:
        for entry in self.allowed:
            if "/" in entry:
                try:
                    yield ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    continue


@dataclass(frozen=True)
class Target:
    """A checked URL: where the socket goes (``address``) and what the server is told."""

    scheme: str
    host: str  # lower case; an IPv6 literal without brackets
    port: int
    target: str  # path and query, as sent on the request line
    address: str = ""  # the checked IP the connection goes to

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == DEFAULT_PORTS[self.scheme] else f"{name}:{self.port}"

    @property
    def pinned_url(self) -> str:
        ip = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{ip}:{self.port}{self.target}"


def parse(url: object) -> Target:
    """Read an http(s) URL strictly, without resolving; Refused for anything ambiguous.

    Cheap and offline, so producers can refuse a bad ``--webhook`` before anything is written.
    """
    try:
        return _parse(url)
    except Refused as exc:
        raise Refused(f"URL refused: {exc}") from None


def _parse(url: object) -> Target:
    if not isinstance(url, str) or not url:
        raise Refused("an http(s) URL is required")
    if len(url) > MAX_URL:
        raise Refused(f"the URL is longer than {MAX_URL} characters")
    if "\\" in url:
        raise Refused("the URL has a backslash, which parsers read differently")
    if not _SAFE_TEXT.fullmatch(url):
        raise Refused("the URL has spaces, control or non-ASCII characters (percent-encode them)")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise Refused(f"only http and https URLs are allowed, not {scheme or 'no scheme'!r}")
    if "@" in parts.netloc:
        raise Refused("the URL has user information (user@host), which is refused")
    host = (parts.hostname or "").lower()
    if not host:
        raise Refused("an http(s) URL needs a host")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise Refused(f"the URL for {host} has an invalid port") from None
    _check_host(host)
    literal = f"[{host}]" if ":" in host else host
    if parts.netloc.lower() not in (literal, f"{literal}:{parts.port}"):
        raise Refused(f"the URL's host part for {host} is ambiguous")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port, target)


def check(url: object, policy: Policy, resolve: Resolver | None = None) -> Target:
    """Parse, resolve once and check every address; the Target names the IP to connect to."""
    target = parse(url)
    addresses = [_address(raw) for raw in (resolve or _resolve)(target.host, target.port)]
    if not addresses:
        raise Unresolved(f"cannot resolve {target.host}")
    for address in addresses:
        kind = non_public_kind(address)
        if kind and not policy.permits(target.host, target.port, address):
            raise Refused(
                f"refused {target.host}: it resolves to {address}, a {kind} address "
                "(not in the allow-list)"
            )
    return Target(target.scheme, target.host, target.port, target.target, str(addresses[0]))


def send(
    session: requests.Session, method: str, target: Target, **kwargs: Any
) -> requests.Response:
    """One request to ``target.address`` (never re-resolved), with no redirects followed.

    ``kwargs`` go to ``session.request``; the Host header is the URL's. An https target
    needs a session from ``guarded_session`` (its adapter puts the name in SNI and checks the
    certificate against it, not against the IP).
    """
    if not target.address:
        raise ValueError("send() takes a Target from check(), with its address resolved")
    url = target.pinned_url
    if target.scheme == "https" and not isinstance(session.get_adapter(url), GuardedAdapter):
        raise ValueError("https needs a session from netguard.guarded_session()")
    headers = {**(kwargs.pop("headers", None) or {}), "Host": target.host_header}
    return session.request(method, url, headers=headers, allow_redirects=False, **kwargs)


class GuardedAdapter(HTTPAdapter):
    """Connects where the request URL says (the checked IP) and does TLS for the name in the
    Host header: SNI and the certificate check both use it. No hidden retries."""

    def __init__(self, pool_maxsize: int = 4) -> None:
        super().__init__(pool_maxsize=pool_maxsize, max_retries=0)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> Any:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        if host_params.get("scheme") == "https":
            host_header = request.headers.get("Host") or urlsplit(request.url or "").netloc
            if isinstance(host_header, bytes):
                host_header = host_header.decode("ascii", "replace")
            name = parse(f"https://{host_header}/").host
            extra = cast(dict[str, Any], pool_kwargs)
            extra["server_hostname"] = name
            extra["assert_hostname"] = name
        return host_params, pool_kwargs


def guarded_session(user_agent: str = "wanq") -> requests.Session:
    """A session with no credentials and nothing from the environment: no proxy (it would
    connect elsewhere than the checked IP) and no ``.netrc`` (it would add credentials)."""
    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    return session


def non_public_kind(address: Address) -> str | None:
    """Why address is not a public one ("loopback", "private"...), or None if it is.

    IPv6 forms that carry an IPv4 address (mapped, 6to4, Teredo) are judged by that address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if inner is not None:
            return non_public_kind(inner)
    for kind in NON_PUBLIC:
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-global"


def _check_host(host: str) -> None:
    if ":" in host:  # an IPv6 literal
        if "%" in host:
            raise Refused("IPv6 zone IDs are refused")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Refused(f"{host!r} is not an IPv6 address") from None
        return
    if not _HOSTNAME.fullmatch(host):
        raise Refused(f"{host!r} is not a valid host name")
    if _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise Refused(f"{host!r} is a numeric host in an ambiguous form") from None


def _address(raw: str) -> Address:
    return ipaddress.ip_address(raw.split("%", 1)[0])


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise Unresolved(f"cannot resolve {host}") from None
    return [str(info[4][0]) for info in infos]


__all__ = [
    "GuardedAdapter",
    "Policy",
    "Refused",
    "Target",
    "Unresolved",
    "check",
    "guarded_session",
    "non_public_kind",
    "parse",
    "send",
]
