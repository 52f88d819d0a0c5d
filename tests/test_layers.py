"""The layering README's "How the code is layered" describes, checked on the source: no import
cycle among wanq's modules, ``workers`` imports neither ``producers`` nor ``ops`` (and
``producers`` never ``ops``), and a ``workers`` module imports only its own layer or those
above it. A new module must be given its layer here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("workers", "producers", "ops")

LAYERS = {
    1: "names errors keys config connection schedule pricing http jobs destination",
    2: "scripts store registries images retention provider netguard webhooks archive account "
    "pacing logs transport messages sender",
    3: "finalize deliveries delivery_threads sweeper batches latency abandoned handover metrics "
    "pump",
    4: "celeryconf event_batches processes runtime polling creating tasks worker",
    5: "app",
}
LAYER = {f"workers.{m}": n for n, names in LAYERS.items() for m in names.split()}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The wanq modules ``path`` imports, at any depth of its code (a function's import
    is an import too)."""
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                named.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
    return {name for name in named if name in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def test_no_import_cycle():
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            pytest.fail("import cycle: " + " -> ".join((*path[path.index(name) :], name)))
        if name in done:
            return
        for imported in sorted(GRAPH[name]):
            visit(imported, (*path, name))
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, ())


@pytest.mark.parametrize(
    ("package", "forbidden"), [("workers", ("producers", "ops")), ("producers", ("ops",))]
)
def test_lower_packages_never_import_higher_ones(package, forbidden):
    wrong = {
        (name, imported)
        for name, imports in GRAPH.items()
        if name.split(".")[0] == package
        for imported in imports
        if imported.split(".")[0] in forbidden
    }
    assert not wrong


def test_every_workers_module_has_a_layer():
    modules = {name for name in MODULES if name.startswith("workers.")}
    assert modules - LAYER.keys() == set(), "give the new module its layer in LAYERS"
    assert LAYER.keys() - modules == set(), "a module in LAYERS no longer exists"


def test_a_workers_module_imports_only_its_layer_and_those_above():
    against = sorted(
        f"{name} (layer {LAYER[name]}) imports {imported} (layer {LAYER[imported]})"
        for name, imports in GRAPH.items()
        if name in LAYER
        for imported in imports
        if imported in LAYER and LAYER[imported] > LAYER[name]
    )
    assert not against


def test_producers_use_workers_layers_1_to_3_and_only_the_send_only_app_above():
    """Producers publish through ``celeryconf.sending_app``; the tasks, the worker and its
    runtime are never theirs to import."""
    above = {
        imported
        for name, imports in GRAPH.items()
        if name.startswith("producers.")
        for imported in imports
        if LAYER.get(imported, 0) > 3
    }
    assert above <= {"workers.celeryconf"}


def test_the_graph_is_read_from_the_source():
    """The store's imports are there: a parse that found nothing would pass every test above."""
    assert {"workers.scripts", "workers.keys"} <= GRAPH["workers.store"]
    assert "workers.messages" in GRAPH["producers.publish"]
    assert LAYER["workers.tasks"] > LAYER["workers.store"]
