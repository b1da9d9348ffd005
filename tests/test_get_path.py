"""
The GET path, trimmed (issue 23): what each shortcut keeps of the behaviour it skips.

An unchanged job body is parsed once; the connection gate admits in order and
never loses a place; one `aiohttp.ClientTimeout` serves every first try; the
no-provider telemetry check follows a provider set later; a transport subclass
that sends its own way is still called.  No timings: every test is deterministic.
"""

from __future__ import annotations

import asyncio
import types

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pixelbyte_async import (
    APIError,
    KlingO1StartEndFrame,
    MockTransport,
    PixelByte,
    Request,
    Response,
    RetryPolicy,
    ServerError,
    ValidationError,
    VirtualClock,
    json_response,
)
from pixelbyte_async import _pipeline as pipeline_module
from pixelbyte_async._telemetry import _instruments, _record, configure
from pixelbyte_async._transport import AiohttpTransport, _Gate

from conftest import bound_client


pytestmark = pytest.mark.anyio

KEY = "pb_test_key"
JOB = {"jobId": "job_1", "status": "processing", "progress": 50, "model": "m"}


def kling() -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url="https://example.com/a.jpg",
        end_image_url="https://example.com/b.jpg",
        prompt="p",
    )


def mock_client(handler, **kwargs):
    mock = MockTransport(handler)
    pb = PixelByte(
        api_key=KEY,
        base_url="https://api.test",
        transport=mock,
        clock=VirtualClock(),
        ledger=None,
        **kwargs,
    )
    return pb, mock


def counting_decodes(monkeypatch) -> list[bytes]:
    """Record every body the pipeline parses as JSON."""
    parsed: list[bytes] = []
    real = pipeline_module.decode_json

    def counting(content, *, status):
        parsed.append(content)
        return real(content, status=status)

    monkeypatch.setattr(pipeline_module, "decode_json", counting)
    return parsed


async def test_an_unchanged_job_body_is_parsed_once(monkeypatch):
    """The same bytes for the same job: one JSON parse, the header's request id."""
    parsed = counting_decodes(monkeypatch)
    body = JOB
    rids = iter(f"req_{n}" for n in range(100))

    def handler(_: Request) -> Response:
        return json_response(body, headers={"X-Request-ID": next(rids)})

    pb, _ = mock_client(handler)
    async with pb:
        pipeline = pb._pipeline
        first = await pipeline.request("GET", "/v1/jobs/job_1")
        again = await pipeline.request("GET", "/v1/jobs/job_1")
        assert first == (JOB, "req_0")
        assert again == (JOB, "req_1")  # this answer's id, not the first one's
        assert again[0] is first[0]
        assert len(parsed) == 1
        # A changed body is parsed, and so is another job's.
        body = {**JOB, "progress": 60}
        changed, _ = await pipeline.request("GET", "/v1/jobs/job_1")
        assert changed["progress"] == 60
        await pipeline.request("GET", "/v1/jobs/job_2")
        assert len(parsed) == 3


async def test_only_a_jobs_get_is_remembered(monkeypatch):
    """Lists, submits and catalogue answers are parsed every time."""
    parsed = counting_decodes(monkeypatch)
    page = {"jobs": [], "hasMore": False}

    def handler(_: Request) -> Response:
        return json_response(page)

    pb, _ = mock_client(handler)
    async with pb:
        for _ in range(3):
            await pb._pipeline.request("GET", "/v1/jobs")
            await pb._pipeline.request("GET", "/v1/models")
            await pb._pipeline.request("POST", "/v1/jobs/job_1", json_body={})
    assert len(parsed) == 9


async def test_an_envelope_keeps_its_request_id_and_failures_still_raise(monkeypatch):
    """The body's requestId comes back with a remembered payload; errors are never kept."""
    parsed = counting_decodes(monkeypatch)
    refused = {"success": False, "error": {"code": "X", "message": "no"}}
    answers = [
        json_response({"success": True, "data": JOB, "requestId": "req_body"}),
        json_response({"success": True, "data": JOB, "requestId": "req_body"}),
        json_response(refused),
        json_response(refused),
        json_response({"error": {"code": "INTERNAL_ERROR"}}, 500),
    ]

    def handler(_: Request) -> Response:
        return answers.pop(0)

    pb, _ = mock_client(handler, retry=RetryPolicy.disabled())
    async with pb:
        pipeline = pb._pipeline
        assert await pipeline.request("GET", "/v1/jobs/job_1") == (JOB, "req_body")
        assert await pipeline.request("GET", "/v1/jobs/job_1") == (JOB, "req_body")
        for _ in range(2):
            with pytest.raises(APIError) as info:
                await pipeline.request("GET", "/v1/jobs/job_1")
            assert info.value.code == "X"
            assert str(info.value).endswith("no")
        with pytest.raises(ServerError):
            await pipeline.request("GET", "/v1/jobs/job_1")
    assert len(parsed) == 3  # the repeated envelope once, each success:false


