"""wanq's configuration: one frozen object built from ``WANQ_`` variables.

Nothing else in wanq reads the environment. Defaults run against the local simulator.
Every setting is checked when it is loaded (type, range, URL scheme, and the pairs that must
agree), and a refusal is one plain line naming the variable and what it accepts
(``errors.ConfigError``), so no command ever starts on a setting it would trip over later.

Countdowns and the visibility timeout, derived from one setting. Every countdown wanq
schedules (poll interval, retry backoff, Retry-After) is capped at ``max_countdown``, which
must stay well below the broker's ``visibility_timeout``: kombu redelivers any message held
unacknowledged longer than that (celery/celery#2599). The defaults suit generations of 10 s
to 10 minutes (wan2.6 edits take about 80 s on average) without tuning:

- ``max_countdown`` 300 s: the first poll lands at 0.9x the learned generation time in one
  countdown for generations up to 5.5 minutes, and a 10-minute one costs one early poll;
  a job in flight wakes a worker about 3 times per generation, not every 30 s.
- ``visibility_timeout`` unset (0) means 3x ``max_countdown`` (900 s): twice is the least
  that is safe, the third leaves room for a slow acknowledgement. Its cost: an unstarted
  message of a SIGKILLed worker comes back after it; steps already claimed are re-sent by
  the sweeper after ``sweep_grace`` whatever this is.
- ``poll_max_interval`` unset (0) means 0.25x ``max_countdown`` (75 s): after a missed poll
  the interval grows from 8 % of the generation time; the cap only matters for generations
  of minutes. In a model of the schedule (``tests/test_config.py``), 10 s / 80 s / 5 min /
  10 min generations take 3 / 3 / 3 / 6 polls with a lag of 1 / 6 / 24 / 34 s; a 120 s cap
  gives the same polls but 95 s of lag at 10 min, a 45 s cap 8 polls and 16 s.

Setting any of the three by hand still works; settings that contradict each other (a
countdown cap above half the visibility timeout, a poll interval or backoff above the cap)
are refused rather than silently clamped. ``poll_first`` may exceed the cap: the first poll
is then clamped, but the prior still sets the pace of the polls after it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from workers import connection
from workers.errors import ConfigError

DEFAULT_API_KEY = "sim-key"


def _default_data_dir() -> str:
    return str(Path.home() / ".wanq")


VISIBILITY_PER_COUNTDOWN = 3.0
INTERVAL_PER_COUNTDOWN = 0.25


@dataclass(frozen=True)
class Settings:
    # where things are
    redis_url: str = (
        ""  # empty: `wanq run` starts a local Redis; workers use redis://127.0.0.1:6379/0
    )
    provider_url: str = "http://127.0.0.1:8765"
    create_path: str = "/model/v1/generation"
    status_path: str = "/model/v1/generation/{task_id}"
    task_id_field: str = ""  # extra create-response field naming the remote task ID
    api_key: str = DEFAULT_API_KEY
    data_dir: str = ""
    # money
    unit_price: float = 0.03  # USD per generated image, for estimates
    # HTTP
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    # retries (create and transient poll errors)
    max_attempts: int = 6
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    # polling schedule
    poll_first: float = 8.0  # first poll delay before any generation time is observed
    poll_factor: float = 1.25
    poll_max_interval: float = 0.0  # 0: derived, 0.25 x max_countdown (module docstring)
    poll_deadline: float = 1800.0  # seconds after creation before a job fails with 001021098
    poll_max_errors: int = 8  # consecutive failed status checks before 001021098
    poll_batch: int = 8  # most polls one message carries (workers.pump); 0: a message per poll
    poll_tick: float = 0.05  # seconds between the poll pump's reads of the polls due
    # broker safety (see module docstring)
    visibility_timeout: float = 0.0  # 0: derived, 3 x max_countdown (module docstring)
    max_countdown: float = 300.0
    # cluster
    concurrency: int = 16
    worker_processes: int = 0  # Celery processes per worker start (workers.processes); 0 = cores
    create_rate: float = 0.0  # creations per second across the cluster; 0 = unlimited
    poll_rate: float = 0.0  # status polls per second across the cluster; 0 = unlimited
    max_in_flight: int = 0  # remote tasks being created or run at once, cluster-wide; 0 = no cap
    sweep_interval: float = 5.0
    sweep_grace: float = 30.0  # a step overdue by this much counts as lost and is sent again
    lease_ttl: float = 15.0
    account_probe_interval: float = 15.0
    # after a job ends: archived outputs, webhooks
    archive_dir: str = ""  # empty: outputs are not downloaded
    archive_max_bytes: int = 50 * 1024 * 1024
    archive_allow_hosts: str = ""  # comma-separated host[:port] allowed even if private
    archive_allow_private: bool = False
    archive_deadline: float = 120.0  # seconds for one output's whole download
    delivery_threads: int = 4  # per worker: archives and webhooks run here, never in the pool
    webhook_secret: str = ""  # whsec_... (Standard Webhooks)
    webhook_allow_hosts: str = ""  # host[:port] or networks (10.0.0.0/8) of your own receivers
    webhook_attempts: int = 8
    # data at scale (issue 12)
    retention: float = 30 * 86400.0  # seconds a batch is kept after it ended (then purged)
    max_inline_bytes: int = 1 << 30  # what one batch may add to a Redis with no maxmemory
    # logs
    log_format: str = "text"  # "json": one JSON object per line, for log shippers

    def __post_init__(self) -> None:
        """Fill the derived defaults (0) from ``max_countdown``; see the module docstring."""
        if not self.visibility_timeout:
            object.__setattr__(
                self, "visibility_timeout", VISIBILITY_PER_COUNTDOWN * self.max_countdown
            )
        if not self.poll_max_interval:
            object.__setattr__(
                self, "poll_max_interval", INTERVAL_PER_COUNTDOWN * self.max_countdown
            )

    @property
    def broker_url(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"

    def status_url(self, task_id: str) -> str:
        return self.provider_url.rstrip("/") + self.status_path.format(task_id=task_id)

    @property
    def create_url(self) -> str:
        return self.provider_url.rstrip("/") + self.create_path

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir or _default_data_dir())

    def redacted(self) -> dict[str, object]:
        """The settings as shown to people: the API key never appears."""
        shown: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        for secret in ("api_key", "webhook_secret"):
            shown[secret] = "***" if getattr(self, secret) else ""
        return shown


def safe_url(url: str) -> str:
    """A URL as shown to people: never its password (nor a Sentinel URL's sentinel_password)."""
    password = urlsplit(url.split(";", 1)[0]).password
    shown = url.replace(f":{password}@", ":***@") if password else url
    return re.sub(r"(sentinel_password=)[^&;]*", r"\1***", shown)


# --- checking: what each variable accepts, in words a user reads ----------------------------

Check = tuple[Callable[[object], bool], str]
# unix:// is not among them: kombu has no transport by that name, so a worker given one died
# at start with "No such transport: unix" after the URL had been accepted here
REDIS_SCHEMES = ("redis", "rediss", "sentinel", "redis+sentinel")


def _bound(low: float, *, strict: bool = False, kind: str = "a number", note: str = "") -> Check:
    """A lower bound on a number, with the words that say it."""

    def accepted(value: object) -> bool:
        number = float(value)  # type: ignore[arg-type]  # coerced to the field's type first
        return number > low if strict else number >= low

    words = f"{kind} {'>' if strict else '>='} {low:g}" + (f" ({note})" if note else "")
    return accepted, words


def _redis_url(url: object) -> bool:
    return not url or urlsplit(str(url).split(";", 1)[0]).scheme in REDIS_SCHEMES


def _http_url(url: object) -> bool:
    split = urlsplit(str(url))
    return split.scheme in ("http", "https") and bool(split.hostname)


CHECKS: dict[str, Check] = {
    "redis_url": (
        _redis_url,
        "a redis://, rediss://, sentinel:// or redis+sentinel:// URL",
    ),
    "provider_url": (_http_url, "an http:// or https:// URL with a host"),
    "create_path": (lambda v: str(v).startswith("/"), "a path starting with /"),
    "status_path": (
        lambda v: str(v).startswith("/") and "{task_id}" in str(v),
        "a path starting with / that contains {task_id}",
    ),
    "unit_price": _bound(0),
    "connect_timeout": _bound(0, strict=True),
    "read_timeout": _bound(0, strict=True),
    "max_attempts": _bound(1, kind="an integer"),
    "backoff_base": _bound(0, strict=True),
    "backoff_cap": _bound(0, strict=True),
    "poll_first": _bound(0, strict=True),
    "poll_factor": _bound(1),
    "poll_max_interval": _bound(0, strict=True),
    "poll_deadline": _bound(0, strict=True),
    "poll_max_errors": _bound(1, kind="an integer"),
    "poll_batch": _bound(0, kind="an integer", note="0: one countdown message per poll"),
    "poll_tick": _bound(0, strict=True),
    "visibility_timeout": _bound(0, strict=True),
    "max_countdown": _bound(1),
    "concurrency": _bound(1, kind="an integer", note="threads per worker"),
    "create_rate": _bound(0, note="0: no limit"),
    "poll_rate": _bound(0, note="0: no limit"),
    "max_in_flight": _bound(0, kind="an integer", note="0: no cap"),
    "worker_processes": _bound(0, kind="an integer", note="0: one per core"),
    "sweep_interval": _bound(0, strict=True),
    "sweep_grace": _bound(0, strict=True),
    "lease_ttl": _bound(0, strict=True),
    "account_probe_interval": _bound(0, strict=True),
    "archive_max_bytes": _bound(1, kind="an integer", note="bytes"),
    "archive_deadline": _bound(0, strict=True),
    "delivery_threads": _bound(1, kind="an integer"),
    "retention": _bound(0, strict=True),
    "max_inline_bytes": _bound(1, kind="an integer", note="bytes"),
    "webhook_secret": (lambda v: not v or str(v).startswith("whsec_"), "empty or whsec_..."),
    "webhook_attempts": _bound(1, kind="an integer"),
    "log_format": (lambda v: v in ("text", "json"), "text or json"),
}
SECRETS = ("api_key", "webhook_secret")
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


# One line per variable for .env.example (``python -m workers.config > .env.example``; a
# test keeps the file and this table in step). A leading "## " starts a section.
DOCS: dict[str, str] = {
    "redis_url": "## broker and job store\nempty: `wanq run` starts a local Redis (workers "
    "default to redis://127.0.0.1:6379/0)\nredis://:PASSWORD@host:6379/0, "
    "rediss://...?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.crt, or Redis Sentinel in "
    "kombu's form,\none sentinel:// per sentinel joined by ';' (quote it), with optional "
    'master_name and sentinel_password\n(see ops/README.md, "Redis high availability"):\n'
    "WANQ_REDIS_URL='sentinel://:PASSWORD@s1:26379/0;sentinel://s2:26379?master_name=mymaster'",
    "provider_url": "## the provider\nits base URL, http:// or https:// (default: the local "
    "simulator)",
    "create_path": "POST path that creates a remote task",
    "status_path": "GET path of a task's status; {task_id} is replaced",
    "task_id_field": "an extra create-answer field naming the task ID (id, task_id, taskId, "
    "jobId are always tried, also under data)",
    "api_key": "Bearer key; lives only in the workers' environment",
    "data_dir": "local Redis data, logs and results of `wanq run` (default ~/.wanq)",
    "unit_price": "USD per generated image, for estimates and budget reservations (>= 0)",
    "connect_timeout": "seconds to connect to the provider",
    "read_timeout": "seconds to wait for the provider's answer",
    "max_attempts": "## retries and polling\ncreate attempts before a job fails (transient errors)",
    "backoff_base": "first retry delay, doubled each attempt, with full jitter",
    "backoff_cap": "longest retry delay (Retry-After may ask for more, up to max_countdown)",
    "poll_first": "first poll delay until a generation time has been observed",
    "poll_factor": "growth of the interval between polls (>= 1)",
    "poll_max_interval": "longest interval between polls; 0: 0.25 x WANQ_MAX_COUNTDOWN",
    "poll_deadline": "seconds after creation before a job fails with 001021098",
    "poll_max_errors": "consecutive failed status checks before 001021098 (001021096 if "
    "unreadable)",
    "poll_batch": "most status polls one Celery message carries (polls due together share one); "
    "0: one countdown message per poll",
    "poll_tick": "seconds between the poll pump's reads of the polls due (a poll goes out within "
    "half of it of its time)",
    "visibility_timeout": "kombu: unacknowledged messages older than this are redelivered; "
    "0: 3 x WANQ_MAX_COUNTDOWN",
    "max_countdown": "cap of every countdown; the one setting for long generations "
    "(see workers/config.py)",
    "concurrency": "## the cluster\nthreads per worker process",
    "create_rate": "creations per second across the whole cluster; 0 = no limit",
    "poll_rate": "status polls per second across the whole cluster; 0 = no limit",
    "max_in_flight": "remote tasks being created or run at once, cluster-wide; 0 = no cap",
    "worker_processes": "Celery worker processes one worker start runs (wanq worker, wanq up, "
    "wanq run); 0 = one per core",
    "sweep_interval": "seconds between sweeps (one worker sweeps, under a lease)",
    "sweep_grace": "a step overdue by this many seconds counts as lost and is sent again",
    "lease_ttl": "seconds before another worker takes over the sweep",
    "account_probe_interval": "seconds between probes while the account is blocked (401/403)",
    "archive_dir": "## after a job ends\nwhere finished jobs' outputs are downloaded: a directory "
    "or an fsspec URL such as\ns3://bucket/prefix (pip install 'wanq[s3]'; AWS_* variables for "
    "credentials/endpoint)\n(empty: not downloaded)",
    "archive_deadline": "seconds one output's whole download may take (attempts, redirects, "
    "every byte)",
    "delivery_threads": "threads per worker for archives and webhooks (never the threads that "
    "create and poll)",
    "archive_max_bytes": "largest output file downloaded, in bytes",
    "archive_allow_hosts": "host[:port] list allowed even though private/loopback (the "
    "simulator's address in the demo)",
    "archive_allow_private": "allow every private/loopback address for downloads (not recommended)",
    "webhook_secret": "Standard Webhooks secret (whsec_...) that signs batch webhooks",
    "webhook_attempts": "delivery attempts per webhook before it is recorded as failed",
    "webhook_allow_hosts": "host[:port] or networks (10.0.0.0/8) of your own webhook receivers "
    "allowed on private/loopback addresses",
    "retention": "## data\nseconds a batch is kept in Redis after it ended (30 days), then the "
    "workers purge it",
    "max_inline_bytes": "what one batch may add to a Redis with no maxmemory (inline images and "
    "jobs), in bytes",
    "log_format": "## logs\ntext or json: one JSON object per line with batch_id, job_id and "
    "remote_task_id\non every line about a job. Keys and request payloads are never logged.",
}


def env_example() -> str:
    """The text of .env.example: every variable, its default and what it is for."""
    lines = [
        "# wanq configuration: every variable is optional; defaults run against the local "
        "simulator.",
        "# Generated by `python -m workers.config > .env.example`.",
    ]
    defaults = {f.name: f.default for f in fields(Settings)}
    for name, default in defaults.items():
        for doc in DOCS[name].split("\n"):
            if doc.startswith("## "):
                lines += ["", f"# --- {doc[3:]} ---"]
            else:
                lines.append(f"# {doc}")
        shown = str(default).lower() if isinstance(default, bool) else default
        lines.append(
            f"# {variable(name)}={shown:.15g}"
            if isinstance(default, float)
            else f"# {variable(name)}={shown}"
        )
    return "\n".join(lines) + "\n"


def variable(name: str) -> str:
    return "WANQ_" + name.upper()


def _shown(name: str, raw: str) -> str:
    if name in SECRETS:
        return "***"
    return safe_url(raw) if name == "redis_url" else raw


def _coerce(name: str, raw: str, like: object) -> object:
    """``raw`` as the type of the default ``like``; a ConfigError names what is accepted."""
    text = raw.strip()
    try:
        if isinstance(like, bool):
            if text.lower() not in TRUE | FALSE:
                raise ValueError
            return text.lower() in TRUE
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}[type(like)]
        rule = CHECKS.get(name)
        wanted = rule[1] if rule else kind
        raise ConfigError(
            detail=f"{variable(name)} must be {wanted}, not {_shown(name, raw)!r}"
        ) from None
    return raw


