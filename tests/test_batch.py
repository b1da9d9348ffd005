"""run_batch end to end against FakePixelByte: budget, journal, resume, reconcile."""

from __future__ import annotations

import asyncio
import collections
import functools
import json
from importlib.resources import files

import attrs
import pytest
from pixelbyte_async import (
    AuthenticationError,
    BatchInputError,
    BatchItemStatus,
    BudgetExceeded,
    JournalError,
    KlingO1StartEndFrame,
    PixelByte,
    read_batch_file,
    run_batch,
)
from pixelbyte_async._batch._rows import _entry
from pixelbyte_async._journal import Journal, read_rows
from pixelbyte_async._journal._connection import JournalConnection
from pixelbyte_async.testing import Fault, JobScript

from conftest import bound_client, until


pytestmark = pytest.mark.anyio

SLUG = "kling-plus/kling-o1-standard/start-end-frame-to-video"
ECHO = "test/echo-image/text-to-image"
MP4 = (files("pixelbyte_async") / "_data" / "sample.mp4").read_bytes()
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def kling(n, **kw):
    kw.setdefault("prompt", f"p{n}")
    return KlingO1StartEndFrame(
        image_url=f"https://e.x/{n}.jpg", end_image_url="https://e.x/end.jpg", **kw
    )


def raw(n):
    return {
        "image_url": f"https://e.x/{n}.jpg",
        "end_image_url": "https://e.x/end.jpg",
        "duration": "5",
        "prompt": f"p{n}",
    }


def assert_one_charge_each(fake, count):
    """Nobody paid twice, and exactly *count* inputs were charged once each."""
    assert fake.ledger.double_charged() == []
    assert sorted(fake.ledger.charges_by_fingerprint().values()) == [1] * count


@pytest.fixture(name="journal")
def _journal(tmp_path):
    return tmp_path / "batch.sqlite"


async def test_batch_runs_every_input_form(fake, pb, tmp_path, journal):
    """Typed inputs, tuples and mappings all run, download and are charged once."""
    inputs = [
        kling(1),
        (SLUG, raw(2)),
        {"id": "third", "model": SLUG, "input": raw(3)},
        {"id": "fourth", "input": kling(4, duration=3)},
        {"id": "image", "model": ECHO, "input": {"prompt": "hi"}},
    ]
    seen = []
    async with run_batch(
        pb, inputs, journal=journal, out_dir=tmp_path / "out"
    ) as batch:
        seen.extend([item async for item in batch])
    summary = await batch.summary()
    assert sorted(i.index for i in seen) == [0, 1, 2, 3, 4]
    assert (summary.completed, summary.ok, summary.stop_reason) == (5, True, None)
    assert [i.key for i in summary.items][2:] == ["third", "fourth", "image"]
    assert summary.items[3].path == tmp_path / "out" / "fourth.mp4"
    assert summary.items[4].path.suffix == ".png"
    assert summary.items[0].path.read_bytes() == MP4
    assert summary.cost_micro_cents == fake.ledger.charged_micro_cents == 910_000
    assert summary.plan.estimated_cost_micro_cents == 910_000
    assert_one_charge_each(fake, 5)
    rows = read_rows(journal)
    assert {r.state for r in rows.values()} == {"downloaded"}
    assert rows["third"].input == raw(3)
    assert all(r.cost_known for r in rows.values())


async def test_typed_and_raw_forms_share_a_key():
    """A typed input and its raw equivalent are the same input (same key)."""
    typed = kling(1)
    assert _entry(typed, 0).key == _entry((SLUG, typed.to_input()), 1).key
    assert len(_entry(typed, 0).key) == 16


async def test_invalid_inputs_are_all_reported(fake, pb, journal):
    """Every bad input is reported at once and nothing is sent."""
    inputs = [
        kling(1),
        42,
        (SLUG,),
        {"id": "../etc", "model": SLUG, "input": raw(2)},
        {"model": SLUG, "input": raw(1)} | {"id": None},
        (SLUG, kling(1).to_input()),
        {"model": SLUG},
        {"id": "x", "input": raw(1)},
    ]
    with pytest.raises(BatchInputError) as info:
        await run_batch(pb, inputs, journal=journal).summary()
    wheres = [where for where, _ in info.value.problems]
    assert [w.split()[1] for w in wheres] == ["1", "2", "3", "4", "5", "6", "7"]
    assert "distinct 'id'" in info.value.problems[4][1]
    assert fake.requests == []
    assert not journal.exists()


