"""
The batch report: ``DIR/report.html`` written when a batch ends or is interrupted,
rebuilt offline by `write_batch_report` / ``pixelbyte-async batch report``.

The page is parsed here (what it links, counts and says); tests/test_report_browser.py
opens it in a real headless Chromium.
"""

from __future__ import annotations

import json
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import anyio
import pytest
from pixelbyte_async import JournalError, run_batch, write_batch_report
from pixelbyte_async._cli import main as cli_main
from pixelbyte_async._journal import read_rows
from pixelbyte_async._report import ReportData, ReportRow, ReportRun
from pixelbyte_async._report._charts import spend_chart, timeline_chart
from pixelbyte_async._report._page import render
from pixelbyte_async.testing import JobScript

from conftest import bound_client, until


pytestmark = pytest.mark.anyio

SLUG = "kling-plus/kling-o1-standard/start-end-frame-to-video"


def row(n: int, **kw: object) -> dict[str, object]:
    return {
        "id": f"r{n}",
        "model": SLUG,
        "input": {
            "image_url": f"https://e.x/{n}.jpg",
            "end_image_url": "https://e.x/end.jpg",
            "duration": "5",
            "prompt": kw.get("prompt", f"shot {n}"),
        },
    }


class Page(HTMLParser):
    """What a report page links and shows: every tag with its attributes, the text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str, cls: str | None = None) -> list[dict[str, str | None]]:
        return [
            a
            for t, a in self.tags
            if t == tag and (cls is None or cls in (a.get("class") or "").split())
        ]

    @property
    def words(self) -> str:
        return " ".join(self.text)

    def links(self) -> list[str]:
        """Every URL the page would load or link to."""
        found = []
        for _, attrs in self.tags:
            for name in ("src", "href", "poster"):
                value = attrs.get(name)
                if value is not None:
                    found.append(value)
        return found


async def test_a_batch_writes_its_report_with_posters_and_a_failed_row(fake, tmp_path):
    """Totals, one card per row, posters downloaded next to the videos, the error."""
    fake.script_next(JobScript(queue_seconds=5, processing_seconds=200))
    fake.script_next(
        JobScript(outcome="failed", error_code="GENERATION_FAILED", error_message="no")
    )
    fake.script_next(JobScript(queue_seconds=5, processing_seconds=220))
    out = tmp_path / "out"
    async with bound_client(fake, max_concurrent_jobs=1) as pb:
        summary = await run_batch(
            pb,
            [row(0), row(1), row(2)],
            journal=tmp_path / "j.sqlite",
            out_dir=out,
            max_cost_micro_cents=2_000_000,
        ).summary()
    assert (summary.completed, summary.failed) == (2, 1)
    assert summary.report == out / "report.html"
    assert sorted(p.name for p in out.iterdir()) == [
        "r0.mp4",
        "r0.poster.jpg",
        "r2.mp4",
        "r2.poster.jpg",
        "report.html",
    ]
    assert (out / "r0.poster.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG
    rows = read_rows(tmp_path / "j.sqlite")
    assert rows["r1"].state == "failed"

    page = Page((out / "report.html").read_text())
    cards = page.all("li", "card")
    assert [c["data-group"] for c in cards] == ["done", "failed", "done"]
    posters = page.all("img", "poster")
    assert [p["src"] for p in posters] == ["r0.poster.jpg", "r2.poster.jpg"]
    assert all(p["alt"] and p["alt"].startswith("Poster of r") for p in posters)
    videos = page.all("video")
    assert [(v["src"], v["poster"]) for v in videos] == [
        ("r0.mp4", "r0.poster.jpg"),
        ("r2.mp4", "r2.poster.jpg"),
    ]
    assert "GENERATION_FAILED" in page.words
    # Only files of its own folder, all of them there.
    for link in page.links():
        assert "/" not in link, link
        assert ":" not in link, link
        assert (out / link).is_file(), link
    # Totals: counts, spend against the budget, and the charts.
    words = page.words
    assert "Done" in words
    assert "Failed" in words
    assert "$0.50" in words
    assert "$2.00" in words  # the budget
    assert {a.get("id") for a in page.all("svg")} == {
        "timeline",
        "concurrency",
        "spend",
    }
    assert len(page.all("g", "job")) == 3
    assert page.all("meta", None)[2]["http-equiv"] == "Content-Security-Policy"


async def test_the_journal_keeps_each_jobs_times_by_the_clients_clock(fake, tmp_path):
    """submitted → processing → ended, in order, on the client's (virtual) clock."""
    fake.script_next(JobScript(queue_seconds=30, processing_seconds=200))
    journal = tmp_path / "j.sqlite"
    start = fake.clock.time()
    async with bound_client(fake) as pb:
        await run_batch(pb, [row(0)], journal=journal, out_dir=tmp_path).summary()
    with sqlite3.connect(journal) as conn:
        submitted, running, ended = conn.execute(
            "SELECT started_at, running_at, ended_at FROM items"
        ).fetchone()
        runs = conn.execute(
            "SELECT started_at, ended_at, wall_seconds, interrupted FROM runs"
        ).fetchall()
    assert start <= submitted < running < ended
    assert running - submitted == pytest.approx(30, abs=20)  # seen by polling
    assert ended - submitted >= 230
    assert len(runs) == 1
    assert runs[0][3] == 0
    assert runs[0][1] >= ended


