"""A fake OpenAI-compatible batch API on 127.0.0.1, on top of FakeServer (which still answers online).

    with FakeBatchServer(api_key="k") as s:   # s.openai_base: files, batches and the online routes
        ...
        assert len(s.created) == 1 and s.online_requests() == []

Routes (OpenAI's shapes)
    POST /v1/files                multipart: purpose=batch, file=<JSONL>  -> {"id": "file-N", ...}
    GET  /v1/files/{id}/content   the file's bytes (inputs, outputs and error files alike)
    POST /v1/batches              {"input_file_id", "endpoint", "completion_window", "metadata"}
    GET  /v1/batches/{id}         the batch object; each GET is one poll (see Progress)
    GET  /v1/batches?limit=N&after=ID   newest first, {"data": [...], "has_more": ...}
    POST /v1/batches/{id}/cancel  status cancelling; the next poll makes it cancelled

Progress is driven by polls, never by time, so tests need no sleeps: a new batch is "validating";
each poll moves it one step: validating -> in_progress, then `rows_per_poll` of its requests are
done per poll (default: all of them at once), then finalizing -> completed with output and error
files. `hold = True` keeps batches in_progress (no rows done) until the test calls `release()`,
`expire(id)` or `cancel(id)`. Cancelled and expired batches keep the rows done so far in their
output file; the others get error lines (code batch_cancelled / batch_expired).

A request line's answer is what the online route would answer for its body (FakeServer's builders),
so directives work: [[status=400]] in a row makes that row an error line with that status and an
OpenAI error body; [[tokens=P,C]] and [[cached=N]] set its usage. A file with more than
`max_requests` lines or a line that is not a request fails the batch at validation (status
failed, errors.data naming the line), as OpenAI does; `max_bytes` refuses the upload (400).
`create_delay` seconds pass between creating a batch and answering its POST (a client killed
meanwhile has created a batch it never heard of).
The batch object carries request_counts and usage (input_tokens, output_tokens, cached tokens) of
the rows done so far.
"""

from __future__ import annotations

import asyncio
import email.policy
import itertools
import json
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from typing import Any

from aiohttp import web

from fakeserver import FakeServer, Received, openai_error, parse_directives, split_options

BATCH_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}


@dataclass
class FakeBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict | None
    lines: list[dict] = field(default_factory=list)
    status: str = "validating"
    done: list[dict] = field(default_factory=list)  # output and error lines of the rows done so far
    errors: list[dict] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int = field(default_factory=lambda: int(time.time()))
    polls: int = 0


