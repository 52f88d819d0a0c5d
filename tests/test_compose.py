"""docker-compose.yml, the Dockerfile and ops/README.md, checked without a Docker engine.

- The compose file is validated by ``docker-compose config`` (Debian's docker-compose 1.29,
  which validates against the compose spec and interpolates variables offline); skipped with
  the reason when it is not installed.
- Every service command is a real entry point of this project: ``celery -A workers.app ...``
  parsed by Celery's own command line against the real app (each ``-Q`` queue is one of the
  app's queues), ``wanq ...`` parsed by the ``wanq`` command line. The same holds for every
  ``wanq``/``celery`` command in ops/README.md and in the compose file's comments.
- No secret is written in the files: passwords and keys come from ``${VARIABLES}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
RUNBOOK = ROOT / "ops" / "README.md"

# What `docker-compose config` is given; distinct values, to find them in its output.
REQUIRED_ENV = {
    "REDIS_PASSWORD": "redis-pw-5a1f",
    "FLOWER_USER": "flower-user-77",
    "FLOWER_PASSWORD": "flower-pw-c3d9",
    "WANQ_API_KEY": "sk-compose-test-8b2e",
}
ALL_SERVICES = {"redis", "worker-create", "worker-poll", "flower", "metrics", "sim", "producer"}
DEFAULT_SERVICES = {"redis", "worker-create", "worker-poll", "flower", "metrics"}
WORKERS = ("worker-create", "worker-poll")

SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN|AUTH", re.IGNORECASE)
REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?])[^}]*)?\}")
SECRET_OPTIONS = {"--requirepass", "-a", "--pass", "--password", "--basic-auth", "--basic_auth"}
URL_PASSWORD = re.compile(r"://[^/@\s:]*:([^@/]+)@")
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "(", ")"}


# --- the files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


# --- the real validator: docker-compose config -----------------------------------------------


def run_compose(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip(
            "docker-compose is not installed (Debian: apt-get install --no-install-recommends "
            "docker-compose); it validates the compose file offline"
        )
    empty = tmp_path / "empty.env"  # no .env of the developer's leaks in
    empty.write_text("")
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    clean["LANG"] = "C.UTF-8"
    files = ["--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file", str(empty)]
    return subprocess.run(
        [exe, *files, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    done = run_compose(tmp_path, REQUIRED_ENV, "--profile", "sim", "--profile", "tools", "config")
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    assert set(resolved) == ALL_SERVICES
    url = f"redis://:{REQUIRED_ENV['REDIS_PASSWORD']}@redis:6379/0"
    for name in (*WORKERS, "flower", "metrics", "producer"):
        assert resolved[name]["environment"]["WANQ_REDIS_URL"] == url, name
    for name in WORKERS:
        assert resolved[name]["environment"]["WANQ_API_KEY"] == REQUIRED_ENV["WANQ_API_KEY"]
    for name in ("flower", "metrics", "producer", "sim", "redis"):  # the key: workers only
        assert REQUIRED_ENV["WANQ_API_KEY"] not in str(resolved[name]), name


@pytest.mark.parametrize("missing", ["REDIS_PASSWORD", "FLOWER_USER", "FLOWER_PASSWORD"])
def test_docker_compose_refuses_to_run_without_a_password(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in REQUIRED_ENV.items() if k != missing}
    done = run_compose(tmp_path, env, "config", "-q")
    assert done.returncode != 0
    assert f"set {missing}" in done.stderr


# --- the commands are entry points of this project -------------------------------------------


@dataclasses.dataclass
class Parsed:
    program: str  # "celery" or "wanq"
    subcommand: str
    params: dict[str, Any]
    rest: list[str]  # arguments left to the subcommand (celery control/inspect, flower)
    app: Any = None


def _split(group: click.Group, ctx: click.Context, args: list[str]) -> tuple[str, Any, list]:
    # click 8 keeps the subcommand's name apart (protected args); click 9 leaves all in args
    rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
    name, command, rest = group.resolve_command(ctx, rest)
    if command is None:
        raise click.UsageError(f"no such command {name!r}")
    return name, command, rest


def parse(words: list[str]) -> Parsed:
    """Parse a command line with the real command line interface; raises on any error."""
    program = Path(words[0]).name
    if program == "wanq":
        from ops.cli import main

        ctx = main.make_context("wanq", words[1:])
        name, command, rest = _split(main, ctx, words[1:])
        sub = command.make_context(name, rest, parent=ctx)
        if name == "worker":  # `wanq worker OPTS` runs `celery -A workers.app worker OPTS`
            return parse(["celery", "-A", "workers.app", "worker", *sub.params["celery_options"]])
        return Parsed("wanq", name, sub.params, sub.args)
    if program == "celery":
        from celery.app.utils import find_app
        from celery.bin.base import CLIContext
        from celery.bin.celery import celery

        ctx = celery.make_context("celery", words[1:])
        app = find_app(ctx.params["app"])
        ctx.obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if rest[:1] == ["flower"]:  # a plugin, installed in the image: see test_flower_options
            return Parsed("celery", "flower", {}, rest[1:], app)
        name, command, rest = _split(celery, ctx, words[1:])
        sub = command.make_context(name, rest, parent=ctx)
        return Parsed("celery", name, sub.params, sub.args, app)
    raise AssertionError(f"{words[0]}: not a wanq or celery command")


def check_celery(parsed: Parsed) -> None:
    from celery.worker.control import Panel

    import workers.app

    assert parsed.app is workers.app.app, "celery -A must name workers.app"
    queues = {q.name for q in parsed.app.conf.task_queues}
    if parsed.subcommand == "worker":
        for queue in parsed.params["queues"] or []:
            assert queue in queues, f"-Q {queue}: not one of the app's queues {sorted(queues)}"
    elif parsed.subcommand in ("control", "inspect"):
        action = parsed.params["command"]
        meta = Panel.meta.get(action)
        assert meta is not None and meta.type == parsed.subcommand, f"no {action!r} command"
        if action in ("cancel_consumer", "add_consumer"):
            assert parsed.rest and parsed.rest[0] in queues, f"{action}: unknown queue"


def test_every_service_command_is_an_entry_point(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name == "redis":
            continue
        words = argv(service["command"])
        if words[-1] == "--help":  # prints the help and exits 0: see the producer test
            continue
        parsed = parse(words)
        if parsed.program == "celery":
            check_celery(parsed)


def test_the_workers_consume_every_queue_of_the_app(services: dict[str, dict[str, Any]]) -> None:
    import workers.app

    consumed: list[str] = []
    for name in WORKERS:
        parsed = parse(argv(services[name]["command"]))
        assert parsed.subcommand == "worker", name
        check_celery(parsed)
        consumed += parsed.params["queues"]
        assert parsed.params["hostname"], name
    assert sorted(consumed) == sorted(q.name for q in workers.app.app.conf.task_queues)
    create, poll = (argv(services[name]["command"]) for name in WORKERS)
    assert create[create.index("--hostname") + 1] == "create@%h"
    assert poll[poll.index("--hostname") + 1] == "poll@%h"


def test_flower_options(services: dict[str, dict[str, Any]]) -> None:
    pytest.importorskip("flower", reason="flower is installed in the image, not in .venv")
    from celery.bin.celery import celery
    from flower.options import default_options

    assert "flower" in celery.commands  # the plugin's entry point

    parsed = parse(argv(services["flower"]["command"]))
    assert parsed.subcommand == "flower"
    for arg in parsed.rest:
        option = arg.lstrip("-").partition("=")[0].replace("-", "_")
        assert option in default_options, f"flower has no option {arg}"
    assert "broker_api" not in " ".join(parsed.rest)  # RabbitMQ's management API only
    for var in environment(services["flower"]):
        if var.startswith("FLOWER_"):
            assert var.removeprefix("FLOWER_").lower() in default_options, var


def is_program(word: str) -> bool:
    """``wanq`` or ``celery``, bare or from a bin directory (``.venv/bin/wanq``)."""
    return word in ("wanq", "celery") or word.endswith(("/bin/wanq", "/bin/celery"))


def commands_in(lines: list[str]) -> Iterator[list[str]]:
    """The wanq and celery command lines among shell ``lines`` (pipes, redirections cut)."""
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        start = next((i for i, w in enumerate(words) if is_program(w)), None)
        if start is None:
            continue
        end = next((i for i, w in enumerate(words) if i > start and w in SHELL_OPERATORS), None)
        yield words[start:end]


def runbook_lines() -> list[str]:
    """Every line of the runbook's fenced code blocks that is not a comment."""
    text = RUNBOOK.read_text(encoding="utf-8")
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    joined = "\n".join(blocks).replace("\\\n", " ")  # shell line continuations
    lines = [line.strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def compose_comment_lines() -> list[str]:
    """The ``docker compose ...`` examples in the compose file's comments."""
    lines = []
    for line in COMPOSE.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("#") and text.lstrip("# ").startswith("docker compose"):
            lines.append(text.lstrip("# "))
    return lines


def test_the_compose_comments_show_real_commands() -> None:
    commands = list(commands_in(compose_comment_lines()))
    assert any(words[:2] == ["wanq", "submit"] for words in commands)
    for words in commands:
        parsed = parse(words)
        if parsed.program == "celery":
            check_celery(parsed)


def test_the_runbook_shows_real_commands() -> None:
    commands = list(commands_in(runbook_lines()))
    assert len(commands) >= 10
    for words in commands:
        try:
            parsed = parse(words)
        except click.ClickException as exc:
            raise AssertionError(f"{shlex.join(words)}: {exc.format_message()}") from exc
        if parsed.program == "celery":
            check_celery(parsed)


def test_the_producer_default_command_prints_help(services: dict[str, dict[str, Any]]) -> None:
    words = argv(services["producer"]["command"])
    assert words == ["wanq", "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(click.exceptions.Exit) as stop:
        parse(words)
    assert stop.value.exit_code == 0
    assert "submit" in out.getvalue()


# --- no secret in the files ------------------------------------------------------------------


def secret_problems(where: str, value: str, secret: bool = False) -> list[str]:
    """What in ``value`` looks like a written-out secret; ``secret``: the whole value is one."""
    problems = []
    for password in URL_PASSWORD.findall(value):
        if not REFERENCE.fullmatch(password):
            problems.append(f"{where}: password written in a URL")
    if secret and re.search(r"[A-Za-z0-9]", REFERENCE.sub("", value)):
        problems.append(f"{where}: secret written out instead of a ${{VARIABLE}}")
    return problems


def command_problems(where: str, words: list[str]) -> list[str]:
    problems = []
    for i, word in enumerate(words):
        option, eq, inline = word.partition("=")
        if option in SECRET_OPTIONS:
            value = inline if eq else (words[i + 1] if i + 1 < len(words) else "")
            problems += secret_problems(f"{where} {option}", value, secret=True)
        problems += secret_problems(where, word)
    return problems


def compose_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    for name, service in services.items():
        for var, value in environment(service).items():
            problems += secret_problems(f"{name}.{var}", value, bool(SECRET_NAME.search(var)))
        for key in ("command", "entrypoint"):
            if key in service:
                problems += command_problems(f"{name}.{key}", argv(service[key]))
        test = (service.get("healthcheck") or {}).get("test") or []
        problems += command_problems(f"{name}.healthcheck", argv(test))
    return problems


def test_no_secret_is_written_in_the_compose_file(services: dict[str, dict[str, Any]]) -> None:
    assert compose_problems(services) == []


@pytest.mark.parametrize(
    "service",
    [
        {"environment": {"WANQ_REDIS_URL": "redis://:hunter2@redis:6379/0"}},
        {"environment": {"WANQ_API_KEY": "sk-live-1234"}},
        {"environment": ["FLOWER_BASIC_AUTH=admin:${FLOWER_PASSWORD}"]},
        {"command": "redis-server --requirepass hunter2"},
        {"command": ["celery", "flower", "--basic-auth=admin:admin"]},
        {"healthcheck": {"test": ["CMD", "redis-cli", "-a", "hunter2", "ping"]}},
    ],
)
def test_the_secret_check_catches_written_secrets(service: dict[str, Any]) -> None:
    assert compose_problems({"bad": service}) != []


def test_no_secret_is_baked_into_the_image() -> None:
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not line.lstrip().startswith("#"):
            assert not SECRET_NAME.search(line), line


# --- the shape the runbooks rely on ----------------------------------------------------------


def test_every_wanq_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    from workers.config import Settings

    known = {"WANQ_" + f.name.upper() for f in dataclasses.fields(Settings)}
    for name, service in services.items():
        for var in environment(service):
            if var.startswith("WANQ_"):
                assert var in known, f"{name}: {var} is not a wanq setting"


def test_workers_scale_and_stop_warm(services: dict[str, dict[str, Any]]) -> None:
    for name in WORKERS:
        worker = services[name]
        assert "container_name" not in worker and "ports" not in worker, name
        assert worker["restart"] == "unless-stopped"
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
        grace = re.fullmatch(r"(\d+)(s|m)", worker["stop_grace_period"])
        assert grace and int(grace[1]) * (60 if grace[2] == "m" else 1) >= 60
        env = environment(worker)
        assert env["WANQ_ARCHIVE_DIR"] == "/archive"
        assert "archive:/archive" in worker["volumes"]
        assert env["WANQ_PROVIDER_URL"] == "${WANQ_PROVIDER_URL:-http://sim:8765}"


def test_one_image_and_no_beat(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == ALL_SERVICES
    assert services["redis"]["image"] == "redis:7"
    for name, service in services.items():
        assert "beat" not in argv(service.get("command") or []), name
        if name != "redis":
            assert service["image"] == "wanq:latest" and service["build"] == ".", name
    assert {name for name, svc in services.items() if "profiles" not in svc} == DEFAULT_SERVICES
    assert services["sim"]["profiles"] == ["sim"]
    assert services["producer"]["profiles"] == ["tools"]
    assert "./batches:/batches" in " ".join(services["producer"]["volumes"])
    # published on the host's loopback unless FLOWER_BIND says otherwise (issue 13)
    assert [str(p) for p in services["flower"]["ports"]] == ["${FLOWER_BIND:-127.0.0.1}:5555:5555"]
    assert {"redis-data", "archive", "flower-data"} <= set(compose["volumes"])


def test_redis_keeps_an_append_only_file_behind_a_password(
    services: dict[str, dict[str, Any]],
) -> None:
    redis = services["redis"]
    words = argv(redis["command"])
    assert words[words.index("--appendonly") + 1] == "yes"
    assert words[words.index("--requirepass") + 1] == "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
    assert "ping" in " ".join(argv(redis["healthcheck"]["test"]))
    assert environment(redis)["REDISCLI_AUTH"] == "${REDIS_PASSWORD}"
    assert "redis-data:/data" in redis["volumes"]


def project_dependencies() -> list[str]:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]["dependencies"]


def test_the_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert not any(line.startswith("ENTRYPOINT") for line in lines)
    assert lines[-1] == 'CMD ["wanq", "--help"]'
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    install = " ".join(lines)
    assert "pip install ." in install
    # the flower service runs `celery ... flower`: Flower must be one of the package's deps
    assert "flower" in argv(services["flower"]["command"])
    assert any(dep.startswith("flower") for dep in project_dependencies())
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".wanq", ".git", ".env"} <= set(ignored)
