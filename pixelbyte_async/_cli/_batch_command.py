"""
``batch``: run a JSONL/CSV file of jobs with a budget, a display and a journal.

`_batch` wraps `run_batch`; `_BatchDisplay` shows a bar and a line per finished row;
the plan (``--dry-run``), the summary and its JSON are printed here, and
`_batch_exit` turns the summary into the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TextIO

import anyio

from pixelbyte_async._batch import (
    Batch,
    BatchItem,
    BatchItemStatus,
    BatchPlan,
    BatchSummary,
    Settling,
    read_batch_file,
    run_batch,
)
from pixelbyte_async._clock import Clock, SystemClock
from pixelbyte_async._cmdline import EXIT_CODES
from pixelbyte_async._reconcile import iso

from ._connection import _client
from ._output import (
    _orphan_json,
    _print_json,
    _print_orphans,
    _print_others,
    _ticking,
    _usd,
    _wants_rich,
)
from ._preflight import _check_output_dir
from ._resume import _resume_command, _resume_hint


def _item_json(item: BatchItem) -> dict[str, Any]:
    return {
        "key": item.key,
        "index": item.index,
        "model": item.model,
        "status": item.status.value,
        "jobId": item.job_id,
        "error": item.error,
        "costMicroCents": item.cost_micro_cents,
        "estimatedCostMicroCents": item.estimated_cost_micro_cents,
        "outputUrl": item.output_url,
        "path": None if item.path is None else str(item.path),
        "skipReason": item.skip_reason,
        "resumed": item.resumed,
        "candidates": list(item.candidates),
    }


def _plan_json(plan: BatchPlan) -> dict[str, Any]:
    return {
        "estimatedCostMicroCents": plan.estimated_cost_micro_cents,
        "chargedMicroCents": plan.charged_micro_cents,
        "totalMicroCents": plan.total_micro_cents,
        "maxCostMicroCents": plan.max_cost_micro_cents,
        "withinBudget": plan.within_budget,
        "estimateSource": plan.estimate_source,
        "estimateNote": plan.estimate_note,
        "items": [
            {
                "key": p.key,
                "index": p.index,
                "model": p.model,
                "action": p.action,
                "estimatedCostMicroCents": p.estimated_cost_micro_cents,
                "jobId": p.job_id,
            }
            for p in plan.items
        ],
    }


def _print_notes(summary: BatchSummary, out: TextIO) -> None:
    """The estimate's source, if not the API, and the closing audit."""
    if summary.plan.estimate_note:
        print(f"Note: {summary.plan.estimate_note}.", file=out)
    if summary.assumed_cost_micro_cents:
        print(
            f"Cost: {_usd(summary.assumed_cost_micro_cents)} of it is the SDK's list "
            "prices, which the API never confirmed (no charge reported, no "
            "estimate): your account may have paid more.",
            file=out,
        )
    if summary.orphans:
        print(
            f"Audit: {len(summary.orphans)} job(s) of this batch's models were "
            "created during the run that no row claims and a lost submit of this "
            f"machine may have made (at most {_usd(summary.orphan_cost_micro_cents)}):",
            file=out,
        )
        _print_orphans(summary.orphans, out)
    _print_others(summary.others, out)
    if summary.follow_up:
        journal = f" --journal {summary.journal}" if summary.journal else ""
        until = summary.follow_up_until
        still = (
            f"; they may still make one until {_clock(until)}"
            if until is not None and until > time.time()
            else ""
        )
        print(
            f"Follow-up: the lost submits of {', '.join(summary.follow_up)} are not "
            f"tied to a job{still}. A job they made is found with "
            f"'pixelbyte-async audit{journal}' (the next run of the batch checks "
            "too).",
            file=out,
        )
    if summary.orphans is None:
        print(
            f"Audit: could not list the account's jobs ({summary.audit_error}).",
            file=out,
        )


