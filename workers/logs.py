"""Worker logs: one line per event, text or JSON (``WANQ_LOG_FORMAT=json``), and every line
about a job carries its batch, job and remote task IDs.

The IDs come from a context variable that each task binds when it starts (Celery's thread
pool runs a task start to end in one thread, and the variable is per thread), so no log call
has to repeat them. Request payloads are never logged; the API key and the webhook secret
are scrubbed from any line that would carry them, as a last line of defence.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Iterable

from pythonjsonlogger.json import JsonFormatter

from workers import keys

JOB_FIELDS = ("batch_id", "job_id", "remote_task_id")
JOB_TASKS = {"wanq.create", "wanq.poll"}
_FIRST_ARG = re.compile(r"^\('([^']+)'")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s%(job_suffix)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(processName)s %(threadName)s"

_job: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "wanq_job", default=None
)


def job_fields(job_id: str, remote_task_id: str = "") -> dict[str, str]:
    """The IDs of a job, also usable as a log call's ``extra`` outside a task."""
    return {"batch_id": keys.batch_of(job_id), "job_id": job_id, "remote_task_id": remote_task_id}


def bind_job(job_id: str, remote_task_id: str = "") -> None:
    """The job this thread works on now: every log line until :func:`unbind` names it."""
    _job.set(job_fields(job_id, remote_task_id))


def bind_remote(remote_task_id: str) -> None:
    current = _job.get()
    if current is not None:
        _job.set({**current, "remote_task_id": remote_task_id})


def unbind() -> None:
    _job.set(None)


class JobContext(logging.Filter):
    """Adds the bound job's IDs to each record and scrubs secrets from its message."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _job.get() or _received(record)
        for name in JOB_FIELDS:  # a call's own ``extra`` wins over the bound job
            if not getattr(record, name, ""):
                setattr(record, name, bound.get(name, ""))
        shown = [f"{name}={getattr(record, name)}" for name in JOB_FIELDS if getattr(record, name)]
        record.job_suffix = f" [{' '.join(shown)}]" if shown else ""
        if self.secrets:
            message = record.getMessage()
            if any(secret in message for secret in self.secrets):
                for secret in self.secrets:
                    message = message.replace(secret, "***")
                record.msg, record.args = message, None
        return True


def _received(record: logging.LogRecord) -> dict[str, str]:
    """Celery's "Task wanq.poll[...] received" lines come before any task runs; their
    ``data`` holds the argument repr, whose first argument is the job ID."""
    data = getattr(record, "data", None)
    if not isinstance(data, dict) or data.get("name") not in JOB_TASKS:
        return {}
    args = str(data.get("args", ""))
    if args.count(", '") > 1:  # a poll of several jobs (workers.pump) is about none of them
        return {}
    found = _FIRST_ARG.match(args)
    return job_fields(found.group(1)) if found else {}


class _JobJsonFormatter(JsonFormatter):
    """Job IDs as top-level fields when the line is about a job, absent otherwise."""

    def add_fields(self, log_record: dict, record: logging.LogRecord, message_dict: dict) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record.pop("job_suffix", None)
        for name in JOB_FIELDS:
            if not log_record.get(name):
                log_record.pop(name, None)


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return _JobJsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level"})
    return logging.Formatter(TEXT_FORMAT)


def configure(fmt: str, level: str | int = "INFO", secrets: Iterable[str] = ()) -> None:
    """Send every logger (Celery's too) to stderr through one handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(JobContext(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
