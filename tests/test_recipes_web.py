"""
The web recipes answer what they promise, with the real frameworks.

The code is the recipes' own, run from ``docs/recipes/{aiohttp,fastapi}.md``: the
aiohttp app through aiohttp's test client, the FastAPI app through httpx's
``ASGITransport`` (its lifespan entered by the test) and Starlette's real
``TestClient``, with ``PixelByte`` bound to a `FakePixelByte` on a clock that moves
only when told (`run_until_handled`).  Both submit tracked jobs with the user's id
as context; an ``on_finished`` handler writes the outcome into a dict standing for
the app's database, and ``GET /jobs/{id}`` reads it, across a restart too.  The
Django recipe's tests are in ``test_recipes_django_sync.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fastapi.testclient import TestClient as StarletteTestClient
from pixelbyte_async import PixelByte
from pixelbyte_async.testing import FakePixelByte, Fault, JobScript
from pixelbyte_async.webhooks import signature_headers

from conftest import bound_client
from recipe_bot_process import load_recipe, run_until_handled


SECRET = "whsec_recipes"
START = "https://example.com/sunrise.jpg"
END = "https://example.com/night.jpg"
FRAMES = {"start": START, "end": END}
ADA = {"X-User-Id": "ada"}
BOB = {"X-User-Id": "bob"}


def delivery(job_id: str = "job_abc123def456") -> bytes:
    """A completed job's webhook body, as the API sends it."""
    return json.dumps(
        {"jobId": job_id, "status": "completed", "output": "https://cdn.example/x.mp4"}
    ).encode()


BAD_BODIES = [
    ("not-json", b"not JSON", 400, "The body must be a JSON object."),
    ("empty", b"", 400, "The body must be a JSON object."),
    ("not-utf8", b"\xff\xfe{}", 400, "The body must be a JSON object."),
    ("array", b'["https://a/x.jpg", "https://a/y.jpg"]', 400, "must be a JSON object"),
    ("string", b'"hello"', 400, "The body must be a JSON object."),
    ("null", b"null", 400, "The body must be a JSON object."),
    ("no-frames", b"{}", 422, "start and end must be https:// URLs."),
    (
        "http-frame",
        json.dumps({"start": "http://example.com/a.jpg", "end": END}).encode(),
        422,
        "start and end must be https:// URLs.",
    ),
    (
        "local-path",
        json.dumps({"start": "/etc/passwd", "end": END}).encode(),
        422,
        "start and end must be https:// URLs.",
    ),
    (
        "frame-not-a-string",
        json.dumps({"start": ["https://a/x.jpg"], "end": END}).encode(),
        422,
        "start and end must be https:// URLs.",
    ),
    (
        "prompt-too-long",
        json.dumps({**FRAMES, "prompt": "x" * 3000}).encode(),
        422,
        "prompt",
    ),
    (
        "prompt-not-a-string",
        json.dumps({**FRAMES, "prompt": 42}).encode(),
        422,
        "prompt",
    ),
]

#: How each job ends, and what its row then says.
OUTCOMES = [
    ("completed", JobScript(), {"status": "completed", "error": None}),
    (
        "failed",
        JobScript(outcome="failed", error_message="Generation failed."),
        {"status": "failed", "video_url": None, "error": "Generation failed."},
    ),
]


# -- aiohttp --------------------------------------------------------------------------


@pytest.fixture(name="aiohttp_recipe")
def _aiohttp_recipe(fake: FakePixelByte) -> dict[str, Any]:
    fake.clock.autojump = False  # time moves in run_until_handled
    ns = load_recipe("aiohttp")
    ns["PixelByte"] = lambda: bound_client(fake)  # what `PixelByte()` means here
    return ns


@pytest.fixture(name="http")
async def _http(aiohttp_recipe) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(aiohttp_recipe["make_app"]())) as client:
        yield client


def aiohttp_pb(ns: dict[str, Any], client: TestClient[Any, Any]) -> PixelByte:
    return client.server.app[ns["PB"]]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
