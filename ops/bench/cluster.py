"""The processes of a benchmark run, all through ops.localstack: one redis-server, one
simulator, and worker processes started and stopped per phase. Everything on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import redis
import requests

from ops.bench import procs
from ops.bench.params import Params
from ops.localstack import LocalStack, Process, wait_for
from producers.api import Wanq
from workers import config, keys, processes

API_KEY = "sk-wanq-bench-5e4d3c2b1a"
SIM_SEED = "17"
READY_TIMEOUT = 90.0


def _clean_environ() -> dict[str, str]:
    """The caller's environment without WANQ_ settings: a run does not depend on the shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WANQ_")}


class Bench:
    """One Redis and one simulator for the whole run; workers come and go per phase."""

    def __init__(self, params: Params, data_dir: Path) -> None:
        self.params = params
        self.data_dir = data_dir
        self.stack = LocalStack(data_dir, env={**_clean_environ(), "WANQ_DATA_DIR": str(data_dir)})
        self._names = 0
        self._http = requests.Session()

    # --- lifetime --------------------------------------------------------------------------

    def start(self) -> None:
        self.stack.start_redis()
        self.stack.start_simulator(
            {
                "WANQ_SIM_API_KEY": API_KEY,
                "WANQ_SIM_LATENCY": repr(self.params.latency),
                "WANQ_SIM_SEED": SIM_SEED,
            }
        )

    def stop(self) -> None:
        self.stack.stop()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- workers ---------------------------------------------------------------------------

    def worker_env(self, cap: int) -> dict[str, str]:
        """What every wanq worker of the run gets. WANQ_POLL_FIRST is the operator's prior of
        the generation time (production default 8 s): set to L, as one would for a provider
        whose latency is known; wanq then learns the observed time itself."""
        return {
            "WANQ_API_KEY": API_KEY,
            "WANQ_CONCURRENCY": str(self.params.concurrency),
            "WANQ_MAX_IN_FLIGHT": str(cap),
            "WANQ_POLL_FIRST": repr(self.params.latency),
        }

    def start_workers(
        self, processes: int | None, cap: int, extra_env: dict[str, str] | None = None
    ) -> list[Process]:
        """One worker start as the README's (workers.processes): ``processes`` Celery worker
        processes, or None for the default, one per core. Returns once every one is ready."""
        env = {**self.worker_env(cap), **(extra_env or {})}
        if processes is not None:
            env["WANQ_WORKER_PROCESSES"] = str(processes)
        self._names += 1
        worker = self.stack.start_worker(f"wanq{self._names}", env)
        self.wait_ready(worker, processes or default_processes())
        return [worker]

    def start_celery(self, name: str, app: str, args: list[str], env: dict[str, str]) -> Process:
        """A Celery worker of another app (the naive design), spawned like wanq's own."""
        self._names += 1
        command = [sys.executable, "-m", "celery", "-A", app, "worker", "-n", f"{name}@%h"]
        command += [*args, "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
        process = self.stack._spawn(name, command, {**self.stack.env, **env})
        self.wait_ready(process)
        return process

    def wait_ready(self, process: Process, processes: int = 1) -> None:
        def ready() -> bool:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited; see {process.log}")
            return process.log.read_text(errors="replace").count(" ready.") >= processes

        wait_for(ready, f"worker {process.name}", READY_TIMEOUT)

    def stop_processes(self, processes: list[Process], kill: bool = False) -> None:
        for process in processes:
            process.kill() if kill else process.stop(timeout=15)
            with contextlib.suppress(ValueError):
                self.stack.processes.remove(process)

    # --- Redis -----------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return self.stack.redis_url

    def redis(self, db: int = 0) -> redis.Redis:
        url = self.redis_url.rsplit("/", 1)[0] + f"/{db}"
        return redis.Redis.from_url(url, decode_responses=True)

    def flush(self) -> None:
        """A clean slate between phases (no worker may be running)."""
        self.redis().flushall()

    def used_memory(self) -> int:
        return int(self.redis().info("memory")["used_memory"])

    def payload_bytes(self) -> tuple[int, int]:
        """(keys, bytes) of the request payloads stored under wanq:payload:*."""
        client = self.redis()
        count = total = 0
        batch: list[str] = []
        for key in client.scan_iter(match=keys.payload("*"), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                total += self._memory_usage(client, batch)
                count, batch = count + len(batch), []
        total += self._memory_usage(client, batch)
        return count + len(batch), total

    @staticmethod
    def _memory_usage(client: redis.Redis, names: list[str]) -> int:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.execute_command("MEMORY", "USAGE", name, "SAMPLES", "0")
        return sum(int(n or 0) for n in pipe.execute()) if names else 0

    # --- the producer ----------------------------------------------------------------------

    def settings(self) -> config.Settings:
        """The producer's settings: Redis and provider addresses only (no API key)."""
        return config.load({k: v for k, v in self.stack.env.items() if k.startswith("WANQ_")})

    def client(self) -> Wanq:
        return Wanq(self.settings())

    # --- the simulator ---------------------------------------------------------------------

    def sim(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        url = self.stack.provider_url + path
        if payload is None:
            response = self._http.get(url, timeout=30)
        else:
            response = self._http.post(url, json=payload, timeout=30)
        response.raise_for_status()
        return response.json()

    def sim_stats(self) -> dict[str, Any]:
        return self.sim("/_sim/stats")

    def configure_sim(self, **changes: Any) -> None:
        self.sim("/_sim/config", changes)

    # --- process costs ---------------------------------------------------------------------

    def pid_of(self, name: str) -> int:
        return next(p.popen.pid for p in self.stack.processes if p.name == name)

    def cpu(self, processes: list[Process]) -> float:
        return sum(procs.cpu_seconds(p.popen.pid) for p in processes)

    def service_cpu(self) -> dict[str, float]:
        """CPU of the parts that are not wanq: Redis and the simulator (shown, not counted)."""
        return {name: procs.cpu_seconds(self.pid_of(name)) for name in ("redis", "simulator")}


def default_processes() -> int:
    """Worker processes a start runs when WANQ_WORKER_PROCESSES is not set: one per core."""
    return processes.count(config.Settings())


def wait_until(check, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return bool(check())
