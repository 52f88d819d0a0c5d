"""Chaos: 500 jobs against a simulator injecting every fault it knows, while workers are
SIGKILLed several times and Redis restarts once. Every job ends once, nothing is lost, and
every duplicate remote task is accounted for.

Then the faults of issue 13 together in one run (``test_faults_together_...``): a provider
dearer than the configured price under a budget, 502s after creation, hostile usage numbers,
a worker whose clock runs ahead, a slow output host, a full Redis, SIGKILLed workers and a
host crash that cuts the AOF's last writes. Its figures are in docs/chaos.md."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
import requests

from ops.localstack import LocalStack, wait_for
from producers.api import BatchOptions, Wanq
from tests.canary import Canary, serve
from tests.conftest import API_KEY, SIM_ENV, WORKER_ENV, jobs
from workers import config, keys, webhooks
from workers.pricing import worst_case_images
from workers.store import TERMINAL

JOBS = 500
CHAOS_WORKER_ENV = {
    **WORKER_ENV,
    "WANQ_READ_TIMEOUT": "2",
    "WANQ_VISIBILITY_TIMEOUT": "20",
    "WANQ_MAX_COUNTDOWN": "8",
    "WANQ_POLL_MAX_INTERVAL": "4",
    "WANQ_SWEEP_GRACE": "5",
    "WANQ_SWEEP_INTERVAL": "1",
    "WANQ_LEASE_TTL": "3",
    "WANQ_MAX_ATTEMPTS": "12",
    "WANQ_POLL_MAX_ERRORS": "15",
}
FAULTS = {
    "WANQ_SIM_LATENCY": "1",
    "WANQ_SIM_P_500": "0.05",
    "WANQ_SIM_P_429": "0.05",
    "WANQ_SIM_RETRY_AFTER": "1",
    "WANQ_SIM_P_SLOW": "0.02",
    "WANQ_SIM_SLOW_SECONDS": "3",  # past the workers' 2 s read timeout: a timeout
    "WANQ_SIM_P_BROKEN": "0.03",
    "WANQ_SIM_P_FAIL": "0.05",
    "WANQ_SIM_SEED": "5",
}
CONTRACT_RUN_CODES = {"001021095", "001021096", "001021097", "001021098", "001021099"}


@pytest.mark.timeout(900)
def test_chaos_kills_and_a_redis_restart_lose_nothing(tmp_path):
    rng = random.Random(9)
    with LocalStack(tmp_path) as stack:
        stack.start_redis()
        stack.start_simulator({**SIM_ENV, **FAULTS})
        workers = [stack.start_worker(f"chaos{i}", CHAOS_WORKER_ENV) for i in range(3)]
        client = Wanq(config.load({**CHAOS_WORKER_ENV, "WANQ_REDIS_URL": stack.redis_url}))
        source = tmp_path / "chaos.jsonl"
        source.write_text("".join(json.dumps(line) + "\n" for line in jobs(JOBS)))
        started = time.monotonic()
        batch_id = client.submit(source).batch_id

        def ended() -> int:
            try:
                status = client.status(batch_id)
            except redis.ConnectionError:
                return -1
            return status.ended

        kills = 0
        for share in (0.15, 0.35, 0.55):
            wait_for(lambda s=share: ended() >= JOBS * s, f"{share:.0%} of the batch", 240)
            victim = workers.pop(rng.randrange(len(workers)))
            victim.kill()
            kills += 1
            workers.append(stack.start_worker(f"chaos{kills + 2}", CHAOS_WORKER_ENV))
        wait_for(lambda: ended() >= JOBS * 0.7, "70% of the batch", 240)
        stack.restart_redis()

        wait_for(lambda: ended() == JOBS, "every job terminal", 300)
        elapsed = time.monotonic() - started

        records = list(client.results(batch_id))
        assert len(records) == JOBS and all(r["state"] in TERMINAL for r in records)
        entries = Counter(f["job_id"] for _, f in client.store.redis.xrange(keys.RESULTS))
        assert len(entries) == JOBS and set(entries.values()) == {1}, "results exactly once"
        for record in records:
            if record["state"] == "failed":
                assert record["error"]["code"] in CONTRACT_RUN_CODES, record["error"]

        sim = requests.get(stack.provider_url + "/_sim/stats", timeout=5).json()
        tracked = {r["remote_task_id"] for r in records if r["remote_task_id"]}
        duplicates = sim["tasks_total"] - len(tracked)
        stats = client.store.stats()
        window = int(stats.get("create_window_losses", 0))
        ambiguous = int(stats.get("create_ambiguous", 0))
        print(
            f"\nchaos: {JOBS} jobs in {elapsed:.0f} s; {kills} SIGKILLs + 1 Redis restart; "
            f"faults injected {sim['faults']}, generation failures "
            f"{sim['tasks_by_final_state'].get('failed', 0)}; "
            f"states {dict(Counter(r['state'] for r in records))}; "
            f"duplicate remote tasks {duplicates} (create-window losses {window}, "
            f"unanswered creates {ambiguous}); sweeper {dict(stats)}"
        )
        assert sum(sim["faults"].values()) > 0
        assert 0 <= duplicates <= window + ambiguous
        assert API_KEY not in json.dumps(records)


# --- issue 13: the faults together -----------------------------------------------------------

STORM_JOBS = 200
UNIT_PRICE = 0.03  # WANQ_UNIT_PRICE: what the workers are told an image costs
PROVIDER_PRICE = 0.04  # what the simulator charges: dearer than the setting
STORM_CAP = 7.5  # USD: about half the batch, reached after every fault below was injected
FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SKEW = "+15s"  # past the sweep grace and the create window (5 s)
SECRET = webhooks.generate_secret()
STORM_WORKER_ENV = {
    **CHAOS_WORKER_ENV,
    "WANQ_UNIT_PRICE": str(UNIT_PRICE),
    "WANQ_ARCHIVE_DEADLINE": "3",  # a dribbling output host holds a delivery thread 3 s
    "WANQ_ARCHIVE_ALLOW_HOSTS": "127.0.0.1",  # the simulator's and the dribbler's outputs
    "WANQ_WEBHOOK_SECRET": SECRET,
    "WANQ_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",  # the test's own receiver
}
STORM_FAULTS = {
    "WANQ_SIM_LATENCY": "1",
    "WANQ_SIM_UNIT_PRICE": str(PROVIDER_PRICE),
    "WANQ_SIM_P_502_AFTER_CREATE": "0.05",
    "WANQ_SIM_P_500": "0.03",
    "WANQ_SIM_P_429": "0.03",
    "WANQ_SIM_RETRY_AFTER": "1",
    "WANQ_SIM_P_BROKEN": "0.02",
    "WANQ_SIM_P_FAIL": "0.03",
    "WANQ_SIM_SEED": "13",
}
HOSTILE_USAGE = ({"cost": "1e300"}, {"cost": "Infinity", "discount": "NaN"})


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on loopback: every verified event with its ``webhook-id``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.events: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        event = webhooks.verify(SECRET, self.headers, body)
        with self.server.lock:
            self.server.events.append((self.headers["webhook-id"], event))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def dribbler() -> Iterator[Canary]:
    yield from serve(Canary(dribble=True))


def aof_tail(redis_dir: Path) -> tuple[Path, int]:
    """The file Redis 7 appends to now (the last incr file of its manifest) and its size."""
    folder = redis_dir / "appendonlydir"
    manifest = next(folder.glob("*.manifest")).read_text().splitlines()
    incr = [line.split()[1] for line in manifest if line.endswith("type i")]
    path = folder / incr[-1]
    return path, path.stat().st_size


def event_ids(entries: list[tuple[str, dict]], batch_id: str) -> dict[str, set[str]]:
    """Per job of the batch: the event IDs of its end entries (``event=archived`` ones aside),
    with the stream IDs they came under."""
    seen: dict[str, set[str]] = defaultdict(set)
    for _, fields in entries:
        if "event" not in fields and keys.batch_of(fields["job_id"]) == batch_id:
            seen[fields["job_id"]].add(fields["event_id"])
    return seen


@pytest.mark.timeout(400)
def test_faults_together_with_a_cut_aof_lose_nothing_and_count_every_cent(
    tmp_path, receiver, dribbler
):
    rng = random.Random(13)
    lines = jobs(STORM_JOBS)
    worst_job = max(worst_case_images(line["body"]) for line in lines) * PROVIDER_PRICE
    skewed = FAKETIME.exists()
    injected: Counter[str] = Counter()
    env = {**STORM_WORKER_ENV, "WANQ_ARCHIVE_DIR": str(tmp_path / "archive")}
    with LocalStack(tmp_path) as stack:
        stack.start_redis()
        r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        stack.start_simulator({**SIM_ENV, **STORM_FAULTS})

        def sim(path: str, payload: dict | None = None) -> dict:
            url = stack.provider_url + path
            if payload is None:
                return requests.get(url, timeout=5).json()
            response = requests.post(url, json=payload, timeout=5)
            response.raise_for_status()
            return response.json()

        workers = []
        if skewed:  # first: it takes the sweeper's lease, so its clock decides if any does
            clock = {"LD_PRELOAD": str(FAKETIME), "FAKETIME": SKEW}
            workers.append(stack.start_worker("skewed", {**env, **clock}))
            wait_for(lambda: "ready." in workers[0].log.read_text(), "the skewed worker", 60)
        workers += [stack.start_worker(f"storm{i}", env) for i in range(2)]
        for worker in workers:
            wait_for(lambda w=worker: "ready." in w.log.read_text(), f"{worker.name} ready", 60)
        client = Wanq(config.load({**env, "WANQ_REDIS_URL": stack.redis_url}))
        source = tmp_path / "storm.jsonl"
        source.write_text("".join(json.dumps(line) + "\n" for line in lines))
        started = time.monotonic()
        options = BatchOptions(max_cost=STORM_CAP, webhook_url=receiver.url)
        batch_id = client.submit(source, batch=options).batch_id

        def ended() -> int:
            try:
                return client.status(batch_id).ended
            except redis.ConnectionError:
                return -1

        def at(share: float) -> None:
            wait_for(lambda: ended() >= STORM_JOBS * share, f"{share:.0%} ended", 120)

        def kill_a_worker() -> None:
            victim = workers.pop(rng.randrange(1 if skewed else 0, len(workers)))
            victim.kill()
            injected["worker SIGKILLs"] += 1
            workers.append(stack.start_worker(f"storm{2 + injected['worker SIGKILLs']}", env))

        at(0.06)
        kill_a_worker()

        at(0.10)  # hostile numbers, then a slow output host, each for a while
        for usage in HOSTILE_USAGE:
            sim("/_sim/config", {"hostile_usage": json.dumps(usage)})
            before = sim("/_sim/stats")["status_calls"]
            wait_for(lambda b=before: sim("/_sim/stats")["status_calls"] >= b + 25, "hostile", 30)
        sim("/_sim/config", {"hostile_usage": "", "output_base": f"http://{dribbler.address}"})
        wait_for(lambda: len(dribbler.paths) >= 3, "downloads from the slow host", 30)
        sim("/_sim/config", {"output_base": ""})
        injected["slow downloads"] = len(dribbler.paths)

        at(0.16)  # Redis full: writes refused (noeviction) until maxmemory is raised again

        def ooms() -> int:
            return int(r.info("errorstats").get("errorstat_OOM", {}).get("count", 0))

        refused = ooms()
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", max(1, int(r.info("memory")["used_memory"]) // 2))
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            r.set("chaos:probe", "x")
        wait_for(lambda: ooms() >= refused + 50, "the workers met the full Redis", 20)
        r.config_set("maxmemory", 0)
        injected["OOM refusals"] = ooms() - refused

        at(0.25)  # a host crash: Redis SIGKILLed, its AOF cut back to a mark a few ends ago
        aof, mark = aof_tail(stack.data_dir / "redis")
        mark_ended, mark_tasks = ended(), sim("/_sim/stats")["tasks_total"]
        marked = time.monotonic()

        wait_for(lambda: ended() >= mark_ended + 5, "a few ends after the mark", 30)
        before_cut = r.xrange(keys.RESULTS)
        lost: dict[str, int] = {}

        def cut(redis_dir: Path) -> None:
            path, size = aof_tail(redis_dir)
            assert path == aof, "no AOF rewrite since the mark"
            cut_to = mark + 7  # mid-command: loaded as a truncated AOF
            lost["bytes"] = size - cut_to
            lost["ms"] = round((time.monotonic() - marked) * 1000)
            lost["creates"] = sim("/_sim/stats")["tasks_total"] - mark_tasks
            with open(path, "r+b") as handle:
                handle.truncate(cut_to)

        stack.restart_redis(crash=cut)
        injected["AOF cuts"] += 1
        r = redis.Redis.from_url(stack.redis_url, decode_responses=True)

        at(0.30)
        kill_a_worker()

        def stopped_and_drained() -> bool:
            status = client.status(batch_id)
            in_flight = status.counts["running"] + status.counts["creating"]
            return status.control == "budget" and in_flight == 0  # the rest parked

        wait_for(stopped_and_drained, "the budget stopped the batch", 60, 0.2)
        at_stop = client.status(batch_id)
        client.cancel(batch_id)  # what is left waits for the budget: cancelled, so all end
        wait_for(lambda: ended() == STORM_JOBS, "every job terminal", 60)
        elapsed = time.monotonic() - started
        wait_for(lambda: r.zcard(keys.DELIVER) == 0, "every webhook delivered", 60)

        def remote_done() -> dict:
            stats = sim("/_sim/stats")
            busy = stats["tasks_by_state"]["pending"] + stats["tasks_by_state"]["processing"]
            return stats if busy == 0 else {}

        stats = wait_for(remote_done, "every remote task finished", 30)
        after_end = r.xrange(keys.RESULTS)

        # every job has exactly one terminal record, and one end entry since the crash
        records = list(client.results(batch_id))
        assert len(records) == STORM_JOBS and all(rec["state"] in TERMINAL for rec in records)
        after = event_ids(after_end, batch_id)
        ends_after = Counter(
            f["job_id"] for _, f in after_end if "event" not in f and f["job_id"] in after
        )
        assert len(after) == STORM_JOBS and set(ends_after.values()) == {1}, "0 lost, 0 twice"
        # a consumer that read before the cut and after the end sees one event ID per job
        both = event_ids(before_cut + after_end, batch_id)
        assert all(len(ids) == 1 for ids in both.values()), "a replay under a new event ID"
        read_before = {sid for sid, f in before_cut if "event" not in f}
        replayed = [sid for sid in read_before if sid not in {s for s, _ in after_end}]
        assert replayed, "the cut lost no end: no replay was tested"
        # webhooks: one id per job (receivers drop the re-sends), one for the batch
        hooks: dict[str, set[str]] = defaultdict(set)
        for msg_id, event in receiver.events:
            target = event["data"].get("job_id") or event["data"]["batch_id"]
            hooks[target].add(msg_id)
        assert len(hooks) == STORM_JOBS + 1 and all(len(i) == 1 for i in hooks.values())
        # duplicates: every remote task we do not track is counted
        tracked = {rec["remote_task_id"] for rec in records if rec["remote_task_id"]}
        duplicates = stats["tasks_total"] - len(tracked)
        counters = client.store.stats()
        window = int(counters.get("create_window_losses", 0))
        ambiguous = int(counters.get("create_ambiguous", 0))
        # money: spent within the cap plus one job's worst case; counted (and estimated) covers it
        final = client.status(batch_id)
        billed = stats["images_completed"] * PROVIDER_PRICE
        states = Counter(rec["state"] for rec in records)
        injected.update({f"sim {k}": v for k, v in stats["faults"].items()})
        injected["hostile usage answers"] = sum(
            1 for rec in records if (rec.get("usage") or {}).get("invalid")
        )
        print(
            f"\nstorm: {STORM_JOBS} jobs in {elapsed:.0f} s, states {dict(states)}; "
            f"skewed clock {SKEW if skewed else 'skipped (no libfaketime)'}; "
            f"faults {dict(injected)}; AOF cut {lost.get('bytes')} bytes = {lost.get('ms')} ms "
            f"of writes ({lost.get('creates')} creates in them), "
            f"{len(replayed)} stream entries replayed; "
            f"webhooks {len(receiver.events)} for {len(hooks)} ids; "
            f"duplicates {duplicates} vs counted {window} window + {ambiguous} ambiguous "
            f"({max(0, duplicates - window - ambiguous)} uncounted, lost with the cut); "
            f"counted ${final.cost:.2f} + unseen ${final.unseen:.2f} vs billed ${billed:.2f}; "
            f"spend ${billed:.2f} vs cap ${STORM_CAP:.2f} + worst job ${worst_job:.2f} "
            f"(at the stop: counted ${at_stop.cost:.2f}, price ${at_stop.price_per_image})"
        )
        assert injected["sim 502_after_create"] > 0 and injected["hostile usage answers"] > 0
        # A create whose claim and remote ID were both in the lost writes is made again and
        # not counted (known, docs/chaos.md): bounded by the creates the cut window held.
        assert 0 <= duplicates <= window + ambiguous + lost["creates"], "duplicates not counted"
        # The creates in the lost writes were spent where Redis no longer knows it (above): the
        # budget cannot have counted them either, so they bound how far the cap may be passed.
        unknowable = lost["creates"] * worst_job
        assert billed <= STORM_CAP + worst_job + unknowable + 1e-9, "the budget was passed"
        shown = final.cost + final.unseen + unknowable
        assert shown >= billed - 1e-9, "money billed but neither counted nor shown"
        assert final.price_per_image == pytest.approx(PROVIDER_PRICE)
