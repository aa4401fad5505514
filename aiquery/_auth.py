"""Databricks credentials: which auth type, where its settings came from, and tokens that refresh.

Resolved the way databricks-sdk's Config resolves them (databricks/sdk/config.py):
- A setting comes from the endpoint's settings, else the environment, else one profile of
  ~/.databrickscfg (DATABRICKS_CONFIG_FILE names another file). The profile is read only when one is
  named (profile =, DATABRICKS_CONFIG_PROFILE), or when neither settings nor environment give a host
  or credentials; then it is the file's [__settings__] default_profile, else [DEFAULT]. Its values
  only fill gaps, and a named profile does not inherit [DEFAULT]'s keys.
- auth_type (the setting, DATABRICKS_AUTH_TYPE, or the profile's auth_type) picks the auth type.
  Without one, a token means pat, a client id and secret mean oauth-m2m (both at once is an error,
  as in the SDK), and anything else goes to databricks-sdk's default chain.

Auth types:
  pat            `Authorization: Bearer <token>`, the same header on every request.
  oauth-m2m      a service principal's client id and secret, exchanged at {host}/oidc/v1/token
                 (grant_type=client_credentials, scope=all-apis, HTTP basic auth) for a token that
                 lives about an hour. The request goes through the engine's own transport.
  databricks-sdk, or any other auth type (azure-cli, databricks-cli, metadata-service, env-oidc, ...):
                 databricks-sdk's own Config (the `databricks` extra). Its authenticate() is
                 synchronous and runs on a worker thread, never on the engine's loop.

Tokens (TokenSource) are fetched when the first request needs one, one fetch at a time (the others
wait for it), and shared by every request of the endpoint: the engine keeps one source per set of
credentials. They are refreshed in the background when a quarter of their life (at most a minute)
is left, and once after a 401. They live in memory only: never logged, cached or put in an error.
"""

from __future__ import annotations

import asyncio
import base64
import configparser
import hashlib
import importlib.util
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._config import DEFAULT_MAX_RESPONSE_BYTES
from ._errors import (AIQueryError, ConfigError, HTTPStatusError, RequestError, RequestTimeout, ResponseError,
                      TransportError)
from ._retry import is_retryable_status, parse_retry_after
from ._scrub import shorten
from ._transport import BodyError, SendError, Unavailable

BUILT_IN_TYPES = ("pat", "oauth-m2m")
SDK = "databricks-sdk"  # auth_type: let databricks-sdk's default chain choose
TOKEN_PATH = "/oidc/v1/token"
TOKEN_BODY = b"grant_type=client_credentials&scope=all-apis"
TOKEN_TIMEOUT = 30.0  # seconds for one token request
MAX_REFRESH_MARGIN = 60.0   # seconds before expiry a token is refreshed, at most (a quarter of its life if shorter)
FAILURE_HOLD = 10.0         # seconds a refused client secret answers every request without asking again
RETRY_BACKOFF = 5.0         # seconds before a failed background refresh is tried again, at most
SDK_RECHECK = 1.0           # seconds between calls of databricks-sdk's authenticate(), which refreshes itself
SDK_VALID = 30.0            # seconds a header from databricks-sdk is used when no newer one comes (it keeps 40 s)
_INSTALL_SDK = "pip install 'aiquery[databricks]' (the databricks-sdk package)"
# Environment variables of each setting, by default (the endpoint can rename the credentials' ones).
_ENV = {"host": "DATABRICKS_HOST", "auth_type": "DATABRICKS_AUTH_TYPE"}
_CREDENTIALS = ("token", "client_id", "client_secret")


@dataclass(frozen=True)
class Found:
    """A setting's value and where it came from, for error messages (the value is never shown)."""

    value: str
    source: str

    def __repr__(self) -> str:
        return f"Found(source={self.source!r})"


@dataclass(frozen=True)
class Credentials:
    """What a Databricks endpoint's requests authenticate with: a fixed header (`headers`, pat), or
    a TokenSource (`auth`) that the engine asks for the current header. `source` is for errors."""

    host: str
    headers: dict[str, str]
    source: str
    auth: TokenSource | None = None

    def __repr__(self) -> str:
        return f"Credentials(host={self.host!r}, source={self.source!r})"


def sdk_installed() -> bool:
    return importlib.util.find_spec("databricks.sdk") is not None


def _config_path() -> Path:
    return Path(os.environ.get("DATABRICKS_CONFIG_FILE") or Path.home() / ".databrickscfg").expanduser()