async def test_aiohttp_bad_requests_are_4xx(http, fake, body, status, message):
    """What the client got wrong is a 4xx with a message, never a 500; nothing is sent."""
    response = await http.post(
        "/jobs", data=body, headers={"Content-Type": "application/json", **ADA}
    )

    assert response.status == status
    assert message in await response.text()
    assert fake.requests == []


@pytest.mark.anyio
async def test_aiohttp_without_a_user_is_401(http, fake):
    """No signed-in user: 401 for every route, before anything is read or sent."""
    started = await http.post("/jobs", json=FRAMES)
    status = await http.get("/jobs/job_000000000000")
    listed = await http.get("/jobs")

    assert [r.status for r in (started, status, listed)] == [401, 401, 401]
    assert fake.requests == []


@pytest.mark.anyio
async def test_aiohttp_empty_balance_is_402(http, fake):
    """InsufficientBalance is 402 Payment Required, with a message."""
    fake.balance_micro_cents = 0

    response = await http.post("/jobs", json=FRAMES, headers=ADA)

    assert response.status == 402
    assert await response.text() == "The PixelByte balance is used up."


@pytest.mark.anyio
async def test_aiohttp_refusal_is_502(http, fake):
    """Another refusal by PixelByte is a 502 that says why, not a 500."""
    fake.inject(Fault.status(403, "MODEL_ACCESS_DENIED"), path="/v1/jobs/submit")

    response = await http.post("/jobs", json=FRAMES, headers=ADA)

    assert response.status == 502
    assert "MODEL_ACCESS_DENIED" in await response.text()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("script", "outcome"),
    [case[1:] for case in OUTCOMES],
    ids=[case[0] for case in OUTCOMES],
)
async def test_aiohttp_status_page_shows_what_the_handler_recorded(
    aiohttp_recipe, http, fake, script, outcome
):
    """
    202 with the job's row (pending, the user's id); the handler writes the
    outcome, keyed by job id; the status page and the user's list read it, and
    another user gets 404.
    """
    fake.script_next(script)

    started = await http.post("/jobs", json=FRAMES, headers=ADA)
    assert started.status == 202
    body = await started.json()
    assert (body["status"], body["user_id"]) == ("pending", "ada")
    assert started.headers["Location"] == f"/jobs/{body['id']}"
    db = http.server.app[aiohttp_recipe["JOBS"]]
    assert db[body["id"]]["status"] == "pending"
    pb = aiohttp_pb(aiohttp_recipe, http)
    [record] = await pb.ledger.tracked()
    assert json.loads(record.context) == {"user_id": "ada"}

    await run_until_handled(fake, pb)

    status = await (await http.get(started.headers["Location"], headers=ADA)).json()
    assert {**status, **outcome} == status
    assert status["user_id"] == "ada"
    if outcome["status"] == "completed":
        assert status["video_url"].endswith(".mp4")
    assert db[body["id"]] == status
    assert await (await http.get("/jobs", headers=ADA)).json() == [status]
    assert await (await http.get("/jobs", headers=BOB)).json() == []
    bob = await http.get(started.headers["Location"], headers=BOB)
    assert bob.status == 404


@pytest.mark.anyio
async def test_aiohttp_lost_answer_is_502_and_the_job_is_recorded(
    aiohttp_recipe, http, fake
):
    """
    A submit without an answer is 502 and never sent again; the SDK finds its job in
    the background, and the handler records it under the user when it ends.
    """
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")

    response = await http.post("/jobs", json=FRAMES, headers=ADA)
    assert response.status == 502
    [job_id] = fake.jobs
    await run_until_handled(fake, aiohttp_pb(aiohttp_recipe, http))

    status = await (await http.get(f"/jobs/{job_id}", headers=ADA)).json()
    assert (status["status"], status["user_id"]) == ("completed", "ada")
    assert await (await http.get("/jobs", headers=ADA)).json() == [status]
    assert fake.count("POST", "/v1/jobs/submit") == 1
    assert fake.ledger.double_charged() == []


