"""
A killed batch leaves at most one submit of unknown fate per model (issue: crash seeds).

Without webhooks, the job list cannot tell apart the jobs of two lost submits of one
model made around the same time: the next run would have to set both rows aside.
So after any kill, only a row whose request was really on the wire may be left
'submitting', and a run that resumes such a row settles it before it sends anything
else of its model (else a second kill would leave two).

The clock stands still (``autojump=False``) until a test moves it: a row an earlier
run left cannot be settled before its horizon, so "nothing else was sent before it
settled" is decided by counting requests, not by timing.  A killed run's job is
made visible before the next run looks for it (its lost submit was answered by the
API, only the answer never arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from pixelbyte_async import (
    BatchItemStatus,
    BatchSummary,
    KlingO1StartEndFrame,
    PixelByte,
    VirtualClock,
    run_batch,
)
from pixelbyte_async._batch import Batch
from pixelbyte_async._journal import read_rows
from pixelbyte_async.testing import FakePixelByte, Fault

from conftest import bound_client, until


pytestmark = pytest.mark.anyio

SUBMIT = "/v1/jobs/submit"
SETTLE = 60.0
ROWS = 3


def kling(n: int) -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url=f"https://e.x/{n}.jpg",
        end_image_url="https://e.x/end.jpg",
        prompt=f"p{n}",
    )


def unsettled(journal: Path) -> list[str]:
    """The prompts of the rows the journal has in 'submitting' (fate unknown)."""
    return sorted(
        str(row.input["prompt"])
        for row in read_rows(journal).values()
        if row.state == "submitting"
    )


def received(fake: FakePixelByte) -> list[str]:
    """The prompts of the submits the fake received, in order."""
    return [r.json["input"]["prompt"] for r in fake.requests_for("POST", SUBMIT)]


def watch_submits(
    pb: PixelByte, journal: Path, monkeypatch: pytest.MonkeyPatch
) -> list[list[str]]:
    """For each submit *pb* sends, the rows 'submitting' in the journal as it goes."""
    seen: list[list[str]] = []
    send = pb.submit

    async def submit(*args: Any, **kwargs: Any) -> Any:
        journal_it = kwargs["on_sending"]  # the batch journals the row in it

        async def then_look(started_at: float) -> None:
            await journal_it(started_at)
            seen.append(unsettled(journal))  # journaled (and synced), about to go

        return await send(*args, **{**kwargs, "on_sending": then_look})

    monkeypatch.setattr(pb, "submit", submit)
    return seen


def batch_of(pb: PixelByte, journal: Path) -> Batch:
    return run_batch(
        pb, [kling(n) for n in range(ROWS)], journal=journal, settle=SETTLE
    )


async def kill(batch: Batch, run: asyncio.Future[BatchSummary]) -> None:
    """The process dies: nothing more is written, requests on the wire stay there."""
    await batch.aclose()
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError, RuntimeError):
        await run


def waiting(batch: Batch) -> bool:
    """Whether rows wait for a row being settled (a paused model)."""
    return any(s.waiting for s in batch.settling)


def on_the_wire(fake: FakePixelByte) -> None:
    """The next submit is held on the wire; its job appears half a second later."""
    fake.inject(Fault.late_create(0.5, answer="hang"), method="POST", path=SUBMIT)


async def killed_with_the_first_submit_on_the_wire(
    fake: FakePixelByte, journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run 1: killed while row 0's submit is on the wire (its job made meanwhile)."""
    on_the_wire(fake)
    async with bound_client(fake, max_concurrent_jobs=ROWS) as pb:
        seen = watch_submits(pb, journal, monkeypatch)
        batch = batch_of(pb, journal)
        run = asyncio.ensure_future(batch.summary())
        await until(lambda: fake.count("POST", SUBMIT) == 1)
        await kill(batch, run)
    fake.advance(1)  # its job is listed now
    assert len(fake.jobs) == 1
    # The rows waiting for the model's send window were never journaled.
    assert seen == [["p0"]]
    assert unsettled(journal) == received(fake) == ["p0"]


@pytest.fixture(name="frozen")
async def _frozen():
    async with FakePixelByte(clock=VirtualClock(autojump=False)) as fake:
        yield fake


def let_time_run(fake: FakePixelByte) -> None:
    """From now on sleepers move the clock; past the left row's horizon at once."""
    assert isinstance(fake.clock, VirtualClock)
    fake.clock.autojump = True
    fake.advance(SETTLE + 1)


