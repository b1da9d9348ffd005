"""
What the settle horizon costs: API requests and (virtual) time per ambiguous submit.

Three cases against FakePixelByte on a virtual clock, for several horizons:

* ``late``: the answer is lost and the backend creates the job 2.5 s later
  (found at an early look);
* ``none``: the submit created nothing (the whole horizon is waited out);
* ``old``: an attempt journaled long ago (one look);
* ``shared``: as ``late``, on an account where another submitter (unknown to
  this ledger) made a job 20 s before: the job list proves nothing, and
  reconcile says so (`ReconcileError`) once the horizon has passed.

Each case is compared with what an immediate, single look would have cost (and
gotten wrong in the ``late`` case).  Writes bench/results/reconcile.json.

    python bench/bench_reconcile.py
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pixelbyte_async import (
    AmbiguousSubmitError,
    KlingO1StartEndFrame,
    PixelByte,
    ReconcileError,
)
from pixelbyte_async.testing import FakePixelByte, Fault


REQUEST = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
)


async def one(case: str, settle: float) -> dict[str, float | int | bool | str]:
    async with (
        FakePixelByte() as fake,
        PixelByte(
            api_key=fake.api_key,
            base_url=fake.url,
            clock=fake.clock,
            settle=settle,
            ledger=None,
        ) as pb,
    ):
        if case == "old":
            error = AmbiguousSubmitError(
                "journaled",
                model=REQUEST.model_slug,
                input=REQUEST.to_input(),
                webhook_url=None,
                started_at=fake.clock.time() - 3600,
            )
        else:
            if case == "shared":
                fake.submit_elsewhere(REQUEST.model_slug, REQUEST.to_input())
                fake.advance(20)
            fault = Fault.drop_before() if case == "none" else Fault.late_create(2.5)
            fake.inject(fault, method="POST", path="/v1/jobs/submit", times=2)
            try:
                await pb.submit(REQUEST)
            except AmbiguousSubmitError as exc:
                error = exc
            else:  # pragma: no cover -- the fault makes it ambiguous
                raise AssertionError("expected an ambiguous submit")
        before = fake.count("GET", "/v1/jobs") + fake.count("GET", "/v1/jobs/*")
        began = fake.clock.time()
        try:
            job = await pb.reconcile(error)
        except ReconcileError:
            found: bool | str = "refused"
        else:
            found = job is not None
        return {
            "requests": fake.count("GET", "/v1/jobs")
            + fake.count("GET", "/v1/jobs/*")
            - before,
            "virtual_seconds": round(fake.clock.time() - began, 1),
            "found": found,
            "charges": sum(1 for e in fake.ledger.entries if e.kind == "charge"),
        }


async def main() -> None:
    results: dict[str, dict[str, dict[str, float | int | bool | str]]] = {}
    for settle in (60.0, 300.0, 900.0):
        results[f"settle={settle:.0f}"] = {
            case: await one(case, settle) for case in ("late", "none", "old", "shared")
        }
    print(f"{'horizon':>12} {'case':>6} {'GETs':>6} {'waited (s)':>11} found")
    for horizon, cases in results.items():
        for case, row in cases.items():
            print(
                f"{horizon:>12} {case:>6} {row['requests']:>6} "
                f"{row['virtual_seconds']:>11} {row['found']}"
            )
    default = results["settle=300"]
    ok = (
        default["late"]["found"] is True
        and default["late"]["charges"] == 1
        and int(default["none"]["requests"]) <= 20
        and default["old"]["requests"] == 1
        and default["shared"]["found"] == "refused"
    )
    print(
        "verdict:",
        "met" if ok else "MISSED",
        "(late job found with one charge; <= 20 requests over the 300 s horizon; "
        "another submitter's job never taken)",
    )
    out = Path(__file__).parent / "results" / "reconcile.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
