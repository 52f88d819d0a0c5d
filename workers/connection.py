"""Where wanq's Redis is: one URL (``WANQ_REDIS_URL``) for the Celery broker and the job store.

A plain ``redis://`` or ``rediss://`` URL goes to both as it is. For Redis Sentinel, the URL
is kombu's own form, one ``sentinel://`` URL per sentinel joined by ``;``::

    sentinel://:PASSWORD@s1:26379/0;sentinel://s2:26379;sentinel://s3:26379?master_name=mymaster

or, the same in the one-URL form other Redis clients use::

    redis+sentinel://:PASSWORD@s1:26379,s2:26379,s3:26379/mymaster/0

The first URL's user, password and database are the Redis master's, as kombu reads them.
Two query keys, on any of the URLs, are wanq's: ``master_name`` (the service the sentinels
monitor, default ``mymaster``) and ``sentinel_password`` (the sentinels' own ``requirepass``,
when they have one). Celery gets the URLs without those keys, with the credentials copied
onto every URL (kombu switches to the next URL after a connection error and would otherwise
drop them), and the keys as transport options, so neither appears in its logs. The store
gets a client for the same master from redis-py's ``Sentinel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from workers.errors import ConfigError

DEFAULT_MASTER = "mymaster"
SENTINEL_PORT = 26379
HEALTH_CHECK_INTERVAL = 25
# A master lost without a TCP reset (a dead machine) must not hang a call forever.
SOCKET_TIMEOUTS = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}
# A store call waits out a failover (down-after-milliseconds plus the election: keep them
# under about 20 s) instead of failing the task that made it: 13 tries over 24 to 48 s.
FAILOVER_RETRY = Retry(EqualJitterBackoff(cap=5, base=0.25), retries=12)


class MasterConnection(SentinelManagedConnection):
    """Asks the sentinels where the master is on every reconnect, not only when the pool
    hands the connection out: redis-py's own retries of a command reconnect to the address
    the connection had, after a failover the dead master, until they give up
    (redis/redis-py#3874). Each retry is then one attempt at the master named now."""

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self._sock and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health, retry_socket_connect=False)


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``sentinel://`` URL list."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int
    username: str
    password: str
    sentinel_password: str

    def broker_url(self) -> str:
        """kombu's form, credentials and database on every URL, no wanq query keys."""
        auth = ""
        if self.username or self.password:
            auth = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
        hosts = (f"{host}:{port}" for host, port in self.sentinels)
        return ";".join(f"sentinel://{auth}{host}/{self.db}" for host in hosts)

    def sentinel_kwargs(self) -> dict[str, Any]:
        """How to reach the sentinels themselves (their password is not the master's)."""
        password = {"password": self.sentinel_password} if self.sentinel_password else {}
        return {**SOCKET_TIMEOUTS, **password}


def parse_sentinel(url: str) -> SentinelURL | None:
    """The Sentinel setup a URL names, or None for a plain ``redis://``/``rediss://`` URL."""
    if url.startswith("redis+sentinel://"):
        return _parse_redis_sentinel(url)
    parts = [part.strip() for part in url.split(";") if part.strip()]
    if not parts or not parts[0].startswith("sentinel://"):
        return None
    options: dict[str, str] = {}
    sentinels = []
    for part in parts:
        split = urlsplit(part)
        if split.scheme != "sentinel":
            raise ConfigError("WANQ_REDIS_URL: every URL of a ';' list must be sentinel://")
        for key, value in parse_qsl(split.query):
            if key not in ("master_name", "sentinel_password"):
                raise ConfigError(
                    f"WANQ_REDIS_URL: unknown option {key!r} on a sentinel:// URL "
                    "(wanq reads master_name and sentinel_password)"
                )
            options[key] = value
        sentinels.append((split.hostname or "127.0.0.1", split.port or SENTINEL_PORT))
    first = urlsplit(parts[0])
    db = first.path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"WANQ_REDIS_URL: the database must be a number, not {db!r}")
    return SentinelURL(
        sentinels=tuple(sentinels),
        master_name=options.get("master_name") or DEFAULT_MASTER,
        db=int(db),
        username=unquote(first.username or ""),
        password=unquote(first.password or ""),
        sentinel_password=options.get("sentinel_password", ""),
    )


def _parse_redis_sentinel(url: str) -> SentinelURL:
    """The one-URL form other Redis clients use:
    ``redis+sentinel://[:PASSWORD@]h1:26379,h2:26379/MASTER[/DB][?sentinel_password=...]``."""
    split = urlsplit(url)
    auth, _, hosts = split.netloc.rpartition("@")
    user, _, password = auth.partition(":")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.strip().rpartition(":") if ":" in host else (host.strip(), "", "")
        if not name or (port and not port.isdigit()):
            raise ConfigError(f"WANQ_REDIS_URL: cannot read the sentinel address {host!r}")
        sentinels.append((name, int(port) if port else SENTINEL_PORT))
    path = [segment for segment in split.path.split("/") if segment]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError("WANQ_REDIS_URL: redis+sentinel:// URLs end in /MASTER_NAME[/DB]")
    options = dict(parse_qsl(split.query))
    if set(options) - {"sentinel_password"}:
        raise ConfigError("WANQ_REDIS_URL: redis+sentinel:// reads only sentinel_password")
    return SentinelURL(
        sentinels=tuple(sentinels),
        master_name=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(user),
        password=unquote(password),
        sentinel_password=options.get("sentinel_password", ""),
    )


def broker(url: str) -> tuple[str, dict[str, Any]]:
    """The Celery broker URL for ``url`` and the transport options it needs on top of
    wanq's own (none for plain Redis)."""
    sentinel = parse_sentinel(url)
    if sentinel is None:
        return url, {}
    return sentinel.broker_url(), {
        "master_name": sentinel.master_name,
        "sentinel_kwargs": sentinel.sentinel_kwargs(),
        **SOCKET_TIMEOUTS,
    }


def connect(url: str) -> redis.Redis:
    """The job store's client (responses decoded): the master a Sentinel setup names now,
    found again after a failover, or the one Redis a plain URL names."""
    sentinel = parse_sentinel(url)
    if sentinel is None:
        return redis.Redis.from_url(
            url, decode_responses=True, health_check_interval=HEALTH_CHECK_INTERVAL
        )
    manager = Sentinel(list(sentinel.sentinels), sentinel_kwargs=sentinel.sentinel_kwargs())
    return manager.master_for(
        sentinel.master_name,
        db=sentinel.db,
        username=sentinel.username or None,
        password=sentinel.password or None,
        decode_responses=True,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        retry=FAILOVER_RETRY,
        connection_class=MasterConnection,
        **SOCKET_TIMEOUTS,
    )


def text(value: Any) -> str:
    """A reply of a client made by ``connect`` (decode_responses=True): redis-py's stubs type
    replies as bytes or str whatever the client, so the store narrows them here, in one place."""
    return "" if value is None else str(value)


def texts(values: Any) -> list[str]:
    return [str(v) for v in values]


def text_map(values: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in values.items()}
