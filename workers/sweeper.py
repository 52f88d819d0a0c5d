"""The sweeper: finds jobs whose next step is overdue and sends that step again, and repairs
jobs that sit in the wrong sets.

It runs inside every worker (see ``workers.worker.SweeperStep``); a Redis lease lets one
sweep at a time and another take over within ``lease_ttl`` when that worker dies, so a
cluster with no beat process still recovers. A re-sent message carries the job's current seq:
if the original turns up after all, whichever runs first moves the seq on and the other is
stale.

What it rescues:
- jobs in the due set past their time plus a grace period: a poll, retry or create whose
  message died with its worker;
- queued jobs whose create message is gone (the queue is empty but they are still queued);
- jobs parked by an account problem: one probe per interval, all released once it works;
- callbacks owed by ended jobs and batches (archive, webhook, Celery callback);
- (repair) a slice of non-terminal jobs per pass that sit in no set that can move them on,
  and in-flight entries of jobs that are not creating or running (see ``repair``).

It also purges batches past their retention, a slice per pass (``workers.retention``), and,
given the provider client, follows a few abandoned remote tasks for their cost
(``workers.abandoned``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from workers import abandoned, account, retention
from workers.config import Settings
from workers.jobs import Job
from workers.names import TERMINAL, QueueName, State, TaskName
from workers.provider import ProviderClient
from workers.registries import JobSet
from workers.sender import Sender
from workers.store import JobStore

log = logging.getLogger("wanq.sweeper")

CHUNK = 500  # jobs looked at per sweep and kind
REPAIR_SLICE = 200  # jobs of the in-flight set and of one batch checked per pass


def sweep(
    store: JobStore, settings: Settings, send: Sender, provider: ProviderClient | None = None
) -> dict[str, int]:
    """One pass; returns how many jobs of each kind it re-sent or repaired. With ``provider``
    it also asks about a few abandoned remote tasks (their outcomes are counted apart:
    ``abandoned_settled`` and ``abandoned_given_up``, by the script that records them)."""
    now = time.time()
    grace = settings.sweep_grace
    done = dict.fromkeys(
        ("overdue", "unstarted", "released", "probes", "deliveries", "admitted", "repaired"), 0
    )
    for job_id, state, seq in _overdue(store, now, grace):
        send(TaskName.POLL if state == State.RUNNING else TaskName.CREATE, (job_id, seq))
        done["overdue"] += 1
    for job_id, seq in _admit(store, settings.max_in_flight):
        send(TaskName.CREATE, (job_id, seq))
        done["admitted"] += 1
    for job_id, seq in _unstarted(store, settings, now):
        send(TaskName.CREATE, (job_id, seq))
        done["unstarted"] += 1
    for target in _owed(store, now, grace):
        send(TaskName.DELIVER, (target,))
        done["deliveries"] += 1
    if account.blocked(store.redis):
        probe = store.held.members(1)
        if probe and account.probe_due(store.redis, settings.account_probe_interval):
            send(TaskName.CREATE, (probe[0], store.job_seq(probe[0])), kwargs={"probe": True})
            done["probes"] += 1
    else:
        for job_id, seq in store.release(store.held.key, CHUNK):
            send(TaskName.CREATE, (job_id, seq))
            done["released"] += 1
    done["repaired"] = repair(store, now)
    retention.sweep(store, settings.retention)  # issue 12: expired batches, a slice a pass
    if provider is not None and len(store.abandoned):  # issue 13: their cost, at low priority
        followed = abandoned.follow(store, settings, provider, now)
        if any(followed.values()):
            log.info("abandoned remote tasks asked about: %s", followed)
    if any(done.values()):
        log.info("sweep re-sent %s", done)
        for kind, n in done.items():
            store.count(f"sweeper_{kind}", n)
    return done


def _admit(store: JobStore, cap: int) -> list[tuple[str, int]]:
    """Jobs waiting for an in-flight slot while slots are free (ending jobs admit one each;
    this covers slots freed otherwise: a cap raised, a repair, a batch resumed or re-weighted).
    Without a cluster cap, a batch's own max_in_flight still gates its jobs."""
    return store.admit(CHUNK)