@pytest.mark.anyio
async def test_aiohttp_unknown_job_is_404(http):
    """A job id the database does not know is 404."""
    response = await http.get("/jobs/job_000000000000", headers=ADA)

    assert response.status == 404


@pytest.mark.anyio
@pytest.mark.parametrize("ends", ["while-down", "after-restart"])
async def test_aiohttp_restart_mid_job_records_the_outcome(aiohttp_recipe, fake, ends):
    """
    The app stops with the job running (the client closes; the paid job goes on);
    the next app, on the same database and ledger, resumes it at start-up and its
    handler records the outcome once.
    """
    db: dict[str, dict[str, Any]] = {}
    first = aiohttp_recipe["make_app"](db)
    async with TestClient(TestServer(first)) as client:
        started = await client.post("/jobs", json=FRAMES, headers=ADA)
        assert started.status == 202
        location = started.headers["Location"]
        pb = aiohttp_pb(aiohttp_recipe, client)
    assert pb.closed
    [job] = fake.jobs.values()
    assert job.cancelled_at is None
    assert db[job.id]["status"] == "pending"
    if ends == "while-down":
        fake.advance(600)

    second = aiohttp_recipe["make_app"](db)
    async with TestClient(TestServer(second)) as client:
        pb = aiohttp_pb(aiohttp_recipe, client)
        await run_until_handled(fake, pb)
        status = await (await client.get(location, headers=ADA)).json()
        records = await pb.ledger.tracked(states=("active", "handled", "parked"))
        assert await pb.resume() == []  # nothing left for a third start

    assert (status["id"], status["status"], status["user_id"]) == (
        job.id,
        "completed",
        "ada",
    )
    assert [(r.job_id, r.state, r.failures) for r in records] == [
        (job.id, "handled", 0)
    ]
    assert len(fake.jobs) == 1


# -- FastAPI: the webhook route ---------------------------------------------------------


@pytest.fixture(name="fastapi_recipe")
def _fastapi_recipe(monkeypatch) -> dict[str, Any]:
    monkeypatch.setenv("PIXELBYTE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv(
        "PIXELBYTE_WEBHOOK_URL", "https://app.example.com/pixelbyte/webhook"
    )
    ns = load_recipe("fastapi")
    # Never contacted: these tests send deliveries only.
    ns["PixelByte"] = lambda: PixelByte(
        api_key="pb_test", base_url="https://api.example.invalid"
    )
    return ns


def test_fastapi_route_answers_with_the_receivers_status(fastapi_recipe):
    """200 for a delivery and its retry, 401 forged, 413 oversized, via TestClient."""
    receiver = fastapi_recipe["receiver"]
    body = delivery()
    with StarletteTestClient(fastapi_recipe["app"]) as client:  # runs the lifespan
        assert fastapi_recipe["app"].state.pb.config.base_url.endswith(".invalid")

        first = client.post(
            "/pixelbyte/webhook?pb_attempt=att_fastapi",
            content=body,
            headers=signature_headers(body, SECRET),
        )
        again = client.post(
            "/pixelbyte/webhook", content=body, headers=signature_headers(body, SECRET)
        )
        forged = client.post(
            "/pixelbyte/webhook",
            content=body,
            headers=signature_headers(body, "whsec_wrong"),
        )
        huge = b"{" + b" " * (300 * 1024) + b"}"
        oversized = client.post(
            "/pixelbyte/webhook", content=huge, headers=signature_headers(huge, SECRET)
        )

    assert [(r.status_code, r.text) for r in (first, again, forged, oversized)] == [
        (200, "ok"),
        (200, "duplicate"),
        (401, "mismatch"),
        (413, "too_large"),
    ]
    assert receiver.job_for_attempt("att_fastapi") == "job_abc123def456"
    assert fastapi_recipe["app"].state.pb.closed