def _summary_json(summary: BatchSummary) -> dict[str, Any]:
    return {
        "ok": summary.ok,
        "dryRun": summary.dry_run,
        "completed": summary.completed,
        "failed": summary.failed,
        "cancelled": summary.cancelled,
        "skipped": summary.skipped,
        "needsAttention": summary.needs_attention,
        "unfinished": summary.unfinished,
        "costMicroCents": summary.cost_micro_cents,
        "assumedCostMicroCents": summary.assumed_cost_micro_cents,
        "wallSeconds": round(summary.wall_seconds, 3),
        "clockSeconds": None
        if summary.clock_seconds is None
        else round(summary.clock_seconds, 3),
        "stopReason": summary.stop_reason,
        "orphans": None
        if summary.orphans is None
        else [_orphan_json(o) for o in summary.orphans],
        "otherSubmittersJobs": [o.job.id for o in summary.others],
        "followUp": list(summary.follow_up),
        "followUpUntil": summary.follow_up_until,
        "auditError": summary.audit_error,
        "journal": None if summary.journal is None else str(summary.journal),
        "report": None if summary.report is None else str(summary.report),
        "plan": _plan_json(summary.plan),
        "items": [_item_json(item) for item in summary.items],
    }


def _item_line(item: BatchItem, done: int, total: int) -> str:
    """The line of a finished row: *done* rows (this one included) of *total* so far."""
    detail = (
        str(item.path)
        if item.path is not None
        else (item.error or item.skip_reason or item.output_url or "")
    )
    resumed = " (earlier run)" if item.resumed else ""
    return (
        f"[{done}/{total}] {item.status.value:<15} {item.key}  "
        f"{item.job_id or '-'}  {_usd(item.cost_micro_cents)}  {detail}{resumed}"
    )


class _BatchDisplay:
    """
    A bar over the batch plus a line per finished input (plain lines without rich).

    A paused model (two lost submits of it at once) is shown with a countdown: in
    the bar's description, as a plain line, or (with ``--json``) as a JSON line,
    when the pause starts or changes and every `_COUNTDOWN_EVERY` seconds.
    """

    def __init__(
        self,
        batch: Batch,
        *,
        stream: TextIO,
        quiet: bool,
        events: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self._batch = batch
        self._clock = clock or SystemClock()
        self._stream = stream
        self._quiet = quiet
        self._events = events
        self._rich: Any = None
        self._task: Any = None
        self._done = 0  # lines are numbered as rows finish, not by file order
        self._paused: tuple[str, ...] = ()
        self._told_at = 0.0

    def _describe(self) -> str:
        batch = self._batch
        settling = batch.settling
        text = (
            f"{batch.finished}/{batch.total} done, {batch.running} running, "
            f"{_usd(batch.charged_micro_cents)} charged"
        )
        if settling:
            first = settling[0]
            text += f"; {first.key} settling until {_clock(first.settle_at)}"
        return text

    def _countdown(self) -> None:
        """Tell of a paused model when the pause changes, and now and then."""
        holding = [s for s in self._batch.settling if s.holding]
        keys = tuple(s.key for s in holding)
        now = time.monotonic()
        if keys == self._paused and (
            not keys or now - self._told_at < _COUNTDOWN_EVERY
        ):
            return
        self._paused, self._told_at = keys, now
        left = 0.0
        if holding:
            left = min(s.settle_at for s in holding) - self._clock.time()
        if self._events:
            event = _pause_event(holding, self._batch, max(0, round(left)))
            print(json.dumps(event), file=self._stream, flush=True)
        elif not self._quiet:
            line = _pause_line(holding, max(0, round(left)))
            if self._rich is None:
                print(line, file=self._stream, flush=True)
            else:
                self._rich.console.print(line, markup=False, highlight=False)

    def __enter__(self) -> Self:
        if self._quiet or not _wants_rich(self._stream):
            return self
        from rich.console import Console  # noqa: PLC0415 -- optional 'cli' extra
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._rich = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=self._stream),
        )
        self._rich.__enter__()
        self._task = self._rich.add_task(self._describe(), total=self._batch.total)
        return self

    def tick(self) -> None:
        self._countdown()
        if self._rich is not None:
            self._rich.update(
                self._task, completed=self._batch.finished, description=self._describe()
            )

    def item(self, item: BatchItem) -> None:
        if self._quiet:
            return
        self._done += 1
        line = _item_line(item, self._done, self._batch.total)
        if self._rich is None:
            print(line, file=self._stream, flush=True)
        else:
            self._rich.console.print(line, markup=False, highlight=False)
            self.tick()

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self.tick()
            self._rich.__exit__(None, None, None)


#: How often (seconds of real time) a paused model's countdown is told again.
_COUNTDOWN_EVERY = 30.0


