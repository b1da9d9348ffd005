"""
Webhook delivery from the fake, signed exactly as the API contract (section 8) says.

Deliveries happen when asked (`FakePixelByte.deliver_webhooks`) or from one polling
task (``auto_webhooks=True``); job state stays lazy either way.  Failed attempts are
retried after 1, 4, 16, 64 and 256 *virtual* seconds, then given up.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import aiohttp

from ._catalog import MODELS
from ._jobs import FakeJob, render_output
from ._records import WebhookDelivery
from ._state import FakeState
from ._util import iso


__all__ = ["RETRY_DELAYS", "WebhookSender", "sign"]

#: Virtual seconds between attempts; one first attempt plus one retry per delay.
RETRY_DELAYS = (1.0, 4.0, 16.0, 64.0, 256.0)
_TIMEOUT = aiohttp.ClientTimeout(total=30)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """
    Return the ``X-PixelByte-Signature`` value for *body* sent at *timestamp*.

    Args:
        secret: The webhook secret.
        timestamp: The ``X-PixelByte-Timestamp`` value (Unix seconds as a string).
        body: The exact request body.

    """
    message = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class WebhookSender:
    """Delivers due webhooks for one `FakeState`, with the documented retries."""

    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.attempts: dict[str, int] = {}
        self.next_at: dict[str, float] = {}
        self.finished: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    def payload(self, job: FakeJob, status: str) -> dict[str, Any]:
        """Return the webhook body of a terminal *job*."""
        body: dict[str, Any] = {
            "jobId": job.id,
            "requestId": job.request_id,
            "status": status,
        }
        if status == "completed":
            output, outputs = render_output(job, MODELS[job.model], self.state.cdn_url)
            body["output"] = output
            if outputs is not None:
                body["outputs"] = outputs
        else:
            body["error"] = {
                "code": job.script.error_code,
                "message": job.script.error_message,
            }
        body["completedAt"] = iso(job.finished_at)
        return body

    def due(self) -> list[FakeJob]:
        """Return the jobs whose next webhook attempt is due now."""
        now = self.state.now()
        return [
            job
            for job in self.state.jobs.values()
            if job.webhook_url is not None
            and job.id not in self.finished
            and job.status_at(now) in {"completed", "failed"}
            and now >= self.next_at.get(job.id, job.finished_at)
        ]

    async def deliver_due(self) -> list[WebhookDelivery]:
        """Attempt every due delivery once, in job order; return the attempts."""
        async with self._lock:
            return [await self._attempt(job) for job in self.due()]

    async def _attempt(self, job: FakeJob) -> WebhookDelivery:
        state = self.state
        assert job.webhook_url is not None  # noqa: S101 -- due() only returns jobs with a webhook
        now = state.now()
        status = job.status_at(now)
        body = json.dumps(self.payload(job, status), separators=(",", ":")).encode()
        timestamp = str(int(now))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "PixelByte-Webhooks/1.0 (FakePixelByte)",
            "X-PixelByte-Timestamp": timestamp,
            "X-PixelByte-Signature": sign(state.webhook_secret, timestamp, body),
        }
        attempt = self.attempts.get(job.id, 0) + 1
        self.attempts[job.id] = attempt
        http_status: int | None = None
        error: str | None = None
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
        try:
            async with self._session.post(
                job.webhook_url, data=body, headers=headers
            ) as response:
                http_status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        delivery = WebhookDelivery(
            job_id=job.id,
            url=job.webhook_url,
            attempt=attempt,
            time=now,
            headers=headers,
            body=body,
            status=http_status,
            error=error,
        )
        state.webhook_deliveries.append(delivery)
        if delivery.ok or attempt > len(RETRY_DELAYS):
            self.finished.add(job.id)
        else:
            self.next_at[job.id] = now + RETRY_DELAYS[attempt - 1]
        return delivery

    async def close(self) -> None:
        """Close the HTTP session, if one was opened."""
        if self._session is not None:
            await self._session.close()
            self._session = None
