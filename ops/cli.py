"""The ``wanq`` command: the batch verbs of ``producers.cli`` plus the commands that start or
look after local processes (``ops.cli_cluster``). The entry point lives here so that
``producers`` never imports ``ops``."""

from __future__ import annotations

from ops.cli_cluster import COMMANDS
from producers.cli import main

for _command in COMMANDS:
    main.add_command(_command)

__all__ = ["main"]

if __name__ == "__main__":
    main()