@pytest.mark.anyio
async def test_fastapi_route_stops_reading_an_oversized_body(fastapi_recipe):
    """
    A 300 MB unsigned POST: 413 after the first chunk past the receiver's limit
    (the whole body was read first, 58 -> 645 MB of uvicorn's memory); a declared
    Content-Length over it: 413 with nothing read.
    """
    sent: list[int] = []

    async def flood(chunks: int):
        for _ in range(chunks):
            sent.append(1)
            yield b" " * (1024 * 1024)

    transport = httpx.ASGITransport(app=fastapi_recipe["app"])
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        streamed = await http.post("/pixelbyte/webhook", content=flood(300))
        assert (streamed.status_code, streamed.text) == (413, "too_large")
        assert len(sent) <= 2
        sent.clear()
        declared = await http.post(
            "/pixelbyte/webhook",
            content=flood(300),
            headers={"Content-Length": str(300 * 1024 * 1024)},
        )
        assert (declared.status_code, declared.text) == (413, "too_large")
        assert len(sent) <= 1


@pytest.mark.anyio
async def test_fastapi_route_ends_a_wait_on_another_loop(fastapi_recipe):
    """TestClient runs the app on its own loop and thread; the wait here still ends."""
    receiver = fastapi_recipe["receiver"]
    future = receiver.future_for("job_fastapi00001")
    body = delivery("job_fastapi00001")
    client = StarletteTestClient(fastapi_recipe["app"])

    response = await asyncio.to_thread(
        client.post,
        "/pixelbyte/webhook",
        content=body,
        headers=signature_headers(body, SECRET),
    )
    event = await asyncio.wait_for(future, 5)

    assert response.status_code == 200
    assert event.video_url == "https://cdn.example/x.mp4"


# -- FastAPI: jobs and their status page ------------------------------------------------


@pytest.fixture(name="fastapi_jobs")
def _fastapi_jobs(fake: FakePixelByte, monkeypatch) -> dict[str, Any]:
    """The FastAPI recipe with its client bound to the fake (deliveries never come)."""
    fake.clock.autojump = False
    monkeypatch.setenv("PIXELBYTE_WEBHOOK_SECRET", SECRET)
    # Nobody listens there: each wait ends on its safety GET, as when a delivery
    # is lost.
    monkeypatch.setenv("PIXELBYTE_WEBHOOK_URL", "https://127.0.0.1:9/pixelbyte/webhook")
    ns = load_recipe("fastapi")
    ns["PixelByte"] = lambda: bound_client(fake)
    return ns


