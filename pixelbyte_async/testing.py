# ruff: noqa: PLC0414 -- explicit `Name as Name` re-exports are the house style
"""
Test your PixelByte code without the network: `FakePixelByte`, a local fake API.

`FakePixelByte` is a real HTTP server on ``127.0.0.1`` that speaks the PixelByte API
(``/v1/jobs``, ``/v1/uploads``, ``/v1/models``, ``/v1/providers``, ``/v1/catalog``),
serves outputs from a second origin like the real CDN, runs jobs on a virtual clock,
records every request and every cent, and fails on command:

.. code-block:: python

    from pixelbyte_async.testing import Fault, FakePixelByte, JobScript

    async with FakePixelByte() as fake:
        fake.script_next(JobScript(outcome="failed"))
        fake.inject(Fault.status(503, "PUBSUB_PUBLISH_FAILED"), path="/v1/jobs/submit")
        ...  # run your code against fake.url with fake.api_key and clock=fake.clock
        fake.advance(300)
        assert fake.ledger.double_charged() == []

It also runs as a sandbox process::

    python -m pixelbyte_async.testing --port 8765 --time-scale 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from ._fake._catalog import MODELS
from ._fake._faults import Fault as Fault
from ._fake._faults import FaultHandle as FaultHandle
from ._fake._jobs import FakeJob as FakeJob
from ._fake._jobs import FakeUpload as FakeUpload
from ._fake._jobs import JobScript as JobScript
from ._fake._records import CdnRequest as CdnRequest
from ._fake._records import Ledger as Ledger
from ._fake._records import LedgerEntry as LedgerEntry
from ._fake._records import RecordedRequest as RecordedRequest
from ._fake._records import WebhookDelivery as WebhookDelivery
from ._fake._server import SANDBOX_API_KEY as SANDBOX_API_KEY
from ._fake._server import FakePixelByte as FakePixelByte
from ._fake._util import input_fingerprint as input_fingerprint


__all__ = [
    "SANDBOX_API_KEY",
    "CdnRequest",
    "FakeJob",
    "FakePixelByte",
    "FakeUpload",
    "Fault",
    "FaultHandle",
    "JobScript",
    "Ledger",
    "LedgerEntry",
    "RecordedRequest",
    "WebhookDelivery",
    "input_fingerprint",
    "main",
]


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pixelbyte_async.testing",
        description="Run a local fake PixelByte API (a sandbox) until Ctrl-C.",
        allow_abbrev=False,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=8765, help="API port (0: any)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (0: any)")
    parser.add_argument(
        "--time-scale",
        type=_positive,
        default=1.0,
        help="how many times faster than the real API jobs run (default 1); every "
        "timestamp stays wall-clock time, so webhook receivers, the CLI and polling "
        "work against the sandbox as they would against the API",
    )
    parser.add_argument("--api-key", default=SANDBOX_API_KEY, help="key to accept")
    parser.add_argument(
        "--envelope", choices=("mixed", "flat", "wrapped"), default="mixed"
    )
    parser.add_argument("--concurrent-job-limit", type=int, default=None)
    parser.add_argument(
        "--balance", type=int, default=None, help="starting balance in micro-cents"
    )
    parser.add_argument(
        "--no-auth", action="store_true", help="accept requests without a key"
    )
    parser.add_argument(
        "--allow-http-webhooks", action="store_true", help="accept http:// webhooks"
    )
    parser.add_argument("--webhook-secret", default="whsec_test_sandbox")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with FakePixelByte(
        api_key=args.api_key,
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
        webhook_secret=args.webhook_secret,
        auto_webhooks=True,
    ) as fake:
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
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the fake server in the foreground until Ctrl-C (or SIGTERM).

    It prints the base URL and the (sandbox, not secret) API key as
    ``PIXELBYTE_BASE_URL=...`` and ``PIXELBYTE_API_KEY=...`` lines.

    Args:
        argv: Command-line arguments without the program name; default
            ``sys.argv[1:]``.

    Returns:
        The exit status: 0 after a clean stop.

    """
    args = _parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