class FakeBatchServer(FakeServer):
    def __init__(self, *, rows_per_poll: int | None = None, max_requests: int = 50_000,
                 max_bytes: int = 200_000_000, create_delay: float = 0.0, **options: Any):
        super().__init__(**options)
        self.create_delay = create_delay
        self.rows_per_poll = rows_per_poll
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.hold = False
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, FakeBatch] = {}
        self.created: list[FakeBatch] = []  # every POST /v1/batches, in order
        self.uploads: list[str] = []        # file ids of every upload, in order
        self._batch_ids = itertools.count(1)

    # ---- what tests look at and drive

    def online_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path in BATCH_ENDPOINTS]

    def polls(self) -> int:
        return sum(1 for r in self.requests if r.method == "GET" and r.path.startswith("/v1/batches/"))

    def release(self) -> None:
        """Lets held batches go on: the next polls move them on as usual."""
        with self._lock:
            self.hold = False

    def expire(self, batch_id: str) -> None:
        with self._lock:
            self._close(self.batches[batch_id], "expired", "batch_expired",
                        "This request could not be executed before the completion window expired.")

    def cancel(self, batch_id: str) -> None:
        with self._lock:
            self._close(self.batches[batch_id], "cancelled", "batch_cancelled", "This request was cancelled.")

    # ---- routes

    async def _route(self, request: web.Request, record: Received) -> web.StreamResponse | None:
        path = record.path
        if not (path.startswith("/v1/files") or path.startswith("/v1/batches")):
            return await super()._route(request, record)
        if not self._authorized(request.headers.get("Authorization", "")):
            return openai_error(401, "Invalid API key provided", "invalid_api_key")
        parts = path.strip("/").split("/")  # ["v1", "files" | "batches", id?, action?]
        if parts[1] == "files" and request.method == "POST" and len(parts) == 2:
            with self._lock:
                return self._upload(request.headers.get("Content-Type", ""), record.raw)
        if parts[1] == "batches" and request.method == "POST" and len(parts) == 2:
            with self._lock:
                response = self._create(record.body or {})
            await asyncio.sleep(self.create_delay)  # created already: a client killed meanwhile never hears of it
            return response
        with self._lock:
            if parts[1] == "files" and request.method == "GET" and len(parts) == 4 and parts[3] == "content":
                content = self.files.get(parts[2])
                if content is None:
                    return openai_error(404, f"No such File object: {parts[2]}", "not_found")
                return web.Response(body=content, content_type="application/octet-stream")
            if parts[1] == "batches" and request.method == "GET" and len(parts) == 2:
                return self._list(request)
            batch = self.batches.get(parts[2]) if len(parts) > 2 else None
            if batch is None:
                return openai_error(404, f"No batch found with id '{parts[2] if len(parts) > 2 else ''}'.",
                                    "not_found")
            if request.method == "GET" and len(parts) == 3:
                batch.polls += 1
                self._advance(batch)
                return web.json_response(self._object(batch))
            if request.method == "POST" and len(parts) == 4 and parts[3] == "cancel":
                if batch.status in ("validating", "in_progress", "finalizing"):
                    batch.status = "cancelling"
                return web.json_response(self._object(batch))
        return openai_error(404, f"Unknown route: {request.method} {path}", "not_found")

    def _upload(self, content_type: str, raw: bytes) -> web.Response:
        # FakeServer has read the body already (to record it): parse the multipart form from it
        message = BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        form = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()} \
            if message.is_multipart() else {}
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose is None or purpose.get_content() != "batch" or upload is None or not upload.get_filename():
            return openai_error(400, "purpose must be 'batch' and file a JSONL upload")
        content = upload.get_payload(decode=True)
        if len(content) > self.max_bytes:
            return openai_error(400, f"File is too large: {len(content)} bytes, the limit is {self.max_bytes}")
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = content
        self.uploads.append(file_id)
        return web.json_response({"id": file_id, "object": "file", "bytes": len(content), "purpose": "batch",
                                  "filename": upload.get_filename(), "created_at": int(time.time())})

    def _create(self, body: dict) -> web.Response:
        file_id = body.get("input_file_id")
        if file_id not in self.files:
            return openai_error(400, f"input_file_id {file_id!r} is not an uploaded file")
        if body.get("endpoint") not in BATCH_ENDPOINTS:
            return openai_error(400, f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}")
        batch = FakeBatch(f"batch_{next(self._batch_ids)}", file_id, body["endpoint"],
                          body.get("completion_window", "24h"), body.get("metadata"))
        self.batches[batch.id] = batch
        self.created.append(batch)
        return web.json_response(self._object(batch))

    def _list(self, request: web.Request) -> web.Response:
        newest_first = sorted(self.batches.values(), key=lambda b: int(b.id.split("_")[1]), reverse=True)
        after = request.query.get("after")
        if after is not None:
            ids = [b.id for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = newest_first[:limit]
        return web.json_response({"object": "list", "data": [self._object(b) for b in page],
                                  "has_more": len(newest_first) > limit})

    # ---- the state machine (called with the lock held)

    def _advance(self, batch: FakeBatch) -> None:
        if batch.status == "validating":
            error = self._validate(batch)
            if error is not None:
                batch.status, batch.errors = "failed", [error]
            else:
                batch.status = "in_progress"
        elif batch.status == "in_progress" and not self.hold:
            todo = batch.lines[len(batch.done):]
            for line in todo[:self.rows_per_poll or len(todo)]:
                batch.done.append(self._answer(line, batch.endpoint))
            if len(batch.done) == len(batch.lines):
                batch.status = "finalizing"
        elif batch.status == "finalizing":
            self._close(batch, "completed", "", "")
        elif batch.status == "cancelling":
            self._close(batch, "cancelled", "batch_cancelled", "This request was cancelled.")

    def _validate(self, batch: FakeBatch) -> dict | None:
        text = self.files[batch.input_file_id].decode()
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > self.max_requests:
            return {"code": "too_many_requests", "message": f"The batch has {len(lines)} requests, "
                    f"the limit is {self.max_requests}.", "line": None}
        seen = set()
        for number, line in enumerate(lines, 1):
            try:
                request = json.loads(line)
            except ValueError:
                return {"code": "invalid_json_line", "message": "This line is not parseable as valid JSON.",
                        "line": number}
            if not isinstance(request, dict) or request.get("url") != batch.endpoint or \
                    request.get("method") != "POST" or not isinstance(request.get("body"), dict):
                return {"code": "invalid_request", "message": f"Line {number} is not a POST to {batch.endpoint}.",
                        "line": number}
            if request.get("custom_id") in seen:
                return {"code": "duplicate_custom_id", "message": "The custom_id for this request is a "
                        "duplicate of another request.", "line": number}
            seen.add(request.get("custom_id"))
            batch.lines.append(request)
        return None

    def _answer(self, line: dict, endpoint: str) -> dict:
        task, body = BATCH_ENDPOINTS[endpoint], line["body"]
        directives = parse_directives(" ".join(self._directive_text(task, body)))
        status = 200
        if "status" in directives:
            status = int(split_options(directives["status"])[0] or 500)
        if status != 200:
            answer = {"error": {"message": f"fake error {status}", "type": "invalid_request_error",
                                "param": None, "code": None}}
        elif "model" not in body:
            status, answer = 400, {"error": {"message": "You must provide a model parameter",
                                             "type": "invalid_request_error", "param": None, "code": None}}
        else:
            answer = getattr(self, f"_{task}")(body, body["model"], directives)
        return {"id": f"batch_req_{len(self.files)}_{line['custom_id']}", "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": "req_fake", "body": answer}, "error": None}

    def _close(self, batch: FakeBatch, status: str, code: str, message: str) -> None:
        """Ends the batch with `status`: the rows done so far in the output file, the others errors."""
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return
        outputs = [d for d in batch.done if d["response"]["status_code"] == 200]
        errors = [d for d in batch.done if d["response"]["status_code"] != 200]
        errors += [{"id": f"batch_req_x_{line['custom_id']}", "custom_id": line["custom_id"], "response": None,
                    "error": {"code": code, "message": message}} for line in batch.lines[len(batch.done):]]
        batch.status = status
        if outputs:
            batch.output_file_id = self._store("\n".join(json.dumps(o) for o in outputs) + "\n")
        if errors:
            batch.error_file_id = self._store("\n".join(json.dumps(e) for e in errors) + "\n")

    def _store(self, text: str) -> str:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = text.encode()
        return file_id

    def _object(self, batch: FakeBatch) -> dict:
        done = batch.done
        failed = sum(1 for d in done if d["response"]["status_code"] != 200)
        usages = [d["response"]["body"].get("usage") or {} for d in done if d["response"]["status_code"] == 200]
        prompt = sum(u.get("prompt_tokens", 0) for u in usages)
        completion = sum(u.get("completion_tokens", 0) for u in usages)
        cached = sum((u.get("prompt_tokens_details") or {}).get("cached_tokens", 0) for u in usages)
        return {"id": batch.id, "object": "batch", "endpoint": batch.endpoint, "errors":
                None if batch.errors is None else {"object": "list", "data": batch.errors},
                "input_file_id": batch.input_file_id, "completion_window": batch.completion_window,
                "status": batch.status, "output_file_id": batch.output_file_id,
                "error_file_id": batch.error_file_id, "created_at": batch.created_at,
                "request_counts": {"total": len(batch.lines), "completed": len(done) - failed, "failed": failed},
                "usage": {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion,
                          "input_tokens_details": {"cached_tokens": cached}},
                "metadata": batch.metadata}
