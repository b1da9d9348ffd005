"""
The command line's parser: every command and option, in ``--help`` order.

`_parser` builds the tree from one ``_add_*`` function per group of commands.  It
sits below the commands because `_resume_command` rebuilds a command from it.  The
option types and shared options come from `_options` and ``_cmdline``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pixelbyte_async._cmdline import (
    EXIT_CODES,
    _count,
    _debug_option,
    _non_negative,
    _Parser,
    _port,
    _positive,
)
from pixelbyte_async._fake._options import _SANDBOX_DESCRIPTION, _add_sandbox_arguments
from pixelbyte_async._models import JobStatus

from ._options import (
    _common,
    _listen_address,
    _secret_option,
    _usd_to_micro_cents,
    _when,
)


def _parser() -> argparse.ArgumentParser:
    """The whole command line: every command and its options."""
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

    _add_transition_parser(sub, common)
    _add_batch_parser(sub, common)
    _add_job_parsers(sub, common)
    _add_audit_parser(sub, common)
    _add_webhook_parser(sub)
    _add_sandbox_parser(sub)
    return parser


def _add_transition_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``transition`` command."""
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


def _add_batch_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``batch`` command."""
    ba = sub.add_parser(
        "batch",
        parents=[common],
        help="run a JSONL/CSV file of jobs: budget, progress, resumable journal",
        description="Run every row of FILE (JSON Lines {id,start,end,prompt,duration,"
        "pro} or {id,model,input}; or CSV with the header id,start,end,prompt,"
        "duration[,pro]; frame paths are relative to FILE) and download the outputs "
        "to DIR/<id>.mp4. Every step is journaled: after a crash or Ctrl-C, run the "
        "same command again to resume without paying twice. A row set aside "
        "(NEEDS ATTENTION) is settled with 'pixelbyte-async batch resolve ROW "
        "--journal PATH --adopt JOB | --resend'.",
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


def _add_budget_safety_options(ba: argparse.ArgumentParser) -> None:
    """``batch --fit`` and ``--settle``."""
    ba.add_argument(
        "--fit",
        action="store_true",
        help="with --max-cost: run the rows that fit the budget, in file order, "
        "instead of refusing the whole batch",
    )
    ba.add_argument(
        "--assume-list-prices",
        action="store_true",
        help="with --max-cost: budget at the SDK's list prices when the API's "
        "estimate cannot be asked (by default the batch is refused: your account "
        "may pay more)",
    )
    ba.add_argument(
        "--rerun-changed",
        action="store_true",
        help="submit again the rows whose input changed since an earlier run made "
        "their job (by default they are reported, and their old output never "
        "handed back)",
    )
    ba.add_argument(
        "--reuse-journal",
        action="store_true",
        help="use --journal although it was made for another input file (the same "
        "batch, moved or renamed)",
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


def _add_job_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The one-job and account commands: ``status`` … ``models``."""
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
    views = jo.add_subparsers(
        dest="jobs_view", metavar="{tracked}", help="tracked: list tracked jobs instead"
    )
    tracked = views.add_parser(
        "tracked",
        parents=[common],
        help="list tracked jobs (submitted with a context) from the ledger",
        description="List the tracked jobs of this account in the ledger (this "
        "machine's SQLite file, or $PIXELBYTE_LEDGER): what is still to handle, "
        "what was handled, and what was parked after its handlers kept failing. "
        "It sends no request to the API.",
    )
    tracked.add_argument(
        "--state",
        choices=["active", "handled", "parked", "none", "all"],
        default="all",
        help="only tracked jobs in this state (default all)",
    )

    sub.add_parser(
        "models",
        parents=[common],
        help="list the model catalogue",
        description="List the public model catalogue with each model's pricing. "
        "It needs no API key.",
    )


def _resolve_parser() -> _Parser:
    """``batch resolve``: its own parser (``batch`` takes a file name first)."""
    common = _common()
    re_ = _Parser(
        prog="pixelbyte-async batch resolve",
        parents=[common],
        description="Settle a row the batch set aside (NEEDS ATTENTION): its lost "
        "submit could not be tied to one job. --adopt JOB: that candidate is the "
        "row's job (the next run waits for it and downloads it). --resend: none of "
        "the candidates is the row's (the next run sends it again; refused before "
        "its settle horizon has passed). The decision is journaled and recorded in "
        "the ledger.",
    )
    re_.add_argument("row", help="the row's id, as the batch printed it")
    re_.add_argument(
        "--journal",
        required=True,
        metavar="PATH",
        help="the batch's journal (default of 'batch FILE': FILE.journal.sqlite)",
    )
    what = re_.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--adopt", metavar="JOB", default=None, help="this candidate is the row's job"
    )
    what.add_argument(
        "--resend",
        action="store_true",
        help="none of the candidates is the row's job: send it again",
    )
    re_.add_argument(
        "--settle",
        type=_non_negative,
        default=None,
        metavar="SECONDS",
        help="the settle horizon the batch ran with (default 300)",
    )
    re_.set_defaults(command="resolve")
    return re_


