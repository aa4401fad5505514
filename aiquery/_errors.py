"""Every error aiquery raises.

    AIQueryError
     ├── ConfigError              settings that cannot work (bad TOML, missing host, bad key name)
     ├── ArgumentError            an ai_query argument that cannot work (bad modelParameters, bad type string)
     │    └── UnknownEndpointError  an endpoint name that is not registered
     ├── RequestError             a request to an endpoint failed; carries .endpoint and .status
     │    ├── HTTPStatusError       the endpoint answered with a non-2xx status
     │    ├── TransportError        no answer: connection refused or reset, or no answer in time
     │    │    └── RequestTimeout     no complete answer within the endpoint's timeout
     │    ├── ResponseError         a 2xx answer that is not what the wire format promises
     │    └── BatchError            a provider's batch failed, expired, was cancelled or is still running
     ├── OutputError              the model's answer does not fit responseFormat / returnType
     ├── QueryInterrupted         Ctrl-C or con.interrupt() stopped the query
     └── BudgetExceeded           a token or cost budget was reached; no more requests are sent

    CacheWarning (a UserWarning)  the response cache cannot do its job (damaged, not writable, locked):
                                  queries still get every answer; it names the file and what to do

Messages name the endpoint and say what to do next. They never contain an API key: keys are only
ever read into request headers, and errors are built from endpoint names, URLs without userinfo,
statuses and the provider's own error text, from which every key the request carried is redacted
and terminal controls are removed (aiquery/_scrub.py), whatever the server echoes.
"""

from __future__ import annotations


class AIQueryError(Exception):
    """Base class of every aiquery error.

    `attempts` is how many requests were sent for the row before it failed (details => true shows
    it); None for an error no request was sent for (bad arguments, a budget reached, a bad answer shape).
    """

    attempts: int | None = None


class ConfigError(AIQueryError):
    """Endpoint settings that cannot work."""


class ArgumentError(AIQueryError):
    """An argument to an aiquery SQL function that cannot work."""


class UnknownEndpointError(ArgumentError):
    """An endpoint name that is not registered on this connection."""


class OutputError(AIQueryError):
    """A model answer that does not fit the requested responseFormat or returnType."""


class RequestError(AIQueryError):
    """A request to an endpoint failed.

    `status` is the HTTP status when there was one; `retryable` says whether trying again may help.
    """

    def __init__(self, message: str, *, endpoint: str, status: int | None = None,
                 retryable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class HTTPStatusError(RequestError):
    """The endpoint answered with a non-2xx status."""


class TransportError(RequestError):
    """The endpoint could not be reached or did not answer in time."""


class RequestTimeout(TransportError):
    """No complete answer within the endpoint's timeout (body included); retried like a connection error."""


class ResponseError(RequestError):
    """The endpoint answered 2xx with a body that does not follow its wire format."""


class BatchError(RequestError):
    """A batch (batch mode) failed, expired or was cancelled at the provider, or is still running
    past batch_max_wait; `batch_id` is the provider's id of it."""

    def __init__(self, message: str, *, endpoint: str, batch_id: str | None = None, status: int | None = None):
        super().__init__(message, endpoint=endpoint, status=status)
        self.batch_id = batch_id


class QueryInterrupted(AIQueryError):
    """The query was interrupted (Ctrl-C or con.interrupt()); requests in flight were cancelled."""


class BudgetExceeded(AIQueryError):
    """A token or cost budget of an endpoint or query was reached; the remaining rows were not sent."""


class CacheWarning(UserWarning):
    """The response cache cannot read or store answers; queries go on without it. Names the file and the fix."""
