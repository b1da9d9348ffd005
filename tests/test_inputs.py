"""Typed inputs validate before anything is sent."""

from __future__ import annotations

import pytest
from pixelbyte_async import (
    KLING_O1_PRO_SEF,
    KLING_O1_STANDARD_SEF,
    KlingO1StartEndFrame,
    ModelInput,
    ValidationError,
)
from pixelbyte_async._inputs import local_cost, sniff_image_type, validate_webhook_url


A = "https://example.com/a.jpg"
B = "https://example.com/b.jpg"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def test_to_input_sends_duration_as_string():
    """The API's input: frames, prompt, and duration as the documented string."""
    kling = KlingO1StartEndFrame(image_url=A, end_image_url=B, prompt="p", duration=7)
    assert kling.to_input() == {
        "image_url": A,
        "end_image_url": B,
        "prompt": "p",
        "duration": "7",
    }
    assert kling.model_slug == KLING_O1_STANDARD_SEF
    assert isinstance(kling, ModelInput)
    assert "prompt" not in KlingO1StartEndFrame(image_url=A, end_image_url=B).to_input()


@pytest.mark.parametrize(
    ("duration", "expected"), [(3, 3), ("10", 10), (" 5 ", 5), (6.0, 6)]
)
def test_duration_accepts_int_or_numeric_string(duration, expected):
    """duration is an int or a numeric string."""
    assert (
        expected
        == KlingO1StartEndFrame(
            image_url=A, end_image_url=B, duration=duration
        ).duration
    )


@pytest.mark.parametrize(
    "duration", [2, 11, 0, -5, "3.5", "five", True, 5.5, None, "¹", "٥", "+5", ""]
)
def test_bad_duration(duration):
    """Durations outside 3..10 or not whole numbers are rejected."""
    with pytest.raises(ValidationError) as info:
        KlingO1StartEndFrame(image_url=A, end_image_url=B, duration=duration)
    assert info.value.field == "duration"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_url", "http://example.com/a.jpg"),
        ("image_url", "ftp://example.com/a.jpg"),
        ("end_image_url", "https://"),
        ("end_image_url", "/definitely/not/here.png"),
        ("image_url", 12),
        ("image_url", b""),
        ("image_url", b"not an image"),
    ],
)
def test_bad_frames(field, value):
    """Frames must be https URLs, existing files or image bytes."""
    kwargs = {"image_url": A, "end_image_url": B, field: value}
    with pytest.raises(ValidationError) as info:
        KlingO1StartEndFrame(**kwargs)
    assert info.value.field == field


def test_frames_may_be_paths_or_bytes(tmp_path):
    """Local files and bytes are accepted (submit uploads them) but not sent raw."""
    path = tmp_path / "a.png"
    path.write_bytes(PNG)
    kling = KlingO1StartEndFrame(image_url=path, end_image_url=PNG)
    with pytest.raises(ValidationError, match="uploads it first"):
        kling.to_input()
    assert "<40 bytes>" in repr(kling)


def test_oversize_frames_rejected(tmp_path):
    """Images over 10 MB are rejected locally."""
    big = PNG + b"\0" * (10 * 1024 * 1024)
    with pytest.raises(ValidationError, match="at most"):
        KlingO1StartEndFrame(image_url=big, end_image_url=B)
    path = tmp_path / "big.png"
    path.write_bytes(big)
    # A path is read on submit, within the limit (tests/test_untrusted_input.py).
    KlingO1StartEndFrame(image_url=path, end_image_url=B)


def test_prompt_limit():
    """Prompts are at most 2,500 characters."""
    KlingO1StartEndFrame(image_url=A, end_image_url=B, prompt="x" * 2500)
    with pytest.raises(ValidationError) as info:
        KlingO1StartEndFrame(image_url=A, end_image_url=B, prompt="x" * 2501)
    assert info.value.field == "prompt"


def test_sandbox_loopback_http_allowed():
    """http:// is accepted only for loopback hosts (the sandbox)."""
    KlingO1StartEndFrame(
        image_url="http://127.0.0.1:9/a.png", end_image_url="http://localhost/b.png"
    )
    with pytest.raises(ValidationError):
        KlingO1StartEndFrame(image_url="http://10.0.0.1/a.png", end_image_url=B)


@pytest.mark.parametrize("duration", range(3, 11))
def test_local_price_table(duration):
    """Standard costs 50,000 and Pro 70,000 micro-cents per second."""
    std = KlingO1StartEndFrame(image_url=A, end_image_url=B, duration=duration)
    pro = KlingO1StartEndFrame(
        image_url=A, end_image_url=B, duration=duration, pro=True
    )
    assert std.cost_micro_cents == 50_000 * duration
    assert pro.cost_micro_cents == 70_000 * duration
    assert pro.model_slug == KLING_O1_PRO_SEF
    assert (
        local_cost(KLING_O1_STANDARD_SEF, {"duration": str(duration)})
        == 50_000 * duration
    )
    assert local_cost(KLING_O1_STANDARD_SEF, {}) == 250_000
    assert local_cost("unknown/model", {}) is None


def test_webhook_url_validation():
    """Webhook URLs must be https."""
    assert validate_webhook_url(None) is None
    assert validate_webhook_url("https://x.example/hook") == "https://x.example/hook"
    with pytest.raises(ValidationError):
        validate_webhook_url("http://x.example/hook")


def test_sniff():
    """Image types are sniffed from magic bytes."""
    assert sniff_image_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff_image_type(PNG) == "image/png"
    assert sniff_image_type(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_image_type(b"GIF89a") == "image/gif"
    assert sniff_image_type(b"hello") is None
