"""
Property tests: whatever arrives, the SDK answers with a typed result or a typed error.

* arbitrary inputs to the typed model give `ValidationError` or a valid request;
* arbitrary, malformed server bodies (wrong types, missing keys, HTML, truncated JSON,
  huge bodies) give `ResponseDecodeError`/`APIError` or a decoded value, never
  another exception and never a hang.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pixelbyte_async import (
    APIError,
    KlingO1StartEndFrame,
    MockTransport,
    PixelByte,
    Response,
    ResponseDecodeError,
    RetryPolicy,
    ValidationError,
    VirtualClock,
)
from pixelbyte_async._serde import decode_estimate, decode_job, decode_upload


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**500)  # JSON allows any size
    | st.floats(allow_nan=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
JOB_KEYS = st.sampled_from(
    [
        "jobId",
        "job_id",
        "id",
        "status",
        "progress",
        "output",
        "outputs",
        "error",
        "createdAt",
        "completedAt",
        "estimatedCompletionTime",
        "costMicroCents",
        "estimatedCost",
        "model",
        "refundedMicroCents",
        "data",
        "success",
        "requestId",
    ]
)
JOBISH = st.dictionaries(JOB_KEYS, JSON, max_size=10)
ANYTHING = st.one_of(JSON, st.text(), st.binary(max_size=200))


@settings(max_examples=300, deadline=None)
@given(
    image=st.one_of(
        st.text(max_size=40), st.binary(max_size=40), st.integers(), st.none()
    ),
    end=st.sampled_from(["https://e.x/b.jpg", "http://e.x/b.jpg", "", "b.jpg"]),
    prompt=st.one_of(st.none(), st.text(max_size=3000), st.integers()),
    duration=st.one_of(
        st.integers(-5, 20), st.text(max_size=4), st.floats(), st.booleans(), st.none()
    ),
    pro=st.booleans(),
)
def test_typed_input_is_valid_or_a_validation_error(image, end, prompt, duration, pro):
    """KlingO1StartEndFrame either validates into a correct request or says why not."""
    try:
        request = KlingO1StartEndFrame(
            image_url=image,
            end_image_url=end,
            prompt=prompt,
            duration=duration,
            pro=pro,
        )
    except ValidationError as exc:
        field = exc.field
    else:
        field = None
    if field is not None:
        assert field in {"image_url", "end_image_url", "prompt", "duration"}
        return
    assert 3 <= request.duration <= 10
    assert request.prompt is None or len(request.prompt) <= 2500
    body = request.to_input()
    assert body["duration"] == str(request.duration)
    assert body["image_url"].startswith("https://")
    assert request.cost_micro_cents == (70_000 if pro else 50_000) * request.duration


@settings(max_examples=500, deadline=None)
@given(body=st.one_of(JOBISH, ANYTHING))
def test_decoders_never_crash(body):
    """Decoders return a value or raise ResponseDecodeError, for any JSON at all."""
    for decode in (decode_job, decode_estimate, decode_upload):
        with contextlib.suppress(ResponseDecodeError):
            decode(body)


RAW_BODIES = st.one_of(
    st.binary(max_size=300),
    JOBISH.map(lambda d: json.dumps(d, default=str).encode()),
    st.just(b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    st.just(b'{"jobId": "job_1", "status": "compl'),
    st.just(b'{"jobId": "' + b"x" * 100_000 + b'"}'),
    st.just(b""),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    status=st.sampled_from([200, 201, 202, 204, 400, 404, 429, 500, 502, 503]),
    content=RAW_BODIES,
)
@pytest.mark.anyio
async def test_any_server_answer_is_typed(status, content):
    """get_job over arbitrary answers: a Job, an APIError or a ResponseDecodeError."""
    mock = MockTransport(lambda _: Response(status=status, headers={}, content=content))
    async with PixelByte(
        api_key="pb_k",
        base_url="https://api.test",
        transport=mock,
        clock=VirtualClock(),
        retry=RetryPolicy(attempts=2, jitter=False),
    ) as pb:
        try:
            job = await pb.get_job("job_1", timeout=30)
        except (APIError, ResponseDecodeError):
            return
        assert isinstance(job.id, str)
        assert job.id
