"""
`FakePixelByte` uploads (presign, PUT, expiry) and the CDN origin that serves files.
"""

from __future__ import annotations

import io
import uuid

import pytest
from pixelbyte_async._fake._util import parse_iso

from fake_helpers import (
    KLING_INPUT,
    Resp,
    api,
    assert_error,
    bearer,
    get_job,
    session_fixture,  # noqa: F401 -- the session fixture
    submit,
    submit_ok,
)


pytestmark = pytest.mark.anyio

# -- uploads --------------------------------------------------------------------------


async def presign(
    session, fake, filename="frame.png", content_type="image/png"
) -> Resp:
    return await api(
        session,
        fake,
        "POST",
        "/v1/uploads/presign",
        {"filename": filename, "contentType": content_type},
    )


@pytest.mark.parametrize(
    ("content_type", "max_size"),
    [
        ("image/jpeg", 10_485_760),
        ("image/png", 10_485_760),
        ("image/webp", 10_485_760),
        ("image/gif", 10_485_760),
        ("video/mp4", 104_857_600),
        ("video/webm", 104_857_600),
        ("audio/mpeg", 52_428_800),
        ("audio/wav", 52_428_800),
    ],
)
async def test_presign(fake, session, content_type, max_size):
    """Presign returns CDN URLs, a UUID, a 60-minute expiry and the type's max size."""
    r = await presign(session, fake, "my file.bin", content_type)
    assert r.body["success"] is True
    data = r.body["data"]
    file_id = data["fileId"]
    assert uuid.UUID(file_id).version == 4
    assert data["uploadUrl"] == f"{fake.cdn_url}/storage/temp/{file_id}/my%20file.bin"
    assert data["fileUrl"] == f"{fake.cdn_url}/temp/{file_id}/my%20file.bin"
    assert data["maxSize"] == max_size
    upload = fake.uploads[file_id]
    assert parse_iso(data["expiresAt"]) == pytest.approx(upload.created_at + 3600)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"filename": "a.txt", "contentType": "text/plain"}, "INVALID_CONTENT_TYPE"),
        ({"contentType": "image/png"}, "VALIDATION_ERROR"),
        ({"filename": "a.png"}, "VALIDATION_ERROR"),
        ({"filename": "../", "contentType": "image/png"}, "VALIDATION_ERROR"),
        (None, "VALIDATION_ERROR"),
    ],
    ids=["content-type", "no-filename", "no-content-type", "bad-filename", "no-body"],
)
async def test_presign_rejections(fake, session, body, code):
    """Presign validates its body."""
    r = await api(session, fake, "POST", "/v1/uploads/presign", body)
    assert_error(r, 400, code)
    assert dict(fake.uploads) == {}


async def test_upload_round_trip_and_expiry(fake, session):
    """PUT stores the bytes, fileUrl serves them for 60 minutes, then 404."""
    data = (await presign(session, fake)).body["data"]
    async with session.put(
        data["uploadUrl"], data=b"\x89PNG fake", headers={"Content-Type": "image/png"}
    ) as r:
        assert r.status == 200
        assert r.headers["ETag"]
    async with session.get(data["fileUrl"]) as r:
        assert (r.status, r.content_type, await r.read()) == (
            200,
            "image/png",
            b"\x89PNG fake",
        )
    r = await api(session, fake, "GET", f"/v1/uploads/{data['fileId']}")
    info = r.body["data"]
    assert (info["id"], info["filename"], info["contentType"], info["status"]) == (
        data["fileId"],
        "frame.png",
        "image/png",
        "pending",
    )
    assert info["fileUrl"] == data["fileUrl"]
    fake.advance(3600)
    r = await api(session, fake, "GET", f"/v1/uploads/{data['fileId']}")
    assert r.body["data"]["status"] == "expired"
    async with session.get(data["fileUrl"]) as r:
        assert r.status == 404


async def test_unknown_upload(fake, session):
    """An unknown upload id is NOT_FOUND."""
    r = await api(session, fake, "GET", f"/v1/uploads/{uuid.uuid4()}")
    assert_error(r, 404, "NOT_FOUND")


async def test_put_rules(fake, session):
    """PUT needs the presigned Content-Type, the 15-minute window and maxSize."""
    data = (await presign(session, fake)).body["data"]
    url = data["uploadUrl"]
    async with session.put(url, data=b"x", headers={"Content-Type": "image/jpeg"}) as r:
        assert r.status == 403
        assert "SignatureDoesNotMatch" in await r.text()
    too_big = io.BytesIO(b"\0" * (10_485_760 + 1))
    async with session.put(
        url, data=too_big, headers={"Content-Type": "image/png"}
    ) as r:
        assert r.status == 413
    async with session.put(
        url.replace(data["fileId"], str(uuid.uuid4())),
        data=b"x",
        headers={"Content-Type": "image/png"},
    ) as r:
        assert r.status == 404
    fake.advance(15 * 60)
    async with session.put(url, data=b"x", headers={"Content-Type": "image/png"}) as r:
        assert r.status == 403
        assert "expired" in await r.text()
    async with session.get(data["fileUrl"]) as r:
        assert r.status == 404  # never uploaded


