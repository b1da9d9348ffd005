"""OpenTelemetry: job spans, HTTP client spans and metrics, on real jobs against the fake."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode
from pixelbyte_async import (
    AmbiguousSubmitError,
    AuthenticationError,
    JobFailed,
    JobStatus,
    KlingO1StartEndFrame,
    PixelByte,
)
from pixelbyte_async._telemetry import (
    _instruments,
    _record,
    configure,
    http_call,
    kind_of,
    safe_url,
)
from pixelbyte_async.testing import Fault, JobScript
from pixelbyte_async.webhooks import WebhookReceiver, signature_headers

from conftest import bound_client


pytestmark = pytest.mark.anyio

SLUG = "kling-plus/kling-o1-standard/start-end-frame-to-video"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def kling(**kw):
    return KlingO1StartEndFrame(
        image_url=kw.pop("image_url", "https://example.com/a.jpg"),
        end_image_url=kw.pop("end_image_url", "https://example.com/b.jpg"),
        prompt="p",
        **kw,
    )


class Otel:
    """An OpenTelemetry SDK recording in memory, for one test."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        spans = self.exporter.get_finished_spans()
        return [s for s in spans if name is None or s.name == name]

    def points(self, metric: str) -> list[tuple[dict[str, object], object]]:
        """(attributes, value) of every data point of *metric*."""
        data = self.reader.get_metrics_data()
        found = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != metric:
                        continue
                    for p in m.data.data_points:
                        value = getattr(p, "value", None)
                        if value is None:
                            value = (p.count, p.sum)
                        found.append((dict(p.attributes), value))
        return found

    def total(self, metric: str, **where: object) -> float:
        return sum(
            v
            for a, v in self.points(metric)
            if all(a.get(k) == w for k, w in where.items())
        )


