"""A whole wanq cluster on one machine: Redis (AOF on), the simulator, Celery workers.

``wanq run`` uses it when no Redis is configured, and the tests use it to start real parts.
It stops only what it started, in reverse order, and keeps logs under the data directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, what: str, timeout: float = 20.0, interval: float = 0.05):
    """Poll ``check`` until it returns a truthy value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        time.sleep(interval)
    raise StackError(f"{what} did not come up within {timeout:.0f} s")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown handler runs, as in a crash."""
        self.stop(signal.SIGKILL)


@dataclass
class LocalStack:
    data_dir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    processes: list[Process] = field(default_factory=list)
    redis_url: str = ""
    provider_url: str = ""

    def __post_init__(self) -> None:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)

    def start_redis(
        self, port: int | None = None, password: str = "", tls: Path | None = None
    ) -> str:
        """Start redis-server with AOF on; ``tls``: a folder with ca.crt, server.crt and
        server.key, to serve TLS only (a ``rediss://`` URL checked against that CA)."""
        server = shutil.which("redis-server")
        if not server:
            raise StackError("redis-server is not installed (Debian: apt-get install redis-server)")
        port = port or free_port()
        data = self.data_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        args = [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "yes",
        ]
        if password:
            args += ["--requirepass", password]
        if tls:
            args[args.index("--port") + 1] = "0"
            args += [
                "--tls-port",
                str(port),
                "--tls-cert-file",
                str(tls / "server.crt"),
                "--tls-key-file",
                str(tls / "server.key"),
                "--tls-ca-cert-file",
                str(tls / "ca.crt"),
                "--tls-auth-clients",
                "no",
            ]
        self._spawn("redis", args)
        self._redis_args = args
        auth = f":{password}@" if password else ""
        url = f"redis://{auth}127.0.0.1:{port}/0"
        if tls:
            url = f"rediss://{auth}127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={tls}/ca.crt"
        client = redis.Redis.from_url(url)
        wait_for(client.ping, "redis-server")
        client.close()
        self.redis_url = url
        self.env["WANQ_REDIS_URL"] = url
        return url

    def restart_redis(self) -> None:
        """Stop Redis (SIGTERM: it writes its AOF out) and start it again on the same data."""
        redis_process = next(p for p in self.processes if p.name == "redis")
        redis_process.stop()
        self.processes.remove(redis_process)
        self._spawn("redis", self._redis_args)
        client = redis.Redis.from_url(self.redis_url)
        wait_for(client.ping, "redis-server after a restart")
        client.close()

    def start_simulator(self, extra_env: dict[str, str] | None = None) -> str:
        ready = self.data_dir / f"sim-{os.getpid()}-{len(self.processes)}.addr"
        ready.unlink(missing_ok=True)
        env = {**self.env, **(extra_env or {})}
        cmd = [sys.executable, "-m", "ops.simulator", "--port", "0", "--ready-file", str(ready)]
        self._spawn("simulator", cmd, env)
        address = wait_for(lambda: ready.read_text().strip(), "the simulator")
        self.provider_url = f"http://{address}"
        self.env["WANQ_PROVIDER_URL"] = self.provider_url
        # The simulator serves the outputs itself, on loopback: let the archive fetch them.
        allowed = [h for h in self.env.get("WANQ_ARCHIVE_ALLOW_HOSTS", "").split(",") if h]
        self.env["WANQ_ARCHIVE_ALLOW_HOSTS"] = ",".join([*allowed, address])
        return self.provider_url

    def start_worker(self, name: str, extra_env: dict[str, str] | None = None) -> Process:
        celery = [  # supervised: restarted if it dies of an error (see ops/supervise.py)
            sys.executable,
            "-m",
            "ops.supervise",
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.app",
            "worker",
            "-n",
            f"{name}@%h",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ]
        return self._spawn(name, celery, {**self.env, **(extra_env or {})})

    def stop(self) -> None:
        """Stop what this stack started: workers first (warm shutdown), Redis last."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        log = self.data_dir / "logs" / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env or self.env,
                start_new_session=True,
                cwd=_project_root(),
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        if popen.poll() is not None:
            raise StackError(f"{name} exited at once; see {log}")
        return process

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)
