"""
``webhook verify`` and ``webhook listen``: check deliveries with the webhook secret.

``verify`` checks one delivery saved to a file (headers from ``-H`` or a headers
file); ``listen`` runs a `WebhookServer` and prints every verified delivery, and
with ``--redis`` (or ``$PIXELBYTE_REDIS_URL``) publishes each to a `RedisHub` it
starts and closes (`_started_hub`).  Neither talks to the API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from pixelbyte_async._cmdline import EXIT_CODES, _CLIError
from pixelbyte_async._errors import ValidationError
from pixelbyte_async.webhooks import (
    WebhookEvent,
    WebhookReceiver,
    WebhookServer,
    verify,
)

from ._connection import _listening
from ._options import _secrets
from ._output import _print_json


if TYPE_CHECKING:
    from pixelbyte_async.redis import RedisHub


async def _webhook(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.webhook_command == "verify":
        return _webhook_verify(args, out)
    if args.webhook_command == "check":
        return await _webhook_check(args, out)
    return await _webhook_listen(args, out, err)


async def _webhook_check(args: argparse.Namespace, out: TextIO) -> int:
    """Probe the public URL; one line (or JSON) with what came back."""
    from pixelbyte_async._inputs import check_url  # noqa: PLC0415 -- on use
    from pixelbyte_async._signing import signing_keys  # noqa: PLC0415
    from pixelbyte_async._webhook_check import send_probe  # noqa: PLC0415

    check_url(args.url, "URL")  # what the API accepts as a webhookUrl, or exit 3
    result = await send_probe(
        args.url,
        signing_keys(_secrets(args)),
        now=time.time(),
        timeout=args.timeout,
        reached_here=None,
    )
    if args.json:
        _print_json(
            {
                "ok": result.ok,
                "url": result.url,
                "status": result.status,
                "problem": result.problem,
            },
            out,
        )
    elif result.ok:
        print(f"ok: {result.url} answered {result.status} 'probe'", file=out)
    else:
        print(f"webhook check failed: {result.problem}", file=out)
    return EXIT_CODES["ok"] if result.ok else EXIT_CODES["webhook_invalid"]


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

    secrets = _secrets(args)
    async with contextlib.AsyncExitStack() as stack:
        hub = await _started_hub(args, stack)
        receiver = WebhookReceiver(secrets, on_event=on_event, hub=hub)
        server = WebhookServer(
            receiver=receiver, host=args.host, port=args.port, path=args.path, hub=hub
        )
        await _listening(server, option="--port", host_option="--host")
        async with server:
            shared = "" if hub is None else f" and publishing to {hub.url}"
            print(
                f"Listening on {server.url}{shared} (Ctrl-C stops)",
                file=err,
                flush=True,
            )
            await done.wait()
    return 0


async def _started_hub(
    args: argparse.Namespace, stack: contextlib.AsyncExitStack
) -> RedisHub | None:
    """
    The hub of ``--redis`` (else ``$PIXELBYTE_REDIS_URL``), started; None without.

    It is closed when *stack* is.  An unreachable Redis is no error (the hub keeps
    trying and deliveries get 503 meanwhile); a URL that is not one, a missing
    redis-py, or a Redis that refuses the URL's credentials or TLS (exit 2), is.
    No message repeats the URL: it may carry a password.
    """
    url = getattr(args, "redis", None)
    source = "--redis"
    if not url:
        url, source = os.environ.get("PIXELBYTE_REDIS_URL"), "$PIXELBYTE_REDIS_URL"
    names = {
        "key_prefix": getattr(args, "redis_prefix", None),
        "account": getattr(args, "redis_account", None),
    }
    options = {name: value for name, value in names.items() if value is not None}
    if not url:
        if options:
            raise ValidationError(
                "--redis-prefix and --redis-account need --redis or "
                "$PIXELBYTE_REDIS_URL",
                field="redis",
            )
        return None
    unusable = ValidationError(
        f"{source} must be a Redis URL such as redis://localhost:6379/0 "
        "(or rediss:// for TLS)",
        field="redis",
    )
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        scheme = ""
    if scheme not in {"redis", "rediss", "unix"}:
        raise unusable
    try:
        from pixelbyte_async.redis import RedisHub  # noqa: PLC0415 -- optional extra
    except ImportError as exc:
        raise _CLIError(
            f"{source} needs redis-py: pip install 'pixelbyte-async[redis]'",
            family="usage",
        ) from exc
    try:
        hub = RedisHub(url, **options)
    except ValueError as exc:
        raise ValidationError(
            f"--redis-prefix or --redis-account: {exc}", field="redis"
        ) from exc
    stack.push_async_callback(hub.aclose)
    try:
        await hub.start()
    except ValueError as exc:  # a part of the URL redis-py cannot read
        raise unusable from exc
    refused = hub.config_error
    if refused is not None:  # a wrong password, missing rights, TLS: not an outage
        raise _CLIError(
            f"{source}: Redis refused this process ({hub.describe(refused)}); check "
            "the URL's user and password, the user's ACL rights, or its TLS settings",
            family="usage",
        )
    return hub