@pytest.fixture(name="otel")
def _otel() -> Iterator[Otel]:
    otel = Otel()
    saved = _instruments._loaded
    configure(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    try:
        yield otel
    finally:
        _instruments._loaded = saved
        otel.tracer_provider.shutdown()
        otel.meter_provider.shutdown()


def all_attributes(otel: Otel) -> list[tuple[str, object]]:
    """Every attribute of every span, span event and metric data point."""
    found: list[tuple[str, object]] = []
    for span in otel.spans():
        found.extend((span.attributes or {}).items())
        for event in span.events:
            found.extend((event.attributes or {}).items())
    for metric in (
        "pixelbyte.jobs.active",
        "pixelbyte.spend",
        "pixelbyte.job.duration",
        "pixelbyte.requests",
        "pixelbyte.slots.waiting",
    ):
        for attributes, _ in otel.points(metric):
            found.extend(attributes.items())
    return found


async def test_three_jobs_three_spans_and_their_metrics(fake, otel):
    """3 jobs: 3 job spans under the caller's, HTTP children, spend = charges."""
    tracer = otel.tracer_provider.get_tracer("app")
    async with bound_client(fake) as pb:
        with tracer.start_as_current_span("caller") as caller:
            jobs = [await pb.submit(kling()) for _ in range(3)]
        assert otel.total("pixelbyte.jobs.active") == 3
        await asyncio.gather(*(job.wait(timeout=900) for job in jobs))

    job_spans = otel.spans("pixelbyte.job")
    assert len(job_spans) == 3
    assert {j.id for j in jobs} == {s.attributes["pixelbyte.job.id"] for s in job_spans}
    caller_id = caller.get_span_context().span_id
    for span in job_spans:
        job = next(j for j in jobs if j.id == span.attributes["pixelbyte.job.id"])
        assert caller_id == span.parent.span_id
        assert span.attributes["pixelbyte.model"] == SLUG
        assert span.attributes["pixelbyte.job.status"] == "completed"
        assert job.cost_micro_cents == span.attributes["pixelbyte.job.cost_micro_cents"]
        assert span.attributes["pixelbyte.attempt"]
        events = [e.name for e in span.events]
        assert "pixelbyte.poll" in events
        assert "pixelbyte.status" in events
        finals = [
            e.attributes["pixelbyte.job.status"]
            for e in span.events
            if e.name == "pixelbyte.status"
        ]
        assert finals[-1] == "completed"

        children = [
            s
            for s in otel.spans()
            if s.parent is not None
            and s.parent.span_id == span.get_span_context().span_id
        ]
        methods = {s.attributes["http.request.method"] for s in children}
        assert {"POST", "GET"} == methods
        for child in children:
            assert child.attributes["server.address"] == "127.0.0.1"
            assert (
                fake.url.rsplit(":", 1)[1]
                .rstrip("/")
                .startswith(str(child.attributes["server.port"]))
            )
            assert child.attributes["url.full"].startswith(fake.url)
            assert child.attributes["http.response.status_code"] == 200
            assert "error.type" not in child.attributes
        submit = next(
            c for c in children if c.attributes["http.request.method"] == "POST"
        )
        assert submit.attributes["url.full"].endswith("/v1/jobs/submit")

    assert fake.ledger.charged_micro_cents == otel.total("pixelbyte.spend")
    assert otel.total("pixelbyte.jobs.active") == 0
    durations = otel.points("pixelbyte.job.duration")
    assert [(a, v[0]) for a, v in durations] == [
        ({"pixelbyte.model": SLUG, "pixelbyte.job.status": "completed"}, 3)
    ]
    assert (
        otel.total(
            "pixelbyte.requests",
            **{"pixelbyte.request.kind": "submit", "outcome": "ok"},
        )
        == 3
    )
    assert otel.total("pixelbyte.requests", **{"pixelbyte.request.kind": "poll"}) >= 3


async def test_failed_job_is_an_error_span_and_costs_nothing(fake, otel):
    """A failed (refunded) job ends its span in error and adds nothing to the spend."""
    fake.script_next(JobScript(outcome="failed", error_code="GENERATION_FAILED"))
    async with bound_client(fake) as pb:
        job = await pb.submit(kling())
        with pytest.raises(JobFailed):
            await job.wait()
    (span,) = otel.spans("pixelbyte.job")
    assert span.attributes["pixelbyte.job.status"] == "failed"
    assert span.status.status_code == StatusCode.ERROR
    assert 0 == fake.ledger.charged_micro_cents == otel.total("pixelbyte.spend")
    assert otel.total("pixelbyte.jobs.active") == 0


async def test_refused_submit_ends_its_span(fake, otel):
    """A submit the API refuses ends the job span in error; nothing is active."""
    async with PixelByte(api_key="pb_wrong", base_url=fake.url, clock=fake.clock) as pb:
        with pytest.raises(AuthenticationError):
            await pb.submit(kling())
    (span,) = otel.spans("pixelbyte.job")
    assert span.attributes["pixelbyte.job.status"] == "refused"
    assert span.status.status_code == StatusCode.ERROR
    (http,) = otel.spans("POST")
    assert http.attributes["http.response.status_code"] == 401
    assert http.attributes["error.type"] == "401"
    assert otel.total("pixelbyte.jobs.active") == 0
    assert otel.total("pixelbyte.requests", outcome="401") == 1


async def test_no_key_or_secret_in_any_attribute(fake, otel, tmp_path):
    """Uploads, submit, polls, download: neither key nor webhook secret is recorded."""
    start = tmp_path / "start.png"
    start.write_bytes(PNG)
    async with bound_client(fake) as pb:
        job = await pb.submit(kling(image_url=start, end_image_url=PNG))
        await job.wait(timeout=900)
        await job.download(tmp_path / "out.mp4")
    kinds = {
        s.attributes.get("pixelbyte.request.kind")
        for s in otel.spans()
        if s.name in {"GET", "POST", "PUT"}
    }
    assert {"upload", "submit", "poll", "download"} <= kinds
    secrets = [fake.api_key, fake.webhook_secret]
    for key, value in all_attributes(otel):
        for secret in secrets:
            assert secret not in f"{key}={value}"
    for span in otel.spans():
        url = (span.attributes or {}).get("url.full")
        if url is not None and "?" in url:
            assert set(url.split("?", 1)[1].split("&")) == {
                f"{k}=REDACTED"
                for k in (p.split("=")[0] for p in url.split("?", 1)[1].split("&"))
            }


async def test_not_configured_records_nothing_and_works(fake):
    """OpenTelemetry installed but no provider set: no-op spans, jobs run as usual."""
    saved = _instruments._loaded
    _instruments._loaded = _instruments._UNSET
    try:
        async with bound_client(fake) as pb:
            job = await pb.submit(kling())
            assert not job._trace._span.is_recording()
            await job.wait(timeout=900)
        assert job.status == JobStatus.COMPLETED
        assert job._trace is None
    finally:
        _instruments._loaded = saved


async def test_not_installed_is_cached_and_works(fake, monkeypatch):
    """Without opentelemetry, the import is tried once and every call is a no-op."""
    saved = _instruments._loaded
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    _instruments._loaded = _instruments._UNSET
    try:
        async with bound_client(fake) as pb:
            job = await pb.submit(kling())
            await job.wait(timeout=900)
        assert job.status == JobStatus.COMPLETED
        assert _instruments.instruments() is None
        assert _instruments._loaded is None
    finally:
        _instruments._loaded = saved


def test_import_does_not_import_opentelemetry():
    """``import pixelbyte_async`` leaves opentelemetry unimported."""
    code = (
        "import sys, pixelbyte_async\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run(  # noqa: S603 -- our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("POST", "/v1/jobs/submit", "submit"),
        ("GET", "/v1/jobs/j_1", "poll"),
        ("GET", "/v1/jobs", "list"),
        ("POST", "/v1/jobs/j_1/cancel", "cancel"),
        ("POST", "/v1/uploads/presign", "upload"),
        ("GET", "/v1/models", "catalog"),
    ],
    ids=["submit", "poll", "list", "cancel", "upload", "catalog"],
)
def test_request_kinds(method, path, kind):
    """Each API call is counted under its kind."""
    assert kind == kind_of(method, path)