async def test_an_interrupted_batch_writes_its_report(fake, tmp_path):
    """Leaving early still writes the page: waiting rows, and the note to resume."""
    fake.set_default_script(JobScript(queue_seconds=5, processing_seconds=100_000))
    out = tmp_path / "out"
    async with (
        bound_client(fake, max_concurrent_jobs=2) as pb,
        run_batch(
            pb, [row(n) for n in range(3)], journal=tmp_path / "j.sqlite", out_dir=out
        ) as batch,
    ):
        await until(lambda: fake.count("POST", "/v1/jobs/submit") == 2)
    page = Page((out / "report.html").read_text())
    assert [c["data-group"] for c in page.all("li", "card")] == ["waiting"] * 3
    assert "interrupted" in page.words
    assert batch.journal_path is not None
    with sqlite3.connect(batch.journal_path) as conn:
        assert conn.execute("SELECT interrupted FROM runs").fetchall() == [(1,)]


async def test_report_false_writes_none(fake, tmp_path):
    async with bound_client(fake) as pb:
        summary = await run_batch(
            pb, [row(0)], out_dir=tmp_path, report=False
        ).summary()
    assert summary.report is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0.mp4"]  # no poster


async def test_rebuilt_offline_from_the_journal_and_a_moved_folder(fake, tmp_path):
    """write_batch_report: the same page from the journal, files found by name."""
    out = tmp_path / "out"
    journal = tmp_path / "j.sqlite"
    async with bound_client(fake) as pb:
        await run_batch(pb, [row(0), row(1)], journal=journal, out_dir=out).summary()
    moved = out.rename(tmp_path / "elsewhere")
    (moved / "report.html").unlink()
    path = await write_batch_report(journal, moved)
    assert path == moved / "report.html"
    page = Page(path.read_text())
    assert [p["src"] for p in page.all("img", "poster")] == [
        "r0.poster.jpg",
        "r1.poster.jpg",
    ]
    # A file that is gone is not linked.
    (moved / "r1.mp4").unlink()
    page = Page((await write_batch_report(journal, moved)).read_text())
    assert [v["src"] for v in page.all("video")] == ["r0.mp4"]


async def test_a_journal_from_before_the_report_still_gives_one(fake, tmp_path):
    """No runs table, no timeline columns: totals and cards, no charts."""
    out = tmp_path / "out"
    journal = tmp_path / "j.sqlite"
    async with bound_client(fake) as pb:
        await run_batch(pb, [row(0)], journal=journal, out_dir=out).summary()
    with sqlite3.connect(journal) as conn:
        conn.execute("DROP TABLE runs")
        for column in ("running_at", "ended_at", "poster_path"):
            conn.execute(f"ALTER TABLE items DROP COLUMN {column}")
        conn.execute("UPDATE items SET started_at = NULL")
    page = Page((await write_batch_report(journal, out)).read_text())
    assert len(page.all("li", "card")) == 1
    assert page.all("svg") == []
    assert page.all("img", "poster") == []  # its poster path was not journaled


