"""
The journal refuses what could make a batch pay twice: a second writer under any
spelling of the same file, an emptied or foreign file, an unusable place.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest
from pixelbyte_async import JournalError
from pixelbyte_async._journal import Journal, _schema, read_rows


pytestmark = pytest.mark.anyio

SLUG = "kling-plus/kling-o1-standard/start-end-frame-to-video"
DOC = {"image_url": "https://e.x/a.jpg", "end_image_url": "https://e.x/b.jpg"}


@pytest.fixture(name="path")
def _path(tmp_path):
    return tmp_path / "runs" / "real.sqlite"


async def finished_journal(path: Path) -> None:
    """A journal as a finished run leaves it: one row, downloaded, closed."""
    journal = await Journal.open(path)
    try:
        await journal.plan([("a", SLUG, DOC)])
        await journal.submitting("a", started_at=1.0, sent_input=DOC)
        await journal.submitted(
            "a", job_id="job_1", cost_micro_cents=1, cost_known=True, status="pending"
        )
        await journal.downloaded("a", path="/out/a.mp4", size=3)
    finally:
        await journal.aclose()


def spell(path: Path, how: str) -> Path:
    """Another name for *path*: a symlink to it, or a path through ``x/..``."""
    if how == "symlink":
        link = path.parent.parent / "link.sqlite"
        link.symlink_to(path)
        return link
    detour = path.parent / "x"
    detour.mkdir(exist_ok=True)
    return Path(f"{path.parent}/x/../{path.name}")


def one_line(exc: pytest.ExceptionInfo[JournalError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- one writer per file, whatever its name ------------------------------------------


@pytest.mark.parametrize("how", ["symlink", "dotdot"])
async def test_second_spelling_is_refused_while_the_first_is_open(path, how):
    """A symlink or ./x/../ spelling of an open journal is refused, then works."""
    first = await Journal.open(path)
    try:
        await first.plan([("a", SLUG, DOC)])
        with pytest.raises(JournalError, match="in use by another run") as exc:
            await Journal.open(spell(path, how))
        assert "--journal" in one_line(exc)
        assert list(path.parent.parent.glob("link.sqlite.lock")) == []
    finally:
        await first.aclose()
    again = await Journal.open(path)
    try:
        assert list(await again.rows()) == ["a"]
    finally:
        await again.aclose()


async def test_database_lock_holds_without_the_lock_file(path):
    """With its lock file deleted, the open journal still refuses a second writer."""
    first = await Journal.open(path)
    try:
        path.with_name(path.name + ".lock").unlink()
        with pytest.raises(JournalError, match="in use by another run"):
            await Journal.open(path)
        await first.plan([("a", SLUG, DOC)])  # the refused opener did no harm
        assert list(await first.rows()) == ["a"]
    finally:
        await first.aclose()


async def test_writer_waits_for_no_one_holding_the_file_open(path):
    """Any other connection to the file (a sqlite3 shell, say) keeps a run out."""
    await finished_journal(path)
    other = sqlite3.connect(path)
    try:
        assert other.execute("SELECT count(*) FROM items").fetchone() == (1,)
        with pytest.raises(JournalError, match="open in another program"):
            await Journal.open(path)
    finally:
        other.close()
    journal = await Journal.open(path)
    await journal.aclose()


async def test_hard_link_is_refused(path):
    """A hard-linked journal is refused: SQLite finds its log by name, not by inode."""
    await finished_journal(path)
    link = path.with_name("hard.sqlite")
    os.link(path, link)
    for name in (path, link):
        for readonly in (False, True):
            with pytest.raises(JournalError, match="hard link") as exc:
                await Journal.open(name, readonly=readonly)
            assert str(name) in one_line(exc)
    link.unlink()
    journal = await Journal.open(path)
    await journal.aclose()


async def test_readonly_reader_works_while_a_run_holds_the_journal(path):
    """A dry run still reads a journal another run is writing."""
    writer = await Journal.open(path)
    try:
        await writer.plan([("a", SLUG, DOC)])
        reader = await Journal.open(path, readonly=True)
        try:
            assert list(await reader.rows()) == ["a"]
        finally:
            await reader.aclose()
        await writer.plan([("b", SLUG, DOC)])
    finally:
        await writer.aclose()
    assert list(read_rows(path)) == ["a", "b"]


async def test_a_run_starts_while_a_dry_run_holds_its_snapshot(path):
    """A dry run reads the journal into memory, so it keeps no run from starting."""
    await finished_journal(path)
    reader = await Journal.open(path, readonly=True)
    try:
        writer = await Journal.open(path)
        try:
            await writer.plan([("b", SLUG, DOC)])
        finally:
            await writer.aclose()
        assert list(await reader.rows()) == ["a"]  # its snapshot
    finally:
        await reader.aclose()


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pixelbyte_async._journal import Journal

    async def main():
        journal = await Journal.open(sys.argv[1])
        print("holding", flush=True)
        sys.stdin.readline()  # until killed
        await journal.aclose()

    asyncio.run(main())
    """
)

