"""
The running batch: `Batch` (its lifecycle, phases and workers) and `run_batch`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
import warnings
from collections.abc import AsyncIterable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

import anyio

from pixelbyte_async._errors import ValidationError
from pixelbyte_async._handoff import finish_anyway
from pixelbyte_async._journal import Journal, JournalError
from pixelbyte_async._reconcile import check_settle
from pixelbyte_async._report import report_from

from ._audit import Audit, audit
from ._budget import Budget
from ._outcomes import Outcomes
from ._outputs import Outputs
from ._plan import Planner, changed
from ._rows import Entry, collect_entries
from ._steps import Steps
from ._submits import Submits
from ._types import (
    BatchInput,
    BatchItem,
    BatchItemStatus,
    BatchPlan,
    BatchSummary,
    Settling,
)
from ._unknown import UnknownFates


if TYPE_CHECKING:
    # Only for annotations, so that autodoc shows `Batch` and `run_batch` as
    # written (``BatchInput``, not the union it stands for).
    from pixelbyte_async._seams import BatchClient


__all__ = ["Batch", "run_batch"]

_DEFAULT_WORKERS = 10

log = logging.getLogger("pixelbyte_async")


class Batch:
    """
    A running batch: an async iterator of `BatchItem`, one per input, as each ends.

    Made by `run_batch`.  Use it as an async context manager so that leaving early
    stops it cleanly (jobs in flight keep running and are re-attached by the next
    run; nothing is cancelled)::

        async with run_batch(pb, inputs, journal="batch.sqlite", out_dir="out") as batch:
            async for item in batch:
                print(item.key, item.status, item.path)
        summary = await batch.summary()

    ``await run_batch(...).summary()`` runs it to the end without iterating.
    Errors that concern the whole batch (`BatchInputError`, `BudgetExceeded`,
    `JournalError`, `AuthenticationError` …) are raised by ``async with``, the
    first ``__anext__`` or `summary`.

    .. versionadded:: 0.2.0
    """

    def __init__(
        self,
        pb: BatchClient,
        inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
        *,
        journal: str | os.PathLike[str] | None = None,
        out_dir: str | os.PathLike[str] | None = None,
        max_cost_micro_cents: int | None = None,
        dry_run: bool = False,
        retry_failed: bool = False,
        wait_timeout: float | None = None,
        settle: float | None = None,
        fit: bool = False,
        rerun_changed: bool = False,
        source: str | None = None,
        reuse_journal: bool = False,
        assume_list_prices: bool = False,
        report: bool = True,
    ) -> None:
        _check_options(
            max_cost_micro_cents=max_cost_micro_cents,
            wait_timeout=wait_timeout,
            settle=settle,
            fit=fit,
        )
        self._pb = pb
        self._inputs = inputs
        self._journal_path = None if journal is None else Path(journal).absolute()
        self._out_dir = None if out_dir is None else Path(out_dir).absolute()
        self._dry_run = dry_run
        self._retry_failed = retry_failed
        self._wait_timeout = wait_timeout
        self._settle = settle
        self._fit = fit
        self._rerun_changed = rerun_changed
        self._source = source
        self._reuse_journal = reuse_journal
        self._report = report
        self._report_path: Path | None = None
        self._budget = Budget(
            pb, limit=max_cost_micro_cents, assume_list_prices=assume_list_prices
        )
        self._outcomes: Outcomes | None = None
        self._steps: Steps | None = None
        self._unknown: UnknownFates | None = None
        self._audit = Audit()
        #: When this run started, by the wall clock: the audit's window opens then.
        self._started_time = 0.0
        self._phase: Literal["new", "ready", "running", "done", "closed"] = "new"
        self._start_lock = asyncio.Lock()
        self._journal: Journal | None = None
        self._entries: list[Entry] = []
        self._plan: BatchPlan | None = None
        self._runner: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._running = 0
        self._started_at = 0.0
        self._ended_at: float | None = None
        # The same two moments in real time (the client's clock may be virtual).
        self._started_real = 0.0
        self._ended_real = 0.0

    # -- the iterator and the context manager -------------------------------------

    async def __aenter__(self) -> Self:
        await self._ensure_started()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> BatchItem:
        await self._ensure_started()
        assert self._outcomes is not None  # noqa: S101 -- set by _ensure_started
        item = await self._outcomes.next()
        if item is None:
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        return item

    async def summary(self) -> BatchSummary:
        """
        Run the batch to its end (if it is not there yet) and return its summary.

        Raises:
            BatchInputError, BudgetExceeded, JournalError, AuthenticationError: As
                for iterating.

        """
        async for _ in self:
            pass
        return self._summary()

    async def plan(self) -> BatchPlan:
        """
        Return the batch's plan, made before the first submit (all a dry run does).

        Planning opens the journal: run the batch afterwards, or close it.
        """
        await self._ensure_prepared()
        assert self._plan is not None  # noqa: S101 -- set by _ensure_started
        return self._plan

    async def aclose(self) -> None:
        """
        Stop the batch: no new submits; jobs in flight keep running (and are paid).

        Their ids are in the journal, so running the batch again re-attaches them.
        Idempotent.
        """
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self._journal is not None:
            await self._journal.aclose()
        if self._phase != "done":
            self._phase = "closed"

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        runner = getattr(self, "_runner", None)
        idle = getattr(self, "_phase", None) == "ready" and not self._dry_run
        if idle or (runner is not None and not runner.done()):
            _warn(
                "a running Batch was garbage-collected; use 'async with "
                "run_batch(...)' or 'await batch.summary()'",
                ResourceWarning,
                stacklevel=2,
            )

    # -- progress --------------------------------------------------------------------

    @property
    def total(self) -> int:
        """How many inputs the batch has (0 until it started)."""
        return len(self._entries)

    @property
    def finished(self) -> int:
        """How many inputs have a result so far."""
        return 0 if self._outcomes is None else self._outcomes.finished

    @property
    def running(self) -> int:
        """How many inputs are being submitted, waited for or downloaded now."""
        return self._running

    @property
    def charged_micro_cents(self) -> int:
        """What the batch's jobs cost so far, as far as known (net of refunds)."""
        return self._budget.charged

    @property
    def settling(self) -> tuple[Settling, ...]:
        """
        The rows whose submit's fate is unknown, being settled now (soonest first).

        Each says when its settle horizon ends, and whether new submits of its
        model wait for it (two lost submits of one model at once): what a
        progress display shows as a countdown.

        .. versionadded:: 0.3.0
        """
        return () if self._unknown is None else self._unknown.settling()

    @property
    def journal_path(self) -> Path | None:
        """The journal file, if any."""
        return self._journal_path

    # -- start: inputs, journal, estimates, budget -----------------------------------

    async def _ensure_prepared(self) -> None:
        async with self._start_lock:
            if self._phase != "new":
                if self._phase == "closed" and self._plan is None:
                    raise RuntimeError("this batch was closed before it started")
                return
            try:
                await self._prepare()
            except BaseException:
                self._phase = "closed"
                if self._journal is not None:
                    await self._journal.aclose()
                raise
            if self._dry_run and self._journal is not None:
                # A dry run has read all it needs.
                await self._journal.aclose()
            self._phase = "ready"

    async def _ensure_started(self) -> None:
        await self._ensure_prepared()
        if self._phase == "closed" and self._runner is None:
            raise RuntimeError("this batch was closed before it ran")
        if self._phase == "ready":
            self._phase = "running"
            self._runner = asyncio.create_task(self._run())

    async def _prepare(self) -> None:
        self._started_at = self._pb.clock.monotonic()
        self._started_real = time.monotonic()
        self._started_time = self._pb.clock.time()
        entries = await collect_entries(self._inputs)
        self._entries = entries
        journal = await Journal.open(self._journal_path, readonly=self._dry_run)
        self._journal = journal
        if self._source is not None:
            if self._dry_run:
                await journal.check_source(self._source, force=self._reuse_journal)
            else:
                await journal.bind_source(self._source, force=self._reuse_journal)
        if self._dry_run:
            rows = await journal.rows()
        else:
            rows = await journal.plan((e.key, e.model, e.document) for e in entries)
        outcomes = Outcomes(journal=journal, budget=self._budget, entries=entries)
        self._outcomes = outcomes
        outputs = (
            None
            if self._out_dir is None
            else Outputs(
                self._out_dir,
                journal=journal,
                outcomes=outcomes,
                posters=self._report,
            )
        )
        unknown = self._unknown = UnknownFates(
            self._pb,
            journal=journal,
            outcomes=outcomes,
            budget=self._budget,
            settle=self._settle,
        )
        submits = Submits(
            self._pb,
            journal=journal,
            outcomes=outcomes,
            budget=self._budget,
            unknown=unknown,
            cap=self._workers(),
        )
        self._steps = Steps(
            self._pb,
            journal=journal,
            outcomes=outcomes,
            budget=self._budget,
            submits=submits,
            outputs=outputs,
            wait_timeout=self._wait_timeout,
        )
        planner = Planner(
            budget=self._budget,
            unknown=unknown,
            outputs=outputs,
            retry_failed=self._retry_failed,
            fit=self._fit and not self._dry_run,
            rerun_changed=self._rerun_changed,
        )
        plan = await planner.plan(entries, rows, concurrency=self._workers())
        if not self._dry_run:
            for entry in entries:
                if entry.action == "submit" and changed(entry):
                    # Re-run on request: the row now records its new input.
                    await journal.replan(entry.key, entry.model, entry.document)
        self._plan = plan
        if not self._dry_run:
            self._budget.check(plan)

    def _workers(self) -> int:
        return self._pb.config.max_concurrent_jobs or _DEFAULT_WORKERS

    # -- the run -------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._outcomes is not None  # noqa: S101 -- set by _prepare
        assert self._journal is not None  # noqa: S101 -- set by _prepare
        assert self._unknown is not None  # noqa: S101 -- set by _prepare
        outcomes, journal, unknown = self._outcomes, self._journal, self._unknown
        interrupted = False
        try:
            if self._dry_run:
                for entry in self._entries:
                    outcomes.emit(entry, BatchItemStatus.PLANNED, resumed=entry.resumed)
                return
            outcomes.report_earlier(downloads=self._out_dir is not None)
            # Rows an earlier run left in 'submitting' go first: their horizon is
            # counted from the journaled attempt, and other rows go on meanwhile.
            queue = collections.deque(
                sorted(
                    (e for e in self._entries if not outcomes.reported(e.key)),
                    key=lambda e: (
                        e.action not in {"reconcile", "attach", "download"},
                        e.index,
                    ),
                )
            )
            workers = min(self._workers(), len(queue))
            async with anyio.create_task_group() as tg:
                for _ in range(workers):
                    tg.start_soon(self._worker, queue)
            if any(e.action == "over_budget" for e in self._entries):
                outcomes.stop("budget")
            self._audit = await audit(
                self._pb,
                journal,
                self._entries,
                started=self._started_time,
                horizon=unknown.horizon,
            )
        except Exception as exc:  # noqa: BLE001 -- handed to whoever iterates
            self._error = _unwrap(exc)
        except asyncio.CancelledError:
            interrupted = True
            raise
        finally:
            self._ended_at = self._pb.clock.monotonic()
            self._ended_real = time.monotonic()
            if not self._dry_run:
                await finish_anyway(
                    asyncio.ensure_future(
                        self._record_run(interrupted or self._error is not None)
                    )
                )
            await finish_anyway(asyncio.ensure_future(journal.aclose()))
            self._phase = "done"
            outcomes.end()

    async def _record_run(self, interrupted: bool) -> None:
        """
        Journal this run (when, how long, its budget) and write ``report.html``.

        Neither may fail the batch: a journal or disk problem here is logged.
        """
        assert self._journal is not None  # noqa: S101 -- set by _prepare
        journal = self._journal
        try:
            await journal.record_run(
                started_at=self._started_time,
                ended_at=self._pb.clock.time(),
                wall_seconds=max(0.0, self._ended_real - self._started_real),
                budget_micro_cents=self._budget.limit,
                stop_reason=None
                if self._outcomes is None
                else self._outcomes.stop_reason,
                interrupted=interrupted,
                skipped=self._skipped(),
            )
            if self._out_dir is not None and self._report:
                self._report_path = await report_from(journal, self._out_dir)
        except (JournalError, OSError) as exc:
            log.warning("the batch report could not be written: %s", exc)
        except Exception:  # a bug here must not stop the batch from ending
            log.exception("the batch report could not be written")

    def _skipped(self) -> dict[str, str]:
        """The rows this run skipped, with why (for the report)."""
        if self._outcomes is None:
            return {}
        return {
            item.key: item.skip_reason or "skipped"
            for item in self._outcomes.items()
            if item.status is BatchItemStatus.SKIPPED
        }

    async def _worker(self, queue: collections.deque[Entry]) -> None:
        assert self._steps is not None  # noqa: S101 -- set by _prepare
        while queue:
            entry = queue.popleft()
            self._running += 1
            try:
                await self._steps.process(entry)
            finally:
                self._running -= 1

    # -- results ---------------------------------------------------------------------

    def _summary(self) -> BatchSummary:
        assert self._plan is not None  # noqa: S101 -- the batch has started
        assert self._outcomes is not None  # noqa: S101 -- set with the plan
        end = (
            self._ended_at if self._ended_at is not None else self._pb.clock.monotonic()
        )
        end_real = self._ended_real if self._ended_at is not None else time.monotonic()
        return BatchSummary(
            items=self._outcomes.items(),
            plan=self._plan,
            cost_micro_cents=self.charged_micro_cents,
            assumed_cost_micro_cents=self._budget.assumed,
            wall_seconds=max(0.0, end_real - self._started_real),
            clock_seconds=max(0.0, end - self._started_at),
            stop_reason=self._outcomes.stop_reason,
            journal=self._journal_path,
            dry_run=self._dry_run,
            orphans=self._audit.orphans,
            others=self._audit.others,
            audit_error=self._audit.error,
            follow_up=self._audit.follow_up,
            follow_up_until=self._audit.follow_up_until,
            report=self._report_path,
        )