async def test_workers_are_bounded(fake, tmp_path):
    """30 inputs run through max_concurrent_jobs workers, not 30 tasks."""
    inputs = [kling(n) for n in range(30)]
    peak_running = peak_tasks = 0
    async with (
        bound_client(fake, max_concurrent_jobs=4) as pb,
        run_batch(pb, inputs) as batch,
    ):
        async for _ in batch:
            peak_running = max(peak_running, batch.running)
            ours = [
                t
                for t in asyncio.all_tasks()
                if t.get_coro().__qualname__.startswith("Batch.")
            ]
            peak_tasks = max(peak_tasks, len(ours))
    summary = await batch.summary()
    assert summary.completed == 30
    assert 1 <= peak_running <= 4
    assert peak_tasks <= 4 + 1  # the workers and the runner; nothing per input
    assert_one_charge_each(fake, 30)


async def test_async_iterable_inputs(pb):
    """Inputs may come from an async generator."""

    async def produce():
        for n in range(3):
            yield kling(n)

    summary = await run_batch(pb, produce()).summary()
    assert summary.completed == 3


async def test_budget_refuses_before_any_submit(fake, pb, journal):
    """Over the limit: BudgetExceeded with estimate and limit, nothing submitted."""
    inputs = [kling(n) for n in range(4)]  # 4 × 250,000
    batch = run_batch(pb, inputs, journal=journal, max_cost_micro_cents=999_999)
    with pytest.raises(BudgetExceeded) as info:
        async with batch:
            pass
    assert (info.value.estimate_micro_cents, info.value.limit_micro_cents) == (
        1_000_000,
        999_999,
    )
    assert "$1.00" in str(info.value)
    assert fake.count("POST", "/v1/jobs/submit") == 0
    # Exactly at the limit is fine.
    summary = await run_batch(
        pb, inputs, journal=journal, max_cost_micro_cents=1_000_000
    ).summary()
    assert summary.completed == 4


async def test_budget_stops_submitting_mid_batch(fake, journal, monkeypatch):
    """When charges outrun the estimate, submitting stops before crossing the limit."""
    real_estimate = PixelByte.estimate

    async def underestimate(self, *args, **kwargs):
        estimate = await real_estimate(self, *args, **kwargs)
        return attrs.evolve(estimate, estimated_cost_micro_cents=100_000)

    monkeypatch.setattr(PixelByte, "estimate", underestimate)
    inputs = [kling(n) for n in range(5)]  # estimated 5 × 100,000; charged 250,000
    async with bound_client(fake, max_concurrent_jobs=1) as pb:
        summary = await run_batch(
            pb, inputs, journal=journal, max_cost_micro_cents=600_000
        ).summary()
    statuses = [i.status for i in summary.items]
    # The first charge re-prices the rest: the third would cross the limit.
    assert statuses == [BatchItemStatus.COMPLETED] * 2 + [BatchItemStatus.SKIPPED] * 3
    assert {i.skip_reason for i in summary.items[2:]} == {"budget"}
    assert summary.stop_reason == "budget"
    assert fake.count("POST", "/v1/jobs/submit") == 2
    assert summary.cost_micro_cents == 500_000
    assert {r.state for r in read_rows(journal).values()} == {"completed", "planned"}


async def test_dry_run_plans_and_submits_nothing(fake, pb, journal, tmp_path):
    """A dry run estimates every input and sends nothing, not even to the journal."""
    inputs = [kling(1), kling(2, duration=10, pro=True)]
    batch = run_batch(
        pb,
        inputs,
        journal=journal,
        out_dir=tmp_path / "out",
        dry_run=True,
        max_cost_micro_cents=100,
    )
    items = [item async for item in batch]
    summary = await batch.summary()
    plan = summary.plan
    assert [i.status for i in items] == [BatchItemStatus.PLANNED] * 2
    assert [p.estimated_cost_micro_cents for p in plan.items] == [250_000, 700_000]
    assert [p.action for p in plan.items] == ["submit", "submit"]
    assert (plan.total_micro_cents, plan.within_budget) == (950_000, False)
    assert (summary.dry_run, summary.ok) == (True, False)
    # Only estimates were asked (free, and your account's prices): nothing else.
    assert {(r.method, r.path) for r in fake.requests} == {
        ("POST", "/v1/jobs/estimate")
    }
    assert not journal.exists()
    assert not (tmp_path / "out").exists()


