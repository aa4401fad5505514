"""Where an endpoint's requests go and how they authenticate: the URL and headers, nothing else.

openai:      POST {base_url}/chat/completions | /completions | /embeddings, "model" in the body.
databricks:  POST {host}/serving-endpoints/{model or name}/invocations, no "model" in the body;
             with served_model, .../serving-endpoints/{name}/served-models/{served_model}/invocations.
             Host and credentials are found the way the Databricks SDK finds them (aiquery/_auth.py):
             a token (pat), a service principal's OAuth client id and secret (oauth-m2m), or any
             auth type of databricks-sdk.
local:       local://{model}/chat/completions | ... answered in-process (aiquery/_local.py).
openai:      `Authorization: Bearer <key>`, or the key as it is in the header `api_key_header` names
             (`api-key` for Azure OpenAI); the key read from the environment when the target is resolved.
A base_url (or host) may carry a query string (`...?api-version=2024-06-01`): the task's path goes
before it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

import orjson

from . import _auth
from ._config import OPENAI_BASE_URL, Endpoint
from ._errors import ConfigError
from ._local import url as local_url
from ._models import MODELS
from ._scrub import Secrets, safe_url

_OPENAI_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}


@dataclass(frozen=True)
class Target:
    """A resolved destination. `key_source` says where the key came from, for 401/403 messages.
    With `auth` (OAuth and databricks-sdk credentials), the engine asks it for each request's headers.
    `secrets` are the credentials the headers and URL carry, redacted from whatever a server sends
    back (by default found in the headers whose names say so; a token from `auth` is added per request)."""

    url: str
    sends_model: bool
    key_source: str | None
    headers: dict[str, str]  # sent with every request; may hold the key, so never printed (see __repr__)
    auth: _auth.TokenSource | None = None  # OAuth and the SDK's auth types: the token comes from here
    secrets: Secrets | None = field(default=None, compare=False)
    identity: bytes = field(init=False)  # what the headers and credentials change about an answer: see header_identity

    def __post_init__(self) -> None:
        who = {} if self.auth is None else {"\0credentials": repr(self.auth.identity)}  # no token: who asks for one
        object.__setattr__(self, "identity", header_identity({**self.headers, **who}))
        if self.secrets is None:
            object.__setattr__(self, "secrets", Secrets.of(None, self.headers, self.url))

    def __repr__(self) -> str:
        return f"Target(url={safe_url(self.url)!r}, key_source={self.key_source!r})"


def header_identity(headers: Mapping[str, str]) -> bytes:
    """A digest of every header sent: a gateway routes by header, and the key says whose answer it is.
    It goes into the request key (aiquery/_engine.py, Call) and reaches the response cache only
    inside that key's digest, so neither a header nor a hash of the key alone is ever stored."""
    canonical = sorted((name.lower(), value) for name, value in headers.items())  # names are case-insensitive
    return hashlib.blake2b(orjson.dumps(canonical), digest_size=16, person=b"aiquery-headers").digest()


def join_path(url: str, path: str) -> str:
    """`path` appended to the URL's path, before its query string (Azure's ?api-version=..., a gateway's route)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))


def _headers(endpoint: Endpoint, key: str | None) -> dict[str, str]:
    # gzip and deflate only: the transports decompress these themselves, within max_response_bytes.
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "Accept-Encoding": "gzip, deflate", **endpoint.headers}
    if key:
        if endpoint.api_key_header and endpoint.api_key_header.lower() != "authorization":
            headers[endpoint.api_key_header] = key
        else:
            headers["Authorization"] = f"Bearer {key}"
    return headers


def resolve(endpoint: Endpoint, allowed_hosts: Sequence[str] | None = None) -> Target:
    """The endpoint's URL and key, read now (so a key exported after connect() is still found).

    With `allowed_hosts` (patterns like "api.openai.com" or "*.cloud.databricks.com"), an endpoint
    whose host matches none of them is refused before anything is sent."""
    if endpoint.provider == "local":
        return _local(endpoint)
    target = _databricks(endpoint) if endpoint.provider == "databricks" else _openai(endpoint)
    if allowed_hosts is not None:
        host = urlsplit(target.url).hostname or ""
        if not any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in allowed_hosts):
            raise ConfigError(f"endpoint {endpoint.name!r}: host {host!r} is not in allowed_hosts "
                              f"({', '.join(allowed_hosts) or 'empty'}); add it there if requests may go to it")
    return target


def _local(endpoint: Endpoint) -> Target:
    if endpoint.model not in MODELS or endpoint.task == "custom":
        raise ConfigError(f"endpoint {endpoint.name!r}: provider 'local' runs a built-in model: set model to one "
                          f"of {', '.join(MODELS)} and task to chat, completions or embeddings")
    return Target(local_url(endpoint.model, _OPENAI_PATHS[endpoint.task]), True, None, {})


def _check_url(endpoint: Endpoint, url: str, setting: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint {endpoint.name!r}: {setting} {url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ConfigError(f"endpoint {endpoint.name!r}: {setting} must not carry credentials; use api_key_env")
    return url.rstrip("/")


def _env_key(endpoint: Endpoint) -> tuple[str | None, str | None]:
    env = endpoint.key_env
    if env is None:
        return None, None
    return os.environ.get(env) or None, f"environment variable {env}"


def _openai(endpoint: Endpoint) -> Target:
    if endpoint.task == "custom":
        raise ConfigError(f"endpoint {endpoint.name!r}: custom model endpoints need provider = 'databricks'")
    base = _check_url(endpoint, endpoint.base_url or OPENAI_BASE_URL, "base_url")
    key, source = _env_key(endpoint)
    if source and key is None and endpoint.api_key_env:
        raise ConfigError(f"endpoint {endpoint.name!r}: {source} is not set; export it with the API key "
                          f"(api_key_env names the variable that holds the key)")
    if source and key is None:
        source = None  # default variable absent: send no key, and say so if the server answers 401
    url = join_path(base, _OPENAI_PATHS[endpoint.task])
    headers = _headers(endpoint, key)
    return Target(url, True, source, headers, secrets=Secrets.of(key, headers, url))


def _databricks(endpoint: Endpoint) -> Target:
    credentials = _auth.resolve(endpoint, _headers(endpoint, None))
    serving_name = quote(endpoint.model or endpoint.name, safe="")
    path = f"/serving-endpoints/{serving_name}"
    if endpoint.served_model:
        path += f"/served-models/{quote(endpoint.served_model, safe='')}"
    url = join_path(_check_url(endpoint, credentials.host, "host"), path + "/invocations")
    return Target(url, False, credentials.source, credentials.headers, credentials.auth)
