"""HTTP pieces every outbound caller shares: one way to build a session, one Retry-After.

The provider client, the archive's downloads and the webhooks all talk HTTP through
``requests``; each gets a session from ``new_session`` (its own pool, no hidden retries:
wanq counts and schedules its retries itself) and reads ``Retry-After`` with ``retry_after``
(delta-seconds or an HTTP date, RFC 9110 section 10.2.3).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests
from requests.adapters import HTTPAdapter

MAX_RETRY_AFTER = 24 * 3600.0  # a hostile or broken header cannot park a job for a year


def new_session(user_agent: str, pool_size: int = 4) -> requests.Session:
    """A session with its own connection pool and no retries of its own."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
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