async def test_put_too_large_streamed(fake, session):
    """A chunked body that outgrows maxSize is refused with 413 too."""
    data = (await presign(session, fake)).body["data"]

    async def chunks():
        for _ in range(11):
            yield b"\0" * 1_048_576

    async with session.put(
        data["uploadUrl"], data=chunks(), headers={"Content-Type": "image/png"}
    ) as r:
        assert r.status == 413


async def test_submit_checks_referenced_uploads(fake, session):
    """Inputs naming this fake's uploads must point at files that were PUT."""
    data = (await presign(session, fake)).body["data"]
    value = {**KLING_INPUT, "image_url": data["fileUrl"]}
    r = await submit(session, fake, input=value)
    assert assert_error(r, 400, "INVALID_INPUT")["details"]["field"] == "image_url"
    async with session.put(
        data["uploadUrl"], data=b"png", headers={"Content-Type": "image/png"}
    ) as resp:
        assert resp.status == 200
    assert (await submit(session, fake, input=value)).status == 200
    fake.advance(3600)
    r = await submit(session, fake, input=value)
    assert "expired" in assert_error(r, 400, "INVALID_INPUT")["message"]


# -- CDN ------------------------------------------------------------------------------


async def test_output_is_a_real_mp4_without_auth(fake, session):
    """The output is the packaged MP4, and the CDN records the missing auth header."""
    job_id = await submit_ok(session, fake)
    fake.advance(245)
    url = (await get_job(session, fake, job_id))["output"]
    async with session.get(url) as r:
        body = await r.read()
        assert r.status == 200
        assert r.headers["Content-Type"] == "video/mp4"
        assert int(r.headers["Content-Length"]) == len(body)
    assert body[4:8] == b"ftyp"
    assert 1000 < len(body) < 20_000
    assert fake.cdn_requests[-1].authorization is None
    assert fake.cdn_requests[-1].path == f"/outputs/{job_id}/output_0.mp4"
    async with session.get(url, headers=bearer(fake)) as r:
        await r.read()
    assert fake.cdn_requests[-1].authorization == f"Bearer {fake.api_key}"
    assert len(fake.cdn_requests_for("GET", "/outputs/*")) == 2


async def test_thumbnail_and_unknown_files(fake, session):
    """Thumbnails are JPEGs; unknown names and unfinished jobs are 404."""
    job_id = await submit_ok(session, fake)
    base = f"{fake.cdn_url}/outputs/{job_id}"
    async with session.get(f"{base}/output_0.mp4") as r:
        assert r.status == 404  # not completed yet
    fake.advance(245)
    async with session.get(f"{base}/thumb_0.jpg") as r:
        assert r.content_type == "image/jpeg"
        assert (await r.read()).startswith(b"\xff\xd8")
    async with session.get(f"{base}/output_9.mp4") as r:
        assert r.status == 404
    async with session.get(f"{fake.cdn_url}/outputs/job_nope/output_0.mp4") as r:
        assert r.status == 404
    async with session.get(f"{fake.cdn_url}/elsewhere") as r:
        assert r.status == 404


@pytest.mark.parametrize(
    ("range_header", "status", "content_range", "length"),
    [
        ("bytes=0-99", 206, "bytes 0-99/7553", 100),
        ("bytes=7500-", 206, "bytes 7500-7552/7553", 53),
        ("bytes=-10", 206, "bytes 7543-7552/7553", 10),
        ("bytes=7553-", 416, "bytes */7553", 0),
        ("bytes=0-1,5-6", 200, None, 7553),
    ],
    ids=["first-100", "open-ended", "suffix", "unsatisfiable", "multi-ignored"],
)
async def test_range_requests(
    fake, session, *, range_header, status, content_range, length
):
    """The CDN supports single byte ranges so downloads can resume."""
    job_id = await submit_ok(session, fake)
    fake.advance(245)
    url = f"{fake.cdn_url}/outputs/{job_id}/output_0.mp4"
    async with session.get(url, headers={"Range": range_header}) as r:
        assert r.status == status
        assert r.headers.get("Content-Range") == content_range
        assert len(await r.read()) == length


async def test_head_request(fake, session):
    """HEAD reports the length without a body."""
    job_id = await submit_ok(session, fake)
    fake.advance(245)
    async with session.head(f"{fake.cdn_url}/outputs/{job_id}/output_0.mp4") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "7553"
