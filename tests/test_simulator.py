"""The provider simulator, tested as a real HTTP server in a subprocess (as workers see it)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from ops.simulator import SimConfig, config_from_env

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sim-test-key-5f3a9"
LATENCY = 0.3
PRICE = 0.03
START_DEADLINE = 20.0
POLL_INTERVAL = 0.02  # between polls of a condition; each wait has its own deadline


@dataclass
class Sim:
    """A running simulator: where it listens, how its create/status paths look, its log."""

    base: str
    create_path: str
    status_path: str
    log: Path
    key: str = API_KEY

    def url(self, path: str) -> str:
        return self.base + path

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def create(self, body: object, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", self.headers())
        return requests.post(self.url(self.create_path), json=body, timeout=10, **kwargs)

    def status(self, task_id: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", self.headers())
        path = self.status_path.format(task_id=task_id)
        return requests.get(self.url(path), timeout=10, **kwargs)

    def stats(self) -> dict[str, Any]:
        return requests.get(self.url("/_sim/stats"), timeout=10).json()

    def configure(self, **changes: Any) -> dict[str, Any]:
        answer = requests.post(self.url("/_sim/config"), json=changes, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()


def wait_until(check: Callable[[], Any], deadline: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy, failing after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            pytest.fail(f"condition not met within {deadline} s")
        time.sleep(POLL_INTERVAL)


def _start(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    ready, log = tmp / "ready", tmp / "sim.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANQ_SIM_")}
    command = [sys.executable, "-m", "ops.simulator", "--port", "0", "--ready-file", str(ready)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**clean, **env, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def address() -> str | None:
        if proc.poll() is not None:
            pytest.fail(f"simulator exited early:\n{log.read_text()}")
        return ready.read_text() if ready.exists() else None

    try:
        return proc, wait_until(address, START_DEADLINE)
    except BaseException:
        proc.kill()
        raise


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """The default simulator: default paths, a required key, short fixed latency."""
    env = {
        "WANQ_SIM_API_KEY": API_KEY,
        "WANQ_SIM_LATENCY": str(LATENCY),
        "WANQ_SIM_LATENCY_JITTER": "0",
        "WANQ_SIM_UNIT_PRICE": str(PRICE),
        "WANQ_SIM_SEED": "7",
    }
    tmp = tmp_path_factory.mktemp("sim")
    proc, address = _start(tmp, env)
    status = "/model/v1/generation/{task_id}"
    yield Sim(f"http://{address}", "/model/v1/generation", status, tmp / "sim.log")
    proc.terminate()
    assert proc.wait(timeout=10) == 0


@pytest.fixture
def sim(running: Sim) -> Iterator[Sim]:
    """The default simulator, with any runtime config change undone after the test."""
    before = requests.get(running.url("/_sim/config"), timeout=10).json()
    yield running
    for fixed in ("create_path", "status_path"):
        del before[fixed]
    running.configure(**before)


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """A provider variant: other paths, ``id`` as the task-ID field, a ``data`` envelope."""
    create, status = "/api/v3/tasks", "/api/v3/tasks/{task_id}/result"
    env = {
        "WANQ_SIM_CREATE_PATH": create,
        "WANQ_SIM_STATUS_PATH": status,
        "WANQ_SIM_ID_FIELD": "id",
        "WANQ_SIM_WRAP_DATA": "1",
        "WANQ_SIM_LATENCY": str(LATENCY),
    }
    tmp = tmp_path_factory.mktemp("wrapped")
    proc, address = _start(tmp, env)
    yield Sim(f"http://{address}", create, status, tmp / "sim.log", key="any-token-works")
    proc.terminate()
    assert proc.wait(timeout=10) == 0


def edit_body(n: int = 1, size: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"n": n}
    if size:
        params["size"] = size
    content = [{"text": "make it a watercolor"}, {"image": "https://example.com/cat.png"}]
    return {
        "model": "wan26_i2i",
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": params,
    }


def interleave_body(max_images: int) -> dict[str, Any]:
    body = edit_body()
    body["input"]["messages"][0]["content"] = [{"text": "a comic strip about a cat"}]
    body["parameters"] = {"enable_interleave": True, "max_images": max_images}
    return body


def create_ok(sim: Sim, body: object) -> str:
    answer = sim.create(body)
    assert answer.status_code == 200, answer.text
    return answer.json()["task_id"]


def wait_final(sim: Sim, task_id: str) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        answer = sim.status(task_id)
        assert answer.status_code == 200, answer.text
        payload = answer.json()
        return payload if payload["status"] in ("completed", "failed") else None

    return wait_until(final)


def states_until_final(sim: Sim, task_id: str) -> list[str]:
    """The distinct states a task reports, in order, polled until it is final."""
    seen: list[str] = []

    def final() -> bool:
        state = sim.status(task_id).json()["status"]
        if not seen or seen[-1] != state:
            seen.append(state)
        return state in ("completed", "failed")

    wait_until(final)
    return seen


def test_requests_without_the_right_key_get_401(sim: Sim) -> None:
    before = sim.stats()
    answers = [
        sim.create(edit_body(), headers={}),
        sim.create(edit_body(), headers=sim.headers("wrong-key")),
        sim.create(edit_body(), headers={"Authorization": f"Basic {API_KEY}"}),
        sim.status("sim-anything", headers={"Authorization": "Bearer "}),
    ]
    for answer in answers:
        assert answer.status_code == 401
        assert answer.json() == {"error": {"code": "401", "message": "Invalid API key"}}
    after = sim.stats()
    assert after["unauthorized"] == before["unauthorized"] + 4
    assert after["tasks"] == before["tasks"]


def test_task_runs_pending_processing_completed_with_cost(sim: Sim) -> None:
    sim.configure(latency=1.0, pending_fraction=0.5)
    created = sim.create(edit_body(n=2))
    assert created.status_code == 200
    payload = created.json()
    assert payload["status"] == "pending"
    assert payload["task_id"].startswith("sim-") and payload["request_id"]
    task_id = payload["task_id"]
    assert states_until_final(sim, task_id) == ["pending", "processing", "completed"]
    done = sim.status(task_id).json()
    assert done["usage"] == {"cost": f"{PRICE * 2:.4f}", "discount": 0, "image_count": 2}
    assert done["usage"]["cost"] == "0.0600"
    [output] = done["output"]
    assert output["jobId"] == task_id
    assert [item["type"] for item in output["content"]] == ["image", "image"]
    assert all(item["url"].startswith(sim.base + "/files/") for item in output["content"])
    assert done["metadata"]["model"] == "wan26_i2i"


def test_interleaved_output_alternates_text_and_images(sim: Sim) -> None:
    task_ids = [create_ok(sim, interleave_body(max_images=3)) for _ in range(6)]
    for task_id in task_ids:
        done = wait_final(sim, task_id)
        content = done["output"][0]["content"]
        count = done["usage"]["image_count"]
        assert 1 <= count <= 3
        assert [item["type"] for item in content] == ["text", "image"] * count
        assert content[0]["text"].startswith("Step 1: ")
        assert [item["url"].rsplit("/", 1)[1] for item in content[1::2]] == [
            f"{i}.png" for i in range(count)
        ]
        assert done["usage"]["cost"] == f"{PRICE * count:.4f}"


def test_p_fail_ends_tasks_failed_with_generation_error(sim: Sim) -> None:
    sim.configure(p_fail=1.0)
    before = sim.stats()["tasks_by_final_state"]["failed"]
    task_id = create_ok(sim, edit_body())
    done = wait_final(sim, task_id)
    assert done["status"] == "failed"
    assert done["error"] == {"code": "001021095", "message": "Internal generation error"}
    assert "output" not in done and "usage" not in done
    assert sim.stats()["tasks_by_final_state"]["failed"] == before + 1


def test_429_carries_retry_after_and_creates_nothing(sim: Sim) -> None:
    task_id = create_ok(sim, edit_body())
    sim.configure(p_429=1.0, retry_after=2.5)
    tasks = sim.stats()["tasks"]
    created = sim.create(edit_body())
    assert created.status_code == 429
    assert created.headers["Retry-After"] == "3"
    assert created.json()["error"]["code"] == "429"
    assert sim.status(task_id).status_code == 429
    assert sim.stats()["tasks"] == tasks


def test_server_errors_on_create_create_no_task(sim: Sim) -> None:
    sim.configure(p_500=1.0)
    before = sim.stats()
    codes = {sim.create(edit_body()).status_code for _ in range(12)}
    assert codes <= {500, 502, 503} and len(codes) > 1
    after = sim.stats()
    assert after["tasks"] == before["tasks"]
    assert after["creates_ok"] == before["creates_ok"]
    assert after["faults"]["5xx"] == before["faults"]["5xx"] + 12


def test_broken_status_body_is_200_but_not_json(sim: Sim) -> None:
    sim.configure(p_broken=1.0)
    task_id = create_ok(sim, edit_body())  # only status answers break
    answer = sim.status(task_id)
    assert answer.status_code == 200
    assert answer.text.startswith('{"status": "compl')
    with pytest.raises(ValueError):
        json.loads(answer.text)


def test_slow_answers_arrive_late_but_intact(sim: Sim) -> None:
    sim.configure(p_slow=1.0, slow_seconds=0.4)
    started = time.monotonic()
    task_id = create_ok(sim, edit_body())
    assert time.monotonic() - started >= 0.4
    assert sim.status(task_id).json()["task_id"] == task_id


def test_exhausted_balance_refuses_creates_but_status_works(sim: Sim) -> None:
    task_id = create_ok(sim, edit_body())
    sim.configure(balance_exhausted=True)
    before = sim.stats()
    refused = sim.create(edit_body())
    assert refused.status_code == 403
    assert refused.json() == {"error": {"code": "403", "message": "Insufficient balance"}}
    assert sim.status(task_id).status_code == 200
    after = sim.stats()
    assert after["forbidden"] == before["forbidden"] + 1
    assert after["tasks"] == before["tasks"]


def test_revoked_key_answers_401_to_every_api_call(sim: Sim) -> None:
    task_id = create_ok(sim, edit_body())
    sim.configure(key_revoked=True)
    assert sim.create(edit_body()).status_code == 401
    assert sim.status(task_id).status_code == 401
    assert requests.get(sim.url("/_sim/stats"), timeout=10).status_code == 200


def test_result_png_decodes_at_the_requested_size(sim: Sim) -> None:
    task_id = create_ok(sim, edit_body(n=2, size="1280*720"))
    content = wait_final(sim, task_id)["output"][0]["content"]
    for item in content:
        answer = requests.get(item["url"], timeout=10)  # no auth, like a CDN URL
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "image/png"
        image = Image.open(io.BytesIO(answer.content))
        assert (image.format, image.size, image.mode) == ("PNG", (1280, 720), "RGB")
    assert requests.get(sim.url(f"/files/{task_id}/2.png"), timeout=10).status_code == 404
    assert requests.get(sim.url("/files/sim-nope/0.png"), timeout=10).status_code == 404


def test_default_size_is_1024_square(sim: Sim) -> None:
    task_id = create_ok(sim, edit_body())
    url = wait_final(sim, task_id)["output"][0]["content"][0]["url"]
    assert Image.open(io.BytesIO(requests.get(url, timeout=10).content)).size == (1024, 1024)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"parameters": {"n": 7}}, "001021011"),
        ({"parameters": {"size": "1024x1024"}}, "001021015"),
        ({"parameters": {"max_images": 2}}, "001021012"),
        ({"input": None}, "001021001"),
    ],
)
def test_invalid_requests_get_the_provider_code(sim: Sim, change: dict, code: str) -> None:
    before = sim.stats()
    answer = sim.create({**edit_body(), **change})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == code
    assert answer.json()["error"]["message"]
    after = sim.stats()
    assert after["creates_rejected"] == before["creates_rejected"] + 1
    assert after["tasks"] == before["tasks"]


def test_local_file_images_are_refused_without_reading_them(sim: Sim, tmp_path: Path) -> None:
    picture = tmp_path / "cat.png"
    Image.new("RGB", (400, 400), "white").save(picture)
    body = edit_body()
    body["input"]["messages"][0]["content"][1]["image"] = str(picture)
    answer = sim.create(body)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "WQ010"
    body["parameters"]["n"] = 9  # the provider-ordered checks still come first
    assert sim.create(body).json()["error"]["code"] == "001021011"


def test_malformed_json_is_001021001(sim: Sim) -> None:
    headers = {**sim.headers(), "Content-Type": "application/json"}
    answer = requests.post(sim.url(sim.create_path), data=b'{"model": ', headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "001021001"


def test_unknown_task_is_404(sim: Sim) -> None:
    answer = sim.status("sim-00000000000000000000")
    assert answer.status_code == 404
    assert answer.json() == {"error": {"code": "404", "message": "task not found"}}
    assert requests.get(sim.url("/_sim/tasks/sim-nope"), timeout=10).status_code == 404


def test_stored_request_is_what_was_sent_and_holds_no_key(sim: Sim) -> None:
    body = edit_body(n=3)
    task_id = create_ok(sim, body)
    stored = requests.get(sim.url(f"/_sim/tasks/{task_id}"), timeout=10).json()
    assert stored["request"] == body
    assert stored["key_in_body"] is False and API_KEY not in json.dumps(stored)
    leaky = edit_body()
    leaky["input"]["messages"][0]["content"][0]["text"] = f"key {API_KEY}"
    leaked_id = create_ok(sim, leaky)
    assert requests.get(sim.url(f"/_sim/tasks/{leaked_id}"), timeout=10).json()["key_in_body"]
    assert sim.stats()["key_in_body"] >= 1


def test_log_never_shows_the_key(sim: Sim) -> None:
    sim.create(edit_body(), headers=sim.headers("wrong-key-abcdef"))
    create_ok(sim, edit_body())
    sim.configure(p_500=0.0)  # logs a config change: a line we can wait for
    log = wait_until(lambda: "config changed" in sim.log.read_text() and sim.log.read_text())
    assert "listening on" in log
    assert API_KEY not in log and "wrong-key-abcdef" not in log


def test_config_endpoint_refuses_bad_changes_and_hides_the_key(sim: Sim) -> None:
    shown = requests.get(sim.url("/_sim/config"), timeout=10).json()
    assert "api_key" not in shown and shown["latency"] == LATENCY
    for bad in ({"nope": 1}, {"create_path": "/x"}, {"p_500": 2}, {"latency": "fast"}, [1]):
        answer = requests.post(sim.url("/_sim/config"), json=bad, timeout=10)
        assert answer.status_code == 400, bad
    assert requests.get(sim.url("/_sim/config"), timeout=10).json() == shown


def test_variant_paths_id_field_and_data_envelope(wrapped: Sim) -> None:
    created = wrapped.create(edit_body())
    assert created.status_code == 200
    data = created.json()["data"]
    assert data["status"] == "pending" and "task_id" not in data
    task_id = data["id"]
    default_path = wrapped.url(f"/model/v1/generation/{task_id}")
    assert requests.get(default_path, headers=wrapped.headers(), timeout=10).status_code == 404

    def completed() -> dict[str, Any] | None:
        payload = wrapped.status(task_id).json()["data"]
        return payload if payload["status"] == "completed" else None

    done = wait_until(completed)
    assert done["output"][0]["jobId"] == task_id
    assert done["usage"]["image_count"] == 1


def test_config_from_env_reads_wanq_sim_variables() -> None:
    config = config_from_env(
        {
            "WANQ_SIM_LATENCY": "0.5",
            "WANQ_SIM_P_500": "0.05",
            "WANQ_SIM_WRAP_DATA": "1",
            "WANQ_SIM_SEED": "42",
            "WANQ_SIM_API_KEY": "k",
            "WANQ_OTHER": "x",
        }
    )
    assert config == SimConfig(latency=0.5, p_500=0.05, wrap_data=True, seed=42, api_key="k")
    assert config_from_env({}) == SimConfig()
    for bad in ({"WANQ_SIM_P_FAIL": "1.5"}, {"WANQ_SIM_SEED": "x"}, {"WANQ_SIM_WRAP_DATA": "?"}):
        with pytest.raises(ValueError):
            config_from_env(bad)