def _overdue(store: JobStore, now: float, grace: float) -> list[tuple[str, str, int]]:
    """Jobs past their step (not ended, not parked); each is re-sent once per grace period."""

    def lost(job: Job) -> bool:
        return job.state not in TERMINAL and not job.hold

    return _take(store, store.due, now - grace, now, lost)


def _owed(store: JobStore, now: float, grace: float) -> list[str]:
    """Deliveries owed for longer than the grace period: their message was lost."""
    targets = store.deliveries.before(now - grace, CHUNK)
    store.deliveries.reschedule(targets, now)
    return targets


def _unstarted(store: JobStore, settings: Settings, now: float) -> list[tuple[str, int]]:
    """Queued jobs whose create message is gone: the queue is empty yet they wait.

    A message held by a dead worker comes back after the visibility timeout, so only jobs
    queued longer than that, with nothing in the queue, are missing their message.
    """
    if store.queue_length(QueueName.CREATE) > 0:
        return []
    cutoff = now - settings.visibility_timeout - settings.sweep_grace
    found = _take(store, store.queued, cutoff, now, lambda job: job.state == State.QUEUED)
    return [(job_id, seq) for job_id, _, seq in found]


def _take(
    store: JobStore, jobs: JobSet, cutoff: float, now: float, keep: Callable[[Job], bool]
) -> list[tuple[str, str, int]]:
    """Members of ``jobs`` scored before ``cutoff`` that ``keep(job)`` accepts, as
    (job_id, state, seq); their score moves to ``now`` (re-sent once per period), the rest
    leave the set (ended, parked or gone)."""
    ids = jobs.before(cutoff, CHUNK)
    if not ids:
        return []
    found, gone = [], []
    for job_id, job in zip(ids, store.job_records(ids), strict=True):
        if job is not None and keep(job):
            found.append((job_id, str(job.state), job.seq))
        else:
            gone.append(job_id)
    jobs.remove(*gone)
    jobs.reschedule([job_id for job_id, _, _ in found], now)
    return found


# --- repair ---------------------------------------------------------------------------------


def repair(store: JobStore, now: float) -> int:
    """Check a slice of jobs against the sets that move them on; fix and count what is wrong.

    Invariants (each a state the scripts never leave behind, but a bug, a hand edit or a lost
    write under ``appendfsync everysec`` could):
    - the in-flight set holds only jobs that are creating or running;
    - a job creating or running holds an in-flight slot and a due time;
    - a queued job is in the queued set (or due); a waiting job is due, or parked in the set
      its hold names.
    The walk goes through one batch's job list per pass, a slice at a time, with a cursor
    kept in Redis; every fix is counted in ``wanq:stats`` (``repaired_*``) and logged.
    """
    fixed = _repair_inflight(store, now)
    _, job_ids = store.repair_slice(REPAIR_SLICE)
    if not job_ids:
        return fixed
    open_jobs = [
        job for job in store.job_records(job_ids) if job is not None and job.state not in TERMINAL
    ]
    # one script per job, all in one round trip: lua/repair.lua checks and fixes atomically
    for job, what in zip(open_jobs, store.repair_many(open_jobs, now), strict=True):
        if what:
            store.count(f"repaired_{what}")
            log.warning("repair: job %s (%s) was %s; put back", job.job_id, job.state, what)
            fixed += 1
    return fixed


def _repair_inflight(store: JobStore, now: float) -> int:
    """In-flight entries of jobs that ended, parked or vanished would hold a slot for good.

    Entries younger than a minute are left alone: a claim and its first step may be racing.
    """
    stale_ids = store.inflight.before(now - 60, REPAIR_SLICE)
    if not stale_ids:
        return 0
    leaked = [
        job_id
        for job_id, job in zip(stale_ids, store.job_records(stale_ids), strict=True)
        if job is None or not _may_hold_slot(job)
    ]
    if leaked:
        store.inflight.remove(*leaked)
        store.count("repaired_inflight_leak", len(leaked))
        log.warning("repair: %d in-flight entries of jobs not in flight dropped", len(leaked))
    return len(leaked)


def _may_hold_slot(job: Job) -> bool:
    """Creating, running, or backing off between create attempts (the slot is kept)."""
    return job.state in (State.CREATING, State.RUNNING) or (
        job.state == State.WAITING and not job.hold
    )
