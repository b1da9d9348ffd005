"""
The client a command talks through: `_client` opens `PixelByte` from the options.

Against the API (key and base URL from the options or the environment) or, with
``--sandbox``, against an in-process `FakePixelByte`; with ``--listen``, it first
binds a `WebhookServer` (`_listening`), so a busy port costs no submit.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pixelbyte_async._client import PixelByte
from pixelbyte_async._cmdline import _cannot_listen
from pixelbyte_async._errors import ValidationError
from pixelbyte_async._polling import PollPolicy
from pixelbyte_async.webhooks import WebhookServer

from ._options import _secrets


@contextlib.asynccontextmanager
async def _client(
    args: argparse.Namespace, *, max_concurrent_jobs: int | None = None
) -> AsyncIterator[PixelByte]:
    options: dict[str, Any] = {}
    if getattr(args, "settle", None) is not None:
        options["settle"] = args.settle
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
            from pixelbyte_async.testing import FakePixelByte  # noqa: PLC0415 -- only the sandbox needs it

            fake = await stack.enter_async_context(
                FakePixelByte(
                    time_scale=args.time_scale,
                    allow_http_webhooks=listen is not None,
                    auto_webhooks=listen is not None,
                )
            )
            api_key, base_url = fake.api_key, fake.url
            options["clock"] = fake.clock
            # The sandbox's jobs end with this process: nothing to share or keep.
            options["ledger"] = None
            if listen is not None:
                host, port = listen
                server = WebhookServer(
                    fake.webhook_secret, host=host, port=port, **fake.receiver_options
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
