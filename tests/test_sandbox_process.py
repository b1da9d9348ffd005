"""
The sandbox as a separate process talks in real time (issue 13, findings 1, 2, 11).

``python -m pixelbyte_async.testing --time-scale K`` only makes jobs K times
shorter: every timestamp it emits is wall-clock time, so a receiver with the
default tolerance, the CLI and adaptive polling work against it with no flags.
"""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from pixelbyte_async import KlingO1StartEndFrame, PixelByte
from pixelbyte_async.testing import FakePixelByte
from pixelbyte_async.webhooks import WebhookServer


pytestmark = pytest.mark.anyio

REQUEST = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
)


async def start_sandbox(
    *args: str,
) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pixelbyte_async.testing",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    env: dict[str, str] = {}
    while "PIXELBYTE_WEBHOOK_SECRET" not in env:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line, "the sandbox exited"
        name, sep, value = line.strip().partition("=")
        if sep:
            env[name] = value
    return proc, env


async def test_sandbox_process_speaks_wall_clock_time() -> None:
    proc, env = await start_sandbox("--time-scale", "240", "--allow-http-webhooks")
    try:
        async with (
            WebhookServer(env["PIXELBYTE_WEBHOOK_SECRET"]) as server,
            PixelByte(
                api_key=env["PIXELBYTE_API_KEY"], base_url=env["PIXELBYTE_BASE_URL"]
            ) as pb,
        ):
            pb.use_webhooks(server)
            before = time.time()
            job = await pb.submit(REQUEST)
            eta = job.info.estimated_completion_time
            created = (await job.refresh()).info.created_at
            assert created is not None
            assert eta is not None
            assert abs(created.timestamp() - before) < 5
            # 5 s queue + 240 s processing, 240 times faster: about a second.
            assert 0 < eta.timestamp() - before < 5
            done = await asyncio.wait_for(job.wait(), 20)
            assert done.status.value == "completed"
            # The delivery's wall-clock timestamp passed the default tolerance.
            assert server.receiver.stats["accepted"] == 1
            assert server.receiver.stats["rejected"] == 0
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:9/hook", True),
        ("http://localhost:9/hook", True),
        ("http://[::1]:9/hook", True),
        ("http://example.com/hook", False),
        ("http://10.0.0.1/hook", False),
        ("https://example.com/hook", True),
    ],
)
async def test_http_webhooks_only_on_loopback(url: str, ok: bool) -> None:
    from pixelbyte_async import InvalidRequestError

    async with (
        FakePixelByte(allow_http_webhooks=True) as fake,
        PixelByte(api_key=fake.api_key, base_url=fake.url, clock=fake.clock) as pb,
    ):
        # The client checks too: send the raw body to see the API's answer.
        send = pb._pipeline.request(
            "POST",
            "/v1/jobs/submit",
            json_body={
                "model": REQUEST.model_slug,
                "input": REQUEST.to_input(),
                "webhookUrl": url,
            },
            mode="submit",
        )
        if ok:
            data, _ = await send
            assert data["jobId"]
        else:
            with pytest.raises(InvalidRequestError, match="webhookUrl"):
                await send
