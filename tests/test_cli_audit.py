"""The CLI's audit command, and the batch's --settle and --fit (issue 10)."""

from __future__ import annotations

import json

import anyio
import pytest
from pixelbyte_async import AmbiguousSubmitError, KlingO1StartEndFrame
from pixelbyte_async._cli import EXIT_CODES, main
from pixelbyte_async.testing import FakePixelByte, Fault, JobScript

from conftest import bound_client, write_rows


pytestmark = pytest.mark.anyio

KEY = "pb_live_SECRET_audit_key"
FAST = JobScript(queue_seconds=0.05, processing_seconds=0.15)
REQUEST = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
)


@pytest.fixture(name="live")
async def _live(monkeypatch):
    async with FakePixelByte(api_key=KEY, time_scale=1.0) as fake:
        fake.set_default_script(JobScript(queue_seconds=60, processing_seconds=60))
        monkeypatch.setenv("PIXELBYTE_BASE_URL", fake.url)
        monkeypatch.setenv("PIXELBYTE_API_KEY", KEY)
        yield fake


async def cli(*argv):
    return await anyio.to_thread.run_sync(main, [*argv])


async def test_audit_lists_prices_and_cancels_orphans(live, capsys):
    """A lost submit's job is an orphan: listed at its list price, then cancelled."""
    live.set_default_script(JobScript(queue_seconds=3600, processing_seconds=60))
    live.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    async with bound_client(live, settle=0.5) as pb:
        with pytest.raises(AmbiguousSubmitError):
            await pb.submit(REQUEST)  # a script that never reconciles
    [orphan] = live.jobs
    await anyio.sleep(0.6)  # its settle horizon passes (real time)
    code = await cli("audit", "--since", "1h", "--settle", "0.5")
    text = capsys.readouterr().out
    assert code == EXIT_CODES["needs_attention"]
    assert f"ORPHAN {orphan}" in text
    assert "$0.25 at list price" in text
    assert f"pixelbyte-async cancel {orphan}" in text
    code = await cli(
        "audit", "--since", "1h", "--cancel-pending", "--json", "--settle", "0.5"
    )
    report = json.loads(capsys.readouterr().out)
    assert [o["jobId"] for o in report["orphans"]] == [orphan]
    assert report["orphans"][0]["proven"] is True
    assert report["refundedMicroCents"] == 250_000
    assert live.ledger.charged_micro_cents == 0
    assert KEY not in text


async def test_audit_skips_jobs_a_journal_claims(live, tmp_path, capsys):
    rows = write_rows(tmp_path / "rows.jsonl", 1)
    live.set_default_script(FAST)
    journal = tmp_path / "j.sqlite"
    out = str(tmp_path / "out")
    assert (
        await cli(
            "batch",
            str(rows),
            "--out",
            out,
            "--journal",
            str(journal),
            "--quiet",
            "--poll-interval",
            "0.02",
        )
        == 0
    )
    capsys.readouterr()
    code = await cli("audit", "--since", "1h", "--journal", str(journal))
    assert code == EXIT_CODES["ok"]
    assert "No job of this machine's lost submits" in capsys.readouterr().out


@pytest.mark.parametrize("when", ["yesterday", "-2h", "2x"])
def test_audit_refuses_bad_windows(when, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["audit", f"--since={when}"])
    assert exit_.value.code == EXIT_CODES["usage"]
    assert "Traceback" not in capsys.readouterr().err


async def test_batch_fit_runs_what_the_budget_allows(live, tmp_path, capsys):
    live.set_default_script(FAST)
    rows = write_rows(tmp_path / "rows.jsonl", 4)
    code = await cli(
        "batch",
        str(rows),
        "--out",
        str(tmp_path / "o"),
        "--max-cost",
        "0.60",
        "--fit",
        "--json",
        "--poll-interval",
        "0.02",
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == EXIT_CODES["budget"]
    assert (summary["completed"], summary["skipped"]) == (2, 2)
    assert live.ledger.charged_micro_cents == 500_000
    assert summary["orphans"] == []


async def test_batch_fit_needs_a_budget(tmp_path, capsys):
    rows = write_rows(tmp_path / "rows.jsonl", 1)
    code = await cli(
        "batch", str(rows), "--out", str(tmp_path / "o"), "--fit", "--sandbox"
    )
    assert code == EXIT_CODES["validation"]
    assert "max_cost" in capsys.readouterr().err


async def test_audit_refuses_a_journal_that_does_not_exist(live, tmp_path, capsys):
    """A mistyped --journal must not make the batch's jobs look orphaned."""
    async with bound_client(live) as pb:
        await pb.submit(REQUEST)
    code = await cli(
        "audit",
        "--since",
        "1h",
        "--journal",
        str(tmp_path / "typo.sqlite"),
        "--cancel-pending",
    )
    assert code == EXIT_CODES["journal"]
    err = capsys.readouterr().err
    assert "no journal at" in err
    assert "Traceback" not in err
    assert live.ledger.charged_micro_cents == 250_000  # nothing was cancelled


async def test_audit_never_cancels_another_apps_pending_job(live, capsys):
    """Issue 21 finding 3: app B's pending job survives app A's --cancel-pending."""
    live.set_default_script(JobScript(queue_seconds=3600, processing_seconds=60))
    async with bound_client(live, ledger=None) as other_app:  # another machine
        theirs = await other_app.submit(REQUEST)
    code = await cli("audit", "--since", "5m", "--cancel-pending")
    out = capsys.readouterr().out
    assert code == EXIT_CODES["ok"]
    assert "Other submitters' jobs: 1" in out
    assert "ORPHAN" not in out
    assert live.jobs[theirs.id].status == "pending"
    assert live.ledger.charged_micro_cents == 250_000
    # Named explicitly, it is the user's decision.
    code = await cli("audit", "--since", "5m", "--cancel", theirs.id)
    assert live.jobs[theirs.id].status == "cancelled"


async def test_earlier_jobs_are_outside_a_runs_audit(live, tmp_path, capsys):
    """Issue 21 finding 4: jobs made a minute before the run are not in its window."""
    live.set_default_script(FAST)
    async with bound_client(live, ledger=None) as earlier:
        for _ in range(3):
            await earlier.submit(REQUEST)
    live.advance(60)  # a minute later (the old window reached 120 s back)
    rows = write_rows(tmp_path / "rows.jsonl", 2)
    out_dir = str(tmp_path / "o")
    code = await cli(
        "batch", str(rows), "--out", out_dir, "--json", "--poll-interval", "0.02"
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["orphans"] == []
    assert summary["otherSubmittersJobs"] == []
