"""Retry and polling schedules are pure functions: no Redis, no Celery."""

from __future__ import annotations

import random

import pytest

from workers import config, schedule

SETTINGS = config.load({})


def test_backoff_grows_is_jittered_and_capped():
    policy = schedule.RetryPolicy(max_attempts=5, base=1.0, cap=8.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 8)]:
        delays = {policy.delay(attempt, rng=rng) for _ in range(50)}
        assert min(delays) >= ceiling / 2 and max(delays) <= ceiling
        assert len(delays) > 1  # jittered


def test_backoff_honours_retry_after():
    policy = schedule.RetryPolicy(max_attempts=5, base=0.1, cap=1.0)
    assert policy.delay(1, retry_after=7.0) == 7.0


def test_attempts_run_out():
    policy = schedule.RetryPolicy(max_attempts=3, base=1, cap=1)
    assert not policy.exhausted(2) and policy.exhausted(3)


def test_first_poll_follows_observed_generation_time():
    assert schedule.first_poll_delay(None, SETTINGS) == SETTINGS.poll_first
    assert schedule.first_poll_delay(10.0, SETTINGS) == pytest.approx(9.0)
    assert schedule.first_poll_delay(10_000.0, SETTINGS) == SETTINGS.max_countdown


def test_later_polls_are_short_then_grow_up_to_the_cap():
    rng = random.Random(2)
    delays = [schedule.next_poll_delay(k, 10.0, SETTINGS, rng) for k in range(1, 12)]
    assert delays[0] == pytest.approx(0.8, rel=0.11)
    assert delays[6] > delays[0] * 2
    assert max(delays) <= SETTINGS.poll_max_interval * 1.1
    assert all(d <= SETTINGS.max_countdown for d in delays)


def test_every_countdown_stays_below_half_the_visibility_timeout():
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT"):
        config.load({"WANQ_MAX_COUNTDOWN": "60", "WANQ_VISIBILITY_TIMEOUT": "90"})


def test_latency_estimate_converges_both_ways():
    estimate = None
    for _ in range(200):
        estimate = schedule.observe(estimate, 10.0)
    assert estimate == pytest.approx(10.0)
    for _ in range(200):
        estimate = schedule.observe(estimate, 4.0)
    assert estimate == pytest.approx(4.0, rel=0.01)


def test_generation_sample_brackets_completion():
    # seen done at 12 after a miss at 10: completion was in between
    assert schedule.generation_sample(0.0, 12.0, 10.0) == 11.0
    # done at the first poll: only an upper bound, shaded down so the estimate can fall
    assert schedule.generation_sample(0.0, 10.0, None) < 10.0
