"""
The sandbox process's options: its argument definitions and their help, and nothing else.

``pixelbyte-async`` builds its parser (``sandbox`` and ``--sandbox``'s
``--time-scale``) from this module, so ``--help`` and a usage error import neither
the fake server nor asyncio; `_process` serves.  It imports only ``_cmdline``.
"""

from __future__ import annotations

import argparse

from pixelbyte_async._cmdline import (
    _count,
    _float_type,
    _int_type,
    _micro_cents,
    _port,
    _positive,
)


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


_LOG_KINDS = ("requests", "deliveries")


def _log_kinds(value: str) -> tuple[str, ...]:
    """``--log``: a comma list of requests/deliveries, or none."""
    words = tuple(w.strip() for w in value.split(",") if w.strip())
    if words == ("none",):
        return ()
    unknown = [w for w in words if w not in _LOG_KINDS]
    if not words or unknown:
        msg = f"expected requests, deliveries, both (comma-separated) or none; got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return words


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
        "--log",
        type=_log_kinds,
        default=None,
        metavar="WHAT",
        help="print each API request and its status ('requests'), each webhook "
        "delivery attempt and its outcome ('deliveries'), both "
        "('requests,deliveries') or nothing ('none'); default: both when the "
        "output is a terminal, else none",
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
