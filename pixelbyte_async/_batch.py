"""
Batches: many jobs under one budget, with a crash-safe journal.

`run_batch` runs a list of inputs (typed inputs, ``(slug, input)`` tuples or
``{"id", "model", "input"}`` mappings) under the client's job limit, waits for
them, downloads their outputs and yields one `BatchItem` per input as it finishes.

* **Budget guard.**  The cost is estimated before the first submit with the API's
  ``/estimate`` (your account's prices; the local price table only when the API
  cannot be asked, and the plan says so); a batch over *max_cost_micro_cents* is
  refused with `BudgetExceeded` before anything is paid for (or, with *fit*, runs
  the rows that fit, in order), and submitting stops as soon as the next job would
  cross the limit.  Submits are sent one at a time and every charge the API
  reports is counted, so racing workers cannot cross the limit.
* **Never pay twice.**  Every step is recorded in a SQLite journal (see
  `pixelbyte_async._journal`) before it happens.  Re-running the same batch after a
  crash (``kill -9`` included) re-attaches submitted jobs by id, skips finished
  ones and reconciles submits of unknown fate with `PixelByte.reconcile`.  A row
  whose submit's fate is unknown is never re-sent before its **settle horizon**
  (counted from the journaled start of the attempt, so it survives a crash) has
  passed with nothing found; other rows go on meanwhile.
* **Audit.**  At the end, the account's jobs created during the run that no
  journal row claims are listed with their cost (`BatchSummary.orphans`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import enum
import hashlib
import io
import json
import logging
import math
import os
import re
import warnings
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Iterable,
    Mapping,
)
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

import anyio
import attrs

from ._errors import (
    AmbiguousSubmitError,
    AuthenticationError,
    ClientClosedError,
    DownloadError,
    InsufficientBalance,
    InvalidRequestError,
    MissingOutputError,
    NotFound,
    PermissionDenied,
    PixelByteError,
    ReconcileError,
    ReconcileTimeout,
    TransportError,
    ValidationError,
    WaitTimeout,
)
from ._inputs import (
    KlingO1StartEndFrame,
    ModelInput,
    check_input,
    check_slug,
    local_cost,
)
from ._journal import Journal, JournalError, JournalRow
from ._models import JobInfo, JobStatus
from ._reconcile import DEFAULT_CLOCK_SKEW, AuditOrphan
from .webhooks import new_attempt_id


if TYPE_CHECKING:
    from ._client import PixelByte
    from ._job import Job


__all__ = [
    "Batch",
    "BatchInput",
    "BatchInputError",
    "BatchItem",
    "BatchItemStatus",
    "BatchPlan",
    "BatchSummary",
    "BudgetExceeded",
    "PlannedItem",
    "read_batch_file",
    "run_batch",
]

log = logging.getLogger("pixelbyte_async")

_T = TypeVar("_T")

#: What `run_batch` accepts per input: a typed input, a ``(slug, input)`` tuple,
#: or a mapping ``{"id": ..., "model": ..., "input": {...}}`` (``input`` may also
#: be a typed input, then ``model`` is optional).
BatchInput: TypeAlias = ModelInput | tuple[str, Mapping[str, Any]] | Mapping[str, Any]

Action: TypeAlias = Literal[
    "submit",
    "retry",
    "reconcile",
    "attach",
    "download",
    "done",
    "failed",
    "cancelled",
    "needs_attention",
    "over_budget",
]

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_AMBIGUOUS_ATTEMPTS = 3
_DEFAULT_WORKERS = 10
_SPENDING: frozenset[str] = frozenset(
    {"submit", "retry", "reconcile", "needs_attention"}
)


# -- errors ------------------------------------------------------------------------


class BudgetExceeded(PixelByteError):
    """
    A batch's estimated cost exceeds its *max_cost_micro_cents*; nothing was submitted.

    Attributes:
        estimate_micro_cents: The batch's estimated total, including what earlier
            runs with the same journal already charged.
        limit_micro_cents: The limit.
        charged_micro_cents: The part already charged by earlier runs.

    .. versionadded:: 0.2.0

    """

    def __init__(
        self,
        message: str,
        *,
        estimate_micro_cents: int,
        limit_micro_cents: int,
        charged_micro_cents: int = 0,
    ) -> None:
        super().__init__(message)
        self.estimate_micro_cents = estimate_micro_cents
        self.limit_micro_cents = limit_micro_cents
        self.charged_micro_cents = charged_micro_cents


class BatchInputError(ValidationError):
    """
    Some inputs of a batch are invalid; nothing was submitted.

    Every problem is reported at once, not just the first.

    Attributes:
        problems: ``(where, message)`` pairs; *where* is ``"file:line"`` for
            `read_batch_file` and ``"input N (key)"`` for `run_batch`.

    .. versionadded:: 0.2.0

    """

    def __init__(self, message: str, *, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        lines = [message, *(f"  {where}: {what}" for where, what in self.problems)]
        super().__init__("\n".join(lines), field="input")


# -- public values -----------------------------------------------------------------


class BatchItemStatus(enum.StrEnum):
    """
    How one input of a batch ended (in this run).

    .. versionadded:: 0.2.0
    """

    #: The job completed (and its output was downloaded, with *out_dir*).
    COMPLETED = "completed"
    #: The job failed (refunded by the API), or the submit was rejected.
    FAILED = "failed"
    #: The job was cancelled (refunded).
    CANCELLED = "cancelled"
    #: Not submitted, because the budget, the balance or the API ran out
    #: (see *skip_reason*).
    SKIPPED = "skipped"
    #: A submit of unknown fate could not be matched to one job; never re-sent.
    NEEDS_ATTENTION = "needs_attention"
    #: Still running, or not downloaded yet; running the batch again finishes it.
    UNFINISHED = "unfinished"
    #: What a dry run would do.
    PLANNED = "planned"


@attrs.frozen(kw_only=True)
class BatchItem:
    """
    The outcome of one input of a batch.

    Attributes:
        key: The input's stable key: its ``id``, or a hash of model and input.
            It names the journal row and the output file.
        index: The input's position in the batch.
        input: The input as given.
        model: The model slug.
        status: How it ended.
        job_id: The job, if one was created.
        error: What went wrong, in words.
        cost_micro_cents: What the job costs you as far as known: its charge, 0
            once refunded (failed, cancelled), ``None`` if never submitted.
        estimated_cost_micro_cents: The estimate made before submitting.
        output_url: The output URL of a completed job.
        path: Where the output was written (with *out_dir*).
        skip_reason: Why it was skipped: ``"budget"``, ``"balance"`` or
            ``"unavailable"``.
        resumed: Whether an earlier run had already started or finished it.
        candidates: Job ids that may be this input's job (``NEEDS_ATTENTION``).
        action: What the batch did or (dry run) would do with it.

    .. versionadded:: 0.2.0

    """

    key: str
    index: int
    input: BatchInput = attrs.field(repr=False)
    model: str
    status: BatchItemStatus
    job_id: str | None = None
    error: str | None = None
    cost_micro_cents: int | None = None
    estimated_cost_micro_cents: int | None = None
    output_url: str | None = None
    path: Path | None = None
    skip_reason: str | None = None
    resumed: bool = False
    candidates: tuple[str, ...] = ()
    action: str = "submit"


@attrs.frozen(kw_only=True)
class PlannedItem:
    """
    What a batch will do with one input (see `BatchPlan`).

    Attributes:
        key: The input's key.
        index: Its position.
        model: The model slug.
        action: ``submit``, ``retry`` (failed before, *retry_failed*),
            ``reconcile`` (a submit of unknown fate), ``attach`` (wait for a job
            submitted earlier), ``download``, ``done``, ``failed``, ``cancelled``,
            ``needs_attention`` or ``over_budget`` (left out by *fit*).
        estimated_cost_micro_cents: What it may still cost (``None`` if nothing).
        job_id: Its job, if the journal knows one.

    .. versionadded:: 0.2.0

    """

    key: str
    index: int
    model: str
    action: str
    estimated_cost_micro_cents: int | None = None
    job_id: str | None = None


@attrs.frozen(kw_only=True)
class BatchPlan:
    """
    A batch's plan, made before the first submit (and all a dry run does).

    Attributes:
        items: One `PlannedItem` per input, in input order.
        estimated_cost_micro_cents: What this run may still spend.
        charged_micro_cents: What earlier runs with the journal already charged
            (net of refunds).
        max_cost_micro_cents: The limit, if any.
        estimate_source: ``"api"`` (the API's ``/estimate``: your prices),
            ``"local"`` (the SDK's list-price table, because the API could not be
            asked: see *estimate_note*), ``"mixed"`` or ``"none"`` (nothing to
            estimate).
        estimate_note: Why the local table was used, if it was.

    .. versionadded:: 0.2.0

    """

    items: tuple[PlannedItem, ...]
    estimated_cost_micro_cents: int
    charged_micro_cents: int = 0
    max_cost_micro_cents: int | None = None
    estimate_source: str = "api"
    estimate_note: str | None = None

    @property
    def total_micro_cents(self) -> int:
        """The batch's estimated total, already charged plus still to spend."""
        return self.charged_micro_cents + self.estimated_cost_micro_cents

    @property
    def within_budget(self) -> bool:
        """Whether the total fits *max_cost_micro_cents* (always, without one)."""
        limit = self.max_cost_micro_cents
        return limit is None or self.total_micro_cents <= limit

    def count(self, action: str) -> int:
        """Return how many inputs the plan gives *action*."""
        return sum(1 for item in self.items if item.action == action)


@attrs.frozen(kw_only=True)
class BatchSummary:
    """
    How a batch run went.

    Attributes:
        items: One `BatchItem` per input, in input order.
        plan: The plan made before the first submit.
        cost_micro_cents: What the batch's jobs cost as far as known (charges net
            of refunds, earlier runs included; estimates stand in for charges the
            API did not report).
        wall_seconds: How long this run took (by the client's clock).
        stop_reason: Why submitting stopped early: ``"budget"``, ``"balance"``,
            ``"unavailable"``, or ``None``.
        journal: The journal file, if any.
        dry_run: Whether this was a dry run.
        orphans: The account's jobs of the batch's models created during the run
            that no journal row claims (`PixelByte.audit` over the run's window):
            a double charge that slipped through anything, or another program's
            jobs.  ``None`` if the audit could not run (see *audit_error*).
        audit_error: Why the audit could not run.

    .. versionadded:: 0.2.0

    """

    items: tuple[BatchItem, ...]
    plan: BatchPlan
    cost_micro_cents: int
    wall_seconds: float
    stop_reason: str | None = None
    journal: Path | None = None
    dry_run: bool = False
    orphans: tuple[AuditOrphan, ...] | None = ()
    audit_error: str | None = None

    @property
    def orphan_cost_micro_cents(self) -> int:
        """The known cost of the orphans (refunded ones excluded)."""
        return sum(
            o.cost_micro_cents or 0
            for o in self.orphans or ()
            if o.status not in {JobStatus.FAILED, JobStatus.CANCELLED}
        )

    def _count(self, status: BatchItemStatus) -> int:
        return sum(1 for item in self.items if item.status is status)

    @property
    def completed(self) -> int:
        """How many inputs completed."""
        return self._count(BatchItemStatus.COMPLETED)

    @property
    def failed(self) -> int:
        """How many inputs failed."""
        return self._count(BatchItemStatus.FAILED)

    @property
    def cancelled(self) -> int:
        """How many jobs were cancelled."""
        return self._count(BatchItemStatus.CANCELLED)

    @property
    def skipped(self) -> int:
        """How many inputs were not submitted (budget, balance, API down)."""
        return self._count(BatchItemStatus.SKIPPED)

    @property
    def needs_attention(self) -> int:
        """How many inputs need a human decision (see `BatchItem.candidates`)."""
        return self._count(BatchItemStatus.NEEDS_ATTENTION)

    @property
    def unfinished(self) -> int:
        """How many inputs a re-run would still finish (timeouts, downloads)."""
        return self._count(BatchItemStatus.UNFINISHED)

    @property
    def ok(self) -> bool:
        """Whether every input completed (a dry run is never ok)."""
        return not self.dry_run and self.completed == len(self.items)


# -- inputs ------------------------------------------------------------------------


@attrs.define(kw_only=True)
class _Entry:
    """One input as the batch works on it."""

    index: int
    key: str
    model: str
    original: BatchInput
    typed: ModelInput | None
    raw: dict[str, Any] | None
    document: dict[str, Any]
    estimate: int | None = None
    row: JournalRow | None = None
    action: Action = "submit"
    job: Job | None = None
    resumed: bool = False


def _canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def _looks_like_url(value: object) -> bool:
    return isinstance(value, str) and "://" in value[:16]


def _describe_local(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return "sha256:" + hashlib.sha256(bytes(value)).hexdigest()
    if not isinstance(value, os.PathLike):
        raise ValidationError(
            "a batch input's local frames must be a pathlib.Path or bytes (the "
            f"journal must describe them), not {type(value).__name__}"
        )
    return str(os.fspath(value))


def _document(request: ModelInput) -> dict[str, Any]:
    """
    Return the ``input`` a typed request stands for, as JSON.

    Local frames (not uploaded yet) appear as their path or ``sha256:`` digest.
    """
    try:
        return dict(request.to_input())
    except ValidationError:
        pass
    fields = tuple(getattr(request, "frame_fields", ()))
    if not fields or not attrs.has(type(request)):
        raise ValidationError(
            f"cannot describe {type(request).__name__} with local files; give it "
            "URLs or make it an attrs class with frame_fields"
        )
    stand_ins: dict[str, str] = {}
    described: dict[str, str] = {}
    for n, name in enumerate(fields):
        value = getattr(request, name)
        if isinstance(value, str):
            continue  # a str is always a URL (never a local file)
        url = f"https://local.invalid/{n}"
        stand_ins[name] = url
        described[url] = _describe_local(value)
    probe: ModelInput = attrs.evolve(cast("Any", request), **stand_ins)
    return {
        k: described.get(v, v) if isinstance(v, str) else v
        for k, v in probe.to_input().items()
    }


def _check_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ValidationError(
            f"id must be 1-128 letters, digits, '.', '_' or '-' (not starting with "
            f"'.', '_' or '-'), got {value!r}",
            field="id",
        )
    return value


def _from_mapping(
    value: Mapping[Any, Any],
) -> tuple[str | None, str, ModelInput | None, dict[str, Any] | None]:
    unknown = sorted(set(map(str, value)) - {"id", "model", "input"})
    if unknown:
        raise ValidationError(
            f"unknown keys {', '.join(unknown)} (expected id, model, input)"
        )
    item_id = None if value.get("id") is None else _check_id(value["id"])
    inner = value.get("input")
    given = value.get("model")
    if isinstance(inner, ModelInput):
        if given is not None and given != inner.model_slug:
            raise ValidationError(
                f"model {given!r} does not match the typed input's "
                f"{inner.model_slug!r}",
                field="model",
            )
        return item_id, inner.model_slug, inner, None
    if inner is None:
        raise ValidationError("'input' is required", field="input")
    if given is None:
        raise ValidationError(
            "'model' (a slug) is required with a raw input", field="model"
        )
    return item_id, check_slug(given), None, check_input(inner)


def _entry(value: object, index: int) -> _Entry:
    """Normalise one input; raise `ValidationError` if it is not one."""
    item_id: str | None = None
    typed: ModelInput | None = None
    raw: dict[str, Any] | None = None
    if isinstance(value, Mapping):
        item_id, model, typed, raw = _from_mapping(value)
    elif isinstance(value, tuple):
        if len(value) != 2:  # noqa: PLR2004 -- (slug, input)
            raise ValidationError("a tuple input must be (model_slug, input)")
        model = check_slug(value[0])
        raw = check_input(value[1])
    elif isinstance(value, ModelInput):
        typed = value
        model = value.model_slug
    else:
        raise ValidationError(
            f"cannot run {type(value).__name__} in a batch: give a typed input, a "
            "(slug, input) tuple or an {'id', 'model', 'input'} mapping"
        )
    document = _document(typed) if typed is not None else cast("dict[str, Any]", raw)
    key = (
        item_id
        or hashlib.sha256(_canonical({"model": model, "input": document})).hexdigest()[
            :16
        ]
    )
    return _Entry(
        index=index,
        key=key,
        model=model,
        original=cast("BatchInput", value),
        typed=typed,
        raw=raw,
        document=document,
    )


async def _collect(
    inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
) -> list[_Entry]:
    values: list[object] = []
    if isinstance(inputs, AsyncIterable):
        values.extend([value async for value in inputs])
    else:
        values.extend(inputs)
    entries: list[_Entry] = []
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for index, value in enumerate(values):
        try:
            entry = _entry(value, index)
        except ValidationError as exc:
            problems.append((f"input {index}", str(exc)))
            continue
        if entry.key in seen:
            problems.append(
                (
                    f"input {index} ({entry.key})",
                    (
                        f"same key as input {seen[entry.key]}; give each input a "
                        "distinct 'id' to run identical inputs twice"
                    ),
                )
            )
            continue
        seen[entry.key] = index
        entries.append(entry)
    if problems:
        raise BatchInputError(
            f"{len(problems)} invalid batch inputs; nothing was submitted",
            problems=problems,
        )
    return entries


# -- batch files -------------------------------------------------------------------

_TRANSITION_KEYS = frozenset({"id", "start", "end", "prompt", "duration", "pro"})
_RAW_KEYS = frozenset({"id", "model", "input"})
_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n", ""}


def _frame(value: object, base: Path, name: str) -> str | Path:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"'{name}' must be a URL or a path", field=name)
    value = value.strip()
    if _looks_like_url(value):
        return value
    return base / value


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValidationError(f"'pro' must be true or false, got {value!r}", field="pro")


def _transition_row(row: Mapping[str, Any], base: Path) -> BatchInput:
    unknown = sorted(set(row) - _TRANSITION_KEYS)
    if unknown:
        raise ValidationError(
            f"unknown fields {', '.join(unknown)} (expected "
            "id, start, end, prompt, duration, pro; or id, model, input)"
        )
    for name in ("start", "end"):
        if row.get(name) in {None, ""}:
            raise ValidationError(f"'{name}' is required", field=name)
    duration = row.get("duration")
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValidationError("'prompt' must be a string", field="prompt")
    try:
        request = KlingO1StartEndFrame(
            image_url=_frame(row["start"], base, "start"),
            end_image_url=_frame(row["end"], base, "end"),
            prompt=prompt or None,
            duration=5 if duration in {None, ""} else duration,
            pro=_flag(row.get("pro", False)),
        )
    except ValidationError as exc:
        # Speak the file's language: its columns are start/end.
        names = {"image_url": "start", "end_image_url": "end"}
        message = str(exc)
        for api_name, column in names.items():
            message = message.replace(f"{api_name}:", f"{column}:")
        raise ValidationError(
            message, field=names.get(exc.field or "", exc.field)
        ) from exc
    item: dict[str, Any] = {"input": request}
    if row.get("id") not in {None, ""}:
        item["id"] = row["id"]
    return item


def _raw_row(row: Mapping[str, Any]) -> BatchInput:
    unknown = sorted(set(row) - _RAW_KEYS)
    if unknown:
        raise ValidationError(
            f"unknown fields {', '.join(unknown)} (expected id, model, input)"
        )
    if not isinstance(row.get("input"), dict):
        raise ValidationError("'input' must be a JSON object", field="input")
    return {k: v for k, v in row.items() if v is not None}


def _parse_rows(path: Path) -> list[tuple[int, Mapping[str, Any] | str]]:
    """Return ``(line, row or error message)`` for every row of *path*."""
    text = path.read_text(encoding="utf-8-sig")
    rows: list[tuple[int, Mapping[str, Any] | str]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = set(reader.fieldnames or ())
        missing = {"start", "end"} - header
        extra = header - _TRANSITION_KEYS
        if missing or extra:
            problem = (
                f"missing columns {', '.join(sorted(missing))}"
                if missing
                else f"unknown columns {', '.join(sorted(extra))}"
            )
            return [(1, f"{problem}; the header is id,start,end,prompt,duration[,pro]")]
        for record in reader:
            if None in record:
                rows.append((reader.line_num, "more cells than header columns"))
                continue
            if not any((v or "").strip() for v in record.values()):
                continue
            rows.append(
                (reader.line_num, {k: (v or "").strip() for k, v in record.items()})
            )
        return rows
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            rows.append((line_no, f"not valid JSON: {exc}"))
            continue
        if not isinstance(value, dict):
            rows.append((line_no, "each line must be a JSON object"))
            continue
        rows.append((line_no, value))
    return rows


def _read_row(
    row: Mapping[str, Any] | str, *, base: Path, line: int, seen: dict[str, int]
) -> BatchInput:
    """Check one parsed row; *seen* maps the keys taken so far to their lines."""
    if isinstance(row, str):
        raise ValidationError(row)
    claimed = row.get("id")
    if claimed not in {None, ""}:
        if str(claimed) in seen:
            raise ValidationError(
                f"duplicate id {claimed!r} (line {seen[str(claimed)]})", field="id"
            )
        seen[str(claimed)] = line
    if "model" in row or "input" in row:
        item = _raw_row(row)
    else:
        item = _transition_row(row, base)
    key = _entry(item, line).key
    if seen.setdefault(key, line) != line:
        raise ValidationError(f"same row as line {seen[key]} (key {key!r})")
    return item


def read_batch_file(path: str | os.PathLike[str]) -> list[BatchInput]:
    """
    Read a batch file for `run_batch`, checking every row before returning.

    ``.csv`` files have the header ``id,start,end,prompt,duration[,pro]``; other
    files are JSON Lines with one object per line: ``{"id", "start", "end",
    "prompt", "duration", "pro"}`` for a Kling O1 transition or ``{"id", "model",
    "input"}`` for any model.  *start* and *end* are https URLs or image paths
    relative to the file (uploaded when submitted).  ``id`` is optional but
    recommended: it names the output file and survives edits of the row.

    Args:
        path: The file.

    Returns:
        One input per row, in file order.

    Raises:
        BatchInputError: Every invalid row, as ``("file:line", message)`` in
            ``problems``, and duplicate ids or rows.
        ValidationError: The file does not exist or cannot be read.

    .. versionadded:: 0.2.0

    """
    source = Path(path)
    try:
        parsed = _parse_rows(source)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read {source}: {exc}", field="path") from exc
    except csv.Error as exc:
        raise BatchInputError(
            f"{source} is not valid CSV", problems=[(str(source), str(exc))]
        ) from exc
    base = source.resolve().parent
    inputs: list[BatchInput] = []
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for line, row in parsed:
        try:
            inputs.append(_read_row(row, base=base, line=line, seen=seen))
        except ValidationError as exc:
            problems.append((f"{source}:{line}", str(exc)))
    if not parsed and not problems:
        problems.append((str(source), "no rows"))
    if problems:
        raise BatchInputError(
            f"{len(problems)} invalid rows in {source}; nothing was submitted",
            problems=problems,
        )
    return inputs


# -- the batch ---------------------------------------------------------------------


def _usd(micro_cents: int) -> str:
    return f"${micro_cents / 1_000_000:,.2f}"


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _is_fatal(exc: BaseException) -> bool:
    """Whether *exc* ends the whole batch rather than one input."""
    if isinstance(exc, PermissionDenied):
        return exc.code != "MODEL_ACCESS_DENIED"
    return isinstance(exc, AuthenticationError | ClientClosedError | JournalError)


def _estimate_source(
    unreachable: list[PixelByteError], asked: int
) -> tuple[str, str | None]:
    """``(source, note)`` of a batch's estimates, given the failed API calls."""
    if not unreachable:
        return "api", None
    note = (
        f"the API's estimate could not be asked ({unreachable[0]}); list prices "
        "from the SDK's table were used, and your account may pay more"
    )
    log.warning("batch: %s", note)
    return ("local" if len(unreachable) == asked else "mixed"), note


def _suffix(url: str | None) -> str:
    try:
        path = urlsplit(url or "").path
    except ValueError:  # e.g. an unusable URL recorded by an older version
        return ".mp4"
    suffix = PurePosixPath(path).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".mp4"


def _job_error(info: JobInfo) -> str | None:
    if info.status is JobStatus.FAILED:
        err = info.error
        code = (err.code if err else None) or "UNKNOWN"
        return f"job failed: {code}: {(err.message if err else '') or 'no message'}"
    if info.status is JobStatus.CANCELLED:
        return "job was cancelled"
    return None


async def _finish_anyway(awaitable: asyncio.Future[_T]) -> _T:
    """Await *awaitable* to its end even if we are cancelled meanwhile."""
    try:
        return await asyncio.shield(awaitable)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait({awaitable})
        raise


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
        pb: PixelByte,
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
    ) -> None:
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
        if settle is not None and not 0 <= settle < float("inf"):
            raise ValidationError("settle must be a finite number >= 0", field="settle")
        if fit and max_cost_micro_cents is None:
            raise ValidationError(
                "fit needs max_cost_micro_cents (the budget to fit)", field="fit"
            )
        self._pb = pb
        self._inputs = inputs
        self._journal_path = None if journal is None else Path(journal).absolute()
        self._out_dir = None if out_dir is None else Path(out_dir).absolute()
        self._limit = max_cost_micro_cents
        self._dry_run = dry_run
        self._retry_failed = retry_failed
        self._wait_timeout = wait_timeout
        self._settle = settle
        self._fit = fit
        #: Attempts of unknown fate not settled yet, by row: they compete for the
        #: jobs reconcile finds (leftovers of earlier runs included).
        self._unknown: dict[str, AmbiguousSubmitError] = {}
        #: Per model, rows being settled whose jobs only the job list can identify:
        #: new submits of that model wait for them, so attribution stays possible.
        self._settling: collections.Counter[str] = collections.Counter()
        self._gated: set[str] = set()
        self._settled = asyncio.Condition()
        self._orphans: tuple[AuditOrphan, ...] | None = ()
        self._audit_error: str | None = None
        self._window_start = 0.0
        self._phase: Literal["new", "ready", "running", "done", "closed"] = "new"
        self._start_lock = asyncio.Lock()
        self._submit_lock = asyncio.Lock()
        self._results: asyncio.Queue[BatchItem | None] = asyncio.Queue()
        self._journal: Journal | None = None
        self._entries: list[_Entry] = []
        self._items: dict[str, BatchItem] = {}
        self._net: dict[str, int] = {}
        self._plan: BatchPlan | None = None
        self._runner: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._stop_reason: str | None = None
        self._running = 0
        self._started_at = 0.0
        self._ended_at: float | None = None

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
        item = await self._results.get()
        if item is None:
            self._results.put_nowait(None)  # stay exhausted
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
        return len(self._items)

    @property
    def running(self) -> int:
        """How many inputs are being submitted, waited for or downloaded now."""
        return self._running

    @property
    def charged_micro_cents(self) -> int:
        """What the batch's jobs cost so far, as far as known (net of refunds)."""
        return sum(self._net.values())

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
        self._window_start = self._pb.clock.time()
        entries = await _collect(self._inputs)
        self._entries = entries
        journal = await Journal.open(self._journal_path, readonly=self._dry_run)
        self._journal = journal
        if self._dry_run:
            rows = await journal.rows()
        else:
            rows = await journal.plan((e.key, e.model, e.document) for e in entries)
        for entry in entries:
            entry.row = rows.get(entry.key)
            await self._classify(entry)
            if entry.action == "reconcile" and entry.row is not None:
                row = entry.row
                self._unknown[entry.key] = AmbiguousSubmitError(
                    f"an earlier run was submitting {entry.key} when it stopped",
                    model=entry.model,
                    input=row.input,
                    webhook_url=None,
                    started_at=row.started_at or 0.0,
                    attempt=row.attempt,
                )
                self._hold_model(entry)
                # The audit window reaches back to the attempts this run settles.
                self._window_start = min(self._window_start, row.started_at or 0.0)
        source, note = await self._estimate(
            [e for e in entries if e.action in _SPENDING]
        )
        if self._fit and not self._dry_run:
            self._fit_budget(entries)
        plan = BatchPlan(
            items=tuple(
                PlannedItem(
                    key=e.key,
                    index=e.index,
                    model=e.model,
                    action=e.action,
                    estimated_cost_micro_cents=e.estimate
                    if e.action in _SPENDING
                    else None,
                    job_id=e.row.job_id if e.row else None,
                )
                for e in entries
            ),
            estimated_cost_micro_cents=sum(
                e.estimate or 0 for e in entries if e.action in _SPENDING
            ),
            charged_micro_cents=self.charged_micro_cents,
            max_cost_micro_cents=self._limit,
            estimate_source=source,
            estimate_note=note,
        )
        self._plan = plan
        for entry in entries:
            if entry.action == "needs_attention":
                # Its job may exist (and be charged): count it against the budget.
                self._net[entry.key] = entry.estimate or 0
        if not self._dry_run and not plan.within_budget:
            assert self._limit is not None  # noqa: S101 -- within_budget says so
            earlier = (
                f" ({_usd(plan.charged_micro_cents)} already charged by earlier runs)"
                if plan.charged_micro_cents
                else ""
            )
            raise BudgetExceeded(
                f"the batch is estimated at {_usd(plan.total_micro_cents)}{earlier}, "
                f"over the limit of {_usd(self._limit)}; nothing was submitted",
                estimate_micro_cents=plan.total_micro_cents,
                limit_micro_cents=self._limit,
                charged_micro_cents=plan.charged_micro_cents,
            )

    async def _classify(self, entry: _Entry) -> None:
        """Decide what to do with *entry* from its journal row."""
        row = entry.row
        if row is None or row.state == "planned":
            entry.action = "submit"
            return
        entry.resumed = True
        if row.job_id is not None and row.state not in {"failed", "cancelled"}:
            self._net[entry.key] = row.cost_micro_cents or 0
        state = row.state
        if state == "submitting":
            entry.action = "reconcile"
        elif state == "submitted":
            entry.action = "attach"
        elif state == "completed":
            entry.action = "download" if self._out_dir is not None else "done"
        elif state == "downloaded":
            entry.action = "done"
            if self._out_dir is not None and not await self._intact(entry, row):
                entry.action = "download"
        elif state == "failed":
            entry.action = "retry" if self._retry_failed else "failed"
            self._net[entry.key] = 0
        elif state == "cancelled":
            entry.action = "cancelled"
            self._net[entry.key] = 0
        else:
            entry.action = "needs_attention"

    def _target(self, entry: _Entry, url: str | None) -> Path:
        assert self._out_dir is not None  # noqa: S101 -- only called with out_dir
        return self._out_dir / f"{entry.key}{_suffix(url)}"

    async def _intact(self, entry: _Entry, row: JournalRow) -> bool:
        """Whether the recorded output file is where we want it, at its size."""
        if row.output_path is None or row.output_bytes is None:
            return False
        if Path(row.output_path) != self._target(entry, row.output_url):
            return False
        try:
            stat = await anyio.Path(row.output_path).stat()
        except OSError:
            return False
        return stat.st_size == row.output_bytes

    async def _estimate(self, entries: list[_Entry]) -> tuple[str, str | None]:
        """
        Estimate every entry with the API (your prices), one call per distinct input.

        The local price table stands in only when the API cannot be asked (it is
        down, or the key may not estimate); returns ``(source, note)``.
        """
        groups: dict[bytes, list[_Entry]] = {}
        for entry in entries:
            key = _canonical([entry.model, entry.document])
            groups.setdefault(key, []).append(entry)
        if not groups:
            return "none", None
        problems: list[tuple[str, str]] = []
        unreachable: list[PixelByteError] = []
        limiter = anyio.CapacityLimiter(self._workers())

        async def ask(group: list[_Entry]) -> None:
            async with limiter:
                cost, problem, failure = await self._estimate_one(group[0])
            if failure is not None:
                unreachable.append(failure)
            if problem is not None:
                problems.extend((f"input {e.index} ({e.key})", problem) for e in group)
            for entry in group:
                entry.estimate = cost

        async with anyio.create_task_group() as tg:
            for group in groups.values():
                tg.start_soon(ask, group)
        fatal = [exc for exc in unreachable if _is_fatal(exc)]
        if fatal:
            raise fatal[0]
        if problems:
            raise BatchInputError(
                f"{len(problems)} batch inputs were rejected by the API's estimate; "
                "nothing was submitted",
                problems=sorted(problems),
            )
        return _estimate_source(unreachable, len(groups))

    async def _estimate_one(
        self, entry: _Entry
    ) -> tuple[int | None, str | None, PixelByteError | None]:
        """``(cost, problem, why the API could not be asked)`` for one input."""
        try:
            if entry.typed is not None:
                estimate = await self._pb.estimate(entry.typed)
            else:
                estimate = await self._pb.estimate(entry.model, entry.raw)
        except (InvalidRequestError, NotFound, ValidationError) as exc:
            return None, f"estimate rejected: {exc}", None
        except PixelByteError as exc:
            cost = None if _is_fatal(exc) else local_cost(entry.model, entry.document)
            if cost is None and not _is_fatal(exc):
                return (
                    None,
                    (
                        f"cannot be estimated: the API's estimate failed ({exc}) and "
                        "the SDK has no list price for it"
                    ),
                    None,
                )
            return cost, None, exc
        return estimate.estimated_cost_micro_cents, None, None

    def _fit_budget(self, entries: list[_Entry]) -> None:
        """Keep the spending rows that fit the budget, in input order."""
        assert self._limit is not None  # noqa: S101 -- fit requires a limit
        total = self.charged_micro_cents
        for entry in sorted(entries, key=lambda e: e.index):
            if entry.action not in _SPENDING:
                continue
            cost = entry.estimate or 0
            if entry.action in {"submit", "retry"} and total + cost > self._limit:
                entry.action = "over_budget"
                continue
            total += cost

    def _workers(self) -> int:
        return self._pb.config.max_concurrent_jobs or _DEFAULT_WORKERS

    # -- the run -------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            if self._dry_run:
                for entry in self._entries:
                    self._emit(entry, BatchItemStatus.PLANNED, resumed=entry.resumed)
                return
            self._report_finished()
            # Rows an earlier run left in 'submitting' go first: their horizon is
            # counted from the journaled attempt, and other rows go on meanwhile.
            queue = collections.deque(
                sorted(
                    (e for e in self._entries if e.key not in self._items),
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
                self._stop_reason = self._stop_reason or "budget"
            await self._audit()
        except Exception as exc:  # noqa: BLE001 -- handed to whoever iterates
            self._error = _unwrap(exc)
        finally:
            self._ended_at = self._pb.clock.monotonic()
            if self._journal is not None:
                await _finish_anyway(asyncio.ensure_future(self._journal.aclose()))
            self._phase = "done"
            self._results.put_nowait(None)

    def _report_finished(self) -> None:
        """Yield what earlier runs finished, without touching the API."""
        for entry in self._entries:
            row = entry.row
            if row is None:
                continue
            if entry.action == "done":
                path = (
                    Path(row.output_path)
                    if row.output_path and self._out_dir is not None
                    else None
                )
                self._emit(
                    entry,
                    BatchItemStatus.COMPLETED,
                    job_id=row.job_id,
                    output_url=row.output_url,
                    path=path,
                    resumed=True,
                )
            elif entry.action in {"failed", "cancelled"}:
                status = (
                    BatchItemStatus.FAILED
                    if entry.action == "failed"
                    else BatchItemStatus.CANCELLED
                )
                hint = (
                    ""
                    if entry.action == "cancelled"
                    else " (retry_failed=True retries it)"
                )
                self._emit(
                    entry,
                    status,
                    job_id=row.job_id,
                    error=f"{row.error or entry.action} in an earlier run{hint}",
                    resumed=True,
                )
            elif entry.action == "needs_attention":
                self._emit(
                    entry,
                    BatchItemStatus.NEEDS_ATTENTION,
                    error=row.error,
                    candidates=row.candidates,
                    resumed=True,
                )
        for entry in self._entries:
            if entry.action == "over_budget":
                self._emit(entry, BatchItemStatus.SKIPPED, skip_reason="budget")

    async def _audit(self) -> None:
        """List the account's unclaimed jobs of this batch's models in its window."""
        assert self._journal is not None  # noqa: S101 -- open while running
        models = sorted({e.model for e in self._entries})
        since = self._window_start - DEFAULT_CLOCK_SKEW
        try:
            claimed = await self._journal.job_ids()
            orphans: list[AuditOrphan] = []
            for model in models:
                report = await self._pb.audit(since=since, model=model, exclude=claimed)
                orphans.extend(report.orphans)
        except PixelByteError as exc:
            if _is_fatal(exc):
                raise
            self._orphans = None
            self._audit_error = str(exc)
            log.warning("batch: the closing audit failed: %s", exc)
            return
        self._orphans = tuple(orphans)
        for orphan in orphans:
            log.warning(
                "batch: job %s (%s, %s) was created during the run but no row "
                "claims it; cost %s",
                orphan.job.id,
                orphan.job.model,
                orphan.status.value,
                "unknown"
                if orphan.cost_micro_cents is None
                else _usd(orphan.cost_micro_cents),
            )

    async def _worker(self, queue: collections.deque[_Entry]) -> None:
        while queue:
            entry = queue.popleft()
            self._running += 1
            try:
                await self._process(entry)
            finally:
                self._running -= 1

    async def _process(self, entry: _Entry) -> None:
        try:
            if entry.action in {"submit", "retry", "reconcile"}:
                job = await (
                    self._resume_unknown(entry)
                    if entry.action == "reconcile"
                    else self._submit(entry)
                )
                if job is None:
                    return
            elif entry.job is not None:
                job = entry.job
            else:
                assert entry.row is not None  # noqa: S101 -- attach/download rows
                assert entry.row.job_id is not None  # noqa: S101
                try:
                    job = await self._pb.get_job(entry.row.job_id)
                except NotFound as exc:
                    await self._park(entry, f"job {entry.row.job_id} is gone: {exc}")
                    return
            await self._finish(entry, job)
        except PixelByteError as exc:
            if _is_fatal(exc):
                raise
            self._emit(
                entry,
                BatchItemStatus.UNFINISHED,
                job_id=entry.job.id if entry.job else None,
                error=f"{exc}; run the batch again to finish it",
            )

    async def _park(
        self, entry: _Entry, reason: str, candidates: tuple[str, ...] = ()
    ) -> None:
        assert self._journal is not None  # noqa: S101 -- open while running
        await self._journal.needs_attention(
            entry.key, reason=reason, candidates=candidates
        )
        self._emit(
            entry,
            BatchItemStatus.NEEDS_ATTENTION,
            error=reason,
            candidates=candidates,
            job_id=entry.job.id if entry.job else None,
        )

    def _refuse(self, entry: _Entry) -> bool:
        """Skip *entry* (and stop submitting) if the budget or the API says so."""
        if self._stop_reason is None and self._limit is not None:
            cost = entry.estimate or 0
            if self.charged_micro_cents + cost > self._limit:
                self._stop_reason = "budget"
                log.warning(
                    "batch: budget of %s reached (%s charged); submitting stops",
                    _usd(self._limit),
                    _usd(self.charged_micro_cents),
                )
        if self._stop_reason is None:
            return False
        self._emit(entry, BatchItemStatus.SKIPPED, skip_reason=self._stop_reason)
        return True

    async def _upload(
        self, entry: _Entry
    ) -> tuple[ModelInput | dict[str, Any], dict[str, Any]]:
        """Upload local frames (free) and return ``(request, input to send)``."""
        typed = entry.typed
        if typed is None:
            assert entry.raw is not None  # noqa: S101 -- raw entries have raw input
            return entry.raw, entry.raw
        done: dict[str, str] = {}
        changes: dict[str, str] = {}
        for name in getattr(typed, "frame_fields", ()):
            value = getattr(typed, name)
            if isinstance(value, str):
                continue  # a str is always a URL (never a local file)
            key = _describe_local(value)
            if key not in done:
                done[key] = await self._pb.upload(value)
            changes[name] = done[key]
        if changes:
            typed = cast("ModelInput", attrs.evolve(cast("Any", typed), **changes))
        return typed, typed.to_input()

    async def _submit(self, entry: _Entry) -> Job | None:
        """Submit *entry* without ever paying twice; ``None`` when it ended already."""
        for _ in range(_MAX_AMBIGUOUS_ATTEMPTS):
            if self._refuse(entry):
                return None
            try:
                request, sent = await self._upload(entry)
            except PixelByteError as exc:
                self._rejected(entry, exc, what="upload failed")
                return None
            while True:
                await self._until_attributable(entry.model)
                # Submits go one at a time, so the budget check before each one
                # sees every earlier charge, and a crash leaves few rows in
                # 'submitting'.
                async with self._submit_lock:
                    if self._settling[entry.model]:
                        continue  # another submit became unknown meanwhile
                    if self._refuse(entry):
                        return None
                    sent_outcome = await self._send(entry, request, sent)
                    break
            if isinstance(sent_outcome, AmbiguousSubmitError):
                # Look for its job outside the lock: other rows go on meanwhile.
                found = await self._reconcile_now(entry, sent_outcome)
                if found is None:
                    continue  # the horizon passed with nothing found: send again
                return found or None
            return sent_outcome or None
        self._emit(
            entry,
            BatchItemStatus.FAILED,
            error=f"{_MAX_AMBIGUOUS_ATTEMPTS} submits failed ambiguously, and after "
            "each no job appeared within the settle horizon; run the batch again "
            "to retry",
        )
        return None

    async def _until_attributable(self, model: str) -> None:
        """
        Wait while a submit of *model* of unknown fate is being settled.

        Without an idempotency key, the job list cannot tell apart the jobs of two
        lost submits of one model made at the same time; so a new submit of that
        model waits until the earlier one is found (usually within seconds) or its
        horizon has passed.  Rows of other models, and waiting for and downloading
        running jobs, go on meanwhile.  Attempts tagged with a webhook nonce do
        not hold anything up: their deliveries attribute them.
        """
        async with self._settled:
            await self._settled.wait_for(lambda: not self._settling[model])

    def _hold_model(self, entry: _Entry) -> None:
        """Hold new submits of *entry*'s model until its unknown fate is settled."""
        if entry.key not in self._gated:
            self._gated.add(entry.key)
            self._settling[entry.model] += 1

    async def _release_model(self, entry: _Entry) -> None:
        if entry.key in self._gated:
            self._gated.discard(entry.key)
            self._settling[entry.model] -= 1
            async with self._settled:
                self._settled.notify_all()

    async def _resume_unknown(self, entry: _Entry) -> Job | None:
        """Settle a row an earlier run left in 'submitting', then send it if safe."""
        found = await self._reconcile_now(entry, self._unknown[entry.key])
        if found is None:
            return await self._submit(entry)
        return found or None

    async def _send(
        self,
        entry: _Entry,
        request: ModelInput | dict[str, Any],
        sent: dict[str, Any],
    ) -> Job | AmbiguousSubmitError | Literal[False]:
        """
        Send one submit of *entry*, journaled before and after.

        Returns:
            The job; the `AmbiguousSubmitError` when its fate is unknown (the row
            stays 'submitting'); ``False`` when the entry has ended (rejected).

        """
        assert self._journal is not None  # noqa: S101 -- open while running
        journal = self._journal
        attempt = new_attempt_id()
        await journal.submitting(
            entry.key,
            started_at=self._pb.clock.time(),
            sent_input=sent,
            attempt=attempt,
        )
        try:
            if isinstance(request, dict):
                job = await self._pb.submit(entry.model, request, attempt=attempt)
            else:
                job = await self._pb.submit(request, attempt=attempt)
        except AmbiguousSubmitError as exc:
            # It may be charged: count it against the budget until settled.
            self._net[entry.key] = entry.estimate or 0
            self._unknown[entry.key] = exc
            if exc.attempt is None:
                self._hold_model(entry)
            return exc
        except PixelByteError as exc:
            await journal.unsubmitted(entry.key, error=str(exc))
            self._rejected(entry, exc, what="submit rejected")
            return False
        await self._record(entry, job, how="submitted")
        return job

    async def _record(self, entry: _Entry, job: Job, *, how: str) -> None:
        """Journal *entry*'s job and count its charge (the estimate if unknown)."""
        assert self._journal is not None  # noqa: S101 -- open while running
        cost = job.cost_micro_cents
        known = cost is not None
        if cost is None:
            cost = entry.estimate
        elif entry.estimate and cost > entry.estimate:
            self._reprice(entry.model, cost / entry.estimate)
        self._net[entry.key] = cost or 0
        entry.job = job
        await _finish_anyway(
            asyncio.ensure_future(
                self._journal.submitted(
                    entry.key,
                    job_id=job.id,
                    cost_micro_cents=cost,
                    cost_known=known,
                    status=job.status.value,
                    how=how,
                )
            )
        )

    def _rejected(self, entry: _Entry, exc: PixelByteError, *, what: str) -> None:
        """Report a submit that created no job; stop submitting if all would fail."""
        if _is_fatal(exc):
            raise exc
        if isinstance(exc, InsufficientBalance | TransportError):
            # No balance, or the API is unreachable (the request never left, and
            # it was retried): every further submit would fail the same way.
            reason = (
                "balance" if isinstance(exc, InsufficientBalance) else "unavailable"
            )
            self._stop_reason = self._stop_reason or reason
            self._emit(
                entry, BatchItemStatus.SKIPPED, skip_reason=reason, error=str(exc)
            )
            return
        self._emit(entry, BatchItemStatus.FAILED, error=f"{what}: {exc}")

    def _reprice(self, model: str, ratio: float) -> None:
        """The API charged more than estimated: raise the unsent rows' estimates."""
        log.warning(
            "batch: %s was charged %.0f%% over its estimate; the budget now counts "
            "the rows still to send at that price",
            model,
            (ratio - 1) * 100,
        )
        for other in self._entries:
            if (
                other.model == model
                and other.estimate
                and other.key not in self._net
                and other.key not in self._items
            ):
                other.estimate = math.ceil(other.estimate * ratio)

    async def _reconcile_now(
        self, entry: _Entry, exc: AmbiguousSubmitError
    ) -> Job | Literal[False] | None:
        """Settle *entry*'s attempt of unknown fate, then let its model go on."""
        try:
            return await self._settle_unknown(entry, exc)
        finally:
            await self._release_model(entry)

    async def _settle_unknown(
        self, entry: _Entry, exc: AmbiguousSubmitError
    ) -> Job | Literal[False] | None:
        """
        Find the job an attempt of unknown fate of *entry* created.

        Waits up to the settle horizon, counted from the attempt's journaled start.

        Returns:
            The job (journaled); ``None`` when the horizon passed with no job found
            (sending again is safe; the row is back to 'planned'); ``False`` when
            the entry ended (needs attention, or unknown for now).

        """
        assert self._journal is not None  # noqa: S101 -- open while running
        self._net[entry.key] = entry.estimate or 0
        log.warning(
            "batch: %s: the submit may have created a job (%s); looking for it "
            "until the settle horizon passes; it is not re-sent before then",
            entry.key,
            exc.__cause__ or exc,
        )
        try:
            job = await self._pb.reconcile(
                exc,
                exclude=await self._journal.job_ids(),
                settle=self._settle,
                competing=list(self._unknown.values()),
            )
        except ReconcileError as rexc:
            if isinstance(rexc, ReconcileTimeout):
                raise  # not raised without a timeout; a bug if it is
            ids = tuple(sorted(job.id for job in rexc.candidates))
            await self._park(
                entry,
                f"submit outcome unknown and {len(ids)} candidate jobs "
                f"({', '.join(ids)}) that other submits of unknown fate could own; "
                "not re-sent",
                ids,
            )
            return False
        except PixelByteError as rexc:
            if _is_fatal(rexc):
                raise
            # The row stays 'submitting': the next run reconciles it.
            self._stop_reason = self._stop_reason or "unavailable"
            self._emit(
                entry,
                BatchItemStatus.UNFINISHED,
                error=f"submit outcome unknown and reconciling failed ({rexc}); "
                "run the batch again to reconcile it",
            )
            return False
        # Settled either way (a row set aside for a person keeps competing).
        self._unknown.pop(entry.key, None)
        if job is None:
            await self._journal.unsubmitted(
                entry.key,
                error="no job appeared within the settle horizon of an ambiguous "
                "submit",
            )
            self._net.pop(entry.key, None)
            return None
        log.info("batch: %s: found its job %s", entry.key, job.id)
        await self._record(entry, job, how="reconciled")
        return job

    async def _finish(self, entry: _Entry, job: Job) -> None:
        """Wait for *job*, record what happens and download its output."""
        assert self._journal is not None  # noqa: S101 -- open while running
        journal = self._journal
        entry.job = job
        if not job.done:
            last = job.status
            watch = cast(
                "AsyncGenerator[JobInfo, None]", job.watch(timeout=self._wait_timeout)
            )
            try:
                async with contextlib.aclosing(watch) as snapshots:
                    async for info in snapshots:
                        if info.status is not last:
                            last = info.status
                            await journal.status(entry.key, status=info.status.value)
            except WaitTimeout as exc:
                self._emit(
                    entry,
                    BatchItemStatus.UNFINISHED,
                    job_id=job.id,
                    error=f"{exc}; it keeps running: run the batch again to collect it",
                )
                return
        if job.status is JobStatus.COMPLETED and job.video_url is None:
            # Jobs found by reconcile come from the job list, which has no output.
            await job.refresh()
        info = job.info
        error = _job_error(info)
        await journal.status(
            entry.key, status=info.status.value, output_url=info.video_url, error=error
        )
        if info.status is JobStatus.FAILED:
            self._net[entry.key] = 0
            self._emit(entry, BatchItemStatus.FAILED, job_id=job.id, error=error)
            return
        if info.status is JobStatus.CANCELLED:
            self._net[entry.key] = 0
            self._emit(entry, BatchItemStatus.CANCELLED, job_id=job.id, error=error)
            return
        if self._out_dir is None:
            self._emit(
                entry,
                BatchItemStatus.COMPLETED,
                job_id=job.id,
                output_url=info.video_url,
            )
            return
        await self._download(entry, job)

    async def _download(self, entry: _Entry, job: Job) -> None:
        assert self._journal is not None  # noqa: S101 -- open while running
        target = self._target(entry, job.video_url)
        # A process killed mid-download leaves its temporary file behind.
        async for stale in anyio.Path(target.parent).glob(f".{target.name}.*.part"):
            with contextlib.suppress(OSError):
                await stale.unlink()
        try:
            path = await job.download(target, overwrite=True)
            size = (await anyio.Path(path).stat()).st_size
        except MissingOutputError as exc:
            self._emit(entry, BatchItemStatus.FAILED, job_id=job.id, error=str(exc))
            return
        except (DownloadError, TransportError, OSError) as exc:
            self._emit(
                entry,
                BatchItemStatus.UNFINISHED,
                job_id=job.id,
                output_url=job.video_url,
                error=f"download failed ({exc}); run the batch again to retry it",
            )
            return
        await self._journal.downloaded(entry.key, path=str(path), size=size)
        self._emit(
            entry,
            BatchItemStatus.COMPLETED,
            job_id=job.id,
            output_url=job.video_url,
            path=path,
        )

    # -- results ---------------------------------------------------------------------

    def _emit(
        self,
        entry: _Entry,
        status: BatchItemStatus,
        *,
        job_id: str | None = None,
        error: str | None = None,
        output_url: str | None = None,
        path: Path | None = None,
        skip_reason: str | None = None,
        candidates: tuple[str, ...] = (),
        resumed: bool | None = None,
    ) -> None:
        if job_id is None and entry.job is not None:
            job_id = entry.job.id
        if job_id is None and entry.row is not None:
            job_id = entry.row.job_id
        cost = self._net.get(entry.key)
        item = BatchItem(
            key=entry.key,
            index=entry.index,
            input=entry.original,
            model=entry.model,
            status=status,
            job_id=job_id,
            error=error,
            cost_micro_cents=cost,
            estimated_cost_micro_cents=entry.estimate,
            output_url=output_url,
            path=path,
            skip_reason=skip_reason,
            resumed=entry.resumed if resumed is None else resumed,
            candidates=candidates,
            action=entry.action,
        )
        self._items[entry.key] = item
        self._results.put_nowait(item)

    def _summary(self) -> BatchSummary:
        assert self._plan is not None  # noqa: S101 -- the batch has started
        end = (
            self._ended_at if self._ended_at is not None else self._pb.clock.monotonic()
        )
        return BatchSummary(
            items=tuple(sorted(self._items.values(), key=lambda i: i.index)),
            plan=self._plan,
            cost_micro_cents=self.charged_micro_cents,
            wall_seconds=max(0.0, end - self._started_at),
            stop_reason=self._stop_reason,
            journal=self._journal_path,
            dry_run=self._dry_run,
            orphans=self._orphans,
            audit_error=self._audit_error,
        )


def run_batch(
    pb: PixelByte,
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
    )
