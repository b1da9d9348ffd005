"""
`SyncPixelByte`: the SDK from synchronous code, a facade over `PixelByte`.

These tests are plain functions with no event loop of their own, as a script, a
Django view or a Celery task would be.  The fake API serves from a thread of its
own (anyio's blocking portal); the client shares its virtual clock, so a 240 s
job ends at once and no test sleeps for the SDK.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal
from pixelbyte_async import (
    AmbiguousSubmitError,
    ClientClosedError,
    EventLoopMismatch,
    InsufficientBalance,
    Job,
    JobFailed,
    JobStatus,
    KlingO1StartEndFrame,
    LostSubmit,
    NotFound,
    PixelByte,
    RetryPolicy,
    SyncJob,
    SyncPixelByte,
    ValidationError,
    WaitTimeout,
)
from pixelbyte_async.testing import FakePixelByte, Fault, JobScript


REQUEST = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
)
KLING = REQUEST.model_slug
LOOP_THREAD = "pixelbyte-sync"


@pytest.fixture(name="fake")
def _fake() -> Iterator[FakePixelByte]:
    """A `FakePixelByte` serving from its own thread and loop."""
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(FakePixelByte()) as fake,
    ):
        yield fake


def bound(fake: FakePixelByte, **kwargs: object) -> SyncPixelByte:
    """A sync client pointed at *fake*, on its virtual clock; no jitter."""
    kwargs.setdefault("retry", RetryPolicy(jitter=False, wait_initial=0.5))
    return SyncPixelByte(
        api_key=fake.api_key,
        base_url=fake.url,
        clock=fake.clock,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(name="pb")
def _pb(fake: FakePixelByte) -> Iterator[SyncPixelByte]:
    with bound(fake) as pb:
        yield pb


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll *condition* (state another thread changes) every 10 ms."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD]


# -- a script ------------------------------------------------------------------------


def test_a_script_submits_waits_and_downloads(fake, tmp_path):
    """No event loop in sight: submit, wait, download a real file, close."""
    assert loop_threads() == []
    with bound(fake) as pb:
        job = pb.submit(REQUEST)
        assert isinstance(job, SyncJob)
        assert (job.status, job.cost_micro_cents) == (JobStatus.PENDING, 250_000)

        done = job.wait(timeout=900)
        path = done.download(tmp_path / "out.mp4")

        assert done is job
        assert done.status is JobStatus.COMPLETED
        assert done.done
        assert done.video_url is not None
        assert path == tmp_path / "out.mp4"
        assert path.stat().st_size > 0
        poster = done.download_poster(tmp_path)
        assert done.poster_url is not None
        assert poster == tmp_path / f"{job.id}.poster.jpg"
        assert len(loop_threads()) == 1
    assert pb.closed
    assert loop_threads() == []
    assert fake.ledger.double_charged() == []


def test_the_handle_reads_through_to_the_job(pb):
    """Every property of `Job` reads the same on the `SyncJob`."""
    job = pb.submit(REQUEST)
    inner = job._job
    for name in (
        "info",
        "id",
        "status",
        "model",
        "progress",
        "cost_micro_cents",
        "estimated_completion_time",
        "video_url",
        "outputs",
        "poster_url",
        "error",
        "done",
        "input",
        "via_webhook",
        "context",
    ):
        assert getattr(job, name) == getattr(inner, name), name
    assert job.due() == inner.due()
    assert job.raise_for_status() is job
    assert repr(job) == f"Sync{inner!r}"


def test_run_get_job_list_jobs_and_cancel(pb, fake):
    """run returns a finished handle; list_jobs a list; cancel its refund."""
    done = pb.run(REQUEST, timeout=900)
    again = pb.get_job(done.id)
    pending = pb.submit(REQUEST)

    jobs = pb.list_jobs(limit=2)
    refund = pending.cancel()

    assert done.status is JobStatus.COMPLETED
    assert again.id == done.id
    assert isinstance(jobs, list)
    assert [type(j) for j in jobs] == [SyncJob, SyncJob]
    assert {j.id for j in jobs} == {done.id, pending.id}
    assert refund == 250_000
    assert pending.status is JobStatus.CANCELLED
    assert pending.refresh().status is JobStatus.CANCELLED


def test_catalogue_estimates_and_uploads(pb, fake):
    """The calls that are not about jobs come back as the async client's values."""
    png = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01"
        b"\x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f"
        b"\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
    )

    local = pb.estimate(REQUEST, local=True)
    remote = pb.estimate(REQUEST)
    models = pb.models()
    model = pb.model(KLING)
    url = pb.upload(png)

    assert local.estimated_cost_micro_cents == 250_000
    assert remote.estimated_cost_micro_cents == 250_000
    assert KLING in {m.slug for m in models}
    assert model.slug == KLING
    assert url.startswith(fake.cdn_url)
    assert pb.settle == 300
    assert pb.config.api_key == fake.api_key
    assert pb.jobs_in_flight == 0


