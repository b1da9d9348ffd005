"""
Import time: ``import pixelbyte_async`` vs ``import aiohttp``, in fresh interpreters.

Alternates the two imports in new processes (so neither benefits from a warm cache
more than the other) and compares medians.  Target: ratio <= 1.5.  Writes
bench/results/import.json.

    python bench/bench_import.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def timed_import(module: str) -> float:
    """Seconds to import *module* in a fresh interpreter (interpreter start excluded)."""
    code = (
        "import time; t = time.perf_counter(); "
        f"import {module}; print(time.perf_counter() - t)"
    )
    out = subprocess.run(  # noqa: S603 -- our own interpreter and a fixed module name
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def main(rounds: int) -> dict[str, float]:
    sdk, bare = [], []
    for _ in range(rounds):
        bare.append(timed_import("aiohttp"))
        sdk.append(timed_import("pixelbyte_async"))
    return {
        "aiohttp_ms_median": statistics.median(bare) * 1000,
        "pixelbyte_async_ms_median": statistics.median(sdk) * 1000,
        "ratio": statistics.median(sdk) / statistics.median(bare),
        "rounds": rounds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    res = main(parser.parse_args().rounds)
    (Path(__file__).parent / "results" / "import.json").write_text(
        json.dumps(res, indent=2) + "\n"
    )
    print(
        f"import aiohttp {res['aiohttp_ms_median']:.1f} ms, import pixelbyte_async "
        f"{res['pixelbyte_async_ms_median']:.1f} ms, ratio {res['ratio']:.2f}"
    )
    print("verdict:", "OK (<= 1.5)" if res["ratio"] <= 1.5 else "ABOVE TARGET 1.5")