def test_safe_url_redacts_query_values_and_user_info():
    """A signed URL keeps its shape but none of its query values or credentials."""
    url = "https://user:pw@cdn.example.com:8443/v.mp4?X-Amz-Signature=abc&e=1#f"
    assert (
        safe_url(url)
        == "https://cdn.example.com:8443/v.mp4?X-Amz-Signature=REDACTED&e=REDACTED"
    )


async def test_reconciled_job_gets_a_span_and_its_spend(fake, otel):
    """A lost submit's job, found by reconcile, is traced to its end and paid for."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    async with bound_client(fake) as pb:
        with pytest.raises(AmbiguousSubmitError) as info:
            await pb.submit(kling())
        job = await pb.reconcile(info.value)
        await job.wait(timeout=900)
    (reconcile,) = otel.spans("pixelbyte.reconcile")
    assert reconcile.attributes["pixelbyte.reconcile.outcome"] == "found"
    assert job.id == reconcile.attributes["pixelbyte.job.id"]
    assert info.value.attempt == reconcile.attributes["pixelbyte.attempt"]
    assert "pixelbyte.reconcile.look" in [e.name for e in reconcile.events]
    lost, found = sorted(
        otel.spans("pixelbyte.job"), key=lambda s: "pixelbyte.job.id" in s.attributes
    )
    assert lost.attributes["pixelbyte.job.status"] == "unknown"
    assert job.id == found.attributes["pixelbyte.job.id"]
    assert found.attributes["pixelbyte.job.status"] == "completed"
    assert reconcile.get_span_context().span_id == found.parent.span_id
    # The API's GET does not say what a job cost: its list price is counted as
    # its spend, and said to be one (as a batch says "assumed").
    assert job.cost_micro_cents is None
    ((attributes, spent),) = otel.points("pixelbyte.spend")
    assert spent == 250_000  # 5 s of Kling O1 Standard
    assert attributes["pixelbyte.cost.source"] == "list_price"
    assert found.attributes["pixelbyte.job.cost_assumed_micro_cents"] == 250_000
    assert "pixelbyte.job.cost_micro_cents" not in found.attributes
    assert otel.total("pixelbyte.jobs.active") == 0


async def test_a_job_resumed_by_another_client_gets_a_span_and_its_spend(fake, otel):
    """resume() re-attaches a tracked job: it is traced to its end and paid for."""
    from pixelbyte_async import MemoryLedger

    from conftest import until

    fake.set_default_script(JobScript(queue_seconds=5, processing_seconds=200))
    ledger = MemoryLedger()
    async with bound_client(fake, ledger=ledger) as first:
        job = await first.submit(kling(), context={"chat_id": 1})
    # The first client closed with its job running: its leases went back.
    handled: list[str] = []

    async def handler(done: object) -> None:
        handled.append(getattr(done, "id", ""))

    async with bound_client(fake, ledger=ledger) as second:
        second.on_finished(handler)
        (resumed,) = await second.resume()
        await until(lambda: handled, 10)
    assert resumed.id == job.id
    (span,) = [
        s
        for s in otel.spans("pixelbyte.job")
        if "pixelbyte.resumed" in [e.name for e in s.events]
    ]
    assert span.attributes["pixelbyte.job.id"] == job.id
    assert span.attributes["pixelbyte.job.status"] == "completed"
    assert span.attributes["pixelbyte.job.cost_assumed_micro_cents"] == 250_000
    assert otel.total("pixelbyte.spend", **{"pixelbyte.cost.source": "list_price"}) == (
        250_000
    )


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda body: body, {"ok": 1, "duplicate": 1}),
        (lambda body: body + b" ", {"rejected:mismatch": 2}),
    ],
    ids=["ok-then-duplicate", "rejected"],
)
async def test_webhook_deliveries_are_counted(otel, tamper, expected):
    """Each delivery a receiver answers is counted by result; a repeat is a duplicate."""
    secret = "whsec_test_secret_value"
    receiver = WebhookReceiver(secret)
    body = json.dumps({"jobId": "j_1", "status": "completed"}).encode()
    headers = signature_headers(body, secret)
    receiver.handle(tamper(body), headers)
    receiver.handle(tamper(body), headers)
    counts = {a["result"]: v for a, v in otel.points("pixelbyte.webhook.deliveries")}
    assert counts == expected
    for key, value in all_attributes(otel):
        assert secret not in f"{key}={value}"


async def test_submits_waiting_for_a_slot_are_counted(fake, otel):
    """With one slot, a second submit waits (counted) until the first job ends."""
    async with bound_client(fake, max_concurrent_jobs=1) as pb:
        first = await pb.submit(kling())
        second = asyncio.ensure_future(pb.submit(kling()))
        for _ in range(20):
            await asyncio.sleep(0)
        assert otel.total("pixelbyte.slots.waiting") == 1
        await first.wait(timeout=900)
        await (await second).wait(timeout=900)
    assert otel.total("pixelbyte.slots.waiting") == 0


def test_request_attributes_are_cached_per_url_and_never_changed(otel):
    """A retry's resend count stays on its span; the cached attributes are shared."""
    url = "http://127.0.0.1:8080/v1/jobs/j_cached"
    for resend in (0, 1, 0):
        with http_call("GET", url, kind="poll", resend=resend) as call:
            call.response(200)
    first, retried, again = otel.spans("GET")
    assert (
        dict(first.attributes)
        == dict(again.attributes)
        == {
            "http.request.method": "GET",
            "server.address": "127.0.0.1",
            "server.port": 8080,
            "url.full": url,
            "pixelbyte.request.kind": "poll",
            "http.response.status_code": 200,
        }
    )
    assert retried.attributes["http.request.resend_count"] == 1
    assert (
        "http.request.resend_count"
        not in _record._REQUEST_ATTRIBUTES[("GET", url, "poll")]
    )
    assert otel.total("pixelbyte.requests", outcome="ok") == 3


