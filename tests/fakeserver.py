"""A real HTTP server on 127.0.0.1 imitating OpenAI-compatible and Databricks Model Serving endpoints.

Used by the test suite and the benchmarks: it runs aiohttp.web on its own event loop in a daemon
thread, answers deterministically, and records every request (wire body, headers, status answered)
plus the peak number of requests served at once.

    with FakeServer(api_key="k", max_concurrency=4) as s:
        ...  # point the client at s.openai_base or s.url + "/serving-endpoints/NAME/invocations"
        assert s.peak_in_flight <= 4 and s.bodies("/chat/completions")[0]["model"] == "m"

Routes
    POST /v1/chat/completions, /v1/completions, /v1/embeddings   (400 if the body has no "model")
    POST /serving-endpoints/{name}/invocations   task inferred from the body: messages -> chat,
        prompt -> completions, input -> embeddings, dataframe_records / dataframe_split / inputs /
        instances -> custom model ({"predictions": [...]}); the answer's "model" is {name}.
    POST /serving-endpoints/{name}/served-models/{served}/invocations   the same; "model" is {served}.
    With oauth=FakeOAuth(...) (a Databricks OIDC token service, see that class):
    POST /oidc/v1/token                          client-credentials tokens (form body, HTTP basic auth)
    GET  /.well-known/databricks-config, /oidc/.well-known/oauth-authorization-server
                                                 the discovery documents databricks-sdk reads first
    GET  /metadata-service/token                 databricks-sdk's metadata-service auth type
    anything else -> 404.

Answers
    Chat answers "echo: <last user text>"; with "n" > 1 the choices are that, then "... (choice 2)",
    and so on (completions likewise; JSON and [[reply]] answers are the same in every choice).
    With "tools", the model calls a tool when tool_choice is "required" or names a function, or
    when the text holds [[call]] / [[call=NAME]]: one call of that tool (else the first), its
    arguments a sample of the tool's parameters schema (or [[args=TEXT]]), content null,
    finish_reason "tool_calls".

Error bodies
    OpenAI routes, 404, 429 (over max_concurrency) and every status injected by a directive use the
    OpenAI shape {"error": {"message", "type", "param", "code"}}. Request errors of the Databricks
    route (401, 400) use the Databricks shape {"error_code": "UNAUTHENTICATED" | "BAD_REQUEST",
    "message": ...}, so clients get exercised on both.
    Auth (when api_key is set): "Authorization: Bearer KEY" or HTTP basic auth user "token",
    password KEY. With oauth, also "Bearer TOKEN" for a token it issued and that has not expired;
    the expiry is checked when the request arrives and again when its answer is ready (after the
    latency), so a token that expires while a slow request is served gets 401 "Token expired".

Directives: written inside the text the client sent, they make one row misbehave. The text is the
last user message (chat), the prompt(s) (completions), any input (embeddings, whole request), or any
string value of the first record (custom models). Syntax [[name]], [[name=value]] or, with options,
[[name=value opt=X ...]] / [[name opt=X ...]]; several allowed; they stay in the echoed content.
    [[status=503]]              answer 503 with error message "fake error 503"; options
                                retry_after=S (Retry-After header), retry_after_ms=N (retry-after-ms)
    [[html]]                    502 with an HTML page (text/html); [[html=503]] another status;
                                the options retry_after / retry_after_ms as for status
    [[sleep=0.2]]               wait that long before answering (added to `latency`)
    [[hold]]                    wait until a request arrives for which `server.hold_released_by(record)`
                                is true (from then on, until reset(), holds end at once), or at
                                most `server.hold_max` seconds: "answer this row only once the client
                                has sent that one", an order of events that holds on any machine
    [[reply=TEXT]]              chat/completion content is exactly TEXT: everything up to the LAST
                                "]]" of the text, so TEXT may hold brackets (JSON)
    [[reasoning]]               chat content becomes [reasoning block, text block]
    [[finish=length]]           finish_reason
    [[tokens=P,C]]              usage numbers (embeddings: prompt_tokens=P)
    [[cached=N]]                usage.prompt_tokens_details.cached_tokens = N (chat, completions)
    [[malformed]]               200 with a truncated JSON body
    [[nofields]]                200 with only {"object": ...} (no choices / data); custom models: {}
    [[empty]]                   200 with an empty body
    [[reset]]                   connection reset, no answer at all (recorded with status 0)
    [[redirect=URL]]            307 to URL
    [[per_token_embeddings]]    embeddings: one vector per word of each input (llama.cpp's quirk)
    [[dims=N]]                  embeddings: vectors of N dimensions instead of the server's embedding_dim
    [[scale=X]]                 embeddings: vectors of length X instead of unit vectors (0: all zeros)
    [[call]], [[call=NAME]], [[args=TEXT]]   chat with tools: see Answers
    [[choices=N]]               chat/completions: N choices whatever "n" asked (a server that ignores n)
    [[logprob=X]]               chat asked with "logprobs": true: every token's logprob is X (else -0.05);
                                the content is split into tokens by TOKEN (see token_logprobs)
    [[nologprobs]]              chat: no logprobs even when asked, as servers without them answer
  Transient faults: the fault directives (status, html, sleep, malformed, nofields, empty, reset,
  redirect) take the option times=N: only the first N arrivals of this exact raw body get the fault,
  later ones are answered as if the directive were not there ([[status=503 times=2]],
  [[reset times=1]], [[sleep=3 times=1]]). Arrivals are counted per directive (as written) and
  body, when the request arrives (before its latency), so a retry sent while a slow first
  arrival still sleeps is already the second arrival. Without times the fault is permanent.
  Each record's `fault` names the directive that shaped its answer (None for a normal answer).

Prefix cache: FakeServer(prefix_cache=N, prefill_per_token=S) models a provider's prompt cache, as
llama.cpp's slots or OpenAI's prefix cache do: it remembers the last N prompts (chat: the messages'
texts in order; completions: the prompt), a request's cached tokens are the words it shares from
the start with the closest of them, and each word not cached adds S seconds before the answer.
Usage then reports prompt_tokens_details.cached_tokens.

Answers from a function: `reply` (chat body -> content, or None for the usual answer) and
`embedding` (text -> vector) replace the built-in answers, e.g. for a reference server that answers
from a data set's labels.

Run in the foreground for benchmarks:
    python tests/fakeserver.py --port 8099 [--latency 0.1] [--max-concurrency 50] [--api-key K]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import math
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable

from aiohttp import web

OPENAI_PATHS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
DATABRICKS_PATH = re.compile(r"^/serving-endpoints/([^/]+)(?:/served-models/([^/]+))?/invocations$")
# Body key -> task, in the order the Databricks route checks them.
DATABRICKS_TASKS = {
    "messages": "chat",
    "prompt": "completions",
    "input": "embeddings",
    **dict.fromkeys(("dataframe_records", "dataframe_split", "inputs", "instances"), "custom"),
}
# [[name]], [[name=value ...]] or [[name opt=X ...]]: the value is everything up to "]]".
DIRECTIVE = re.compile(r"\[\[(\w+)(?:=(.*?)|\s+(\w+=.*?))?\]\]", re.S)
# Directives that inject a fault, in the order they decide the answer (sleep only delays it);
# each takes times=N. OPTIONS are the option names these directives understand.
FAULTS = ("reset", "redirect", "html", "status", "empty", "nofields", "malformed", "sleep")
OPTIONS = ("times", "retry_after", "retry_after_ms")
REPLY_OPEN = "[[reply="
REASONING_SUMMARY = {"type": "summary_text", "text": "thinking about it", "signature": "sig"}
HTML_502 = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
HTML_PAGE = "<html><body><h1>{status} {reason}</h1></body></html>"
NOFIELDS_OBJECT = {"chat": "chat.completion", "completions": "text_completion", "embeddings": "list"}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict | None  # None when the body is not a JSON object
    raw: bytes
    # status we answered; 0 while pending, when the connection was reset, or when the client had
    # hung up before the answer was ready (it timed out): the answer then reached no one
    status: int
    arrived: float = 0.0   # time.monotonic() when the request arrived
    answered: float = 0.0  # time.monotonic() when the answer was ready (0 while pending)
    # the fault directive that shaped the answer: "reset", "redirect", "html", "status", "empty",
    # "nofields", "malformed", or "sleep" when a sleep directive only delayed a normal answer;
    # None for a normal answer
    fault: str | None = None
    connection: Any = field(default=None, repr=False, compare=False)  # the request's aiohttp protocol

    @property
    def client_gone(self) -> bool:
        """Whether the client has closed the request's connection (hung up, or timed out)."""
        return self.connection is None or self.connection.transport is None