def _clock(unix: float) -> str:
    """*unix* as a local wall-clock time, ``14:05:12``."""
    return datetime.fromtimestamp(unix, UTC).astimezone().strftime("%H:%M:%S")


def _pause_line(holding: list[Settling], left: int) -> str:
    if not holding:
        return "RESUMED: lost submits settled; submits go on."
    until = min(s.settle_at for s in holding)
    what = (
        f"row {holding[0].key}'s submit of unknown fate is being settled"
        if len(holding) == 1
        else f"rows {', '.join(s.key for s in holding)} lost their submits at once"
    )
    return (
        f"PAUSED {holding[0].model}: {what}; new submits of this model wait until "
        f"{_clock(until)} at the latest ({left}s, {holding[0].waiting} rows waiting)."
    )


def _pause_event(holding: list[Settling], batch: Batch, left: int) -> dict[str, Any]:
    if not holding:
        return {"event": "resumed"}
    until = min(s.settle_at for s in holding)
    return {
        "event": "paused",
        "model": holding[0].model,
        "rows": [s.key for s in holding],
        "until": iso(until),
        "secondsLeft": left,
        "rowsWaiting": holding[0].waiting,
        "done": batch.finished,
        "total": batch.total,
    }


def _print_plan(plan: BatchPlan, out: TextIO) -> None:
    for p in plan.items:
        print(
            f"{p.index + 1:>4}  {p.key:<24} {p.action:<16} "
            f"{_usd(p.estimated_cost_micro_cents) if p.estimated_cost_micro_cents is not None else '-':>10}"
            f"  {p.model}",
            file=out,
        )
    budget = (
        ""
        if plan.max_cost_micro_cents is None
        else f" (limit {_usd(plan.max_cost_micro_cents)}: "
        + ("within budget" if plan.within_budget else "OVER BUDGET")
        + ")"
    )
    print(
        f"Plan: {len(plan.items)} rows, {plan.count('submit') + plan.count('retry')} "
        f"to submit, estimated {_usd(plan.estimated_cost_micro_cents)} to spend, "
        f"{_usd(plan.charged_micro_cents)} already charged, total "
        f"{_usd(plan.total_micro_cents)}{budget}. Nothing was submitted.",
        file=out,
    )
    if plan.estimate_note:
        print(f"Note: {plan.estimate_note}.", file=out)


def _summary_table(summary: BatchSummary) -> list[tuple[str, str]]:
    """The summary's lines: counts, cost, times, journal."""
    rows = [
        ("completed", summary.completed),
        ("failed", summary.failed),
        ("cancelled", summary.cancelled),
        ("skipped", summary.skipped),
        ("needs attention", summary.needs_attention),
        ("unfinished", summary.unfinished),
    ]
    table = [(name, str(count)) for name, count in rows if count or name == "completed"]
    assumed = summary.assumed_cost_micro_cents
    cost = _usd(summary.cost_micro_cents)
    table.append(("cost", cost if not assumed else f"{cost} ({_usd(assumed)} assumed)"))
    table.append(("wall time", f"{summary.wall_seconds:.1f}s"))
    clock = summary.clock_seconds
    if clock is not None and abs(clock - summary.wall_seconds) > 1:
        # A virtual clock (--sandbox): its seconds are said as such.
        table.append(("sandbox time", f"{clock:.1f}s (the sandbox's clock)"))
    if summary.journal is not None:
        table.append(("journal", str(summary.journal)))
    if summary.report is not None:
        table.append(("report", str(summary.report)))
    return table


def _print_summary(summary: BatchSummary, out: TextIO, resume: str) -> None:
    table = _summary_table(summary)
    if _wants_rich(out):
        from rich.console import Console  # noqa: PLC0415 -- optional 'cli' extra
        from rich.table import Table  # noqa: PLC0415

        grid = Table(title="Batch summary", show_header=False)
        grid.add_column(style="bold")
        grid.add_column(justify="right")
        for name, value in table:
            grid.add_row(name, value)
        Console(file=out).print(grid)
    else:
        print("Batch summary", file=out)
        for name, value in table:
            print(f"  {name:<16} {value:>6}", file=out)
    if summary.stop_reason:
        print(f"Submitting stopped early: {summary.stop_reason}.", file=out)
    _print_notes(summary, out)
    for item in summary.items:
        if item.status is BatchItemStatus.NEEDS_ATTENTION:
            listed = all(c in (item.error or "") for c in item.candidates)
            candidates = (
                ""
                if listed
                else f" Candidate jobs: {', '.join(item.candidates) or 'none'}."
            )
            print(
                f"NEEDS ATTENTION {item.key}: {item.error}{candidates} Check a job "
                "with 'pixelbyte-async status JOB'; this row is never re-sent "
                "automatically.",
                file=out,
            )
        elif item.status in {BatchItemStatus.FAILED, BatchItemStatus.CANCELLED}:
            print(f"{item.status.value.upper()} {item.key}: {item.error}", file=out)
    if summary.unfinished or summary.stop_reason == "unavailable":
        print(resume, file=out)


