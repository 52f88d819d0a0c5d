"""Chaos: 500 jobs against a simulator injecting every fault it knows, while workers are
SIGKILLed several times and Redis restarts once. Every job ends once, nothing is lost, and
every duplicate remote task is accounted for."""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import pytest
import redis
import requests

from ops.localstack import LocalStack, wait_for
from producers.api import Wanq
from tests.conftest import API_KEY, SIM_ENV, WORKER_ENV, jobs
from workers import config, keys
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
