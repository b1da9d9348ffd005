"""
The batch under attack (issue 10): late job creation, kills mid-submit, prices above
list, budgets raced by workers, and the closing orphan audit.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from pixelbyte_async import (
    AmbiguousSubmitError,
    BatchItemStatus,
    BudgetExceeded,
    KlingO1StartEndFrame,
    ValidationError,
    run_batch,
)
from pixelbyte_async._journal import read_rows
from pixelbyte_async.testing import FakePixelByte, Fault

from conftest import bound_client, until


pytestmark = pytest.mark.anyio

SUBMIT = "/v1/jobs/submit"


def kling(n: int) -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url=f"https://e.x/{n}.jpg",
        end_image_url="https://e.x/end.jpg",
        prompt=f"p{n}",
    )


def assert_one_charge_each(fake: FakePixelByte, count: int) -> None:
    assert fake.ledger.double_charged() == []
    assert sorted(fake.ledger.charges_by_fingerprint().values()) == [1] * count


async def test_late_creation_in_a_batch_pays_once_per_row(fake, tmp_path):
    """
    Three dropped submits whose jobs appear ~2 s later: 3 rows, 3 charges.

    The first two overlap, so the job list cannot tell their jobs apart: both rows
    are set aside with both jobs as candidates (never re-sent), and the third row
    waits for them; alone in its window, its job is found.
    """
    fake.inject(Fault.late_create(2.0), method="POST", path=SUBMIT, times=3)
    async with bound_client(fake, max_concurrent_jobs=3) as pb:
        summary = await run_batch(
            pb, [kling(n) for n in range(3)], journal=tmp_path / "j.sqlite"
        ).summary()
    assert (summary.completed, summary.needs_attention) == (1, 2)
    assert_one_charge_each(fake, 3)
    assert summary.orphans == ()
    # Every job is in the journal: as a row's, or as a set-aside row's candidate.
    rows = read_rows(tmp_path / "j.sqlite")
    known = {r.job_id for r in rows.values() if r.job_id}
    known.update(c for r in rows.values() for c in r.candidates)
    assert known == set(fake.jobs)


async def test_no_resend_before_the_horizon(fake, tmp_path):
    """A submit that created nothing is re-sent once, only after its horizon."""
    fake.inject(Fault.status(502, "BAD_GATEWAY"), method="POST", path=SUBMIT)
    async with bound_client(fake) as pb:
        began = fake.clock.time()
        summary = await run_batch(
            pb, [kling(0)], journal=tmp_path / "j.sqlite", settle=60
        ).summary()
    submits = fake.requests_for("POST", SUBMIT)
    assert [r.fault for r in submits] == ["status", None]
    assert submits[1].time >= began + 60
    assert summary.completed == 1
    assert_one_charge_each(fake, 1)


async def test_other_rows_go_on_while_one_settles(fake, tmp_path):
    """One row's fate is unknown for minutes: rows of other models go on."""
    fake.inject(Fault.late_create(3000), method="POST", path=SUBMIT)
    pro = [
        KlingO1StartEndFrame(
            image_url=f"https://e.x/{n}.jpg",
            end_image_url="https://e.x/e.jpg",
            pro=True,
        )
        for n in range(3)
    ]
    async with bound_client(fake, max_concurrent_jobs=4) as pb:
        # The autojump clock runs on while real requests are in flight: a generous
        # wait timeout keeps a busy machine from turning that into a timeout.
        batch = run_batch(
            pb,
            [kling(0), *pro],
            journal=tmp_path / "j",
            settle=3600,
            wait_timeout=86_400,
        )
        summary = await batch.summary()
    assert summary.completed == 4
    late = next(
        j
        for j in fake.jobs.values()
        if not j.model.endswith("pro/start-end-frame-to-video")
    )
    submits = fake.requests_for("POST", SUBMIT)
    # The others were sent long before the late job even existed ...
    assert all(r.time < late.created_at for r in submits)
    assert summary.items[0].job_id == late.id
    assert_one_charge_each(fake, 4)  # ... and the late one was never paid twice


