"""Every failure's answer, in one JSON shape, `{"error": {"code", "message"}}` (nsfw/errors.py), with
its status and headers: the Flask app's error handlers are here; the front door writes the same
body (NsfwError.to_json) for what it refuses before the app. On a platform adapter's route the
answer is in that platform's shape instead (nsfw/web/compat/)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from nsfw import errors
from nsfw.web import compat, routes, state

log = logging.getLogger(__name__)

ErrorResponse = tuple[dict[str, Any], int, dict[str, str]]


def error_response(error: errors.NsfwError, message: str | None = None) -> ErrorResponse:
    """The error's body, status and headers, for a Flask view or handler to return; `message`, when
    given, says it in a page's own words."""
    body = error.to_dict()
    if message is not None:
        body["error"]["message"] = message
    return body, error.status, dict(error.headers)


def _log(error: errors.NsfwError) -> None:
    level = logging.ERROR if error.status >= 500 and error.status not in (502, 503, 504) else logging.INFO
    path = routes.redact_path(request.path)  # a key's token may be in it (pict-rs, nsfw_api)
    log.log(level, "%s %s -> %d %s: %s", request.method, path, error.status, error.code, error.detail)


def _handle_nsfw_error(error: errors.NsfwError) -> Any:
    _log(error)
    return in_the_callers_shape(error)


def in_the_callers_shape(error: errors.NsfwError, headers: dict[str, str] | None = None) -> Any:
    """error_response, or on a platform adapter's route the platform's own answer."""
    answer = compat.refusal_for(request.path, error, state.service().settings)
    if answer is None:
        body, status, own = error_response(error)
        return body, status, {**own, **(headers or {})}
    response = answer.response()
    response.headers.update(headers or {})
    return response


_HTTP_ERRORS: dict[int, type[errors.NsfwError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    429: errors.RateLimited,
}


def _handle_http_exception(exc: HTTPException) -> Any:
    mapped = _HTTP_ERRORS.get(exc.code or 500)
    if mapped is None:
        mapped = errors.BadRequest if exc.code and exc.code < 500 else errors.NsfwError
    error = mapped(f"{exc.code} {exc.name}")
    _log(error)
    allow = {}
    if exc.code == 405 and exc.valid_methods and not isinstance(exc, RequestEntityTooLarge):
        allow["Allow"] = ", ".join(exc.valid_methods)
    return in_the_callers_shape(error, allow)


def _handle_unexpected(exc: Exception) -> Any:
    log.exception("unhandled error on %s %s", request.method, routes.redact_path(request.path))
    return in_the_callers_shape(errors.NsfwError(repr(exc)))


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(errors.NsfwError, _handle_nsfw_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
