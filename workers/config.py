"""wanq's configuration: one frozen object built from ``WANQ_`` variables.

Nothing else in wanq reads the environment. Defaults run against the local simulator.
Every countdown wanq schedules (poll interval, retry backoff, Retry-After) is capped at
``max_countdown``, which must stay well below the broker's ``visibility_timeout``: kombu
redelivers any message held unacknowledged longer than that (celery/celery#2599), and a
SIGKILLed worker's messages come back after it, which bounds recovery time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from workers import connection

DEFAULT_API_KEY = "sim-key"


def _default_data_dir() -> str:
    return str(Path.home() / ".wanq")


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
    poll_max_interval: float = 20.0
    poll_deadline: float = 1800.0  # seconds after creation before a job fails with 001021098
    poll_max_errors: int = 8  # consecutive failed status checks before 001021098
    # broker safety (see module docstring)
    visibility_timeout: float = 90.0
    max_countdown: float = 30.0
    # cluster
    concurrency: int = 16
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
    webhook_secret: str = ""  # whsec_... (Standard Webhooks)
    webhook_attempts: int = 8
    # data at scale (issue 12)
    retention: float = 30 * 86400.0  # seconds a batch is kept after it ended (then purged)
    max_inline_bytes: int = 1 << 30  # what one batch may add to a Redis with no maxmemory
    # logs
    log_format: str = "text"  # "json": one JSON object per line, for log shippers

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


def _coerce(raw: str, like: object) -> object:
    if isinstance(like, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(like, int):
        return int(raw)
    if isinstance(like, float):
        return float(raw)
    return raw


def load(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from ``WANQ_<FIELD>`` variables (e.g. ``WANQ_REDIS_URL``)."""
    env = os.environ if environ is None else environ
    defaults = Settings()
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = env.get("WANQ_" + f.name.upper())
        if raw is not None and raw != "":
            values[f.name] = _coerce(raw, getattr(defaults, f.name))
    settings = Settings(**values)
    if settings.log_format not in ("text", "json"):
        raise ValueError("WANQ_LOG_FORMAT is text or json")
    connection.parse_sentinel(settings.broker_url)  # a malformed URL fails here, not in a worker
    if settings.max_countdown * 2 > settings.visibility_timeout:
        raise ValueError(
            "WANQ_MAX_COUNTDOWN must be at most half of WANQ_VISIBILITY_TIMEOUT, or held "
            "countdown messages are redelivered while still pending"
        )
    return settings
