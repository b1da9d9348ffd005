"""
The Django recipe answers what it promises: plain sync views with `SyncPixelByte`.

The code is the recipe's own, run from ``docs/recipes/django.md`` with the real
Django (settings configured in-process) and driven by Django's real test client:
the views submit and report through a `SyncPixelByte` bound to a `FakePixelByte`
that serves from a thread of its own, on the fake's virtual clock.  The page itself
runs its own test, with real webhook deliveries through the webhook view.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
import pytest
from anyio.from_thread import start_blocking_portal
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings
from pixelbyte_async import KlingO1StartEndFrame, RetryPolicy, SyncPixelByte
from pixelbyte_async.testing import FakePixelByte, Fault
from pixelbyte_async.webhooks import WebhookEvent, signature_headers

from test_recipes_bots import load_recipe
from test_recipes_web import BAD_BODIES, END, SECRET, START, delivery


PUBLIC_URL = "https://app.example.com/pixelbyte/webhook"


@pytest.fixture(name="django_recipe")
def _django_recipe(monkeypatch) -> Iterator[dict[str, Any]]:
    if not settings.configured:  # once per process (the docs page may have done it)
        settings.configure(
            ALLOWED_HOSTS=["testserver"],
            MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
            SECRET_KEY="tests-only",
        )
        django.setup()
    ns: dict[str, Any] = {}

    def from_the_page(name: str) -> Any:
        try:
            return ns[name]
        except KeyError:
            raise AttributeError(name) from None

    # The page's `from hooks.pixelbyte import ...` and `from hooks.views import ...`
    for name in ("hooks.pixelbyte", "hooks.views"):
        module = types.ModuleType(name)
        module.__getattr__ = from_the_page  # type: ignore[method-assign]
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "hooks", types.ModuleType("hooks"))
    urls = types.ModuleType("recipe_urls")
    with override_settings(
        ROOT_URLCONF=urls,
        PIXELBYTE_WEBHOOK_SECRET=SECRET,
        PIXELBYTE_WEBHOOK_URL=PUBLIC_URL,
        MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
        ALLOWED_HOSTS=["testserver"],
    ):
        load_recipe("django", ns)
        urls.urlpatterns = ns["urlpatterns"]
        try:
            yield ns
        finally:
            if ns.get("_client") is not None:
                ns["_client"].close()


@pytest.fixture(name="fake")
def _fake() -> Iterator[FakePixelByte]:
    """A `FakePixelByte` serving from its own thread and loop."""
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(FakePixelByte()) as fake,
    ):
        yield fake


@pytest.fixture(name="made")
def _made(django_recipe, fake) -> list[SyncPixelByte]:
    """What `SyncPixelByte()` means in the recipe here: bound to the fake."""
    made: list[SyncPixelByte] = []

    def bound() -> SyncPixelByte:
        pb = SyncPixelByte(
            api_key=fake.api_key,
            base_url=fake.url,
            clock=fake.clock,
            retry=RetryPolicy(jitter=False, wait_initial=0.5),
        )
        made.append(pb)
        return pb

    django_recipe["SyncPixelByte"] = bound
    return made


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll *condition* (state another thread changes) every 10 ms."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def post_transition(body: Any = None) -> Any:
    return Client().post(
        "/transitions",
        {"start": START, "end": END} if body is None else body,
        content_type="application/json",
    )


# -- submitting and reporting --------------------------------------------------------


def test_start_answers_202_and_the_status_view_follows_the_job(django_recipe, made):
    """POST is 202 with a Location; GET there reports the job until it is done."""
    started = post_transition()
    assert started.status_code == 202, started.content
    body = started.json()
    assert started["Location"] == f"/transitions/{body['id']}"
    assert (body["status"], body["video_url"]) == ("pending", None)

    [pb] = made
    pb.get_job(body["id"]).wait(timeout=900)  # what a task would do
    status = Client().get(started["Location"]).json()

    assert status["status"] == "completed"
    assert status["video_url"].endswith(".mp4")
    assert pb.jobs_in_flight == 0


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
@pytest.mark.usefixtures("django_recipe", "made")
def test_bad_requests_are_4xx(fake, body, status, message):
    """What the client got wrong is a 4xx with a message, never a 500; nothing is sent."""
    response = post_transition(body)

    assert response.status_code == status
    assert message in response.content.decode()
    assert fake.requests == []


def test_empty_balance_is_402(django_recipe, made, fake):
    """InsufficientBalance is 402 Payment Required, with a message."""
    fake.balance_micro_cents = 0

    response = post_transition()

    assert (response.status_code, response.content) == (
        402,
        b"The PixelByte balance is used up.",
    )


def test_refusal_is_502(django_recipe, made, fake):
    """Another refusal by PixelByte is a 502 that says why, not a 500."""
    fake.inject(Fault.status(403, "MODEL_ACCESS_DENIED"), path="/v1/jobs/submit")

    response = post_transition()

    assert response.status_code == 502
    assert b"MODEL_ACCESS_DENIED" in response.content


def test_lost_answer_is_502_and_the_job_is_found(django_recipe, made, fake, caplog):
    """A submit without an answer is 502; a thread finds the job it created."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")

    with caplog.at_level(logging.WARNING):
        response = post_transition()
        assert response.status_code == 502
        [job_id] = fake.jobs
        until(lambda: f"a submit without an answer created {job_id}" in caplog.text)

    assert fake.count("POST", "/v1/jobs/submit") == 1
    assert fake.ledger.double_charged() == []


