"""
Shared accounts in batches (issue 21): no silent stall, honest rows, and follow-ups.

A lost submit's row settles while the rest of the batch goes on; only two lost
submits of one model at once (which the job list cannot tell apart) pause that
model, and then the pause is shown with a countdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
from itertools import pairwise

import anyio
import pytest
from pixelbyte_async import (
    BatchItemStatus,
    KlingO1StartEndFrame,
    PollPolicy,
    Settling,
    ValidationError,
    resolve_batch_row,
    run_batch,
)
from pixelbyte_async._cli import EXIT_CODES, main
from pixelbyte_async._journal import Journal, read_rows
from pixelbyte_async.testing import FakePixelByte, Fault, JobScript

from conftest import bound_client, write_rows


pytestmark = pytest.mark.anyio

SUBMIT = "/v1/jobs/submit"
FAST = JobScript(queue_seconds=0.02, processing_seconds=0.05)
SLUG = "kling-plus/kling-o1-standard/start-end-frame-to-video"


def kling(n: int) -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url=f"https://e.x/{n}.jpg",
        end_image_url="https://e.x/end.jpg",
        prompt=f"p{n}",
    )


def one_charge_each(fake: FakePixelByte, count: int) -> None:
    assert fake.ledger.double_charged() == []
    assert sorted(fake.ledger.charges_by_fingerprint().values()) == [1] * count


# -- finding 6: one lost submit stalls the whole model for the horizon, in silence ---------


@pytest.fixture(name="live")
async def _live():
    """A fake in real time with fast jobs: "while one row settles" must be real."""
    async with FakePixelByte(time_scale=1.0) as fake:
        fake.set_default_script(FAST)
        yield fake


async def test_one_lost_submit_does_not_stall_its_model(live, tmp_path):
    """20 rows of one model, one dropped submit: the others go on while it settles."""
    live.inject(Fault.drop_before(), method="POST", path=SUBMIT)
    poll = PollPolicy.fixed(0.02)
    async with bound_client(live, max_concurrent_jobs=5, poll=poll) as pb:
        summary = await run_batch(
            pb, [kling(n) for n in range(20)], journal=tmp_path / "j", settle=1.0
        ).summary()
    assert summary.completed == 20
    submits = live.requests_for("POST", SUBMIT)
    assert len(submits) == 21  # the lost one, re-sent once after its horizon
    lost, *rest = submits
    assert lost.fault == "drop_before"
    prompt = lost.json["input"]["prompt"]
    resent = [r for r in rest if r.json["input"]["prompt"] == prompt]
    assert len(resent) == 1
    assert resent[0].time >= lost.time + 1.0
    # Every other row was sent while the lost one settled, not after it.
    assert max(r.time for r in rest if r is not resent[0]) < lost.time + 1.0
    one_charge_each(live, 20)


async def test_two_overlapping_lost_submits_pause_their_model_with_a_countdown(
    live, tmp_path, caplog
):
    """Two lost submits of one model at once: the model pauses, and says until when."""
    caplog.set_level(logging.INFO, logger="pixelbyte_async")
    live.inject(Fault.drop_before(), method="POST", path=SUBMIT, times=2)
    seen: list[Settling] = []
    poll = PollPolicy.fixed(0.02)
    async with bound_client(live, max_concurrent_jobs=3, poll=poll) as pb:
        batch = run_batch(
            pb, [kling(n) for n in range(6)], journal=tmp_path / "j", settle=1.0
        )
        async with batch:
            watcher = asyncio.ensure_future(watch(batch, seen))
            async for _ in batch:
                pass
            watcher.cancel()
        summary = await batch.summary()
    assert summary.completed == 6
    lost = [r for r in live.requests_for("POST", SUBMIT) if r.fault]
    assert len(lost) == 2
    holding = [s for s in seen if s.holding]
    for settling in holding:  # each the horizon of one of the two lost submits
        assert min(abs(settling.settle_at - (r.time + 1.0)) for r in lost) < 0.1
    assert max(s.waiting for s in holding) >= 1
    # Nothing else of the model was sent while both were settling.
    both = min(r.time for r in lost) + 1.0
    sent = [r for r in live.requests_for("POST", SUBMIT) if not r.fault]
    last_lost = max(r.time for r in lost)
    assert all(r.time >= both - 0.1 or r.time < last_lost for r in sent)
    messages = [r.getMessage() for r in caplog.records]
    paused = [m for m in messages if "pause" in m]
    assert paused, messages
    assert "until" in paused[0]
    one_charge_each(live, 6)


async def watch(batch, seen: list[Settling]) -> None:
    """Note what the batch shows as settling, as a progress display would."""
    while True:
        seen.extend(batch.settling)
        await asyncio.sleep(0.01)


async def test_a_lost_submit_is_shown_settling_while_others_go_on(live, tmp_path):
    """Batch.settling names the row, its model and when its horizon ends."""
    live.inject(Fault.drop_before(), method="POST", path=SUBMIT)
    seen: list[Settling] = []
    poll = PollPolicy.fixed(0.02)
    async with bound_client(live, max_concurrent_jobs=3, poll=poll) as pb:
        batch = run_batch(
            pb, [kling(n) for n in range(4)], journal=tmp_path / "j", settle=1.0
        )
        async with batch:
            async for item in batch:
                if item.status is BatchItemStatus.COMPLETED:
                    seen.extend(batch.settling)
    lost = live.requests_for("POST", SUBMIT)[0]
    assert seen
    settling = seen[0]
    assert settling.model == kling(0).model_slug
    assert settling.settle_at == pytest.approx(lost.time + 1.0, abs=0.2)
    assert not settling.holding


# -- the countdown on the command line --------------------------------------------------


@pytest.mark.parametrize("json_mode", [False, True], ids=["lines", "json"])
async def test_the_cli_shows_a_paused_model_with_a_countdown(
    live, tmp_path, capsys, monkeypatch, json_mode
):
    """Plain lines say PAUSED ... until ...; --json writes pause events to stderr."""
    monkeypatch.setenv("PIXELBYTE_BASE_URL", live.url)
    monkeypatch.setenv("PIXELBYTE_API_KEY", live.api_key)
    live.inject(Fault.drop_before(), method="POST", path=SUBMIT, times=2)
    rows = write_rows(tmp_path / "rows.jsonl", 6)
    argv = ["batch", str(rows), "--out", str(tmp_path / "o"), "--settle", "1"]
    argv += ["--concurrency", "3", "--poll-interval", "0.02"]
    if json_mode:
        argv.append("--json")
    code = await anyio.to_thread.run_sync(main, argv)
    err = capsys.readouterr().err
    assert code == 0, err
    if json_mode:
        events = [json.loads(line) for line in err.splitlines() if '"event"' in line]
        paused = [e for e in events if e["event"] == "paused"]
        assert paused, err
        assert paused[0]["until"].endswith("Z")
        assert 0 <= paused[0]["secondsLeft"] <= 1
        assert len(paused[0]["rows"]) == 2
        assert events[-1] == {"event": "resumed"}
    else:
        line = next(x for x in err.splitlines() if x.startswith("PAUSED"))
        assert "wait until" in line
        assert "rows waiting" in line
        assert "RESUMED" in err


# -- finding 2: a row parked with a plain sentence and a command that settles it ---------


async def park_a_row(fake, pb, journal):
    """A row whose lost submit made a job beside another submitter's in its window."""
    foreign = fake.submit_elsewhere(
        kling(99).model_slug, kling(99).to_input(), after=30
    )
    fake.inject(Fault.drop_after(), method="POST", path=SUBMIT)
    summary = await run_batch(pb, [kling(1)], journal=journal).summary()
    [item] = summary.items
    assert item.status is BatchItemStatus.NEEDS_ATTENTION
    own = next(j for j in fake.jobs if j != foreign.id)
    return item, own, foreign.id


