"""
``pixelbyte-async``: a thin command line over the public API.

``transition`` turns two frames into a video, showing progress, and writes the .mp4;
``batch`` runs a JSONL/CSV file of transitions with a budget and a resumable
journal (`run_batch`); ``status``, ``wait``, ``cancel``, ``estimate``, ``jobs`` and
``models`` wrap one client call each; ``sandbox`` runs the fake API in the
foreground.  ``--sandbox`` runs any command against an in-process `FakePixelByte`,
so it works with no key and no network.  It holds no logic the library lacks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import decimal
import errno
import json
import math
import os
import re
import shlex
import struct
import sys
import traceback
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, Self, TextIO
from urllib.parse import urlsplit

import anyio

from ._batch import (
    Batch,
    BatchInputError,
    BatchItem,
    BatchItemStatus,
    BatchPlan,
    BatchSummary,
    BudgetExceeded,
    read_batch_file,
    run_batch,
)
from ._client import PixelByte
from ._config import DEFAULT_BASE_URL
from ._errors import (
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
from ._inputs import KLING_O1_PRO_SEF, KLING_O1_STANDARD_SEF, KlingO1StartEndFrame
from ._job import Job
from ._journal import Journal, JournalError
from ._models import JobInfo, JobStatus
from ._polling import PollPolicy
from ._reconcile import AuditOrphan
from .webhooks import WebhookEvent, WebhookReceiver, WebhookServer, verify


__all__ = ["EXIT_CODES", "main"]

#: Exit codes per error family (documented in ``--help``).
EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "error": 1,
    "usage": 2,
    "validation": 3,
    "auth": 4,
    "balance": 5,
    "job_failed": 6,
    "timeout": 7,
    "unavailable": 8,
    "ambiguous_submit": 9,
    "budget": 10,
    "needs_attention": 11,
    "not_found": 12,
    "journal": 13,
    "webhook_invalid": 14,
    "cannot_listen": 15,
    "interrupted": 130,
}


class _CLIError(PixelByteError):
    """A failure the command line finds itself, reported under *family*'s exit code."""

    def __init__(self, message: str, *, family: str) -> None:
        super().__init__(message)
        self.family = family


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


def _png(
    width: int, height: int, top: tuple[int, int, int], bottom: tuple[int, int, int]
) -> bytes:
    """Return a vertical-gradient PNG (stdlib only): the sandbox's demo frames."""
    rows = bytearray()
    for y in range(height):
        f = y / max(1, height - 1)
        pixel = bytes(round(a + (b - a) * f) for a, b in zip(top, bottom, strict=True))
        rows += b"\x00" + pixel * width

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


DEMO_START = ((255, 183, 94), (120, 60, 140))  # sunrise
DEMO_END = ((8, 12, 40), (40, 40, 90))  # starry night


# -- argument parsing -----------------------------------------------------------------


def _float_type(*, minimum: float, inclusive: bool) -> Callable[[str], float]:
    """An argparse type: a finite number above (or at least) *minimum*."""
    rule = f">= {minimum:g}" if inclusive else f"> {minimum:g}"

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not math.isfinite(number) or not (
            number >= minimum if inclusive else number > minimum
        ):
            raise argparse.ArgumentTypeError(f"must be a number {rule}, got {value!r}")
        return number

    return parse


