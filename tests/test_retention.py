"""
Runs for months (issue 15): nothing is kept per finished job.

After many finished jobs, the client's per-job structures are back to their
baseline, or bounded by the claim window, pruned by time: no timing involved.
"""

from __future__ import annotations

import asyncio

import pytest
from pixelbyte_async import KlingO1StartEndFrame, PixelByte

from conftest import bound_client


pytestmark = pytest.mark.anyio


def kling(n: int) -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg", prompt=str(n)
    )


def sizes(pb: PixelByte) -> dict[str, int]:
    """Every structure of the client that could grow with the jobs it ran."""
    reconciler = pb._reconciler
    return {
        "slots.jobs": len(pb._slots.jobs),
        "slots.used": pb._slots.used,
        "claims": len(reconciler.claims),
        "unresolved": len(reconciler.unresolved),
        "in_flight": len(reconciler.in_flight),
        "header_cache": len(pb._pipeline._header_cache),
    }


async def test_finished_jobs_leave_nothing_behind(fake) -> None:
    async with bound_client(fake, max_concurrent_jobs=50, claim_window=86_400) as pb:
        await (await pb.submit(kling(-1))).wait()
        baseline = sizes(pb)
        for round_ in range(4):
            jobs = await asyncio.gather(
                *(pb.submit(kling(round_ * 100 + n)) for n in range(100))
            )
            await asyncio.gather(*(job.wait() for job in jobs))
        during = sizes(pb)
        # In flight: nothing; claims: bounded by the window, not yet pruned.
        assert during["slots.jobs"] == during["slots.used"] == 0
        assert during["claims"] == 401
        # Past the claim window, one more job prunes every older claim.
        fake.advance(pb._reconciler.claims.retention + 1)
        await (await pb.submit(kling(999))).wait()
        assert sizes(pb) == baseline


async def test_reconcile_cost_does_not_grow_with_claims(fake, monkeypatch) -> None:
    """Reconcile consults claims by lookup; it never copies them."""
    async with bound_client(fake) as pb:
        jobs = await asyncio.gather(*(pb.submit(kling(n)) for n in range(20)))
        await asyncio.gather(*(job.wait() for job in jobs))
        claims = pb._reconciler.claims
        copied = []
        monkeypatch.setattr(
            type(claims), "__iter__", lambda self: copied.append(1), raising=False
        )
        from pixelbyte_async import AmbiguousSubmitError

        error = AmbiguousSubmitError(
            "x",
            model=kling(0).model_slug,
            input={},
            webhook_url=None,
            started_at=fake.clock.time() - 3600,
        )
        assert await pb.reconcile(error) is None
        assert copied == []


async def test_claim_window_follows_a_long_settle_horizon(fake) -> None:
    """A long horizon widens the default window; an explicit short one is refused."""
    from pixelbyte_async import ValidationError

    async with bound_client(fake, settle=1800) as pb:
        assert pb._reconciler.claims.retention == 2 * 1800 + 120
    with pytest.raises(ValidationError, match="claim_window"):
        bound_client(fake, settle=1800, claim_window=3600)