def _profile(endpoint_name: str, named: Found | None) -> tuple[dict[str, str], str]:
    """The profile's keys and its label ("profile [prod] in /home/u/.databrickscfg"), as the SDK picks it."""
    path = _config_path()
    if not path.is_file():
        if named is not None:
            raise ConfigError(f"endpoint {endpoint_name!r}: profile [{named.value}] ({named.source}) was asked "
                              f"for, but {path} does not exist")
        return {}, f"{path} (no such file)"
    # DEFAULT as an ordinary section: a named profile must not inherit its keys (the SDK reads them so).
    parser = configparser.ConfigParser(interpolation=None, default_section="\0")
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise ConfigError(f"endpoint {endpoint_name!r}: cannot read {path}: {exc.__class__.__name__}") from None
    name = named.value if named is not None else (
        parser.get("__settings__", "default_profile", fallback="").strip() or "DEFAULT")
    if name == "__settings__":
        raise ConfigError(f"endpoint {endpoint_name!r}: [__settings__] in {path} is not a profile")
    label = f"profile [{name}] in {path}"
    if not parser.has_section(name):
        if named is not None or name != "DEFAULT":
            raise ConfigError(f"endpoint {endpoint_name!r}: {label} not found"
                              + (f" (named by {named.source})" if named is not None else " (its default_profile)"))
        return {}, label
    return {k: v.strip() for k, v in parser.items(name) if v.strip()}, label


def gather(endpoint: Any) -> tuple[dict[str, Found], str]:
    """Host, auth type and credentials of a Databricks endpoint, each with where it came from,
    and the label of the profile that was (or would have been) read."""
    env = dict(_ENV, token=endpoint.key_env, client_id=endpoint.client_id_env or "DATABRICKS_CLIENT_ID",
               client_secret=endpoint.client_secret_env or "DATABRICKS_CLIENT_SECRET")
    found = {name: Found(getattr(endpoint, name), f"the endpoint's {name} setting")
             for name in ("host", "auth_type") if getattr(endpoint, name)}
    for name, variable in env.items():
        if name not in found and os.environ.get(variable):
            found[name] = Found(os.environ[variable], f"environment variable {variable}")
    named = (Found(endpoint.profile, "the endpoint's profile setting") if endpoint.profile else
             Found(os.environ["DATABRICKS_CONFIG_PROFILE"], "environment variable DATABRICKS_CONFIG_PROFILE")
             if os.environ.get("DATABRICKS_CONFIG_PROFILE") else None)
    if named is None and any(name in found for name in ("host", *_CREDENTIALS)):
        return found, f"{_config_path()} (not read: settings or environment already configure this endpoint, as " \
                      "the Databricks SDK would; name a profile with profile = or DATABRICKS_CONFIG_PROFILE)"
    keys, label = _profile(endpoint.name, named)
    for name in ("host", "auth_type", *_CREDENTIALS):
        if name not in found and keys.get(name):
            found[name] = Found(keys[name], f"{label}")
    return found, label


