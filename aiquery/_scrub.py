"""What of a server's text may reach a user: keys redacted, terminal controls removed, length capped.

A server (or a proxy in front of it) may echo the request's Authorization header in an error
body, a redirect's Location or an answer, and may put terminal escape sequences (window title,
clear screen, clipboard writes) or megabytes of text there. Every message aiquery builds from a
server's bytes passes through `Secrets.redact` (the engine knows each key it sent, see
aiquery/_providers.py) and `printable`, so exceptions, rows' errorMessage (which a CREATE TABLE AS
stores), logs and the CLI's output are clean whatever the server sends.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit, urlunsplit

import orjson

REDACTED = "[REDACTED]"
MAX_SERVER_TEXT = 300  # characters of a server's text kept in one message
MIN_SECRET = 6         # shorter header values are not treated as secrets (they would match ordinary words)

# Header names whose values are credentials, wherever they are configured.
SECRET_HEADER = re.compile(r"authorization|api[-_]?key|secret|password|cookie|signature|credential|"
                           r"(^|[-_])(key|token)$", re.I)
# Query parameters that carry credentials in URLs (shown by `aiquery endpoints` with the value redacted).
_SECRET_PARAMETER = re.compile(r"(^|[-_.])(api[-_]?key|key|token|secret|password|passwd|sig|signature|auth|"
                               r"credential|code)s?$", re.I)
# Terminal controls: CSI and (terminated) OSC sequences whole, other escapes, C0 (but tab and newline), DEL, C1,
# bidirectional overrides (which reorder what a terminal shows), and lone surrogates (what
# surrogateescape made of bytes that are not UTF-8; no encoder accepts them).
_CONTROLS = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)|\x1b.?|"
                       r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]", re.S)


class Secrets:
    """The keys one endpoint sends, in every form a server might echo them back."""

    __slots__ = ("texts", "raw")

    def __init__(self, values: Iterable[str] = ()):
        forms: set[str] = set()
        for value in values:
            scheme, _, credential = value.partition(" ")
            parts = [value]
            if credential and scheme.lower() in ("bearer", "basic", "token"):
                parts = [credential]
                if scheme.lower() == "basic":  # user:password, base64
                    try:
                        parts += base64.b64decode(credential, validate=True).decode().split(":", 1)
                    except ValueError:
                        pass
            for part in parts:
                if len(part) >= MIN_SECRET:
                    forms.update((part, quote(part, safe=""), quote_plus(part), orjson.dumps(part).decode()[1:-1],
                                  base64.b64encode(part.encode()).decode().rstrip("="),
                                  base64.b64encode(f"token:{part}".encode()).decode().rstrip("=")))
        # A form holding another is redacted with it ("Bearer K" -> "Bearer [REDACTED]"): one search fewer.
        self.texts = tuple(f for f in forms if not any(o != f and o in f for o in forms))
        self.raw = tuple(t.encode() for t in self.texts)
    @classmethod
    def of(cls, key: str | None, headers: Mapping[str, str], url: str = "") -> Secrets:
        """The key, the values of headers whose names say they hold credentials, and of such query
        parameters of the URL (`?key=...`: allowed, since some gateways want it, but never shown)."""
        query = parse_qsl(urlsplit(url).query)
        return cls([key] * bool(key) + [v for name, v in headers.items() if SECRET_HEADER.search(name)]
                   + [v for name, v in query if _SECRET_PARAMETER.search(name)])

    def __bool__(self) -> bool:
        return bool(self.texts)

    def __repr__(self) -> str:
        return f"<Secrets: {len(self.texts)} forms>"

    def redact(self, text: str) -> str:
        for secret in self.texts:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def redact_bytes(self, data: bytes) -> bytes:
        for secret in self.raw:
            if secret in data:
                data = data.replace(secret, REDACTED.encode())
        return data


NO_SECRETS = Secrets()


def printable(text: str) -> str:
    """`text` without terminal controls (tab and newline stay)."""
    return _CONTROLS.sub("", text) if _CONTROLS.search(text) else text


def shorten(text: str, limit: int = MAX_SERVER_TEXT) -> str:
    """At most `limit` characters of a server's text, printable, saying how long it was."""
    text = printable(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text.encode('utf-8', 'replace')):,} bytes)"


def safe_url(url: str) -> str:
    """A URL fit to print: userinfo and the values of credential-like query parameters redacted."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(not a valid URL)"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{name}={REDACTED}" if value and _SECRET_PARAMETER.search(name) else (f"{name}={value}" if sep else name)
        for name, sep, value in (item.partition("=") for item in parts.query.split("&"))) if parts.query else ""
    return printable(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))
