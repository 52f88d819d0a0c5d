"""The benchmark runs end to end at its tiny size and writes a report of the right shape.

Only the shape is checked: the figures' values depend on the machine, so none is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ops.bench.report import REQUIRED

ROOT = Path(__file__).resolve().parent.parent
PARAMETERS = ("jobs", "latency", "cap", "workers", "mode")


def test_tiny_run_writes_every_figure(tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.bench",
            "--quick",
            "--tiny",
            "--json",
            str(out_json),
            "--md",
            str(out_md),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    report = json.loads(out_json.read_text())
    figures = report["figures"]
    for key in REQUIRED:
        figure = figures[key]
        assert isinstance(figure["value"], int | float), key
        assert not isinstance(figure["value"], bool), key
        assert isinstance(figure["met"], bool), key
        assert isinstance(figure["unit"], str) and figure["unit"], key
        assert figure["target"], key
    for figure in figures.values():  # the extra figures have the same shape
        assert set(figure) >= {"value", "unit", "target", "met"}
    for name in PARAMETERS:
        assert name in report["parameters"], name
    assert report["parameters"]["mode"] in ("quick", "full")

    markdown = out_md.read_text()
    assert "| figure | value | target | met |" in markdown
    assert all(f"`{key}`" in markdown for key in REQUIRED)
    assert "## What bounds each figure" in markdown
