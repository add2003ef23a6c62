"""Imports a dependency makes at its top but the daemon may never use.

structlog imports asyncio for its async loggers (`await log.ainfo(...)`),
which directord never calls; asyncio, with what it imports, was 1.5 MiB of
the daemon's RSS (issue 8). Within `standing_in("asyncio")`, an import of
asyncio gets a stand-in module: empty, it imports the real module the first
time an attribute is asked of it (by any thread: one imports, the others
wait) and answers from it from then on. Only the import made inside the
block sees the stand-in: after it, sys.modules holds the real module again
(or none), so every other import, and every submodule import, is an
ordinary one.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.RLock()


class StandIn(types.ModuleType):
    """A module not imported yet: the first attribute asked imports it."""

    def __getattr__(self, name: str) -> object:
        with _lock:
            real = self.__dict__.get("_standin_real")
            if real is None:
                if sys.modules.get(self.__name__) is self:
                    del sys.modules[self.__name__]  # asked within the block
                real = importlib.import_module(self.__name__)
                self.__dict__.update(real.__dict__)
                self.__dict__["_standin_real"] = real
        return getattr(real, name)


def imported(module: types.ModuleType) -> bool:
    """Whether `module` is a real module or a stand-in that has imported one."""
    return not isinstance(module, StandIn) or "_standin_real" in module.__dict__


@contextmanager
def standing_in(*names: str) -> Iterator[None]:
    """Within the block, importing any of `names` (top-level modules not
    imported yet) gives a stand-in; after it, their imports are ordinary."""
    placed = {}
    for name in names:
        if name not in sys.modules and "." not in name:
            placed[name] = sys.modules[name] = StandIn(name)
    try:
        yield
    finally:
        for name, stand_in in placed.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