def resolve(endpoint: Any, base_headers: dict[str, str]) -> Credentials:
    """The credentials of a Databricks endpoint; reads settings only, sends nothing."""
    found, label = gather(endpoint)
    name = endpoint.name
    host = found.get("host")
    if host is None:
        raise ConfigError(f"endpoint {name!r}: no Databricks host; set host in the endpoint settings, "
                          f"export DATABRICKS_HOST, or add host to {label}")
    url = host.value.rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "https://" + url
    kind = found["auth_type"].value if "auth_type" in found else None
    if kind is None:
        if "token" in found and ("client_id" in found or "client_secret" in found):
            other = found.get("client_id") or found["client_secret"]
            raise ConfigError(f"endpoint {name!r}: more than one Databricks auth type is configured: a token "
                              f"({found['token'].source}) and an OAuth client ({other.source}); set auth_type = "
                              "'pat' or 'oauth-m2m' (or DATABRICKS_AUTH_TYPE) to choose, as the Databricks SDK asks")
        m2m = {"client_id", "client_secret"} <= found.keys() or endpoint.client_id_env or endpoint.client_secret_env
        kind = "pat" if "token" in found else "oauth-m2m" if m2m else None
    if kind == "pat":
        token = found.get("token")
        if token is None:
            raise ConfigError(f"endpoint {name!r}: auth_type 'pat' ({found['auth_type'].source}) needs a token; "
                              f"export {endpoint.key_env} or add token to {label}")
        where = "the token in " + token.source if token.source == label else token.source
        return Credentials(url, {**base_headers, "Authorization": f"Bearer {token.value}"}, where)
    if kind == "oauth-m2m":
        missing = [key for key in ("client_id", "client_secret") if key not in found]
        if missing:
            variables = {"client_id": endpoint.client_id_env or "DATABRICKS_CLIENT_ID",
                         "client_secret": endpoint.client_secret_env or "DATABRICKS_CLIENT_SECRET"}
            raise ConfigError(f"endpoint {name!r}: OAuth M2M needs a client id and secret; no {missing[0]}: "
                              f"export {variables[missing[0]]} or add {missing[0]} to {label}")
        source = ClientCredentials(name, base_headers, url, found["client_id"], found["client_secret"])
        return Credentials(url, base_headers, source.describe(), source)
    if not sdk_installed():
        if kind is None:
            raise ConfigError(
                f"endpoint {name!r}: no Databricks credentials; export {endpoint.key_env} (a personal access "
                "token), or DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (a service principal's OAuth "
                f"secret), or add token, or client_id and client_secret, to {label}; for any other auth type "
                f"(azure-cli, databricks-cli, ...): {_INSTALL_SDK}")
        raise ConfigError(f"endpoint {name!r}: auth_type {kind!r} ({found['auth_type'].source}) is one of "
                          f"databricks-sdk's; {_INSTALL_SDK}. Without it: 'pat' or 'oauth-m2m'")
    source = SdkCredentials(name, base_headers, url, endpoint, None if kind in (None, SDK) else kind, found)
    return Credentials(url, base_headers, source.describe(), source)


def _redact(text: str, secrets: list[str]) -> str:
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _again(exc: AIQueryError) -> AIQueryError:
    """A fresh copy of a shared fetch's error for each request it fails (the engine annotates them)."""
    if isinstance(exc, RequestError):
        return type(exc)(str(exc), endpoint=exc.endpoint, status=exc.status, retryable=exc.retryable,
                         retry_after=exc.retry_after)
    return type(exc)(str(exc))


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # a background refresh that failed: the next request that needs it raises


class TokenSource:
    """A bearer token shared by every request of one endpoint. The engine calls `headers()` for
    each request and `refused()` after a 401; subclasses only fetch (`_fetch`)."""

    auth_type = "oauth"

    def __init__(self, endpoint: str, base_headers: dict[str, str], identity: tuple):
        self.endpoint = endpoint
        self._base = dict(base_headers)
        # Equal for the same credentials and headers: the engine shares one source per identity.
        self.identity = (*identity, tuple(sorted(self._base.items())))
        self._headers: dict[str, str] | None = None  # the current one; a new dict for each token
        self._refresh_at = self._expires_at = 0.0    # time.monotonic()
        self._forced = False          # the current token was fetched because of a 401
        self._fetching: asyncio.Task | None = None
        self._failure: tuple[AIQueryError, float] | None = None
        self.fetches = 0              # tokens asked for, for tests and figures

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    def describe(self) -> str:
        raise NotImplementedError

    async def _fetch(self, transport: Any, forced: bool) -> tuple[str, float | None, float | None]:
        """A new Authorization value, and after how many seconds to refresh it and to stop using it."""
        raise NotImplementedError

    async def headers(self, transport: Any) -> dict[str, str]:
        """The headers to send now: the current token, refreshed in the background when it gets old,
        waited for when there is none or it has expired."""
        now = time.monotonic()
        if self._headers is not None and now < self._expires_at:
            if now >= self._refresh_at and self._fetching is None:
                self._start(transport, forced=False).add_done_callback(_retrieve)
            return self._headers
        await self._wait(transport, forced=False)
        return self._headers

    async def refused(self, sent: dict[str, str], transport: Any) -> bool:
        """A request sent with `sent` was answered 401: True if it may go again with a newer token
        (fetched now if `sent` is still the current one), False if a new token would not help."""
        if sent is not self._headers:
            return self._headers is not None  # a newer token came meanwhile
        if self._forced and time.monotonic() < self._refresh_at:
            return False  # a token fetched after a 401 was refused while fresh: the server will not take ours
        await self._wait(transport, forced=True)
        return True

    async def _wait(self, transport: Any, forced: bool) -> None:
        if self._failure is not None and time.monotonic() < self._failure[1]:
            raise _again(self._failure[0])
        task = self._fetching or self._start(transport, forced)
        try:
            await asyncio.shield(task)  # a cancelled request does not cancel the fetch others wait for
        except AIQueryError as exc:
            raise _again(exc) from None

    def _start(self, transport: Any, forced: bool) -> asyncio.Task:
        self._fetching = asyncio.get_running_loop().create_task(self._refresh(transport, forced))
        return self._fetching

    async def _refresh(self, transport: Any, forced: bool) -> None:
        self.fetches += 1
        try:
            value, refresh_after, valid_for = await self._fetch(transport, forced)
        except AIQueryError as exc:
            now = time.monotonic()
            if not getattr(exc, "retryable", False):
                self._failure = (exc, now + FAILURE_HOLD)
            elif self._headers is not None:  # keep the current token a little longer, try again later
                self._refresh_at = now + min(RETRY_BACKOFF, max(0.0, self._expires_at - now) / 4)
            raise
        finally:
            self._fetching = None
        now = time.monotonic()
        self._failure = None
        self._headers = {**self._base, "Authorization": value}
        self._forced = forced
        self._expires_at = math.inf if valid_for is None else now + valid_for
        self._refresh_at = math.inf if refresh_after is None else now + refresh_after


