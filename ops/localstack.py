"""A whole wanq cluster on one machine: Redis (AOF on), the simulator, Celery workers, Flower.

``wanq run`` uses it when no Redis is configured, ``wanq up`` / ``wanq down`` start it for
good and stop it, and the tests use it to start real parts. It stops only what it started, in
reverse order, and keeps logs under the data directory; a stack that outlives its command
(``wanq up``) records itself in ``<data dir>/run/stack.json`` with one pid file per process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

from workers.errors import WanqError


class StackError(WanqError, RuntimeError):
    pass


FLOWER_PORT = 5555


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _claim_port(port: int, what: str) -> int:
    if port_taken(port):
        raise StackError(f"port {port} is already in use on 127.0.0.1: cannot start {what} there")
    return port


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
    flower_url: str = ""
    detached: bool = False  # outlives this process: pid files and stack.json under run/

    def __post_init__(self) -> None:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    def start_redis(
        self, port: int | None = None, password: str = "", tls: Path | None = None
    ) -> str:
        """Start redis-server with AOF on; ``tls``: a folder with ca.crt, server.crt and
        server.key, to serve TLS only (a ``rediss://`` URL checked against that CA)."""
        port = _claim_port(port, "redis-server") if port else free_port()
        args = self._redis_server_args("redis", port, password)
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
        auth = f":{password}@" if password else ""
        url = f"redis://{auth}127.0.0.1:{port}/0"
        if tls:
            url = f"rediss://{auth}127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={tls}/ca.crt"
        self._start_redis_server("redis", args, url)
        self._redis_args = args
        self.redis_url = url
        self.env["WANQ_REDIS_URL"] = url
        return url

    def start_sentinels(
        self,
        password: str = "",
        sentinel_password: str = "",
        replicas: int = 1,
        sentinels: int = 3,
        master_name: str = "mymaster",
    ) -> str:
        """A master (process "redis"), its replicas and the sentinels watching it, timed to
        fail over within seconds. Sets WANQ_REDIS_URL to kombu's form and returns it once
        every sentinel sees every replica in sync and every other sentinel (a failover can
        run then). ``restart_redis`` is for a lone Redis, not this."""
        master_port = free_port()
        auth = f":{password}@" if password else ""
        follow = ["--masterauth", password] if password else []  # any node may follow another
        # A replica syncs at once (Redis waits 5 s by default for more replicas to join a
        # diskless sync), after the start and after a failover alike.
        follow += ["--repl-diskless-sync-delay", "0"]
        replica_urls = []
        for n in range(replicas + 1):  # the master first, named "redis" as in start_redis
            name, port = (f"replica{n}", free_port()) if n else ("redis", master_port)
            args = self._redis_server_args(name, port, password) + follow
            url = f"redis://{auth}127.0.0.1:{port}/0"
            if n:
                args += ["--replicaof", "127.0.0.1", str(master_port)]
                replica_urls.append(url)
            self._start_redis_server(name, args, url)

        def synced(url: str) -> bool:
            with redis.Redis.from_url(url) as client:
                return client.info("replication").get("master_link_status") == "up"

        for url in replica_urls:  # so the sentinels' first look at a replica finds it in sync
            wait_for(lambda url=url: synced(url), "a replica's sync", 30)
        ports = [free_port() for _ in range(sentinels)]
        for n, port in enumerate(ports, 1):
            folder = self.data_dir / f"sentinel{n}"
            folder.mkdir(parents=True, exist_ok=True)
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {folder}",
                f"sentinel monitor {master_name} 127.0.0.1 {master_port} {sentinels // 2 + 1}",
                f"sentinel down-after-milliseconds {master_name} 1000",
                f"sentinel failover-timeout {master_name} 10000",
            ]
            if password:
                lines.append(f"sentinel auth-pass {master_name} {password}")
            if sentinel_password:
                lines.append(f"requirepass {sentinel_password}")
            conf = folder / "sentinel.conf"  # Sentinel rewrites its config file: one each
            conf.write_text("\n".join(lines) + "\n")
            self._spawn(f"sentinel{n}", [_redis_server(), str(conf), "--sentinel"])

        def ready(port: int) -> bool:
            client = redis.Redis(port=port, password=sentinel_password or None)
            with client:
                synced = [
                    r
                    for r in client.sentinel_slaves(master_name)
                    if r["master-link-status"] == "ok" and not r["is_sdown"]
                ]
                return (
                    len(synced) == replicas
                    and len(client.sentinel_sentinels(master_name)) == sentinels - 1
                )

        for port in ports:
            wait_for(lambda port=port: ready(port), f"sentinel on port {port}", 30)
        query = f"?master_name={master_name}"
        if sentinel_password:
            query += f"&sentinel_password={sentinel_password}"
        url = ";".join(f"sentinel://{auth}127.0.0.1:{port}/0" for port in ports) + query
        self.redis_url = url
        self.env["WANQ_REDIS_URL"] = url
        return url

    def restart_redis(self, crash: Callable[[Path], object] | None = None) -> None:
        """Stop Redis (SIGTERM: it writes its AOF out) and start it again on the same data.
        ``crash``: a host crash instead: SIGKILL, then ``crash(data folder)`` runs (to cut the
        AOF's tail, as a lost page cache would) before Redis starts again on the same port."""
        redis_process = next(p for p in self.processes if p.name == "redis")
        if crash is None:
            redis_process.stop()
        else:
            redis_process.kill()
            crash(self.data_dir / "redis")
        where = self.processes.index(redis_process)
        self.processes.remove(redis_process)
        self._start_redis_server("redis", self._redis_args, self.redis_url)
        self.processes.insert(where, self.processes.pop())  # still stopped after the workers

    def start_simulator(
        self, extra_env: dict[str, str] | None = None, port: int = 0, wait: bool = True
    ) -> str:
        """Start the simulator and return its URL. With a ``port`` and ``wait=False`` it
        returns at once (the URL is known), and :meth:`wait_simulator` waits for it to listen:
        what needs only its address (workers, which call it only to run tasks) can start
        meanwhile."""
        ready = self.data_dir / f"sim-{os.getpid()}-{len(self.processes)}.addr"
        ready.unlink(missing_ok=True)
        env = {**self.env, **(extra_env or {})}
        port = _claim_port(port, "the simulator") if port else 0
        cmd = [sys.executable, "-m", "ops.simulator", "--port", str(port)]
        cmd += ["--ready-file", str(ready)]
        self._spawn("simulator", cmd, env)
        self._simulator_ready = ready
        if port:
            self._simulator_at(f"127.0.0.1:{port}")
        if wait or not port:
            self.wait_simulator()
        return self.provider_url

    def wait_simulator(self) -> str:
        """Wait until the simulator :meth:`start_simulator` started listens; its URL."""
        ready = self._simulator_ready
        self._simulator_at(wait_for(lambda: ready.read_text().strip(), "the simulator"))
        return self.provider_url

    def _simulator_at(self, address: str) -> None:
        self.provider_url = f"http://{address}"
        self.env["WANQ_PROVIDER_URL"] = self.provider_url
        # The simulator serves the outputs itself, on loopback: let the archive fetch them.
        allowed = [h for h in self.env.get("WANQ_ARCHIVE_ALLOW_HOSTS", "").split(",") if h]
        if address not in allowed:
            self.env["WANQ_ARCHIVE_ALLOW_HOSTS"] = ",".join([*allowed, address])

    def start_worker(
        self, name: str, extra_env: dict[str, str] | None = None, queues: list[str] | None = None
    ) -> Process:
        celery = [  # supervised: restarted if it dies of an error (see ops/supervise.py)
            sys.executable,
            "-m",
            "ops.supervise",
            sys.executable,
            "-m",
            "workers.processes",  # `celery -A workers.app worker` x WANQ_WORKER_PROCESSES
            "-n",
            f"{name}@%h",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ]
        if queues:
            celery += ["-Q", ",".join(queues)]
        return self._spawn(name, celery, {**self.env, **(extra_env or {})})

    def start_flower(self, port: int | None = None, persistent: bool = False) -> str:
        """Flower on loopback (basic auth if ``FLOWER_BASIC_AUTH`` is set); 5555 when free.
        It answers a few seconds later: :meth:`wait_flower`."""
        if port is None:
            port = free_port() if port_taken(FLOWER_PORT) else FLOWER_PORT
        port = _claim_port(port, "Flower")
        cmd = [
            *(sys.executable, "-m", "celery", "-A", "workers.app", "flower"),
            *("--address=127.0.0.1", f"--port={port}"),
        ]
        if persistent:  # keeps its task history across restarts
            cmd += ["--persistent=True", f"--db={self.data_dir / 'flower.db'}"]
        self._spawn("flower", cmd)
        self.flower_url = f"http://127.0.0.1:{port}"
        return self.flower_url

    def wait_flower(self, timeout: float = 30.0) -> str:
        health = self.flower_url + "/healthcheck"
        wait_for(lambda: requests.get(health, timeout=2).ok, "Flower", timeout, interval=0.2)
        return self.flower_url

    def stop(self) -> None:
        """Stop what this stack started: workers first (warm shutdown), Redis last."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def record(self) -> Path:
        """Write stack.json for ``wanq down`` and for commands that look for a running stack."""
        state = {
            "redis_url": self.redis_url,
            "provider_url": self.provider_url,
            "flower_url": self.flower_url,
            "processes": [
                {"name": p.name, "pid": p.popen.pid, "log": str(p.log)} for p in self.processes
            ],
        }
        path = self.run_dir / "stack.json"
        path.write_text(json.dumps(state, indent=2))
        return path

    def _redis_server_args(self, name: str, port: int, password: str) -> list[str]:
        """redis-server as wanq wants it: AOF on, loopback only, data in a folder of its own."""
        data = self.data_dir / name
        data.mkdir(parents=True, exist_ok=True)
        args = [
            _redis_server(),
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
        return [*args, "--requirepass", password] if password else args

    def _start_redis_server(self, name: str, args: list[str], url: str) -> None:
        self._spawn(name, args)
        client = redis.Redis.from_url(url)
        with client:
            wait_for(client.ping, name)

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
        if self.detached:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / f"{name}.pid").write_text(f"{popen.pid}\n")
        if popen.poll() is not None:
            raise StackError(f"{name} exited at once; see {log}")
        return process

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running_stack(data_dir: Path) -> dict | None:
    """The stack ``wanq up`` left running under ``data_dir``, if any of it is alive."""
    try:
        state = json.loads((data_dir / "run" / "stack.json").read_text())
    except (OSError, ValueError):
        return None
    living = [p for p in state.get("processes", []) if alive(int(p["pid"]))]
    return {**state, "processes": living} if living else None


def stop_recorded(data_dir: Path, timeout: float = 30.0) -> list[str]:
    """Stop a recorded stack in reverse start order (SIGTERM: workers finish their tasks,
    Redis writes its AOF), SIGKILL what outlives ``timeout``; returns the names stopped."""
    run = data_dir / "run"
    state = running_stack(data_dir) or {"processes": []}
    stopped = []
    for entry in reversed(state["processes"]):
        pid = int(entry["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        with contextlib.suppress(StackError):
            wait_for(lambda pid=pid: not alive(pid), entry["name"], timeout, interval=0.1)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        stopped.append(entry["name"])
    for leftover in [*run.glob("*.pid"), run / "stack.json"]:
        leftover.unlink(missing_ok=True)
    return stopped


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for its parent."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return True


def _redis_server() -> str:
    server = shutil.which("redis-server")
    if not server:
        raise StackError("redis-server is not installed (Debian: apt-get install redis-server)")
    return server


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)
