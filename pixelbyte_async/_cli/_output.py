"""
What the CLI prints, in one place: exit codes, errors, money, times, jobs and orphans.

`_exit_code` maps an error to its exit code (the table, `EXIT_CODES`, is shared with
the sandbox process and defined in ``_cmdline``); `_report` prints an error
as one line (and as JSON under ``--json``).  The formatters turn the library's
values into the CLI's words (`_usd`, `_iso`, `_cost`, `_job_line`,
`_print_orphans`) and JSON (`_job_json`, `_orphan_json`, `_print_json`);
`_wants_rich` and `_ticking` serve the progress displays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

from pixelbyte_async._audit_report import AuditOrphan
from pixelbyte_async._batch import BatchInputError, BudgetExceeded
from pixelbyte_async._batch._audit import price_words
from pixelbyte_async._cmdline import EXIT_CODES, _CLIError, _print_error
from pixelbyte_async._errors import (
    AmbiguousSubmitError,
    AuthenticationError,
    InsufficientBalance,
    InvalidRequestError,
    JobError,
    NotFound,
    PermissionDenied,
    PixelByteError,
    ServerError,
    TransportError,
    ValidationError,
    WaitTimeout,
    WebhookVerificationError,
)
from pixelbyte_async._inputs import usd
from pixelbyte_async._journal import JournalError
from pixelbyte_async._models import JobInfo, JobStatus


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, _CLIError):
        return EXIT_CODES[exc.family]
    table: list[tuple[type[BaseException], str]] = [
        (WebhookVerificationError, "webhook_invalid"),
        (ValidationError, "validation"),
        (InvalidRequestError, "validation"),
        (AuthenticationError, "auth"),
        (PermissionDenied, "auth"),
        (InsufficientBalance, "balance"),
        (BudgetExceeded, "budget"),
        (JournalError, "journal"),
        (NotFound, "not_found"),
        (JobError, "job_failed"),
        (WaitTimeout, "timeout"),
        (AmbiguousSubmitError, "ambiguous_submit"),
        (TransportError, "unavailable"),
        (ServerError, "unavailable"),
    ]
    for cls, family in table:
        if isinstance(exc, cls):
            return EXIT_CODES[family]
    return EXIT_CODES["error"]


def _report(
    exc: PixelByteError,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    *,
    cause: BaseException | None = None,
) -> int:
    code = _exit_code(exc)
    _print_error(exc, args, err, cause=cause)
    if isinstance(exc, AmbiguousSubmitError):
        print(
            "The job may exist and be charged; it was not re-submitted. "
            "Check 'jobs' before trying again.",
            file=err,
        )
    if getattr(args, "json", False):
        error: dict[str, Any] = {
            # The command line's own errors have no public class: "CLIError".
            "type": "CLIError" if isinstance(exc, _CLIError) else type(exc).__name__,
            "message": str(exc),
            "exitCode": code,
        }
        for name in ("code", "request_id", "estimate_micro_cents", "limit_micro_cents"):
            value = getattr(exc, name, None)
            if value is not None:
                error[name] = value
        if isinstance(exc, BatchInputError):
            error["problems"] = [
                {"where": where, "message": what} for where, what in exc.problems
            ]
        _print_json({"error": error}, out)
    return code


def _usd(micro_cents: int | None) -> str:
    return "?" if micro_cents is None else usd(micro_cents)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _job_json(info: JobInfo) -> dict[str, Any]:
    return {
        "jobId": info.id,
        "status": info.status.value,
        "model": info.model,
        "progress": info.progress,
        "costMicroCents": info.cost_micro_cents,
        "videoUrl": info.video_url,
        "error": None
        if info.error is None
        else {"code": info.error.code, "message": info.error.message},
        "createdAt": _iso(info.created_at),
        "completedAt": _iso(info.completed_at),
        "estimatedCompletionTime": _iso(info.estimated_completion_time),
    }


def _cost(micro_cents: int | None) -> str:
    """A job's cost as the API gave it; never a guess from the price table."""
    return "cost unknown" if micro_cents is None else f"cost {_usd(micro_cents)}"


def _job_line(info: JobInfo) -> str:
    parts = [info.id, f"{info.status.value:<10}", info.model or "?"]
    parts.append(_cost(info.cost_micro_cents))
    if info.created_at is not None:
        parts.append(f"created {_iso(info.created_at)}")
    if info.video_url:
        parts.append(info.video_url)
    if info.error is not None:
        parts.append(f"error {info.error.code}: {info.error.message}")
    return "  ".join(parts)


def _print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(value, indent=None, sort_keys=False), file=out, flush=True)


def _orphan_json(orphan: AuditOrphan) -> dict[str, Any]:
    return {
        "jobId": orphan.job.id,
        "model": orphan.job.model,
        "status": orphan.status.value,
        "createdAt": _iso(orphan.created_at),
        "costMicroCents": orphan.cost_micro_cents,
        "priceMicroCents": orphan.price_micro_cents,
        "priceBasis": orphan.price_basis,
        "attempt": orphan.attempt,
        "proven": orphan.proven,
    }


def _print_orphans(orphans: Sequence[AuditOrphan], out: TextIO) -> None:
    """One line per orphan: whose lost submit may have made it, and what to do."""
    for o in orphans:
        if o.status is JobStatus.PENDING:
            hint = f"cancel it for a refund: pixelbyte-async cancel {o.job.id}"
        else:
            hint = f"adopt it: pixelbyte-async wait {o.job.id} -o FILE"
        maker = (
            f"lost submit {o.attempt}" if o.attempt else "one of several lost submits"
        )
        sure = "" if o.proven else ", not proven"
        print(
            f"ORPHAN {o.job.id} ({o.job.model}, {o.status.value}, "
            f"{price_words(o)}): {maker} of this machine may have made it{sure}; "
            f"{hint}",
            file=out,
        )


def _print_others(others: Sequence[AuditOrphan], out: TextIO) -> None:
    """The one line about jobs no recorded submit could have made."""
    if others:
        print(
            f"Other submitters' jobs: {len(others)} (not ours as far as this "
            "machine knows; never cancelled here).",
            file=out,
        )


def _wants_rich(stream: TextIO) -> bool:
    try:
        import rich  # noqa: F401, PLC0415 -- optional 'cli' extra
    except ImportError:
        return False
    return stream.isatty() or os.environ.get("PIXELBYTE_FORCE_RICH") == "1"


async def _ticking(tick: Callable[[], None]) -> None:
    while True:
        tick()
        await asyncio.sleep(0.1)
