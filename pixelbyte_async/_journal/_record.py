"""
`Journal`: the reads and writes of a batch's record, one transaction per call.

Each write records one step of a row's lifecycle (see the package docstring) before
the step it guards happens; the connection underneath is `JournalConnection`.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from ._connection import JournalConnection
from ._errors import JournalError
from ._schema import JournalRow, LostAttempt, State, columns, decode_row


__all__ = ["Journal"]

_T = TypeVar("_T")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Journal(JournalConnection):
    """
    A batch's durable record (see the package docstring); internal to `run_batch`.

    Open with `Journal.open` and close with `aclose`.  Every method runs its SQL
    in a worker thread, one call at a time, each in its own transaction.
    """

    # -- reads -------------------------------------------------------------------------

    async def rows(self) -> dict[str, JournalRow]:
        """Return every row by key, in planning order."""
        return await self._call(self._rows_sync)

    def _rows_sync(self) -> dict[str, JournalRow]:
        cursor = self._conn.execute(
            f"SELECT {columns(self._conn)} FROM items ORDER BY position"  # noqa: S608 -- a constant column list
        )
        return {row.key: row for row in map(decode_row, cursor.fetchall())}

    async def get(self, key: str) -> JournalRow | None:
        """Return the row of *key*, if it exists."""
        return await self._quick(self._get_sync, key)

    def _get_sync(self, key: str) -> JournalRow | None:
        found = self._conn.execute(
            f"SELECT {columns(self._conn)} FROM items WHERE key = ?",  # noqa: S608 -- a constant column list
            (key,),
        ).fetchone()
        return None if found is None else decode_row(found)

    async def job_ids(self) -> set[str]:
        """Return every job id the journal knows, from every row and every attempt."""
        return await self._call(self._job_ids_sync)

    def _job_ids_sync(self) -> set[str]:
        ids = {
            r[0]
            for r in self._conn.execute(
                "SELECT job_id FROM items WHERE job_id IS NOT NULL "
                "UNION SELECT job_id FROM attempts WHERE job_id IS NOT NULL"
            )
        }
        for (candidates,) in self._conn.execute(
            "SELECT candidates_json FROM items WHERE candidates_json IS NOT NULL"
        ):
            ids.update(json.loads(candidates))
        return ids

    async def lost_attempts(self) -> list[LostAttempt]:
        """
        Every attempt whose fate is unknown and that no job is tied to.

        Still unknown (a run stopped while settling it), or set aside for a
        person: a job one of them made is paid for, and the audit looks for it
        (``audit --journal``).
        """
        return await self._call(self._lost_sync)

    def _lost_sync(self) -> list[LostAttempt]:
        found = self._conn.execute(
            "SELECT attempts.key, items.model, attempts.started_at, attempts.nonce, "
            "attempts.sent_input_json, attempts.outcome FROM attempts "
            "JOIN items ON items.key = attempts.key WHERE attempts.job_id IS NULL "
            "AND attempts.outcome IN ('unknown', 'needs_attention') "
            "ORDER BY attempts.started_at"
        )
        return [
            LostAttempt(
                key=key,
                model=model,
                started_at=started,
                attempt=nonce,
                sent_input=json.loads(sent) if sent else {},
                outcome=outcome,
            )
            for key, model, started, nonce, sent, outcome in found
        ]

    # -- writes --------------------------------------------------------------------------

    async def plan(
        self, entries: Iterable[tuple[str, str, Mapping[str, Any]]]
    ) -> dict[str, JournalRow]:
        """
        Add a ``planned`` row for every ``(key, model, input)`` not yet in the journal.

        Rows that exist are left alone (a ``planned`` row takes the new input).

        Returns:
            Every row by key, after the change.

        """
        items = [(key, model, _dumps(dict(value))) for key, model, value in entries]
        return await self._call(self._plan_sync, items)

    def _plan_sync(self, items: list[tuple[str, str, str]]) -> dict[str, JournalRow]:
        now = time.time()
        with self._conn:
            (start,) = self._conn.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM items"
            ).fetchone()
            self._conn.executemany(
                "INSERT INTO items (key, position, model, input_json, state, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, 'planned', ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET model = excluded.model, "
                "input_json = excluded.input_json, updated_at = excluded.updated_at "
                "WHERE items.state = 'planned' AND items.input_json != excluded.input_json",
                [
                    (key, start + n, model, value, now, now)
                    for n, (key, model, value) in enumerate(items)
                ],
            )
        return self._rows_sync()

    async def submitting(
        self,
        key: str,
        *,
        started_at: float,
        sent_input: Mapping[str, Any] | None,
        attempt: str | None = None,
        alone: bool = False,
    ) -> None:
        """
        Record that a submit of *key* is about to be sent (its fate is unknown now).

        Args:
            key: The row.
            started_at: Unix time (the client's clock) the attempt began; the
                settle horizon of a submit of unknown fate counts from it.
            sent_input: The exact input about to be sent (uploaded frames as URLs).
            attempt: The attempt's nonce (``pb_attempt``), if webhooks tag it.
            alone: No other row can be journaled with it (its model's submits
                go one at a time): synced on the loop at once, disk permitting.

        """
        sent = None if sent_input is None else _dumps(dict(sent_input))
        # Rows journaling at once share one synced commit (`_synced`).
        await self._synced(
            self._submitting_sync, (key, started_at, sent, attempt), alone=alone
        )

    def _submitting_sync(self, rows: list[tuple[Any, ...]]) -> None:
        # On the disk before the request goes out, power cut included: a row
        # lost back to "planned" would be sent again.  (Other commits need only
        # survive the process: a row left "submitting" is reconciled, never
        # re-sent.)
        self._conn.execute("PRAGMA synchronous=FULL")
        try:
            with self._conn:
                for key, started_at, sent, attempt in rows:
                    self._submitting_row(key, started_at, sent, attempt)
        finally:
            self._conn.execute("PRAGMA synchronous=NORMAL")

    def _submitting_row(
        self, key: str, started_at: float, sent: str | None, attempt: str | None
    ) -> None:
        self._conn.execute(
            "UPDATE items SET state = 'submitting', started_at = ?, job_id = NULL, "
            "cost_micro_cents = NULL, cost_known = 0, job_status = NULL, "
            "output_url = NULL, output_path = NULL, output_bytes = NULL, "
            "error = NULL, attempts = attempts + 1, updated_at = ? WHERE key = ?",
            (started_at, time.time(), key),
        )
        self._conn.execute(
            "INSERT INTO attempts (key, started_at, sent_input_json, nonce) "
            "VALUES (?, ?, ?, ?)",
            (key, started_at, sent, attempt),
        )

    async def submitted(
        self,
        key: str,
        *,
        job_id: str,
        cost_micro_cents: int | None,
        cost_known: bool,
        status: str,
        how: str = "submitted",
    ) -> None:
        """
        Record the job a submit created (or that reconciling found) for *key*.

        Args:
            key: The row.
            job_id: The job.
            cost_micro_cents: Its charge (or an estimate, see *cost_known*).
            cost_known: Whether the API said what it charged.
            status: The job's status.
            how: ``"submitted"``, ``"reconciled"`` (found by reconcile) or
                ``"resolved"`` (chosen by the user); kept in the attempt's history.

        """
        await self._quick(
            functools.partial(
                self._submitted_sync,
                key,
                job_id=job_id,
                cost=cost_micro_cents,
                cost_known=cost_known,
                status=status,
                how=how,
            )
        )

    def _submitted_sync(
        self,
        key: str,
        *,
        job_id: str,
        cost: int | None,
        cost_known: bool,
        status: str,
        how: str,
    ) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET state = 'submitted', job_id = ?, "
                "cost_micro_cents = ?, cost_known = ?, job_status = ?, error = NULL, "
                "candidates_json = NULL, running_at = NULL, ended_at = NULL, "
                "poster_path = NULL, updated_at = ? WHERE key = ?",
                (job_id, cost, int(cost_known), status, time.time(), key),
            )
            self._set_latest_attempt(key, job_id=job_id, outcome=how)

    def _set_latest_attempt(
        self, key: str, *, job_id: str | None, outcome: str
    ) -> None:
        self._conn.execute(
            "UPDATE attempts SET job_id = COALESCE(?, job_id), outcome = ? "
            "WHERE id = (SELECT MAX(id) FROM attempts WHERE key = ?)",
            (job_id, outcome, key),
        )

    async def unsubmitted(
        self, key: str, *, error: str | None, outcome: str = "no_job"
    ) -> None:
        """
        Record that no job was created for *key* (back to ``planned``).

        *outcome* goes in the attempt's history: ``rejected`` (the API refused it),
        ``lapsed`` (its fate was unknown, and its settle horizon passed with no
        job found), ``resent`` (a person said none of its candidates was its).
        """
        await self._quick(self._unsubmitted_sync, key, error, outcome)

    def _unsubmitted_sync(self, key: str, error: str | None, outcome: str) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET state = 'planned', job_id = NULL, "
                "cost_micro_cents = NULL, cost_known = 0, job_status = NULL, "
                "error = ?, candidates_json = NULL, updated_at = ? WHERE key = ?",
                (error, time.time(), key),
            )
            self._set_latest_attempt(key, job_id=None, outcome=outcome)

    async def status(
        self,
        key: str,
        *,
        status: str,
        output_url: str | None = None,
        error: str | None = None,
        at: float | None = None,
    ) -> None:
        """
        Record the job's latest *status* (terminal ones move the row's state).

        Args:
            key: The row.
            status: ``pending``, ``processing``, ``completed``, ``failed`` …
            output_url: The output URL, once completed.
            error: Why the job failed, in words.
            at: When the status was seen (Unix time, the client's clock): the
                first ``processing`` and the first terminal status are kept
                for the batch report's timeline.

        """
        await self._quick(self._status_sync, key, status, output_url, error, at)

    def _status_sync(
        self,
        key: str,
        status: str,
        output_url: str | None,
        error: str | None,
        at: float | None,
    ) -> None:
        state = status if status in {"completed", "failed", "cancelled"} else None
        running = at if status == "processing" else None
        ended = at if state is not None else None
        with self._conn:
            self._conn.execute(
                "UPDATE items SET job_status = ?, "
                "state = CASE WHEN ? IS NULL OR state = 'downloaded' THEN state "
                "ELSE ? END, "
                "output_url = COALESCE(?, output_url), error = ?, updated_at = ?, "
                "running_at = COALESCE(running_at, ?), "
                "ended_at = COALESCE(ended_at, ?) "
                "WHERE key = ?",
                (
                    status,
                    state,
                    state,
                    output_url,
                    error,
                    time.time(),
                    running,
                    ended,
                    key,
                ),
            )

    async def downloaded(
        self,
        key: str,
        *,
        path: str,
        size: int,
        poster: str | None = None,
        output_url: str | None = None,
        ended_at: float | None = None,
    ) -> None:
        """
        Record that the output of *key* was written to *path* (*size* bytes).

        The job completed: this also records it (as `status` would), so a
        finished row costs one commit, not two.

        Args:
            key: The row.
            path: The output file.
            size: Its size in bytes.
            poster: Where its poster image was written, if it has one.
            output_url: The URL it was downloaded from.
            ended_at: When the job was seen completed (Unix time, the client's
                clock); the first one recorded is kept.

        """
        await self._quick(
            functools.partial(
                self._downloaded_sync,
                key,
                path=path,
                size=size,
                poster=poster,
                output_url=output_url,
                ended_at=ended_at,
            )
        )

    def _downloaded_sync(
        self,
        key: str,
        *,
        path: str,
        size: int,
        poster: str | None,
        output_url: str | None,
        ended_at: float | None,
    ) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET state = 'downloaded', job_status = 'completed', "
                "output_path = ?, output_bytes = ?, "
                "poster_path = COALESCE(?, poster_path), "
                "output_url = COALESCE(?, output_url), "
                "ended_at = COALESCE(ended_at, ?), "
                "error = NULL, updated_at = ? WHERE key = ?",
                (path, size, poster, output_url, ended_at, time.time(), key),
            )

    async def record_run(
        self,
        *,
        started_at: float,
        ended_at: float,
        wall_seconds: float,
        budget_micro_cents: int | None,
        stop_reason: str | None,
        interrupted: bool,
        skipped: Mapping[str, str] | None = None,
    ) -> None:
        """
        Record one run of the batch (for the report): when, how long, its budget.

        *started_at*/*ended_at* are by the client's clock (the sandbox's, under
        ``--sandbox``); *wall_seconds* is real time.  *skipped*: the rows this
        run skipped, with why (``budget`` …); an earlier run's reasons are
        replaced.
        """
        await self._quick(
            self._run_sync,
            (
                started_at,
                ended_at,
                wall_seconds,
                budget_micro_cents,
                stop_reason,
                int(interrupted),
            ),
            dict(skipped or {}),
        )

    def _run_sync(self, values: tuple[Any, ...], skipped: dict[str, str]) -> None:
        with self._conn:
            self._conn.execute(
                "INSERT INTO runs (started_at, ended_at, wall_seconds, "
                "budget_micro_cents, stop_reason, interrupted) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                values,
            )
            self._conn.execute("UPDATE items SET skipped = NULL")
            self._conn.executemany(
                "UPDATE items SET skipped = ? WHERE key = ?",
                [(reason, key) for key, reason in skipped.items()],
            )

    async def read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run *fn* on the journal's database in its worker thread (a reader)."""
        return await self._call(fn, self._conn)

    async def needs_attention(
        self, key: str, *, reason: str, candidates: Iterable[str] = ()
    ) -> None:
        """
        Park *key*: a submit of unknown fate that could not be matched safely.

        The row is never re-sent automatically; *candidates* (job ids that may be
        its job) are kept so no paid job is lost track of.
        """
        await self._quick(self._attention_sync, key, reason, _dumps(sorted(candidates)))

    def _attention_sync(self, key: str, reason: str, candidates: str) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET state = 'needs_attention', error = ?, "
                "candidates_json = ?, updated_at = ? WHERE key = ?",
                (reason, candidates, time.time(), key),
            )
            self._set_latest_attempt(key, job_id=None, outcome="needs_attention")

    async def replan(self, key: str, model: str, value: Mapping[str, Any]) -> None:
        """
        Plan *key* again for a new input (its earlier job stays in its history).

        For a row whose input changed since its job was made, re-run on request.
        """
        await self._quick(self._replan_sync, key, model, _dumps(dict(value)))

    def _replan_sync(self, key: str, model: str, value: str) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET model = ?, input_json = ?, state = 'planned', "
                "job_id = NULL, cost_micro_cents = NULL, cost_known = 0, "
                "job_status = NULL, output_url = NULL, output_path = NULL, "
                "output_bytes = NULL, error = NULL, candidates_json = NULL, "
                "updated_at = ? WHERE key = ?",
                (model, value, time.time(), key),
            )

    async def bind_source(self, source: str, *, force: bool) -> None:
        """
        Tie the journal to the input it records (a batch file), or check it is.

        Raises:
            JournalError: It was made for another input, and not *force*.

        """
        await self._call(self._bind_source_sync, source, force)

    async def check_source(self, source: str, *, force: bool) -> None:
        """Refuse a journal made for another input (a dry run: nothing is written)."""
        await self._call(self._check_source_sync, source, force)

    def _check_source_sync(self, source: str, force: bool) -> None:
        found = self._source_sync()
        if found is not None and found != source and not force:
            raise JournalError(
                f"journal {self.path} was made for {found}, not {source}; pass "
                "--journal with another file for a new batch, or --reuse-journal if "
                "this is the same batch moved or renamed"
            )

    def _bind_source_sync(self, source: str, force: bool) -> None:
        self._check_source_sync(source, force)
        with self._conn:
            self._conn.execute(
                "INSERT INTO meta (name, value) VALUES ('input_source', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (source,),
            )

    def _source_sync(self) -> str | None:
        """The input this journal records, if it was bound to one."""
        found = self._conn.execute(
            "SELECT value FROM meta WHERE name = 'input_source'"
        ).fetchone()
        return None if found is None else str(found[0])

    async def set_state(self, key: str, state: State, *, error: str | None) -> None:
        """Move *key* to *state* directly (repairs and tests)."""
        await self._quick(self._set_state_sync, key, state, error)

    def _set_state_sync(self, key: str, state: State, error: str | None) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET state = ?, error = ?, updated_at = ? WHERE key = ?",
                (state, error, time.time(), key),
            )
