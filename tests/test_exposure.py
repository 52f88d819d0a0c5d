"""What wanq exposes, checked on the real sockets: the documented ways to run Flower, Redis,
the metrics and the simulator listen on loopback (or need credentials) unless told otherwise.
The kernel's socket table (/proc/net/tcp, tcp6) says where each one really listens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ops import cli_cluster
from ops.localstack import LocalStack, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
LISTEN = "0A"


def listening(port: int) -> set[str]:
    """The addresses a TCP socket listens on at ``port`` ("127.0.0.1", "0.0.0.0", "::"...)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state != LISTEN or int(hex_port, 16) != port:
                continue
            if width == 8:
                found.add(".".join(str(b) for b in bytes.fromhex(address)[::-1]))
            else:
                found.add("::" if int(address, 16) == 0 else address)
    return found


def test_redis_of_wanq_run_and_up_listens_on_loopback_only_in_protected_mode(redis_server):
    port = int(redis_server.redis_url.rsplit(":", 1)[1].split("/")[0])
    assert listening(port) == {"127.0.0.1"}
    args = redis_server._redis_args
    assert args[args.index("--protected-mode") + 1] == "yes"


def test_flower_as_documented_listens_on_loopback_only(redis_url, tmp_path):
    port = free_port()
    env = {**os.environ, "WANQ_REDIS_URL": redis_url}
    env = {k: v for k, v in env.items() if not k.startswith("FLOWER_")}
    log = (tmp_path / "flower.log").open("w")
    flower = subprocess.Popen(  # the README's command, from the repo root: flowerconfig.py
        [sys.executable, "-m", "celery", "-A", "workers.app", "flower", f"--port={port}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: listening(port), "Flower listening", 60, interval=0.2)
        assert listening(port) == {"127.0.0.1"}
    finally:
        flower.terminate()
        flower.wait(20)
        log.close()


def test_wanq_up_starts_flower_on_loopback(tmp_path):
    stack = LocalStack(tmp_path)
    try:
        stack.start_redis()
        url = stack.start_flower(port=free_port())
        stack.wait_flower(60)
        assert listening(int(url.rsplit(":", 1)[1])) == {"127.0.0.1"}
    finally:
        stack.stop()


@pytest.mark.parametrize(("command", "option"), [("metrics", "addr"), ("sim", "host")])
def test_metrics_and_simulator_default_to_loopback(command, option):
    params = {p.name: p for p in getattr(cli_cluster, command).params}
    assert params[option].default == "127.0.0.1"


def test_compose_publishes_flower_and_metrics_on_loopback_and_nothing_else():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    published = {name: svc["ports"] for name, svc in services.items() if "ports" in svc}
    assert published == {
        "flower": ["${FLOWER_BIND:-127.0.0.1}:5555:5555"],
        "metrics": ["${METRICS_BIND:-127.0.0.1}:9808:9808"],
    }
    flower_env = services["flower"]["environment"]
    assert flower_env["FLOWER_BASIC_AUTH"].startswith("${FLOWER_USER:?")  # no login, no start
    assert "--requirepass" in services["redis"]["command"]


def test_the_runbook_lists_what_is_exposed_where():
    runbook = (ROOT / "ops" / "README.md").read_text(encoding="utf-8")
    section = runbook.split("## What is exposed where", 1)[1].split("\n## ", 1)[0]
    for port in ("6379", "5555", "9808", "8765"):
        assert port in section, port