async def test_a_missing_or_foreign_journal_is_a_journal_error(tmp_path):
    with pytest.raises(JournalError, match="no such journal file"):
        await write_batch_report(tmp_path / "nope.sqlite", tmp_path)
    (tmp_path / "x.sqlite").write_text("not a database")
    with pytest.raises(JournalError):
        await write_batch_report(tmp_path / "x.sqlite", tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_text_is_escaped_and_nothing_outside_the_folder_is_linked(tmp_path):
    """Prompts, keys and errors are text; a file outside the folder is never linked."""
    (tmp_path / "a b#1.mp4").write_bytes(b"x")
    hostile = '<script>alert(1)</script><img src="https://evil.example/x.png">'
    data = ReportData(
        rows=(
            ReportRow(
                key="a b#1",
                position=0,
                model=SLUG,
                state="downloaded",
                job_status="completed",
                job_id="job_1",
                prompt=hostile,
                cost_micro_cents=250_000,
                cost_known=True,
                video="a b#1.mp4",
                submitted_at=10.0,
                ended_at=250.0,
            ),
            ReportRow(
                key="</li><script>",
                position=1,
                model=SLUG,
                state="failed",
                job_id="job_2",
                error=hostile,
                submitted_at=20.0,
                ended_at=40.0,
            ),
        ),
        runs=(ReportRun(started_at=0, ended_at=300, wall_seconds=300),),
    )
    text = render(data)
    page = Page(text)
    assert [s for t, s in page.tags if t == "script"] == [{}]  # only the page's own
    assert "evil.example" not in " ".join(page.links())
    assert [v["src"] for v in page.all("video")] == ["a%20b%231.mp4"]
    assert len(page.all("li", "card")) == 2


def test_charts_say_what_they_show():
    rows = tuple(
        ReportRow(
            key=f"r{n}",
            position=n,
            model=SLUG,
            state="downloaded" if n else "submitted",
            job_id=f"job_{n}",
            cost_micro_cents=250_000,
            cost_known=True,
            submitted_at=100.0 + n,
            running_at=130.0 + n,
            ended_at=None if n == 0 else 340.0 + n,
        )
        for n in range(3)
    )
    timeline = timeline_chart(rows)
    assert timeline is not None
    assert "3 jobs over" in timeline
    assert "2 with a known end" in timeline
    assert timeline.count('class="job done"') == 2
    assert timeline.count('class="job waiting open"') == 1
    spend = spend_chart(rows, budget=1_000_000)
    assert spend is not None
    assert "$0.75 spent in all" in spend
    assert "budget of $1.00" in spend
    assert timeline_chart(()) is None


def test_cli_rebuilds_the_report(fake_process_free_journal, tmp_path, capsys):
    """``batch report FILE --out DIR``: FILE's journal, or the journal itself."""
    rows_file, out = fake_process_free_journal
    assert cli_main(["batch", "report", str(rows_file), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith("Report written: ")
    assert "report.html" in said
    journal = rows_file.with_name(rows_file.name + ".journal.sqlite")
    (out / "report.html").unlink()
    assert cli_main(["batch", "report", str(journal), "--out", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"report": str(out / "report.html"), "journal": str(journal)}
    assert (out / "report.html").is_file()


def test_cli_report_without_a_journal_is_one_line_exit_13(tmp_path, capsys):
    code = cli_main(
        ["batch", "report", str(tmp_path / "rows.jsonl"), "--out", str(tmp_path)]
    )
    assert code == 13
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "no such journal file" in err[0]


@pytest.fixture
def fake_process_free_journal(tmp_path: Path) -> tuple[Path, Path]:
    """A finished batch's file, journal and output folder, made with --sandbox."""
    frame = Path(__file__).parent.parent / "pixelbyte_async" / "_data" / "sample.png"
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"r{n}",
                    "start": str(frame),
                    "end": str(frame),
                    "prompt": f"p{n}",
                    "duration": 5,
                }
            )
            + "\n"
            for n in range(2)
        )
    )
    out = tmp_path / "out"
    journal = rows_file.with_name(rows_file.name + ".journal.sqlite")
    argv = ["batch", str(rows_file), "--out", str(out), "--sandbox"]
    assert cli_main([*argv, "--journal", str(journal), "--quiet"]) == 0
    return rows_file, out


def test_a_big_batch_keeps_its_page_light():
    """2,000 rows: a timeline about 600 px tall; posters past the first 120 lazy."""
    rows = tuple(
        ReportRow(
            key=f"r{i}",
            position=i,
            model=SLUG,
            state="downloaded",
            job_id=f"job_{i}",
            submitted_at=float(i),
            ended_at=i + 240.0,
            poster=f"r{i}.poster.jpg",
        )
        for i in range(2000)
    )
    page = Page(render(ReportData(rows=rows)))
    timeline = next(a for a in page.all("svg") if a["id"] == "timeline")
    assert timeline["viewbox"] is not None
    height = float(timeline["viewbox"].split()[3])
    assert 600 <= height <= 700
    lazy = [a.get("loading") for a in page.all("img", "poster")]
    assert lazy[:120] == [None] * 120
    assert lazy[120:] == ["lazy"] * 1880


async def test_rows_skipped_for_the_budget_say_so(fake, tmp_path):
    """A row the last run skipped (over the budget) is 'skipped: budget', not waiting."""
    out = tmp_path / "out"
    journal = tmp_path / "j.sqlite"
    async with bound_client(fake) as pb:
        summary = await run_batch(
            pb,
            [row(n) for n in range(3)],
            journal=journal,
            out_dir=out,
            max_cost_micro_cents=500_000,  # two rows at $0.25
            fit=True,
        ).summary()
    assert (summary.completed, summary.skipped) == (2, 1)
    page = Page((out / "report.html").read_text())
    assert [c["data-group"] for c in page.all("li", "card")] == [
        "done",
        "done",
        "skipped",
    ]
    assert "skipped: budget" in page.words
    # A later run that submits it: no longer skipped.
    async with bound_client(fake) as pb:
        await run_batch(
            pb, [row(n) for n in range(3)], journal=journal, out_dir=out
        ).summary()
    page = Page((out / "report.html").read_text())
    assert [c["data-group"] for c in page.all("li", "card")] == ["done"] * 3


async def test_a_report_that_cannot_be_made_never_stops_the_batch(
    fake, tmp_path, monkeypatch, caplog
):
    """A bug in the page (or a full disk) is logged; the batch ends as it would."""
    import pixelbyte_async._report as report

    def broken(*_: object) -> None:
        raise ValueError("a bug in the page")

    monkeypatch.setattr(report, "render", broken)
    async with bound_client(fake) as pb:
        with anyio.fail_after(30):  # it used to hang: the batch never ended
            summary = await run_batch(pb, [row(0)], out_dir=tmp_path).summary()
    assert summary.completed == 1
    assert summary.report is None
    assert "the batch report could not be written" in caplog.text
    assert not (tmp_path / "report.html").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
