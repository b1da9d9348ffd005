"""
Start-up: what a user of the SDK and of its command line waits for, in fresh interpreters.

Two comparisons, each against a baseline measured in the same rounds:

* ``from pixelbyte_async import PixelByte`` (what every user does: the client, and
  aiohttp under it) vs ``import aiohttp`` alone; interpreter start excluded.
  ``import pixelbyte_async`` alone is reported too: it loads the client on first use,
  so on its own it says little.  Target: ratio <= 1.3.
* ``python -m pixelbyte_async --help`` vs ``python -c pass`` and ``python -m
  json.tool --help`` (a small standard-library command line): wall time of the whole
  process, interpreter start included.  Target: ``--help`` <= 150 ms.

Every round runs each measurement once, in new processes (so none benefits from a
warm cache more than another), in an order reversed every other round; medians are
compared.  Writes bench/results/import.json.

Compiled bytecode is cached, as for an installed package (pip compiles it): the
children write and read it under a temporary ``PYTHONPYCACHEPREFIX``, filled by one
warm-up round, even where ``PYTHONDONTWRITEBYTECODE`` is set (as in this repo's
sandboxes, where an editable checkout would otherwise be compiled from source on
every import while aiohttp's wheel has its .pyc files).  ``--from-source`` keeps the
environment's setting instead.

    python bench/bench_import.py [--rounds 15] [--from-source]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


RATIO_TARGET = 1.3
HELP_TARGET_MS = 150.0

#: The children's environment (see the docstring): set by `main`.
ENV = dict(os.environ)


def timed_import(statement: str) -> float:
    """Seconds *statement* takes in a fresh interpreter (interpreter start excluded)."""
    code = (
        "import time; t = time.perf_counter()\n"
        f"{statement}\n"
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run(  # noqa: S603 -- our own interpreter and a fixed statement
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=ENV,
    )
    return float(out.stdout.strip())


def timed_process(*args: str) -> float:
    """Seconds a whole ``python *args`` takes, start to exit, its output discarded."""
    start = time.perf_counter()
    subprocess.run(  # noqa: S603 -- our own interpreter and fixed arguments
        [sys.executable, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        env=ENV,
    )
    return time.perf_counter() - start


MEASURES: dict[str, Callable[[], float]] = {
    "import_aiohttp": lambda: timed_import("import aiohttp"),
    "from_pixelbyte_async_import_PixelByte": lambda: timed_import(
        "from pixelbyte_async import PixelByte"
    ),
    "import_pixelbyte_async": lambda: timed_import("import pixelbyte_async"),
    "python_c_pass": lambda: timed_process("-c", "pass"),
    "json_tool_help": lambda: timed_process("-m", "json.tool", "--help"),
    "pixelbyte_async_help": lambda: timed_process("-m", "pixelbyte_async", "--help"),
}


def main(rounds: int, *, from_source: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench_import_pyc_") as cache:
        if not from_source:
            ENV.pop("PYTHONDONTWRITEBYTECODE", None)
            ENV["PYTHONPYCACHEPREFIX"] = cache
            for measure in MEASURES.values():  # warm-up: compile once, not measured
                measure()
        res = _rounds(rounds)
    res["bytecode_cached"] = not from_source
    return res


def _rounds(rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in MEASURES}
    for n in range(rounds):
        order = list(MEASURES) if n % 2 == 0 else list(reversed(MEASURES))
        for name in order:
            samples[name].append(MEASURES[name]())
    res: dict[str, float] = {
        f"{name}_ms_median": statistics.median(values) * 1000
        for name, values in samples.items()
    }
    res["ratio"] = (
        res["from_pixelbyte_async_import_PixelByte_ms_median"]
        / res["import_aiohttp_ms_median"]
    )
    res["bare_import_ratio"] = (
        res["import_pixelbyte_async_ms_median"] / res["import_aiohttp_ms_median"]
    )
    res["help_over_python_ms"] = (
        res["pixelbyte_async_help_ms_median"] - res["python_c_pass_ms_median"]
    )
    res["rounds"] = rounds
    res["load_average_1min"] = os.getloadavg()[0]
    return res


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--from-source",
        action="store_true",
        help="keep the environment's PYTHONDONTWRITEBYTECODE (no warm-up)",
    )
    options = parser.parse_args()
    res = main(options.rounds, from_source=options.from_source)
    (Path(__file__).parent / "results" / "import.json").write_text(
        json.dumps(res, indent=2) + "\n"
    )
    print(
        f"import aiohttp {res['import_aiohttp_ms_median']:.1f} ms, "
        "from pixelbyte_async import PixelByte "
        f"{res['from_pixelbyte_async_import_PixelByte_ms_median']:.1f} ms, "
        f"ratio {res['ratio']:.2f} (import pixelbyte_async alone "
        f"{res['import_pixelbyte_async_ms_median']:.1f} ms, "
        f"{res['bare_import_ratio']:.2f})"
    )
    print(
        f"pixelbyte-async --help {res['pixelbyte_async_help_ms_median']:.0f} ms, "
        f"python -c pass {res['python_c_pass_ms_median']:.0f} ms, "
        f"python -m json.tool --help {res['json_tool_help_ms_median']:.0f} ms "
        f"(load {res['load_average_1min']:.2f}; bytecode "
        f"{'cached' if res['bytecode_cached'] else 'as the environment says'})"
    )
    ok_import = res["ratio"] <= RATIO_TARGET
    ok_help = res["pixelbyte_async_help_ms_median"] <= HELP_TARGET_MS
    print(
        "verdict:",
        f"import {'OK' if ok_import else 'ABOVE TARGET'} (<= {RATIO_TARGET});",
        f"--help {'OK' if ok_help else 'ABOVE TARGET'} (<= {HELP_TARGET_MS:.0f} ms)",
    )
