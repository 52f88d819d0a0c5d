"""``wanq doctor``: what is wrong with this cluster, in plain words.

Each check answers one question an operator would ask at 3 am (is Redis there, will it keep
the jobs through a restart, does every queue have a worker, does the provider take our key)
and says what to do when the answer is no. Checks never change anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from workers import account, config, connection, keys
from workers.celeryconf import sending_app
from workers.provider import AccountProblem, ProviderClient, Rejected, Transient

OK, WARN, FAIL = "ok", "warn", "fail"
PROBE_TASK_ID = "wanq-doctor-probe"  # no such task: any answer but 401/403 means the key works


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # ok | warn | fail
    detail: str


def run(environ: dict[str, str] | None = None, worker_timeout: float = 3.0) -> list[Check]:
    """Every check, in the order a problem would be chased down."""
    try:
        settings = config.load(environ)
    except ValueError as exc:
        return [Check("configuration", FAIL, str(exc))]
    checks = [_configuration(settings)]
    client = _redis(settings.broker_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        where = config.safe_url(settings.broker_url)
        checks.append(Check("redis", FAIL, f"cannot reach Redis at {where}: {exc}"))
        return [*checks, _provider(settings)]
    checks.append(Check("redis", OK, f"{config.safe_url(settings.broker_url)} answers"))
    checks += list(_persistence(client))
    checks += list(_workers(settings, worker_timeout))
    checks.append(_account(client))
    checks.append(_provider(settings))
    return checks


def _redis(url: str) -> redis.Redis:
    """Sentinel URLs through wanq's own client; a plain one with short timeouts."""
    if connection.parse_sentinel(url):
        return connection.connect(url)
    return redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
    )


def _configuration(settings: config.Settings) -> Check:
    host = urlsplit(settings.provider_url).hostname or ""
    local = host in ("127.0.0.1", "localhost", "::1")
    if settings.api_key == config.DEFAULT_API_KEY and not local:
        return Check(
            "configuration",
            FAIL,
            f"WANQ_API_KEY is not set, but the provider is {settings.provider_url}",
        )
    shown = f"provider {settings.provider_url}" + (" (local: the simulator?)" if local else "")
    return Check("configuration", OK, shown)


def _persistence(client: redis.Redis) -> Iterator[Check]:
    try:
        conf = client.config_get("appendonly") | client.config_get("save")
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "")
    except redis.ResponseError:  # managed Redis often forbids CONFIG
        yield Check(
            "persistence", WARN, "CONFIG is not allowed here: check AOF/noeviction with your host"
        )
        return
    info = client.info("persistence")
    if conf.get("appendonly") == "yes":
        status = info.get("aof_last_write_status", "ok")
        verdict = OK if status == "ok" else FAIL
        yield Check("persistence", verdict, f"append-only file on (last write: {status})")
    elif conf.get("save"):
        yield Check(
            "persistence",
            WARN,
            "snapshots only (save " + conf["save"] + "): a crash loses the jobs since the last "
            "snapshot; turn on appendonly",
        )
    else:
        yield Check(
            "persistence",
            FAIL,
            "Redis keeps nothing on disk: a restart loses every queued job (set appendonly yes)",
        )
    if policy != "noeviction":
        yield Check(
            "eviction",
            FAIL,
            f"maxmemory-policy is {policy}: under memory pressure Redis would delete jobs "
            "and queued messages (set noeviction)",
        )
    else:
        yield Check("eviction", OK, "noeviction: Redis refuses writes rather than drop jobs")


def _workers(settings: config.Settings, timeout: float) -> Iterator[Check]:
    app = sending_app(settings)  # remote control needs only the broker, not the tasks
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception as exc:  # broker trouble is reported, never raised
        yield Check("workers", FAIL, f"could not ask the workers: {exc}")
        return
    if not replies:
        yield Check("workers", FAIL, f"no worker answered within {timeout:.0f} s: start one")
        return
    by_queue: dict[str, list[str]] = {}
    for node, queues in replies.items():
        for queue in queues:
            by_queue.setdefault(queue["name"], []).append(node)
    for queue, why in (
        (keys.CREATE_QUEUE, "new jobs are never started"),
        (keys.POLL_QUEUE, "running jobs are never checked"),
        (keys.DELIVER_QUEUE, "webhooks, callbacks and archives are never sent"),
    ):
        nodes = by_queue.get(queue, [])
        if nodes:
            yield Check(f"queue {queue}", OK, f"{len(nodes)} worker(s): {', '.join(sorted(nodes))}")
        else:
            yield Check(f"queue {queue}", FAIL, f"no worker consumes it: {why}")


def _account(client: redis.Redis) -> Check:
    block = account.blocked(client)
    if block:
        return Check(
            "account",
            FAIL,
            f"creation is paused cluster-wide since the provider answered "
            f"HTTP {block.get('http_status')}: {block.get('reason')} "
            "(fix the key or balance; workers probe and resume by themselves)",
        )
    return Check("account", OK, "creation is not paused")


def _provider(settings: config.Settings) -> Check:
    url = settings.status_url(PROBE_TASK_ID)
    try:
        ProviderClient(settings).status(PROBE_TASK_ID)
    except AccountProblem as exc:
        return Check(
            "provider", FAIL, f"{settings.provider_url} refused the API key: {exc.plain()}"
        )
    except Transient as exc:
        if exc.http_status:
            return Check("provider", WARN, f"{url} answered {exc}: reachable, but unwell")
        return Check("provider", FAIL, f"cannot reach {settings.provider_url}: {exc}")
    except Rejected as exc:
        return Check("provider", OK, f"reachable, key accepted ({exc} for an unknown task ID)")
    return Check("provider", OK, "reachable, key accepted")
