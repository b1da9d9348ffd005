"""
A batch's inputs: each normalised to an `Entry`, and batch files read and checked.

Every input gets a stable key (its ``id``, else a hash of model and input), and
every row of a file (JSON Lines or CSV) is checked before anything runs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import AsyncIterable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import attrs

from pixelbyte_async._errors import ValidationError
from pixelbyte_async._inputs import (
    KlingO1StartEndFrame,
    ModelInput,
    check_input,
    check_known_input,
    check_local_frames,
    check_slug,
)
from pixelbyte_async._journal import JournalRow

from ._types import Action, BatchInput, BatchInputError


if TYPE_CHECKING:
    from pixelbyte_async._job import Job


__all__ = [
    "Entry",
    "canonical",
    "collect_entries",
    "describe_local",
    "read_batch_file",
]

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


# -- inputs ------------------------------------------------------------------------


@attrs.define(kw_only=True)
class Entry:
    """One input as the batch works on it."""

    index: int
    key: str
    model: str
    original: BatchInput
    typed: ModelInput | None
    raw: dict[str, Any] | None
    document: dict[str, Any]
    estimate: int | None = None
    #: Whether *estimate* is the SDK's list price, not the API's (the account's).
    estimate_assumed: bool = False
    row: JournalRow | None = None
    action: Action = "submit"
    job: Job | None = None
    resumed: bool = False


async def collect_entries(
    inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
) -> list[Entry]:
    """Normalise every input; raise `BatchInputError` listing every invalid one."""
    values: list[object] = []
    if isinstance(inputs, AsyncIterable):
        values.extend([value async for value in inputs])
    else:
        values.extend(inputs)
    entries: list[Entry] = []
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


def _entry(value: object, index: int) -> Entry:
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
        or hashlib.sha256(canonical({"model": model, "input": document})).hexdigest()[
            :16
        ]
    )
    return Entry(
        index=index,
        key=key,
        model=model,
        original=cast("BatchInput", value),
        typed=typed,
        raw=raw,
        document=document,
    )


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
        described[url] = describe_local(value)
    probe: ModelInput = attrs.evolve(cast("Any", request), **stand_ins)
    return {
        k: described.get(v, v) if isinstance(v, str) else v
        for k, v in probe.to_input().items()
    }


def describe_local(value: object) -> str:
    """Name a local frame for the journal: its path, or the ``sha256:`` of bytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        return "sha256:" + hashlib.sha256(bytes(value)).hexdigest()
    if not isinstance(value, os.PathLike):
        raise ValidationError(
            "a batch input's local frames must be a pathlib.Path or bytes (the "
            f"journal must describe them), not {type(value).__name__}"
        )
    return str(os.fspath(value))


def canonical(value: Any) -> bytes:
    """Return *value* as canonical JSON: equal values, equal bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


# -- batch files -------------------------------------------------------------------

_TRANSITION_KEYS = frozenset({"id", "start", "end", "prompt", "duration", "pro"})
_RAW_KEYS = frozenset({"id", "model", "input"})
_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n", ""}


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


def _raw_row(row: Mapping[str, Any]) -> BatchInput:
    unknown = sorted(set(row) - _RAW_KEYS)
    if unknown:
        raise ValidationError(
            f"unknown fields {', '.join(unknown)} (expected id, model, input)"
        )
    if not isinstance(row.get("input"), dict):
        raise ValidationError("'input' must be a JSON object", field="input")
    model = row.get("model")
    if isinstance(model, str):
        try:
            check_known_input(model, row["input"])
        except ValidationError as exc:
            raise ValidationError(
                f"input: {exc}", field=f"input.{exc.field}" if exc.field else "input"
            ) from exc
    return {k: v for k, v in row.items() if v is not None}


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
        check_local_frames(request)  # every bad row is reported before sending
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


def _frame(value: object, base: Path, name: str) -> str | Path:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"'{name}' must be a URL or a path", field=name)
    value = value.strip()
    if _looks_like_url(value):
        return value
    return base / value


def _looks_like_url(value: object) -> bool:
    return isinstance(value, str) and "://" in value[:16]


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValidationError(f"'pro' must be true or false, got {value!r}", field="pro")