async def test_dry_run_reads_the_journal(pb, journal):
    """After a run, a dry run shows what is done and what it cost."""
    inputs = [kling(1), kling(2)]
    await run_batch(pb, inputs[:1], journal=journal).summary()
    plan = await run_batch(pb, inputs, journal=journal, dry_run=True).plan()
    assert [p.action for p in plan.items] == ["done", "submit"]
    assert (plan.charged_micro_cents, plan.estimated_cost_micro_cents) == (
        250_000,
        250_000,
    )


async def test_server_estimates_unknown_models_once_per_input(fake, pb):
    """Models missing from the local table are estimated by the API (cached)."""
    inputs = [
        {"id": "a", "model": ECHO, "input": {"prompt": "same"}},
        {"id": "b", "model": ECHO, "input": {"prompt": "same"}},
        {"id": "c", "model": ECHO, "input": {"prompt": "other"}},
    ]
    plan = await run_batch(pb, inputs, dry_run=True).plan()
    assert [p.estimated_cost_micro_cents for p in plan.items] == [10_000] * 3
    assert fake.count("POST", "/v1/jobs/estimate") == 2


async def test_inputs_priced_alike_are_estimated_once(fake, pb):
    """
    The API's estimate is asked once per price, not per prompt: 30 Kling inputs
    of two durations and two models are three requests (was one per input).
    """
    inputs = [kling(n) for n in range(20)]
    inputs += [kling(n, duration=8) for n in range(20, 28)]
    inputs += [kling(n, pro=True) for n in range(28, 30)]
    plan = await run_batch(pb, inputs, dry_run=True).plan()
    assert fake.count("POST", "/v1/jobs/estimate") == 3
    costs = [p.estimated_cost_micro_cents for p in plan.items]
    assert costs == [250_000] * 20 + [400_000] * 8 + [350_000] * 2


async def test_a_rejected_estimate_is_asked_again_for_each_alike_input(fake, pb):
    """One input's rejection is not its price-alikes': each is asked on its own."""
    fake.inject(
        Fault.status(400, "INVALID_INPUT", "image unreachable"),
        method="POST",
        path="/v1/jobs/estimate",
    )
    plan = await run_batch(pb, [kling(n) for n in range(4)], dry_run=True).plan()
    assert fake.count("POST", "/v1/jobs/estimate") == 5  # the group, then each
    assert [p.estimated_cost_micro_cents for p in plan.items] == [250_000] * 4


async def test_estimate_rejections_are_input_errors(fake, pb):
    """An input the API's estimate rejects stops the batch before any submit."""
    inputs = [{"id": "bad", "model": ECHO, "input": {"prompt": "x", "bogus": "1"}}]
    with pytest.raises(BatchInputError, match="estimate rejected"):
        await run_batch(pb, inputs).summary()
    assert fake.count("POST", "/v1/jobs/submit") == 0


async def test_failed_jobs_are_retried_only_on_request(fake, journal):
    """A failed job is reported (refunded); retry_failed=True submits it again."""
    inputs = [kling(1), kling(2)]
    fake.script_next(JobScript(outcome="failed", error_code="GENERATION_FAILED"))
    async with bound_client(fake, max_concurrent_jobs=1) as pb:
        first = await run_batch(pb, inputs, journal=journal).summary()
        again = await run_batch(pb, inputs, journal=journal).summary()
        assert fake.count("POST", "/v1/jobs/submit") == 2
        retried = await run_batch(
            pb, inputs, journal=journal, retry_failed=True
        ).summary()
    assert [i.status for i in first.items] == [
        BatchItemStatus.FAILED,
        BatchItemStatus.COMPLETED,
    ]
    assert "GENERATION_FAILED" in first.items[0].error
    assert first.items[0].cost_micro_cents == 0
    assert (again.failed, again.items[0].resumed) == (1, True)
    assert "retry_failed" in again.items[0].error
    assert retried.completed == 2
    assert fake.count("POST", "/v1/jobs/submit") == 3
    assert fake.ledger.double_charged() == []
    assert retried.cost_micro_cents == fake.ledger.charged_micro_cents == 500_000