async def test_kill_during_a_slow_submit_then_resume_with_defaults(fake, tmp_path):
    """Killed 1 s into a submit the backend completes at 7 s: one charge on resume."""
    journal = tmp_path / "j.sqlite"
    fake.inject(Fault.late_create(7, answer="hang"), method="POST", path=SUBMIT)
    async with bound_client(fake) as pb:
        batch = run_batch(pb, [kling(0)], journal=journal)
        run = asyncio.ensure_future(batch.summary())
        await until(lambda: bool(fake.requests_for("POST", SUBMIT)))
        await asyncio.sleep(0.05)
        await batch.aclose()  # the process dies: the row stays 'submitting'
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            await run
    assert read_rows(journal)[next(iter(read_rows(journal)))].state == "submitting"
    async with bound_client(fake) as pb:
        summary = await run_batch(pb, [kling(0)], journal=journal).summary()
    assert summary.completed == 1
    assert summary.items[0].resumed
    assert fake.count("POST", SUBMIT) == 1
    assert_one_charge_each(fake, 1)


async def test_budget_uses_the_accounts_prices(fake, tmp_path):
    """The account pays 10 % over list: the plan and the limit use the API's price."""
    fake.price_factor = 1.1  # 275,000 per 5 s job instead of 250,000
    async with bound_client(fake, max_concurrent_jobs=10) as pb:
        batch = run_batch(
            pb, [kling(n) for n in range(10)], max_cost_micro_cents=2_500_000
        )
        with pytest.raises(BudgetExceeded):
            await batch.plan()
        await batch.aclose()
        summary = await run_batch(
            pb, [kling(n) for n in range(40)], max_cost_micro_cents=8_000_000, fit=True
        ).summary()
    assert summary.plan.estimate_source == "api"
    assert fake.ledger.charged_micro_cents <= 8_000_000
    assert summary.completed == 29
    assert summary.skipped == 11
    assert {i.skip_reason for i in summary.items if i.skip_reason} == {"budget"}


async def test_budget_is_never_crossed_by_racing_workers(fake, monkeypatch):
    """Prices rise after planning; ten workers race; charges never pass the limit."""
    async with bound_client(fake, max_concurrent_jobs=10) as pb:
        limit = 12 * 250_000
        batch = run_batch(pb, [kling(n) for n in range(12)], max_cost_micro_cents=limit)
        plan = await batch.plan()
        assert plan.within_budget
        fake.price_factor = 1.1  # what the account is charged from now on
        summary = await batch.summary()
    assert fake.ledger.charged_micro_cents <= limit
    assert summary.completed == 10
    assert summary.skipped == 2
    assert summary.cost_micro_cents == fake.ledger.charged_micro_cents


async def test_local_price_table_only_when_the_api_cannot_be_asked(fake):
    fake.inject(
        Fault.status(503, "INTERNAL_ERROR"),
        method="POST",
        path="/v1/jobs/estimate",
        times=None,
    )
    async with bound_client(fake) as pb:
        batch = run_batch(pb, [kling(0)], dry_run=True)
        plan = await batch.plan()
        await batch.aclose()
    assert plan.estimate_source == "local"
    assert "could not be asked" in (plan.estimate_note or "")
    assert plan.estimated_cost_micro_cents == 250_000


async def test_fit_needs_a_budget(pb):
    with pytest.raises(ValidationError):
        run_batch(pb, [kling(0)], fit=True)


async def test_the_closing_audit_counts_other_submitters_jobs(fake, tmp_path):
    """Another app on this machine is explained; another submitter's job is counted."""
    async with bound_client(fake) as pb, bound_client(fake) as neighbour:
        batch = run_batch(pb, [kling(0), kling(1)], journal=tmp_path / "j")
        async with batch:
            await neighbour.submit(kling(98))  # same machine, same ledger
            elsewhere = fake.submit_elsewhere(
                kling(99).model_slug, kling(99).to_input()
            )
            async for _ in batch:
                pass
        summary = await batch.summary()
    assert summary.orphans == ()
    assert [o.job.id for o in summary.others] == [elsewhere.id]
    assert summary.items[0].status is BatchItemStatus.COMPLETED


async def test_the_closing_audit_reports_a_lost_submits_job(fake, tmp_path):
    """A lost submit nobody reconciled made its job during the run: an orphan, priced."""
    async with bound_client(fake) as pb, bound_client(fake) as neighbour:
        fake.inject(Fault.late_create(5), method="POST", path=SUBMIT)
        with pytest.raises(AmbiguousSubmitError) as lost:
            await neighbour.submit(kling(97))  # and never reconciled
        summary = await run_batch(pb, [kling(0)], journal=tmp_path / "j").summary()
    made = next(j for j in fake.jobs.values() if j.input["prompt"] == "p97")
    assert summary.orphans is not None
    [orphan] = summary.orphans
    assert (orphan.job.id, orphan.attempt, orphan.price_basis) == (
        made.id,
        lost.value.attempt,
        "list",
    )
    assert summary.others == ()
    assert summary.items[0].status is BatchItemStatus.COMPLETED
