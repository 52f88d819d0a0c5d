"""Every Redis key wanq uses, written once. All live under the ``wanq:`` prefix."""

from __future__ import annotations

from workers.names import QueueName

PREFIX = "wanq:"

BATCHES = PREFIX + "batches"  # zset batch_id -> submitted at
DUE = PREFIX + "due"  # zset job_id -> when its next step (poll, retry, create) is overdue
# zset job_id -> when its next poll is due, for the poll pump (workers.pump) to send
POLLS = PREFIX + "polls"
QUEUED = PREFIX + "queued"  # zset job_id -> enqueued at, for jobs whose create never ran
HELD = PREFIX + "held"  # zset job_id -> held at, jobs parked while the account is blocked
INFLIGHT = PREFIX + "inflight"  # zset job_id -> claimed at: remote tasks being created or run
CLUSTER = PREFIX + "cluster"  # hash: settings the workers run with (max_in_flight), for all
READY = PREFIX + "ready"  # zset batch_id: batches with jobs waiting for an in-flight slot
ADMIT_TURN = PREFIX + "admit:turn"  # counter: the order in which batches were last given a slot
DELIVER = PREFIX + "deliver"  # zset job_id (or batch:<id>) -> when its callbacks became owed
RESULTS = PREFIX + "results"  # stream: one entry per terminal job, for downstream consumers
ACCOUNT = PREFIX + "account"  # hash: why creation is paused for the whole cluster, if it is
STATS = PREFIX + "stats"  # hash: cluster counters
LATENCY = PREFIX + "stats:latency"  # list: recent generation-time brackets "lo hi", newest first
SWEEPER_LEASE = PREFIX + "sweeper:lease"  # string: the worker that sweeps now
POLL_PUMP_LEASE = PREFIX + "pump:lease"  # string: the worker process whose pump sends polls
CREATE_PACE = PREFIX + "pace:create"  # string: GCRA theoretical arrival time of creations
POLL_PACE = PREFIX + "pace:poll"  # string: the same for status polls
PACE_RATE = PREFIX + "pace:rate"  # string: creations/s after 429s tightened the pace
REPAIR_CURSOR = PREFIX + "repair"  # hash: where the sweeper's repair walk goes on (batch, offset)
ENDED = PREFIX + "ended"  # zset batch_id -> finished at: retention purges from its oldest end
RETENTION_CURSOR = PREFIX + "retention:cursor"  # string: rank in BATCHES the adoption walk is at
# zset job_id -> when to ask next: ended jobs whose remote task was abandoned, followed for its cost
ABANDONED = PREFIX + "abandoned"
# kombu's record of delivered, not yet acknowledged messages (hash tag -> message, zset tag ->
# delivered at), named here for the broker's options (workers.celeryconf), the step scripts
# that acknowledge the message they run (lua/lib/acks.lua) and the metrics; kombu's own names
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"

# Queue names live in workers.names; these aliases keep older call sites readable.
CREATE_QUEUE = QueueName.CREATE
POLL_QUEUE = QueueName.POLL
DELIVER_QUEUE = QueueName.DELIVER
CALLBACK_QUEUE = QueueName.CALLBACKS


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def payload(job_id: str) -> str:
    return f"{PREFIX}payload:{job_id}"


def batch(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


def batch_jobs(batch_id: str) -> str:
    """List of job IDs in submission order: exports read it in slices."""
    return f"{PREFIX}batch:{batch_id}:jobs"


def batch_ready(batch_id: str) -> str:
    """Zset job_id -> order in the file: the batch's jobs waiting for an in-flight slot."""
    return f"{PREFIX}batch:{batch_id}:ready"


def batch_codes(batch_id: str) -> str:
    """Hash error code -> number of jobs of the batch that failed with it."""
    return f"{PREFIX}batch:{batch_id}:codes"


def batch_parked(batch_id: str) -> str:
    """Zset of the batch's jobs parked by a pause or its budget, released by ``wanq resume``."""
    return f"{PREFIX}batch:{batch_id}:parked"


def delivering(target: str) -> str:
    """String: the lock of a delivery running now (workers.delivery_threads)."""
    return f"{PREFIX}delivering:{target}"


def batch_images(batch_id: str) -> str:
    """Set of image hashes the batch's submission pinned (one reference each) while writing."""
    return f"{PREFIX}batch:{batch_id}:images"


def image(sha256: str) -> str:
    """Hash ``data`` (the image's raw bytes) and ``refs`` (jobs and pins holding it)."""
    return f"{PREFIX}image:{sha256}"


def batch_of(job_id: str) -> str:
    return job_id.split(":", 1)[0]


def job_id(batch_id: str, custom_id: str) -> str:
    """Jobs are keyed by batch and custom_id, which makes resubmission idempotent."""
    return f"{batch_id}:{custom_id}"


def lua_constants() -> str:
    """The keys the Lua library reaches by name (see workers/lua/lib), as Lua locals."""
    names = {
        "K_INFLIGHT": INFLIGHT,
        "K_CLUSTER": CLUSTER,
        "K_STATS": STATS,
        "K_ACCOUNT": ACCOUNT,
        "K_PACE_RATE": PACE_RATE,
        "K_READY": READY,
        "K_DUE": DUE,
        "K_POLLS": POLLS,
        "K_POLL_PUMP_LEASE": POLL_PUMP_LEASE,
        "K_ABANDONED": ABANDONED,
        "K_UNACKED": UNACKED,
        "K_UNACKED_INDEX": UNACKED_INDEX,
        "K_ADMIT_TURN": ADMIT_TURN,
        "K_JOB_PREFIX": job(""),
        "K_BATCH_PREFIX": batch(""),
    }
    return "".join(f"local {name} = '{value}'\n" for name, value in names.items())
