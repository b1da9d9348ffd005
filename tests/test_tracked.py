"""
Tracked jobs (issue 26): submitted with a context, handled once they end, across
restarts.

A job submitted with ``context=`` is in the ledger before its submit is sent; the
``on_finished`` handlers run for it when it ends; a handler that raises is tried
again and the job parked after repeated failures; a process that closes or dies
leaves its jobs to the next one that calls ``resume()``; a lost submit is
reconciled (never re-sent) and then handled.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap

import pytest
from pixelbyte_async import (
    AmbiguousSubmitError,
    Job,
    JobStatus,
    KlingO1StartEndFrame,
    LostSubmit,
    ValidationError,
)
from pixelbyte_async.testing import FakePixelByte, Fault, JobScript

from conftest import bound_client, subprocess_env, until


pytestmark = pytest.mark.anyio

A, B = "https://e.x/a.jpg", "https://e.x/b.jpg"
KLING = KlingO1StartEndFrame(image_url=A, end_image_url=B, prompt="tracked")


def kling(prompt: str = "tracked") -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(image_url=A, end_image_url=B, prompt=prompt)


class Seen:
    """An on_finished handler that records what it was given."""

    def __init__(self, *, fail: int = 0) -> None:
        self.calls: list[tuple[str, JobStatus, object]] = []
        self.fail = fail

    async def __call__(self, job: Job) -> None:
        self.calls.append((job.id, job.status, job.context))
        if self.fail:
            self.fail -= 1
            raise RuntimeError("the chat is down")


async def test_a_tracked_job_is_handled_once_with_its_context(fake):
    seen = Seen()
    async with bound_client(fake) as pb:
        pb.on_finished(seen)
        job = await pb.submit(kling(), context={"chat_id": 42})
        assert job.context == {"chat_id": 42}
        await until(lambda: seen.calls, 5)
        await until(lambda: not pb._tracker._tasks, 5)
        (record,) = await pb.tracked_jobs(("handled",))
        assert await pb.tracked_jobs() == []  # nothing left to handle
        assert pb._tracker._jobs == {}  # nor held in memory: a long run stays flat
        with pytest.raises(ValidationError, match="unknown tracked states"):
            await pb.tracked_jobs(("done",))
    assert seen.calls == [(job.id, JobStatus.COMPLETED, {"chat_id": 42})]
    assert record.job_id == job.id
    assert json.loads(record.context) == {"chat_id": 42}


async def test_a_failed_job_is_handled_too(fake):
    fake.script_next(JobScript(outcome="failed", error_code="GENERATION_FAILED"))
    seen = Seen()
    async with bound_client(fake) as pb:
        pb.on_finished(seen)
        job = await pb.submit(kling(), context="user-7")
        await until(lambda: seen.calls, 5)
    assert seen.calls == [(job.id, JobStatus.FAILED, "user-7")]


async def test_an_untracked_job_runs_no_handler(fake):
    seen = Seen()
    async with bound_client(fake) as pb:
        pb.on_finished(seen)
        job = await pb.submit(kling())
        await job.wait()
        assert job.context is None
        assert await pb.ledger.tracked(states=("active", "handled")) == []
    assert seen.calls == []


async def test_a_failing_handler_is_tried_again_then_parked(fake, caplog):
    flaky, broken = Seen(fail=2), Seen(fail=99)
    async with bound_client(fake) as pb:
        pb._tracker.park_after = 3
        pb.on_finished(flaky)
        first = await pb.submit(kling("flaky"), context=1)
        await until(lambda: len(flaky.calls) == 3, 5)
        await until(lambda: not pb._tracker._tasks, 5)
        (handled,) = await pb.ledger.tracked(states=("handled",))
        assert (handled.job_id, handled.failures) == (first.id, 2)

        pb._tracker.handlers[:] = [broken]
        second = await pb.submit(kling("broken"), context=2)
        await until(lambda: len(broken.calls) == 3, 5)
        await until(lambda: not pb._tracker._tasks, 5)
        (parked,) = await pb.failed_handlers()
    assert parked.job_id == second.id
    assert parked.failures == 3
    assert "the chat is down" in (parked.error or "")
    assert "parked" in caplog.text


async def test_a_bad_context_is_refused_before_anything_is_sent(fake):
    async with bound_client(fake) as pb:
        with pytest.raises(ValidationError, match="JSON") as info:
            await pb.submit(kling(), context={"when": object()})
        assert info.value.field == "context"
        with pytest.raises(ValidationError, match="UTF-8"):
            await pb.submit(kling(), context={"name": "a\ud800"})
        with pytest.raises(ValidationError, match="at most 65536"):
            await pb.submit(kling(), context="x" * 70_000)
    assert fake.count("POST", "/v1/jobs/submit") == 0


async def test_a_closed_process_leaves_its_jobs_to_the_next(fake):
    """Closed before the job ended: the next client's resume() handles it, once."""
    fake.clock.autojump = False
    first, later = Seen(), Seen()
    async with bound_client(fake) as pb:
        pb.on_finished(first)
        job = await pb.submit(kling(), context={"chat_id": 7})
    fake.clock.autojump = True
    async with bound_client(fake) as pb:
        pb.on_finished(later)
        (resumed,) = await pb.resume()
        assert (resumed.id, resumed.context) == (job.id, {"chat_id": 7})
        await until(lambda: later.calls, 5)
        await until(lambda: not pb._tracker._tasks, 5)
        assert await pb.resume() == []  # handled: nothing left to take over
    assert first.calls == []
    assert later.calls == [(job.id, JobStatus.COMPLETED, {"chat_id": 7})]


