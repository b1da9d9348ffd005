"""The batch journal: SQLite in WAL mode, one row per input, one writer process."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import anyio
import pytest
from pixelbyte_async import JournalError
from pixelbyte_async._journal import SCHEMA_VERSION, Journal, _connection, read_rows
from pixelbyte_async._journal._connection import JournalConnection

from conftest import until


pytestmark = pytest.mark.anyio

SLUG = "kling-plus/kling-o1-standard/start-end-frame-to-video"


def doc(n):
    return {"image_url": f"https://e.x/{n}.jpg", "end_image_url": "https://e.x/b.jpg"}


@pytest.fixture(name="path")
def _path(tmp_path):
    return tmp_path / "runs" / "batch.sqlite"


async def test_new_journal_is_wal_with_schema(path):
    """A new journal creates its directory, uses WAL and records its schema version."""
    journal = await Journal.open(path)
    await journal.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        version = conn.execute(
            "SELECT value FROM meta WHERE name = 'schema_version'"
        ).fetchone()
    conn.close()
    assert version == (str(SCHEMA_VERSION),)


async def test_row_lifecycle(path):
    """planned → submitting → submitted → completed → downloaded, all durable."""
    journal = await Journal.open(path)
    try:
        rows = await journal.plan([("a", SLUG, doc(1)), ("b", SLUG, doc(2))])
        assert [r.state for r in rows.values()] == ["planned", "planned"]
        await journal.submitting("a", started_at=1000.5, sent_input=doc(1))
        assert (await journal.get("a")).state == "submitting"
        await journal.submitted(
            "a",
            job_id="job_1",
            cost_micro_cents=250_000,
            cost_known=True,
            status="pending",
        )
        await journal.status("a", status="processing")
        assert (await journal.get("a")).state == "submitted"
        await journal.status("a", status="completed", output_url="https://cdn/x.mp4")
        await journal.downloaded("a", path="/out/a.mp4", size=1234)
    finally:
        await journal.aclose()
    row = read_rows(path)["a"]
    assert (row.state, row.job_id, row.cost_micro_cents, row.cost_known) == (
        "downloaded",
        "job_1",
        250_000,
        True,
    )
    assert (row.started_at, row.attempts, row.job_status) == (1000.5, 1, "completed")
    assert (row.output_url, row.output_path, row.output_bytes) == (
        "https://cdn/x.mp4",
        "/out/a.mp4",
        1234,
    )
    assert row.input == doc(1)


async def test_plan_keeps_existing_rows(path):
    """Planning again adds new keys only; a started row keeps its state and input."""
    journal = await Journal.open(path)
    try:
        await journal.plan([("a", SLUG, doc(1)), ("b", SLUG, doc(2))])
        await journal.submitting("a", started_at=1.0, sent_input=None)
        rows = await journal.plan(
            [("a", SLUG, doc(9)), ("b", SLUG, doc(8)), ("c", SLUG, doc(3))]
        )
    finally:
        await journal.aclose()
    assert list(rows) == ["a", "b", "c"]
    assert (rows["a"].state, rows["a"].input) == ("submitting", doc(1))
    assert (rows["b"].state, rows["b"].input) == ("planned", doc(8))


async def test_job_ids_cover_attempts_and_candidates(path):
    """Every job id the journal ever saw is excluded from reconciling."""
    journal = await Journal.open(path)
    try:
        await journal.plan([("a", SLUG, doc(1)), ("b", SLUG, doc(2))])
        await journal.submitting("a", started_at=1.0, sent_input=None)
        await journal.submitted(
            "a", job_id="job_old", cost_micro_cents=1, cost_known=True, status="failed"
        )
        await journal.status("a", status="failed", error="boom")
        await journal.submitting("a", started_at=2.0, sent_input=None)
        await journal.submitted(
            "a", job_id="job_new", cost_micro_cents=1, cost_known=True, status="pending"
        )
        await journal.submitting("b", started_at=3.0, sent_input=None)
        await journal.needs_attention("b", reason="?", candidates=["job_x", "job_y"])
        ids = await journal.job_ids()
        row = await journal.get("b")
    finally:
        await journal.aclose()
    assert ids == {"job_old", "job_new", "job_x", "job_y"}
    assert (row.state, row.candidates) == ("needs_attention", ("job_x", "job_y"))


async def test_unsubmitted_goes_back_to_planned(path):
    """A submit that created no job returns the row to planned, with the reason."""
    journal = await Journal.open(path)
    try:
        await journal.plan([("a", SLUG, doc(1))])
        await journal.submitting("a", started_at=1.0, sent_input=None)
        await journal.unsubmitted("a", error="HTTP 400 INVALID_INPUT")
        row = await journal.get("a")
    finally:
        await journal.aclose()
    assert (row.state, row.job_id, row.error, row.attempts) == (
        "planned",
        None,
        "HTTP 400 INVALID_INPUT",
        1,
    )


async def test_one_process_per_journal(path):
    """A second writer is refused while the first holds the journal, not after."""
    first = await Journal.open(path)
    try:
        with pytest.raises(JournalError, match="in use"):
            await Journal.open(path)
    finally:
        await first.aclose()
    again = await Journal.open(path)
    await again.aclose()
    await again.aclose()  # idempotent


async def test_newer_schema_is_refused(path):
    """A journal written by a newer SDK is not misread."""
    journal = await Journal.open(path)
    await journal.aclose()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    conn.close()
    with pytest.raises(JournalError, match="schema version 99"):
        await Journal.open(path)


async def test_not_a_journal(tmp_path):
    """Any other file is refused with JournalError."""
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"hello, this is not sqlite" * 100)
    with pytest.raises(JournalError):
        await Journal.open(path)


async def test_readonly_open_creates_nothing(path):
    """A dry run reads a missing journal as empty and does not create it."""
    journal = await Journal.open(path, readonly=True)
    try:
        assert await journal.rows() == {}
    finally:
        await journal.aclose()
    assert not path.exists()
    assert not path.parent.exists()


async def test_concurrent_writes_are_serialised(path):
    """Many tasks writing at once leave every row consistent."""
    journal = await Journal.open(path)
    keys = [f"k{n}" for n in range(40)]
    try:
        await journal.plan([(k, SLUG, doc(k)) for k in keys])

        async def run(key):
            await journal.submitting(key, started_at=1.0, sent_input=None)
            await journal.submitted(
                key,
                job_id=f"job_{key}",
                cost_micro_cents=5,
                cost_known=True,
                status="pending",
            )
            await journal.status(key, status="completed", output_url="u")

        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(run, key)
        rows = await journal.rows()
    finally:
        await journal.aclose()
    assert {r.state for r in rows.values()} == {"completed"}
    assert {r.job_id for r in rows.values()} == {f"job_{k}" for k in keys}


async def test_closed_journal_refuses_writes(path):
    """Using a closed journal is an error, not a silent no-op."""
    journal = await Journal.open(path)
    await journal.aclose()
    with pytest.raises(JournalError, match="closed"):
        await journal.rows()


async def test_a_write_queued_behind_the_thread_lands_if_its_caller_is_cancelled(path):
    """A one-row write waiting for a synced commit still lands after a cancel."""
    journal = await Journal.open(path)
    try:
        await journal.plan([("a", SLUG, doc(1))])
        gate = threading.Event()
        busy = asyncio.ensure_future(journal._call(gate.wait))
        await until(lambda: journal._limiter.borrowed_tokens)
        write = asyncio.ensure_future(journal.status("a", status="processing", at=5.0))
        await until(
            lambda: not write.done() and journal._limiter.statistics().tasks_waiting
        )
        write.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await write
        await busy
        row = await journal.get("a")
        assert row.job_status == "processing"
    finally:
        await journal.aclose()


@pytest.mark.parametrize("slow", ["_STALL", "_SLOW_SYNC"])
async def test_synced_commits_run_on_the_loop_until_the_disk_is_slow(
    path, monkeypatch, slow
):
    """
    A row alone: no worker-thread hop while the disk syncs quickly; then the thread.

    One sync that stalls (``_STALL``) sends them there at once; syncs that are
    slow by their median (``_SLOW_SYNC``) after eight of them.
    """
    journal = await Journal.open(path)
    hops: list[str] = []
    call = JournalConnection._call

    async def counted(self, fn, *args, **kw):
        hops.append(getattr(fn, "__name__", ""))
        return await call(self, fn, *args, **kw)

    monkeypatch.setattr(JournalConnection, "_call", counted)
    keys = [f"r{n}" for n in range(12)]
    try:
        await journal.plan([(k, SLUG, doc(n)) for n, k in enumerate(keys)])
        hops.clear()
        await journal.submitting(keys[0], started_at=1.0, sent_input={}, alone=True)
        assert hops == []
        monkeypatch.setattr(_connection, slow, -1.0)  # every sync is slow now
        on_loop = 1 if slow == "_STALL" else 7  # the eighth sync measured
        for n, key in enumerate(keys[1:], start=1):
            await journal.submitting(key, started_at=1.0 + n, sent_input={}, alone=True)
            assert len(hops) == max(0, n - on_loop), (n, hops)
    finally:
        await journal.aclose()
    assert {r.state for r in read_rows(path).values()} == {"submitting"}


async def test_a_failed_synced_commit_fails_its_callers(path, monkeypatch):
    """A sync that fails (a full disk) raises in every call it held, nothing kept."""
    journal = await Journal.open(path)
    try:
        await journal.plan([("a", SLUG, doc(1)), ("b", SLUG, doc(2))])

        def full(rows):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(journal, "_submitting_sync", full)
        results = await asyncio.gather(
            *(journal.submitting(k, started_at=1.0, sent_input={}) for k in "ab"),
            return_exceptions=True,
        )
        assert [type(r) for r in results] == [sqlite3.OperationalError] * 2
        assert {(await journal.get(k)).state for k in "ab"} == {"planned"}
    finally:
        await journal.aclose()


async def test_a_row_alone_is_synced_without_a_turn_of_the_loop(path):
    """`submitting(alone=True)` is on the disk before the loop moves on; others hop."""
    journal = await Journal.open(path)
    try:
        await journal.plan([("a", SLUG, doc(1)), ("b", SLUG, doc(2))])
        turned: list[str] = []
        asyncio.get_running_loop().call_soon(turned.append, "turn")
        await journal.submitting("a", started_at=1.0, sent_input={}, alone=True)
        assert turned == []
        assert (await journal.get("a")).state == "submitting"
        await journal.submitting("b", started_at=2.0, sent_input={})  # may group
        assert turned == ["turn"]  # through the worker thread
        assert (await journal.get("b")).state == "submitting"
    finally:
        await journal.aclose()