async def test_a_parked_row_says_why_and_how_to_settle_it(fake, tmp_path):
    journal = tmp_path / "j.sqlite"
    async with bound_client(fake) as pb:
        item, own, foreign = await park_a_row(fake, pb, journal)
    assert set(item.candidates) == {own, foreign}
    assert "will not guess" in item.error
    assert "other submit" not in item.error  # there was no other lost submit
    assert f"pixelbyte-async batch resolve {item.key} --journal {journal}" in item.error
    assert "--adopt JOB" in item.error
    assert "--resend" in item.error


async def test_a_person_adopts_a_candidate_and_the_next_run_finishes_it(
    fake, tmp_path, capsys, monkeypatch
):
    """batch resolve ROW --adopt JOB: journaled, claimed, attached by the next run."""
    journal = tmp_path / "j.sqlite"
    async with bound_client(fake) as pb:
        item, own, _ = await park_a_row(fake, pb, journal)
    monkeypatch.setenv("PIXELBYTE_BASE_URL", fake.url)
    monkeypatch.setenv("PIXELBYTE_API_KEY", fake.api_key)
    argv = ["batch", "resolve", item.key, "--journal", str(journal), "--adopt", own]
    assert await anyio.to_thread.run_sync(main, argv) == 0
    assert f"job {own} is now its job" in capsys.readouterr().out
    async with bound_client(fake) as pb:
        claim = (await pb.ledger.claims([own]))[own]
        assert claim.how == "person"
        again = await run_batch(pb, [kling(1)], journal=journal).summary()
    assert (again.completed, again.items[0].job_id) == (1, own)
    assert fake.count("POST", SUBMIT) == 1  # nothing was re-sent