async def test_ambiguous_submit_is_reconciled_without_a_second_charge(
    fake, pb, journal
):
    """A submit whose answer is lost is found by reconcile, never paid twice."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    summary = await run_batch(pb, [kling(1), kling(2)], journal=journal).summary()
    assert summary.completed == 2
    assert fake.count("POST", "/v1/jobs/submit") == 2
    assert_one_charge_each(fake, 2)
    assert {r.state for r in read_rows(journal).values()} == {"completed"}


async def test_ambiguous_submit_without_a_job_is_sent_again(fake, pb, journal):
    """When reconcile proves no job exists, the input is submitted again (once)."""
    fake.inject(Fault.drop_before(), method="POST", path="/v1/jobs/submit")
    summary = await run_batch(pb, [kling(1)], journal=journal).summary()
    assert summary.completed == 1
    assert fake.count("POST", "/v1/jobs/submit") == 2
    assert_one_charge_each(fake, 1)
    assert read_rows(journal)[summary.items[0].key].attempts == 2


async def test_ambiguous_submit_with_several_candidates_needs_attention(
    fake, pb, journal
):
    """Two unknown jobs could be ours: park the row, re-send nothing, keep both ids."""
    # Another submitter on the account (unknown to this ledger) makes a job of the
    # model 30 s after the row's lost submit: inside its window.
    foreign = fake.submit_elsewhere(SLUG, kling(99).to_input(), after=30)
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    summary = await run_batch(pb, [kling(1)], journal=journal).summary()
    item = summary.items[0]
    assert item.status is BatchItemStatus.NEEDS_ATTENTION
    assert foreign.id in item.candidates
    assert len(item.candidates) == 2
    assert "will not guess" in (item.error or "")
    again = await run_batch(pb, [kling(1)], journal=journal).summary()
    assert again.needs_attention == 1
    assert fake.count("POST", "/v1/jobs/submit") == 1  # the dropped one, only
    row = read_rows(journal)[item.key]
    assert (row.state, set(row.candidates)) == ("needs_attention", set(item.candidates))


async def prepare_leftover(fake, journal, key, value, *, create):
    """Leave *key* in 'submitting' as a killed process would; maybe create its job."""
    previous = await Journal.open(journal)
    await previous.plan([(key, SLUG, value)])
    await previous.submitting(key, started_at=fake.clock.time(), sent_input=value)
    await previous.aclose()
    if not create:
        return None
    # The earlier process's request: the API made its job, the answer never came.
    return fake.submit_elsewhere(SLUG, value)


async def test_leftover_submitting_row_adopts_its_job(fake, pb, journal, tmp_path):
    """A row killed mid-submit whose job exists adopts it; nothing is re-sent."""
    created = await prepare_leftover(fake, journal, "a", raw(1), create=True)
    fake.advance(300)  # it even finished meanwhile: the job list has no output URL
    fake.reset_records()
    summary = await run_batch(
        pb,
        [{"id": "a", "model": SLUG, "input": raw(1)}],
        journal=journal,
        out_dir=tmp_path,
    ).summary()
    item = summary.items[0]
    assert (item.status, item.job_id, item.resumed) == (
        BatchItemStatus.COMPLETED,
        created.id,
        True,
    )
    assert fake.count("POST", "/v1/jobs/submit") == 0
    assert_one_charge_each(fake, 1)
    assert item.cost_micro_cents == 250_000  # the estimate stands in for it
    assert item.path.read_bytes() == MP4


async def test_leftover_submitting_row_without_job_is_submitted(fake, pb, journal):
    """A row killed before its request reached the API is submitted (once)."""
    await prepare_leftover(fake, journal, "a", raw(1), create=False)
    summary = await run_batch(
        pb, [{"id": "a", "model": SLUG, "input": raw(1)}], journal=journal
    ).summary()
    assert summary.completed == 1
    assert fake.count("POST", "/v1/jobs/submit") == 1
    assert_one_charge_each(fake, 1)


async def test_several_leftover_rows_with_one_job_need_attention(fake, pb, journal):
    """Two unknown submits but one job: which row it belongs to is unknowable."""
    previous = await Journal.open(journal)
    await previous.plan([("a", SLUG, raw(1)), ("b", SLUG, raw(2))])
    await previous.submitting("a", started_at=fake.clock.time(), sent_input=raw(1))
    await previous.submitting("b", started_at=fake.clock.time(), sent_input=raw(2))
    await previous.aclose()
    fake.submit_elsewhere(SLUG, raw(2))  # one of the two requests made its job
    inputs = [
        {"id": k, "model": SLUG, "input": raw(n)} for k, n in (("a", 1), ("b", 2))
    ]
    summary = await run_batch(pb, inputs, journal=journal).summary()
    assert summary.needs_attention == 2
    assert fake.count("POST", "/v1/jobs/submit") == 0
    assert fake.ledger.double_charged() == []


async def test_stopping_early_then_resuming_reattaches(fake, journal, tmp_path):
    """Leaving the batch early cancels nothing; the next run re-attaches by id."""
    inputs = [kling(n) for n in range(6)]
    fake.script_next(JobScript(queue_seconds=1, processing_seconds=10))
    fake.set_default_script(JobScript(queue_seconds=1, processing_seconds=100_000))
    async with (
        bound_client(fake, max_concurrent_jobs=3) as pb,
        run_batch(pb, inputs, journal=journal, out_dir=tmp_path) as batch,
    ):
        async for _ in batch:
            # The first row is done; leave once two others run (their submits
            # go one at a time and may still be on the way).
            await until(
                lambda: (
                    sum(r.state == "submitted" for r in read_rows(journal).values())
                    >= 2
                )
            )
            break
    rows = read_rows(journal)
    in_flight = {r.job_id for r in rows.values() if r.state == "submitted"}
    assert len(in_flight) >= 2, {k: r.state for k, r in rows.items()}
    assert fake.count("POST", "/v1/jobs/*/cancel") == 0
    for job in fake.jobs.values():
        if job.status not in {"completed", "failed", "cancelled"}:
            fake.complete_now(job.id)
    fake.set_default_script(JobScript())
    fake.reset_records()
    async with bound_client(fake, max_concurrent_jobs=3) as pb:
        summary = await run_batch(
            pb, inputs, journal=journal, out_dir=tmp_path
        ).summary()
    assert summary.completed == 6, [
        (i.status, i.error, i.action) for i in summary.items if i.status != "completed"
    ]
    assert sum(i.resumed for i in summary.items) >= len(in_flight) + 1
    reattached = {
        r.path.rsplit("/", 1)[1] for r in fake.requests_for("GET", "/v1/jobs/job_*")
    }
    assert in_flight <= reattached
    assert_one_charge_each(fake, 6)
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == sorted(
        f"{i.key}.mp4" for i in summary.items
    )


async def test_unfinished_jobs_are_collected_by_the_next_run(fake, pb, journal):
    """A wait timeout leaves the job running; the next run collects it, unpaid again."""
    fake.set_default_script(JobScript(queue_seconds=5, processing_seconds=900))
    first = await run_batch(pb, [kling(1)], journal=journal, wait_timeout=60).summary()
    assert first.unfinished == 1
    assert "run the batch again" in first.items[0].error
    second = await run_batch(pb, [kling(1)], journal=journal).summary()
    assert (second.completed, second.items[0].resumed) == (1, True)
    assert fake.count("POST", "/v1/jobs/submit") == 1


async def test_intact_downloads_are_skipped(fake, pb, journal, tmp_path):
    """Files already there at the recorded size are not fetched again."""
    inputs = [kling(1), kling(2)]
    videos = "/outputs/*/output_0.mp4"
    first = await run_batch(pb, inputs, journal=journal, out_dir=tmp_path).summary()
    fetched = len(fake.cdn_requests_for("GET", videos))
    assert fetched == 2
    again = await run_batch(pb, inputs, journal=journal, out_dir=tmp_path).summary()
    assert len(fake.cdn_requests_for("GET", videos)) == 2
    assert all(i.resumed and i.path for i in again.items)
    first.items[1].path.write_bytes(b"truncated")
    third = await run_batch(pb, inputs, journal=journal, out_dir=tmp_path).summary()
    assert len(fake.cdn_requests_for("GET", videos)) == 3
    assert third.items[1].path.read_bytes() == MP4
    assert fake.count("POST", "/v1/jobs/submit") == 2


async def test_failed_download_is_retried_by_the_next_run(fake, pb, journal, tmp_path):
    """A download that fails leaves the paid job completed, fetched next time."""
    fake.inject(
        Fault.status(500, "INTERNAL_ERROR"), origin="cdn", path="/outputs/*", times=1
    )
    first = await run_batch(pb, [kling(1)], journal=journal, out_dir=tmp_path).summary()
    assert first.unfinished == 1
    assert "download failed" in first.items[0].error
    second = await run_batch(
        pb, [kling(1)], journal=journal, out_dir=tmp_path
    ).summary()
    assert second.completed == 1
    assert second.items[0].path.read_bytes() == MP4
    assert fake.count("POST", "/v1/jobs/submit") == 1


async def test_a_failed_download_journals_the_jobs_end(fake, pb, journal, tmp_path):
    """Without its file, the completed job is still recorded (state, URL, end)."""
    fake.inject(
        Fault.status(500, "INTERNAL_ERROR"), origin="cdn", path="/outputs/*", times=1
    )
    await run_batch(pb, [kling(1)], journal=journal, out_dir=tmp_path).summary()
    (row,) = read_rows(journal).values()
    assert (row.state, row.job_status) == ("completed", "completed")
    assert row.output_url is not None
    assert row.output_path is None


async def test_a_finished_row_is_four_journal_writes(
    fake, pb, journal, tmp_path, monkeypatch
):
    """Submitting (synced), its job, processing, and the end with its file: one each."""
    writes: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    quick, synced = JournalConnection._quick, JournalConnection._synced

    async def counted_quick(self, fn, *args):
        name = getattr(fn, "func", fn).__name__
        key = fn.args[0] if isinstance(fn, functools.partial) else args[0]
        if name != "_get_sync":
            writes[key][name] += 1
        return await quick(self, fn, *args)

    async def counted_synced(self, many, args, **kw):
        writes[args[0]][many.__name__] += 1
        return await synced(self, many, args, **kw)

    monkeypatch.setattr(JournalConnection, "_quick", counted_quick)
    monkeypatch.setattr(JournalConnection, "_synced", counted_synced)
    fake.script_next(JobScript(queue_seconds=30, processing_seconds=200))
    summary = await run_batch(
        pb, [kling(1), kling(2)], journal=journal, out_dir=tmp_path
    ).summary()
    assert summary.completed == 2
    each = {
        "_submitting_sync": 1,
        "_submitted_sync": 1,
        "_status_sync": 1,  # processing; the end rides with the file
        "_downloaded_sync": 1,
    }
    keys = [item.key for item in summary.items]
    assert {key: dict(writes[key]) for key in keys} == dict.fromkeys(keys, each)
    row = read_rows(journal)[summary.items[0].key]
    assert (row.state, row.job_status) == ("downloaded", "completed")
    assert row.output_url is not None


async def test_local_frames_are_uploaded_and_journaled_as_paths(
    fake, pb, tmp_path, journal
):
    """The journal keeps the paths; the uploaded URLs go to the attempt only."""
    frame = tmp_path / "start.png"
    frame.write_bytes(PNG)
    request = KlingO1StartEndFrame(image_url=frame, end_image_url=frame, prompt="x")
    summary = await run_batch(
        pb, [{"id": "local", "input": request}], journal=journal
    ).summary()
    assert summary.completed == 1
    assert fake.count("POST", "/v1/uploads/presign") == 1
    row = read_rows(journal)["local"]
    assert row.input["image_url"] == row.input["end_image_url"] == str(frame)


async def test_insufficient_balance_stops_submitting(fake, journal):
    """402 stops the batch: what is running finishes, the rest is skipped."""
    fake.balance_micro_cents = 600_000
    async with bound_client(fake, max_concurrent_jobs=1) as pb:
        summary = await run_batch(
            pb, [kling(n) for n in range(4)], journal=journal
        ).summary()
    assert (summary.completed, summary.skipped, summary.stop_reason) == (
        2,
        2,
        "balance",
    )
    assert {i.skip_reason for i in summary.items[2:]} == {"balance"}
    assert {r.state for r in list(read_rows(journal).values())[2:]} == {"planned"}


async def test_authentication_failure_ends_the_batch(fake, journal):
    """A bad key is fatal for the batch; the journal is closed and reusable."""
    async with PixelByte(api_key="pb_wrong", base_url=fake.url, clock=fake.clock) as pb:
        with pytest.raises(AuthenticationError):
            await run_batch(pb, [kling(1)], journal=journal).summary()
    again = await Journal.open(journal)
    await again.aclose()


async def test_one_run_per_journal(fake, pb, journal):
    """A second batch on a journal in use is refused."""
    async with run_batch(pb, [kling(1)], journal=journal):
        with pytest.raises(JournalError, match="in use"):
            async with run_batch(pb, [kling(1)], journal=journal):
                pass


async def test_api_key_never_reaches_the_journal(fake, pb, journal, tmp_path):
    """The journal records inputs, ids and paths, never the key."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    await run_batch(
        pb, [kling(1), kling(2)], journal=journal, out_dir=tmp_path
    ).summary()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("batch.sqlite*"))
    assert fake.api_key.encode() not in stored
    assert b"Bearer" not in stored


