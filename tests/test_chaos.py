"""
Chaos: 1,000 jobs through one client while the fake misbehaves in every documented way.

The ledger must show: every input reached a terminal state or a typed error, nobody
was charged twice, every ambiguous submit was reconciled, nothing hung past its
deadline (warnings are errors, so leaked tasks or sockets fail the test too).
"""

from __future__ import annotations

import asyncio
import random

import pytest
from pixelbyte_async import (
    AmbiguousSubmitError,
    JobFailed,
    JobStatus,
    KlingO1StartEndFrame,
    PixelByte,
    PixelByteError,
    ReconcileError,
    RetryPolicy,
    VirtualClock,
)
from pixelbyte_async.testing import FakePixelByte, Fault, JobScript
from pixelbyte_async.webhooks import WebhookServer

from conftest import bound_client


pytestmark = pytest.mark.anyio

SUBMIT = "/v1/jobs/submit"
GET = "/v1/jobs/*"


def kling(i: int) -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url="https://e.x/a.jpg",
        end_image_url="https://e.x/b.jpg",
        prompt=f"chaos {i}",
    )


class NeedsAttention(Exception):
    """The SDK would not guess which job is whose: a person decides (never pay twice)."""


class Reconciler:
    """Resolve ambiguous submits the way a careful app does."""

    def __init__(self, pb):
        self.pb = pb
        self.reconciled = 0
        self.resubmitted = 0
        self.needs_attention = 0
        #: Jobs set aside for a person (the app's own record claims them).
        self.set_aside: set[str] = set()

    async def resolve(self, error: AmbiguousSubmitError, i: int):
        try:
            job = await self.pb.reconcile(error)
        except ReconcileError as exc:
            self.needs_attention += 1
            if not exc.candidates:
                raise AssertionError("ReconcileError without candidates") from exc
            self.set_aside.update(job.id for job in exc.candidates)
            raise NeedsAttention from exc
        self.reconciled += 1
        if job is None:
            self.resubmitted += 1
            job = await self.pb.submit(kling(i))
        return job


async def test_polling_chaos_1000_jobs():
    """API faults of every kind across 1,000 jobs: nothing lost, nothing charged twice."""
    rng = random.Random(7)  # noqa: S311 -- fault placement, not security
    async with FakePixelByte() as fake:
        began = fake.clock.time()
        fake.concurrent_job_limit = 40
        fake.concurrency_retry_after = 5
        scripts = [
            JobScript(outcome="failed")
            if rng.random() < 0.05
            else JobScript(queue_seconds=rng.uniform(0, 30))
            for _ in range(1000)
        ]
        fake.script_next(*scripts)
        injected = {
            "429": fake.inject(
                Fault.status(429, "CONCURRENT_JOBS_EXCEEDED", retry_after=3),
                method="POST",
                path=SUBMIT,
                times=30,
            ),
            "503": fake.inject(
                Fault.status(503, "PUBSUB_PUBLISH_FAILED"),
                method="POST",
                path=SUBMIT,
                times=30,
            ),
            "500-submit": fake.inject(
                Fault.status(500, "INTERNAL_ERROR"), method="POST", path=SUBMIT, times=8
            ),
            "drop-before": fake.inject(
                Fault.drop_before(), method="POST", path=SUBMIT, times=8
            ),
            "drop-after": fake.inject(
                Fault.drop_after(), method="POST", path=SUBMIT, times=8
            ),
            # The backend creates the job seconds after the answer was lost.
            "late-drop": fake.inject(
                Fault.late_create(2.5), method="POST", path=SUBMIT, times=6
            ),
            "late-hang": fake.inject(
                Fault.late_create(40, answer="hang", hold=0.02),
                method="POST",
                path=SUBMIT,
                times=4,
            ),
            "500-get": fake.inject(
                Fault.status(500, "INTERNAL_ERROR"), method="GET", path=GET, times=60
            ),
            "502-html": fake.inject(Fault.html(502), method="GET", path=GET, times=40),
            "reset-get": fake.inject(
                Fault.drop_before(), method="GET", path=GET, times=40
            ),
            "slow-get": fake.inject(
                Fault.delay(0.002), method="GET", path=GET, times=40
            ),
            "garbage-get": fake.inject(
                Fault.garbage(200), method="GET", path=GET, times=10
            ),
        }
        async with bound_client(
            fake,
            claim_window=24 * 3600,  # the audit below covers the whole run
            max_concurrent_jobs=60,
            retry=RetryPolicy(attempts=6, jitter=False, wait_initial=0.5),
        ) as pb:
            reconciler = Reconciler(pb)
            outcomes: dict[int, str] = {}

            async def one(i: int) -> None:
                try:
                    try:
                        job = await pb.submit(kling(i))
                    except AmbiguousSubmitError as exc:
                        job = await reconciler.resolve(exc, i)
                    await job.wait(timeout=7200)
                    outcomes[i] = job.status.value
                except JobFailed:
                    outcomes[i] = "failed"
                except NeedsAttention:
                    outcomes[i] = "needs_attention"
                except PixelByteError as exc:
                    outcomes[i] = f"error:{type(exc).__name__}"

            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1000))), 120)
            # Nothing paid for is left unclaimed: the audit finds no orphan.
            audit = await pb.audit(since=began - 1, exclude=reconciler.set_aside)
            assert audit.orphans == ()
        consumed = {name: handle.hits for name, handle in injected.items()}
    assert len(outcomes) == 1000
    assert set(outcomes.values()) <= {
        "completed",
        "failed",
        "needs_attention",
        "error:ResponseDecodeError",
    }
    assert sum(v == "completed" for v in outcomes.values()) >= 900
    # Nobody paid twice: one job at most per input, whatever went wrong.
    assert fake.ledger.double_charged() == []
    prompts = [j.input["prompt"] for j in fake.jobs.values()]
    assert len(prompts) == len(set(prompts))
    # Nothing lost: every input has its job, except those left for a person to decide.
    ambiguous = sum(
        consumed[name]
        for name in (
            "500-submit",
            "drop-before",
            "drop-after",
            "late-drop",
            "late-hang",
        )
    )
    assert reconciler.reconciled + reconciler.needs_attention == ambiguous
    assert len(prompts) >= 1000 - reconciler.needs_attention
    assert reconciler.resubmitted <= consumed["drop-before"]
    assert consumed["429"] == 30
    assert consumed["drop-after"] == 8
    assert consumed["late-drop"] + consumed["late-hang"] == 10


