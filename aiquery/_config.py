"""Endpoint settings: every default named once, and where settings are read from.

Settings come from (later wins): the built-in local models, an `aiquery.toml` (or the file named by AIQUERY_CONFIG, or the
`config=` path) under `[endpoints.NAME]`, then the `endpoints=` mapping passed in Python.
Keys are never read from files: a setting names the environment variable that holds the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ConfigError
from ._scrub import SECRET_HEADER
from ._usage import Price

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


def _read_toml(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def read_config_file(path: str | os.PathLike) -> dict[str, Endpoint]:
    """The endpoints of a TOML file's `[endpoints.NAME]` tables."""
    tables = _read_toml(path).get("endpoints", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"config file {str(path)!r}: 'endpoints' must be a table of [endpoints.NAME] tables")
    return {name: make_endpoint(name, settings, str(path)) for name, settings in tables.items()}


ALLOWED_HOSTS_ENV = "AIQUERY_ALLOWED_HOSTS"


def read_allowed_hosts(path: str | os.PathLike | None = None) -> list[str] | None:
    """Host patterns requests may go to: AIQUERY_ALLOWED_HOSTS (comma-separated) and the config file's
    top-level `allowed_hosts = [...]`, together; None when neither is set (any host)."""
    patterns = None
    env = os.environ.get(ALLOWED_HOSTS_ENV)
    if env is not None:
        patterns = [p.strip() for p in env.split(",") if p.strip()]
    path = path if path is not None else default_config_path()
    if path is not None:
        listed = _read_toml(path).get("allowed_hosts")
        if listed is not None:
            if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
                raise ConfigError(f"config file {str(path)!r}: allowed_hosts must be a list of host patterns "
                                  'like ["api.openai.com", "*.cloud.databricks.com"]')
            patterns = (patterns or []) + listed
    return patterns


_PRICE_FIELDS = ("input", "output", "cached_input", "batch")


def read_prices(path: str | os.PathLike | None = None) -> dict[str, Price]:
    """`[prices."MODEL"]` tables of the config file: input =, output =, cached_input = (USD per
    million tokens) and batch = (the batch API's multiplier, 0.5 for half price)."""
    path = path if path is not None else default_config_path()
    if path is None:
        return {}
    tables = _read_toml(path).get("prices", {})
    prices = {}
    for model, table in tables.items() if isinstance(tables, dict) else ():
        if not (isinstance(table, dict) and set(table) <= set(_PRICE_FIELDS) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in table.values())
                and table.get("batch", 1.0) <= 1.0):
            raise ConfigError(f"config file {str(path)!r}: [prices.{model!r}] takes input =, output =, "
                              "cached_input = (USD per million tokens) and batch = (a multiplier from 0 to 1, "
                              f"0.5 for half price), got {table!r}")
        prices[model] = Price(table.get("input", 0.0), table.get("output", 0.0), table.get("cached_input"),
                              table.get("batch", 1.0))
    return prices


DEFAULT_CHAT_ENDPOINT = "local-chat"
DEFAULT_EMBEDDING_ENDPOINT = "local-embed"
# ai_classify's default when no default_chat_endpoint is set: it scored better than local-chat there
# (benchmarks/RESULTS.md, "Task functions on the built-in models and candidates").
DEFAULT_CLASSIFY_ENDPOINT = "local-classify"


def read_default_endpoints(path: str | os.PathLike | None = None) -> dict[str, str]:
    """The endpoints the task functions (ai_gen, ai_classify, ai_similarity, ...) use when not told:
    the config file's top-level `default_chat_endpoint` / `default_embedding_endpoint`, else the
    built-in local-chat / local-embed. Keys: "chat" and "embeddings"."""
    defaults = {"chat": DEFAULT_CHAT_ENDPOINT, "embeddings": DEFAULT_EMBEDDING_ENDPOINT}
    path = path if path is not None else default_config_path()
    if path is None:
        return defaults
    table = _read_toml(path)
    for task, key in (("chat", "default_chat_endpoint"), ("embeddings", "default_embedding_endpoint")):
        name = table.get(key)
        if name is None:
            continue
        if not isinstance(name, str) or not name:
            raise ConfigError(f"config file {str(path)!r}: {key} must be the name of an endpoint, got {name!r}")
        defaults[task] = name
    return defaults


def default_config_path() -> Path | None:
    """AIQUERY_CONFIG if set (it must exist), else ./aiquery.toml when present."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        return Path(named)
    local = Path.cwd() / CONFIG_FILE_NAME
    return local if local.is_file() else None


def endpoints_config_path(endpoints: Mapping[str, Any] | None,
                          config: str | os.PathLike | None) -> str | os.PathLike | None:
    """The config file a registration reads its endpoints from: `config`, else the default one
    unless `endpoints` were given."""
    return config if config is not None else (default_config_path() if endpoints is None else None)


def load_endpoints(endpoints: Mapping[str, Any] | None = None,
                   config: str | os.PathLike | None = None) -> dict[str, Endpoint]:
    """All endpoint settings for one registration: the built-in ones, the config file's on top, then
    `endpoints` on top of those (a name defined later replaces the whole earlier definition)."""
    path = endpoints_config_path(endpoints, config)
    result = {name: make_endpoint(name, s, BUILT_IN) for name, s in BUILTIN_ENDPOINTS.items()}
    if path is not None:
        result.update(read_config_file(path))
    if endpoints is not None:
        if not isinstance(endpoints, Mapping):
            raise ConfigError(f"endpoints must be a mapping of name to settings, got {type(endpoints).__name__}")
        result.update({name: make_endpoint(name, s, "python") for name, s in endpoints.items()})
    return result
