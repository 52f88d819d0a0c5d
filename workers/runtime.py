"""What a worker's tasks work with: settings, the store, the provider client, a sender.

Built once per Celery app by ``workers.worker.make_app`` and passed to the task bodies; the
store and the provider client are made on first use, so building a runtime touches nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from workers.config import Settings
from workers.provider import ProviderClient
from workers.schedule import RetryPolicy
from workers.sender import Preparer, Sender
from workers.store import JobStore


@dataclass
class Runtime:
    settings: Settings
    send: Sender
    # renders a message for a step script to push with its step (None: send after the step)
    prepare: Preparer | None = None

    @functools.cached_property
    def store(self) -> JobStore:
        return JobStore.from_settings(self.settings)

    @functools.cached_property
    def provider(self) -> ProviderClient:
        return ProviderClient(self.settings)

    @functools.cached_property
    def retry(self) -> RetryPolicy:
        return RetryPolicy.from_settings(self.settings)

    def create_window(self) -> float:
        """How long a create can be in flight; a claim older than this died between POST and ID."""
        return self.settings.connect_timeout + self.settings.read_timeout + 5.0
