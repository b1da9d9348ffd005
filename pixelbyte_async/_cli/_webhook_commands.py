"""
``webhook verify`` and ``webhook listen``: check deliveries with the webhook secret.

``verify`` checks one delivery saved to a file (headers from ``-H`` or a headers
file); ``listen`` runs a `WebhookServer` and prints every verified delivery.
Neither talks to the API.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

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
