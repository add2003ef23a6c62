"""The config parsed from the event loop: a reload's file, a check-config's
text or file.

What reads files (the config, the kernel's module list) runs in a worker
thread. The parse runs in the loop's own thread when what the last parse
does not remember of the text (parse.unremembered) is at most INLINE_PARSE
characters: a reload of a large file where one service changed parses that
service alone, a few ms. Handed to a worker beside a busy loop, the same
parse got the GIL back one switch interval (5 ms) at a time, and each
hand-over cost its thread more CPU than the parse itself (stop 35: 830-940
ms against 9-10 ms for a one-server reload at 10,000 real servers, in
bench/engine.py). A larger parse goes to a worker thread, where the loop
keeps its turns while it runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import trio

from director.config import Config, parse_config
from director.config.parse import read_config, unremembered
from director.ipvs.facts import KernelModules, kernel_modules

__all__ = ["INLINE_PARSE", "load", "parse"]

# About one service of 600 real servers in the config's usual layout.
INLINE_PARSE = 64 * 1024


async def load(path: str | Path, *, abandon_on_cancel: bool = False) -> tuple[Config, float]:
    """The config in the file at `path`, and the CPU seconds its parse took
    (of the thread that parsed it; the file's read not included). Raises
    ConfigError, also when the file cannot be read. With
    `abandon_on_cancel`, a cancel leaves a worker thread to finish alone
    (trio.to_thread.run_sync's)."""
    text, modules = await trio.to_thread.run_sync(
        _read, str(path), abandon_on_cancel=abandon_on_cancel
    )
    return await parse(text, str(path), modules, abandon_on_cancel=abandon_on_cancel)


async def parse(
    text: str,
    source: str,
    modules: KernelModules | None = None,
    *,
    abandon_on_cancel: bool = False,
) -> tuple[Config, float]:
    """parse_config(text, source, modules), and the CPU seconds it took
    (the choice of where to parse it included). `modules` None: the running
    kernel's, read in a worker thread."""
    if modules is None:
        modules = await trio.to_thread.run_sync(kernel_modules)
    began = time.thread_time()
    inline = unremembered(text) <= INLINE_PARSE
    choice = time.thread_time() - began
    if inline:
        config, seconds = _timed_parse(text, source, modules)
    else:
        config, seconds = await trio.to_thread.run_sync(
            _timed_parse, text, source, modules, abandon_on_cancel=abandon_on_cancel
        )
    return config, choice + seconds


def _read(path: str) -> tuple[str, KernelModules]:
    return read_config(path), kernel_modules()


def _timed_parse(text: str, source: str, modules: KernelModules) -> tuple[Config, float]:
    began = time.thread_time()
    config = parse_config(text, source, modules)
    return config, time.thread_time() - began