class BadRequest(Exception):
    """A request the fake rejects with 400."""


class FakeOAuth:
    """A Databricks OIDC token service for one service principal: POST /oidc/v1/token with
    grant_type=client_credentials&scope=all-apis and HTTP basic auth (client id, secret) answers
    {"access_token", "token_type": "Bearer", "expires_in": lifetime}. Counts what it was asked.

    `echo_secret` puts the secret it was sent into its 401 text, as a careless server might.
    `honoured` is how long the serving routes actually accept a token (default: `lifetime`); 0 makes
    a workspace that refuses every token it issued."""

    def __init__(self, client_id: str, client_secret: str, lifetime: float = 3600.0, echo_secret: bool = False,
                 honoured: float | None = None):
        self.client_id, self.client_secret = client_id, client_secret
        self.lifetime, self.echo_secret = lifetime, echo_secret
        self.honoured = lifetime if honoured is None else honoured
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}  # token -> time.monotonic() it expires
        self._numbers = itertools.count(1)
        self.token_requests = 0     # POSTs to the token endpoint, granted or not
        self.refused_clients = 0    # of those, refused: wrong client id or secret
        self.metadata_requests = 0  # GETs of /metadata-service/token
        self.expired_rejections = 0  # serving requests answered 401 because their token had expired

    def issue(self) -> str:
        token = f"oauth-{next(self._numbers)}-{hashlib.sha256(str(time.monotonic()).encode()).hexdigest()[:12]}"
        with self._lock:
            self._expiry[token] = time.monotonic() + self.honoured
        return token

    def expiry(self, token: str) -> float | None:
        """When an issued token expires (time.monotonic()), None for a token it never issued."""
        with self._lock:
            return self._expiry.get(token)

    @property
    def issued(self) -> list[str]:
        with self._lock:
            return list(self._expiry)

    def revoke(self) -> None:
        """Every token issued so far stops working now (as if the secret had been rotated)."""
        now = time.monotonic()
        with self._lock:
            self._expiry = {token: min(expiry, now) for token, expiry in self._expiry.items()}

    def token_answer(self, request: web.Request, raw: bytes) -> web.Response:
        with self._lock:
            self.token_requests += 1
        form = dict(pair.split("=", 1) for pair in raw.decode().split("&") if "=" in pair)
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        try:
            client_id, _, secret = base64.b64decode(credentials).decode().partition(":")
        except ValueError:
            client_id = secret = ""
        if form.get("grant_type") != "client_credentials" or form.get("scope") != "all-apis":
            return web.json_response({"error": "invalid_request",
                                      "error_description": f"unexpected form {sorted(form.items())}"}, status=400)
        if scheme.lower() != "basic" or (client_id, secret) != (self.client_id, self.client_secret):
            with self._lock:
                self.refused_clients += 1
            detail = "Client authentication failed"
            if self.echo_secret:
                detail += f" for client {client_id} with secret {secret}"
            return web.json_response({"error": "invalid_client", "error_description": detail}, status=401)
        return web.json_response({"access_token": self.issue(), "token_type": "Bearer",
                                  "expires_in": self.lifetime, "scope": "all-apis"})

    def metadata_answer(self, request: web.Request, host: str) -> web.Response:
        with self._lock:
            self.metadata_requests += 1
        if request.headers.get("X-Databricks-Metadata-Version") != "1" or \
                request.headers.get("X-Databricks-Host") != host:
            return web.json_response({"error": "wrong metadata-service headers"}, status=400)
        return web.json_response({"access_token": self.issue(), "token_type": "Bearer",
                                  "expires_on": int(time.time() + self.lifetime)})