async def test_a_live_process_keeps_its_jobs(fake):
    """Another client's resume() does not take a job whose owner renews its lease."""
    fake.clock.autojump = False
    mine, theirs = Seen(), Seen()
    async with bound_client(fake) as owner, bound_client(fake) as other:
        owner.on_finished(mine)
        other.on_finished(theirs)
        job = await owner.submit(kling(), context="mine")
        assert await other.resume() == []
        fake.clock.autojump = True
        await until(lambda: mine.calls, 5)
        await other.resume()
    assert [c[0] for c in mine.calls] == [job.id]
    assert theirs.calls == []


async def test_a_lost_tracked_submit_is_reconciled_then_handled(fake):
    """Never re-sent: its job is found after the settle horizon, then handled."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    seen = Seen()
    async with bound_client(fake, settle=60) as pb:
        pb.on_finished(seen)
        with pytest.raises(AmbiguousSubmitError):
            await pb.submit(kling(), context={"chat_id": 9})
        await until(lambda: seen.calls, 10)
    (job_id,) = fake.jobs
    assert seen.calls == [(job_id, JobStatus.COMPLETED, {"chat_id": 9})]
    assert fake.count("POST", "/v1/jobs/submit") == 1
    assert fake.ledger.double_charged() == []


class Lost:
    """An on_lost handler that records what it was given."""

    def __init__(self, *, fail: int = 0) -> None:
        self.calls: list[LostSubmit] = []
        self.fail = fail

    async def __call__(self, lost: LostSubmit) -> None:
        self.calls.append(lost)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("the chat is down")


async def test_a_lost_tracked_submit_that_made_no_job_is_told_to_on_lost(fake):
    """
    The answer is lost and no job was made: after the settle horizon the on_lost
    handlers get its context (a failing one is run again); nothing is re-sent.
    """
    fake.inject(Fault.drop_before(), method="POST", path="/v1/jobs/submit")
    lost, seen = Lost(fail=1), Seen()
    async with bound_client(fake, settle=60) as pb:
        pb.on_finished(seen)
        assert pb.on_lost(lost) is lost  # usable as a decorator
        started = fake.clock.time()
        with pytest.raises(AmbiguousSubmitError):
            await pb.submit(kling(), context={"chat_id": 9})
        await until(lambda: len(lost.calls) == 2, 10)
        await until(lambda: not pb._tracker._tasks, 5)
        (record,) = await pb.tracked_jobs(("none",))
    first, again = lost.calls
    assert first == again
    assert first.context == {"chat_id": 9}
    assert first.model == KLING.model_slug
    assert first.attempt == record.attempt
    assert "no job was found" in first.reason
    assert fake.clock.time() - started >= 60  # not before its settle horizon
    assert seen.calls == []
    assert fake.jobs == {}
    assert fake.count("POST", "/v1/jobs/submit") == 1


async def test_a_tracked_submit_its_dead_process_never_sent_is_told_on_resume(fake):
    """
    A record whose process died before its submit was recorded (a lease that ran
    out, no attempt in the ledger): resume tells on_lost, and it ends as none.
    """
    from pixelbyte_async import MemoryLedger, TrackedRecord

    ledger = MemoryLedger()
    now = fake.clock.time()
    await ledger.track(
        TrackedRecord(
            attempt="a" * 32,
            model=KLING.model_slug,
            context=json.dumps({"chat_id": 5}),
            owner="elsewhere:1:abc",
            lease_until=now - 1,
            created_at=now - 100,
            updated_at=now - 100,
        )
    )
    lost = Lost()
    async with bound_client(fake, ledger=ledger) as pb:
        pb.on_lost(lost)
        assert await pb.resume() == []
        await until(lambda: lost.calls, 5)
        await until(lambda: not pb._tracker._tasks, 5)
    (call,) = lost.calls
    assert (call.attempt, call.context) == ("a" * 32, {"chat_id": 5})
    assert "stopped before sending it" in call.reason
    (record,) = await ledger.tracked(states=("none",))
    assert record.attempt == "a" * 32
    assert fake.count("POST", "/v1/jobs/submit") == 0


async def test_without_an_on_lost_handler_a_lost_submit_is_logged_and_none(
    fake, caplog
):
    fake.inject(Fault.drop_before(), method="POST", path="/v1/jobs/submit")
    async with bound_client(fake, settle=60) as pb:
        with pytest.raises(AmbiguousSubmitError):
            await pb.submit(kling(), context="x")
        await until(lambda: not pb._tracker._tasks, 10)
        assert len(await pb.tracked_jobs(("none",))) == 1
    assert "no on_lost handler is registered" in caplog.text


# -- real processes, killed ------------------------------------------------------------

SUBMITTER = textwrap.dedent(
    """
    import asyncio, os, sys
    from pixelbyte_async import KlingO1StartEndFrame, PixelByte

    async def main():
        async with PixelByte(settle=float(os.environ.get("SETTLE", "300"))) as pb:
            async def handler(job):
                print("handling", job.id, flush=True)
                if os.environ.get("DIE_IN_HANDLER"):
                    os.kill(os.getpid(), 9)
                print("handled", job.id, flush=True)

            pb.on_finished(handler)
            if sys.argv[1] == "submit":
                job = await pb.submit(
                    KlingO1StartEndFrame(
                        image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
                    ),
                    context={"chat_id": 42},
                )
                print("submitted", job.id, flush=True)
            else:
                jobs = await pb.resume()
                print("resumed", [j.id for j in jobs], flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def spawn(
    fake: FakePixelByte, *args: str, **env: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SUBMITTER,
        *args,
        env={**subprocess_env(fake), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


#: The lines each process printed, read so far (in any order they came).
_READ: dict[int, list[str]] = {}


async def line_with(proc: asyncio.subprocess.Process, word: str) -> str:
    """The first line *proc* printed that starts with *word* (waiting for it)."""
    assert proc.stdout is not None
    seen = _READ.setdefault(proc.pid, [])
    while True:
        for line in seen:
            if line.startswith(word):
                return line
        raw = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not raw:
            err = await proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"process ended before {word!r}: {err.decode()}")
        seen.append(raw.decode().strip())


async def handled(fake: FakePixelByte, job_id: str) -> None:
    """Wait until the shared ledger says *job_id* was handled."""
    async with bound_client(fake) as pb:
        for _ in range(200):
            records = await pb.ledger.tracked(states=("handled",))
            if any(r.job_id == job_id for r in records):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} was never marked handled")


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()


async def test_kill_9_between_submit_and_finish_then_resume():
    """The job ends while nobody runs; the next process's resume() handles it once."""
    async with FakePixelByte(time_scale=1.0) as fake:
        fake.set_default_script(JobScript(queue_seconds=0.05, processing_seconds=0.6))
        first = await spawn(fake, "submit")
        job_id = (await line_with(first, "submitted")).split()[1]
        await kill(first)  # before the job ends: its handler never ran
        await until(lambda: fake.jobs[job_id].status == "completed", 5)
        second = await spawn(fake, "resume")
        try:
            assert job_id in await line_with(second, "resumed")
            assert (await line_with(second, "handled")).split()[1] == job_id
            await handled(fake, job_id)
        finally:
            await kill(second)
        third = await spawn(fake, "resume")
        try:
            assert await line_with(third, "resumed") == "resumed []"
        finally:
            await kill(third)
        assert len(fake.jobs) == 1


async def test_a_handler_that_kills_its_process_runs_again_once():
    """Handled at least once: the next process runs it again; a third never does."""
    async with FakePixelByte(time_scale=1.0) as fake:
        fake.set_default_script(JobScript(queue_seconds=0.05, processing_seconds=0.1))
        first = await spawn(fake, "submit", DIE_IN_HANDLER="1")
        job_id = (await line_with(first, "handling")).split()[1]
        await first.wait()  # it killed itself inside the handler
        assert first.returncode == -signal.SIGKILL
        second = await spawn(fake, "resume")
        try:
            assert (await line_with(second, "handled")).split()[1] == job_id
            await handled(fake, job_id)
        finally:
            await kill(second)
        third = await spawn(fake, "resume")
        try:
            assert await line_with(third, "resumed") == "resumed []"
        finally:
            await kill(third)


async def test_the_cli_lists_tracked_jobs_for_an_operator(fake, monkeypatch, capsys):
    import anyio
    from pixelbyte_async._cli import main

    broken = Seen(fail=99)
    async with bound_client(fake) as pb:
        pb._tracker.park_after = 1
        pb.on_finished(broken)
        job = await pb.submit(kling(), context={"chat_id": 5})
        await until(lambda: broken.calls, 5)
        await until(lambda: not pb._tracker._tasks, 5)
    monkeypatch.setenv("PIXELBYTE_API_KEY", fake.api_key)
    monkeypatch.setenv("PIXELBYTE_BASE_URL", fake.url)
    requests = len(fake.requests)
    code = await anyio.to_thread.run_sync(main, ["jobs", "tracked", "--json"])
    assert code == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["jobId"], row["state"], row["context"]) == (
        job.id,
        "parked",
        {"chat_id": 5},
    )
    assert row["failures"] == 1
    assert "the chat is down" in row["error"]
    code = await anyio.to_thread.run_sync(
        main, ["jobs", "tracked", "--state", "active"]
    )
    assert (code, capsys.readouterr().out) == (0, "no tracked jobs\n")
    code = await anyio.to_thread.run_sync(main, ["jobs", "tracked"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["JOB", "STATE", "FAILS"]
    assert table[1].split()[:3] == [job.id, "parked", "1"]
    assert len(fake.requests) == requests  # the ledger only: nothing asked of the API


async def test_a_tracked_submit_lost_in_a_killed_process_is_reconciled_not_resent():
    """
    Killed with its submit on the wire: the next process reconciles the attempt
    (after the settle horizon) and handles its job; the submit is never sent again.
    """
    async with FakePixelByte(time_scale=1.0) as fake:
        fake.set_default_script(JobScript(queue_seconds=0.05, processing_seconds=0.1))
        # The API makes the job, but holds its answer: the process dies first.
        fake.inject(
            Fault.late_create(0.05, answer="hang", hold=30),
            method="POST",
            path="/v1/jobs/submit",
        )
        first = await spawn(fake, "submit")
        await until(lambda: len(fake.jobs) == 1, 10)
        await kill(first)
        (job_id,) = fake.jobs
        second = await spawn(fake, "resume", SETTLE="1")
        try:
            assert await line_with(second, "resumed") == "resumed []"  # reconciling
            assert (await line_with(second, "handled")).split()[1] == job_id
        finally:
            await kill(second)
        assert fake.count("POST", "/v1/jobs/submit") == 1
        assert fake.ledger.double_charged() == []


async def test_a_ledger_away_when_a_handler_returns_is_tried_again(fake, caplog):
    """
    The ledger refuses the 'handled' write twice (a Redis outage): the tracker
    records it once it is back, and the handler is not run again meanwhile.
    """
    from pixelbyte_async import LedgerError, MemoryLedger

    class Flaky(MemoryLedger):
        refusals = 2

        async def finish(self, attempt, owner, **kwargs):  # type: ignore[override]
            if kwargs.get("state") == "handled" and self.refusals:
                self.refusals -= 1
                raise LedgerError("the hub's Redis is unreachable")
            return await super().finish(attempt, owner, **kwargs)

    seen = Seen()
    ledger = Flaky()
    async with bound_client(fake, ledger=ledger) as pb:
        pb.on_finished(seen)
        job = await pb.submit(kling(), context="x")
        await until(lambda: not pb._tracker._tasks, 5)
        (record,) = await ledger.tracked(states=("handled",))
    assert record.job_id == job.id
    assert ledger.refusals == 0
    assert len(seen.calls) == 1
    assert "cannot record handled" in caplog.text


async def test_a_resumed_job_with_webhooks_ends_on_its_delivery(tmp_path):
    """
    Resumed where webhooks are set up: the job whose submit named our receiver is
    fed by its delivery (no status polls beyond the one GET that re-attaches it).
    """
    from pixelbyte_async import PixelByte, VirtualClock
    from pixelbyte_async.webhooks import WebhookServer

    clock = VirtualClock(autojump=False)
    ledger = tmp_path / "ledger.sqlite3"
    seen = Seen()
    async with FakePixelByte(clock=clock, allow_http_webhooks=True) as fake:

        def client(server: WebhookServer) -> PixelByte:
            return PixelByte(
                api_key=fake.api_key,
                base_url=fake.url,
                clock=clock,
                webhook=server,
                ledger=ledger,
            )

        first = WebhookServer(fake.webhook_secret, clock=clock)
        async with client(first) as pb:
            job = await pb.submit(kling(), context={"chat_id": 3})
        port = first.port  # the next process listens where the API delivers
        second = WebhookServer(fake.webhook_secret, clock=clock, port=port)
        async with client(second) as pb:
            pb.on_finished(seen)
            (resumed,) = await pb.resume()
            assert resumed.via_webhook
            polled = fake.count("GET", "/v1/jobs/*")
            clock.advance(250)  # the job ends (245 s); its delivery comes
            await fake.deliver_webhooks()
            await until(lambda: seen.calls, 5)
            assert fake.count("GET", "/v1/jobs/*") == polled
    assert seen.calls == [(job.id, JobStatus.COMPLETED, {"chat_id": 3})]


async def test_programs_sharing_a_ledger_take_only_their_own_tracked_jobs(fake):
    """
    A bot and a web app on one key and one machine: each resume() takes only its
    own group's jobs (the bot's handler never gets the app's context).
    """
    fake.clock.autojump = False
    bot_seen, app_seen = Seen(), Seen()
    async with bound_client(fake, tracked_group="bot") as bot:
        bot_job = await bot.submit(kling("bot"), context={"chat_id": 1})
    async with bound_client(fake, tracked_group="web") as app:
        app_job = await app.submit(kling("web"), context={"user_id": "u1"})
    fake.clock.autojump = True
    async with bound_client(fake, tracked_group="bot") as bot:
        bot.on_finished(bot_seen)
        assert [j.id for j in await bot.resume()] == [bot_job.id]
        await until(lambda: bot_seen.calls, 5)
        await until(lambda: not bot._tracker._tasks, 5)
        assert await bot.failed_handlers() == []
    async with bound_client(fake, tracked_group="web") as app:
        app.on_finished(app_seen)
        assert [j.id for j in await app.resume()] == [app_job.id]
        await until(lambda: app_seen.calls, 5)
    assert bot_seen.calls == [(bot_job.id, JobStatus.COMPLETED, {"chat_id": 1})]
    assert app_seen.calls == [(app_job.id, JobStatus.COMPLETED, {"user_id": "u1"})]
    with pytest.raises(ValidationError):
        bound_client(fake, tracked_group=" ")