def _report_parser() -> _Parser:
    """``batch report``: its own parser (``batch`` takes a file name first)."""
    rp = _Parser(
        prog="pixelbyte-async batch report",
        description="Rebuild DIR/report.html of a batch from its journal and the "
        "files in DIR, offline (nothing is asked of the API): totals, spend against "
        "the budget, a timeline, jobs in flight, spend over time, and a contact "
        "sheet with each row's poster, video or error. Every batch with --out "
        "writes it when it ends or is interrupted; this makes it again.",
    )
    rp.add_argument(
        "file",
        help="the batch's .jsonl/.csv file (its journal is FILE.journal.sqlite), "
        "or the journal itself",
    )
    rp.add_argument(
        "--out", required=True, metavar="DIR", help="the batch's output directory"
    )
    rp.add_argument(
        "--journal",
        default=None,
        metavar="PATH",
        help="the batch's journal (default FILE.journal.sqlite)",
    )
    rp.add_argument("--json", action="store_true", help="print the result as JSON")
    rp.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    rp.set_defaults(command="report")
    return rp


def _add_audit_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``audit`` command."""
    au = sub.add_parser(
        "audit",
        parents=[common],
        help="find paid jobs that nothing claims",
        description="List the account's jobs created in a window that nothing on "
        "this machine claims (its ledger of submits, the --journal files). Orphans "
        "are the jobs a lost submit of this machine may have made: paid for and "
        "most likely yours; each is printed with its cost, pending ones can be "
        "cancelled for a refund (--cancel-pending cancels those proven yours), the "
        "others adopted with 'pixelbyte-async wait JOB -o FILE'. The API key may be "
        "used elsewhere too (another app, machine or person): jobs no recorded "
        "submit could have made are other submitters', counted once and never "
        "cancelled unless you name one with --cancel. Exit 0: no orphan; 11: "
        "some found.",
    )
    au.add_argument(
        "--since",
        type=_when,
        default=None,
        metavar="WHEN",
        help="start of the window: a duration ago (2h, 30m, 7d) or an ISO time "
        "(default with --journal: the journals' earliest lost submit)",
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
        help="cancel the pending orphans proven to be this machine's lost submits' "
        "(refunded); never another submitter's job",
    )
    au.add_argument(
        "--cancel",
        action="append",
        default=[],
        metavar="JOB",
        help="cancel this pending job found by the audit, whoever made it (your "
        "decision; repeat for several)",
    )
    au.add_argument(
        "--settle",
        type=_non_negative,
        default=None,
        metavar="SECONDS",
        help="how long after a lost submit its own process may still be adopting "
        "its job: orphans younger than that are never cancelled (default 300)",
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
        metavar="{verify,listen,check}",
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
    wc = whsub.add_parser(
        "check",
        help="send a signed probe to your webhook URL (exit 0 if it is answered "
        "200 'probe', 14 if not)",
        description="Send a signed probe delivery to URL, as the API would, and say "
        "what came back: a receiver of this SDK answers 200 'probe' without "
        "dispatching it.  Catches a 404 (wrong path, trailing slash), a redirect, "
        "a wrong secret, TLS and proxy trouble before the first paid job.",
    )
    wc.add_argument("url", help="the public https URL the API calls")
    wc.add_argument(
        "--timeout",
        type=_non_negative,
        default=10.0,
        help="seconds to wait for the answer (default 10)",
    )
    wc.add_argument("--json", action="store_true", help="print the result as JSON")
    _secret_option(wc)
    _debug_option(wc.add_argument, top=False)
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
    _add_redis_options(wl)
    _debug_option(wl.add_argument, top=False)


def _add_redis_options(wl: argparse.ArgumentParser) -> None:
    """``webhook listen``'s hub: every verified delivery is published to Redis."""
    hub = wl.add_argument_group(
        "sharing deliveries with other processes (pip install 'pixelbyte-async[redis]')"
    )
    hub.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="publish every verified delivery to this Redis hub (redis://, rediss://), "
        "so that waits in every process sharing it resolve; a retry already seen "
        "by any of them is a duplicate, and while Redis is away deliveries get 503 "
        "(the API retries them). Default $PIXELBYTE_REDIS_URL; prefer it to a "
        "password in the arguments. The password is never printed",
    )
    hub.add_argument(
        "--redis-prefix",
        default=None,
        metavar="PREFIX",
        help="with --redis: the first part of every key and channel (RedisHub's "
        "key_prefix, default pixelbyte)",
    )
    hub.add_argument(
        "--redis-account",
        default=None,
        metavar="NAME",
        help="with --redis: the account the processes share (RedisHub's account, "
        "default 'default')",
    )


def _add_sandbox_parser(sub: Any) -> None:
    """The ``sandbox`` command: the sandbox process's own options."""
    sb = sub.add_parser(
        "sandbox",
        help="run the fake API in the foreground (Ctrl-C stops)",
        description=_SANDBOX_DESCRIPTION
        + " The same program, options and defaults as python -m "
        "pixelbyte_async.testing.",
    )
    _add_sandbox_arguments(sb)
    _debug_option(sb.add_argument, top=False)
