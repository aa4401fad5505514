"""Endpoint settings: every default named once, and where settings are read from.

read_settings() builds one registration's Settings from one file, parsed once: the `config=` path
(False: no file), else the file named by AIQUERY_CONFIG, else ./aiquery.toml if there is one.
Endpoints come in layers (later wins): the built-in local models, the file's `[endpoints.NAME]`,
then the `endpoints=` mapping passed in Python. Prices, allowed_hosts and the task functions'
default endpoints come from the same file. Keys are never read from files: a setting names the
environment variable that holds the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ._errors import ConfigError
from ._scrub import REDACTED, SECRET_HEADER, safe_url
from ._usage import Price, price_of

TASKS = ("chat", "completions", "embeddings", "custom")
PROVIDERS = ("openai", "databricks", "local")

DEFAULT_TASK = "chat"
DEFAULT_PROVIDER = "openai"
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
DATABRICKS_KEY_ENV = "DATABRICKS_TOKEN"
DATABRICKS_CLIENT_ID_ENV = "DATABRICKS_CLIENT_ID"
DATABRICKS_CLIENT_SECRET_ENV = "DATABRICKS_CLIENT_SECRET"
DEFAULT_MAX_CONCURRENCY = 32
DEFAULT_TIMEOUT = 120.0            # seconds for one HTTP request, body included
DEFAULT_EMBEDDING_BATCH_SIZE = 64  # inputs per embeddings request
DEFAULT_MAX_ATTEMPTS = 6           # first try included
DEFAULT_MAX_RETRY_TIME = 300.0     # seconds, from the first failure of one request
DEFAULT_LOOKAHEAD = 8192           # rows a query may have in flight or answered ahead of DuckDB
# Batch mode (aiquery/_batch.py): OpenAI's limits per batch file, and how often a batch is polled.
DEFAULT_BATCH_MAX_REQUESTS = 50_000
DEFAULT_BATCH_MAX_BYTES = 200_000_000
DEFAULT_BATCH_POLL_INTERVAL = 30.0  # seconds between status checks of a running batch
DEFAULT_BATCH_WINDOW = "24h"        # the completion window asked for
BATCH_GATHER = 0.5                  # seconds without new rows after which the rows gathered are submitted
BATCH_LOOKAHEAD = 50_000            # rows a batch-mode query reads ahead of DuckDB (one file's worth)
# Prefix-aware dispatch and prompt_cache_key look at this much of a prompt's start (about 256
# tokens): shorter prompts gain little from a provider's prefix cache (OpenAI's starts at 1,024 tokens).
PREFIX_CHARS = 1024
DEFAULT_CONTEXT_TOKENS = 8192      # a request's prompt and answer: ai_agg, ai_top_k and ai_join split to fit
# Bytes of one response body, read and (for gzip/deflate) decompressed: a chat answer is a few KB,
# 64 embeddings of 3,072 dimensions about 4 MB; a body that grows past this is refused.
DEFAULT_MAX_RESPONSE_BYTES = 64 << 20
CONFIG_FILE_NAME = "aiquery.toml"
BUILT_IN = "built-in"
# Endpoints every connection has unless settings use these names: models shipped in packages, run
# in this process (aiquery/_models.py). One model instance computes at a time; a second request
# in flight keeps it busy between answers.
BUILTIN_ENDPOINTS = {
    "local-chat": {"task": "chat", "provider": "local", "model": "smollm2-135m-instruct",
                   "max_concurrency": 2, "timeout": 600.0, "lookahead": 64, "context_tokens": 4096},
    "local-completions": {"task": "completions", "provider": "local", "model": "smollm2-135m-instruct",
                          "max_concurrency": 2, "timeout": 600.0, "lookahead": 64},
    "local-embed": {"task": "embeddings", "provider": "local", "model": "all-minilm-l6-v2",
                    "max_concurrency": 2, "batch_size": 32, "timeout": 600.0, "lookahead": 2048},
    "local-classify": {"task": "chat", "provider": "local", "model": "minilm-zero-shot",
                       "max_concurrency": 2, "timeout": 600.0, "lookahead": 2048},
}
CONFIG_ENV = "AIQUERY_CONFIG"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


@dataclass(frozen=True)
class Endpoint:
    """Settings of one endpoint. `name` is what SQL calls it: `ai_query('<name>', ...)`."""

    task: str = DEFAULT_TASK
    provider: str = DEFAULT_PROVIDER
    base_url: str | None = None      # openai: the server's base URL ("http://host:port/v1")
    model: str | None = None         # openai: the body's "model"; databricks: the serving endpoint's name
    api_key_env: str | None = None   # name of the environment variable holding the key
    api_key_header: str | None = None  # send the key in this header, as it is ("api-key" for Azure OpenAI);
                                       # unset: "Authorization: Bearer KEY"
    host: str | None = None          # databricks: workspace URL (else DATABRICKS_HOST or ~/.databrickscfg)
    profile: str | None = None       # databricks: ~/.databrickscfg profile (else DATABRICKS_CONFIG_PROFILE)
    auth_type: str | None = None     # databricks: pat | oauth-m2m | databricks-sdk | any databricks-sdk auth type
    client_id_env: str | None = None      # databricks OAuth M2M: variable holding the client id
    client_secret_env: str | None = None  # ... and the one holding the secret
    served_model: str | None = None  # databricks: one served model behind a multi-model endpoint
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT
    batch_size: int = DEFAULT_EMBEDDING_BATCH_SIZE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_retry_time: float = DEFAULT_MAX_RETRY_TIME
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    lookahead: int = DEFAULT_LOOKAHEAD   # 0 turns reading ahead of DuckDB off
    context_tokens: int = DEFAULT_CONTEXT_TOKENS  # the model's context: many-row functions split to fit it
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES  # a longer response body fails its row(s)
    cache: bool = True               # keep answers in the response cache (off e.g. for sampling at temperature > 0)
    normalize: bool = False          # embeddings: scale each vector to unit length
    batch: bool = False              # send through the provider's batch API (half price, answers within 24 h)
    batch_max_requests: int = DEFAULT_BATCH_MAX_REQUESTS  # requests per batch file
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES        # bytes per batch file
    batch_poll_interval: float = DEFAULT_BATCH_POLL_INTERVAL
    batch_completion_window: str = DEFAULT_BATCH_WINDOW
    batch_max_wait: float | None = None  # seconds a query waits for its batch; then it fails, the batch runs on
    prompt_cache_key: bool = False   # send OpenAI's prompt_cache_key, a digest of the prompt's first part
    prefix_dispatch: bool = True     # send requests that share a prompt prefix one after another
    budget_tokens: int | None = None     # tokens this endpoint may use in this process; then rows fail
    budget_usd: float | None = None      # the same in estimated USD (needs a price for the model)
    query_budget_tokens: int | None = None  # the same for each query
    query_budget_usd: float | None = None
    model_parameters: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # extra, non-secret headers
    name: str = ""
    source: str = "python"           # where the settings came from, shown by `aiquery endpoints`

    def __post_init__(self) -> None:
        where = f"endpoint {self.name!r}" if self.name else "endpoint"
        if self.task not in TASKS:
            raise ConfigError(f"{where}: task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.provider not in PROVIDERS:
            raise ConfigError(f"{where}: provider {self.provider!r} is not one of {', '.join(PROVIDERS)}")
        for setting in ("max_concurrency", "batch_size", "max_attempts", "batch_max_requests", "batch_max_bytes",
                        "context_tokens", "max_response_bytes"):
            value = getattr(self, setting)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}: {setting} must be a positive integer, got {value!r}")
        for setting in ("requests_per_minute", "tokens_per_minute", "budget_tokens", "query_budget_tokens"):
            value = getattr(self, setting)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{where}: {setting} must be a positive integer or unset, got {value!r}")
        if not isinstance(self.lookahead, int) or isinstance(self.lookahead, bool) or self.lookahead < 0:
            raise ConfigError(f"{where}: lookahead must be a whole number of rows (0 = off), got {self.lookahead!r}")
        for setting in ("budget_usd", "query_budget_usd"):
            value = getattr(self, setting)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"{where}: {setting} must be a number of US dollars or unset, got {value!r}")
        for setting in ("timeout", "max_retry_time", "batch_poll_interval", "batch_max_wait"):
            value = getattr(self, setting)
            if value is None and setting == "batch_max_wait":
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{where}: {setting} must be a positive number of seconds, got {value!r}")
        for setting in ("cache", "normalize", "batch", "prompt_cache_key", "prefix_dispatch"):
            if not isinstance(getattr(self, setting), bool):
                raise ConfigError(f"{where}: {setting} must be true or false, got {getattr(self, setting)!r}")
        if self.normalize and self.task != "embeddings":
            raise ConfigError(f"{where}: normalize applies to embeddings endpoints only")
        if self.batch and self.provider != "openai":
            raise ConfigError(f"{where}: batch = true needs an OpenAI-compatible provider (its /files and "
                              f"/batches API); provider {self.provider!r} has no batch API")
        if not isinstance(self.batch_completion_window, str) or not self.batch_completion_window:
            raise ConfigError(f"{where}: batch_completion_window must be a string like '24h', "
                              f"got {self.batch_completion_window!r}")
        if not isinstance(self.model_parameters, Mapping):
            raise ConfigError(f"{where}: model_parameters must be a table/dict, got {self.model_parameters!r}")
        tools = [name for name in ("tools", "tool_choice") if name in self.model_parameters]
        if tools:
            raise ConfigError(f"{where}: {tools[0]} belongs in the modelParameters of an ai_query call, not in "
                              "model_parameters: it changes the column's type, which DuckDB must know from the call")
        for setting, example in (("api_key_env", "OPENAI_API_KEY"), ("client_id_env", "DATABRICKS_CLIENT_ID"),
                                 ("client_secret_env", "DATABRICKS_CLIENT_SECRET")):
            value = getattr(self, setting)
            if value is not None and not (isinstance(value, str) and value.isidentifier()):
                raise ConfigError(f"{where}: {setting} must be the NAME of an environment variable (like {example}), "
                                  "not the value itself")
        databricks_only = [s for s in ("auth_type", "client_id_env", "client_secret_env", "served_model", "host",
                                       "profile") if getattr(self, s) is not None]
        if databricks_only and self.provider != "databricks":
            raise ConfigError(f"{where}: {databricks_only[0]} applies to provider = 'databricks' only")
        for setting in ("auth_type", "served_model", "host", "profile"):
            value = getattr(self, setting)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{where}: {setting} must be a non-empty string, got {value!r}")
        if self.api_key_header is not None and not (isinstance(self.api_key_header, str)
                                                    and _HEADER_NAME.fullmatch(self.api_key_header)):
            raise ConfigError(f"{where}: api_key_header must be an HTTP header name like 'api-key', "
                              f"got {self.api_key_header!r}")
        if self.api_key_header is not None and self.provider != "openai":
            raise ConfigError(f"{where}: api_key_header applies to provider = 'openai' only")
        if not isinstance(self.headers, Mapping) or not all(
                isinstance(k, str) and _HEADER_NAME.fullmatch(k) and isinstance(v, str) and "\n" not in v
                and "\r" not in v for k, v in self.headers.items()):
            raise ConfigError(f"{where}: headers must map header names to one-line strings "
                              f"(header names: {list(self.headers) if isinstance(self.headers, Mapping) else '?'})")
        if self.source not in ("python", BUILT_IN) and any(SECRET_HEADER.search(k) for k in self.headers):
            raise ConfigError(f"{where} ({self.source}): never put a key in headers; export it in an environment "
                              "variable, name that variable with api_key_env, and name the header with "
                              "api_key_header")

    def __repr__(self) -> str:  # the dataclass's, with credential headers and URL secrets redacted
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown["headers"] = {k: REDACTED if SECRET_HEADER.search(k) else v for k, v in self.headers.items()}
        for setting in ("base_url", "host"):
            if shown[setting]:
                shown[setting] = safe_url(shown[setting])
        return f"Endpoint({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def key_env(self) -> str | None:
        """The environment variable the key is read from, defaults applied."""
        if self.api_key_env:
            return self.api_key_env
        if self.provider == "databricks":
            return DATABRICKS_KEY_ENV
        if self.base_url in (None, OPENAI_BASE_URL):
            return OPENAI_KEY_ENV
        return None


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(Endpoint) if f.name not in ("name", "source"))
_SECRET_SETTINGS = ("api_key", "key", "token", "password", "secret", "client_secret", "access_token",
                    "azure_client_secret", "google_credentials")


def make_endpoint(name: str, settings: Mapping[str, Any] | Endpoint, source: str) -> Endpoint:
    """An Endpoint from a dict of settings (or an Endpoint), checked, named and stamped with its source."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"endpoint names must be non-empty strings, got {name!r}")
    if isinstance(settings, Endpoint):
        return dataclasses.replace(settings, name=name, source=source)
    if not isinstance(settings, Mapping):
        raise ConfigError(f"endpoint {name!r}: settings must be a dict or aiquery.Endpoint, got {type(settings).__name__}")
    for key in settings:
        if key in _SECRET_SETTINGS:
            raise ConfigError(
                f"endpoint {name!r} ({source}): never put a key in settings; export it in an environment "
                f"variable and name that variable with api_key_env (client_secret_env for an OAuth client secret), "
                f"or keep it in ~/.databrickscfg")
        if key not in SETTING_NAMES:
            hint = difflib.get_close_matches(key, SETTING_NAMES, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; valid settings: {', '.join(SETTING_NAMES)}"
            raise ConfigError(f"endpoint {name!r} ({source}): unknown setting {key!r}{suggestion}")
    return Endpoint(**settings, name=name, source=source)


ALLOWED_HOSTS_ENV = "AIQUERY_ALLOWED_HOSTS"
DEFAULT_CHAT_ENDPOINT = "local-chat"
DEFAULT_EMBEDDING_ENDPOINT = "local-embed"
# ai_classify's default when no default_chat_endpoint is set: it scored better than local-chat there
# (benchmarks/RESULTS.md, "Task functions on the built-in models and candidates").
DEFAULT_CLASSIFY_ENDPOINT = "local-classify"
_DEFAULT_KEYS = {"chat": "default_chat_endpoint", "embeddings": "default_embedding_endpoint"}
_TOP_LEVEL = ("endpoints", "prices", "allowed_hosts", *_DEFAULT_KEYS.values())
_PRICE_FIELDS = ("input", "output", "cached_input", "batch")
FROM_ARGUMENT, FROM_ENV, FROM_CWD = "config=", f"${CONFIG_ENV}", f"./{CONFIG_FILE_NAME}"


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything one registration takes from settings, read by read_settings() from one file:
    `path` (None: no file) and `origin`, how that file was chosen. The mappings are read-only."""

    endpoints: Mapping[str, Endpoint]
    prices: Mapping[str, Price]               # USD per million tokens, by model
    allowed_hosts: tuple[str, ...] | None     # host patterns requests may go to (None: any)
    default_endpoints: Mapping[str, str]      # the task functions' endpoints, keys "chat" and "embeddings"
    path: Path | None
    origin: str                               # config=, $AIQUERY_CONFIG, ./aiquery.toml, or why there is no file

    def __repr__(self) -> str:  # names and sources only: Endpoint's own repr shows the rest, keys redacted
        endpoints = ", ".join(f"{name!r} ({e.source})" for name, e in self.endpoints.items())
        hosts = None if self.allowed_hosts is None else list(self.allowed_hosts)
        return (f"Settings(path={None if self.path is None else str(self.path)!r} ({self.origin}), "
                f"endpoints=[{endpoints}], prices={sorted(self.prices)}, allowed_hosts={hosts}, "
                f"default_endpoints={dict(self.default_endpoints)})")


def config_file(config: str | os.PathLike | bool | None = None) -> tuple[Path | None, str]:
    """The one file settings are read from, and how it was chosen: `config` (False: no file), else
    the file named by $AIQUERY_CONFIG (unless empty), else ./aiquery.toml when there is one."""
    if config is False:
        return None, "config=False"
    if config is not None:
        if isinstance(config, bool) or not isinstance(config, (str, os.PathLike)) or not os.fspath(config):
            raise ConfigError(f"config must be the path of a TOML file, or False to read none, got {config!r}")
        return Path(config).absolute(), FROM_ARGUMENT
    named = os.environ.get(CONFIG_ENV)
    if named:
        return Path(named).absolute(), FROM_ENV
    local = Path.cwd() / CONFIG_FILE_NAME
    if local.is_file():
        return local, FROM_CWD
    return None, f"no config=, no ${CONFIG_ENV}, no {CONFIG_FILE_NAME} in {Path.cwd()}"


def _read_toml(path: Path, where: str, origin: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        fix = f": point {CONFIG_ENV} at an existing file, or unset it" if origin == FROM_ENV else ""
        raise ConfigError(f"{where} does not exist{fix}") from None
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None


def read_settings(config: str | os.PathLike | bool | None = None, endpoints: Mapping[str, Any] | None = None,
                  default_chat_endpoint: str | None = None,
                  default_embedding_endpoint: str | None = None) -> Settings:
    """One registration's settings, the file (see config_file()) parsed once. In layers, later wins:
    endpoints are the built-in ones, the file's `[endpoints.NAME]`, then `endpoints` (a name defined
    later replaces the whole earlier definition); the task functions' defaults are the built-in
    models, the file's default_chat_endpoint / default_embedding_endpoint, then the arguments.
    Prices and allowed_hosts come from the same file (allowed_hosts together with $AIQUERY_ALLOWED_HOSTS)."""
    path, origin = config_file(config)
    where = f"config file {str(path)!r}" + (f" (named by {CONFIG_ENV})" if origin == FROM_ENV else "")
    table = _read_toml(path, where, origin) if path is not None else {}
    for key in table:
        if key not in _TOP_LEVEL:
            hint = difflib.get_close_matches(key, _TOP_LEVEL, n=1)
            raise ConfigError(f"{where}: unknown top-level setting {key!r}"
                              + (f"; did you mean {hint[0]!r}?" if hint else f"; valid: {', '.join(_TOP_LEVEL)}")
                              + " (an endpoint's settings go under [endpoints.NAME])")
    layered = {name: make_endpoint(name, s, BUILT_IN) for name, s in BUILTIN_ENDPOINTS.items()}
    tables = table.get("endpoints", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: 'endpoints' must be a table of [endpoints.NAME] tables")
    layered.update({name: make_endpoint(name, s, str(path)) for name, s in tables.items()})
    if endpoints is not None:
        if not isinstance(endpoints, Mapping):
            raise ConfigError(f"endpoints must be a mapping of name to settings, got {type(endpoints).__name__}")
        layered.update({name: make_endpoint(name, s, "python") for name, s in endpoints.items()})
    prices = _prices(table.get("prices", {}), where)
    _check_budgets(layered, prices)
    defaults = {"chat": DEFAULT_CHAT_ENDPOINT, "embeddings": DEFAULT_EMBEDDING_ENDPOINT}
    for task, key in _DEFAULT_KEYS.items():
        if key in table:
            defaults[task] = _endpoint_name(table[key], f"{where}: {key}")
    for task, name in (("chat", default_chat_endpoint), ("embeddings", default_embedding_endpoint)):
        if name is not None:
            defaults[task] = _endpoint_name(name, _DEFAULT_KEYS[task])
    for task, name in defaults.items():
        endpoint = layered.get(name)  # one not registered at all fails when a function uses it, naming the others
        if endpoint is not None and endpoint.task != task:
            raise ConfigError(f"{_DEFAULT_KEYS[task]} = {name!r} names a {endpoint.task} endpoint; "
                              f"it must be a {task} endpoint")
    return Settings(MappingProxyType(layered), MappingProxyType(prices),
                    _allowed_hosts(table.get("allowed_hosts"), where), MappingProxyType(defaults), path, origin)


def _endpoint_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what} must be the name of an endpoint, got {name!r}")
    return name


def _allowed_hosts(listed: Any, where: str) -> tuple[str, ...] | None:
    """AIQUERY_ALLOWED_HOSTS (comma-separated) and the file's top-level `allowed_hosts = [...]`,
    together; None when neither is set (any host)."""
    patterns = None
    env = os.environ.get(ALLOWED_HOSTS_ENV)
    if env is not None:
        patterns = tuple(p.strip() for p in env.split(",") if p.strip())
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise ConfigError(f"{where}: allowed_hosts must be a list of host patterns "
                              'like ["api.openai.com", "*.cloud.databricks.com"]')
        patterns = (patterns or ()) + tuple(listed)
    return patterns


def _prices(tables: Any, where: str) -> dict[str, Price]:
    """`[prices."MODEL"]` tables: input =, output =, cached_input = (USD per million tokens) and
    batch = (the batch API's multiplier, 0.5 for half price)."""
    if not isinstance(tables, dict):
        raise ConfigError(f'{where}: prices must be a table of [prices."MODEL"] tables, got {tables!r}')
    prices = {}
    for model, table in tables.items():
        if not (isinstance(table, dict) and set(table) <= set(_PRICE_FIELDS) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in table.values())
                and table.get("batch", 1.0) <= 1.0):
            raise ConfigError(f"{where}: [prices.{model!r}] takes input =, output =, "
                              "cached_input = (USD per million tokens) and batch = (a multiplier from 0 to 1, "
                              f"0.5 for half price), got {table!r}")
        prices[model] = Price(table.get("input", 0.0), table.get("output", 0.0), table.get("cached_input"),
                              table.get("batch", 1.0))
    return prices


def _check_budgets(endpoints: Mapping[str, Endpoint], prices: Mapping[str, Price]) -> None:
    for endpoint in endpoints.values():
        if (endpoint.budget_usd is not None or endpoint.query_budget_usd is not None) and \
                price_of(endpoint.model, prices) is None:
            raise ConfigError(f"endpoint {endpoint.name!r}: a USD budget needs the price of model "
                              f"{endpoint.model!r}: add [prices.{json.dumps(endpoint.model or '')}] with "
                              "input = and output = (USD per million tokens) to the config file")
