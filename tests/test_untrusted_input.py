"""
Apps pass untrusted input (issue 14): a string is never a local file.

A bot user typing ``/srv/app/private.png`` must not make the server upload its own
file, nor learn whether that file exists.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pixelbyte_async import KlingO1StartEndFrame, ValidationError

from conftest import bound_client


pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
URL = "https://e.x/end.jpg"


@pytest.fixture(name="secret_png")
def _secret_png(tmp_path: Path) -> Path:
    path = tmp_path / "private.png"
    path.write_bytes(PNG)
    return path


def test_a_string_path_is_never_read(secret_png: Path) -> None:
    """An existing file named by a str is refused like any non-URL string."""
    with pytest.raises(ValidationError) as existing:
        KlingO1StartEndFrame(image_url=str(secret_png), end_image_url=URL)
    with pytest.raises(ValidationError) as missing:
        KlingO1StartEndFrame(image_url=str(secret_png) + ".nope", end_image_url=URL)
    with pytest.raises(ValidationError) as passwd:
        KlingO1StartEndFrame(image_url="/etc/passwd", end_image_url=URL)
    assert existing.value.field == "image_url"
    # The answers do not tell an attacker which paths exist.
    messages = {
        str(e.value)
        .replace(str(secret_png) + ".nope", "X")
        .replace(str(secret_png), "X")
        for e in (existing, missing)
    }
    assert len(messages) == 1
    assert "exist" not in str(passwd.value)
    assert "Path" in str(existing.value)  # ... and tells the developer what to do


@pytest.mark.parametrize(
    "value", ["file:///etc/passwd", "ftp://e.x/a.png", "//e.x/a.png", "~/a.png", ""]
)
def test_other_non_https_strings_are_refused(value: str) -> None:
    with pytest.raises(ValidationError):
        KlingO1StartEndFrame(image_url=value, end_image_url=URL)


def test_local_files_by_type(secret_png: Path) -> None:
    """Path, bytes and binary files are local images; they are checked at once."""
    for source in (secret_png, PNG, io.BytesIO(PNG)):
        KlingO1StartEndFrame(image_url=source, end_image_url=URL)


def test_a_local_file_that_is_not_an_image_is_refused(tmp_path: Path) -> None:
    """Files are sniffed like bytes (issue 13, finding 6)."""
    fake = tmp_path / "notimg.png"
    fake.write_text("hello, I am text")
    with pytest.raises(ValidationError, match="not a JPEG, PNG, WebP or GIF"):
        KlingO1StartEndFrame(image_url=fake, end_image_url=URL)
    with pytest.raises(ValidationError, match="not a JPEG, PNG, WebP or GIF"):
        KlingO1StartEndFrame(image_url=io.BytesIO(b"text"), end_image_url=URL)


async def test_upload_never_opens_a_string(fake, secret_png: Path) -> None:
    async with bound_client(fake) as pb:
        with pytest.raises(ValidationError, match="Path"):
            await pb.upload(str(secret_png))  # type: ignore[arg-type]
        url = await pb.upload(secret_png)
        assert url.startswith(fake.cdn_url)
        with io.BytesIO(PNG) as stream:
            assert (await pb.upload(stream, filename="a.png")).startswith(fake.cdn_url)
        text = secret_png.with_name("text.png")
        text.write_text("not an image")
        with pytest.raises(ValidationError, match="not a JPEG, PNG, WebP or GIF"):
            await pb.upload(text)
    assert fake.count("POST", "/v1/uploads/presign") == 2


async def test_submit_uploads_typed_local_frames(fake, secret_png: Path) -> None:
    async with bound_client(fake) as pb:
        job = await pb.submit(
            KlingO1StartEndFrame(image_url=secret_png, end_image_url=io.BytesIO(PNG))
        )
        sent = job.input
        assert sent is not None
        assert sent["image_url"].startswith(fake.cdn_url)
        assert sent["end_image_url"].startswith(fake.cdn_url)
    assert fake.count("POST", "/v1/uploads/presign") == 2
