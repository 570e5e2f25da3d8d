"""gunicorn's access log without secrets: query strings are redacted (`logger_class` in gunicorn.conf.py).

A pre-signed image URL carries its signature in its query (`X-Amz-Signature=…`), and it arrives in
ours (`/predict?url=…`): the whole request line would put it in the log, for as long as the log is
kept and for whoever reads it. Parameter names stay, and the values of the service's own options
(detail, model, resize, the thresholds), which say how a request was asked and are never secret;
every other value, `url` first, becomes REDACTED. The Referer's query goes too, and credentials
headers never reach a format.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from gunicorn.glogging import Logger as GunicornLogger

REDACTED = "REDACTED"
# Options whose values are the service's own vocabulary: kept in the log as they were sent.
KEPT_PARAMETERS = frozenset({"detail", "model", "resize", "adult_threshold", "safe_threshold"})
_SECRET_HEADERS = ("{authorization}i", "{x-api-key}i", "{cookie}i", "{proxy-authorization}i")


def redact_query(query: str) -> str:
    """The query with every value but those of KEPT_PARAMETERS replaced by REDACTED."""
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    return "&".join(
        f"{quote(name, safe='')}={quote(value, safe='') if name in KEPT_PARAMETERS else REDACTED}"
        for name, value in pairs
    )


def redact_target(target: str) -> str:
    """A request target (path?query) or URL with its query redacted."""
    path, sep, query = target.partition("?")
    return f"{path}{sep}{redact_query(query)}" if sep else target


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "-"
    return urlunsplit(parts._replace(query=redact_query(parts.query), fragment=""))


class Logger(GunicornLogger):
    """gunicorn's logger, with the request line, query and Referer redacted (module docstring)."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        method, protocol = environ.get("REQUEST_METHOD", "-"), environ.get("SERVER_PROTOCOL", "-")
        atoms["r"] = f"{method} {redact_target(environ.get('RAW_URI', '') or '')} {protocol}"
        atoms["q"] = redact_query(environ.get("QUERY_STRING", "") or "")
        if atoms.get("f") not in (None, "-"):
            atoms["f"] = _redact_url(atoms["f"])
        if "{referer}i" in atoms:
            atoms["{referer}i"] = _redact_url(atoms["{referer}i"])
        for name in _SECRET_HEADERS:
            if name in atoms:
                atoms[name] = REDACTED
        return atoms