class ClientCredentials(TokenSource):
    """OAuth M2M: a service principal's client id and secret, exchanged at {host}/oidc/v1/token."""

    auth_type = "oauth-m2m"

    def __init__(self, endpoint: str, base_headers: dict[str, str], host: str, client_id: Found, secret: Found):
        self.url = host + TOKEN_PATH
        digest = hashlib.blake2b(secret.value.encode(), digest_size=16).digest()
        super().__init__(endpoint, base_headers, ("oauth-m2m", self.url, client_id.value, digest))
        self._client_id, self._secret = client_id, secret
        basic = base64.b64encode(f"{client_id.value}:{secret.value}".encode()).decode()
        self._request_headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
                                 "Authorization": f"Basic {basic}"}
        self._secrets = [secret.value, basic]

    def describe(self) -> str:
        return (f"OAuth M2M: the client id came from {self._client_id.source}, "
                f"the secret from {self._secret.source}")

    def _failed(self, detail: str) -> str:
        return (f"endpoint {self.endpoint!r}: OAuth M2M token request to {self.url} failed: "
                f"{_redact(detail, self._secrets)}; the client id came from {self._client_id.source}, the secret "
                f"from {self._secret.source}")

    async def _fetch(self, transport: Any, forced: bool) -> tuple[str, float | None, float | None]:
        try:
            response = await transport.post(self.url, self._request_headers, TOKEN_BODY, TOKEN_TIMEOUT)
        except (SendError, BodyError, Unavailable) as exc:
            from ._engine import transport_failure

            raise transport_failure(exc, self.endpoint, self.url, TOKEN_TIMEOUT, DEFAULT_MAX_RESPONSE_BYTES,
                                    say=self._failed) from None
        try:
            data = json.loads(response.body)
        except (ValueError, RecursionError):  # not JSON, or nested too deep for json.loads
            data = None
        data = data if isinstance(data, dict) else {}
        if not 200 <= response.status < 300:
            parts = [data.get("error") or data.get("error_code"), data.get("error_description") or data.get("message")]
            text = shorten(": ".join(str(x) for x in parts if x))  # a server's text: printable, a few hundred chars
            advice = {401: "check that the secret is current (OAuth secrets expire) and belongs to this client id",
                      400: "check that the secret is current (OAuth secrets expire) and belongs to this client id",
                      403: "check that the service principal belongs to this workspace",
                      404: "check host: it has no Databricks OIDC token endpoint"}.get(response.status)
            message = self._failed(f"HTTP {response.status}" + (f" {text}" if text else ""))
            raise HTTPStatusError(message + (f"; {advice}" if advice else ""), endpoint=self.endpoint,
                                  status=response.status, retryable=is_retryable_status(response.status),
                                  retry_after=parse_retry_after(response.headers))
        token, lifetime = data.get("access_token"), data.get("expires_in")
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        if not isinstance(token, str) or not token:
            raise ResponseError(self._failed("the answer has no access_token"), endpoint=self.endpoint,
                                status=response.status, retryable=not data)  # not JSON: cut short, try again
        if lifetime is None:
            return f"Bearer {token}", None, None  # no expiry given: used until a 401
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
            raise ResponseError(self._failed(f"expires_in is {lifetime!r}, not a positive number of seconds"),
                                endpoint=self.endpoint, status=response.status)
        return f"Bearer {token}", lifetime - min(MAX_REFRESH_MARGIN, lifetime / 4), float(lifetime)


