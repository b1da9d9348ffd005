"""
Security: the API key never leaks; webhook checks are timing-safe and replay-proof.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

import pytest
from pixelbyte_async import (
    AmbiguousSubmitError,
    AuthenticationError,
    ClientConfig,
    KlingO1StartEndFrame,
    PixelByte,
    ValidationError,
    VirtualClock,
    WebhookVerificationError,
)
from pixelbyte_async import webhooks as webhooks_module
from pixelbyte_async.testing import FakePixelByte, Fault
from pixelbyte_async.webhooks import WebhookServer, sign, verify


pytestmark = pytest.mark.anyio

KEY = "pb_live_TOPSECRET_0123456789"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


async def drive(clock, awaitable):
    """Await *awaitable*, moving the manual clock on while it waits (retries sleep)."""
    task = asyncio.ensure_future(awaitable)
    while not task.done():
        await asyncio.sleep(0.001)
        clock.advance(1)
    return task.result()


def texts_of(records):
    for record in records:
        yield record.getMessage()
        yield repr(record.args)
        if record.exc_info and record.exc_info[1] is not None:
            yield str(record.exc_info[1])
            yield repr(record.exc_info[1])


async def test_key_absent_from_every_log_repr_and_error(caplog, tmp_path):
    """A full run with faults, at DEBUG everywhere: the key appears nowhere."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    clock = VirtualClock(autojump=False)
    async with FakePixelByte(
        api_key=KEY, clock=clock, allow_http_webhooks=True
    ) as fake:
        server = WebhookServer(fake.webhook_secret, clock=clock)
        async with PixelByte(
            api_key=KEY, base_url=fake.url, clock=clock, webhook=server
        ) as pb:
            seen += [repr(pb), repr(pb.config), str(pb.config)]
            fake.inject(
                Fault.status(503, "PUBSUB_PUBLISH_FAILED"),
                method="POST",
                path="/v1/jobs/submit",
            )
            fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
            request = KlingO1StartEndFrame(
                image_url=PNG, end_image_url="https://e.x/b.jpg"
            )
            with pytest.raises(AmbiguousSubmitError) as ambiguous:
                await drive(clock, pb.submit(request))
            seen += [
                str(ambiguous.value),
                repr(ambiguous.value),
                repr(ambiguous.value.__cause__),
            ]
            job = await drive(clock, pb.reconcile(ambiguous.value))
            assert job is not None
            seen.append(repr(job))
            waiter = asyncio.ensure_future(job.wait())
            await asyncio.sleep(0)
            fake.advance(245)
            await fake.deliver_webhooks()
            await waiter
            await job.download(tmp_path / "out.mp4")
        async with PixelByte(
            api_key="pb_live_wrong", base_url=fake.url, clock=clock
        ) as bad:
            with pytest.raises(AuthenticationError) as auth:
                await bad.get_job(job.id)
            seen += [str(auth.value), repr(auth.value)]
        # What left the process: CDN and upload requests never carried the key.
        assert all(r.authorization is None for r in fake.cdn_requests)
    seen += list(texts_of(caplog.records))
    assert caplog.records
    leaks = [text for text in seen if KEY in text or "TOPSECRET" in text]
    assert leaks == []


def test_config_repr_masks_key():
    """ClientConfig shows only the key's prefix."""
    config = ClientConfig(api_key=KEY)
    assert "TOPSECRET" not in repr(config)
    assert "pb_***" in repr(config)
    assert repr(config.api_key) == "'pb_***'"
    assert config.api_key == KEY


def test_webhook_comparison_is_constant_time(monkeypatch):
    """Signatures are compared with hmac.compare_digest, on bytes."""
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((type(a), type(b)))
        return real(a, b)

    monkeypatch.setattr(webhooks_module.hmac, "compare_digest", spy)
    body = b'{"jobId":"job_1","status":"completed"}'
    headers = {
        "X-PixelByte-Timestamp": "1760000000",
        "X-PixelByte-Signature": sign(body, "s", 1760000000),
    }
    verify(body, headers, "s", now=1760000000)
    assert calls == [(bytes, bytes)]


def test_replay_after_the_window_is_rejected():
    """A genuine delivery replayed after the tolerance window is refused."""
    body = b'{"jobId":"job_1","status":"completed"}'
    headers = {
        "X-PixelByte-Timestamp": "1760000000",
        "X-PixelByte-Signature": sign(body, "s", 1760000000),
    }
    assert verify(body, headers, "s", now=1760000000 + 299).job_id == "job_1"
    with pytest.raises(WebhookVerificationError) as info:
        verify(body, headers, "s", now=1760000000 + 301)
    assert info.value.reason == "stale"


def test_secret_never_in_verification_errors():
    """Verification errors never quote the secret."""
    body = b'{"jobId":"job_1","status":"completed"}'
    headers = {
        "X-PixelByte-Timestamp": "1760000000",
        "X-PixelByte-Signature": "sha256=" + "0" * 64,
    }
    with pytest.raises(WebhookVerificationError) as info:
        verify(body, headers, "whsec_VERYSECRET", now=1760000000)
    assert "VERYSECRET" not in str(info.value)
    assert "VERYSECRET" not in repr(info.value)


# -- issue 21, finding 10: a key pasted with a newline ------------------------------------


@pytest.mark.parametrize("pasted", [f"{KEY}\n", f"  {KEY}\r\n", f"\t{KEY} "])
async def test_a_key_with_surrounding_whitespace_is_stripped(monkeypatch, pasted):
    """A key read from a file or a shell with its newline works as the bare key."""
    async with FakePixelByte(api_key=KEY) as fake:
        monkeypatch.setenv("PIXELBYTE_API_KEY", pasted)
        async with PixelByte(base_url=fake.url, clock=fake.clock) as pb:
            assert pb.config.api_key == KEY
            job = await pb.submit(
                KlingO1StartEndFrame(
                    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
                )
            )
        async with PixelByte(api_key=pasted, base_url=fake.url) as pb:
            assert (await pb.get_job(job.id)).id == job.id


@pytest.mark.parametrize(
    "broken",
    [f"{KEY[:8]} {KEY[8:]}", f"{KEY[:8]}\n{KEY[8:]}", f"{KEY}\x00", f"{KEY}\x7fx"],
    ids=["inner-space", "inner-newline", "nul", "del"],
)
def test_a_key_with_inner_whitespace_or_controls_is_refused_unshown(broken):
    with pytest.raises(ValidationError) as refused:
        ClientConfig(api_key=broken)
    assert refused.value.field == "api_key"
    assert KEY[8:] not in str(refused.value)
    assert "whitespace or control characters" in str(refused.value)