def _int_type(*, minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [*minimum*, *maximum*]."""
    rule = f">= {minimum}" if maximum is None else f"{minimum}..{maximum}"

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if number < minimum or (maximum is not None and number > maximum):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value!r}")
        return number

    return parse


# Every numeric option takes one of these (a test checks it): durations, rates and
# scales are > 0; a grace period, a tolerance or a Unix time may be 0.
_positive = _float_type(minimum=0, inclusive=False)
_non_negative = _float_type(minimum=0, inclusive=True)
_count = _int_type(minimum=1)
_micro_cents = _int_type(minimum=0)
_port = _int_type(minimum=0, maximum=65535)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when(text: str) -> float:
    """An argparse type: ``2h``, ``30m``, ``7d`` ago, or an ISO 8601 time (UTC if naive)."""
    match = _DURATION.fullmatch(text.strip())
    if match is not None:
        return datetime.now(UTC).timestamp() - float(match[1]) * _UNIT_SECONDS[match[2]]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 2h, 30m, 7d or an ISO time, not {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _usd_to_micro_cents(value: str) -> int:
    try:
        amount = decimal.Decimal(value.strip().removeprefix("$"))
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount in US$: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError(f"must be a US$ amount >= 0, got {value!r}")
    return int((amount * 1_000_000).to_integral_value(rounding=decimal.ROUND_FLOOR))


def _base_url_problem(value: str) -> str | None:
    """Why *value* is not an API base URL, or ``None`` if it is one."""
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is not None and parts.scheme in {"http", "https"} and parts.hostname:
        return None
    meant = "" if "://" in text else f" (did you mean http://{text}?)"
    return (
        f"must be an http(s) URL such as {DEFAULT_BASE_URL} or "
        f"http://127.0.0.1:8765, got {value!r}{meant}"
    )


def _base_url(value: str) -> str:
    """An argparse type: an http(s) URL with a host (kept as given)."""
    problem = _base_url_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def _listen_address(value: str) -> tuple[str, int]:
    """An argparse type: ``[HOST:]PORT`` (``127.0.0.1`` when no host is given)."""
    host, _, port = value.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:  # noqa: PLR2004 -- the highest TCP port
        raise argparse.ArgumentTypeError(
            f"takes [HOST:]PORT with PORT 0..65535 (0: any free port), got {value!r}"
        )
    return host.strip("[]") or "127.0.0.1", number


class _Parser(argparse.ArgumentParser):
    """
    argparse with no abbreviated options and one-line usage errors.

    ``--api KEY`` must not pass as ``--api-key KEY``: every option is spelt in
    full, so nothing can reach a secret-bearing option by another name.
    Subparsers are of this class too (argparse uses the parent's class).  An
    error message never repeats a word that may be a secret (see `_hidden_words`).
    """

    hidden: frozenset[str] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        for word in self.hidden:
            message = message.replace(word, "***")
        self.exit(
            EXIT_CODES["usage"],
            f"{self.prog}: error: {message} (see {self.prog} --help)\n",
        )


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """*parser* and every subparser under it."""
    found = [parser]
    for action in parser._actions:  # noqa: SLF001 -- argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001 -- (same)
            for sub in action.choices.values():
                found += _all_parsers(sub)
    return found


#: Options whose values are secrets: never printed, not even in a resume hint.
_SECRET_OPTIONS = {"--api-key": "api_key", "--webhook-secret": "webhook_secret"}


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _hidden_words(
    parser: argparse.ArgumentParser, words: Sequence[str]
) -> frozenset[str]:
    """
    The words of *words* that a usage error must not repeat.

    The value of a secret option, and of any option that is not ours (a typo or an
    abbreviation such as ``--api-ke KEY``, or ``--api-key`` given to a command that
    does not take it): it may be a key.  Short words are left alone, so messages
    stay readable (no key is that short).
    """
    known = {
        option
        for each in _all_parsers(parser)
        for action in each._actions  # noqa: SLF001 -- argparse has no public walk
        for option in action.option_strings
    }
    hidden: set[str] = set()
    for n, word in enumerate(words):
        if word == "--":
            break
        if not word.startswith("-") or _is_number(word):
            continue
        name, equals, value = word.partition("=")
        if name in _SECRET_OPTIONS or name not in known:
            if not equals and n + 1 < len(words):
                value = words[n + 1]
            hidden.add(value)
    return frozenset(word for word in hidden if len(word) >= 6)  # noqa: PLR2004 -- see above


#: Jobs run this many times faster in a sandbox (``--sandbox`` and ``sandbox``).
_SANDBOX_TIME_SCALE = 60.0
_TIME_SCALE_HELP = (
    f"jobs run K times faster than on the real API (default {_SANDBOX_TIME_SCALE:g}: "
    "a 4-minute Kling job takes 4 s)"
)


def _debug_option(add_argument: Callable[..., Any], *, top: bool) -> None:
    # Accepted before and after the command; a subcommand's copy never resets it.
    add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="on an error, also print its traceback",
    )


def _common() -> _Parser:
    """The options every API command takes."""
    common = _Parser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--sandbox",
        action="store_true",
        help="run against an in-process fake API (no key, no network, no charge); "
        "it starts empty in every process, so 'status'/'jobs' only show what this "
        "command created",
    )
    group.add_argument(
        "--time-scale",
        type=_positive,
        default=_SANDBOX_TIME_SCALE,
        metavar="K",
        help=f"with --sandbox: {_TIME_SCALE_HELP}",
    )
    group.add_argument(
        "--base-url",
        type=_base_url,
        default=None,
        metavar="URL",
        help=f"API base URL (default $PIXELBYTE_BASE_URL or {DEFAULT_BASE_URL})",
    )
    group.add_argument(
        "--api-key",
        default=None,
        help="API key; prefer $PIXELBYTE_API_KEY (arguments are visible to other "
        "local users). It is never printed",
    )
    group.add_argument(
        "--json", action="store_true", help="print machine-readable JSON on stdout"
    )
    group.add_argument("--quiet", action="store_true", help="no progress display")
    group.add_argument(
        "--poll-interval",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="testing knob: poll job status every SECONDS instead of adaptively "
        "(e.g. against a time-scaled 'sandbox' process)",
    )
    _debug_option(group.add_argument, top=False)
    return common


def _secret_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--webhook-secret",
        action="append",
        default=None,
        metavar="SECRET",
        help="webhook secret (repeat during a rotation); default "
        "$PIXELBYTE_WEBHOOK_SECRET. Never printed",
    )


def _secrets(args: argparse.Namespace, *, required: bool = True) -> list[str]:
    secrets = list(args.webhook_secret or [])
    if not secrets and os.environ.get("PIXELBYTE_WEBHOOK_SECRET"):
        secrets = [os.environ["PIXELBYTE_WEBHOOK_SECRET"]]
    if required and not secrets:
        raise ValidationError(
            "a webhook secret is required: --webhook-secret or "
            "$PIXELBYTE_WEBHOOK_SECRET",
            field="webhook_secret",
        )
    return secrets


def _add_budget_safety_options(ba: argparse.ArgumentParser) -> None:
    """``batch --fit`` and ``--settle``."""
    ba.add_argument(
        "--fit",
        action="store_true",
        help="with --max-cost: run the rows that fit the budget, in file order, "
        "instead of refusing the whole batch",
    )
    ba.add_argument(
        "--settle",
        "--reconcile-grace",
        dest="settle",
        type=_non_negative,
        default=None,
        metavar="SECONDS",
        help="safety setting: a row whose submit's fate is unknown (its answer was "
        "lost) is sent again only after this many seconds have passed since that "
        "attempt with no job found (default 300; lower it only for a backend you "
        "know gives up sooner)",
    )


def _add_audit_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``audit`` command."""
    au = sub.add_parser(
        "audit",
        parents=[common],
        help="find paid jobs that nothing claims",
        description="List the account's jobs created in a window that no batch "
        "journal claims, with their state and cost: a double charge that slipped "
        "through anything is found and priced. Pending ones can be cancelled for a "
        "refund (--cancel-pending); the others can be adopted with "
        "'pixelbyte-async wait JOB -o FILE'. Exit 0: none found; 11: some found.",
    )
    au.add_argument(
        "--since",
        type=_when,
        required=True,
        metavar="WHEN",
        help="start of the window: a duration ago (2h, 30m, 7d) or an ISO time",
    )
    au.add_argument(
        "--until",
        type=_when,
        default=None,
        metavar="WHEN",
        help="end of the window (default: now)",
    )
    au.add_argument("--model", default=None, metavar="SLUG", help="only this model")
    au.add_argument(
        "--journal",
        action="append",
        default=[],
        metavar="PATH",
        help="a batch journal whose jobs are claimed (repeat for several)",
    )
    au.add_argument(
        "--cancel-pending",
        action="store_true",
        help="cancel the orphans that are still pending (they are refunded)",
    )


def _add_webhook_parser(sub: Any) -> None:
    """The ``webhook verify`` and ``webhook listen`` commands."""
    wh = sub.add_parser(
        "webhook",
        help="verify or receive webhook deliveries",
        description="Check webhook deliveries with the webhook secret: 'verify' one "
        "saved to a file, or 'listen' for them. Neither talks to the API, so neither "
        "takes an API key.",
    )
    whsub = wh.add_subparsers(
        dest="webhook_command",
        required=True,
        metavar="{verify,listen}",
        help="what to do",
    )
    wv = whsub.add_parser(
        "verify",
        help="verify a saved delivery (exit 0 if genuine, 14 if not)",
        description="Verify a delivery saved to BODY (the raw request body; '-' for "
        "stdin) with its headers, and print the event.",
    )
    wv.add_argument("body", help="file with the raw body ('-': stdin)")
    wv.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (repeat for X-PixelByte-Timestamp and -Signature)",
    )
    wv.add_argument(
        "--headers-file",
        default=None,
        metavar="PATH",
        help="a file of 'Name: value' lines (e.g. curl -D output)",
    )
    wv.add_argument(
        "--now",
        type=_non_negative,
        default=None,
        help="check the timestamp against this Unix time (default: now)",
    )
    wv.add_argument(
        "--tolerance",
        type=_non_negative,
        default=300.0,
        help="accepted timestamp skew in seconds (default 300)",
    )
    wv.add_argument("--json", action="store_true", help="print the event as JSON")
    _secret_option(wv)
    _debug_option(wv.add_argument, top=False)
    wl = whsub.add_parser(
        "listen",
        help="run a receiver that verifies and prints deliveries",
        description="Run a webhook receiver on HOST:PORT/PATH and print every "
        "verified delivery until Ctrl-C.",
    )
    wl.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1; 0.0.0.0: every interface)",
    )
    wl.add_argument(
        "--port", type=_port, default=8080, help="port (default 8080; 0: any free port)"
    )
    wl.add_argument(
        "--path",
        default="/pixelbyte/webhook",
        help="URL path deliveries are POSTed to (default /pixelbyte/webhook)",
    )
    wl.add_argument("--json", action="store_true", help="print events as JSON lines")
    wl.add_argument(
        "--max-events",
        type=_count,
        default=None,
        metavar="N",
        help="stop after N events (scripts, tests)",
    )
    _secret_option(wl)
    _debug_option(wl.add_argument, top=False)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pixelbyte-async",
        description="PixelByte generation API from the command line.",
        epilog="Exit codes: "
        + ", ".join(f"{code} {name}" for name, code in EXIT_CODES.items())
        + ". Ctrl-C stops waiting; it never cancels a paid job.",
    )
    _debug_option(parser.add_argument, top=True)
    common = _common()
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="one of the commands below ('pixelbyte-async COMMAND --help' for more)",
    )

    tr = sub.add_parser(
        "transition",
        parents=[common],
        help="Kling O1 start-end frame to video",
        description="Turn two frames into a video (Kling O1) and download it.",
    )
    tr.add_argument("start", nargs="?", help="start frame: https URL or local image")
    tr.add_argument("end", nargs="?", help="end frame: https URL or local image")
    tr.add_argument("--prompt", default=None, help="what happens in between")
    tr.add_argument(
        "--duration", default="5", help="seconds of video, 3..10 (default 5)"
    )
    tr.add_argument(
        "-o", "--output", default="transition.mp4", help="where to write the video"
    )
    tr.add_argument("--pro", action="store_true", help="use Kling O1 Pro")
    tr.add_argument("--webhook-url", default=None, help="https URL notified when done")
    tr.add_argument(
        "--listen",
        type=_listen_address,
        default=None,
        metavar="[HOST:]PORT",
        help="run a webhook receiver here and wait for the delivery instead of "
        "polling (needs --public-url and the webhook secret, except with --sandbox)",
    )
    tr.add_argument(
        "--public-url",
        default=None,
        help="with --listen: the https URL under which the API reaches the receiver",
    )
    _secret_option(tr)
    tr.add_argument(
        "--timeout", type=_positive, default=None, help="wait at most this many seconds"
    )

    ba = sub.add_parser(
        "batch",
        parents=[common],
        help="run a JSONL/CSV file of jobs: budget, progress, resumable journal",
        description="Run every row of FILE (JSON Lines {id,start,end,prompt,duration,"
        "pro} or {id,model,input}; or CSV with the header id,start,end,prompt,"
        "duration[,pro]; frame paths are relative to FILE) and download the outputs "
        "to DIR/<id>.mp4. Every step is journaled: after a crash or Ctrl-C, run the "
        "same command again to resume without paying twice.",
    )
    ba.add_argument("file", help="the .jsonl or .csv file")
    ba.add_argument("--out", required=True, metavar="DIR", help="output directory")
    ba.add_argument(
        "--concurrency",
        type=_count,
        default=None,
        metavar="N",
        help="jobs in flight at once (default 10)",
    )
    ba.add_argument(
        "--max-cost",
        type=_usd_to_micro_cents,
        default=None,
        metavar="USD",
        help="refuse to start above this estimate, stop submitting before crossing it",
    )
    ba.add_argument(
        "--dry-run", action="store_true", help="show the plan and cost; submit nothing"
    )
    ba.add_argument(
        "--journal",
        default=None,
        metavar="PATH",
        help="journal file (default FILE.journal.sqlite; with --sandbox: none)",
    )
    ba.add_argument(
        "--retry-failed",
        action="store_true",
        help="submit rows whose job failed in an earlier run again (failed jobs are "
        "refunded)",
    )
    ba.add_argument(
        "--wait-timeout",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="longest wait per job; unfinished jobs are collected by the next run",
    )

    _add_budget_safety_options(ba)

    st = sub.add_parser(
        "status",
        parents=[common],
        help="show a job",
        description="Show one job once: its status, model, cost (as the API "
        "reports it), creation time, output URL or error. It does not wait.",
    )
    st.add_argument("job", help="job id (job_...)")

    wa = sub.add_parser(
        "wait",
        parents=[common],
        help="wait for a job (and download its output)",
        description="Follow a job until it ends, showing its progress, and with -o "
        "download its output; for a job started by an interrupted 'transition' or "
        "found by 'audit'. Ctrl-C stops waiting and never cancels the job.",
    )
    wa.add_argument("job", help="job id (job_...)")
    wa.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="FILE",
        help="where to write the output (checked before waiting)",
    )
    wa.add_argument(
        "--timeout", type=_positive, default=None, help="wait at most this many seconds"
    )

    ca = sub.add_parser(
        "cancel",
        parents=[common],
        help="cancel a pending job (refunded)",
        description="Cancel a job that has not started processing; the API refunds "
        "it. A job already processing or finished cannot be cancelled (exit 3).",
    )
    ca.add_argument("job", help="job id (job_...)")

    es = sub.add_parser(
        "estimate",
        parents=[common],
        help="what a job would cost",
        description="Estimate a Kling O1 transition (--duration, --pro) or any model "
        "(--model SLUG --input JSON). Asks the API unless --local.",
    )
    es.add_argument("--duration", default=None, help="seconds of video, 3..10")
    es.add_argument("--pro", action="store_true", help="Kling O1 Pro")
    es.add_argument("--model", default=None, metavar="SLUG", help="any model slug")
    es.add_argument(
        "--input", default=None, metavar="JSON", help="the model's input object"
    )
    es.add_argument(
        "--local", action="store_true", help="use the SDK's price table (offline)"
    )

    jo = sub.add_parser(
        "jobs",
        parents=[common],
        help="list your jobs, newest first",
        description="List the account's jobs, newest first, one line each (or a "
        "JSON array with --json).",
    )
    jo.add_argument(
        "--status",
        choices=[s.value for s in JobStatus if s is not JobStatus.UNKNOWN],
        help="only jobs in this state",
    )
    jo.add_argument("--model", default=None, metavar="SLUG", help="only this model")
    jo.add_argument(
        "--limit", type=_count, default=20, metavar="N", help="at most N (default 20)"
    )

    sub.add_parser(
        "models",
        parents=[common],
        help="list the model catalogue",
        description="List the public model catalogue with each model's pricing. "
        "It needs no API key.",
    )

    _add_audit_parser(sub, common)

    _add_webhook_parser(sub)

    sb = sub.add_parser(
        "sandbox",
        help="run the fake API in the foreground (Ctrl-C stops)",
        description=_SANDBOX_DESCRIPTION
        + " The same program, options and defaults as python -m "
        "pixelbyte_async.testing.",
    )
    _add_sandbox_arguments(sb)
    _debug_option(sb.add_argument, top=False)
    return parser