async def test_a_resumed_row_settles_before_its_model_sends_again(
    frozen, tmp_path, monkeypatch
):
    """Each submit leaves the row being sent the only one of unknown fate."""
    journal = tmp_path / "j.sqlite"
    await killed_with_the_first_submit_on_the_wire(frozen, journal, monkeypatch)
    async with bound_client(frozen, max_concurrent_jobs=ROWS) as pb:
        seen = watch_submits(pb, journal, monkeypatch)
        batch = batch_of(pb, journal)
        run = asyncio.ensure_future(batch.summary())
        # Time stands still: row 0 cannot be settled before its horizon.  Either
        # another row is sent meanwhile (the bug), or the others wait for it.
        await until(lambda: bool(seen) or waiting(batch))
        assert seen == []
        assert received(frozen) == ["p0"]
        let_time_run(frozen)
        summary = await asyncio.wait_for(run, 60)
    # Had this run died at any submit, one row of unknown fate would be left.
    assert seen == [["p1"], ["p2"]]
    assert summary.completed == ROWS
    assert summary.items[0].resumed
    assert frozen.ledger.double_charged() == []
    assert sorted(frozen.ledger.charges_by_fingerprint().values()) == [1] * ROWS


async def test_killed_twice_then_resumed_nothing_is_set_aside(
    frozen, tmp_path, monkeypatch
):
    """The crash test's seed 123, in one process: two kills, then a clean run."""
    journal = tmp_path / "j.sqlite"
    await killed_with_the_first_submit_on_the_wire(frozen, journal, monkeypatch)
    # Run 2: killed while the next submit of the model is on the wire.
    on_the_wire(frozen)
    async with bound_client(frozen, max_concurrent_jobs=ROWS) as pb:
        batch = batch_of(pb, journal)
        run = asyncio.ensure_future(batch.summary())
        await until(lambda: frozen.count("POST", SUBMIT) == 2 or waiting(batch))
        let_time_run(frozen)
        await until(lambda: frozen.count("POST", SUBMIT) == 2)
        await kill(batch, run)
    frozen.advance(1)
    assert len(frozen.jobs) == 2
    # Row 0 was settled (its job found) before row 1 went out: one unknown left.
    assert unsettled(journal) == ["p1"]
    assert received(frozen) == ["p0", "p1"]
    async with bound_client(frozen, max_concurrent_jobs=ROWS) as pb:
        summary = await asyncio.wait_for(batch_of(pb, journal).summary(), 60)
    statuses = [item.status for item in summary.items]
    assert BatchItemStatus.NEEDS_ATTENTION not in statuses
    assert summary.completed == ROWS
    assert received(frozen) == ["p0", "p1", "p2"]
    assert len(frozen.jobs) == ROWS
    assert frozen.ledger.double_charged() == []
    assert sorted(frozen.ledger.charges_by_fingerprint().values()) == [1] * ROWS


async def test_a_row_is_journaled_when_its_slot_is_free_not_before(fake, tmp_path):
    """
    A row waiting for the client's job slot is not yet 'submitting': its start (the
    settle horizon's origin) is when its request went, not when it began to wait.

    Row 0's job runs past the batch's wait (reported unfinished; it keeps its slot
    until it ends, about 1,000 s later); row 1 waits for that slot meanwhile.
    """
    from pixelbyte_async.testing import JobScript

    fake.set_default_script(JobScript(queue_seconds=1, processing_seconds=2))
    fake.script_next(JobScript(queue_seconds=1, processing_seconds=1000))
    journal = tmp_path / "j.sqlite"
    async with bound_client(fake, max_concurrent_jobs=1) as pb:
        summary = await run_batch(
            pb, [kling(0), kling(1)], journal=journal, wait_timeout=5
        ).summary()
    assert [i.status for i in summary.items] == [
        BatchItemStatus.UNFINISHED,
        BatchItemStatus.COMPLETED,
    ]
    first, second = fake.requests_for("POST", SUBMIT)
    assert second.time - first.time > 900  # it waited for the slot
    started = read_rows(journal)[_key(journal, "p1")].started_at
    assert started is not None
    assert second.time - 1 <= started <= second.time


def _key(journal: Path, prompt: str) -> str:
    (key,) = [k for k, r in read_rows(journal).items() if r.input["prompt"] == prompt]
    return key
