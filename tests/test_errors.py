"""The one (status, code) -> class table and what errors carry."""

from __future__ import annotations

import pytest
from pixelbyte_async import (
    APIError,
    AuthenticationError,
    InsufficientBalance,
    InvalidRequestError,
    NotFound,
    PermissionDenied,
    PixelByteError,
    RateLimited,
    RequestTimeout,
    ResponseDecodeError,
    ServerError,
    TransportError,
    ValidationError,
    WaitTimeout,
)
from pixelbyte_async._errors import (
    ResponseTooLarge,
    UnexpectedRedirect,
    error_class_for,
)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "INVALID_INPUT", InvalidRequestError),
        (400, "JOB_CANNOT_BE_CANCELLED", InvalidRequestError),
        (400, "INVALID_WEBHOOK_URL", InvalidRequestError),
        (400, None, InvalidRequestError),
        (401, "INVALID_API_KEY", AuthenticationError),
        (401, "API_KEY_EXPIRED", AuthenticationError),
        (402, "INSUFFICIENT_BALANCE", InsufficientBalance),
        (403, "IP_NOT_WHITELISTED", PermissionDenied),
        (403, "MODEL_ACCESS_DENIED", PermissionDenied),
        (404, "JOB_NOT_FOUND", NotFound),
        (404, "MODEL_NOT_FOUND", NotFound),
        (422, "VALIDATION_ERROR", InvalidRequestError),
        (429, "CONCURRENT_JOBS_EXCEEDED", RateLimited),
        (429, None, RateLimited),
        (500, "INTERNAL_ERROR", ServerError),
        (503, "PUBSUB_PUBLISH_FAILED", ServerError),
        (502, None, ServerError),
        (418, None, APIError),
        (400, "CONCURRENT_JOBS_EXCEEDED", RateLimited),
        (301, None, UnexpectedRedirect),
        (307, None, UnexpectedRedirect),
        (308, "INVALID_INPUT", UnexpectedRedirect),
        (399, None, UnexpectedRedirect),
    ],
)
def test_table(status, code, cls):
    """Each documented (status, code) maps to its class."""
    assert cls is error_class_for(status, code)


def test_api_error_carries_everything():
    """APIError carries status, code, message, details, request_id and retry hints."""
    err = RateLimited(
        "Too many",
        status=429,
        code="CONCURRENT_JOBS_EXCEEDED",
        details={"retryAfter": 30},
        request_id="req_1",
        retry_after=30.0,
    )
    assert (err.status, err.code, err.request_id, err.retry_after, err.retryable) == (
        429,
        "CONCURRENT_JOBS_EXCEEDED",
        "req_1",
        30.0,
        True,
    )
    assert "req_1" in str(err)
    assert "CONCURRENT_JOBS_EXCEEDED" in str(err)
    assert "req_1" in repr(err)
    assert not InsufficientBalance("x", status=402).retryable


def test_builtin_bases():
    """Errors subclass builtins where the meaning matches."""
    assert issubclass(RequestTimeout, TimeoutError)
    assert issubclass(RequestTimeout, TransportError)
    assert issubclass(WaitTimeout, TimeoutError)
    assert issubclass(ValidationError, ValueError)
    for cls in (APIError, TransportError, ValidationError, WaitTimeout):
        assert issubclass(cls, PixelByteError)
    assert TransportError("x").retryable
    assert TransportError("x", request_sent=False).request_sent is False


def test_redirect_and_too_large_are_final_and_typed():
    """UnexpectedRedirect and ResponseTooLarge are never retryable; both carry data."""
    redirect = UnexpectedRedirect(
        "moved", status=307, location="https://elsewhere.example/", request_id="req_1"
    )
    assert isinstance(redirect, APIError)
    assert not isinstance(redirect, TransportError)
    assert (
        redirect.retryable,
        redirect.location,
    ) == (False, "https://elsewhere.example/")
    assert "req_1" in str(redirect)
    assert "https://elsewhere.example/" in repr(redirect)
    too_large = ResponseTooLarge("big", status=200, limit=10, size=20)
    assert isinstance(too_large, ResponseDecodeError)
    assert (
        too_large.retryable,
        too_large.limit,
        too_large.size,
        too_large.status,
    ) == (False, 10, 20, 200)
