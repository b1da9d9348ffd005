"""
CPU pinning shared by the benchmark scripts: a server on the last core, the client
on the others, so that the two do not take turns on one core (less noise).

Imported by the scripts as ``from _pinning import ...`` (a script's own folder is
first on ``sys.path``); its name does not start with ``bench_``, so ``nox -s bench``
does not run it.
"""

from __future__ import annotations

import os


def cpus() -> list[int]:
    """The cores this process may run on, in order (empty where unknown)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def pin_to_last_cpu() -> None:
    """Run this (server) process on the last core only; a ``preexec_fn``."""
    mine = cpus()
    if len(mine) > 1:
        os.sched_setaffinity(0, {mine[-1]})


def pin_client() -> None:
    """Keep this (client) process off the server's core."""
    mine = cpus()
    if len(mine) > 1:
        os.sched_setaffinity(0, set(mine[:-1]))