async def test_resend_is_refused_before_the_horizon_then_sends_again(fake, tmp_path):
    journal = tmp_path / "j.sqlite"
    async with bound_client(fake) as pb:
        item, _, _ = await park_a_row(fake, pb, journal)
        with pytest.raises(ValidationError, match="not a candidate"):
            await resolve_batch_row(pb, journal, item.key, adopt="job_000000000000")
        with pytest.raises(ValidationError, match="may still make a job until"):
            await resolve_batch_row(pb, journal, item.key, resend=True, settle=3600)
        await resolve_batch_row(pb, journal, item.key, resend=True)
        assert read_rows(journal)[item.key].state == "planned"
        again = await run_batch(pb, [kling(1)], journal=journal).summary()
    assert again.completed == 1
    assert fake.count("POST", SUBMIT) == 2  # the person's decision: sent again


@pytest.mark.parametrize(
    "argv",
    [
        ["r1", "--journal", "MISSING", "--adopt", "job_x"],
        ["r1", "--journal", "J", "--adopt", "job_000000000000"],
    ],
    ids=["missing-journal", "row-not-parked"],
)
async def test_batch_resolve_failures_are_one_line(
    fake, tmp_path, capsys, monkeypatch, argv
):
    monkeypatch.setenv("PIXELBYTE_BASE_URL", fake.url)
    monkeypatch.setenv("PIXELBYTE_API_KEY", fake.api_key)
    journal = tmp_path / "j.sqlite"
    async with bound_client(fake) as pb:
        await run_batch(pb, [kling(1)], journal=journal).summary()
    words = [
        str(tmp_path / "nope.sqlite")
        if a == "MISSING"
        else str(journal)
        if a == "J"
        else a
        for a in argv
    ]
    code = await anyio.to_thread.run_sync(main, ["batch", "resolve", *words])
    err = capsys.readouterr().err
    assert code in {
        EXIT_CODES["journal"],
        EXIT_CODES["validation"],
        EXIT_CODES["usage"],
    }
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


# -- finding 7: a journal is accepted for other rows ------------------------------------


def rows_with(n: int, prompt: str) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "model": kling(i).model_slug,
            "input": {**kling(i).to_input(), "prompt": f"{prompt} {i}"},
        }
        for i in range(n)
    ]


async def test_a_row_whose_input_changed_is_reported_not_handed_back(fake, tmp_path):
    """Same ids, other prompts: never 'completed (earlier run)' with the old video."""
    journal = tmp_path / "j.sqlite"
    async with bound_client(fake) as pb:
        first = await run_batch(pb, rows_with(2, "sunrise"), journal=journal).summary()
        assert first.completed == 2
        second = await run_batch(pb, rows_with(2, "storm"), journal=journal).summary()
        assert [i.status for i in second.items] == [BatchItemStatus.SKIPPED] * 2
        assert {i.skip_reason for i in second.items} == {"changed"}
        assert all("changed" in (i.error or "") for i in second.items)
        assert all(i.job_id is None for i in second.items)  # not the old job's video
        assert fake.count("POST", SUBMIT) == 2
        third = await run_batch(
            pb, rows_with(2, "storm"), journal=journal, rerun_changed=True
        ).summary()
    assert third.completed == 2
    prompts = {fake.jobs[i.job_id].input["prompt"] for i in third.items}
    assert prompts == {"storm 0", "storm 1"}
    assert fake.count("POST", SUBMIT) == 4


