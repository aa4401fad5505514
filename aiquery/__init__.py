"""aiquery: Databricks-style ai_query() for DuckDB.

    import aiquery
    con = aiquery.connect(endpoints={"chat": {"base_url": "http://localhost:8080/v1", "model": "m"}})
    con.sql("SELECT ai_query('chat', 'Say hi')").fetchall()
"""

from ._config import Endpoint
from ._dialect import hint, translate
from ._engine import Engine
from ._errors import (AIQueryError, ArgumentError, BatchError, BudgetExceeded, CacheWarning, ConfigError, HTTPStatusError,
                      OutputError, QueryInterrupted, RequestError, RequestTimeout, ResponseError, TransportError,
                      UnknownEndpointError)
from ._estimate import estimate
from ._readahead import explain
from ._registration import connect, register
from ._script import sql
from ._transport import AiohttpTransport, HttpxTransport

__version__ = "0.1.0"

__all__ = [
    "AIQueryError", "AiohttpTransport", "ArgumentError", "BatchError", "BudgetExceeded", "CacheWarning", "ConfigError", "Endpoint",
    "Engine", "HTTPStatusError", "HttpxTransport", "OutputError", "QueryInterrupted", "RequestError", "RequestTimeout",
    "ResponseError", "TransportError", "UnknownEndpointError",
    "connect", "estimate", "explain", "hint", "register", "sql", "translate",
]
