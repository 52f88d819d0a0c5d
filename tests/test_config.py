"""Settings are checked when loaded: one plain line naming the variable and what it accepts."""

from __future__ import annotations

import pytest

from workers import config
from workers.errors import ConfigError


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"WANQ_UNIT_PRICE": "abc"}, "WANQ_UNIT_PRICE must be a number >= 0, not 'abc'"),
        ({"WANQ_UNIT_PRICE": "-1"}, "WANQ_UNIT_PRICE must be a number >= 0"),
        ({"WANQ_MAX_IN_FLIGHT": "-3"}, "WANQ_MAX_IN_FLIGHT must be an integer >= 0"),
        ({"WANQ_MAX_IN_FLIGHT": "2.5"}, "WANQ_MAX_IN_FLIGHT must be an integer >= 0"),
        ({"WANQ_CONCURRENCY": "0"}, "WANQ_CONCURRENCY must be an integer >= 1"),
        ({"WANQ_CREATE_RATE": "nan"}, "WANQ_CREATE_RATE must be a number >= 0"),
        ({"WANQ_REDIS_URL": "htp://x"}, "WANQ_REDIS_URL must be a redis://"),
        ({"WANQ_REDIS_URL": "unix:///run/redis.sock"}, "WANQ_REDIS_URL must be a redis://"),
        ({"WANQ_PROVIDER_URL": "localhost:8765"}, "WANQ_PROVIDER_URL must be an http://"),
        ({"WANQ_STATUS_PATH": "/tasks"}, "must be a path starting with / that contains {task_id}"),
        (
            {"WANQ_ARCHIVE_ALLOW_PRIVATE": "maybe"},
            "WANQ_ARCHIVE_ALLOW_PRIVATE must be true or false",
        ),
        ({"WANQ_LOG_FORMAT": "xml"}, "WANQ_LOG_FORMAT must be text or json"),
        ({"WANQ_WEBHOOK_SECRET": "hunter2"}, "WANQ_WEBHOOK_SECRET must be empty or whsec_"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(env, says):
    with pytest.raises(ConfigError) as refused:
        config.load(env)
    line = str(refused.value)
    assert says in line
    assert "\n" not in line
    assert isinstance(refused.value, ValueError)  # as config errors always were


def test_secrets_and_passwords_never_appear_in_the_refusal():
    with pytest.raises(ConfigError) as refused:
        config.load({"WANQ_WEBHOOK_SECRET": "hunter2"})
    assert "hunter2" not in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        config.load({"WANQ_REDIS_URL": "htp://:s3cret@x"})
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"WANQ_MAX_COUNTDOWN": "60", "WANQ_VISIBILITY_TIMEOUT": "90"}, "at most half"),
        ({"WANQ_MAX_COUNTDOWN": "30", "WANQ_POLL_MAX_INTERVAL": "60"}, "WANQ_POLL_MAX_INTERVAL"),
        ({"WANQ_MAX_COUNTDOWN": "30", "WANQ_BACKOFF_CAP": "60"}, "WANQ_BACKOFF_CAP"),
        ({"WANQ_POLL_FIRST": "40", "WANQ_POLL_DEADLINE": "30"}, "WANQ_POLL_DEADLINE"),
    ],
)
def test_settings_that_contradict_each_other_are_refused(env, says):
    with pytest.raises(ConfigError, match=says):
        config.load(env)


def test_one_setting_derives_the_visibility_timeout_and_the_poll_cap():
    defaults = config.load({})
    assert defaults.max_countdown == 300
    assert defaults.visibility_timeout == 3 * defaults.max_countdown
    assert defaults.poll_max_interval == 0.25 * defaults.max_countdown
    short = config.load({"WANQ_MAX_COUNTDOWN": "20"})
    assert (short.visibility_timeout, short.poll_max_interval) == (60, 5)
    # a value set by hand wins over the derivation, as long as it agrees
    assert config.load({"WANQ_VISIBILITY_TIMEOUT": "700"}).visibility_timeout == 700


def test_defaults_cover_ten_second_to_ten_minute_generations():
    """The first poll of a 5-minute generation fits in one countdown, a 10-minute one needs
    one extra wake, and polls of a 10-minute generation stay few."""
    from workers import schedule

    settings = config.load({})

    def learned(generation: float) -> schedule.Estimate:  # every sample the same time
        return schedule.Estimate(generation, generation, generation, later=(generation,) * 3)

    assert schedule.first_poll_delay(learned(300.0), settings) == pytest.approx(300.0)
    for generation in (10.0, 80.0, 300.0, 600.0):
        elapsed = schedule.first_poll_delay(learned(generation), settings)
        polls = 1
        while elapsed < generation:
            elapsed += schedule.next_poll_delay(polls, elapsed, learned(generation), settings)
            polls += 1
        assert polls <= 8, (generation, polls)
        assert elapsed - generation <= max(0.2 * generation, 5.0), generation


def test_a_prior_above_the_countdown_cap_is_accepted():
    """WANQ_POLL_FIRST is also the pace of later polls, so it is not a contradiction (the
    benchmark's long-generation phase gives 1500 s)."""
    settings = config.load({"WANQ_POLL_FIRST": "1500"})
    assert settings.poll_first == 1500 and settings.max_countdown == 300


def test_good_values_load():
    settings = config.load(
        {
            "WANQ_UNIT_PRICE": "0.05",
            "WANQ_ARCHIVE_ALLOW_PRIVATE": "yes",
            "WANQ_REDIS_URL": "rediss://:pw@h:6380/1",
            "WANQ_MAX_IN_FLIGHT": "5",
        }
    )
    assert settings.unit_price == 0.05 and settings.archive_allow_private
    assert settings.max_in_flight == 5


def test_env_example_lists_every_setting_as_config_generates_it():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    assert text == config.env_example(), "regenerate: python -m workers.config > .env.example"
    for name in ("MAX_IN_FLIGHT", "POLL_RATE", "SWEEP_GRACE", "MAX_COUNTDOWN"):
        assert f"# WANQ_{name}=" in text
