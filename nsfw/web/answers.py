"""Every failure's answer, in one JSON shape, `{"error": {"code", "message"}}` (nsfw/errors.py), with
its status and headers: the Flask app's error handlers are here; the front door writes the same
body (NsfwError.to_json) for what it refuses before the app."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from nsfw import errors

log = logging.getLogger(__name__)

ErrorResponse = tuple[dict[str, Any], int, dict[str, str]]


def error_response(error: errors.NsfwError, message: str | None = None) -> ErrorResponse:
    """The error's body, status and headers, for a Flask view or handler to return; `message`, when
    given, says it in a page's own words."""
    body = error.to_dict()
    if message is not None:
        body["error"]["message"] = message
    return body, error.status, dict(error.headers)


def _handle_nsfw_error(error: errors.NsfwError) -> ErrorResponse:
    level = logging.ERROR if error.status >= 500 and error.status not in (502, 503, 504) else logging.INFO
    log.log(level, "%s %s -> %d %s: %s", request.method, request.path, error.status, error.code, error.detail)
    return error_response(error)


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
    response = _handle_nsfw_error(mapped(f"{exc.code} {exc.name}"))
    if isinstance(exc, RequestEntityTooLarge):
        return response
    if exc.code == 405 and exc.valid_methods:
        response[2]["Allow"] = ", ".join(exc.valid_methods)
    return response


def _handle_unexpected(exc: Exception) -> ErrorResponse:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(errors.NsfwError(repr(exc)))


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(errors.NsfwError, _handle_nsfw_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