OPENER = textwrap.dedent(
    """
    import asyncio, sys
    from pixelbyte_async._journal import Journal, JournalError

    async def main():
        try:
            journal = await Journal.open(sys.argv[1])
        except JournalError as exc:
            print(exc)
            sys.exit(13)
        await journal.aclose()

    asyncio.run(main())
    """
)


async def run_python(code: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.parametrize("lock_file", ["kept", "deleted"])
async def test_other_process_is_refused_until_the_holder_is_killed(path, lock_file):
    """
    A journal held by another process is refused under any spelling (even with
    the lock file gone), and kill -9 of the holder releases it.
    """
    await finished_journal(path)
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        assert line == b"holding\n"
        if lock_file == "deleted":
            path.with_name(path.name + ".lock").unlink()
        with pytest.raises(JournalError, match="in use by another run"):
            await Journal.open(path)
        code, out = await run_python(OPENER, str(spell(path, "symlink")))
        assert code == 13, out
        assert "in use by another run" in out
    finally:
        holder.kill()
        await holder.wait()
    code, out = await run_python(OPENER, str(spell(path, "dotdot")))
    assert code == 0, out
    journal = await Journal.open(path)
    try:
        assert (await journal.get("a")).state == "downloaded"
    finally:
        await journal.aclose()


# -- only our own journals are used -------------------------------------------------------


async def test_emptied_journal_is_refused(path):
    """A finished journal truncated to 0 bytes is not taken for a fresh one."""
    await finished_journal(path)
    path.write_bytes(b"")
    for readonly in (False, True):
        with pytest.raises(JournalError, match="empty") as exc:
            await Journal.open(path, readonly=readonly)
        message = one_line(exc)
        assert str(path) in message
        assert "move it away" in message
    assert path.stat().st_size == 0


async def test_foreign_sqlite_file_is_refused_and_left_alone(tmp_path):
    """An SQLite database without our meta table is refused, not extended."""
    path = tmp_path / "photos.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE photos (name TEXT)")
    conn.close()
    before = path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(JournalError, match="not a batch journal") as exc:
            await Journal.open(path, readonly=readonly)
        assert "move it away" in one_line(exc)
    assert path.read_bytes() == before


async def test_half_truncated_journal_is_refused(path):
    """A journal cut short (garbage tail or head) is refused with one line."""
    await finished_journal(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(JournalError) as exc:
        await Journal.open(path)
    one_line(exc)


async def test_orphaned_write_ahead_log_is_refused(path):
    """A deleted journal whose -wal file survived is not recreated over it."""
    journal = await Journal.open(path)
    await journal.plan([("a", SLUG, DOC)])
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 0
    saved = wal.read_bytes()
    await journal.aclose()
    path.unlink()
    wal.write_bytes(saved)
    with pytest.raises(JournalError, match="-wal") as exc:
        await Journal.open(path)
    one_line(exc)
    assert not path.exists()


async def test_new_journal_appears_complete_or_not_at_all(path, monkeypatch):
    """A new journal is built aside and moved into place: a failed build leaves none."""
    with monkeypatch.context() as patch:
        patch.setattr(
            "pixelbyte_async._journal._schema._SCHEMA",
            _schema._SCHEMA + "CREATE TABLE (;",
        )
        with pytest.raises(JournalError, match="cannot use journal") as exc:
            await Journal.open(path)
        one_line(exc)
    assert sorted(p.name for p in path.parent.iterdir()) == ["real.sqlite.lock"]
    journal = await Journal.open(path)
    await journal.aclose()
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "real.sqlite",
        "real.sqlite.lock",
    ]
    assert read_rows(path) == {}


# -- unusable places raise JournalError, not OSError --------------------------------------


@pytest.fixture(name="unwritable")
def _unwritable(tmp_path):
    """A directory this process cannot create files in (root ignores chmod)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for candidate in (locked, Path("/sys")):
            probe = candidate / ".pixelbyte-probe"
            try:
                probe.touch()
            except OSError:
                yield candidate
                return
            probe.unlink()
        pytest.skip("no unwritable directory available")
    finally:
        locked.chmod(0o755)


async def test_unwritable_directory(unwritable):
    """A journal in a directory that cannot be written raises JournalError."""
    with pytest.raises(JournalError, match="cannot use journal") as exc:
        await Journal.open(unwritable / "batch.sqlite")
    one_line(exc)


async def test_path_is_a_directory(tmp_path):
    """A directory given as the journal is refused."""
    for readonly in (False, True):
        with pytest.raises(JournalError, match="is a directory") as exc:
            await Journal.open(tmp_path, readonly=readonly)
        one_line(exc)


async def test_parent_is_a_file(tmp_path):
    """A journal under a regular file (parent cannot be made) raises JournalError."""
    (tmp_path / "file").write_text("x")
    for readonly in (False, True):
        with pytest.raises(JournalError, match="cannot use journal") as exc:
            await Journal.open(
                tmp_path / "file" / "sub" / "j.sqlite", readonly=readonly
            )
        one_line(exc)