def test_unknown_job_is_404(django_recipe, made):
    """A job id the API does not know is 404."""
    response = Client().get("/transitions/job_000000000000")

    assert response.status_code == 404


def test_request_threads_share_one_client(django_recipe, made, fake):
    """
    Eight request threads at once: one client made (under the recipe's lock), one
    loop thread, eight jobs.
    """
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post_transition(), range(8)))

    assert [a.status_code for a in answers] == [202] * 8
    assert len({a.json()["id"] for a in answers}) == 8
    assert len(made) == 1
    assert [t.name for t in threading.enumerate()].count("pixelbyte-sync") == 1


def test_a_client_made_before_a_fork_is_replaced(django_recipe, made):
    """In a forked child the parent's client is closed: the recipe makes another."""
    first = django_recipe["pixelbyte"]()
    first._runtime._pid = -1  # as a forked child sees it

    second = django_recipe["pixelbyte"]()

    assert first.closed
    assert second is not first
    assert made == [first, second]
    first._runtime._pid = second._runtime._pid
    first.close()


# -- the webhook view ----------------------------------------------------------------


def test_webhook_view_ends_a_wait_parked_on_another_threads_loop(django_recipe):
    """
    The sync view, under Django's real test client in this thread, ends a wait
    parked on an event loop running in another thread (in asyncio debug mode,
    which raises on any loop call from the wrong thread).
    """
    receiver = django_recipe["receiver"]
    parked = threading.Event()
    result: dict[str, WebhookEvent | BaseException] = {}

    async def wait_for_delivery() -> WebhookEvent:
        future = receiver.future_for("job_django000001")
        parked.set()
        try:
            return await asyncio.wait_for(future, 10)
        finally:
            receiver.release("job_django000001")

    def loop_thread() -> None:
        try:
            result["event"] = asyncio.run(wait_for_delivery(), debug=True)
        except BaseException as exc:  # report it to the test thread
            result["event"] = exc

    thread = threading.Thread(target=loop_thread, name="pixelbyte-loop")
    thread.start()
    assert parked.wait(10)
    body = delivery("job_django000001")

    response = Client(enforce_csrf_checks=True).post(
        "/pixelbyte/webhook?pb_attempt=att_django",
        body,
        content_type="application/json",
        headers=signature_headers(body, SECRET),
    )
    thread.join(10)

    assert (response.status_code, response.content) == (200, b"ok")
    assert not thread.is_alive()
    event = result["event"]
    assert isinstance(event, WebhookEvent), event
    assert event.job_id == "job_django000001"
    assert event.attempt == "att_django"  # request.get_full_path() kept the query
    assert receiver.job_for_attempt("att_django") == "job_django000001"


def test_webhook_view_refuses_what_it_must(django_recipe):
    """Forged 401, oversized 413, GET 405; a repeated delivery is 200 duplicate."""
    client = Client(enforce_csrf_checks=True)
    body = delivery()

    def post(data: bytes, secret: str = SECRET) -> tuple[int, bytes]:
        response = client.post(
            "/pixelbyte/webhook",
            data,
            content_type="application/json",
            headers=signature_headers(data, secret),
        )
        return response.status_code, response.content

    huge = b"{" + b" " * (300 * 1024) + b"}"
    assert post(body) == (200, b"ok")
    assert post(body) == (200, b"duplicate")
    assert post(body, "whsec_wrong") == (401, b"mismatch")
    assert post(huge) == (413, b"too_large")
    # Over Django's own DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB): still 413, not its
    # 400 page (issue 25), and nothing past the receiver's limit is read.
    assert post(b"{" + b" " * (3 * 1024 * 1024) + b"}") == (413, b"too_large")
    assert client.get("/pixelbyte/webhook").status_code == 405


def test_a_delivery_ends_a_sync_wait(django_recipe, made, fake):
    """
    The recipe's client uses the receiver: a delivery through the webhook view ends
    a `SyncJob.wait` blocked in another thread, with no status poll.
    """
    fake.clock.autojump = False  # time moves only when the test says so
    pb = django_recipe["pixelbyte"]()
    job = pb.submit(KlingO1StartEndFrame(image_url=START, end_image_url=END))
    outcome: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: outcome.update(job=job.wait(timeout=900)))
    waiter.start()
    until(lambda: job._job._watchers == 1)
    fake.reset_records()

    body = delivery(job.id)
    response = Client().post(
        "/pixelbyte/webhook",
        body,
        content_type="application/json",
        headers=signature_headers(body, SECRET),
    )
    waiter.join(10)

    assert response.status_code == 200
    assert not waiter.is_alive()
    assert outcome["job"].status.value == "completed"
    assert fake.requests == []  # no GET: the delivery ended the wait