def test_watch_is_a_sync_iterator(pb):
    """watch() yields each change; leaving early stops the async watch too."""
    job = pb.submit(REQUEST)

    seen = [info.status for info in job.watch(timeout=900)]

    assert seen[0] is JobStatus.PENDING
    assert seen[-1] is JobStatus.COMPLETED
    assert seen == sorted(set(seen), key=seen.index)  # changes only

    other = pb.submit(REQUEST)
    for info in other.watch():
        assert info.status is JobStatus.PENDING
        assert other._job._watchers == 1
        break
    assert other._job._watchers == 0


def test_tracked_jobs_run_plain_handlers_in_a_worker_thread(pb, tmp_path):
    """on_finished takes a plain function; it runs off the loop and may block."""
    seen: list[tuple[str, JobStatus, object, str, int]] = []
    handled = threading.Event()

    @pb.on_finished
    def deliver(job: SyncJob) -> None:
        size = job.download(tmp_path / f"{job.id}.mp4").stat().st_size
        seen.append(
            (job.id, job.status, job.context, threading.current_thread().name, size)
        )
        handled.set()

    job = pb.submit(REQUEST, context={"chat_id": 42})
    assert handled.wait(10)

    [(job_id, status, context, thread, size)] = seen
    assert (job_id, status, context) == (job.id, JobStatus.COMPLETED, {"chat_id": 42})
    assert job.context == {"chat_id": 42}
    assert thread not in {LOOP_THREAD, threading.current_thread().name}
    assert size > 0
    assert pb.resume() == []
    assert pb.failed_handlers() == []


def test_on_finished_refuses_async_handlers(pb):
    """An async handler belongs on a PixelByte: a TypeError says so."""

    async def handler(job: Job) -> None: ...

    with pytest.raises(TypeError, match="plain function"):
        pb.on_finished(handler)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="plain function"):
        pb.on_lost(handler)  # type: ignore[arg-type]


def test_a_lost_tracked_submit_runs_a_plain_on_lost_handler(fake):
    """on_lost takes a plain function too, run in a worker thread."""
    fake.inject(Fault.drop_before(), method="POST", path="/v1/jobs/submit")
    told: list[tuple[object, str]] = []
    done = threading.Event()
    with bound(fake, settle=60) as pb:

        @pb.on_lost
        def tell(lost: LostSubmit) -> None:
            told.append((lost.context, threading.current_thread().name))
            done.set()

        with pytest.raises(AmbiguousSubmitError):
            pb.submit(REQUEST, context={"chat_id": 3})
        assert done.wait(10)
    [(context, thread)] = told
    assert context == {"chat_id": 3}
    assert thread not in {LOOP_THREAD, threading.current_thread().name}


# -- threads -------------------------------------------------------------------------


def test_eight_threads_share_one_client(fake, tmp_path):
    """
    Eight threads each run a job through one client: one loop thread, and the
    client's job limit holds across them (the fake would answer 429 past 3).
    """
    fake.concurrent_job_limit = 3
    names: set[str] = set()

    def one(n: int) -> tuple[str, JobStatus, int]:
        job = pb.submit(
            KlingO1StartEndFrame(
                image_url="https://e.x/a.jpg",
                end_image_url="https://e.x/b.jpg",
                prompt=f"thread {n}",
            )
        )
        done = job.wait(timeout=1800)
        size = done.download(tmp_path / f"{n}.mp4").stat().st_size
        names.update(t.name for t in loop_threads())
        return done.id, done.status, size

    with bound(fake, max_concurrent_jobs=3) as pb, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))

    assert len({job_id for job_id, _, _ in results}) == 8
    assert {status for _, status, _ in results} == {JobStatus.COMPLETED}
    assert all(size > 0 for _, _, size in results)
    assert names == {LOOP_THREAD}
    assert fake.count("POST", "/v1/jobs/submit") == 8  # never a 429, never resent
    assert fake.ledger.double_charged() == []


