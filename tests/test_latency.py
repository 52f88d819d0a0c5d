"""The learned generation time: a window of brackets in Redis, fed only by what measures
generation (issue 15: one outage must not poison it)."""

from __future__ import annotations

import redis

from ops.localstack import wait_for
from tests.conftest import jobs
from workers import keys, latency, schedule


def job(created: float, last_miss: float | None, poll_at: float, **extra: str) -> dict[str, str]:
    fields = {"created_at": str(created), "poll_at": str(poll_at), **extra}
    if last_miss is not None:
        fields["last_miss_at"] = str(last_miss)
    return fields


def test_only_brackets_that_measure_generation_are_kept():
    # a clean miss at 9.0 s, seen done on time at 9.5 s
    assert latency.measured(job(100.0, 109.0, 109.5), 109.5) == (9.0, 9.5)
    # its polls met a 401 or a transient error: time spent blocked, not generating
    assert latency.measured(job(100.0, 109.0, 139.0, unmeasured="1"), 139.1) is None
    # its poll ran 5 s late (pacing, a busy worker, the sweeper's rescue)
    assert latency.measured(job(100.0, 109.0, 109.5), 114.5) is None
    # never created
    assert latency.measured({"poll_at": "1.0"}, 2.0) is None


def test_the_window_is_capped_and_newest_first(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    for k in range(latency.WINDOW + 30):
        assert latency.learn(client, job(0.0, None, 1.0 + k / 1000), 1.0 + k / 1000)
    window = latency.window(client)
    assert len(window) == latency.WINDOW
    assert window[0] == (0.0, 1.0 + (latency.WINDOW + 29) / 1000)
    assert client.llen(keys.LATENCY) == latency.WINDOW


def test_an_outage_leaves_the_estimate_where_it_was(redis_url: str):
    """Jobs seen through a 20 s account block (their polls met 401s, so they are marked
    unmeasured) and late polls add nothing: the learned quantiles stay where they were."""
    client = redis.Redis.from_url(redis_url)
    latency.forget()
    now = 1_000.0
    for k in range(200):  # 3 s generations, the last running poll 0.3 s before the end
        gen = 2.7 + 0.6 * k / 199
        latency.learn(client, job(now, now + gen - 0.3, now + gen), now + gen)
    before = latency.estimate(client, now=0.0)
    assert before is not None and 2.7 < before.median < 3.3
    for k in range(500):  # the outage: every job of the episode waited ~20 s to be seen done
        latency.learn(client, job(now, now + 2.5, now + 23.0, unmeasured="1"), now + 23.0)
        latency.learn(client, job(now, None, now + 3.0), now + 13.8 + k / 100)  # late polls
    after = latency.estimate(client, now=latency.REFRESH + 1.0)
    assert after == before


def test_a_real_outage_leaves_the_learned_generation_time(make_cluster):
    """A cluster learns 0.6 s generations, the key is revoked while jobs are in flight, then
    restored: the window's quantiles stay near 0.6 s (an EWMA of what polling saw went to
    many times that)."""
    cluster = make_cluster(workers=1, worker_env={"WANQ_MAX_COUNTDOWN": "2"})
    client, r = cluster.client(), cluster.redis
    first = cluster.submit(jobs(40, prefix="calm"))
    cluster.wait(first.batch_id, timeout=120)
    before = schedule.Distribution.of(latency.window(r))
    assert before is not None and 0.4 < before.quantile(0.5) < 1.0

    second = cluster.submit(jobs(30, prefix="outage"))
    wait_for(lambda: client.status(second.batch_id).counts["running"] >= 5, "jobs running", 60)
    cluster.sim("/_sim/config", {"key_revoked": True})
    wait_for(lambda: client.status(second.batch_id).account_block, "the account block", 60)
    blocked = [keys.job(j) for j in r.lrange(keys.batch_jobs(second.batch_id), 0, -1)]

    def long_blocked() -> bool:  # three jobs met the 401 at three polls each (2 s apart)
        polls = [int(r.hget(j, "polls") or 0) for j in blocked if r.hget(j, "unmeasured")]
        return len([n for n in polls if n >= 3]) >= 3

    wait_for(long_blocked, "jobs blocked for several polls", 90)
    cluster.sim("/_sim/config", {"key_revoked": False})
    final = cluster.wait(second.batch_id, timeout=120)
    assert final.counts["succeeded"] == 30

    after = schedule.Distribution.of(latency.window(r))
    assert after is not None
    assert 0.4 < after.quantile(0.5) < 1.0
    assert after.quantile(0.9) < 1.5
    assert max(hi for _, hi in after.brackets) < 3.0  # no bracket of the blocked time