def _contradictions(settings: Settings, given: Mapping[str, object]) -> None:
    """Pairs that must agree (see the module docstring). A default above a smaller cap the
    user set is only clamped; a value the user set that the cap would ignore is refused."""
    if settings.max_countdown * 2 > settings.visibility_timeout:
        raise ConfigError(
            detail="WANQ_MAX_COUNTDOWN must be at most half of WANQ_VISIBILITY_TIMEOUT "
            f"({settings.max_countdown:g} > {settings.visibility_timeout:g} / 2), or held "
            "countdown messages are redelivered while still pending (leave "
            "WANQ_VISIBILITY_TIMEOUT unset to derive it)"
        )
    for name in ("poll_max_interval", "backoff_cap"):  # poll_first also sets the poll pace
        if name in given and getattr(settings, name) > settings.max_countdown:
            raise ConfigError(
                detail=f"{variable(name)} ({getattr(settings, name):g}) must not exceed "
                f"WANQ_MAX_COUNTDOWN ({settings.max_countdown:g}): every countdown is capped "
                "there, so the larger value would never be used"
            )
    if settings.poll_deadline <= settings.poll_first:
        raise ConfigError(
            detail=f"WANQ_POLL_DEADLINE ({settings.poll_deadline:g}) must exceed "
            f"WANQ_POLL_FIRST ({settings.poll_first:g}), or every job fails before its first poll"
        )


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``WANQ_<FIELD>`` variables (e.g. ``WANQ_REDIS_URL``), checked:
    a refused value raises ``ConfigError`` with one line naming the variable."""
    env = os.environ if environ is None else environ
    defaults = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(variable(f.name))
        if raw is not None and raw != "":
            values[f.name] = _coerce(f.name, raw, getattr(defaults, f.name))
    for name, value in values.items():
        rule = CHECKS.get(name)
        if rule and not rule[0](value):
            raw = str(env.get(variable(name)))
            raise ConfigError(
                detail=f"{variable(name)} must be {rule[1]}, not {_shown(name, raw)!r}"
            )
    settings = Settings(**values)
    try:  # a malformed Sentinel URL fails here, not in a worker
        connection.parse_sentinel(settings.broker_url)
    except ValueError as exc:
        raise ConfigError(detail=str(exc)) from None
    _contradictions(settings, values)
    return settings


if __name__ == "__main__":  # python -m workers.config > .env.example
    print(env_example(), end="")
