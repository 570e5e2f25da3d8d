"""gunicorn's logs: without secrets (query strings redacted), and in JSON lines with
NSFW_LOG_FORMAT=json (`logger_class` in gunicorn.conf.py).

A pre-signed image URL carries its signature in its query (`X-Amz-Signature=…`), and it arrives in
ours (`/predict?url=…`): the whole request line would put it in the log, for as long as the log is
kept and for whoever reads it. Parameter names stay, and the values of the service's own options
(detail, model, resize, the thresholds), which say how a request was asked and are never secret;
every other value, `url` first, becomes REDACTED. The Referer's query goes too, and credentials
headers never reach a format.

With NSFW_LOG_FORMAT=json both of gunicorn's logs are JSON lines (python-json-logger's formatter), and
each access line has the fields an operator filters on: request id, key name, route rule, status,
duration, verdict, and the client address (after trusted proxies) beside the socket's. The app and
the front fill those facts in a dict that gunicorn's environ for this log carries (nsfw/web/frontend.py).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from gunicorn.glogging import Logger as GunicornLogger

from nsfw.config import ConfigError, Settings
from nsfw.web.observe import FACTS, formatter
from nsfw.web.routes import REDACTED, redact_path

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
    """A request target (path?query) with its query redacted, and a key's token in its path
    (pict-rs' and Pleroma's URLs carry one: nsfw/web/routes.py)."""
    path, sep, query = target.partition("?")
    origin, slashes, rest = path.partition("://")  # an absolute-form target: http://host/path
    if slashes:
        host, slash, rest = rest.partition("/")
        path = f"{origin}://{host}{_redact_path(slash + rest) if slash else ''}"
    else:
        path = _redact_path(path)
    return f"{path}{sep}{redact_query(query)}" if sep else path


def _redact_path(path: str) -> str:
    """redact_path, also of a path spelt with percent-escapes (the app routes it decoded)."""
    if "%" not in path:
        return redact_path(path)
    decoded = unquote(path)
    return quote(redact_path(decoded), safe="/") if redact_path(decoded) != decoded else path


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "-"
    return urlunsplit(parts._replace(path=_redact_path(parts.path), query=redact_query(parts.query), fragment=""))


class Logger(GunicornLogger):
    """gunicorn's logger, with the request line, query and Referer redacted, and JSON lines with
    NSFW_LOG_FORMAT=json (module docstring)."""

    json_lines = False

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.json_lines = _log_format() == "json"
        if self.json_lines:
            for handler in self.error_log.handlers:
                handler.setFormatter(formatter("json", fields=("asctime", "levelname", "name", "message", "process")))
            # An access line's own fields come with the record (access below).
            for handler in self.access_log.handlers:
                handler.setFormatter(formatter("json", fields=("asctime", "name", "message")))

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.json_lines:
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        atoms = self.atoms(resp, req, environ, request_time)
        facts = environ.get(FACTS) or {}
        method, target = environ.get("REQUEST_METHOD", "-"), redact_target(environ.get("RAW_URI", "") or "")
        fields = {
            "request_id": atoms.get("{x-request-id}o", "-"),
            "method": method,
            "path": target,
            "route": facts.get("route", "-"),
            "status": int(atoms["s"]) if str(atoms.get("s", "")).isdigit() else None,
            "duration_ms": round(int(atoms.get("D", 0)) / 1e3, 2),  # gunicorn gives microseconds
            "bytes": atoms.get("B"),
            "key": facts.get("key", "-"),
            "verdict": facts.get("verdict"),
            "client": facts.get("client", atoms.get("h", "-")),
            "peer": atoms.get("h", "-"),
            "user_agent": atoms.get("a", "-"),
            "referer": atoms.get("f", "-"),
        }
        try:
            self.access_log.info("%s %s %s", method, target, fields["status"], extra=fields)
        except Exception:  # noqa: BLE001 - as gunicorn's own access(): a log line never fails a request
            self.error("access log line failed")

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
        # The path alone (%(U)s) and any environ atom (%({raw_uri}e)s, %({path_info}e)s) a custom
        # format may name: a platform's URL carries a key's token in its path.
        if isinstance(atoms.get("U"), str):
            atoms["U"] = _redact_path(atoms["U"])
        for name, value in atoms.items():
            if name.endswith("}e") and isinstance(value, str):
                atoms[name] = redact_query(value) if name == "{query_string}e" else redact_target(value)
        return atoms


def _log_format() -> str:
    try:
        return Settings.from_env(os.environ).log_format
    except ConfigError:
        return "text"  # each worker stops the boot, naming the variable
