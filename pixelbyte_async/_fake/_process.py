"""
The sandbox process: ``python -m pixelbyte_async.testing`` and ``pixelbyte-async sandbox``.

One program: its parser (`_sandbox_parser`, over the options of `_options`), its
serve loop (`_serve_sandbox`) and its entry point (`_sandbox_main`).  The
command-line plumbing it shares with the CLI (exit codes, one-line errors, option
types) comes from ``pixelbyte_async._cmdline``; this module never imports the CLI,
and the fake server only when it serves.  The CLI imports it only to serve
``sandbox``: its parser takes the options from `_options`, which imports no asyncio.
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
    _debug_option,
    _hidden_words,
    _Parser,
    _print_error,
)
from pixelbyte_async._errors import PixelByteError

# Re-exported: the options moved to _options, their names stay importable from here.
from ._options import _OUTPUT_SHAPES as _OUTPUT_SHAPES  # noqa: PLC0414
from ._options import _SANDBOX_DESCRIPTION, _add_sandbox_arguments


def _sandbox_parser(prog: str) -> _Parser:
    """The parser of ``python -m pixelbyte_async.testing`` (one-line errors too)."""
    parser = _Parser(prog=prog, description=_SANDBOX_DESCRIPTION)
    _add_sandbox_arguments(parser)
    _debug_option(parser.add_argument, top=True)
    return parser


async def _serve_sandbox(args: argparse.Namespace, out: TextIO) -> None:
    """Run the fake API until Ctrl-C or SIGTERM (``sandbox``, ``python -m ….testing``)."""
    import signal  # noqa: PLC0415 -- only the sandbox process handles SIGTERM

    # Here, not above: python -m pixelbyte_async.testing parses its options first,
    # and pays for the fake server only when it serves one.
    from ._catalog import MODELS  # noqa: PLC0415 -- only serving needs it
    from ._jobs import JobScript  # noqa: PLC0415 -- (same)
    from ._server import SANDBOX_API_KEY, FakePixelByte  # noqa: PLC0415 -- (same)

    _logging(args, out)
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


def _logging(args: argparse.Namespace, out: TextIO) -> None:
    """Print the request and delivery logs ``--log`` asks for (a terminal: both)."""
    import logging  # noqa: PLC0415 -- only the serving sandbox logs

    kinds = args.log
    if kinds is None:
        kinds = ("requests", "deliveries") if out.isatty() else ()
    for kind in kinds:
        logger = logging.getLogger(f"pixelbyte_async.testing.{kind}")
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


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
