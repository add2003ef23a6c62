"""Hypothesis without deadlines: a deadline is a timed assertion, and these
tests run on shared machines where one example can be slow for reasons of
its own (another VM on the same cores). `parse_threads`: where configload
parsed each config."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import settings

from director import configload
from director.config import Config

settings.register_profile("director", deadline=None)
settings.load_profile("director")


@pytest.fixture
def parse_threads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each of configload's parses ran in the main thread (the
    event loop's), in order."""
    threads: list[bool] = []
    parse = configload.parse_config

    def parse_config(*args: Any) -> Config:
        threads.append(threading.current_thread() is threading.main_thread())
        return parse(*args)

    monkeypatch.setattr(configload, "parse_config", parse_config)
    return threads