async def test_webhook_chaos():
    """Duplicate, dropped, forged, stale, early and reordered deliveries for 300 jobs."""
    clock = VirtualClock(autojump=False)
    async with FakePixelByte(clock=clock, allow_http_webhooks=True) as fake:
        server = WebhookServer(fake.webhook_secret, clock=clock)
        async with bound_client(fake, webhook=server, max_concurrent_jobs=None) as pb:
            fake.webhook_order = "shuffle"
            fake.inject_webhook("early", times=5)
            jobs = list(
                await asyncio.gather(*(pb.submit(kling(i)) for i in range(300)))
            )
            for kind, times in [
                ("duplicate", 20),
                ("drop", 10),
                ("bad_signature", 10),
                ("stale_status", 10),
            ]:
                fake.inject_webhook(kind, times=times)
            waits = asyncio.gather(*(job.wait(timeout=3600) for job in jobs))
            for _ in range(30):
                await asyncio.sleep(0)
            fake.advance(245)
            await fake.deliver_webhooks()
            for _ in range(30):
                await asyncio.sleep(0)
            fake.advance(61)  # the safety polls for the dropped deliveries
            done = await asyncio.wait_for(waits, 30)
            assert server.receiver.waiting == 0
    assert all(job.status is JobStatus.COMPLETED for job in done)
    assert fake.count("GET", GET) <= 10
    assert server.receiver.stats["rejected"] == 10
    # 20 duplicates, and 10 stale "processing" deliveries after the end.
    assert server.receiver.stats["duplicates"] == 30
    assert fake.ledger.double_charged() == []


