"""A BASELINE, not part of wanq: what a skilled user with one machine and one file writes
instead of a job queue. One asyncio process, aiohttp, a semaphore of C: create, sleep near
the generation time, poll with a growing interval, append each result to a JSONL file.

    python -m ops.bench.asyncref BATCH.jsonl OUT.jsonl --url URL --key KEY -c C --latency L

No durability (a crash loses what is in flight), no limit across machines, no retries, no
exactly-once: the benchmark runs it beside wanq (same simulator, same C, L and jobs) to
show what those cost (``vs_async_reference_throughput``, ``cpu_vs_async_reference``).
It prints one JSON line of its own cost at the end: CPU seconds and wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

CREATE_PATH = "/model/v1/generation"
STATUS_PATH = "/model/v1/generation/{task_id}"
FIRST_SHADE = 0.9  # first poll at 0.9 x the generation time the user expects
INTERVAL = 0.08  # then every 0.08 x it, growing 1.25x: the same shape wanq had
GROWTH = 1.25
DONE = ("completed", "failed")


def task_id(body: dict[str, Any]) -> str:
    data = body.get("data", body)
    return str(data.get("task_id") or data.get("id") or data.get("taskId"))


async def one(
    session: aiohttp.ClientSession,
    url: str,
    line: dict[str, Any],
    latency: float,
    gate: asyncio.Semaphore,
    out: Any,
) -> int:
    """One job under the semaphore: create, sleep, poll until done, append. Its polls."""
    async with gate:
        async with session.post(url + CREATE_PATH, json=line["body"]) as response:
            response.raise_for_status()
            tid = task_id(await response.json())
        await asyncio.sleep(latency * FIRST_SHADE)
        interval, polls = latency * INTERVAL, 0
        while True:
            async with session.get(url + STATUS_PATH.format(task_id=tid)) as response:
                polls += 1
                if response.status == 200:
                    status = await response.json()
                    status = status.get("data", status)
                    if status.get("status") in DONE:
                        break
            await asyncio.sleep(interval)
            interval *= GROWTH
    record = {
        "custom_id": line["custom_id"],
        "task_id": tid,
        "status": status.get("status"),
        "output": status.get("output"),
        "usage": status.get("usage"),
        "completed_at": time.time(),
    }
    out.write(json.dumps(record) + "\n")
    return polls


async def run(batch: Path, out_path: Path, url: str, key: str, cap: int, latency: float) -> int:
    lines = [json.loads(raw) for raw in batch.read_text(encoding="utf-8").splitlines() if raw]
    gate = asyncio.Semaphore(cap)
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=cap)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        with open(out_path, "a", encoding="utf-8") as out:
            polls = await asyncio.gather(
                *(one(session, url, line, latency, gate, out) for line in lines)
            )
    return sum(polls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.asyncref", description=__doc__)
    parser.add_argument("batch", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("-c", "--cap", type=int, required=True, help="jobs in flight (C)")
    parser.add_argument("--latency", type=float, required=True, help="expected generation s")
    args = parser.parse_args(argv)
    started, cpu0 = time.time(), time.process_time()  # after the imports, as wanq's figures
    polls = asyncio.run(run(args.batch, args.out, args.url, args.key, args.cap, args.latency))
    cpu = time.process_time() - cpu0
    print(json.dumps({"started": started, "cpu_s": cpu, "polls": polls}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
