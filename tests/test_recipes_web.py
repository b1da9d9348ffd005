"""
The web recipes answer what they promise, with the real frameworks.

The code is the recipes' own, run from ``docs/recipes/{aiohttp,fastapi}.md``: the
aiohttp app through aiohttp's test client with ``PixelByte`` bound to a
`FakePixelByte`, and the FastAPI app through Starlette's real ``TestClient``.  The
Django recipe's tests are in ``test_recipes_django_sync.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fastapi.testclient import TestClient as StarletteTestClient
from pixelbyte_async import PixelByte
from pixelbyte_async.testing import FakePixelByte, Fault
from pixelbyte_async.webhooks import signature_headers

from conftest import bound_client
from test_recipes_bots import load_recipe


SECRET = "whsec_recipes"
START = "https://example.com/sunrise.jpg"
END = "https://example.com/night.jpg"


def delivery(job_id: str = "job_abc123def456") -> bytes:
    """A completed job's webhook body, as the API sends it."""
    return json.dumps(
        {"jobId": job_id, "status": "completed", "output": "https://cdn.example/x.mp4"}
    ).encode()


# -- aiohttp --------------------------------------------------------------------------


@pytest.fixture(name="aiohttp_recipe")
def _aiohttp_recipe(fake: FakePixelByte) -> dict[str, Any]:
    ns = load_recipe("aiohttp")
    ns["PixelByte"] = lambda: bound_client(fake)  # what `PixelByte()` means here
    return ns


@pytest.fixture(name="http")
async def _http(aiohttp_recipe) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(aiohttp_recipe["make_app"]())) as client:
        yield client


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
        json.dumps({"start": START, "end": END, "prompt": "x" * 3000}).encode(),
        422,
        "prompt",
    ),
    (
        "prompt-not-a-string",
        json.dumps({"start": START, "end": END, "prompt": 42}).encode(),
        422,
        "prompt",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
async def test_aiohttp_bad_requests_are_4xx(http, fake, body, status, message):
    """What the client got wrong is a 4xx with a message, never a 500; nothing is sent."""
    response = await http.post(
        "/transitions", data=body, headers={"Content-Type": "application/json"}
    )

    assert response.status == status
    assert message in await response.text()
    assert fake.requests == []


@pytest.mark.anyio
async def test_aiohttp_empty_balance_is_402(http, fake):
    """InsufficientBalance is 402 Payment Required, with a message."""
    fake.balance_micro_cents = 0

    response = await http.post("/transitions", json={"start": START, "end": END})

    assert response.status == 402
    assert await response.text() == "The PixelByte balance is used up."


@pytest.mark.anyio
async def test_aiohttp_refusal_is_502(http, fake):
    """Another refusal by PixelByte is a 502 that says why, not a 500."""
    fake.inject(Fault.status(403, "MODEL_ACCESS_DENIED"), path="/v1/jobs/submit")

    response = await http.post("/transitions", json={"start": START, "end": END})

    assert response.status == 502
    assert "MODEL_ACCESS_DENIED" in await response.text()


@pytest.mark.anyio
async def test_aiohttp_lost_answer_is_502_and_the_job_is_followed(
    aiohttp_recipe, http, fake
):
    """A submit without an answer is 502; the job it created is found and followed."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")

    response = await http.post("/transitions", json={"start": START, "end": END})
    assert response.status == 502
    [job_id] = fake.jobs
    app = http.server.app
    await asyncio.gather(*app[aiohttp_recipe["WAITERS"]])

    status = await (await http.get(f"/transitions/{job_id}")).json()
    assert status["status"] == "completed"
    assert job_id in app[aiohttp_recipe["JOBS"]]
    assert fake.ledger.double_charged() == []


@pytest.mark.anyio
async def test_aiohttp_unknown_job_is_404(http):
    """A job id the API does not know is 404."""
    response = await http.get("/transitions/job_000000000000")

    assert response.status == 404


@pytest.mark.anyio
async def test_aiohttp_shutdown_stops_waiting_before_closing_the_client(
    aiohttp_recipe, fake, caplog
):
    """
    Closing the app cancels the follow tasks, then closes the client; the job goes on.
    """
    fake.clock.autojump = False  # the follow task's wait stays parked
    app = aiohttp_recipe["make_app"]()
    with caplog.at_level(logging.INFO):
        async with TestClient(TestServer(app)) as client:
            response = await client.post(
                "/transitions", json={"start": START, "end": END}
            )
            assert response.status == 202
            [waiter] = app[aiohttp_recipe["WAITERS"]]
            pb = app[aiohttp_recipe["PB"]]

    assert waiter.cancelled()
    assert pb.closed
    assert "ClientClosedError" not in caplog.text
    [job] = fake.jobs.values()
    assert job.cancelled_at is None


# -- FastAPI --------------------------------------------------------------------------


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
    import httpx

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
