"""HTTP pieces every outbound caller shares: one way to build a session, one Retry-After.

The provider client, the archive's downloads and the webhooks all talk HTTP through
``requests``; each gets a session from ``new_session`` (its own pool, no hidden retries:
wanq counts and schedules its retries itself) and reads ``Retry-After`` with ``retry_after``
(delta-seconds or an HTTP date, RFC 9110 section 10.2.3).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests
import requests.utils
from requests.adapters import HTTPAdapter

MAX_RETRY_AFTER = 24 * 3600.0  # a hostile or broken header cannot park a job for a year


def new_session(user_agent: str, pool_size: int = 4, only_url: str = "") -> requests.Session:
    """A session with its own connection pool and no retries of its own.

    ``only_url``: the session calls this one host only (the provider), so the environment's
    proxy and CA bundle settings are read once, here, instead of on every request (requests
    does that, and reads ~/.netrc, per call when ``trust_env`` is on: a sixth of a status
    call's CPU). Sessions that go to any host (downloads, webhooks) keep requests' default.
    """
    session = requests.Session()
    adapter = HTTPAdapter(pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    if only_url:
        session.proxies = requests.utils.get_environ_proxies(only_url)
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        session.verify = bundle or True
        session.trust_env = False
    return session


def retry_after(raw: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value; None when absent or unreadable."""
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)
