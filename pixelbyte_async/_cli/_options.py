"""
The CLI's own option types and the options many commands share.

Types: `_when` (a duration ago or an ISO time), `_usd_to_micro_cents`, `_base_url`
(with `_base_url_problem`, also used for ``$PIXELBYTE_BASE_URL``) and
`_listen_address`; options: `_common` (connection and output, taken by every API
command) and the webhook secret (`_secret_option`, read by `_secrets`).  The numeric
types, `_Parser` and ``--debug`` are shared with the sandbox process and live in
``_cmdline``.
"""

from __future__ import annotations

import argparse
import decimal
import os
import re
from datetime import UTC, datetime
from urllib.parse import urlsplit

from pixelbyte_async._cmdline import _debug_option, _Parser, _positive
from pixelbyte_async._config import DEFAULT_BASE_URL
from pixelbyte_async._errors import ValidationError
from pixelbyte_async._fake._options import _SANDBOX_TIME_SCALE, _TIME_SCALE_HELP


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
