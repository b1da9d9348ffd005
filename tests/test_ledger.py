"""
The ledger (issue 21): where it lives, what it keeps, one job to one attempt.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pixelbyte_async import (
    KlingO1StartEndFrame,
    LedgerError,
    MemoryLedger,
    SqliteLedger,
)
from pixelbyte_async._ledger import Attempt, account_id, default_ledger_path

from conftest import bound_client


pytestmark = pytest.mark.anyio

KEY = "pb_live_SECRET_ledger_key"
REQUEST = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
)


def attempt(n: int, **changes) -> Attempt:
    values = {
        "id": f"attempt{n:08d}",
        "model": REQUEST.model_slug,
        "started_at": 1_800_000_000.0 + n,
        "ends_by": 1_800_000_900.0 + n,
        "state": "sending",
        "owner": "host:1:abc",
    }
    return Attempt(**{**values, **changes})


def test_the_default_ledger_is_named_by_a_hash_of_the_key(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    path = default_ledger_path(KEY)
    assert path.parent == tmp_path / "pixelbyte-async"
    assert KEY not in str(path)
    assert "SECRET" not in str(path)
    assert account_id(KEY) in path.name
    assert account_id(KEY) != account_id(KEY + "x")


async def test_ledger_spec_path_env_and_memory(monkeypatch, tmp_path, fake):
    monkeypatch.setenv("PIXELBYTE_LEDGER", str(tmp_path / "env.sqlite3"))
    async with bound_client(fake) as pb:
        assert pb.ledger.where == str(tmp_path / "env.sqlite3")
        await pb.submit(REQUEST)
    assert (tmp_path / "env.sqlite3").exists()
    monkeypatch.setenv("PIXELBYTE_LEDGER", ":memory:")
    async with bound_client(fake) as pb:
        assert pb.ledger.where == "memory"
    async with bound_client(fake, ledger=tmp_path / "given.sqlite3") as pb:
        assert pb.ledger.where == str(tmp_path / "given.sqlite3")
    shared = MemoryLedger()
    async with (
        bound_client(fake, ledger=shared) as a,
        bound_client(fake, ledger=shared) as b,
    ):
        job = await a.submit(REQUEST)
        assert (await b.ledger.claims([job.id]))[job.id].how == "submitted"


def written(path: Path) -> bytes:
    """Everything a ledger file holds on disk (the database and its log)."""
    return b"".join(
        part.read_bytes()
        for part in (path, path.with_name(path.name + "-wal"))
        if part.exists()
    )


async def test_the_key_is_never_in_the_ledger_file(fake, tmp_path):
    path = tmp_path / "l.sqlite3"
    async with bound_client(fake, ledger=path) as pb:
        await pb.submit(REQUEST)
        assert pb.ledger.where == str(path)
    assert fake.api_key.encode() not in written(path)
    assert written(path)  # the submit is there


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only directories")
async def test_a_read_only_place_falls_back_to_memory_with_one_warning(
    tmp_path, caplog
):  # pragma: no cover -- CI runs as root
    place = tmp_path / "ro"
    place.mkdir()
    place.chmod(0o500)
    ledger = SqliteLedger(place / "l.sqlite3", account="a")
    with caplog.at_level(logging.WARNING, logger="pixelbyte_async"):
        await ledger.begin(attempt(1))
        await ledger.begin(attempt(2))
    assert ledger.where == "memory"
    assert len([r for r in caplog.records if "in memory only" in r.getMessage()]) == 1
    assert (await ledger.attempt("attempt00000002")) is not None


async def test_an_unusable_place_falls_back_to_memory_with_one_warning(
    tmp_path, caplog
):
    """A file where the directory should be (as unwritable as it gets as root)."""
    (tmp_path / "blocker").write_text("not a directory")
    ledger = SqliteLedger(tmp_path / "blocker" / "l.sqlite3", account="a")
    with caplog.at_level(logging.WARNING, logger="pixelbyte_async"):
        await ledger.begin(attempt(1))
        await ledger.begin(attempt(2))
        assert (await ledger.attempt("attempt00000002")) is not None
    assert ledger.where == "memory"
    warned = [r for r in caplog.records if "in memory only" in r.getMessage()]
    assert len(warned) == 1
    await ledger.aclose()


async def test_another_programs_database_is_refused_before_any_submit(fake, tmp_path):
    foreign = tmp_path / "app.sqlite3"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    async with bound_client(fake, ledger=foreign) as pb:
        with pytest.raises(LedgerError, match="not a pixelbyte-async ledger"):
            await pb.submit(REQUEST)
    assert fake.count("POST", "/v1/jobs/submit") == 0


async def test_one_job_one_attempt_across_two_connections(tmp_path):
    """Two processes' ledgers on one file: the second claim of a job is refused."""
    path = tmp_path / "shared.sqlite3"
    first = SqliteLedger(path, account="a")
    second = SqliteLedger(path, account="a")
    await first.begin(attempt(1))
    await second.begin(attempt(2))
    assert (
        await first.claim("job_1", how="list", at=1.0, attempt="attempt00000001")
        is None
    )
    in_the_way = await second.claim(
        "job_1", how="list", at=2.0, attempt="attempt00000002"
    )
    assert in_the_way is not None
    assert in_the_way.attempt == "attempt00000001"
    # A submit's own answer beats an inferred claim; the loser is open again.
    assert (
        await second.claim("job_1", how="submitted", at=3.0, attempt="attempt00000002")
        is None
    )
    reopened = await first.attempt("attempt00000001")
    assert reopened is not None
    assert reopened.state == "unknown"
    # Accounts are kept apart in one file.
    other = SqliteLedger(path, account="b")
    assert await other.claims(["job_1"]) == {}
    for ledger in (first, second, other):
        await ledger.aclose()


