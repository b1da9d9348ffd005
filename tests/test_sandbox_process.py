"""
The sandbox as a separate process talks in real time (issue 13, findings 1, 2, 11).

``python -m pixelbyte_async.testing --time-scale K`` only makes jobs K times
shorter: every timestamp it emits is wall-clock time, so a receiver with the
default tolerance, the CLI and adaptive polling work against it with no flags.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import typing

import aiohttp
import pytest
from pixelbyte_async import KlingO1StartEndFrame, PixelByte
from pixelbyte_async._cli import main as cli_main
from pixelbyte_async._fake._jobs import OutputShape
from pixelbyte_async._fake._process import _OUTPUT_SHAPES
from pixelbyte_async._fake._util import parse_iso
from pixelbyte_async.testing import FakePixelByte, main
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


# -- failures, output shapes, wrong ETAs and shorter waits (issue 24, item 12) -------


async def submit_raw(
    session: aiohttp.ClientSession, env: dict[str, str]
) -> tuple[int, dict[str, typing.Any]]:
    async with session.post(
        env["PIXELBYTE_BASE_URL"] + "/v1/jobs/submit",
        json={"model": REQUEST.model_slug, "input": REQUEST.to_input()},
        headers={"Authorization": f"Bearer {env['PIXELBYTE_API_KEY']}"},
    ) as r:
        return r.status, await r.json()


async def get_raw(
    session: aiohttp.ClientSession, env: dict[str, str], job_id: str
) -> dict[str, typing.Any]:
    async with session.get(
        env["PIXELBYTE_BASE_URL"] + f"/v1/jobs/{job_id}",
        headers={"Authorization": f"Bearer {env['PIXELBYTE_API_KEY']}"},
    ) as r:
        assert r.status == 200
        body: dict[str, typing.Any] = await r.json()
        return body


async def test_sandbox_fails_shapes_and_misstates_as_told() -> None:
    """--fail-rate/--seed fail the jobs an in-process fake with that seed fails."""
    jobs = 12
    proc, env = await start_sandbox(
        "--time-scale=1000",  # a Kling job: 0.245 s
        "--fail-rate=0.5",
        "--seed=11",
        "--output-shape=video_url",
        "--eta-error=-0.5",
    )
    try:
        async with aiohttp.ClientSession() as session:
            submitted = [await submit_raw(session, env) for _ in range(jobs)]
            assert {status for status, _ in submitted} == {200}
            await asyncio.sleep(0.4)
            seen = [await get_raw(session, env, body["jobId"]) for _, body in submitted]
    finally:
        proc.terminate()
        await proc.wait()
    async with (
        FakePixelByte(fail_rate=0.5, seed=11) as fake,
        PixelByte(api_key=fake.api_key, base_url=fake.url, clock=fake.clock) as pb,
    ):
        for _ in range(jobs):
            await pb.submit(REQUEST)
        fake.advance(245)
        expected = [job.status for job in fake.jobs.values()]
    assert [job["status"] for job in seen] == expected
    assert 0 < expected.count("failed") < jobs
    for (_, answer), job in zip(submitted, seen, strict=True):
        announced = parse_iso(answer["estimatedCompletionTime"])
        # Half of (5 s queued + 240 s), 1000 times faster: 0.1225 s.
        assert announced - parse_iso(job["createdAt"]) == pytest.approx(
            0.1225, abs=2e-3
        )
        if job["status"] == "completed":
            assert set(job["output"]) == {"videoUrl"}
            assert job["output"]["videoUrl"].endswith("/output_0.mp4")
        else:
            assert job["error"]["code"] == "GENERATION_FAILED"


async def test_sandbox_retry_after_is_as_much_shorter_as_its_jobs() -> None:
    """At --time-scale 20 the plan's 30 s wait for a slot is 2 s (rounded up)."""
    proc, env = await start_sandbox("--time-scale", "20", "--concurrent-job-limit", "1")
    try:
        async with aiohttp.ClientSession() as session:
            assert (await submit_raw(session, env))[0] == 200
            status, body = await submit_raw(session, env)
    finally:
        proc.terminate()
        await proc.wait()
    assert (status, body["error"]["code"]) == (429, "CONCURRENT_JOBS_EXCEEDED")
    assert body["error"]["details"]["retryAfter"] == 2


def test_output_shapes_are_the_fakes() -> None:
    assert set(_OUTPUT_SHAPES) == set(typing.get_args(OutputShape))


@pytest.mark.parametrize(
    ("option", "bad"),
    [
        ("--fail-rate", "1.5"),
        ("--fail-rate", "-0.1"),
        ("--fail-rate", "nan"),
        ("--fail-rate", "half"),
        ("--eta-error", "-2"),
        ("--eta-error", "inf"),
        ("--seed", "-1"),
        ("--seed", "1.5"),
        ("--output-shape", "gif"),
    ],
)
def test_bad_sandbox_options_are_one_line_usage_errors(
    option: str, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value out of range: exit 2 and one line naming the option, in both programs."""
    for run in (main, lambda argv: cli_main(["sandbox", *argv])):
        with pytest.raises(SystemExit) as exited:
            run([option, bad])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert f"argument {option}" in err
        assert repr(bad) in err


async def test_the_sandbox_logs_requests_and_deliveries_when_asked(tmp_path) -> None:
    """Issue 27: `--log requests,deliveries` prints each request and delivery."""
    from pixelbyte_async.webhooks import WebhookServer

    proc, env = await start_sandbox("--time-scale", "2000", "--allow-http-webhooks",
                                    "--log", "requests,deliveries")  # fmt: skip
    try:
        server = WebhookServer(env["PIXELBYTE_WEBHOOK_SECRET"])
        async with PixelByte(
            api_key=env["PIXELBYTE_API_KEY"],
            base_url=env["PIXELBYTE_BASE_URL"],
            webhook=server,
            ledger=None,
        ) as pb:
            job = await pb.submit(REQUEST)
            await job.wait(timeout=30)
        assert proc.stdout is not None
        seen: list[str] = []
        while not any("webhook " in line for line in seen):
            raw = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert raw, "the sandbox exited"
            seen.append(raw.decode())
    finally:
        proc.terminate()
        await proc.wait()
    assert any("POST /v1/jobs/submit -> 200" in line for line in seen), seen
    assert any(f"webhook {job.id} attempt 1 -> 200" in line for line in seen), seen


async def test_an_http_webhook_refused_names_the_option() -> None:
    from pixelbyte_async import InvalidRequestError

    async with (
        FakePixelByte() as fake,
        PixelByte(api_key=fake.api_key, base_url=fake.url, clock=fake.clock) as pb,
    ):
        with pytest.raises(InvalidRequestError, match="--allow-http-webhooks"):
            await pb._pipeline.request(
                "POST",
                "/v1/jobs/submit",
                json_body={
                    "model": REQUEST.model_slug,
                    "input": REQUEST.to_input(),
                    "webhookUrl": "http://127.0.0.1:9/hook",
                },
                mode="submit",
            )


def test_the_log_option_takes_kinds_or_none() -> None:
    from pixelbyte_async._fake._options import _log_kinds

    assert _log_kinds("requests,deliveries") == ("requests", "deliveries")
    assert _log_kinds("none") == ()
    with pytest.raises(argparse.ArgumentTypeError):
        _log_kinds("everything")