_SANDBOX_DESCRIPTION = (
    "Run a local fake PixelByte API (FakePixelByte) until Ctrl-C and print the "
    "PIXELBYTE_BASE_URL, PIXELBYTE_API_KEY, PIXELBYTE_CDN_URL and "
    "PIXELBYTE_WEBHOOK_SECRET to use with it. Every timestamp it gives is wall-clock "
    "time, so receivers, this CLI and polling work against it unchanged."
)


def _add_sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    """The sandbox process's options: ``sandbox`` and ``python -m ….testing``."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=_port, default=8765, help="API port (default 8765; 0: any free)"
    )
    parser.add_argument(
        "--cdn-port",
        type=_port,
        default=0,
        help="port of the outputs' CDN (default 0: any free)",
    )
    parser.add_argument(
        "--time-scale",
        type=_positive,
        default=_SANDBOX_TIME_SCALE,
        metavar="K",
        help=_TIME_SCALE_HELP,
    )
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="the key it accepts (default: the public sandbox key it prints)",
    )
    parser.add_argument(
        "--envelope",
        choices=("mixed", "flat", "wrapped"),
        default="mixed",
        help="response bodies: as the API docs show them (mixed, default), all bare "
        "(flat) or all in {success, data} (wrapped)",
    )
    parser.add_argument(
        "--concurrent-job-limit",
        type=_count,
        default=None,
        metavar="N",
        help="answer 429 CONCURRENT_JOBS_EXCEEDED above N jobs in flight "
        "(default: no limit)",
    )
    parser.add_argument(
        "--balance",
        type=_micro_cents,
        default=None,
        metavar="MICRO_CENTS",
        help="starting balance in micro-cents; jobs above it get 402 "
        "(default: unlimited)",
    )
    parser.add_argument(
        "--no-auth", action="store_true", help="accept requests without a key"
    )
    parser.add_argument(
        "--allow-http-webhooks",
        action="store_true",
        help="accept http:// webhook URLs to this machine (127.0.0.1, localhost, "
        "[::1]); the real API takes https:// only",
    )
    parser.add_argument(
        "--webhook-secret",
        default=None,
        metavar="SECRET",
        help="the secret deliveries are signed with (default: a public sandbox "
        "secret it prints)",
    )


def _sandbox_parser(prog: str) -> _Parser:
    """The parser of ``python -m pixelbyte_async.testing`` (one-line errors too)."""
    parser = _Parser(prog=prog, description=_SANDBOX_DESCRIPTION)
    _add_sandbox_arguments(parser)
    _debug_option(parser.add_argument, top=True)
    return parser


# -- shared helpers ---------------------------------------------------------------------

#: Commands that never need an API key: the public catalogue, and (with --local) the
#: SDK's price table.  ``webhook`` and ``sandbox`` take no API options at all.
_KEYLESS = frozenset({"models"})


def _check_connection(args: argparse.Namespace) -> None:
    """
    Refuse, before anything is printed or sent, what cannot reach the API.

    A malformed ``$PIXELBYTE_BASE_URL`` (``--base-url`` is checked while parsing) is
    a usage error; a missing key an auth error that names both ways to give one.
    """
    if not hasattr(args, "sandbox") or args.sandbox:
        return  # webhook commands talk to no API; the sandbox brings its own
    if args.base_url is None:
        env_url = os.environ.get("PIXELBYTE_BASE_URL")
        problem = None if not env_url else _base_url_problem(env_url)
        if problem is not None:
            raise _CLIError(
                f"$PIXELBYTE_BASE_URL {problem}; fix or unset it, or pass --base-url",
                family="usage",
            )
    if args.command in _KEYLESS or (args.command == "estimate" and args.local):
        return
    key = (
        args.api_key
        if args.api_key is not None
        else os.environ.get("PIXELBYTE_API_KEY")
    )
    if not key:
        raise _CLIError(
            "no API key: set PIXELBYTE_API_KEY (or pass --api-key, which other "
            "local users can see); --sandbox needs none",
            family="auth",
        )


@contextlib.asynccontextmanager
async def _client(
    args: argparse.Namespace, *, max_concurrent_jobs: int | None = None
) -> AsyncIterator[PixelByte]:
    options: dict[str, Any] = {}
    if args.poll_interval is not None:
        options["poll"] = PollPolicy.fixed(args.poll_interval)
    if max_concurrent_jobs is not None:
        options["max_concurrent_jobs"] = max_concurrent_jobs
    listen: tuple[str, int] | None = getattr(args, "listen", None)
    async with contextlib.AsyncExitStack() as stack:
        if not args.sandbox:
            api_key, base_url = args.api_key, args.base_url
            if listen is not None:
                if not args.public_url:
                    raise ValidationError(
                        "--listen needs --public-url (the https URL the API calls)",
                        field="public_url",
                    )
                host, port = listen
                server = WebhookServer(
                    _secrets(args), host=host, port=port, public_url=args.public_url
                )
        else:
            from .testing import FakePixelByte  # noqa: PLC0415 -- only the sandbox needs it

            fake = await stack.enter_async_context(
                FakePixelByte(
                    time_scale=args.time_scale,
                    allow_http_webhooks=listen is not None,
                    auto_webhooks=listen is not None,
                )
            )
            api_key, base_url = fake.api_key, fake.url
            options["clock"] = fake.clock
            if listen is not None:
                host, port = listen
                server = WebhookServer(
                    fake.webhook_secret, host=host, port=port, clock=fake.clock
                )
        if listen is not None:
            # Bound before the client exists, so a busy port costs no submit.
            await _listening(server, option="--listen", host_option="--listen")
            stack.push_async_callback(server.close)
            options["webhook"] = server
        yield await stack.enter_async_context(
            PixelByte(api_key=api_key, base_url=base_url, **options)
        )


async def _listening(server: WebhookServer, *, option: str, host_option: str) -> None:
    """Start *server*, or fail in one line if its address cannot be bound."""
    try:
        await server.start()
    except OSError as exc:
        await server.close()  # the receiver it made
        raise _cannot_listen(
            exc,
            host=server.host,
            port=server.port,
            option=option,
            host_option=host_option,
        ) from exc


def _check_output_file(path: Path, option: str) -> None:
    """
    Refuse an output file that could not be written, before anything is paid for.

    The download creates missing directories, so the nearest existing one must be a
    writable directory; the file itself must not be a directory.
    """
    if path.is_dir():
        raise ValidationError(
            f"{option} {path} is a directory; give a file name such as "
            f"{path / 'video.mp4'}",
            field="output",
        )
    _check_writable_place(path.parent, option, path)


def _check_output_dir(path: Path, option: str) -> None:
    """Refuse an output directory that could not be created or written."""
    if path.exists() and not path.is_dir():
        raise ValidationError(
            f"{option} {path} is a file, not a directory; give a directory "
            "(it is created if missing)",
            field="out",
        )
    _check_writable_place(path, option, path)


def _check_writable_place(directory: Path, option: str, given: Path) -> None:
    existing = directory.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValidationError(
            f"cannot write {option} {given}: {existing} is a file, not a directory",
            field="output",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValidationError(
            f"cannot write {option} {given}: {existing} is not writable; choose "
            "another place",
            field="output",
        )


def _usd(micro_cents: int | None) -> str:
    return "?" if micro_cents is None else f"${micro_cents / 1_000_000:,.2f}"


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


def _subcommand(name: str) -> argparse.ArgumentParser:
    for action in _parser()._actions:  # noqa: SLF001 -- argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001 -- (same)
            return action.choices[name]  # type: ignore[no-any-return]
    raise LookupError(name)  # pragma: no cover -- every command has a subparser


def _shown(action: argparse.Action, value: Any) -> str:
    if action.type is _usd_to_micro_cents:
        return f"{decimal.Decimal(value) / 1_000_000:f}"
    return str(value)


def _resume_command(
    args: argparse.Namespace, command: str | None = None, **values: Any
) -> str:
    """
    The command that resumes this one, rebuilt from the parsed options.

    Never from ``sys.argv``: whatever spelling gave the API key (``--api-key KEY``,
    ``--api-key=KEY``, the environment), secret options are left out; the key comes
    from $PIXELBYTE_API_KEY or is given again.

    Args:
        args: The parsed options.
        command: The command to show (default: the one that ran).
        values: Options to set or override (``job=`` for ``wait``).

    """
    name = command or args.command
    given = {**vars(args), **values}
    positionals: list[str] = []
    options: list[str] = []
    for action in _subcommand(name)._actions:  # noqa: SLF001 -- no public walk
        if action.dest in _SECRET_OPTIONS.values() or action.dest not in given:
            continue
        value = given[action.dest]
        if not action.option_strings:
            if value is not None:
                positionals.append(str(value))
            continue
        if value is None or value == action.default:
            continue
        flag = next(  # the option's own long name, not an alias listed after it
            (o for o in action.option_strings if o.startswith("--")),
            action.option_strings[0],
        )
        if action.nargs == 0:  # a switch
            if value is True:
                options.append(flag)
            continue
        for item in value if isinstance(value, list) else [value]:
            text = _shown(action, item)
            options += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    if any(word.startswith("-") for word in positionals):
        words = [name, *options, "--", *positionals]
    else:
        words = [name, *positionals, *options]
    return shlex.join(["pixelbyte-async", *words])


def _wants_rich(stream: TextIO) -> bool:
    try:
        import rich  # noqa: F401, PLC0415 -- optional 'cli' extra
    except ImportError:
        return False
    return stream.isatty() or os.environ.get("PIXELBYTE_FORCE_RICH") == "1"


# -- transition, wait -------------------------------------------------------------------


class _Progress:
    """Status, elapsed vs ETA and cost: rich when installed, plain lines otherwise."""

    def __init__(self, pb: PixelByte, job: Job, *, stream: TextIO, quiet: bool) -> None:
        self._pb = pb
        self._job = job
        self._stream = stream
        self._quiet = quiet
        self._started = pb.clock.time()
        self._rich: Any = None
        self._task: Any = None

    def _expected(self) -> float:
        eta = self._job.estimated_completion_time
        if eta is None:
            return 240.0
        return max(1.0, eta.timestamp() - self._started)

    def _describe(self, info: JobInfo) -> str:
        elapsed = self._pb.clock.time() - self._started
        return (
            f"{info.id} {info.status.value:<10} {elapsed:5.0f}s / ~{self._expected():.0f}s"
            f"  {_cost(info.cost_micro_cents)}"
        )

    def __enter__(self) -> Self:
        if self._quiet or not _wants_rich(self._stream):
            return self
        from rich.console import Console  # noqa: PLC0415 -- optional 'cli' extra
        from rich.progress import BarColumn, Progress, TextColumn  # noqa: PLC0415

        self._rich = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            console=Console(file=self._stream),
            transient=False,
        )
        self._rich.__enter__()
        self._task = self._rich.add_task(self._describe(self._job.info), total=100)
        return self

    def tick(self) -> None:
        if self._rich is None:
            return
        info = self._job.info
        elapsed = self._pb.clock.time() - self._started
        done = (
            100.0
            if info.status.is_terminal
            else min(99.0, 100 * elapsed / self._expected())
        )
        self._rich.update(self._task, completed=done, description=self._describe(info))

    def changed(self, info: JobInfo) -> None:
        if self._quiet:
            return
        if self._rich is None:
            print(self._describe(info), file=self._stream, flush=True)
        else:
            self.tick()

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self.tick()
            self._rich.__exit__(None, None, None)


async def _ticking(tick: Callable[[], None]) -> None:
    while True:
        tick()
        await asyncio.sleep(0.1)


#: Said instead of a resume hint under --sandbox: a later run starts a new, empty fake.
_SANDBOX_ENDS = (
    "nothing to resume: the --sandbox fake API ends with this process, and its jobs "
    "with it (nothing was charged); run the command again to start over"
)


def _resume_hint(
    args: argparse.Namespace,
    command: str | None = None,
    *,
    doing: str = "resume",
    **values: Any,
) -> str:
    """
    A sentence saying how to carry on after an interruption, that works as printed.

    Under ``--sandbox`` there is nothing to carry on (`_SANDBOX_ENDS`).  A key given
    with ``--api-key`` is never repeated, so the hint asks for $PIXELBYTE_API_KEY.
    *command* and *values* are as for `_resume_command`.
    """
    if args.sandbox:
        return _SANDBOX_ENDS[0].upper() + _SANDBOX_ENDS[1:] + "."
    hint = _resume_command(args, command, **values)
    if args.api_key is not None:
        return (
            "Set PIXELBYTE_API_KEY to your key (--api-key is never shown), then "
            f"{doing} with: {hint}"
        )
    return f"{doing[0].upper()}{doing[1:]} with: {hint}"


async def _follow(
    pb: PixelByte, job: Job, args: argparse.Namespace, err: TextIO, resume: str
) -> None:
    """Watch *job* with a progress display until it ends; raise if it failed."""
    try:
        with _Progress(pb, job, stream=err, quiet=args.quiet or args.json) as progress:
            ticker = asyncio.ensure_future(_ticking(progress.tick))
            try:
                watch = job.watch(timeout=args.timeout)
                async with contextlib.aclosing(
                    watch  # type: ignore[type-var]  # Job.watch is an async generator
                ) as snapshots:
                    async for info in snapshots:
                        progress.changed(info)
            finally:
                ticker.cancel()
        job.raise_for_status()
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            f"\nStopped waiting. {resume}"
            if args.sandbox
            else f"\nStopped waiting. Job {job.id} keeps running (and is paid for); "
            f"it was not cancelled. {resume}",
            file=err,
        )
        raise


def _frame(value: str, name: str) -> str | Path:
    """
    A frame named on the command line: a URL stays a str, anything else is a file.

    The library never opens a str (it is always a URL); here the user typed a path,
    so it becomes a `Path`, checked before anything is sent.
    """
    if "://" in value:
        return value
    path = Path(value)
    if not path.is_file():
        raise ValidationError(
            f"{name} frame {value!r} is neither an https:// URL nor a file "
            "(no such file)",
            field="image_url" if name == "START" else "end_image_url",
        )
    return path


async def _transition(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    start: Any = args.start
    end: Any = args.end
    if (start is None) != (end is None):
        raise ValidationError(
            "give both START and END frames, or neither (sandbox demo)"
        )
    if start is None:
        if not args.sandbox:
            raise ValidationError(
                "START and END frames are required (or use --sandbox)"
            )
        start = _png(160, 90, *DEMO_START)
        end = _png(160, 90, *DEMO_END)
    else:
        start, end = _frame(start, "START"), _frame(end, "END")
    prompt = args.prompt
    if prompt is None and args.sandbox:
        prompt = "Smooth cinematic transition from a sunrise mountain peak to a starry night sky"
    request = KlingO1StartEndFrame(
        image_url=start,
        end_image_url=end,
        prompt=prompt,
        duration=args.duration,
        pro=args.pro,
    )
    _check_output_file(Path(args.output), "-o")
    async with _client(args) as pb:
        if not args.quiet and not args.json:
            where = (
                "sandbox (fake API, no charge)" if args.sandbox else pb.config.base_url
            )
            print(
                f"Submitting {request.model_slug} ({request.duration}s, "
                f"~${request.cost_micro_cents / 1_000_000:.2f}) to {where}",
                file=err,
            )
        job = await pb.submit(request, webhook_url=args.webhook_url)
        await _follow(pb, job, args, err, _resume_hint(args, "wait", job=job.id))
        path = await _download(job, args)
    size = path.stat().st_size
    if args.json:
        _print_json(
            {
                "jobId": job.id,
                "status": job.status.value,
                "videoUrl": job.video_url,
                "costMicroCents": job.cost_micro_cents,
                "output": str(path),
                "bytes": size,
                "sandbox": bool(args.sandbox),
            },
            out,
        )
    elif not args.quiet:
        print(f"Wrote {path} ({size} bytes)", file=err)
    return 0


async def _download(job: Job, args: argparse.Namespace) -> Path:
    """Write *job*'s output to ``-o``; if that fails now, say how to fetch it later."""
    try:
        return await job.download(args.output)
    except OSError as exc:
        what = f"cannot write -o {args.output} ({exc.strerror or exc})"
        if args.sandbox:
            what += (
                "; the --sandbox job ends with this process (nothing was charged): "
                "run the command again with another -o"
            )
        else:
            again = _resume_hint(
                args, "wait", doing="download it", job=job.id, output=f"{job.id}.mp4"
            )
            what += f"; job {job.id} completed and is paid for. {again}"
        raise ValidationError(what, field="output") from exc


