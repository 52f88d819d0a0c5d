"""A local stand-in for the wan26_i2i API: same paths, answers and failure modes, no cost.

wanq is developed, tested and benchmarked against this server instead of the paid API. It is
one asyncio process that must never be the bottleneck of a benchmark, so a task's state is
computed from its timestamps when asked (no timer per task), nothing touches disk per
request, and result PNGs are cached (``ops.sim_images``).

Faults (5xx, 429, slow answers, broken JSON, failed tasks, revoked key, empty balance) are
drawn per request from one seeded RNG and can be switched at runtime through
``POST /_sim/config``, so tests drive every branch of the workers' error handling over real
HTTP. The API key is never logged: aiohttp's access log is off.

Admin endpoints (no auth): ``GET /_sim/stats``, ``GET|POST /_sim/config``,
``GET /_sim/tasks/{task_id}``.

With ``WANQ_SIM_STATE_FILE`` set (``wanq run`` and ``wanq up --sim`` set it under the data
directory), the tasks are written there when the server stops (SIGTERM/SIGINT) and read back
when it starts, their clocks carried over in wall time: a stack stopped and started again, as
an interrupted ``wanq run`` run again, still answers for the tasks it created before instead
of 404 (a SIGKILLed simulator keeps nothing: there is no write per request).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from aiohttp import web

from ops import sim_images, sim_rules
from workers import errors

log = logging.getLogger("wanq.simulator")

MAX_BODY_BYTES = 80 * 1024 * 1024  # four 10 MB images as base64, plus the rest of the body
STORED_STRING_LIMIT = 1024  # longer strings (base64 images) are abbreviated in /_sim/tasks
LEAK_CHECK_MIN_KEY = 6  # shorter keys would match bodies by accident
COUNTERS = (
    "creates_ok",
    "creates_rejected",  # validation or malformed JSON
    "status_calls",
    "downloads",
    "unauthorized",
    "forbidden",
    "tasks_total",
    "key_in_body",  # creates whose body contained the caller's own API key
)
FAULT_KINDS = ("5xx", "429", "slow", "broken", "502_after_create")
STATE_FILE_VARIABLE = "WANQ_SIM_STATE_FILE"  # not a SimConfig field: read by main() only
STATE_KEEP_SECONDS = 24 * 3600  # tasks ended longer ago are not kept (their URLs would expire)
SERVER_ERRORS = {500: "Internal server error", 502: "Bad gateway", 503: "Service unavailable"}
PLACEHOLDER_IMAGE_URL = "https://sim.invalid/local-file.png"
BROKEN_BODY = '{"status": "compl'
STEP_TEXTS = ("sketch the layout", "block in the colours", "refine the details", "final pass")
ROUTE_FIELDS = frozenset({"create_path", "status_path"})  # routes are fixed at build time
PROBABILITY_FIELDS = (
    "pending_fraction",
    "p_500",
    "p_429",
    "p_slow",
    "p_broken",
    "p_fail",
    "p_502_after_create",
)
NON_NEGATIVE_FIELDS = ("latency", "latency_jitter", "unit_price", "retry_after", "slow_seconds")


@dataclass
class SimConfig:
    """How the simulated provider behaves; every field is a ``WANQ_SIM_<FIELD>`` variable."""

    api_key: str | None = None  # None: any non-empty Bearer token is accepted
    create_path: str = "/model/v1/generation"
    status_path: str = "/model/v1/generation/{task_id}"
    id_field: str = "task_id"  # name of the task-ID field in the create response
    wrap_data: bool = False  # True: create/status responses wrapped as {"data": {...}}
    latency: float = 2.0  # mean generation seconds
    latency_jitter: float = 0.25  # relative spread (uniform +-), 0 = fixed latency
    pending_fraction: float = 0.2  # first part of the latency reports "pending"
    unit_price: float = 0.03  # USD per generated image
    p_500: float = 0.0  # a create or status call answers 500/502/503
    p_429: float = 0.0  # ... answers 429 with Retry-After
    retry_after: float = 1.0  # seconds in Retry-After (rounded up, at least 1)
    p_slow: float = 0.0  # a response is delayed by slow_seconds
    slow_seconds: float = 3.0
    p_broken: float = 0.0  # a status response is 200 with broken JSON
    p_fail: float = 0.0  # a task ends "failed" with 001021095
    p_502_after_create: float = 0.0  # the task is made, then a proxy answers 502 (a duplicate)
    key_revoked: bool = False  # every API call answers 401
    balance_exhausted: bool = False  # creates answer 403; status still works
    seed: int | None = None  # RNG seed for reproducible faults
    hostile_usage: str = ""  # a JSON object merged into every completed answer's usage
    output_base: str = ""  # image URLs start with this, not the address the client reached

    def public(self) -> dict[str, Any]:
        """The config as shown by the admin endpoint and the log: without the API key."""
        shown = dataclasses.asdict(self)
        del shown["api_key"]
        return shown


_FIELD_TYPES = {f.name: str(f.type) for f in fields(SimConfig)}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _to_bool(value: object) -> bool:
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, bool | int) and value in (0, 1):
        return bool(value)
    raise ValueError(value)


def _to_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _to_int(value: object) -> int:
    number = _to_float(value)
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


def _to_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


_PARSERS = {"bool": _to_bool, "float": _to_float, "int": _to_int, "str": _to_str}


def _coerce(name: str, value: object) -> object:
    """One field's value from an env string or a JSON value; ValueError names the field."""
    kind = _FIELD_TYPES[name]  # "float", "str | None", ... (annotations are strings)
    if kind.endswith("| None") and value in (None, ""):
        return None
    try:
        return _PARSERS[kind.split("|")[0].strip()](value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {kind}, got {value!r}") from None


def _checked(config: SimConfig) -> SimConfig:
    for name in PROBABILITY_FIELDS:
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    for name in NON_NEGATIVE_FIELDS:
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must not be negative")
    if "{task_id}" not in config.status_path:
        raise ValueError("status_path must contain {task_id}")
    return config


def config_from_env(environ: Mapping[str, str]) -> SimConfig:
    """Build a SimConfig from ``WANQ_SIM_<FIELD>`` variables; unset or empty means default."""
    values = {}
    for name in _FIELD_TYPES:
        raw = environ.get("WANQ_SIM_" + name.upper())
        if raw is not None and (raw != "" or name == "api_key"):
            values[name] = _coerce(name, raw)
    return _checked(SimConfig(**values))


@dataclass(slots=True)
class Task:
    """What one remote task needs to answer polls: its outcome is fixed at creation."""

    created: float  # time.monotonic()
    latency: float
    failed: bool
    interleave: bool
    image_count: int  # images it yields if it completes
    size: tuple[int, int]
    price: float  # unit price at creation
    request: Any  # the body as stored for /_sim/tasks (long strings abbreviated)
    key_in_body: bool

    def state(self, now: float, pending_fraction: float) -> str:
        elapsed = now - self.created
        if elapsed >= self.latency:
            return "failed" if self.failed else "completed"
        return "pending" if elapsed < pending_fraction * self.latency else "processing"


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    body = {"error": {"code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers or None)


def _abbreviate(value: Any) -> Any:
    """Keep the shape of a stored request but not megabytes of base64."""
    if isinstance(value, str) and len(value) > STORED_STRING_LIMIT:  # the hash: bytes received
        digest = hashlib.sha256(value.encode()).hexdigest()
        return f"{value[:64]}...<{len(value)} chars sha256:{digest}>"
    if isinstance(value, dict):
        return {key: _abbreviate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_abbreviate(item) for item in value]
    return value


class Simulator:
    """The server's state and its request handlers (bound methods)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = _checked(config)
        self.rng = random.Random(config.seed)
        self.tasks: dict[str, Task] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.faults = dict.fromkeys(FAULT_KINDS, 0)

    # --- helpers ---------------------------------------------------------------------------
    def _token(self, request: web.Request) -> str | None:
        """The accepted Bearer token, or None (the caller answers 401)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token, config = token.strip(), self.config
        if scheme.lower() != "bearer" or not token or config.key_revoked:
            return None
        if config.api_key is not None and not hmac.compare_digest(
            token.encode(), config.api_key.encode()
        ):
            return None
        return token

    def _unauthorized(self) -> web.Response:
        self.counters["unauthorized"] += 1
        return _error(401, "401", "Invalid API key")

    def _answer(self, payload: dict[str, Any]) -> web.Response:
        return web.json_response({"data": payload} if self.config.wrap_data else payload)

    async def _fault(self, status_endpoint: bool) -> web.Response | None:
        """Draw this request's fault: a slow answer continues, the others replace it."""
        config, rng = self.config, self.rng
        if config.p_slow and rng.random() < config.p_slow:
            self.faults["slow"] += 1
            await asyncio.sleep(config.slow_seconds)
        if config.p_500 and rng.random() < config.p_500:
            self.faults["5xx"] += 1
            status = rng.choice(tuple(SERVER_ERRORS))
            return _error(status, "500", SERVER_ERRORS[status])
        if config.p_429 and rng.random() < config.p_429:
            self.faults["429"] += 1
            retry_after = str(max(1, math.ceil(config.retry_after)))
            return _error(429, "429", "Rate limit exceeded", **{"Retry-After": retry_after})
        if status_endpoint and config.p_broken and rng.random() < config.p_broken:
            self.faults["broken"] += 1
            text = '{"data": ' + BROKEN_BODY if config.wrap_data else BROKEN_BODY
            return web.Response(text=text, content_type="application/json")
        return None

    def _new_task(self, body: dict[str, Any], raw: bytes, token: str) -> str:
        config, rng = self.config, self.rng
        params = body.get("parameters") or {}
        interleave = params.get("enable_interleave") is True
        failed = bool(config.p_fail) and rng.random() < config.p_fail
        count = rng.randint(1, params.get("max_images", 5)) if interleave else params.get("n", 1)
        jitter = config.latency_jitter * rng.uniform(-1.0, 1.0) if config.latency_jitter else 0
        leaked = len(token) >= LEAK_CHECK_MIN_KEY and token.encode() in raw
        task_id = "sim-" + uuid.uuid4().hex[:20]
        self.tasks[task_id] = Task(
            created=time.monotonic(),
            latency=max(0.0, config.latency * (1.0 + jitter)),
            failed=failed,
            interleave=interleave,
            image_count=0 if failed else count,
            size=sim_images.parse_size(params.get("size")),
            price=config.unit_price,
            request=body if len(raw) <= STORED_STRING_LIMIT else _abbreviate(body),
            key_in_body=leaked,
        )
        self.counters["tasks_total"] += 1
        self.counters["key_in_body"] += leaked
        return task_id

    def _result(self, task_id: str, task: Task, base: str) -> dict[str, Any]:
        """The completed answer; URLs use the address the client reached us on."""
        content: list[dict[str, str]] = []
        for i in range(task.image_count):
            if task.interleave:
                step = STEP_TEXTS[i % len(STEP_TEXTS)]
                content.append({"type": "text", "text": f"Step {i + 1}: {step}"})
            url_base = self.config.output_base or base
            content.append({"type": "image", "url": f"{url_base}/files/{task_id}/{i}.png"})
        cost = f"{task.price * task.image_count:.4f}"
        usage = {"cost": cost, "discount": 0, "image_count": task.image_count}
        if self.config.hostile_usage:  # tests of answers no real provider should give
            usage.update(json.loads(self.config.hostile_usage))
        return {
            "output": [{"content": content, "jobId": task_id}],
            "usage": usage,
            "metadata": {"model": "wan26_i2i"},
        }

    # --- the provider's API ----------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        token = self._token(request)
        if token is None:
            return self._unauthorized()
        if self.config.balance_exhausted:
            self.counters["forbidden"] += 1
            return _error(403, "403", "Insufficient balance")
        raw = await request.read()
        fault = await self._fault(status_endpoint=False)
        if fault is not None:
            return fault  # before any task exists, so retrying is safe
        try:
            body = json.loads(raw)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            self.counters["creates_rejected"] += 1
            return _error(400, errors.MISSING_INPUT, "Malformed JSON body")
        try:
            sim_rules.check(body)
        except errors.ValidationError as exc:
            self.counters["creates_rejected"] += 1
            return _error(400, exc.code, exc.message)
        task_id = self._new_task(body, raw, token)
        if self.config.p_502_after_create and self.rng.random() < self.config.p_502_after_create:
            self.faults["502_after_create"] += 1  # made upstream, lost on the way back
            return _error(502, "502", "Bad Gateway")
        self.counters["creates_ok"] += 1
        payload = {self.config.id_field: task_id, "status": "pending"}
        return self._answer({**payload, "request_id": uuid.uuid4().hex})

    async def status(self, request: web.Request) -> web.Response:
        if self._token(request) is None:
            return self._unauthorized()
        self.counters["status_calls"] += 1
        fault = await self._fault(status_endpoint=True)
        if fault is not None:
            return fault
        task_id = request.match_info["task_id"]
        task = self.tasks.get(task_id)
        if task is None:
            return _error(404, "404", "task not found")
        state = task.state(time.monotonic(), self.config.pending_fraction)
        payload: dict[str, Any] = {self.config.id_field: task_id, "status": state}
        if state == "completed":
            payload.update(self._result(task_id, task, f"{request.scheme}://{request.host}"))
        elif state == "failed":
            code = errors.GENERATION_ERROR
            payload["error"] = {"code": code, "message": errors.message_for(code)}
        return self._answer(payload)

    async def file(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["task_id"])
        index = int(request.match_info["index"])
        now, fraction = time.monotonic(), self.config.pending_fraction
        if task is None or index >= task.image_count or task.state(now, fraction) != "completed":
            return _error(404, "404", "file not found")
        self.counters["downloads"] += 1
        return web.Response(body=sim_images.png_for(task.size, index), content_type="image/png")

    # --- admin (no auth) -------------------------------------------------------------------
    async def stats(self, request: web.Request) -> web.Response:
        now, fraction = time.monotonic(), self.config.pending_fraction
        by_state = dict.fromkeys(("pending", "processing", "completed", "failed"), 0)
        images = 0
        for task in self.tasks.values():
            state = task.state(now, fraction)
            by_state[state] += 1
            images += task.image_count if state == "completed" else 0
        final = {"completed": by_state["completed"], "failed": by_state["failed"]}
        return web.json_response(
            {
                **self.counters,
                "faults": dict(self.faults),
                "tasks": len(self.tasks),
                "tasks_by_state": by_state,
                "tasks_by_final_state": final,
                "images_completed": images,
            }
        )

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config.public())

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of SimConfig fields")
            unknown = set(changes) - set(_FIELD_TYPES)
            if unknown or ROUTE_FIELDS & set(changes):
                fixed = ROUTE_FIELDS & set(changes)
                raise ValueError(f"unknown or fixed fields: {sorted(unknown | fixed)}")
            values = {name: _coerce(name, value) for name, value in changes.items()}
            self.config = _checked(dataclasses.replace(self.config, **values))
        except ValueError as exc:
            return _error(400, "400", str(exc))
        if "seed" in changes:
            self.rng.seed(self.config.seed)
        log.info("config changed: %s", sorted(changes))
        return web.json_response(self.config.public())

    async def task(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        task = self.tasks.get(task_id)
        if task is None:
            return _error(404, "404", "task not found")
        now = time.monotonic()
        state = task.state(now, self.config.pending_fraction)
        # Wall-clock instants (epoch seconds), comparable with the times wanq records: when
        # the task was created and when it finishes (its outcome is fixed at creation).
        created_at = time.time() - (now - task.created)
        return web.json_response(
            {
                "task_id": task_id,
                "state": state,
                "request": task.request,
                "image_count": task.image_count,
                "key_in_body": task.key_in_body,
                "created_at": created_at,
                "completes_at": created_at + task.latency,
            }
        )


SIMULATOR = web.AppKey("simulator", Simulator)


def build_app(config: SimConfig) -> web.Application:
    """The simulator as an aiohttp application (routes from the config's paths)."""
    sim = Simulator(config)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SIMULATOR] = sim
    app.router.add_post(config.create_path, sim.create)
    app.router.add_get(config.status_path, sim.status)
    app.router.add_get(r"/files/{task_id}/{index:\d+}.png", sim.file)
    app.router.add_get("/_sim/stats", sim.stats)
    app.router.add_get("/_sim/config", sim.get_config)
    app.router.add_post("/_sim/config", sim.set_config)
    app.router.add_get("/_sim/tasks/{task_id}", sim.task)
    return app


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _write_ready(path: str, address: str) -> None:
    # write-then-rename: a poller never reads a half-written address
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(address)
    os.replace(tmp, path)


async def _serve(
    host: str, port: int, config: SimConfig, ready_file: str | None, state_file: str | None = None
) -> None:
    app = build_app(config)
    if state_file:
        app[SIMULATOR].tasks.update(load_tasks(state_file))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = _bind(host, port)
    await web.SockSite(runner, sock, backlog=1024).start()
    address = "{}:{}".format(*sock.getsockname()[:2])
    log.info("wan26_i2i simulator listening on %s with %s", address, config.public())
    if ready_file:
        _write_ready(ready_file, address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if state_file:
            save_tasks(state_file, app[SIMULATOR].tasks)


def save_tasks(path: str, tasks: Mapping[str, Task]) -> None:
    """Every task as JSON, its monotonic creation time as wall time (write-then-rename)."""
    offset, now = time.time() - time.monotonic(), time.monotonic()
    rows = {
        task_id: {
            **{f.name: getattr(task, f.name) for f in fields(Task)},
            "created": task.created + offset,
        }
        for task_id, task in tasks.items()
        if now - task.created - task.latency < STATE_KEEP_SECONDS
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(rows, handle)
    os.replace(tmp, path)
    log.info("%d tasks kept in %s", len(rows), path)


def load_tasks(path: str) -> dict[str, Task]:
    """The tasks ``save_tasks`` wrote, on this process's monotonic clock; none if unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            rows = json.load(handle)
    except (OSError, ValueError):
        return {}
    offset = time.time() - time.monotonic()
    tasks = {}
    for task_id, row in rows.items():
        row = {**row, "created": row["created"] - offset, "size": tuple(row["size"])}
        tasks[task_id] = Task(**row)
    log.info("%d tasks read back from %s", len(tasks), path)
    return tasks


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    config: SimConfig | None = None,
    ready_file: str | None = None,
    state_file: str | None = None,
) -> None:
    """Run the simulator until SIGINT/SIGTERM; port 0 picks a free port.

    ``ready_file`` receives ``host:port`` once the socket listens, so tests and scripts can
    wait for readiness instead of sleeping.
    """
    asyncio.run(_serve(host, port, config or SimConfig(), ready_file, state_file))


def main(argv: list[str] | None = None) -> None:
    """``python -m ops.simulator``: configuration comes from ``WANQ_SIM_*`` variables."""
    parser = argparse.ArgumentParser(prog="python -m ops.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--ready-file", help="write host:port here once listening")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = config_from_env(os.environ)
    except ValueError as exc:
        parser.error(str(exc))
    serve(args.host, args.port, config, args.ready_file, os.environ.get(STATE_FILE_VARIABLE))


if __name__ == "__main__":
    main()