def run_batch(
    pb: BatchClient,
    inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
    *,
    journal: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    max_cost_micro_cents: int | None = None,
    dry_run: bool = False,
    retry_failed: bool = False,
    wait_timeout: float | None = None,
    settle: float | None = None,
    fit: bool = False,
    rerun_changed: bool = False,
    source: str | None = None,
    reuse_journal: bool = False,
    assume_list_prices: bool = False,
    report: bool = True,
) -> Batch:
    """
    Run many jobs: budget-guarded, crash-safe, at most ``max_concurrent_jobs`` at once.

    Returns a `Batch` that does nothing until used: iterate it (``async for``) for
    one `BatchItem` per input as each ends, or ``await batch.summary()``.  With a
    *journal*, re-running the same call after a crash resumes: finished inputs are
    not redone, submitted jobs are re-attached by id (never re-submitted) and a
    submit of unknown fate is reconciled with the API before anything is re-sent.

    .. code-block:: python

        async with run_batch(pb, inputs, journal="runs/b.sqlite", out_dir="out") as batch:
            async for item in batch:
                print(item.key, item.status.value, item.path)

    Args:
        pb: The client; its ``max_concurrent_jobs`` bounds the jobs in flight.
        inputs: Typed inputs, ``(slug, input)`` tuples or ``{"id", "model",
            "input"}`` mappings (an iterable or async iterable).  Every input gets
            a stable key: its ``id``, else a hash of model and input.
        journal: SQLite file recording every step (created if missing); ``None``
            keeps the record in memory only (no resume).
        out_dir: Download every output to ``{out_dir}/{key}{.mp4 …}``; files
            already there at the size the journal recorded are not fetched again.
        max_cost_micro_cents: Refuse to start when the estimate (plus what earlier
            runs charged) exceeds this, and stop submitting before the next job
            would cross it (the rest are skipped with ``skip_reason="budget"``).
            Estimates come from the API (your account's prices); the SDK's list
            prices only when the API cannot be asked (`BatchPlan.estimate_source`).
        dry_run: Only plan: estimate, read the journal, submit nothing.
        retry_failed: Submit inputs whose job failed in an earlier run again (the
            API refunds failed jobs).
        wait_timeout: Longest wait per job (default: the poll policy's, 30 min);
            a job still running then is reported ``UNFINISHED`` and re-attached
            by the next run.
        settle: The settle horizon in seconds (default: the client's, 300): a
            row whose submit's fate is unknown is re-sent only once this long has
            passed since that attempt began (journaled, so it survives a crash)
            with no job found.  A safety setting: lower it only for a backend you
            know gives up on requests sooner.
        fit: With *max_cost_micro_cents*: instead of refusing a batch over the
            budget, run the rows that fit, in input order (the rest are skipped
            with ``skip_reason="budget"``).
        rerun_changed: Submit again a row whose input changed since an earlier
            run made its job (by default it is reported, ``skip_reason="changed"``,
            and its old job's output is never handed back for the new input).
        source: What the inputs come from (a batch file's path): the journal is
            tied to it on first use, and refused for another source.
        reuse_journal: Use the journal although it was made for another
            *source* (the same batch, moved or renamed).
        assume_list_prices: With *max_cost_micro_cents*, budget at the SDK's
            list prices when the API's estimate cannot be asked (by default such
            a batch is refused: the account may pay more).  What is then counted
            without the API's word is `BatchSummary.assumed_cost_micro_cents`.
        report: With *out_dir*, write ``{out_dir}/report.html`` when the run
            ends or is interrupted: totals, charts and a contact sheet of the
            outputs (see `write_batch_report`); its path is `BatchSummary.report`.
            Each output's poster image is downloaded next to it for the report
            (``{key}.poster.jpg``); ``report=False`` fetches none.

    Raises:
        ValidationError: On bad arguments (at once).

    .. versionadded:: 0.2.0

    """
    return Batch(
        pb,
        inputs,
        journal=journal,
        out_dir=out_dir,
        max_cost_micro_cents=max_cost_micro_cents,
        dry_run=dry_run,
        retry_failed=retry_failed,
        wait_timeout=wait_timeout,
        settle=settle,
        fit=fit,
        rerun_changed=rerun_changed,
        source=source,
        reuse_journal=reuse_journal,
        assume_list_prices=assume_list_prices,
        report=report,
    )


def _check_options(
    *,
    max_cost_micro_cents: int | None,
    wait_timeout: float | None,
    settle: float | None,
    fit: bool,
) -> None:
    """Raise `ValidationError` on a bad option of `run_batch`."""
    if max_cost_micro_cents is not None and (
        isinstance(max_cost_micro_cents, bool)
        or not isinstance(max_cost_micro_cents, int)
        or max_cost_micro_cents < 0
    ):
        raise ValidationError(
            "max_cost_micro_cents must be a whole number >= 0",
            field="max_cost_micro_cents",
        )
    if wait_timeout is not None and wait_timeout <= 0:
        raise ValidationError("wait_timeout must be > 0", field="wait_timeout")
    if settle is not None:
        check_settle(settle)
    if fit and max_cost_micro_cents is None:
        raise ValidationError(
            "fit needs max_cost_micro_cents (the budget to fit)", field="fit"
        )


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
