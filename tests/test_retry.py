"""Retry policy: backoff bounds, server hints, Retry-After forms, submit safety."""

from __future__ import annotations

import pytest
from pixelbyte_async import (
    InvalidRequestError,
    RateLimited,
    RetryPolicy,
    ServerError,
    TransportError,
)
from pixelbyte_async._errors import ResponseTooLarge, UnexpectedRedirect
from pixelbyte_async._retry import (
    is_submit_safe_to_retry,
    parse_retry_after,
    retry_after_from_details,
)


def test_backoff_bounds_full_jitter():
    """Retry n waits within [0, min(wait_max, initial * base**(n-1))]."""
    policy = RetryPolicy(wait_initial=1, wait_max=10, wait_exp_base=2)
    for n, cap in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (9, 10)]:
        assert policy.backoff(n, lambda a, b: b) == cap
        assert policy.backoff(n, lambda a, b: a) == 0
    assert RetryPolicy(jitter=False, wait_initial=3).backoff(1) == 3


def test_delay_for_respects_attempts_and_hints():
    """Server hints win; over-cap hints and used-up attempts give up."""
    policy = RetryPolicy(attempts=3, max_retry_after=60, jitter=False, wait_initial=1)
    err = ServerError("x", status=500)
    assert policy.delay_for(err, 1) == 1
    assert policy.delay_for(err, 2) == 2
    assert policy.delay_for(err, 3) is None
    hinted = RateLimited("x", status=429, retry_after=7)
    assert policy.delay_for(hinted, 1) == 7
    too_long = RateLimited("x", status=429, retry_after=600)
    assert policy.delay_for(too_long, 1) is None
    assert policy.delay_for(InvalidRequestError("x", status=400), 1) is None
    assert RetryPolicy.disabled().delay_for(err, 1) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_retry_after(value, expected):
    """Retry-After is parsed as seconds or an HTTP-date relative to now."""
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert expected == parse_retry_after(value, now=now)


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ({"retryAfter": 30}, 30.0),
        ({"retryAfter": "2.5"}, 2.5),
        ({"retryAfter": True}, None),
        ({"retryAfter": -1}, None),
        ({"retryAfter": "x"}, None),
        ({}, None),
        ({"retry_after": 4}, 4.0),
        ({"retryAfter": 10**400}, None),
        ({"retryAfter": "inf"}, None),
        ({"retryAfter": [30]}, None),
    ],
)
def test_retry_after_from_details(details, expected):
    """details.retryAfter is read when it is a usable number."""
    assert expected == retry_after_from_details(details)


@pytest.mark.parametrize(
    ("error", "safe"),
    [
        (RateLimited("x", status=429, code="CONCURRENT_JOBS_EXCEEDED"), True),
        (ServerError("x", status=503, code="PUBSUB_PUBLISH_FAILED"), True),
        (ServerError("x", status=500, code="INTERNAL_ERROR"), False),
        (ServerError("x", status=503), False),
        (TransportError("x", request_sent=False), True),
        (TransportError("x"), False),
        (InvalidRequestError("x", status=400), False),
        (UnexpectedRedirect("x", status=307, location="https://e.x/"), False),
        (ResponseTooLarge("x", status=200, limit=1), False),
    ],
)
def test_submit_safety(error, safe):
    """A submit is re-sent only when the server provably created no job."""
    assert safe == is_submit_safe_to_retry(error)


def test_policy_validation():
    """Nonsense policies are rejected at construction."""
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(wait_initial=-1)


@pytest.mark.parametrize(
    "error",
    [
        UnexpectedRedirect("x", status=307, location="https://e.x/", retry_after=1),
        ResponseTooLarge("x", status=200, limit=1),
    ],
    ids=["redirect", "too-large"],
)
def test_hostile_answers_are_never_retried(error):
    """A redirect or an oversized body is final: no policy retries it."""
    assert RetryPolicy(attempts=10).delay_for(error, 1) is None