async def test_a_ledger_is_bounded_by_time(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.sqlite3", account="a", retention=100.0)
    await ledger.begin(attempt(1, started_at=1000.0))
    await ledger.claim("job_1", how="submitted", at=1000.0, attempt="attempt00000001")
    await ledger.begin(attempt(2, started_at=1200.0))  # prunes what is 100 s older
    assert await ledger.attempt("attempt00000001") is None
    assert await ledger.claims(["job_1"]) == {}
    await ledger.aclose()
    memory = MemoryLedger(retention=100.0)
    await memory.begin(attempt(1, started_at=1000.0))
    await memory.begin(attempt(2, started_at=1200.0))
    assert await memory.attempt("attempt00000001") is None


def test_two_processes_share_one_ledger(tmp_path):
    """A claim made by another process is seen here, and refuses ours."""
    path = tmp_path / "shared.sqlite3"
    code = (
        "import asyncio\n"
        "from pixelbyte_async import SqliteLedger\n"
        "async def main():\n"
        f"    ledger = SqliteLedger({str(path)!r}, account='a')\n"
        "    print(await ledger.claim('job_9', how='person', at=5.0))\n"
        "    await ledger.aclose()\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(  # noqa: S603 -- our own code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "None"
    import asyncio

    async def here() -> None:
        ledger = SqliteLedger(path, account="a")
        claim = (await ledger.claims(["job_9"]))["job_9"]
        assert claim.how == "person"
        assert await ledger.claim("job_9", how="list", at=6.0, attempt="x") is not None
        await ledger.aclose()

    asyncio.run(here())


async def test_clients_opening_a_new_ledger_together_all_share_it(tmp_path):
    """Opening one fresh file at once (two workers starting): nobody falls back."""
    import asyncio

    for n in range(100):
        path = tmp_path / f"l{n}.sqlite3"
        ledgers = [SqliteLedger(path, account="a") for _ in range(4)]
        await asyncio.gather(*(ledger.ready() for ledger in ledgers))
        assert {ledger.where for ledger in ledgers} == {str(path)}
        for ledger in ledgers:
            await ledger.aclose()
