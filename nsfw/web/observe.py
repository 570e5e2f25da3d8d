"""Request ids, and the log lines that carry them.

Every answer has an `X-Request-Id`: the client's, when it is 1 to 128 visible ASCII characters (no
spaces or control characters, which would forge or break a log line), else a fresh one (32 hex
digits). The front door (nsfw/web/frontend.py) decides it first, so its own answers (401, 413, 503, 408,
/health) carry it too and the app sees the same one; the app decides it again when it runs under
another server. Each log line of the request names it: a context variable, read by a filter on the
service's log handler (the batch's item threads get a copy of the context).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from contextvars import ContextVar

from flask import Flask, Response, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

from nsfw import metrics
from nsfw.web import access

HEADER = "X-Request-Id"
# The WSGI environ's dict of facts for gunicorn's access log (nsfw/web/frontend.py makes it).
FACTS = "nsfw.facts"
# The route label of a request that matched no rule (a 404): never the raw path, which a stranger
# could vary to make a metric per request.
UNMATCHED = "unmatched"
_VALID = re.compile(r"[\x21-\x7e]{1,128}")

current: ContextVar[str] = ContextVar("request_id", default="-")


def request_id(given: str | None) -> str:
    """The client's id when it is safe to log and echo, else a new one."""
    if given is not None and _VALID.fullmatch(given):
        return given
    return secrets.token_hex(16)


class RequestIdFilter(logging.Filter):
    """Gives every record the request id of the context it was logged in ("-" outside a request),
    and the name of the request's key ("-" without one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current.get()
        record.key = g.get("api_key", "-") if has_request_context() else "-"
        return True


# The service's own lines in NSFW_LOG_FORMAT=text; json has the same fields, named.
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] [%(request_id)s] %(name)s: %(message)s"
JSON_FIELDS = ("asctime", "levelname", "name", "message", "request_id", "key", "process")
JSON_NAMES = {"asctime": "time", "levelname": "level", "name": "logger"}


def formatter(log_format: str, fields: tuple[str, ...] = JSON_FIELDS) -> logging.Formatter:
    """The formatter of NSFW_LOG_FORMAT: text lines, or one JSON object a line (python-json-logger),
    with fields of the record and whatever the line's `extra` adds."""
    if log_format == "json":
        return JsonFormatter(list(fields), rename_fields=JSON_NAMES)
    return logging.Formatter(TEXT_FORMAT)


def count(method: str, route: str, status: int, seconds: float, key: str = "-") -> None:
    """One answered request, in the metrics (the app's answers, and the front's own)."""
    metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
    metrics.KEY_REQUESTS.labels(key, str(status)).inc()
    metrics.HTTP_DURATION.labels(route).observe(seconds)


def install(app: Flask) -> None:
    """Every request of the app: its id decided first, set for its log lines and echoed on its
    answer; counted and timed by its route rule (`/models/<name>/predict`, never the raw path)."""

    @app.before_request
    def _decide_the_id() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id(request.headers.get(HEADER))
        g.request_id_token = current.set(g.request_id)
        metrics.IN_FLIGHT.inc()
        g.in_flight = True

    @app.after_request
    def _echo_the_id(response: Response) -> Response:
        response.headers[HEADER] = g.get("request_id") or request_id(request.headers.get(HEADER))
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        facts = request.environ.get(FACTS)
        if isinstance(facts, dict):  # served by nsfw/web/frontend.py: for gunicorn's access log
            facts.update(route=route, key=g.get("api_key", "-"), client=access.client_address())
            if "verdicts" in g:
                facts["verdict"] = g.verdicts[0] if len(g.verdicts) == 1 else g.verdicts
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        count(request.method, route, response.status_code, seconds, g.get("api_key", "-"))
        return response

    @app.teardown_request
    def _forget_the_id(_: BaseException | None) -> None:
        if g.pop("in_flight", False):
            metrics.IN_FLIGHT.dec()
        token = g.pop("request_id_token", None)
        if token is not None:
            current.reset(token)
