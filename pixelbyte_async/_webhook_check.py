"""
Checking a webhook set-up before the first paid job: a signed probe to the public URL.

`send_probe` posts a probe delivery (`probe_body`, signed like the API's deliveries)
to the URL the API would call and says what became of it as a `WebhookCheck`: the
HTTP status seen, whether the probe reached the receiver of this process (or its
hub), and what is wrong in words.  `PixelByte.check_webhooks` is its public face.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import ssl
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import attrs

from ._errors import PixelByteError
from ._signing import (
    PROBE_PREFIX,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    new_attempt_id,
    probe_body,
    sign_with_keys,
    tag_webhook_url,
)


__all__ = ["WebhookCheck", "WebhookCheckError", "send_probe"]

# The likely causes of a probe (or a delivery) that does not arrive, in words.
CAUSES = (
    "the URL is not reachable from the internet (a firewall, localhost, a private "
    "address); the path is wrong (a missing or extra trailing slash); the receiver "
    "runs in another process without the hub (multi-process deployment); or a "
    "reverse proxy strips or adds a path prefix"
)
# Seconds a probe published through a hub may take to come back here, at most.
_HUB_GRACE = 2.0
# Bytes of a receiver's answer read (its JSON reason is a few dozen).
_MAX_ANSWER = 4096


@attrs.frozen(kw_only=True)
class WebhookCheck:
    """
    What became of a signed probe sent to the webhook URL (`PixelByte.check_webhooks`).

    Attributes:
        ok: The probe reached this process's receiver (or its hub) and was
            answered 200: the API's deliveries will arrive.
        url: The URL the probe was sent to (the client's public URL).
        status: The HTTP status the URL answered, or None when there was no answer
            (connection refused, DNS, TLS, timeout).
        reached: Whether the probe reached this process's receiver, or a receiver
            publishing to the same hub.
        problem: What is wrong, in words (None when *ok*).

    It is true when *ok*: ``if not await pb.check_webhooks(): ...``.

    .. versionadded:: 0.5.0

    """

    ok: bool
    url: str
    status: int | None = None
    reached: bool = False
    problem: str | None = None

    def __bool__(self) -> bool:
        return self.ok


async def send_probe(
    url: str,
    keys: Sequence[hmac.HMAC],
    *,
    now: float,
    timeout: float,
    reached_here: Callable[[str], bool] | None,
    hub_attempt: Callable[[str], Awaitable[str | None]] | None = None,
) -> WebhookCheck:
    """
    Post a probe to *url*, signed with *keys* at Unix time *now*; say what happened.

    The URL carries the probe's nonce as ``pb_attempt``, as a submit's does.
    *reached_here* tells whether a receiver of this process verified a probe id;
    *hub_attempt* asks a hub which job id a receiver publishing to it attributed
    an attempt to (a probe's: its own id).  With neither (the command line), any
    receiver of this SDK that answers 200 ``probe`` counts as reached.
    """
    nonce = new_attempt_id()
    job_id = PROBE_PREFIX + nonce
    body = probe_body(nonce)
    timestamp = int(now)
    headers = {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign_with_keys(keys, body, timestamp),
        "Content-Type": "application/json",
        "User-Agent": "pixelbyte-async webhook check",
    }
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        status, reason, location = await _post(
            tag_webhook_url(url, nonce), body, headers, timeout
        )
    except _Failed as exc:
        return WebhookCheck(ok=False, url=url, problem=str(exc))
    if reached_here is None and hub_attempt is None:
        # Nobody to ask (the command line): a receiver that answers "probe" is one.
        reached = status == 200 and reason == "probe"  # noqa: PLR2004 -- HTTP OK
    else:
        reached = reached_here is not None and reached_here(job_id)
    if not reached and hub_attempt is not None and status == 200:  # noqa: PLR2004
        deadline = started + timeout
        grace = min(deadline, loop.time() + _HUB_GRACE)
        while True:
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                reached = await hub_attempt(nonce) == job_id
            if reached or loop.time() >= grace:
                break
            await asyncio.sleep(0.05)
    problem = _problem(status, reason, location, reached=reached)
    return WebhookCheck(
        ok=problem is None, url=url, status=status, reached=reached, problem=problem
    )


class WebhookCheckError(PixelByteError):
    """
    The webhook set-up failed its check (``use_webhooks(..., check=True)``).

    A signed probe sent to the public URL did not reach this process's receiver (or
    its hub); nothing was submitted, so nothing was charged.

    Attributes:
        check: The `WebhookCheck`: the URL, the HTTP status seen, what is wrong.

    .. versionadded:: 0.5.0

    """

    def __init__(self, message: str, *, check: WebhookCheck) -> None:
        super().__init__(message)
        self.check = check


class _Failed(Exception):
    """No HTTP answer: why, in words."""


async def _post(
    url: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, str | None, str | None]:
    """POST *body*; the status, the receiver's JSON ``reason`` and a redirect's target."""
    limit = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=limit) as session,
            session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as resp,
        ):
            raw = await resp.content.read(_MAX_ANSWER)
            return resp.status, _reason(raw), resp.headers.get("Location")
    except TimeoutError as exc:
        raise _Failed(f"no answer from {url} within {timeout:g} s: {CAUSES}") from exc
    except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
        raise _Failed(
            f"TLS failed for {url} ({exc}): the API needs a certificate that public "
            "clients trust, for this host name"
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        raise _Failed(
            f"could not connect to {url} ({exc.os_error or exc}): {CAUSES}"
        ) from exc
    except aiohttp.ClientError as exc:
        raise _Failed(f"the request to {url} failed ({exc!r}): {CAUSES}") from exc


def _reason(raw: bytes) -> str | None:
    """The ``reason`` of a receiver's JSON answer, if it is one."""
    try:
        answer = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    reason = answer.get("reason") if isinstance(answer, dict) else None
    return reason if isinstance(reason, str) else None


def _problem(
    status: int, reason: str | None, location: str | None, *, reached: bool
) -> str | None:
    """What is wrong with an answer of *status*; None when all is well."""
    if status == 200 and reached:  # noqa: PLR2004 -- HTTP OK
        return None
    if 300 <= status < 400:  # noqa: PLR2004 -- redirects
        return (
            f"{status} redirect to {location or '?'}: the API does not follow "
            "redirects; use the URL it points to as public_url (often a trailing "
            "slash, or https)"
        )
    if status in (404, 405):
        return (
            f"{status}: no webhook receiver answers POST at this URL; check the "
            "path (a missing or extra trailing slash?) and any reverse proxy's "
            "path prefix"
        )
    if status in (401, 403):
        return (
            f"{status} ({reason or 'refused'}): the receiver refused the signature; "
            "is it set up with the same webhook secret (and a correct clock)?"
        )
    if status == 503 and reason == "hub_unavailable":  # noqa: PLR2004
        return "503 hub_unavailable: the receiver could not reach its hub (Redis)"
    if status >= 500:  # noqa: PLR2004 -- the server's or a proxy's error
        return (
            f"{status}: the server (or a reverse proxy in front of it) failed; a "
            "502/504 often means the proxy cannot reach the receiver"
        )
    if status != 200:  # noqa: PLR2004 -- anything else
        return f"{status} ({reason or 'no reason'}): not a webhook receiver's answer"
    if reason == "probe":
        return (
            "200 probe, but from a receiver of another process: run the receiver "
            "in this process, or give both the same hub (use_webhooks(hub, ...))"
        )
    return (
        f"200 ({reason or 'not a receiver answer'}): the probe did not reach this "
        "process's receiver; something else answers at this URL (another app, an "
        "older receiver, or one in another process without the hub)"
    )
