"""
The journal's schema and its rows: the tables, `JournalRow`, and decoding a row.

It also owns `read_rows`, the synchronous read of a journal file (no lock taken).
A journal from before attempt nonces is read (and, by a writer, upgraded) here.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from typing import Any, Literal, TypeAlias, get_args

import attrs

from pixelbyte_async._errors import AmbiguousSubmitError

from ._errors import JournalError


__all__ = [
    "SCHEMA_VERSION",
    "STATES",
    "JournalRow",
    "LostAttempt",
    "State",
    "columns",
    "decode_row",
    "read_rows",
    "write_schema",
]


#: The schema this module reads and writes (stored in ``meta.schema_version``).
SCHEMA_VERSION = 1

State: TypeAlias = Literal[
    "planned",
    "submitting",
    "submitted",
    "completed",
    "failed",
    "cancelled",
    "downloaded",
    "needs_attention",
]

#: Every row state, in lifecycle order.
STATES: tuple[State, ...] = get_args(State)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    key               TEXT PRIMARY KEY,
    position          INTEGER NOT NULL,
    model             TEXT NOT NULL,
    input_json        TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in STATES)})),
    started_at        REAL,
    job_id            TEXT,
    cost_micro_cents  INTEGER,
    cost_known        INTEGER NOT NULL DEFAULT 0,
    job_status        TEXT,
    output_url        TEXT,
    output_path       TEXT,
    output_bytes      INTEGER,
    attempts          INTEGER NOT NULL DEFAULT 0,
    error             TEXT,
    candidates_json   TEXT,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    running_at        REAL,
    ended_at          REAL,
    poster_path       TEXT,
    skipped           TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    key              TEXT NOT NULL REFERENCES items (key),
    started_at       REAL NOT NULL,
    sent_input_json  TEXT,
    job_id           TEXT,
    outcome          TEXT NOT NULL DEFAULT 'unknown',
    nonce            TEXT
);
CREATE INDEX IF NOT EXISTS attempts_by_key ON attempts (key);
CREATE TABLE IF NOT EXISTS runs (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at          REAL NOT NULL,
    ended_at            REAL NOT NULL,
    wall_seconds        REAL NOT NULL,
    budget_micro_cents  INTEGER,
    stop_reason         TEXT,
    interrupted         INTEGER NOT NULL DEFAULT 0
);
"""

#: Columns added to ``items`` after the first release, with their types: a
#: journal written before them gets them (NULL) when a writer opens it.
_ADDED_ITEM_COLUMNS = {
    "running_at": "REAL",
    "ended_at": "REAL",
    "poster_path": "TEXT",
    "skipped": "TEXT",
}


@attrs.frozen(kw_only=True)
class JournalRow:
    """
    One input of a batch as the journal last recorded it.

    Attributes:
        key: The input's stable key (its ``id``, or a hash of model and input).
        position: Its index in the batch when it was first planned.
        model: The model slug.
        input: The input as given (local frames as paths or ``sha256:`` digests).
        state: Where the row is in its lifecycle (see the package docstring).
        started_at: Unix time the latest submit attempt began, if any.
        job_id: The job, once known.
        cost_micro_cents: What the job was charged (or its estimate when the
            charge is unknown, see *cost_known*).
        cost_known: Whether *cost_micro_cents* came from the API.
        job_status: The job's status as last seen.
        output_url: The output URL, once completed.
        output_path: Where the output was written.
        output_bytes: Its size, to tell an intact file from a damaged one.
        attempts: How many submit attempts were made.
        error: The latest problem, in words.
        candidates: Job ids that could belong to a ``needs_attention`` row.
        attempt: The nonce of the latest submit attempt (the ``pb_attempt`` of its
            ``webhookUrl``), journaled before it was sent.

    """

    key: str
    position: int
    model: str
    input: dict[str, Any]
    state: State
    started_at: float | None = None
    job_id: str | None = None
    cost_micro_cents: int | None = None
    cost_known: bool = False
    job_status: str | None = None
    output_url: str | None = None
    output_path: str | None = None
    output_bytes: int | None = None
    attempts: int = 0
    error: str | None = None
    candidates: tuple[str, ...] = ()
    attempt: str | None = None