def _sdk_environment() -> list[str]:
    from databricks.sdk.core import Config

    names = []
    for attribute in Config.attributes():
        names += [n for n in (attribute.env, *getattr(attribute, "env_aliases", ())) if n]
    return names


class SdkCredentials(TokenSource):
    """Any auth type of databricks-sdk, through its own Config: the SDK keeps and refreshes its token;
    aiquery asks it for the header at most every SDK_RECHECK seconds, on a worker thread."""

    auth_type = SDK

    def __init__(self, endpoint: str, base_headers: dict[str, str], host: str, settings: Any, kind: str | None,
                 found: dict[str, Found]):
        # Only what the endpoint itself says: the SDK reads the environment and ~/.databrickscfg itself.
        options: dict[str, str] = {}
        if settings.host:
            options["host"] = settings.host
        if settings.profile:
            options["profile"] = settings.profile
        if kind is not None:
            options["auth_type"] = kind
        renamed = {"token": settings.api_key_env, "client_id": settings.client_id_env,
                   "client_secret": settings.client_secret_env}
        for key, variable in renamed.items():
            if variable and os.environ.get(variable):
                options[key] = os.environ[variable]
        self._options, self._host, self._kind = options, host, kind
        self._config: Any = None
        environment = sorted((n, os.environ[n]) for n in _sdk_environment() if n in os.environ)
        digest = hashlib.blake2b(repr((sorted(options.items()), environment)).encode(), digest_size=16).digest()
        super().__init__(endpoint, base_headers, (SDK, host, digest))
        self._secrets = [v for k, v in options.items() if k in ("token", "client_secret")] + \
            [v for n, v in environment if n.endswith(("SECRET", "TOKEN", "PASSWORD", "CREDENTIALS", "_URL"))]
        self._secrets += [f.value for k, f in found.items() if k in ("token", "client_secret")]

    def describe(self) -> str:
        config = self._config
        if config is None:
            return f"databricks-sdk, auth_type {self._kind or '(its default chain)'}"
        return f"databricks-sdk, auth_type {config.auth_type} ({_redact(config.debug_string(), self._secrets)})"

    async def _fetch(self, transport: Any, forced: bool) -> tuple[str, float | None, float | None]:
        value = await asyncio.get_running_loop().run_in_executor(None, self._authenticate, forced)
        return value, SDK_RECHECK, SDK_VALID

    def _authenticate(self, forced: bool) -> str:
        """On a worker thread: the SDK's current Authorization header (a new Config after a 401)."""
        import requests
        from databricks.sdk.core import Config

        try:
            if self._config is None or forced:
                config = Config(**self._options)
                if not same_host(config.host or "", self._host):
                    raise ConfigError(f"endpoint {self.endpoint!r}: databricks-sdk resolved host {config.host}, "
                                      f"but requests go to {self._host}: set host in the endpoint settings")
                self._config = config
            value = self._config.authenticate().get("Authorization")
        except AIQueryError:
            raise
        except requests.RequestException as exc:
            message = f"databricks-sdk could not reach its token service: {_redact(str(exc), self._secrets)}"
            failed = RequestTimeout if isinstance(exc, requests.Timeout) else TransportError
            raise failed(f"endpoint {self.endpoint!r}: {message}", endpoint=self.endpoint, retryable=True) from None
        except Exception as exc:  # the SDK raises ValueError and others for every kind of refusal
            raise RequestError(f"endpoint {self.endpoint!r}: databricks-sdk could not authenticate "
                               f"({self.describe()}): {_redact(str(exc), self._secrets)}",
                               endpoint=self.endpoint) from None
        if not value:
            raise RequestError(f"endpoint {self.endpoint!r}: databricks-sdk gave no Authorization header "
                               f"({self.describe()})", endpoint=self.endpoint)
        return value


def same_host(a: str, b: str) -> bool:
    """Whether two workspace URLs name the same server (the SDK drops a trailing / and port 443)."""
    x, y = urlsplit(a), urlsplit(b)
    ports = {"https": 443, "http": 80}
    return all(getattr(x, a) == getattr(y, a) for a in ("scheme", "hostname")) and \
        (x.port or ports.get(x.scheme)) == (y.port or ports.get(y.scheme))
