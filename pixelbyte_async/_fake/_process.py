"""
The sandbox process: ``python -m pixelbyte_async.testing`` and ``pixelbyte-async sandbox``.

One program: its options (`_add_sandbox_arguments`, `_sandbox_parser`), its serve loop
(`_serve_sandbox`) and its entry point (`_sandbox_main`).  The command-line plumbing
it shares with the CLI (exit codes, one-line errors, option types) comes from
``pixelbyte_async._cmdline``; this module never imports the CLI, and the fake server
only when it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
from collections.abc import Sequence
from typing import TextIO

from pixelbyte_async._cmdline import (
    EXIT_CODES,
    _cannot_listen,
    _CLIError,
    _count,
    _debug_option,
    _float_type,
    _hidden_words,
    _int_type,
    _micro_cents,
    _Parser,
    _port,
    _positive,
    _print_error,
)
from pixelbyte_async._errors import PixelByteError


#: Jobs run this many times faster in a sandbox (``--sandbox`` and ``sandbox``).
_SANDBOX_TIME_SCALE = 60.0
_TIME_SCALE_HELP = (
    f"jobs run K times faster than on the real API (default {_SANDBOX_TIME_SCALE:g}: "
    "a 4-minute Kling job takes 4 s)"
)


#: The completed-job shapes ``--output-shape`` offers (`JobScript.output_shape`):
#: the four the API's pages show, and two that clients must survive.
_OUTPUT_SHAPES = (
    "reference",
    "object",
    "video_url",
    "image_url",
    "outputs_only",
    "none",
)
_OUTPUT_SHAPES_HELP = (
    "how completed jobs give their video (default reference): reference (output "
    "is the URL, outputs[] the files; the API reference), object (output.url, "
    "contentType, durationSeconds; the quickstart), video_url (output.videoUrl; "
    "the models' outputSchema), image_url (output.imageUrl and metadata; the "
    "webhook example), outputs_only (output null, URL in outputs[0].url) or none "
    "(completed without any URL)"
)

# Options without a default value (None): the sandbox's own numbers, checked here.
_eta_error = _float_type(minimum=-1, inclusive=True)
_seed = _int_type(minimum=0)


def _share(value: str) -> float:
    """An argparse type: a share from 0 to 1."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 <= number <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"must be a share from 0 to 1 (0.25: a quarter), got {value!r}"
        )
    return number


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
        help=_TIME_SCALE_HELP
        + "; a 429's retryAfter is K times shorter too (30 s: 1 s at x60)",
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
        "--fail-rate",
        type=_share,
        default=None,
        metavar="P",
        help="a share P of the jobs (0..1) fail with GENERATION_FAILED at the end "
        "of their run, and are refunded (default 0)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=None,
        metavar="N",
        help="seed of --fail-rate's draws: the same seed and the same submits fail "
        "the same jobs (default: different ones every run)",
    )
    parser.add_argument(
        "--output-shape",
        choices=_OUTPUT_SHAPES,
        default="reference",
        metavar="SHAPE",
        help=_OUTPUT_SHAPES_HELP,
    )
    parser.add_argument(
        "--eta-error",
        type=_eta_error,
        default=None,
        metavar="F",
        help="the ETA announced (estimatedCompletionTime) is off by F times the "
        "job's run: -0.5 says half the time the job takes, 1 twice as much "
        "(default 0; at least -1)",
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


async def _serve_sandbox(args: argparse.Namespace, out: TextIO) -> None:
    """Run the fake API until Ctrl-C or SIGTERM (``sandbox``, ``python -m ….testing``)."""
    import signal  # noqa: PLC0415 -- only the sandbox process handles SIGTERM

    # Here, not above: the CLI imports this module for its options, and pays for
    # the fake server only when it serves one.
    from ._catalog import MODELS  # noqa: PLC0415 -- only serving needs it
    from ._jobs import JobScript  # noqa: PLC0415 -- (same)
    from ._server import SANDBOX_API_KEY, FakePixelByte  # noqa: PLC0415 -- (same)

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
        fail_rate=args.fail_rate or 0.0,
        seed=args.seed,
        eta_error=args.eta_error or 0.0,
        **(
            {}
            if args.webhook_secret is None
            else {"webhook_secret": args.webhook_secret}
        ),
    )
    fake.set_default_script(JobScript(output_shape=args.output_shape))
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
                f"real-time timestamps{_scripted(args)}); Ctrl-C stops."
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


def _scripted(args: argparse.Namespace) -> str:
    """What the banner says of the jobs' scripting options, if any are given."""
    said = []
    if args.fail_rate:
        seed = "" if args.seed is None else f", seed {args.seed}"
        said.append(f"{args.fail_rate * 100:g}% of jobs fail{seed}")
    if args.output_shape != "reference":
        said.append(f"outputs shaped {args.output_shape}")
    if args.eta_error:
        said.append(
            f"ETAs {abs(args.eta_error) * 100:g}% too "
            + ("short" if args.eta_error < 0 else "long")
        )
    return "".join(f"; {each}" for each in said)


def _run_sandbox(args: argparse.Namespace) -> int:
    """Serve the sandbox in the foreground; 0 after Ctrl-C or SIGTERM."""
    out, err = sys.stdout, sys.stderr
    try:
        asyncio.run(_serve_sandbox(args, out))
    except KeyboardInterrupt:
        return EXIT_CODES["ok"]
    except PixelByteError as exc:
        # Its one failure of its own is a _CLIError (an address it cannot bind); the
        # fake raises no library error, so the CLI's table of those is not needed.
        _print_error(exc, args, err)
        return EXIT_CODES[exc.family if isinstance(exc, _CLIError) else "error"]
    return EXIT_CODES["ok"]


def _sandbox_main(argv: Sequence[str] | None, *, prog: str) -> int:
    """``python -m pixelbyte_async.testing``: the ``sandbox`` command on its own."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = _sandbox_parser(prog)
    parser.hidden = _hidden_words(parser, arguments)
    return _run_sandbox(parser.parse_args(arguments))
