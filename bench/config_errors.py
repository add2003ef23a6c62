"""Host: CPU of a config error's parse and its operator-facing text.

    .venv/bin/python bench/config_errors.py [--rounds 5]

bench/scale.py's 10,000-server config (100 services x 100 real servers),
three ways: as it is; with one mistake (weight = 70000 in a real server near
the end); with one mistake repeated in every real server (forward = "nat",
10,000 errors alike). For each: the CPU time (process time, best of
--rounds, each after a fresh _Remembered) of parse_config up to its
ConfigError and the text `directord --check` prints (str() of the error,
whose lines are `named_errors`), the number of errors and of printed lines,
and the first lines printed. No kernel is needed: it runs on the host.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).parent))

import common
import scale

import director.config.parse as parse
from director.config import ConfigError, parse_config
from director.ipvs.facts import NO_MODULES

REAL_SERVER = "[[virtual_server.real_server]]"


def texts() -> dict[str, str]:
    load = scale.Load(100, 100, common.TcpTiming(1.0, 1.0, 1, 2))
    good = common.directord_config(load.virtual_services(), load.timing, Path("/tmp/cfgerrors"))
    lines = good.split("\n")
    at = max(i for i, line in enumerate(lines[:-100]) if line == REAL_SERVER)
    one = "\n".join([*lines[: at + 2], "weight = 70000", *lines[at + 2 :]])
    alike: list[str] = []
    for i, line in enumerate(lines):
        alike.append(line)
        if i > 0 and lines[i - 1] == REAL_SERVER:
            alike.append('forward = "nat"')
    return {"good": good, "one error": one, "10,000 alike": "\n".join(alike)}


def measure(text: str) -> tuple[float, ConfigError | None, str]:
    parse._REMEMBERED = parse._Remembered()
    start = time.process_time()
    try:
        parse_config(text, "director.toml", NO_MODULES)
    except ConfigError as error:
        printed = str(error)
        return time.process_time() - start, error, printed
    return time.process_time() - start, None, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for name, text in texts().items():
        runs = [measure(text) for _ in range(args.rounds)]
        best = min(cpu for cpu, _, _ in runs)
        _, error, printed = runs[-1]
        errors = len(error.errors) if error is not None else 0
        lines = printed.count("\n")
        print(
            f"{name}: best of {args.rounds} {best * 1000:.1f} ms CPU, {errors} errors, "
            f"{lines} lines printed"
        )
        for line in printed.split("\n")[1:5]:
            print(f"    {line[:160]}")


if __name__ == "__main__":
    main()
