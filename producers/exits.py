"""What a ``wanq`` command's exit code means, and the one plain line every error becomes.

A user at 3 am reads one line naming what is wrong and what to do, never a traceback; a
script reads the exit code (the table is in the README):

    0    done
    1    the work was refused or is not there: invalid lines, a refused submission, no such
         batch, a failed doctor check, outputs still missing
    2    the input cannot be read, or the command line is wrong (click's usage errors)
    3    a WANQ_ setting is not accepted
    4    Redis cannot be reached (or refused our password)
    130  interrupted (Ctrl-C); 128+N after signal N
"""

from __future__ import annotations

import click
import kombu.exceptions
import redis

from workers import errors

OK = 0
REFUSED = 1
UNREADABLE = 2
CONFIG = 3
UNREACHABLE = 4
INTERRUPTED = 130


def plain(exc: BaseException, redis_url: str = "") -> tuple[int, str] | None:
    """(exit code, one line) for an error a user can act on; None for a bug (re-raised)."""
    if isinstance(exc, errors.ConfigError):
        return CONFIG, f"{exc} ({errors.CONFIG})"
    if isinstance(exc, errors.BatchNotFound):
        return REFUSED, str(exc)
    if isinstance(exc, errors.WanqError):
        return REFUSED, str(exc)
    where = f" at {redis_url}" if redis_url else ""
    if isinstance(exc, redis.AuthenticationError):
        return UNREACHABLE, f"Redis{where} refused the password: {_first_line(exc)}"
    if isinstance(
        exc, (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError)
    ):
        return UNREACHABLE, (
            f"cannot reach Redis{where}: {_first_line(exc)} ({errors.REDIS_UNREACHABLE}; "
            "is it running? check WANQ_REDIS_URL, or start one with `wanq up`)"
        )
    if isinstance(exc, redis.ResponseError) and "NOAUTH" in str(exc):
        return UNREACHABLE, f"Redis{where} needs a password: put it in WANQ_REDIS_URL"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Group(click.Group):
    """A click group whose commands end in one plain line and a documented exit code on
    configuration and connection errors (``plain``), however deep they were raised."""

    def invoke(self, ctx: click.Context) -> object:
        from rich.markup import escape

        from producers.terminal import console

        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # click would say "Aborted!" and exit 1
            console.print("interrupted: what was already submitted goes on in the cluster")
            ctx.exit(INTERRUPTED)
        except Exception as exc:  # sorted by plain(); bugs are re-raised
            answer = plain(exc, _redis_url())
            if answer is None:
                raise
            code, line = answer
            console.print(f"[red]{escape(line)}[/]", highlight=False)
            ctx.exit(code)


def _redis_url() -> str:
    """Where the failing command looked for Redis, as safe to show (no password)."""
    import os

    from workers import config

    url = os.environ.get("WANQ_REDIS_URL") or "redis://127.0.0.1:6379/0"
    return config.safe_url(url)
