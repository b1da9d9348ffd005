"""
What a batch report shows, read from a journal's database: `collect` → `ReportData`.

Reading is synchronous (it runs in the journal's worker thread, or on a snapshot of
a journal file) and tolerant: a journal written before the report existed has no
``runs`` table and no timeline columns, and still gives a report (without charts
where the times are missing).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

import attrs


__all__ = ["ReportData", "ReportRow", "ReportRun", "collect"]

#: Row states, grouped the way the report counts them.
DONE = frozenset({"completed", "downloaded"})
FAILED = frozenset({"failed", "cancelled"})
ATTENTION = frozenset({"needs_attention"})
#: planned (unless the last run skipped it), submitting, submitted: not finished.
WAITING = frozenset({"planned", "submitting", "submitted"})


@attrs.frozen(kw_only=True)
class ReportRow:
    """
    One row of the batch as the report shows it.

    Times are Unix seconds by the client's clock (the sandbox's under
    ``--sandbox``); files are paths relative to the report's folder, or ``None``
    when there is none there (a file elsewhere is never linked: the report only
    reads its own folder).
    """

    key: str
    position: int
    model: str
    state: str
    job_id: str | None = None
    job_status: str | None = None
    prompt: str | None = None
    duration: float | None = None
    cost_micro_cents: int | None = None
    cost_known: bool = False
    error: str | None = None
    attempts: int = 0
    submitted_at: float | None = None
    running_at: float | None = None
    ended_at: float | None = None
    video: str | None = None
    poster: str | None = None
    skipped: str | None = None

    @property
    def group(self) -> str:
        """``done``, ``failed``, ``attention``, ``skipped`` or ``waiting``."""
        if self.state in DONE:
            return "done"
        if self.state in FAILED:
            return "failed"
        if self.state in ATTENTION:
            return "attention"
        if self.state == "planned" and self.skipped is not None:
            return "skipped"  # by the last run: over the budget, say
        return "waiting"

    @property
    def spend(self) -> int:
        """What the row costs the account (a failed or cancelled job is refunded)."""
        if self.state in FAILED or self.job_id is None:
            return 0
        return self.cost_micro_cents or 0


@attrs.frozen(kw_only=True)
class ReportRun:
    """One run of the batch: client-clock start and end, real seconds, its budget."""

    started_at: float
    ended_at: float
    wall_seconds: float
    budget_micro_cents: int | None = None
    stop_reason: str | None = None
    interrupted: bool = False


@attrs.frozen(kw_only=True)
class ReportData:
    """Everything a report page shows."""

    rows: tuple[ReportRow, ...]
    runs: tuple[ReportRun, ...] = ()
    source: str | None = None
    generated_at: float = 0.0

    def count(self, group: str) -> int:
        """How many rows are in *group* (see `ReportRow.group`)."""
        return sum(1 for r in self.rows if r.group == group)

    @property
    def confirmed_micro_cents(self) -> int:
        """Spend the API reported (charges, net of refunds)."""
        return sum(r.spend for r in self.rows if r.cost_known)

    @property
    def assumed_micro_cents(self) -> int:
        """Spend counted at an estimate: jobs whose charge the API did not report."""
        return sum(r.spend for r in self.rows if not r.cost_known)

    @property
    def budget_micro_cents(self) -> int | None:
        """The latest run's budget (``--max-cost``), if it had one."""
        return self.runs[-1].budget_micro_cents if self.runs else None

    @property
    def wall_seconds(self) -> float:
        """Real time, over every recorded run."""
        return sum(r.wall_seconds for r in self.runs)

    @property
    def clock_seconds(self) -> float:
        """The same runs by the client's clock (the sandbox's under ``--sandbox``)."""
        return sum(max(0.0, r.ended_at - r.started_at) for r in self.runs)


def collect(
    conn: sqlite3.Connection, out_dir: str | os.PathLike[str], *, now: float
) -> ReportData:
    """
    Read the report's data from a journal's database *conn*.

    Args:
        conn: An open journal database (only read).
        out_dir: The report's folder: output files in it are linked.
        now: When the report is made (Unix time, for the page's footer).

    """
    folder = Path(out_dir).absolute()
    items = {r[1] for r in conn.execute("PRAGMA table_info(items)")}

    def col(name: str) -> str:
        return name if name in items else "NULL"

    cursor = conn.execute(
        "SELECT key, position, model, state, job_id, job_status, input_json, "  # noqa: S608 -- column names from PRAGMA, no input
        "cost_micro_cents, cost_known, error, attempts, started_at, "
        f"{col('running_at')}, {col('ended_at')}, output_path, {col('poster_path')}, "
        f"{col('skipped')} "
        "FROM items ORDER BY position"
    )
    rows = tuple(_row(values, folder) for values in cursor.fetchall())
    tables = {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    runs: tuple[ReportRun, ...] = ()
    if "runs" in tables:
        runs = tuple(
            ReportRun(
                started_at=started,
                ended_at=ended,
                wall_seconds=wall,
                budget_micro_cents=budget,
                stop_reason=reason,
                interrupted=bool(interrupted),
            )
            for started, ended, wall, budget, reason, interrupted in conn.execute(
                "SELECT started_at, ended_at, wall_seconds, budget_micro_cents, "
                "stop_reason, interrupted FROM runs ORDER BY id"
            )
        )
    source = conn.execute("SELECT value FROM meta WHERE name = 'source'").fetchone()
    return ReportData(
        rows=rows,
        runs=runs,
        source=None if source is None else str(source[0]),
        generated_at=now,
    )


def _row(values: tuple[Any, ...], folder: Path) -> ReportRow:
    (
        key,
        position,
        model,
        state,
        job_id,
        job_status,
        input_json,
        cost,
        cost_known,
        error,
        attempts,
        started_at,
        running_at,
        ended_at,
        output_path,
        poster_path,
        skipped,
    ) = values
    try:
        document = json.loads(input_json)
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    return ReportRow(
        key=str(key),
        position=int(position),
        model=str(model),
        state=str(state),
        job_id=job_id,
        job_status=job_status,
        prompt=_text(document.get("prompt")),
        duration=_number(document.get("duration")),
        cost_micro_cents=cost,
        cost_known=bool(cost_known),
        error=error,
        attempts=int(attempts or 0),
        submitted_at=started_at,
        running_at=running_at,
        ended_at=ended_at,
        video=_inside(output_path, folder) if state == "downloaded" else None,
        poster=_inside(poster_path, folder),
        skipped=skipped,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]  # checked by the except
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _inside(path: str | None, folder: Path) -> str | None:
    """
    The name of *path*'s file in *folder*, if a file of that name is there.

    By name, so a folder moved or copied with its report still links its files,
    and never a file outside *folder*.
    """
    if not path:
        return None
    name = Path(path).name
    if name in {"", ".", ".."} or not (folder / name).is_file():
        return None
    return name