async def test_remembered_bodies_and_routes_are_bounded(monkeypatch):
    """Past their bounds the pipeline's memories start afresh."""
    monkeypatch.setattr(pipeline_module, "_BODIES", 3)
    monkeypatch.setattr(pipeline_module, "_ROUTES", 4)

    def handler(request: Request) -> Response:
        return json_response({**JOB, "jobId": request.url.rsplit("/", 1)[1]})

    pb, mock = mock_client(handler)
    async with pb:
        pipeline = pb._pipeline
        for n in range(10):
            data, _ = await pipeline.request("GET", f"/v1/jobs/job_{n}")
            assert data["jobId"] == f"job_{n}"
            assert len(pipeline._bodies) <= 3
            assert len(pipeline._routes) <= 4
    assert [r.url for r in mock.requests] == [
        f"https://api.test/v1/jobs/job_{n}" for n in range(10)
    ]


async def test_get_job_decodes_a_tracked_jobs_unchanged_body_once(fake, monkeypatch):
    """A tracked job polled with get_job: one decode while its body stays the same."""
    import pixelbyte_async._job_state as state

    decoded = 0
    real = state.decode_job

    def counting(*args, **kwargs):
        nonlocal decoded
        decoded += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(state, "decode_job", counting)
    async with bound_client(fake) as pb:
        job = await pb.submit(kling())
        for _ in range(5):
            assert await pb.get_job(job.id) is job
        assert decoded == 1


async def test_get_job_checks_and_quotes_ids_first_time_and_every_time():
    """Ids are refused or percent-encoded as before, remembered or not."""
    pb, mock = mock_client(lambda _: json_response({**JOB, "jobId": "a/b?c"}))
    async with pb:
        for bad in ("", "   ", None, 5, ["job"]):
            for _ in range(2):
                with pytest.raises(ValidationError):
                    await pb.get_job(bad)  # type: ignore[arg-type]
        for _ in range(2):
            assert (await pb.get_job("a/b?c")).id == "a/b?c"
            assert (await pb.get_job("job_1")).id == "a/b?c"
    assert [r.url.rsplit("/", 1)[1] for r in mock.requests] == [
        "a%2Fb%3Fc",
        "job_1",
    ] * 2


async def test_the_first_try_gets_the_whole_timeout_and_retries_what_is_left():
    """One deadline across tries: the first has all of it, the next what remains."""
    clock = VirtualClock()
    answers = [
        json_response({"error": {"code": "INTERNAL_ERROR"}}, 503),
        json_response(JOB),
    ]

    def handler(_: Request) -> Response:
        return answers.pop(0)

    mock = MockTransport(handler)
    async with PixelByte(
        api_key=KEY, base_url="https://api.test", transport=mock, clock=clock
    ) as pb:
        await pb._pipeline.request("GET", "/v1/jobs/job_1", timeout=12.5)
    first, second = (r.timeout for r in mock.requests)
    assert first == 12.5
    assert second is not None
    assert 0 < second < 12.5


def test_one_client_timeout_serves_every_request_of_the_same_timeout():
    """A ClientTimeout per distinct total, its connect part capped by the total."""
    transport = AiohttpTransport(connect_timeout=10.0)
    one = transport._timeout_for(30.0)
    assert (one.total, one.sock_connect) == (30.0, 10.0)
    assert transport._timeout_for(30.0) is one
    short = transport._timeout_for(2.0)
    assert (short.total, short.sock_connect) == (2.0, 2.0)
    unbounded = transport._timeout_for(None)
    assert (unbounded.total, unbounded.sock_connect) == (None, 10.0)
    assert transport._timeout_for(30.0) == one


