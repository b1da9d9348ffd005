"""
Apps pass untrusted input (issue 14): a string is never a local file.

A bot user typing ``/srv/app/private.png`` must not make the server upload its own
file, nor learn whether that file exists.
"""

from __future__ import annotations

import io
import os
import tracemalloc
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
    """Path, bytes and binary files are local images (paths are read on submit)."""
    for source in (secret_png, PNG, io.BytesIO(PNG)):
        KlingO1StartEndFrame(image_url=source, end_image_url=URL)


def test_a_stream_that_is_not_an_image_is_refused() -> None:
    """
    In-memory streams are sniffed like bytes at once (issue 13, finding 6); files
    on submit (below).
    """
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


# Issue 24, round two: files that are not what they seem, read within bounds.


class EndlessStream(io.RawIOBase):
    """A non-seekable binary stream that never ends (a pipe from a hostile source)."""

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        head = PNG[: len(view)] if self.served == 0 else b""
        view[: len(head)] = head
        view[len(head) :] = b"\0" * (len(view) - len(head))
        self.served += len(view)
        return len(view)


async def test_an_endless_stream_is_read_to_the_limit_and_refused(fake) -> None:
    """Issue 24, finding 1: at most the limit + 1 byte, then ValidationError."""
    limit = 10 * 1024 * 1024
    async with bound_client(fake) as pb:
        endless = EndlessStream()
        request = KlingO1StartEndFrame(image_url=endless, end_image_url=URL)
        with pytest.raises(ValidationError, match="at most") as info:
            await pb.submit(request)
        assert info.value.field == "image_url"
        assert endless.served <= limit + 1024 * 1024
        upload_stream = EndlessStream()
        with pytest.raises(ValidationError, match="at most"):
            await pb.upload(upload_stream, filename="a.png")
        assert upload_stream.served <= 200 * 1024 * 1024
    assert fake.count("POST", "/v1/uploads/presign") == 0
    assert fake.count("POST", "/v1/jobs") == 0


def test_constructors_do_not_touch_files(tmp_path: Path) -> None:
    """
    Issue 24, finding 2: a constructor never opens a path (a FIFO would block the
    loop); the file is checked on submit.
    """
    fifo = tmp_path / "frame.png"
    os.mkfifo(fifo)
    # A reader and writer of our own, so a constructor that opens the FIFO does not
    # hang this test: it would consume the bytes (or call it empty) instead.
    keep = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(keep, PNG)
        KlingO1StartEndFrame(image_url=fifo, end_image_url=URL)
        link = tmp_path / "link.png"
        link.symlink_to(fifo)
        KlingO1StartEndFrame(image_url=link, end_image_url=URL)
        assert os.read(keep, 1024) == PNG  # nobody read it
    finally:
        os.close(keep)


@pytest.mark.parametrize("via_link", [False, True])
async def test_a_fifo_frame_is_refused_on_submit(
    fake, tmp_path: Path, via_link: bool
) -> None:
    """Issue 24, finding 2: anything but a regular file is refused before reading."""
    fifo = tmp_path / "frame.png"
    os.mkfifo(fifo)
    path = fifo
    if via_link:
        path = tmp_path / "link.png"
        path.symlink_to(fifo)
    async with bound_client(fake) as pb:
        request = KlingO1StartEndFrame(image_url=path, end_image_url=URL)
        with pytest.raises(ValidationError, match="not a regular file") as info:
            await pb.submit(request)
        assert info.value.field == "image_url"
        with pytest.raises(ValidationError, match="not a regular file"):
            await pb.upload(path)
    assert fake.count("POST", "/v1/uploads/presign") == 0


async def test_a_file_swapped_for_a_huge_one_is_read_within_the_limit(
    fake, tmp_path: Path
) -> None:
    """Issue 24, finding 3: the size is enforced while reading, not after."""
    path = tmp_path / "frame.png"
    path.write_bytes(PNG)
    request = KlingO1StartEndFrame(image_url=path, end_image_url=URL)
    with path.open("r+b") as file:  # sparse: 300 MB that cost no disk
        file.truncate(300 * 1024 * 1024)
    tracemalloc.start()
    try:
        async with bound_client(fake) as pb:
            with pytest.raises(ValidationError, match="at most") as info:
                await pb.submit(request)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.field == "image_url"
    assert peak < 40 * 1024 * 1024
    assert fake.count("POST", "/v1/uploads/presign") == 0


async def test_a_local_file_that_is_not_an_image_is_refused_on_submit(
    fake, tmp_path: Path
) -> None:
    """A frame is an image: a video or a text file is refused before any upload."""
    text = tmp_path / "notimg.png"
    text.write_text("hello, I am text")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0\0\0\x18ftypmp42" + b"\0" * 64)
    async with bound_client(fake) as pb:
        for path in (text, video):
            with pytest.raises(ValidationError, match="not a JPEG, PNG, WebP or GIF"):
                await pb.submit(KlingO1StartEndFrame(image_url=path, end_image_url=URL))
        empty = tmp_path / "empty.png"
        empty.write_bytes(b"")
        with pytest.raises(ValidationError, match="empty"):
            await pb.submit(KlingO1StartEndFrame(image_url=empty, end_image_url=URL))
        missing = tmp_path / "missing.png"
        with pytest.raises(ValidationError, match="cannot read"):
            await pb.submit(KlingO1StartEndFrame(image_url=missing, end_image_url=URL))
    assert fake.count("POST", "/v1/uploads/presign") == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", "x\ud800y"),
        ("image_url", "https://e.x/\udfff.png"),
        ("end_image_url", "https://e.x/\ud800.png"),
    ],
)
def test_text_that_is_not_utf8_is_refused(field: str, value: str) -> None:
    """Issue 24, finding 4: a lone surrogate cannot be sent; refused up front."""
    kwargs = {"image_url": URL, "end_image_url": URL, field: value}
    with pytest.raises(ValidationError, match="UTF-8") as info:
        KlingO1StartEndFrame(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


async def test_raw_inputs_and_webhook_urls_must_be_utf8(fake) -> None:
    """The raw-mapping path and the webhook URL: refused before any request."""
    async with bound_client(fake) as pb:
        with pytest.raises(ValidationError, match="UTF-8") as info:
            await pb.submit(
                "kling-plus/kling-o1-standard/start-end-frame-to-video",
                {"image_url": URL, "end_image_url": URL, "prompt": "a\ud800"},
            )
        assert info.value.field == "input.prompt"
        with pytest.raises(ValidationError, match="UTF-8"):
            await pb.submit(
                "kling-plus/kling-o1-standard/start-end-frame-to-video",
                {"image_url": URL, "end_image_url": URL, "tags": [{"\udc80": 1}]},
            )
        with pytest.raises(ValidationError, match="UTF-8"):
            await pb.submit(
                KlingO1StartEndFrame(image_url=URL, end_image_url=URL),
                webhook_url="https://hooks.example/\ud800",
            )
    assert fake.count("POST", "/v1/jobs") == 0
