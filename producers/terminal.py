"""The two consoles every ``wanq`` command writes to: progress and messages on stderr, data
(results, JSON, tables asked for) on stdout."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)
if not console.is_terminal:  # logs and CI: room for the progress line's counts
    console = Console(stderr=True, soft_wrap=True, width=160)
out = Console(soft_wrap=True)
