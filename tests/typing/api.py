"""Never executed: exercises the public API for mypy --strict."""

from __future__ import annotations

from pathlib import Path

from pixelbyte_async import (
    Estimate,
    Job,
    JobInfo,
    JobStatus,
    KlingO1StartEndFrame,
    PixelByte,
    PollPolicy,
    RetryPolicy,
    WaitTimeout,
)


async def typed_usage() -> None:
    async with PixelByte(
        api_key="pb_x", retry=RetryPolicy(attempts=3), poll=PollPolicy(near_interval=3)
    ) as pb:
        job: Job = await pb.submit(
            KlingO1StartEndFrame(
                image_url="https://e.x/a.jpg",
                end_image_url=Path("b.png"),
                prompt="p",
                duration=5,
            )
        )
        status: JobStatus = job.status
        cost: int | None = job.cost_micro_cents
        try:
            done: Job = await job.wait(timeout=900, cancel_on_timeout=True)
        except WaitTimeout as exc:
            last: Job = exc.job
            del last
            return
        url: str | None = done.video_url
        path: Path = await done.download("out.mp4")
        estimate: Estimate = await pb.estimate(
            "kling-plus/kling-o1-standard/start-end-frame-to-video", {"duration": "5"}
        )
        async for info in job.watch():
            snapshot: JobInfo = info
            del snapshot
        async for other in pb.list_jobs(status="completed", limit=5):
            reveal: str = other.id
            del reveal
        uploaded: str = await pb.upload(b"\x89PNG...")
        del status, cost, url, path, estimate, uploaded
