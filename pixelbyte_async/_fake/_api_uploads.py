"""
The API's ``/v1/uploads`` handlers: presign an upload, and look one up.

The bytes themselves are PUT to (and served by) the CDN origin; see `_cdn`.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

from ._http import ApiError, Call, Reply
from ._jobs import FakeUpload
from ._state import FakeState
from ._util import floor_ms, iso


__all__ = ["ALLOWED_UPLOAD_TYPES", "UploadHandlers"]

#: Allowed upload content types and their size limits in bytes.
ALLOWED_UPLOAD_TYPES: dict[str, int] = {
    "image/jpeg": 10_485_760,
    "image/png": 10_485_760,
    "image/webp": 10_485_760,
    "image/gif": 10_485_760,
    "video/mp4": 104_857_600,
    "video/webm": 104_857_600,
    "audio/mpeg": 52_428_800,
    "audio/wav": 52_428_800,
}


class UploadHandlers:
    """``POST /v1/uploads/presign`` and ``GET /v1/uploads/{id}`` over one `FakeState`."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    def presign(self, call: Call) -> Reply:
        """``POST /v1/uploads/presign``."""
        body = call.json_object(code="VALIDATION_ERROR")
        for field in ("filename", "contentType"):
            if not isinstance(body.get(field), str) or not body[field].strip():
                raise ApiError(
                    400,
                    "VALIDATION_ERROR",
                    f"{field} is required.",
                    {"field": field},
                )
        content_type = body["contentType"].strip().lower()
        if content_type not in ALLOWED_UPLOAD_TYPES:
            raise ApiError(
                400,
                "INVALID_CONTENT_TYPE",
                f"Content type '{body['contentType']}' is not allowed.",
                {
                    "contentType": body["contentType"],
                    "allowed": list(ALLOWED_UPLOAD_TYPES),
                },
            )
        filename = body["filename"].replace("\\", "/").rsplit("/", 1)[-1].strip()
        if filename in {"", ".", ".."}:
            raise ApiError(
                400, "VALIDATION_ERROR", "filename is invalid.", {"field": "filename"}
            )
        upload = FakeUpload(
            id=str(uuid.uuid4()),
            filename=filename,
            content_type=content_type,
            max_size=ALLOWED_UPLOAD_TYPES[content_type],
            created_at=floor_ms(call.now),
        )
        self.state.uploads[upload.id] = upload
        tail = f"{upload.id}/{quote(filename)}"
        return Reply(
            payload={
                "uploadUrl": f"{self.state.cdn_url}/storage/temp/{tail}",
                "fileUrl": f"{self.state.cdn_url}/temp/{tail}",
                "fileId": upload.id,
                "expiresAt": iso(upload.expires_at),
                "maxSize": upload.max_size,
            }
        )

    def get_upload(self, call: Call) -> Reply:
        """``GET /v1/uploads/{id}``."""
        file_id = call.request.match_info["file_id"]
        upload = self.state.uploads.get(file_id)
        if upload is None:
            raise ApiError(
                404, "NOT_FOUND", f"Upload '{file_id}' not found.", {"id": file_id}
            )
        return Reply(
            payload={
                "id": upload.id,
                "filename": upload.filename,
                "contentType": upload.content_type,
                "fileUrl": f"{self.state.cdn_url}/temp/{upload.id}/{quote(upload.filename)}",
                "status": upload.status_at(call.now),
                "createdAt": iso(upload.created_at),
                "expiresAt": iso(upload.expires_at),
            }
        )