@attrs.frozen(kw_only=True)
class LostAttempt:
    """
    A journaled submit attempt whose fate was unknown and that no job is tied to.

    Attributes:
        key: Its row.
        model: The model it submitted.
        started_at: When it began (Unix time).
        attempt: Its nonce, if journaled.
        sent_input: The input it sent.
        outcome: ``unknown`` (a run stopped while settling it) or
            ``needs_attention`` (set aside for a person).

    """

    key: str
    model: str
    started_at: float
    attempt: str | None
    sent_input: dict[str, Any]
    outcome: str

    def error(self, where: object) -> AmbiguousSubmitError:
        """The attempt as the error its submit raised (for reconcile and the audit)."""
        return AmbiguousSubmitError(
            f"row {self.key} of {where}: a lost submit ({self.outcome})",
            model=self.model,
            input=self.sent_input,
            webhook_url=None,
            started_at=self.started_at,
            attempt=self.attempt,
        )


_COLUMNS = (
    "key, position, model, input_json, state, started_at, job_id, cost_micro_cents, "
    "cost_known, job_status, output_url, output_path, output_bytes, attempts, error, "
    "candidates_json, {nonce}"
)
_LATEST_NONCE = (
    "(SELECT nonce FROM attempts WHERE attempts.key = items.key "
    "ORDER BY attempts.id DESC LIMIT 1)"
)


def columns(conn: sqlite3.Connection) -> str:
    """The row columns; journals written before attempt nonces read them as NULL."""
    names = {r[1] for r in conn.execute("PRAGMA table_info(attempts)")}
    return _COLUMNS.format(nonce=_LATEST_NONCE if "nonce" in names else "NULL")


def decode_row(values: tuple[Any, ...]) -> JournalRow:
    """Decode one row selected with `columns`."""
    (
        key,
        position,
        model,
        input_json,
        state,
        started_at,
        job_id,
        cost,
        cost_known,
        job_status,
        output_url,
        output_path,
        output_bytes,
        attempts,
        error,
        candidates_json,
        nonce,
    ) = values
    return JournalRow(
        key=key,
        position=position,
        model=model,
        input=json.loads(input_json),
        state=state,
        started_at=started_at,
        job_id=job_id,
        cost_micro_cents=cost,
        cost_known=bool(cost_known),
        job_status=job_status,
        output_url=output_url,
        output_path=output_path,
        output_bytes=output_bytes,
        attempts=attempts,
        error=error,
        candidates=tuple(json.loads(candidates_json)) if candidates_json else (),
        attempt=nonce,
    )


def write_schema(conn: sqlite3.Connection) -> None:
    """Create the tables this version lacks and stamp the schema version."""
    with conn:
        conn.executescript(_SCHEMA)
        if "nonce" not in {r[1] for r in conn.execute("PRAGMA table_info(attempts)")}:
            # A journal from before attempt nonces: add the column, keep the rows.
            conn.execute("ALTER TABLE attempts ADD COLUMN nonce TEXT")
        have = {r[1] for r in conn.execute("PRAGMA table_info(items)")}
        for name, kind in _ADDED_ITEM_COLUMNS.items():
            if name not in have:  # a journal from before the batch report
                conn.execute(f"ALTER TABLE items ADD COLUMN {name} {kind}")
        conn.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?), (?, ?)",
            ("schema_version", str(SCHEMA_VERSION), "created_at", str(time.time())),
        )


def read_rows(path: str | os.PathLike[str]) -> dict[str, JournalRow]:
    """
    Read a journal file synchronously (for inspection and tests); no lock taken.

    Raises:
        JournalError: *path* is not a journal.

    """
    with contextlib.closing(sqlite3.connect(path)) as conn:
        try:
            cursor = conn.execute(
                f"SELECT {columns(conn)} FROM items ORDER BY position"  # noqa: S608 -- a constant column list
            )
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path} is not a batch journal: {exc}") from exc
        return {row.key: row for row in map(decode_row, cursor.fetchall())}