async def yield_to_others() -> None:
    """Let every ready task run until it waits (no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_gate_admits_in_order_and_hands_places_over():
    """Places go to waiters first come, first served; none is lost on the way."""
    gate = _Gate(1)
    gate.free -= 1  # held
    order: list[str] = []

    async def enter(name: str) -> None:
        await gate.wait(None)
        order.append(name)

    tasks = [asyncio.ensure_future(enter(n)) for n in "abc"]
    await yield_to_others()
    assert order == []
    gate.release()
    await yield_to_others()
    assert order == ["a"]
    gate.release()
    gate.release()
    await yield_to_others()
    assert order == ["a", "b", "c"]
    assert gate.free == 0
    gate.release()
    assert gate.free == 1
    await asyncio.gather(*tasks)


async def test_a_place_handed_to_a_cancelled_waiter_is_passed_on():
    """Cancelled before or after it was handed a place: the place moves on."""
    gate = _Gate(1)
    gate.free -= 1
    entered: list[str] = []

    async def enter(name: str) -> None:
        await gate.wait(None)
        entered.append(name)

    first, second, third = (asyncio.ensure_future(enter(n)) for n in "abc")
    await yield_to_others()
    second.cancel()  # waiting: skipped by release
    await yield_to_others()
    gate.release()  # to "a"
    first.cancel()  # handed a place, cancelled before it ran: passes it to "c"
    await yield_to_others()
    assert entered == ["c"]
    assert first.cancelled()
    assert second.cancelled()
    await third
    gate.release()
    assert (gate.free, list(gate.waiters)) == (1, [])


async def test_a_waiter_out_of_time_raises_and_keeps_no_place():
    """``wait(0)``: TimeoutError, and the gate is whole afterwards."""
    gate = _Gate(1)
    gate.free -= 1
    with pytest.raises(TimeoutError):
        await gate.wait(0)
    gate.release()
    assert gate.free == 1
    assert all(w.done() for w in gate.waiters)


async def test_at_most_max_connections_requests_inside_aiohttp(fake):
    """Thirty GETs through a two-connection transport: never more than two inside."""
    transport = AiohttpTransport(max_connections=2)
    inside = peak = 0
    try:
        async with bound_client(fake, transport=transport) as pb:
            job = await pb.submit(kling())
            session = transport._get_session()
            real = session.request

            class Counted:
                def __init__(self, *args, **kwargs):
                    self._cm = real(*args, **kwargs)

                async def __aenter__(self):
                    nonlocal inside, peak
                    inside += 1
                    peak = max(peak, inside)
                    return await self._cm.__aenter__()

                async def __aexit__(self, *exc):
                    nonlocal inside
                    inside -= 1
                    return await self._cm.__aexit__(*exc)

            session.request = Counted  # type: ignore[method-assign]
            jobs = await asyncio.gather(*(pb.get_job(job.id) for _ in range(30)))
    finally:
        await transport.aclose()
    assert {j.id for j in jobs} == {job.id}
    assert peak == 2
    assert transport._gate is not None
    assert transport._gate.free == 2


async def test_a_transport_subclass_that_sends_its_own_way_is_called(fake):
    """The pipeline's shortcut past `send` is only taken for `AiohttpTransport`'s own."""
    sent: list[str] = []

    class Logged(AiohttpTransport):
        async def send(self, request: Request) -> Response:
            sent.append(request.url)
            return await super().send(request)

    transport = Logged()
    try:
        async with bound_client(fake, transport=transport) as pb:
            job = await pb.submit(kling())
            await pb.get_job(job.id)
    finally:
        await transport.aclose()
    assert sent[-1].endswith(f"/v1/jobs/{job.id}")
    assert any(url.endswith("/v1/jobs/submit") for url in sent)


@pytest.fixture(name="restore_telemetry")
def _restore_telemetry():
    saved = _instruments._loaded, _record._watched
    yield
    _instruments._loaded, _record._watched = saved


@pytest.mark.usefixtures("restore_telemetry")
def test_quiet_follows_a_global_provider_set_later():
    """The API's proxies: quiet until a provider is set, tracer or meter."""
    _instruments._loaded = _instruments._UNSET
    ins = _instruments.instruments()
    assert ins is not None
    # Stand-ins for the API's globals, so the process's own stay untouched.
    api = types.SimpleNamespace(
        ProxyTracer=type(ins.tracer), _TRACER_PROVIDER=None, SpanKind=None
    )
    ins.trace_api = api
    assert _record.quiet()
    assert _record.http_call("GET", "https://api.test/v1/jobs/j", kind="poll") is (
        _record._NO_CALL
    )
    api._TRACER_PROVIDER = object()  # set_tracer_provider(...)
    assert not _record.quiet()
    api._TRACER_PROVIDER = None
    assert _record.quiet()
    ins.requests._real_instrument = object()  # set_meter_provider(...)
    try:
        assert not _record.quiet()
    finally:
        ins.requests._real_instrument = None


@pytest.mark.usefixtures("restore_telemetry")
def test_quiet_is_false_with_a_configured_provider_and_true_without_otel(
    monkeypatch,
):
    """Providers given to configure always record; no OpenTelemetry never does."""
    provider = TracerProvider()
    configure(tracer_provider=provider)
    try:
        assert not _record.quiet()
        call = _record.http_call("GET", "https://api.test/v1/jobs/j", kind="poll")
        assert call is not _record._NO_CALL
        with call:
            call.response(200)
    finally:
        provider.shutdown()
    monkeypatch.setattr(_instruments, "_loaded", None)
    assert _record.quiet()
