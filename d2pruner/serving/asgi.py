"""An ASGI middleware that bounds what one HTTP request may carry, before any framework reads it: uploads (bytes and
number of files per request) and every other POST body (an event's JSON). Framework-free (plain ASGI), so it wraps a
Gradio / FastAPI app through ``app_kwargs={"middleware": [...]}`` or any ASGI server."""

from __future__ import annotations

import json


class _TooLarge(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class RequestLimits:
    """Refuse (413) an upload above ``upload_bytes`` in total or with more than ``files_per_upload`` files, and any
    other POST body above ``request_bytes``. Bodies are counted as they stream in (a missing or false
    ``Content-Length`` does not help); a refusal is answered before the application sees the request when the header
    already says so."""

    def __init__(self, app, *, upload_bytes: int, files_per_upload: int, request_bytes: int,
                 upload_suffix: str = "/upload"):
        self.app = app
        self.upload_bytes = int(upload_bytes)
        self.files_per_upload = int(files_per_upload)
        self.request_bytes = int(request_bytes)
        self.upload_suffix = upload_suffix

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "").rstrip("/")
        upload = path.endswith(self.upload_suffix)
        limit = self.upload_bytes * self.files_per_upload + 64 * 1024 if upload else self.request_bytes
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, 413, _size_message(upload, limit))
            return
        boundary = _boundary(headers.get("content-type", "")) if upload else None
        state = {"bytes": 0, "parts": 0, "tail": b""}
        started = {"response": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                state["bytes"] += len(body)
                if state["bytes"] > limit:
                    raise _TooLarge(413, _size_message(upload, limit))
                if boundary:
                    data = state["tail"] + body
                    state["parts"] += data.count(boundary)
                    state["tail"] = data[-(len(boundary) - 1):] if len(boundary) > 1 else b""
                    if state["parts"] - 1 > self.files_per_upload:  # n parts are delimited by n + 1 boundaries
                        raise _TooLarge(413, f"At most {self.files_per_upload} files per upload.")
            return message

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                started["response"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _TooLarge as error:
            if not started["response"]:
                await _refuse(send, error.status, error.message)


def _boundary(content_type: str) -> bytes | None:
    for part in content_type.split(";"):
        part = part.strip()
        if part.lower().startswith("boundary="):
            value = part[len("boundary="):].strip('"')
            return ("--" + value).encode("latin-1") if value else None
    return None


def _size_message(upload: bool, limit: int) -> str:
    what = "upload" if upload else "request"
    return f"The {what} is too large (limit {limit / 2**20:.1f} MB)."


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
