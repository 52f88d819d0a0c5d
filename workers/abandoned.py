"""Abandoned remote tasks, followed for their cost: money spent is money counted (issue 13).

A job can end while its remote task runs on and is billed: its status checks ran out
(001021098), its answers stayed unreadable (001021096), or its batch was cancelled while the
task ran (the API has no remote cancel). The step that ends it (``lua/finish.lua``) records
it in the same atomic step:

- its job ID joins ``wanq:abandoned`` (scored: when to ask next);
- its worst case (its budget reservation, or its worst-case images at the highest price known
  for the batch) is added to the batch's ``unseen_micros``, and kept on the job as
  ``abandoned_unseen_micros``; the batch's ``abandoned`` counts the tasks followed now.

The sweeper (one at a time, under its lease) calls ``follow`` each pass: at low priority, it
asks about at most ``PER_SWEEP`` tasks, only when the cluster's poll pace has a slot free
now, within ``TIME_BUDGET`` seconds, through the provider client the workers use (every value
of the answer parsed and bounded as for a poll, ``provider.cost_micros``). Each task is asked
again after a growing interval (``next_look``), and given up ``DEADLINE`` after it was
abandoned (or at once when the provider says it does not know it): its estimate then stays
unseen money. Once the task has ended, ``lua/settle.lua`` counts its real cost in the batch's
``cost_micros``, takes its estimate back out of ``unseen_micros``, drops it from the set,
counts ``abandoned_settled`` and stores ``abandoned_cost_micros`` on the job, all in one
script (a sweeper killed half-way leaves nothing half done, a repeat does nothing). The job
keeps its terminal state and its one stream entry.

``wanq retry`` (``lua/reopen.lua``) takes the job out of the set: when the new round follows
the same task its estimate leaves the unseen money (the poll counts the real cost; if the
sweeper had already counted it, ``finish.lua`` does not count it again); when the round
starts over, the old task is given up and its estimate stays unseen, once. A purge removes
the batch's jobs from the set (``lua/purge.lua``).

So a batch's money is shown in three parts (``wanq status``, ``wanq_cost_usd``,
``wanq_unseen_usd``, ``wanq_reserved_usd``): counted (the provider's ``usage.cost``),
unseen (worst cases of tasks whose cost we may never see: possible duplicates and abandoned
tasks not settled yet) and reserved (budget held for jobs in flight).
"""

from __future__ import annotations

import logging
import time

from workers.config import Settings
from workers.provider import AccountProblem, ProviderClient, Rejected, Transient, cost_micros
from workers.store import JobStore

log = logging.getLogger("wanq.abandoned")

PER_SWEEP = 4  # status calls per sweep at most: the workers' polls come first
TIME_BUDGET = 5.0  # seconds of a sweep spent asking, at most (the lease is 15 s by default)
DEADLINE = 24 * 3600.0  # seconds after it was abandoned before a task is given up
MAX_INTERVAL = 3600.0  # longest wait between two questions about one task
GROWTH = 2.0


def next_look(looks: int, settings: Settings) -> float:
    """Seconds before asking again about a task already asked about ``looks`` times: from
    the first poll delay (at least one sweep interval), doubling, capped at MAX_INTERVAL."""
    first = max(settings.poll_first, settings.sweep_interval)
    return float(min(first * GROWTH ** min(looks, 32), MAX_INTERVAL))


def follow(
    store: JobStore, settings: Settings, provider: ProviderClient, now: float | None = None
) -> dict[str, int]:
    """One pass over the abandoned tasks whose time has come; how many of each outcome."""
    now = time.time() if now is None else now
    started = time.monotonic()
    done = dict.fromkeys(("settled", "running", "given_up", "stale"), 0)
    for job_id in store.abandoned.before(now, PER_SWEEP):
        if time.monotonic() - started > TIME_BUDGET:
            break
        raw = store.job(job_id)
        task = raw.get("abandoned_task", "")
        looks = _int(raw.get("abandoned_looks"))
        if not raw or not task or task != raw.get("remote_task_id"):
            answer = store.settle(job_id, task, "give_up", now=now)  # stale: the script drops it
        elif now - _float(raw.get("abandoned_at")) > DEADLINE:
            answer = store.settle(job_id, task, "give_up", now=now)
            log.warning("job %s: remote task %s given up; its cost stays unseen", job_id, task)
        else:
            if settings.poll_rate > 0 and store.pace(settings.poll_rate, 0.0, poll=True) > 0:
                break  # low priority: no poll slot free now, the next sweep asks
            try:
                status = provider.status(task)
            except AccountProblem:
                break  # the account, not the task: ask again next sweep
            except Rejected as exc:  # the provider does not know it (404...): it never will
                log.warning("job %s: remote task %s refused (%s); cost unseen", job_id, task, exc)
                answer = store.settle(job_id, task, "give_up", now=now)
            except Transient:
                answer = _later(store, job_id, task, looks, settings, now)
            else:
                if status.done:
                    cost = cost_micros(status.usage)  # bounded: never fails the script
                    answer = store.settle(job_id, task, "ended", cost_micros=cost, now=now)
                    log.info("job %s: abandoned task %s cost %d micro-USD", job_id, task, cost)
                else:
                    answer = _later(store, job_id, task, looks, settings, now)
        if answer in done:
            done[answer] += 1
    return done


def _later(
    store: JobStore, job_id: str, task: str, looks: int, settings: Settings, now: float
) -> str:
    next_at = now + next_look(looks, settings)
    return store.settle(job_id, task, "running", next_at=next_at, now=now)


def _int(raw: str | None) -> int:
    try:
        return int(raw or 0)
    except ValueError:
        return 0


def _float(raw: str | None) -> float:
    try:
        return float(raw or 0)
    except ValueError:
        return 0.0