# -- the wrong thread ----------------------------------------------------------------


def test_in_an_async_def_it_refuses_before_blocking(pb, fake):
    """From a running loop's thread: EventLoopMismatch (a RuntimeError), nothing sent."""

    async def view() -> None:
        with pytest.raises(EventLoopMismatch, match="use PixelByte instead"):
            pb.submit(REQUEST)
        with pytest.raises(RuntimeError, match="running an event loop"):
            pb.get_job("job_000000000000")
        with pytest.raises(EventLoopMismatch):
            SyncPixelByte(api_key=fake.api_key, base_url=fake.url)
        with pytest.raises(EventLoopMismatch):
            pb.close()

    asyncio.run(view())

    assert fake.requests == []
    assert not pb.closed
    assert pb.get_job(pb.submit(REQUEST).id).status is JobStatus.PENDING


def test_from_its_own_loop_it_refuses_instead_of_deadlocking(pb, fake):
    """A call made on the client's own loop thread raises at once."""

    async def inside() -> None:
        pb.models()

    with pytest.raises(EventLoopMismatch, match="'async def'"):
        pb._call(inside, "models")
    assert fake.requests == []


# -- closing -------------------------------------------------------------------------


def test_close_is_idempotent_and_stops_the_loop_thread(fake):
    """close() twice is harmless; then calls raise ClientClosedError at once."""
    pb = bound(fake)
    pb.submit(REQUEST)
    [thread] = loop_threads()

    pb.close()
    pb.close()
    with pb:
        pass

    assert pb.closed
    assert not thread.is_alive()
    assert "state='closed'" in repr(pb)
    with pytest.raises(ClientClosedError, match="with SyncPixelByte"):
        pb.submit(REQUEST)
    assert fake.count("POST", "/v1/jobs/submit") == 1


def test_close_ends_calls_running_in_other_threads(fake):
    """A wait parked in another thread ends with ClientClosedError, not a hang."""
    fake.clock.autojump = False  # the wait stays parked until the clock moves
    pb = bound(fake)
    job = pb.submit(REQUEST)
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            job.wait(timeout=900)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    until(lambda: job._job._watchers == 1)

    pb.close()
    thread.join(10)

    assert not thread.is_alive()
    [error] = outcome
    assert isinstance(error, ClientClosedError)
    assert loop_threads() == []
    assert fake.jobs[job.id].cancelled_at is None  # the paid job goes on


def test_a_collected_client_warns_and_closes(fake):
    """Garbage-collected while open: a ResourceWarning, and its thread ends."""
    pb = bound(fake)
    [thread] = loop_threads()

    with pytest.warns(ResourceWarning, match="unclosed SyncPixelByte"):
        del pb  # its last reference: collected at once

    assert not thread.is_alive()


def test_a_handle_keeps_its_client_alive(fake):
    """A SyncJob keeps its client: dropping the client's name closes nothing."""
    pb = bound(fake)
    job = pb.submit(REQUEST)
    del pb
    gc.collect()

    assert job.wait(timeout=900).status is JobStatus.COMPLETED
    job._client.close()


AT_EXIT = """
import atexit

seen = {}
# Registered before the SDK is imported, so it runs after the SDK's own handler.
atexit.register(lambda: print("closed:", seen["pb"].closed, "threads:", seen["threads"]()))

import threading

from anyio.from_thread import start_blocking_portal
from pixelbyte_async import KlingO1StartEndFrame, SyncPixelByte
from pixelbyte_async.testing import FakePixelByte

with start_blocking_portal() as portal, portal.wrap_async_context_manager(FakePixelByte()) as fake:
    pb = SyncPixelByte(api_key=fake.api_key, base_url=fake.url, clock=fake.clock)
    job = pb.submit(KlingO1StartEndFrame(image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"))
    print("status:", job.wait(timeout=900).status.value)
    seen["pb"] = pb
    seen["threads"] = lambda: [t.name for t in threading.enumerate() if t.name == "pixelbyte-sync"]
# the script ends without pb.close()
"""