async def test_a_journal_made_for_another_file_is_refused(
    live, tmp_path, capsys, monkeypatch
):
    """One line, exit 13, nothing sent; --reuse-journal says it is the same batch."""
    monkeypatch.setenv("PIXELBYTE_BASE_URL", live.url)
    monkeypatch.setenv("PIXELBYTE_API_KEY", live.api_key)
    journal = tmp_path / "shared.sqlite"
    first = write_rows(tmp_path / "first.jsonl", 1)
    second = write_rows(tmp_path / "second.jsonl", 1)
    out = str(tmp_path / "o")
    common = ["--out", out, "--journal", str(journal), "--poll-interval", "0.02"]
    assert await anyio.to_thread.run_sync(main, ["batch", str(first), *common]) == 0
    capsys.readouterr()
    sent = live.count("POST", SUBMIT)
    code = await anyio.to_thread.run_sync(main, ["batch", str(second), *common])
    err = capsys.readouterr().err
    assert code == EXIT_CODES["journal"]
    assert "first.jsonl" in err
    assert "--reuse-journal" in err
    assert len(err.strip().splitlines()) == 1
    assert live.count("POST", SUBMIT) == sent
    code = await anyio.to_thread.run_sync(
        main, ["batch", str(second), *common, "--reuse-journal"]
    )
    assert code == 0


# -- finding 8: late creation after the end is followed up -----------------------------


async def test_the_summary_says_how_to_follow_up_lost_submits(fake, tmp_path):
    journal = tmp_path / "j.sqlite"
    async with bound_client(fake) as pb:
        item, _, _ = await park_a_row(fake, pb, journal)
        summary = await run_batch(pb, [kling(1)], journal=journal).summary()
    assert summary.follow_up == (item.key,)
    assert summary.follow_up_until is not None


async def test_audit_journal_finds_a_lost_submits_job_without_since(
    fake, tmp_path, capsys, monkeypatch
):
    """A run stopped while settling: its lost submit's job appears 2 min later."""
    journal = tmp_path / "j.sqlite"
    value = kling(5).to_input()
    previous = await Journal.open(journal)
    await previous.plan([("r5", SLUG, value)])
    began = fake.clock.time()
    await previous.submitting("r5", started_at=began, sent_input=value, attempt="a5")
    await previous.aclose()
    fake.advance(120)
    late = fake.submit_elsewhere(SLUG, value)  # the lost request's job, at last
    monkeypatch.setenv("PIXELBYTE_BASE_URL", fake.url)
    monkeypatch.setenv("PIXELBYTE_API_KEY", fake.api_key)
    code = await anyio.to_thread.run_sync(main, ["audit", "--journal", str(journal)])
    out = capsys.readouterr().out
    assert code == EXIT_CODES["needs_attention"], out
    assert f"ORPHAN {late.id}" in out
    assert "lost submit a5" in out


def test_audit_needs_since_without_a_journal(capsys):
    with pytest.raises(SystemExit) as usage:
        main(["audit"])
    assert usage.value.code == EXIT_CODES["usage"]
    err = capsys.readouterr().err
    assert "--since" in err
    assert len(err.strip().splitlines()) == 1


# -- finding 9: budget with unknown prices -----------------------------------------------


@pytest.fixture(name="dear")
async def _dear(monkeypatch):
    """An account at 3x list price, whose API neither estimates nor reports costs."""
    async with FakePixelByte(time_scale=1.0, report_costs=False) as fake:
        fake.set_default_script(FAST)
        fake.price_factor = 3.0
        fake.inject(
            Fault.status(405, "METHOD_NOT_ALLOWED"),  # cannot estimate; not retried
            method="POST",
            path="/v1/jobs/estimate",
            times=None,
        )
        monkeypatch.setenv("PIXELBYTE_BASE_URL", fake.url)
        monkeypatch.setenv("PIXELBYTE_API_KEY", fake.api_key)
        yield fake


async def test_a_budget_without_the_accounts_prices_is_refused(dear, tmp_path, capsys):
    rows = write_rows(tmp_path / "rows.jsonl", 2)
    argv = ["batch", str(rows), "--out", str(tmp_path / "o"), "--max-cost", "8"]
    code = await anyio.to_thread.run_sync(main, [*argv, "--poll-interval", "0.02"])
    err = capsys.readouterr().err
    assert code == EXIT_CODES["budget"]
    assert "--assume-list-prices" in err
    assert len(err.strip().splitlines()) == 1, err
    assert dear.count("POST", SUBMIT) == 0