async def _wait(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.output is not None:
        _check_output_file(Path(args.output), "-o")
    async with _client(args) as pb:
        job = await pb.get_job(args.job)
        await _follow(pb, job, args, err, _resume_hint(args))
        path = None if args.output is None else await _download(job, args)
    if args.json:
        result = _job_json(job.info)
        if path is not None:
            result["output"] = str(path)
        _print_json(result, out)
    else:
        print(_job_line(job.info), file=out)
        if path is not None and not args.quiet:
            print(f"Wrote {path} ({path.stat().st_size} bytes)", file=err)
    return 0


# -- status, cancel, estimate, jobs, models ------------------------------------------------


async def _status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del err
    async with _client(args) as pb:
        job = await pb.get_job(args.job)
    if args.json:
        _print_json(_job_json(job.info), out)
    else:
        print(_job_line(job.info), file=out)
    return 0


async def _cancel(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del err
    async with _client(args) as pb:
        job = await pb.get_job(args.job)
        refunded = await job.cancel()
    if args.json:
        _print_json(
            {
                "jobId": job.id,
                "status": job.status.value,
                "refundedMicroCents": refunded,
            },
            out,
        )
    else:
        print(f"{job.id} {job.status.value}, refunded {_usd(refunded)}", file=out)
    return 0


def _estimate_request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.model is not None:
        if args.duration is not None or args.pro:
            raise ValidationError("give --model/--input or --duration/--pro, not both")
        try:
            value = json.loads(args.input) if args.input else {}
        except ValueError as exc:
            raise ValidationError(f"--input is not JSON: {exc}", field="input") from exc
        if not isinstance(value, dict):
            raise ValidationError("--input must be a JSON object", field="input")
        return args.model, value
    if args.input is not None:
        raise ValidationError("--input needs --model", field="input")
    duration = args.duration or "5"
    low, high = KlingO1StartEndFrame.MIN_DURATION, KlingO1StartEndFrame.MAX_DURATION
    if not duration.isdigit() or not low <= int(duration) <= high:
        raise ValidationError(
            f"duration must be {low}..{high} seconds, got {duration!r}",
            field="duration",
        )
    slug = KLING_O1_PRO_SEF if args.pro else KLING_O1_STANDARD_SEF
    return slug, {"duration": str(int(duration))}


async def _estimate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del err
    slug, value = _estimate_request(args)
    async with _client(args) as pb:
        estimate = await pb.estimate(slug, value, local=args.local)
    cost = estimate.estimated_cost_micro_cents
    if args.json:
        _print_json(
            {
                "model": slug,
                "input": value,
                "estimatedCostMicroCents": cost,
                "baseCostMicroCents": estimate.base_cost_micro_cents,
                "hasDiscount": estimate.has_discount,
                "source": estimate.source,
            },
            out,
        )
    else:
        print(
            f"{_usd(cost)} ({cost:,} micro-cents) for {slug} "
            f"{json.dumps(value)} [{estimate.source}]",
            file=out,
        )
    return 0


async def _jobs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del err
    found: list[JobInfo] = []
    async with _client(args) as pb:
        listing = pb.list_jobs(status=args.status, model=args.model, limit=args.limit)
        async with contextlib.aclosing(listing) as jobs:
            found.extend([job.info async for job in jobs])
    if args.json:
        _print_json([_job_json(info) for info in found], out)
    else:
        for info in found:
            print(_job_line(info), file=out)
    return 0


async def _audit(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    claimed: set[str] = set()
    for path in args.journal:
        claimed.update(await _journal_job_ids(Path(path)))
    async with _client(args) as pb:
        report = await pb.audit(
            since=args.since, until=args.until, model=args.model, exclude=claimed
        )
        refunded = await report.cancel_pending() if args.cancel_pending else None
    if args.json:
        _print_json(
            {
                "since": report.since,
                "until": report.until,
                "orphans": [_orphan_json(o) for o in report.orphans],
                "costMicroCents": report.cost_micro_cents,
                "refundedMicroCents": refunded,
            },
            out,
        )
    elif not report.orphans:
        print("No unclaimed jobs in the window.", file=out)
    else:
        _print_orphans(report.orphans, out)
        print(
            f"{len(report.orphans)} unclaimed job(s), "
            f"{_usd(report.cost_micro_cents)} known cost"
            + (
                f", {report.unknown_cost} of unknown cost"
                if report.unknown_cost
                else ""
            )
            + (f"; {_usd(refunded)} refunded" if refunded else "")
            + ".",
            file=out,
        )
    del err
    return EXIT_CODES["needs_attention"] if report.orphans else EXIT_CODES["ok"]


async def _journal_job_ids(path: Path) -> set[str]:
    """Every job id a journal knows (read-only; the journal may be in use)."""
    if not await anyio.Path(path).is_file():
        # A mistyped journal would claim nothing, and its jobs would look orphaned
        # (and pending ones be cancelled with --cancel-pending).
        raise JournalError(
            f"no journal at {path}; give the path of an existing batch journal"
        )
    journal = await Journal.open(path, readonly=True)
    try:
        return await journal.job_ids()
    finally:
        await journal.aclose()


async def _models(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del err
    async with _client(args) as pb:
        models = await pb.models()
    if args.json:
        _print_json(
            [
                {
                    "slug": m.slug,
                    "name": m.name,
                    "category": m.category,
                    "capability": m.capability,
                    "provider": m.provider,
                    "pricing": m.pricing,
                }
                for m in models
            ],
            out,
        )
    else:
        for m in models:
            print(f"{m.slug}  {m.name or ''}  {json.dumps(m.pricing or {})}", file=out)
    return 0


# -- batch --------------------------------------------------------------------------------


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


def _orphan_json(orphan: AuditOrphan) -> dict[str, Any]:
    return {
        "jobId": orphan.job.id,
        "model": orphan.job.model,
        "status": orphan.status.value,
        "createdAt": _iso(orphan.created_at),
        "costMicroCents": orphan.cost_micro_cents,
    }


def _print_orphans(orphans: Sequence[AuditOrphan], out: TextIO) -> None:
    """One line per unclaimed job, and what to do with it."""
    for o in orphans:
        cost = (
            "cost unknown" if o.cost_micro_cents is None else _usd(o.cost_micro_cents)
        )
        hint = (
            f"cancel it for a refund: pixelbyte-async cancel {o.job.id}"
            if o.status is JobStatus.PENDING
            else f"adopt it: pixelbyte-async wait {o.job.id} -o FILE"
        )
        print(
            f"ORPHAN {o.job.id} ({o.job.model}, {o.status.value}, {cost}): no row "
            f"claims it; {hint}",
            file=out,
        )


def _print_notes(summary: BatchSummary, out: TextIO) -> None:
    """The estimate's source, if not the API, and the closing audit."""
    if summary.plan.estimate_note:
        print(f"Note: {summary.plan.estimate_note}.", file=out)
    if summary.orphans:
        print(
            f"Audit: {len(summary.orphans)} job(s) of this batch's models were "
            f"created during the run but no row claims them "
            f"({_usd(summary.orphan_cost_micro_cents)} known cost):",
            file=out,
        )
        _print_orphans(summary.orphans, out)
    elif summary.orphans is None:
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
        "wallSeconds": round(summary.wall_seconds, 3),
        "stopReason": summary.stop_reason,
        "orphans": None
        if summary.orphans is None
        else [_orphan_json(o) for o in summary.orphans],
        "auditError": summary.audit_error,
        "journal": None if summary.journal is None else str(summary.journal),
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
    """A bar over the batch plus a line per finished input (plain lines without rich)."""

    def __init__(self, batch: Batch, *, stream: TextIO, quiet: bool) -> None:
        self._batch = batch
        self._stream = stream
        self._quiet = quiet
        self._rich: Any = None
        self._task: Any = None
        self._done = 0  # lines are numbered as rows finish, not by file order

    def _describe(self) -> str:
        batch = self._batch
        return (
            f"{batch.finished}/{batch.total} done, {batch.running} running, "
            f"{_usd(batch.charged_micro_cents)} charged"
        )

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


def _print_summary(summary: BatchSummary, out: TextIO, resume: str) -> None:
    rows = [
        ("completed", summary.completed),
        ("failed", summary.failed),
        ("cancelled", summary.cancelled),
        ("skipped", summary.skipped),
        ("needs attention", summary.needs_attention),
        ("unfinished", summary.unfinished),
    ]
    table = [(name, str(count)) for name, count in rows if count or name == "completed"]
    table.append(("cost", _usd(summary.cost_micro_cents)))
    table.append(("wall time", f"{summary.wall_seconds:.1f}s"))
    if summary.journal is not None:
        table.append(("journal", str(summary.journal)))
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
            print(
                f"NEEDS ATTENTION {item.key}: {item.error} Candidate jobs: "
                f"{', '.join(item.candidates) or 'none'} (check them with "
                "'pixelbyte-async status JOB'). This row is never re-sent "
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
    inputs = read_batch_file(source)  # every invalid row, before any request
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
                with _BatchDisplay(batch, stream=err, quiet=quiet) as display:
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


# -- main ---------------------------------------------------------------------------------

_Command = Callable[[argparse.Namespace, TextIO, TextIO], Coroutine[Any, Any, int]]


async def _webhook(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.webhook_command == "verify":
        return _webhook_verify(args, out)
    return await _webhook_listen(args, out, err)


def _parse_header_lines(lines: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name.strip() and not name.startswith(("HTTP/", " ")):
            headers[name.strip()] = value.strip()
    return headers


def _read_input(path: str, what: str) -> bytes:
    """The bytes of *path*, or a one-line error naming *what* could not be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValidationError(
            f"cannot read {what} {path}: {exc.strerror or exc}", field=what
        ) from exc


def _webhook_verify(args: argparse.Namespace, out: TextIO) -> int:
    secrets = _secrets(args)
    body = (
        sys.stdin.buffer.read() if args.body == "-" else _read_input(args.body, "BODY")
    )
    lines = list(args.header)
    if args.headers_file:
        text = _read_input(args.headers_file, "--headers-file")
        lines += text.decode("utf-8", errors="replace").splitlines()
    event = verify(
        body,
        _parse_header_lines(lines),
        secrets,
        tolerance=args.tolerance,
        now=args.now,
    )
    _print_event(event, args, out)
    return 0


def _print_event(event: WebhookEvent, args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        _print_json(
            {
                "jobId": event.job_id,
                "status": event.status.value,
                "timestamp": event.timestamp,
                "videoUrl": event.video_url,
                "payload": dict(event.payload),
            },
            out,
        )
    else:
        url = f" {event.video_url}" if event.video_url else ""
        print(f"{event.job_id} {event.status.value}{url}", file=out, flush=True)


async def _webhook_listen(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    done = asyncio.Event()
    seen = 0

    def on_event(event: WebhookEvent) -> None:
        nonlocal seen
        _print_event(event, args, out)
        seen += 1
        if args.max_events is not None and seen >= args.max_events:
            done.set()

    receiver = WebhookReceiver(_secrets(args), on_event=on_event)
    server = WebhookServer(
        receiver=receiver, host=args.host, port=args.port, path=args.path
    )
    await _listening(server, option="--port", host_option="--host")
    async with server:
        print(f"Listening on {server.url} (Ctrl-C stops)", file=err, flush=True)
        await done.wait()
    return 0


_COMMANDS: dict[str, _Command] = {
    "transition": _transition,
    "batch": _batch,
    "status": _status,
    "wait": _wait,
    "cancel": _cancel,
    "estimate": _estimate,
    "jobs": _jobs,
    "models": _models,
    "audit": _audit,
    "webhook": _webhook,
}


def _report(
    exc: PixelByteError,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    *,
    cause: BaseException | None = None,
) -> int:
    code = _exit_code(exc)
    if getattr(args, "debug", False):
        traceback.print_exception(cause or exc, file=err)
    print(f"error: {exc}", file=err)
    if isinstance(exc, AmbiguousSubmitError):
        print(
            "The job may exist and be charged; it was not re-submitted. "
            "Check 'jobs' before trying again.",
            file=err,
        )
    if getattr(args, "json", False):
        error: dict[str, Any] = {
            "type": type(exc).__name__,
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


def _cannot_listen(
    exc: OSError, *, host: str, port: int, option: str, host_option: str
) -> _CLIError:
    """One line for a server that could not bind: where, why and what to do."""
    reason = (exc.strerror or str(exc)).rsplit(": ", 1)[-1]
    if exc.errno in {errno.EADDRINUSE, errno.EACCES}:
        todo = f"choose another port with {option} (0: any free one)"
    else:
        todo = f"check the host given with {host_option}"
    where = f"[{host}]" if ":" in host else host
    return _CLIError(
        f"cannot listen on {where}:{port}: {reason}; {todo}", family="cannot_listen"
    )


async def _serve_sandbox(args: argparse.Namespace, out: TextIO) -> None:
    """Run the fake API until Ctrl-C or SIGTERM (``sandbox``, ``python -m ….testing``)."""
    import signal  # noqa: PLC0415 -- only the sandbox process handles SIGTERM

    from ._fake._catalog import MODELS  # noqa: PLC0415 -- only the sandbox needs it
    from .testing import SANDBOX_API_KEY, FakePixelByte  # noqa: PLC0415 -- (same)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    fake = FakePixelByte(
        api_key=args.api_key or SANDBOX_API_KEY,
        host=args.host,
        port=args.port,
        cdn_port=args.cdn_port,
        # Real time for everything a person or another program sees; only the
        # jobs' durations shrink.
        time_scale=1.0,
        speedup=args.time_scale,
        envelope=args.envelope,
        concurrent_job_limit=args.concurrent_job_limit,
        balance_micro_cents=args.balance,
        require_auth=not args.no_auth,
        allow_http_webhooks=args.allow_http_webhooks,
        auto_webhooks=True,
        **(
            {}
            if args.webhook_secret is None
            else {"webhook_secret": args.webhook_secret}
        ),
    )
    try:
        await fake.start()
    except OSError as exc:
        busy = re.search(r", (\d+)\)", exc.strerror or "")
        cdn = busy is not None and int(busy[1]) == args.cdn_port != args.port
        raise _cannot_listen(
            exc,
            host=args.host,
            port=args.cdn_port if cdn else args.port,
            option="--cdn-port" if cdn else "--port",
            host_option="--host",
        ) from exc
    try:
        lines = [
            (
                f"FakePixelByte sandbox running (jobs x{args.time_scale:g} faster, "
                "real-time timestamps); Ctrl-C stops."
            ),
            f"PIXELBYTE_BASE_URL={fake.url}",
            f"PIXELBYTE_API_KEY={fake.api_key}",
            f"PIXELBYTE_CDN_URL={fake.cdn_url}",
            f"PIXELBYTE_WEBHOOK_SECRET={fake.webhook_secret}",
            "Models: " + ", ".join(MODELS),
        ]
        out.write("\n".join(lines) + "\n")
        out.flush()
        await stop.wait()
    finally:
        await fake.close()


def _run_sandbox(args: argparse.Namespace) -> int:
    """Serve the sandbox in the foreground; 0 after Ctrl-C or SIGTERM."""
    out, err = sys.stdout, sys.stderr
    try:
        asyncio.run(_serve_sandbox(args, out))
    except KeyboardInterrupt:
        return EXIT_CODES["ok"]
    except PixelByteError as exc:
        return _report(exc, args, out, err)
    return EXIT_CODES["ok"]


def _sandbox_main(argv: Sequence[str] | None, *, prog: str) -> int:
    """``python -m pixelbyte_async.testing``: the ``sandbox`` command on its own."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = _sandbox_parser(prog)
    parser.hidden = _hidden_words(parser, arguments)
    return _run_sandbox(parser.parse_args(arguments))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    hidden = _hidden_words(parser, arguments)
    for each in _all_parsers(parser):
        if isinstance(each, _Parser):  # all are
            each.hidden = hidden
    args = parser.parse_args(arguments)
    if args.command == "sandbox":
        return _run_sandbox(args)
    out, err = sys.stdout, sys.stderr
    try:
        _check_connection(args)
        return asyncio.run(_COMMANDS[args.command](args, out, err))
    except KeyboardInterrupt:
        return EXIT_CODES["interrupted"]
    except PixelByteError as exc:
        return _report(exc, args, out, err)
    except OSError as exc:  # a local file or socket: still one line, not a traceback
        return _report(_CLIError(str(exc), family="error"), args, out, err, cause=exc)
