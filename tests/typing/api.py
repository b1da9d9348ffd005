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


async def typed_webhooks_and_batches() -> None:
    from pixelbyte_async import (
        Batch,
        BatchItem,
        BatchSummary,
        BudgetExceeded,
        VirtualClock,
        run_batch,
    )
    from pixelbyte_async.testing import FakePixelByte, Fault, JobScript
    from pixelbyte_async.webhooks import (
        WebhookEvent,
        WebhookReceiver,
        WebhookServer,
        sign,
        verify,
    )

    event: WebhookEvent = verify(b"{}", {"X-PixelByte-Timestamp": "1"}, "s", now=1.0)
    signature: str = sign(b"{}", "s", 1)
    receiver = WebhookReceiver(["old", "new"], on_unknown=lambda e: None)
    status, reason = receiver.handle(b"{}", {})
    server = WebhookServer(receiver=receiver, port=0, public_url="https://x.example/h")
    clock = VirtualClock(autojump=False)
    async with FakePixelByte(clock=clock, allow_http_webhooks=True) as fake:
        fake.script_next(JobScript(outcome="failed"))
        fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
        fake.inject_webhook("duplicate", times=2)
        async with PixelByte(
            api_key=fake.api_key, base_url=fake.url, clock=clock, webhook=server
        ) as pb:
            batch: Batch = pb.run_batch([], journal="j.sqlite", max_cost_micro_cents=1)
            async with run_batch(
                pb, [("slug/a/b", {"prompt": "x"})], dry_run=True
            ) as b:
                async for item in b:
                    typed_item: BatchItem = item
                    del typed_item
            summary: BatchSummary = await batch.summary()
            try:
                await b.plan()
            except BudgetExceeded as exc:
                limit: int = exc.limit_micro_cents
                del limit
    del event, signature, status, reason, summary


async def hub_shapes() -> None:
    """A RedisHub is what `PixelByte(hub=)` and `use_webhooks` accept."""
    from pixelbyte_async.redis import RedisHub
    from pixelbyte_async.webhooks import WebhookReceiver

    hub = RedisHub("redis://localhost:6379/0", key_prefix="app", account="main")
    async with PixelByte(hub=hub, max_concurrent_jobs=20) as pb:
        pb.use_webhooks(hub, public_url="https://hooks.example.com/pixelbyte")
        receiver = WebhookReceiver("whsec_x", hub=hub)
        del receiver