async def test_assumed_list_prices_are_reported_as_assumed(dear, tmp_path, capsys):
    rows = write_rows(tmp_path / "rows.jsonl", 2)
    argv = ["batch", str(rows), "--out", str(tmp_path / "o"), "--max-cost", "8"]
    argv += ["--assume-list-prices", "--json", "--poll-interval", "0.02"]
    code = await anyio.to_thread.run_sync(main, argv)
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["costMicroCents"] == 500_000
    assert summary["assumedCostMicroCents"] == 500_000
    assert dear.ledger.charged_micro_cents == 1_500_000  # what the account paid


async def test_unsubmitted_rows_are_never_counted_as_spent(fake, tmp_path):
    """A row the API refused outright costs nothing, in the items and the total."""
    fake.inject(Fault.status(400, "INVALID_INPUT"), method="POST", path=SUBMIT, times=1)
    async with bound_client(fake) as pb:
        summary = await run_batch(
            pb, [kling(0), kling(1)], journal=tmp_path / "j"
        ).summary()
    refused = next(i for i in summary.items if i.status is BatchItemStatus.FAILED)
    assert refused.cost_micro_cents in {None, 0}
    assert summary.cost_micro_cents == 250_000


async def test_without_webhooks_a_models_submits_go_one_at_a_time(live, tmp_path):
    """
    Without webhooks nothing but the job list tells jobs apart: a batch never has
    two submits of one model on the wire at once (a cut or a kill -9 can then
    leave at most one row of unknown fate), whatever its concurrency.
    """
    live.inject(Fault.delay(0.05), method="POST", path=SUBMIT, times=None)
    poll = PollPolicy.fixed(0.02)
    async with bound_client(live, max_concurrent_jobs=5, poll=poll) as pb:
        summary = await run_batch(
            pb, [kling(n) for n in range(6)], journal=tmp_path / "j"
        ).summary()
    assert summary.completed == 6
    arrivals = sorted(r.time for r in live.requests_for("POST", SUBMIT))
    assert all(b - a >= 0.05 for a, b in pairwise(arrivals))


def test_a_send_window_starts_at_one_widens_per_answer_and_shuts_on_a_loss():
    from pixelbyte_async._batch._submits import SendWindow

    async def scenario() -> None:
        window = SendWindow(3)
        await window.acquire()
        second = asyncio.ensure_future(window.acquire())
        await asyncio.sleep(0)
        assert not second.done()  # a slow start: one on the wire
        window.release(answered=True)  # an answer: room for two
        await second
        third = asyncio.ensure_future(window.acquire())
        await third
        assert (window.limit, window.sending) == (2, 2)
        fourth = asyncio.ensure_future(window.acquire())
        cancelled = asyncio.ensure_future(window.acquire())
        fifth = asyncio.ensure_future(window.acquire())
        await asyncio.sleep(0)
        cancelled.cancel()
        window.release(answered=True)
        window.release(answered=True)  # the limit is capped at 3
        await fourth
        await fifth  # first come, first served; a waiter that left is skipped
        assert (window.limit, window.sending) == (3, 2)
        window.release(lost=True)  # a lost answer: one at a time again
        assert window.limit == 1
        sixth = asyncio.ensure_future(window.acquire())
        await asyncio.sleep(0)
        assert not sixth.done()  # the fifth is still on the wire
        window.release()
        await sixth
        assert (window.limit, window.sending) == (1, 1)

    asyncio.run(scenario())


async def test_with_webhooks_a_models_submits_go_side_by_side(live, tmp_path):
    """Each attempt's nonce tells its job apart: after a slow start, they overlap."""
    from pixelbyte_async.webhooks import WebhookReceiver

    live.inject(Fault.delay(0.05), method="POST", path=SUBMIT, times=None)
    poll = PollPolicy(webhook_grace=0.02, webhook_interval=0.02, min_interval=0.01)
    async with bound_client(live, max_concurrent_jobs=4, poll=poll) as pb:
        receiver = WebhookReceiver(live.webhook_secret)
        pb.use_webhooks(receiver, public_url="https://hooks.example.com/pb")
        summary = await run_batch(
            pb, [kling(n) for n in range(10)], journal=tmp_path / "j"
        ).summary()
    assert summary.completed == 10
    arrivals = sorted(r.time for r in live.requests_for("POST", SUBMIT))
    assert arrivals[1] - arrivals[0] >= 0.05  # the first alone
    assert min(b - a for a, b in pairwise(arrivals)) < 0.04
    one_charge_each(live, 10)