# ---------------------------------------------------------------- helpers (pure)


def parse_directives(text: str) -> dict[str, str | None]:
    """`[[name=value]]` -> {name: value}; `reply` runs to the last "]]" so it may contain brackets."""
    found: dict[str, str | None] = {}
    start = text.find(REPLY_OPEN)
    end = text.rfind("]]")
    if start >= 0 and end >= start + len(REPLY_OPEN):
        found["reply"] = text[start + len(REPLY_OPEN) : end]
        text = text[:start] + text[end + 2 :]
    for m in DIRECTIVE.finditer(text):
        found[m[1]] = m[2] if m[3] is None else m[3]
    return found


def split_options(value: str | None) -> tuple[str | None, dict[str, str]]:
    """A fault directive's value -> (its own value or None, {option: value}):
    "503 times=2 retry_after=1" -> ("503", {"times": "2", "retry_after": "1"})."""
    own, options = [], {}
    for token in (value or "").split():
        name, eq, option = token.partition("=")
        if eq and name in OPTIONS:
            options[name] = option
        else:
            own.append(token)
    return " ".join(own) or None, options


def sample_for_schema(schema: Any, root: Any = None) -> Any:
    """A deterministic value conforming to a (JSON-schema subset) schema."""
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return "sample"
    if "$ref" in schema:  # local refs only, as pydantic emits ("#/$defs/Model")
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return sample_for_schema(target, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return sample_for_schema(options[0], root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        return {k: sample_for_schema(v, root) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [sample_for_schema(schema.get("items", {}), root)]
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, "sample")


def embed(text: str, dim: int) -> list[float]:
    """Unit vector from sha256(block:text) in counter mode; same text -> same vector."""
    values: list[float] = []
    while len(values) < dim:  # each 32-byte digest yields 16 values
        digest = hashlib.sha256(f"{len(values) // 16}:{text}".encode()).digest()
        values.extend(v / 32767.5 - 1.0 for v in struct.unpack("<16H", digest))
    values = values[:dim]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


TOKEN = re.compile(r"\w+|\s+|[^\w\s]")
DEFAULT_LOGPROB = -0.05


def token_logprobs(content: str, logprob: str | None = None) -> list[dict]:
    """OpenAI's choices[0].logprobs.content for `content`: tokens are runs of word characters,
    runs of whitespace and single other characters; each has the same logprob ([[logprob=X]],
    else DEFAULT_LOGPROB), so the probability of a span is exp(logprob * its tokens)."""
    try:
        value = DEFAULT_LOGPROB if logprob is None else float(logprob)
    except ValueError:
        raise BadRequest(f"bad directive: [[logprob={logprob}]]") from None
    return [{"token": t, "logprob": value, "bytes": list(t.encode()), "top_logprobs": []}
            for t in TOKEN.findall(content)]


def words(text: str) -> int:
    return len(text.split())


def message_parts(content: Any) -> tuple[str, list[str]]:
    """Message content -> (text parts joined by a space, image urls)."""
    if isinstance(content, str):
        return content, []
    texts, images = [], []
    for part in content or []:
        if part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            images.append(image.get("url", "") if isinstance(image, dict) else str(image))
    return " ".join(texts), images


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def openai_error(
    status: int, message: str, code: str | None = None, headers: dict | None = None
) -> web.Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def retry_headers(options: dict[str, str]) -> dict[str, str]:
    """The Retry-After headers a fault directive's options ask for."""
    headers = {}
    if "retry_after" in options:
        headers["Retry-After"] = options["retry_after"]
    if "retry_after_ms" in options:
        headers["retry-after-ms"] = options["retry_after_ms"]
    return headers


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def databricks_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error_code": code, "message": message}, status=status)


# ---------------------------------------------------------------- server


class FakeServer:
    def __init__(
        self,
        *,
        api_key: str | None = None,
        latency: float | Callable[[dict], float] = 0.0,
        max_concurrency: int | None = None,
        retry_after: str | None = "0",
        embedding_dim: int = 8,
        host: str = "127.0.0.1",
        port: int = 0,
        oauth: FakeOAuth | None = None,
        prefix_cache: int = 0,
        prefill_per_token: float = 0.0,
        reply: Callable[[dict], str | None] | None = None,
        embedding: Callable[[str], list[float]] | None = None,
    ):
        self.api_key = api_key
        self.oauth = oauth
        self.prefix_cache = prefix_cache
        self.prefill_per_token = prefill_per_token
        self.latency = latency
        self.max_concurrency = max_concurrency
        self.retry_after = retry_after
        self.embedding_dim = embedding_dim
        self.reply = reply  # chat body -> content (None: the usual answer); a reference that knows the labels
        self.embedding = embedding  # text -> vector, instead of the hash vectors
        self.hold_released_by: Callable[[Received], bool] | None = None  # see [[hold]]
        self.hold_max = 60.0
        self.host = host
        self.port = port
        self.url = ""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._in_flight = 0  # a live gauge, so reset() leaves it alone
        self.reset()

    # ---- lifecycle

    def start(self) -> FakeServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # re-raised by start(), e.g. port already in use
                failure.append(exc)
            else:
                self._loop = loop
            ready.set()
            if not failure:
                loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="FakeServer", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    async def _listen(self) -> None:
        # A large body limit: batches of base64 images exceed aiohttp's 1 MB default.
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # No access log (speed); short shutdown so stop() never waits on a sleeping handler for long.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = self._loop = self._runner = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- bookkeeping

    @property
    def openai_base(self) -> str:
        return self.url + "/v1"

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    @property
    def peak_in_flight(self) -> int:
        with self._lock:
            return self._peak

    def reset(self) -> None:
        with self._lock:
            self._held_released = False  # [[hold]]: a request hold_released_by accepts has arrived
            self._requests: list[Received] = []
            self._peak = 0
            self._failures: dict[tuple[str, str], int] = {}  # (directive, body hash) -> arrivals counted
            self._prompts: list[list[str]] = []  # the prefix cache's prompts, most recent last
            self._ids = itertools.count(1)

    def bodies(self, path_suffix: str | None = None) -> list[dict]:
        return [
            r.body
            for r in self.requests
            if r.body is not None and (path_suffix is None or r.path.endswith(path_suffix))
        ]

    # ---- request handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        record = Received(
            method=request.method,
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body if isinstance(body, dict) else None,
            raw=raw,
            status=0,
            arrived=time.monotonic(),
            connection=request.protocol,
        )
        with self._lock:
            self._requests.append(record)
            if self.hold_released_by is not None and self.hold_released_by(record):
                self._held_released = True
        try:
            response = await self._route(request, record)
        except Exception:
            record.status = 500  # aiohttp answers 500 for a bug in this fake; keep the record honest
            raise
        if response is None:  # [[reset]] aborted the transport; aiohttp silently drops what we return
            return web.Response()
        record.answered = time.monotonic()
        # aiohttp goes on running a handler whose client hung up (say, after its timeout): the
        # answer then reaches no one, so it is not recorded as answered.
        record.status = response.status if request.transport is not None else 0
        return response

    async def _route(self, request: web.Request, record: Received) -> web.StreamResponse | None:
        if self.oauth is not None:
            answer = self._oauth_route(request, record)
            if answer is not None:
                return answer
        databricks = DATABRICKS_PATH.match(record.path)
        task = OPENAI_PATHS.get(record.path)
        if request.method != "POST" or not (task or databricks):
            return openai_error(404, f"Unknown route: {request.method} {record.path}", "not_found")
        header = request.headers.get("Authorization", "")
        expiry = self._oauth_expiry(header)
        if expiry is not None and time.monotonic() >= expiry:
            return self._expired()
        if expiry is None and not self._authorized(header):
            if databricks:
                return databricks_error(401, "UNAUTHENTICATED", "Invalid API key provided")
            return openai_error(401, "Invalid API key provided", "invalid_api_key")
        response = await self._limited(request, record, task, databricks)
        if expiry is not None and time.monotonic() >= expiry and response is not None and response.status < 300:
            return self._expired()  # the token expired while the request was being served
        return response

    def _oauth_route(self, request: web.Request, record: Received) -> web.StreamResponse | None:
        oauth, path = self.oauth, record.path
        if request.method == "POST" and path == "/oidc/v1/token":
            return oauth.token_answer(request, record.raw)
        if request.method == "GET" and path == "/.well-known/databricks-config":
            return web.json_response({"oidc_endpoint": self.url + "/oidc", "workspace_id": "1234567890"})
        if request.method == "GET" and path == "/oidc/.well-known/oauth-authorization-server":
            return web.json_response({"issuer": self.url + "/oidc", "token_endpoint": self.url + "/oidc/v1/token",
                                      "authorization_endpoint": self.url + "/oidc/v1/authorize"})
        if request.method == "GET" and path == "/metadata-service/token":
            return oauth.metadata_answer(request, self.url)
        return None

    def _oauth_expiry(self, header: str) -> float | None:
        scheme, _, token = header.partition(" ")
        if self.oauth is None or scheme.lower() != "bearer":
            return None
        return self.oauth.expiry(token)

    def _expired(self) -> web.Response:
        with self.oauth._lock:
            self.oauth.expired_rejections += 1
        return databricks_error(401, "UNAUTHENTICATED", "Token expired")

    async def _limited(self, request: web.Request, record: Received, task: str | None,
                       databricks: re.Match | None) -> web.StreamResponse | None:
        with self._lock:
            rejected = self.max_concurrency is not None and self._in_flight >= self.max_concurrency
            if not rejected:
                self._in_flight += 1
                self._peak = max(self._peak, self._in_flight)
        if rejected:
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else None
            message = "Rate limit reached (fake max_concurrency)"
            return openai_error(429, message, "rate_limit_exceeded", headers)
        try:
            endpoint = (databricks[2] or databricks[1]) if databricks else None
            return await self._serve(request, record, task, endpoint)
        except BadRequest as exc:
            if databricks:
                return databricks_error(400, "BAD_REQUEST", str(exc))
            return openai_error(400, str(exc))
        finally:
            with self._lock:
                self._in_flight -= 1

    def _authorized(self, header: str) -> bool:
        if self.api_key is None:
            return self.oauth is None  # with oauth, only its own tokens
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer":
            return credentials == self.api_key
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials).decode()
            except ValueError:
                return False
            return decoded == f"token:{self.api_key}"
        return False

    async def _serve(
        self, request: web.Request, record: Received, task: str | None, endpoint: str | None
    ) -> web.StreamResponse | None:
        body = record.body
        if body is None:
            raise BadRequest("Request body is not a JSON object")
        if endpoint is not None:
            task = next((t for key, t in DATABRICKS_TASKS.items() if key in body), None)
            if task is None:
                raise BadRequest(f"Cannot infer the task: expected one of {', '.join(DATABRICKS_TASKS)}")
            model = endpoint
        elif "model" not in body:
            raise BadRequest("You must provide a model parameter")
        else:
            model = body["model"]

        build = getattr(self, f"_{task}")
        directives = parse_directives(" ".join(self._directive_text(task, body)))
        faults = self._faults_firing(directives, record.raw)
        try:
            extra = float(faults["sleep"][0] or 0) if "sleep" in faults else 0.0
        except ValueError:
            raise BadRequest(f"bad directive: [[sleep={directives['sleep']}]]") from None
        record.fault = next(iter(faults), None)  # FAULTS order: the one that decides the answer
        delay = (self.latency(body) if callable(self.latency) else self.latency) + extra
        if self.prefix_cache and task in ("chat", "completions"):
            prompt = self._prompt_words(task, body)
            cached = self._cache_prompt(prompt)
            directives.setdefault("cached", str(cached))
            delay += self.prefill_per_token * (len(prompt) - cached)
        if delay > 0:
            await asyncio.sleep(delay)
        if "hold" in directives:
            deadline = time.monotonic() + self.hold_max
            while not self._held_released and time.monotonic() < deadline:
                await asyncio.sleep(0.005)

        if "reset" in faults:
            # SO_LINGER 0 makes close() send RST: the client sees a connection reset, not a clean EOF.
            transport = request.transport
            if transport is not None:  # None when the client already hung up
                sock = transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            return None
        if "redirect" in faults:
            return web.Response(status=307, headers={"Location": faults["redirect"][0] or ""})
        if "html" in faults:
            status = self._status_of("html", faults["html"][0], default=502)
            page = HTML_502 if status == 502 else HTML_PAGE.format(status=status, reason=reason(status)).encode()
            return web.Response(status=status, body=page, content_type="text/html",
                                headers=retry_headers(faults["html"][1]))
        if "status" in faults:
            status = self._status_of("status", faults["status"][0])
            return openai_error(status, f"fake error {status}", headers=retry_headers(faults["status"][1]))
        if "empty" in faults:
            return web.Response(status=200, body=b"", content_type="application/json")
        if "nofields" in faults:
            return web.json_response({"object": NOFIELDS_OBJECT[task]} if task in NOFIELDS_OBJECT else {})

        payload = json.dumps(build(body, model, directives)).encode()
        if "malformed" in faults:
            payload = payload[: len(payload) // 2]
        return web.Response(body=payload, content_type="application/json")

    def _faults_firing(self, directives: dict, raw: bytes) -> dict[str, tuple[str | None, dict[str, str]]]:
        """The fault directives that apply to this arrival, in FAULTS order: name -> (value, options).
        One with times=N counts this arrival (per directive as written and body) and applies while
        the count is at most N."""
        firing = {}
        digest = None
        for name in FAULTS:
            if name not in directives:
                continue
            value, options = split_options(directives[name])
            if "times" in options:
                try:
                    times = int(options["times"])
                except ValueError:
                    written = f"{name}={directives[name]}" if value is not None else f"{name} {directives[name]}"
                    raise BadRequest(f"bad directive: [[{written}]]") from None
                digest = digest or hashlib.sha256(raw).hexdigest()
                key = (f"{name}={directives[name]}", digest)
                with self._lock:
                    failed = self._failures.get(key, 0)
                    if failed >= times:
                        continue
                    self._failures[key] = failed + 1
            firing[name] = (value, options)
        return firing

    @staticmethod
    def _status_of(name: str, value: str | None, default: int | None = None) -> int:
        try:
            return int(value) if value is not None or default is None else default
        except (TypeError, ValueError):
            raise BadRequest(f"bad directive: [[{name}={value}]]") from None

    @staticmethod
    def _directive_text(task: str, body: dict) -> list[str]:
        if task == "chat":
            users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
            return [message_parts(users[-1].get("content"))[0]] if users else []
        if task == "completions":
            return strings_in(body.get("prompt"))
        if task == "embeddings":
            return strings_in(body.get("input"))
        predictions = FakeServer._predictions(body)
        return strings_in(predictions[0]) if predictions else []

    @staticmethod
    def _prompt_words(task: str, body: dict) -> list[str]:
        if task == "chat":
            return [w for m in body.get("messages") or [] for w in message_parts(m.get("content"))[0].split()]
        return " ".join(str(p) for p in as_list(body.get("prompt", ""))).split()

    def _cache_prompt(self, prompt: list[str]) -> int:
        """The words of `prompt` the prefix cache holds (its longest shared start with a remembered
        prompt); remembers it, evicting the least recently used beyond `prefix_cache` prompts."""
        with self._lock:
            best, best_at = 0, None
            for at, known in enumerate(self._prompts):
                shared = 0
                for a, b in zip(known, prompt):
                    if a != b:
                        break
                    shared += 1
                if shared > best:
                    best, best_at = shared, at
            if best_at is not None and best == len(self._prompts[best_at]):
                del self._prompts[best_at]  # a prompt that extends a remembered one replaces it
            self._prompts.append(prompt)
            del self._prompts[:-self.prefix_cache]
        return best

    # ---- answers

    def _usage(self, prompt: int, completion: int, directives: dict) -> dict:
        if directives.get("tokens"):
            try:  # "P,C" or just "P"
                prompt, completion = (int(n) for n in (directives["tokens"] + ",0").split(",")[:2])
            except ValueError:
                raise BadRequest(f"bad directive: [[tokens={directives['tokens']}]]") from None
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        if directives.get("cached") is not None:
            try:
                usage["prompt_tokens_details"] = {"cached_tokens": min(int(directives["cached"]), prompt)}
            except ValueError:
                raise BadRequest(f"bad directive: [[cached={directives['cached']}]]") from None
        return usage

    def _chat(self, body: dict, model: str, directives: dict) -> dict:
        prompt_words, text, images = 0, "", []
        for message in body.get("messages") or []:
            message_text, urls = message_parts(message.get("content"))
            prompt_words += words(message_text)
            for url in urls:
                if not url.startswith("data:image/"):
                    raise BadRequest(f"image_url must be a data:image/ URL, got {url[:40]!r}")
            if message.get("role") == "user":
                text, images = message_text, urls

        response_format = body.get("response_format") or {}
        answer = self.reply(body) if self.reply is not None else None
        if answer is not None:
            content = answer
        elif "reply" in directives:
            content = directives["reply"]
        elif response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema", {})
            content = json.dumps(sample_for_schema(schema))
        elif response_format.get("type") == "json_object":
            content = json.dumps({"echo": text})
        else:
            content = "echo: " + text + (f" +{len(images)} image(s)" if images else "")
        completion_words = max(1, words(content))

        call = self._tool_call(body, directives)
        choices = []
        for i in range(self._choice_count(body, directives)):
            plain = "reply" not in directives and not response_format.get("type", "text").startswith("json")
            text_i = f"{content} (choice {i + 1})" if i and plain else content
            message_content: Any = text_i
            if "reasoning" in directives:
                message_content = [
                    {"type": "reasoning", "summary": [REASONING_SUMMARY]},
                    {"type": "text", "text": text_i},
                ]
            message: dict[str, Any] = {"role": "assistant", "content": message_content}
            if call is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls" if call is not None else directives.get("finish") or "stop"
            choice = {"index": i, "message": message, "finish_reason": finish}
            if body.get("logprobs") is True and "nologprobs" not in directives and call is None:
                choice["logprobs"] = {"content": token_logprobs(text_i, directives.get("logprob"))}
            choices.append(choice)
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": self._usage(prompt_words, completion_words, directives),
        }

    @staticmethod
    def _choice_count(body: dict, directives: dict) -> int:
        try:
            return int(directives.get("choices") or max(1, body.get("n") or 1))
        except ValueError:
            raise BadRequest(f"bad directive: [[choices={directives['choices']}]]") from None

    def _tool_call(self, body: dict, directives: dict) -> dict | None:
        """The tool call the fake model makes, if any (see Answers in the module docstring)."""
        tools = [t.get("function") or {} for t in body.get("tools") or [] if isinstance(t, dict)]
        choice = body.get("tool_choice")
        if not tools or choice == "none":
            return None
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else directives.get("call")
        if not (named or choice == "required" or "call" in directives):
            return None
        function = next((f for f in tools if f.get("name") == named), None) if named else tools[0]
        if function is None:
            raise BadRequest(f"tool {named!r} is not among the tools sent")
        arguments = directives.get("args")
        if arguments is None:
            arguments = json.dumps(sample_for_schema(function.get("parameters") or {"type": "object"}))
        return {"id": f"call_{next(self._ids)}", "type": "function",
                "function": {"name": function.get("name"), "arguments": arguments}}

    def _completions(self, body: dict, model: str, directives: dict) -> dict:
        prompts = [str(p) for p in as_list(body.get("prompt", ""))]
        texts = [directives["reply"] if "reply" in directives else "completion: " + p for p in prompts]
        n = self._choice_count(body, directives)
        texts = [f"{t} (choice {i + 1})" if i and "reply" not in directives else t for t in texts for i in range(n)]
        finish = directives.get("finish") or "stop"
        return {
            "id": f"cmpl-{next(self._ids)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"text": text, "index": i, "logprobs": None, "finish_reason": finish}
                for i, text in enumerate(texts)
            ],
            "usage": self._usage(sum(map(words, prompts)), max(1, sum(map(words, texts))), directives),
        }

    def _embeddings(self, body: dict, model: str, directives: dict) -> dict:
        inputs = [str(i) for i in as_list(body.get("input", ""))]
        if "per_token_embeddings" in directives:
            vectors: list = [[embed(w, self.embedding_dim) for w in (t.split() or [t])] for t in inputs]
        elif self.embedding is not None:
            vectors = [self.embedding(t) for t in inputs]
        else:
            vectors = [embed(t, int(directives.get("dims") or self.embedding_dim)) for t in inputs]
        if "scale" in directives:
            vectors = [[x * float(directives["scale"]) for x in v] for v in vectors]
        usage = self._usage(sum(map(words, inputs)), 0, directives)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": model,
            "usage": {"prompt_tokens": usage["prompt_tokens"], "total_tokens": usage["prompt_tokens"]},
        }

    def _custom(self, body: dict, model: str, directives: dict) -> dict:
        return {"predictions": self._predictions(body)}

    @staticmethod
    def _predictions(body: dict) -> list:
        if "dataframe_records" in body:
            return as_list(body["dataframe_records"])
        if "dataframe_split" in body:
            split = body["dataframe_split"]
            return [dict(zip(split.get("columns", []), row)) for row in split.get("data", [])]
        return as_list(body.get("inputs", body.get("instances")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--max-concurrency", type=int)
    parser.add_argument("--api-key")
    args = parser.parse_args()
    with FakeServer(
        port=args.port, latency=args.latency, max_concurrency=args.max_concurrency, api_key=args.api_key
    ) as server:
        print(f"fake server listening on {server.url} (OpenAI base {server.openai_base})", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