@asynccontextmanager
async def fastapi_app(ns: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (its lifespan: on_finished, resume) under httpx's ASGITransport."""
    app = ns["app"]
    async with ns["lifespan"](app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="https://app.example.com"
        ) as client:
            yield client


FASTAPI_BAD = [
    ("no-user", FRAMES, {}, 401, "Sign in first."),
    ("http-frame", {**FRAMES, "start": "http://e.x/a.jpg"}, ADA, 422, "https://"),
    ("local-path", {**FRAMES, "start": "/etc/passwd"}, ADA, 422, "https://"),
    ("no-end", {"start": START}, ADA, 422, "end"),
    ("prompt-too-long", {**FRAMES, "prompt": "x" * 3000}, ADA, 422, "prompt"),
    ("prompt-not-a-string", {**FRAMES, "prompt": 42}, ADA, 422, "prompt"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "case", [case[1:] for case in FASTAPI_BAD], ids=[case[0] for case in FASTAPI_BAD]
)
async def test_fastapi_bad_requests_are_4xx(fastapi_jobs, fake, case):
    """No user is 401; frames and input the SDK refuses are 422; nothing is sent."""
    body, headers, status, message = case
    async with fastapi_app(fastapi_jobs) as client:
        response = await client.post("/jobs", json=body, headers=headers)

    assert response.status_code == status, response.text
    assert message in response.text
    assert fake.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "status", "message"),
    [
        ("balance", 402, "The PixelByte balance is used up."),
        ("refused", 502, "MODEL_ACCESS_DENIED"),
    ],
)
async def test_fastapi_pixelbytes_refusals_are_mapped(
    fastapi_jobs, fake, fault, status, message
):
    """An empty balance is 402; another refusal is 502 with the reason."""
    if fault == "balance":
        fake.balance_micro_cents = 0
    else:
        fake.inject(Fault.status(403, "MODEL_ACCESS_DENIED"), path="/v1/jobs/submit")
    async with fastapi_app(fastapi_jobs) as client:
        response = await client.post("/jobs", json=FRAMES, headers=ADA)

    assert response.status_code == status
    assert message in response.json()["detail"]
    assert fastapi_jobs["jobs_db"] == {}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("script", "outcome"),
    [case[1:] for case in OUTCOMES],
    ids=[case[0] for case in OUTCOMES],
)
async def test_fastapi_status_page_shows_what_the_handler_recorded(
    fastapi_jobs, fake, script, outcome
):
    """202 and the pending row; the handler's outcome on the page; others get 404."""
    fake.script_next(script)
    app = fastapi_jobs["app"]
    async with fastapi_app(fastapi_jobs) as client:
        started = await client.post("/jobs", json=FRAMES, headers=ADA)
        assert started.status_code == 202, started.text
        body = started.json()
        assert (body["status"], body["user_id"]) == ("pending", "ada")
        location = started.headers["Location"]
        assert location == f"/jobs/{body['id']}"
        [record] = await app.state.pb.ledger.tracked()
        assert json.loads(record.context) == {"user_id": "ada"}

        await run_until_handled(fake, app.state.pb)

        status = (await client.get(location, headers=ADA)).json()
        listed = (await client.get("/jobs", headers=ADA)).json()
        bob = await client.get(location, headers=BOB)
        nobody = await client.get(location)

    assert {**status, **outcome} == status
    assert status["user_id"] == "ada"
    if outcome["status"] == "completed":
        assert status["video_url"].endswith(".mp4")
    assert fastapi_jobs["jobs_db"] == {body["id"]: status}
    assert listed == [status]
    assert (bob.status_code, nobody.status_code) == (404, 401)


@pytest.mark.anyio
async def test_fastapi_lost_answer_is_502_and_the_job_is_recorded(fastapi_jobs, fake):
    """Never sent again; the job the SDK finds is recorded under the user."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    app = fastapi_jobs["app"]
    async with fastapi_app(fastapi_jobs) as client:
        response = await client.post("/jobs", json=FRAMES, headers=ADA)
        assert response.status_code == 502
        [job_id] = fake.jobs
        await run_until_handled(fake, app.state.pb)
        status = (await client.get(f"/jobs/{job_id}", headers=ADA)).json()

    assert (status["status"], status["user_id"]) == ("completed", "ada")
    assert fake.count("POST", "/v1/jobs/submit") == 1
    assert fake.ledger.double_charged() == []


@pytest.mark.anyio
@pytest.mark.parametrize("ends", ["while-down", "after-restart"])
async def test_fastapi_restart_mid_job_records_the_outcome(fastapi_jobs, fake, ends):
    """
    The worker stops with the job running; the next lifespan (a new client on the
    same ledger, the same database) resumes it and records its outcome once.
    """
    app = fastapi_jobs["app"]
    async with fastapi_app(fastapi_jobs) as client:
        started = await client.post("/jobs", json=FRAMES, headers=ADA)
        location = started.headers["Location"]
        first = app.state.pb
    assert first.closed
    [job] = fake.jobs.values()
    assert job.cancelled_at is None
    if ends == "while-down":
        fake.advance(600)

    async with fastapi_app(fastapi_jobs) as client:
        assert app.state.pb is not first
        await run_until_handled(fake, app.state.pb)
        status = (await client.get(location, headers=ADA)).json()
        records = await app.state.pb.ledger.tracked(states=("handled", "parked"))
        assert await app.state.pb.resume() == []

    assert (status["id"], status["status"], status["user_id"]) == (
        job.id,
        "completed",
        "ada",
    )
    assert [(r.job_id, r.state, r.failures) for r in records] == [
        (job.id, "handled", 0)
    ]
    assert len(fake.jobs) == 1