def _rerun_hint(args: argparse.Namespace) -> str:
    """How to finish an unfinished batch: the command itself, or why there is none."""
    if args.sandbox:
        return _resume_hint(args)
    if args.api_key is not None:  # never repeated: say where it must come from
        return (
            "Set PIXELBYTE_API_KEY to your key (--api-key is never shown), then run "
            f"the same command again to finish: {_resume_command(args)}"
        )
    return f"Run the same command again to finish: {_resume_command(args)}"


def _batch_exit(summary: BatchSummary) -> int:
    if summary.dry_run:
        return EXIT_CODES["ok" if summary.plan.within_budget else "budget"]
    if summary.needs_attention:
        return EXIT_CODES["needs_attention"]
    checks = [
        (summary.stop_reason == "balance", "balance"),
        (summary.stop_reason == "budget", "budget"),
        (bool(summary.failed or summary.cancelled), "job_failed"),
        (summary.stop_reason == "unavailable", "unavailable"),
        (bool(summary.unfinished), "timeout"),
    ]
    return next((EXIT_CODES[name] for hit, name in checks if hit), EXIT_CODES["ok"])


async def _batch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    source = Path(args.file)
    # Every invalid row, before any request; in a thread (it stats each frame).
    inputs = await anyio.to_thread.run_sync(read_batch_file, source)
    journal: Path | None
    if args.journal is not None:
        journal = Path(args.journal)
    elif args.sandbox:
        journal = None  # the sandbox forgets its jobs when this process ends
    else:
        journal = source.with_name(source.name + ".journal.sqlite")
    if args.out is not None:
        _check_output_dir(Path(args.out), "--out")
    quiet = args.quiet or args.json
    async with _client(args, max_concurrent_jobs=args.concurrency) as pb:
        batch = run_batch(
            pb,
            inputs,
            journal=journal,
            out_dir=args.out,
            max_cost_micro_cents=args.max_cost,
            dry_run=args.dry_run,
            retry_failed=args.retry_failed,
            wait_timeout=args.wait_timeout,
            settle=args.settle,
            fit=args.fit,
            rerun_changed=args.rerun_changed,
            source=str(await anyio.Path(source).resolve()),
            reuse_journal=args.reuse_journal,
            assume_list_prices=args.assume_list_prices,
        )
        try:
            async with batch:
                plan = await batch.plan()
                if not quiet and not args.dry_run:
                    print(
                        f"{len(plan.items)} rows: {plan.count('submit')} to submit, "
                        f"{plan.count('attach') + plan.count('reconcile')} to resume, "
                        f"{plan.count('done')} done earlier; estimated "
                        f"{_usd(plan.estimated_cost_micro_cents)}"
                        + (f"; journal {journal}" if journal else ""),
                        file=err,
                    )
                with _BatchDisplay(
                    batch, stream=err, quiet=quiet, events=args.json, clock=pb.clock
                ) as display:
                    ticker = asyncio.ensure_future(_ticking(display.tick))
                    try:
                        async for item in batch:
                            if not args.dry_run:
                                display.item(item)
                    finally:
                        ticker.cancel()
            summary = await batch.summary()
        except (KeyboardInterrupt, asyncio.CancelledError):
            print(
                f"\nStopped. {_resume_hint(args)}"
                if args.sandbox
                else "\nStopped. Jobs in flight keep running (they are paid for and "
                "were not cancelled); their ids are in the journal. "
                + _resume_hint(args),
                file=err,
            )
            raise
    if args.json:
        _print_json(_summary_json(summary), out)
    elif args.dry_run:
        _print_plan(summary.plan, out)
    else:
        _print_summary(summary, out, _rerun_hint(args))
    return _batch_exit(summary)