def test_an_unclosed_client_is_closed_at_exit(tmp_path):
    """A script that forgets close() exits at once, its client closed, quietly."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(AT_EXIT))

    result = subprocess.run(  # noqa: S603 -- our interpreter, our script
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "status: completed",
        "closed: True threads: []",
    ]


def test_a_forked_child_gets_an_error_instead_of_a_hang(pb):
    """A client made before a fork has no loop thread in the child: it says so."""
    pb._runtime._pid = -1  # as seen from a child process
    try:
        with pytest.raises(ClientClosedError, match="another process"):
            pb.get_job("job_000000000000")
    finally:
        pb._runtime._pid = os.getpid()


# -- errors --------------------------------------------------------------------------


def test_bad_input_raises_validation_error_before_anything_is_sent(pb, fake):
    """ValidationError, as from PixelByte; the fake saw no request."""
    with pytest.raises(ValidationError) as bad_text:
        pb.submit(KLING, {"prompt": "x\ud800y", "duration": "5"})
    with pytest.raises(ValidationError):
        pb.get_job("")
    with pytest.raises(ValidationError):
        pb.list_jobs(page_size=0)

    assert bad_text.value.field is not None
    assert fake.requests == []


def test_api_and_job_errors_keep_their_types(pb, fake):
    """NotFound, InsufficientBalance, JobFailed and WaitTimeout cross unchanged."""
    with pytest.raises(NotFound):
        pb.get_job("job_000000000000")

    fake.script_next(JobScript(outcome="failed", error_code="CONTENT_POLICY"))
    failing = pb.submit(REQUEST)
    with pytest.raises(JobFailed) as failed:
        failing.wait(timeout=900)
    assert failed.value.code == "CONTENT_POLICY"
    assert isinstance(failed.value.job, Job)  # the async handle, as documented
    assert failed.value.job is failing._job

    slow = pb.submit(REQUEST)
    with pytest.raises(WaitTimeout) as late:
        slow.wait(timeout=60)
    assert late.value.job is slow._job

    fake.balance_micro_cents = 0
    with pytest.raises(InsufficientBalance):
        pb.submit(REQUEST)


def test_a_wait_ends_at_its_timeout_in_real_time(fake):
    """With the real clock, wait(timeout=...) returns when the deadline passes."""
    with SyncPixelByte(api_key=fake.api_key, base_url=fake.url) as pb:
        job = pb.submit(REQUEST)  # the fake's clock stands still: it stays pending
        started = time.monotonic()
        with pytest.raises(WaitTimeout):
            job.wait(timeout=0.05)
        elapsed = time.monotonic() - started

    assert 0.05 <= elapsed < 5


def test_a_lost_answer_is_ambiguous_and_reconciled(pb, fake):
    """AmbiguousSubmitError crosses as is; reconcile finds the job it created."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")

    with pytest.raises(AmbiguousSubmitError) as lost:
        pb.submit(REQUEST)
    found = pb.reconcile(lost.value)

    [job_id] = fake.jobs
    assert isinstance(found, SyncJob)
    assert found.id == job_id
    assert fake.count("POST", "/v1/jobs/submit") == 1
    assert fake.ledger.double_charged() == []


# -- Ctrl-C --------------------------------------------------------------------------


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signals reach the main thread only",
)
def test_ctrl_c_stops_the_wait_and_the_client_goes_on(pb, fake):
    """
    SIGINT during a blocking wait raises KeyboardInterrupt here, cancels the
    wait on the loop (not the paid job), and the client keeps working.
    """
    fake.clock.autojump = False  # the wait parks until the clock moves
    job = pb.submit(REQUEST)
    main = threading.main_thread().ident
    assert main is not None

    def press_ctrl_c() -> None:
        until(lambda: job._job._watchers == 1)
        signal.pthread_kill(main, signal.SIGINT)

    helper = threading.Thread(target=press_ctrl_c)
    helper.start()
    with pytest.raises(KeyboardInterrupt):
        job.wait(timeout=900)
    helper.join()

    until(lambda: job._job._watchers == 0)  # the wait's task was cancelled
    fake.clock.autojump = True
    assert fake.jobs[job.id].cancelled_at is None
    assert pb.get_job(job.id).wait(timeout=900).status is JobStatus.COMPLETED