def test_read_batch_file_jsonl(tmp_path):
    """JSON Lines: transition rows (paths relative to the file) and raw rows."""
    (tmp_path / "a.png").write_bytes(PNG)
    lines = [
        {"id": "one", "start": "a.png", "end": "https://e.x/b.jpg", "duration": 4},
        {"id": "two", "model": ECHO, "input": {"prompt": "x"}},
        {"start": "https://e.x/1.jpg", "end": "https://e.x/2.jpg", "pro": True},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    inputs = read_batch_file(path)
    first = inputs[0]["input"]
    assert (first.image_url, first.duration, first.pro) == (
        tmp_path / "a.png",
        4,
        False,
    )
    assert inputs[1] == lines[1]
    assert inputs[2]["input"].pro is True
    assert "id" not in inputs[2]


def test_read_batch_file_csv(tmp_path):
    """CSV with the header id,start,end,prompt,duration[,pro]."""
    path = tmp_path / "rows.csv"
    path.write_text(
        "id,start,end,prompt,duration,pro\n"
        'a,https://e.x/1.jpg,https://e.x/2.jpg,"hello, world",3,yes\n'
        "b,https://e.x/3.jpg,https://e.x/4.jpg,,,\n"
    )
    a, b = (item["input"] for item in read_batch_file(path))
    assert (a.prompt, a.duration, a.pro) == ("hello, world", 3, True)
    assert (b.prompt, b.duration, b.pro) == (None, 5, False)


def test_read_batch_file_reports_every_bad_row(tmp_path):
    """Every invalid row is reported with file:line; nothing is returned."""
    path = tmp_path / "rows.jsonl"
    lines = [
        '{"id": "a", "start": "missing.png", "end": "https://e.x/b.jpg"}',
        "not json",
        '{"id": "b", "start": "https://e.x/a.jpg", "end": "https://e.x/b.jpg", "duration": 11}',
        '{"id": "b", "start": "https://e.x/a.jpg", "end": "https://e.x/b.jpg"}',
        '{"id": "c", "start": "https://e.x/a.jpg", "end": "https://e.x/b.jpg", "promt": "x"}',
        '{"id": "d", "model": "x/y/z", "input": "nope"}',
        '{"start": "https://e.x/a.jpg", "end": "https://e.x/b.jpg"}',
        '{"start": "https://e.x/a.jpg", "end": "https://e.x/b.jpg"}',
    ]
    path.write_text("\n".join(lines))
    with pytest.raises(BatchInputError) as info:
        read_batch_file(path)
    lines = [int(where.rsplit(":", 1)[1]) for where, _ in info.value.problems]
    assert lines == [1, 2, 3, 4, 5, 6, 8]
    messages = dict(info.value.problems)
    assert "start:" in messages[f"{path}:1"]
    assert "duplicate id" in messages[f"{path}:4"]
    assert "promt" in messages[f"{path}:5"]
    assert "same row as line 7" in messages[f"{path}:8"]
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("id,begin,end\n1,a,b\n")
    with pytest.raises(BatchInputError, match="missing columns start"):
        read_batch_file(bad_header)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(BatchInputError, match="no rows"):
        read_batch_file(empty)


async def test_client_method_is_the_same_runner(fake, pb, tmp_path):
    """pb.run_batch(...) is run_batch(pb, ...)."""
    async with pb.run_batch([kling(1), kling(2)], out_dir=tmp_path / "o") as batch:
        keys = sorted([item.key async for item in batch])
    summary = await batch.summary()
    assert summary.completed == 2
    assert sorted(i.key for i in summary.items) == keys
    assert_one_charge_each(fake, 2)


async def test_leftovers_are_swept_once_per_run_and_only_ours(
    fake, pb, journal, tmp_path, monkeypatch
):
    """A killed run's .part files go, once per run (not once per row), others stay."""
    import anyio

    out = tmp_path / "out"
    out.mkdir()
    ours = out / ".k1.mp4.0badc0de.part"
    ours.write_bytes(b"half")
    theirs = out / ".notes.part"
    theirs.write_bytes(b"the user's")
    looks = 0
    real_glob = anyio.Path.glob

    def glob(self, pattern):
        nonlocal looks
        looks += 1
        return real_glob(self, pattern)

    monkeypatch.setattr(anyio.Path, "glob", glob)
    inputs = [kling(n) for n in range(12)]
    summary = await run_batch(pb, inputs, journal=journal, out_dir=out).summary()
    assert summary.completed == 12
    assert looks == 1  # was one look per download
    assert not ours.exists()
    assert theirs.read_bytes() == b"the user's"


async def test_the_summary_says_real_time_and_the_clocks_apart(fake, pb, journal):
    """On the sandbox's virtual clock, wall time is real; its own seconds are apart."""
    summary = await run_batch(pb, [kling(1)], journal=journal).summary()
    assert summary.clock_seconds is not None
    assert summary.clock_seconds >= 200  # a Kling job, by the fake's clock
    assert summary.wall_seconds < 60  # a moment, really


async def test_only_the_submitting_commit_waits_for_the_disk(tmp_path):
    """'A submit is on the wire' is synced before the request; the rest survive kill -9."""
    journal = await Journal.open(tmp_path / "j.sqlite3")
    try:
        await journal.plan([("r1", "m", {"a": 1})])
        said: list[str] = []
        journal._conn.set_trace_callback(said.append)
        await journal.submitting("r1", started_at=1.0, sent_input={"a": 1})
        first_write = next(i for i, s in enumerate(said) if s.startswith("UPDATE"))
        commit = next(i for i, s in enumerate(said) if s.upper() == "COMMIT")
        full = said.index("PRAGMA synchronous=FULL")
        assert full < first_write < commit < said.index("PRAGMA synchronous=NORMAL")
        said.clear()
        await journal.submitted(
            "r1", job_id="job_1", cost_micro_cents=1, cost_known=True, status="pending"
        )
        assert not any("synchronous" in s for s in said)
    finally:
        await journal.aclose()


async def test_rows_journaling_at_once_share_one_synced_commit(tmp_path):
    """
    A hundred rows about to be sent at once: a few synced commits, not a hundred
    in a row (the batch's submits queued behind them), and each row is on the
    disk when its call returns.
    """
    journal = await Journal.open(tmp_path / "j.sqlite3")
    try:
        keys = [f"r{n}" for n in range(100)]
        await journal.plan([(k, "m", {"n": k}) for k in keys])
        said: list[str] = []
        journal._conn.set_trace_callback(said.append)

        async def one(key: str) -> str:
            await journal.submitting(key, started_at=1.0, sent_input={"k": key})
            return (await journal.get(key)).state

        states = await asyncio.gather(*(one(k) for k in keys))
        assert set(states) == {"submitting"}
        syncs = said.count("PRAGMA synchronous=FULL")
        assert 1 <= syncs <= 3, syncs
        assert sum(s.upper() == "COMMIT" for s in said) == syncs
    finally:
        await journal.aclose()
    rows = read_rows(tmp_path / "j.sqlite3")
    assert {rows[k].state for k in keys} == {"submitting"}