class App:
    """One submitter on a shared account: its own client, ledger and records."""

    def __init__(self, name: str, pb, fake: FakePixelByte):
        self.name = name
        self.pb = pb
        self.fake = fake
        self.reconciler = Reconciler(pb)
        self.adopted: list[tuple[str, str]] = []  # (job id, the prompt we sent)
        self.outcomes: dict[int, str] = {}

    def request(self, i: int) -> KlingO1StartEndFrame:
        return KlingO1StartEndFrame(
            image_url="https://e.x/a.jpg",
            end_image_url="https://e.x/b.jpg",
            prompt=f"{self.name} {i}",
        )

    async def one(self, i: int) -> None:
        try:
            try:
                job = await self.pb.submit(self.request(i))
            except AmbiguousSubmitError as exc:
                found = await self.pb.reconcile(exc)
                if found is None:
                    job = await self.pb.submit(self.request(i))
                else:
                    job = found
                    self.adopted.append((job.id, exc.input["prompt"]))
            await job.wait(timeout=7200)
            self.outcomes[i] = job.status.value
        except ReconcileError:
            self.outcomes[i] = "needs_attention"
        except JobFailed:
            self.outcomes[i] = "failed"
        except PixelByteError as exc:
            self.outcomes[i] = f"error:{type(exc).__name__}"


@pytest.mark.parametrize("machines", ["one machine", "two machines"])
@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_two_apps_on_one_account(tmp_path, machines, seed):
    """
    Two apps submit the same model on one key while submits are lost: 0 double
    charges, 0 wrong adoptions, 0 foreign cancellations (issue 21).

    "One machine": both record in the same ledger.  "Two machines": each its own,
    so each sees the other's jobs as foreign and must not take them.
    """
    rng = random.Random(seed)  # noqa: S311 -- fault placement, not security
    async with FakePixelByte() as fake:
        began = shared_account_faults(fake, rng)
        ledgers = (
            [tmp_path / "shared.sqlite3"] * 2
            if machines == "one machine"
            else [tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"]
        )
        async with (
            bound_client(fake, ledger=ledgers[0], max_concurrent_jobs=20) as pa,
            bound_client(fake, ledger=ledgers[1], max_concurrent_jobs=20) as pb,
        ):
            apps, cancelled = await two_apps(fake, pa, pb, rng, began)
    assert_safe(fake, apps, cancelled)


def shared_account_faults(fake: FakePixelByte, rng: random.Random) -> float:
    """Jobs of random lengths and lost submits of every kind; return the start."""
    fake.concurrent_job_limit = 40
    fake.script_next(*(JobScript(queue_seconds=rng.uniform(0, 60)) for _ in range(400)))
    for fault, times in [
        (Fault.drop_before(), 6),
        (Fault.drop_after(), 6),
        (Fault.late_create(2.5), 4),
        (Fault.late_create(40, answer="hang", hold=0.02), 3),
        (Fault.status(500, "INTERNAL_ERROR"), 4),
    ]:
        fake.inject(fault, method="POST", path=SUBMIT, times=times)
    return fake.clock.time()


async def two_apps(
    fake: FakePixelByte, pa: PixelByte, pb: PixelByte, rng: random.Random, began: float
) -> tuple[list[App], list[tuple[str, str]]]:
    """Apps A and B submit 150 inputs each, shuffled; then each audits and cancels."""
    apps = [App("A", pa, fake), App("B", pb, fake)]
    order = [(app, i) for app in apps for i in range(150)]
    rng.shuffle(order)
    await asyncio.wait_for(asyncio.gather(*(app.one(i) for app, i in order)), 120)
    cancelled: list[tuple[str, str]] = []
    for app in apps:
        report = await app.pb.audit(since=began - 1)
        cancelled.extend((app.name, o.job.id) for o in report.cancellable)
        await report.cancel_pending()
    return apps, cancelled


def assert_safe(fake: FakePixelByte, apps: list[App], cancelled) -> None:
    """0 double charges, 0 wrong adoptions, 0 foreign cancellations."""
    jobs = fake.jobs
    # Nobody paid twice: one job at most per (app, input), whatever went wrong.
    prompts = [j.input["prompt"] for j in jobs.values()]
    assert len(prompts) == len(set(prompts))
    assert fake.ledger.double_charged() == []
    # No adoption took a job another input made.
    for job_id, prompt in (pair for app in apps for pair in app.adopted):
        assert jobs[job_id].input["prompt"] == prompt
    # No audit cancelled another app's job.
    for name, job_id in cancelled:
        assert jobs[job_id].input["prompt"].startswith(name)
    for app in apps:
        assert len(app.outcomes) == 150
        assert set(app.outcomes.values()) <= {"completed", "failed", "needs_attention"}