# -- the surface ---------------------------------------------------------------------

#: Public names of the async classes that have no blocking twin, and why.
NOT_MIRRORED = {
    "aclose": "close()",
    "clock": "async sleep; the client's clock is an argument",
    "ledger": "an async API; pass a ledger in instead",
    "run_batch": "an async context manager; use the batch command or PixelByte",
}


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_every_public_name_of_the_async_classes_has_a_twin():
    """PixelByte's and Job's public names exist on the facade (or are listed here)."""
    client = {*public(PixelByte), "config", "clock"}  # instance attributes
    assert sorted(client - public(SyncPixelByte) - NOT_MIRRORED.keys()) == []
    job = {*public(Job), "input", "via_webhook", "context"}
    assert sorted(job - public(SyncJob)) == []


@pytest.mark.parametrize(
    ("sync", "async_"),
    [
        (SyncPixelByte.__init__, PixelByte.__init__),
        (SyncPixelByte.submit, PixelByte.submit),
        (SyncPixelByte.run, PixelByte.run),
        (SyncPixelByte.get_job, PixelByte.get_job),
        (SyncPixelByte.list_jobs, PixelByte.list_jobs),
        (SyncPixelByte.reconcile, PixelByte.reconcile),
        (SyncPixelByte.audit, PixelByte.audit),
        (SyncPixelByte.estimate, PixelByte.estimate),
        (SyncPixelByte.models, PixelByte.models),
        (SyncPixelByte.model, PixelByte.model),
        (SyncPixelByte.upload, PixelByte.upload),
        (SyncPixelByte.upload_file, PixelByte.upload_file),
        (SyncPixelByte.use_webhooks, PixelByte.use_webhooks),
        (SyncPixelByte.on_finished, PixelByte.on_finished),
        (SyncPixelByte.on_lost, PixelByte.on_lost),
        (SyncPixelByte.resume, PixelByte.resume),
        (SyncPixelByte.failed_handlers, PixelByte.failed_handlers),
        (SyncJob.wait, Job.wait),
        (SyncJob.refresh, Job.refresh),
        (SyncJob.watch, Job.watch),
        (SyncJob.cancel, Job.cancel),
        (SyncJob.download, Job.download),
        (SyncJob.download_poster, Job.download_poster),
    ],
    ids=lambda f: f.__qualname__,
)
def test_same_parameters_as_the_async_method(sync, async_):
    """Same names, kinds and defaults: code moves between the two unchanged."""

    def shape(func: Callable[..., object]) -> list[tuple[str, object, str]]:
        return [
            (p.name, p.kind, repr(p.default) if p.default is not p.empty else "")
            for p in inspect.signature(func).parameters.values()
        ]

    sync_shape, async_shape = shape(sync), shape(async_)
    if sync is SyncPixelByte.__init__:  # the "unset" sentinels are objects of each
        sync_shape = [(n, k, d if "object" not in d else "") for n, k, d in sync_shape]
        async_shape = [
            (n, k, d if "object" not in d else "") for n, k, d in async_shape
        ]
    assert sync_shape == async_shape


def test_the_package_imports_it_on_first_use():
    """`import pixelbyte_async` does not load the facade; the names resolve."""
    code = (
        "import sys, pixelbyte_async as p\n"
        "assert 'pixelbyte_async._sync' not in sys.modules\n"
        "assert p.SyncPixelByte.__name__ == 'SyncPixelByte'\n"
        "assert p.SyncJob.__module__ == 'pixelbyte_async._sync._job'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # noqa: S603 -- our own code


def test_the_docs_page_exists():
    """docs/sync.md is in the Guides toctree."""
    docs = Path(__file__).parent.parent / "docs"
    assert (docs / "sync.md").exists()
    guides = (docs / "index.md").read_text().split(":caption: Guides", 1)[1]
    assert "\nsync\n" in guides.split("```", 1)[0]