def test_signed_urls_and_params_are_redacted_and_not_cached(otel):
    """A URL with a query (a signed download) or params is sanitised, never kept."""
    signed = "https://cdn.example.com/v.mp4?X-Amz-Signature=abc"
    listed = "http://127.0.0.1:8080/v1/jobs"
    with http_call("GET", signed, kind="download") as call:
        call.response(200)
    with http_call("GET", listed, kind="list", params={"cursor": "c_1"}) as call:
        call.response(200)
    download, listing = otel.spans("GET")
    assert download.attributes["url.full"] == (
        "https://cdn.example.com/v.mp4?X-Amz-Signature=REDACTED"
    )
    assert download.attributes["server.port"] == 443  # the scheme's default
    assert listing.attributes["url.full"] == listed + "?cursor=REDACTED"
    keys = {url for _, url, _ in _record._REQUEST_ATTRIBUTES}
    assert signed not in keys
    assert listed not in keys


def test_an_invalid_port_records_no_server_port(otel):
    """A URL whose port does not parse has no ``server.port`` (and no port shown)."""
    with http_call("GET", "http://127.0.0.1:99999/v1/jobs/j_1", kind="poll"):
        pass
    (span,) = otel.spans("GET")
    assert "server.port" not in span.attributes
    assert span.attributes["url.full"] == "http://127.0.0.1/v1/jobs/j_1"


def test_the_attribute_caches_are_bounded(otel, monkeypatch):
    """Many distinct job URLs and outcomes: the caches start afresh at their bound."""
    monkeypatch.setattr(_record, "_REQUEST_ATTRIBUTES", {})
    monkeypatch.setattr(_record, "_COUNT_ATTRIBUTES", {})
    monkeypatch.setattr(_record, "_CACHED_URLS", 8)
    monkeypatch.setattr(_record, "_CACHED_OUTCOMES", 4)
    for i in range(50):
        with http_call("GET", f"http://127.0.0.1:8080/v1/jobs/j_{i}", kind="poll") as c:
            c.response(400 + i)
        assert len(_record._REQUEST_ATTRIBUTES) <= 8
        assert len(_record._COUNT_ATTRIBUTES) <= 4
    assert otel.total("pixelbyte.requests", **{"pixelbyte.request.kind": "poll"}) == 50
    assert otel.total("pixelbyte.requests", outcome="449") == 1
