"""The entry module ``celery -A workers.app worker`` names (with no other flags it consumes
every queue).

Importing it reads nothing: ``app`` is built from the ``WANQ_`` environment on first access
(PEP 562), which is when Celery's ``-A`` loader asks for it. Code that holds its own settings
calls ``workers.worker.make_app(settings)`` instead.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery

from workers import config
from workers.worker import make_app


@functools.cache
def _app() -> Celery:
    return make_app(config.load())


def __getattr__(name: str) -> Any:
    if name == "app":
        return _app()
    raise AttributeError(name)
