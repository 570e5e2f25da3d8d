"""The HTTP surface.

Endpoints:
- `POST|GET /predict?url=<http(s) URL>[&resize=nsfwjs|gantman]`: the five scores as a flat JSON
  object (NSFW-FLASK's shape). The URL may also come as JSON `{"url": ...}` or a form field.
- `GET /health`: 200 `{"status": "ok", ...}` once the model is loaded and warmed; 503 before. It does
  no network and no inference, so it never waits behind predictions.
Every failure is `{"error": {"code", "message"}}` with the status of nsfw.errors.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from nsfw import errors
from nsfw.imaging import RESIZE_MODES
from nsfw.service import PredictionService

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)


def _service() -> PredictionService:
    service: PredictionService = current_app.extensions["nsfw"]
    return service


def _one(values: list[str], name: str) -> str | None:
    if len(values) > 1:
        raise errors.BadRequest(f"{name} given {len(values)} times")
    return values[0] if values else None


def _request_url() -> str:
    """The url from the query string, a JSON body or a form field; exactly one of them, once."""
    found: list[str] = request.args.getlist("url")
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise errors.BadRequest("JSON body is not an object")
        if "url" in body:
            if not isinstance(body["url"], str):
                raise errors.InvalidUrl("url is not a string")
            found.append(body["url"])
    elif request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        found += request.form.getlist("url")
    elif request.content_length or request.headers.get("Transfer-Encoding"):
        # HOSTILE_INPUTS.md: a body where none is expected is a 413, as if its cap were zero.
        raise errors.PayloadTooLarge(f"unexpected body of type {request.mimetype or 'unknown'}")
    if len(found) > 1:
        raise errors.InvalidUrl("url given more than once")
    if not found or not found[0]:
        raise errors.MissingUrl()
    return found[0]


@bp.before_app_request
def _refuse_oversized_streams() -> None:
    """A chunked body (no Content-Length) over the cap is a 413, not silently cut at it.

    Werkzeug stops reading such a stream at MAX_CONTENT_LENGTH and returns what it has, so a body
    that reaches the cap is refused here (one byte of slack: exactly-the-cap counts as over)."""
    if request.content_length is not None or not request.environ.get("wsgi.input_terminated"):
        return
    limit = request.max_content_length
    if limit is not None and len(request.get_data(cache=True)) >= limit:
        raise errors.PayloadTooLarge(f"streamed body reached {limit} bytes")


@bp.route("/predict", methods=["GET", "POST"])
def predict() -> Response:
    service = _service()
    resize = _one(request.args.getlist("resize"), "resize")
    if resize is not None and resize not in RESIZE_MODES:
        raise errors.BadRequest(f"resize={resize!r}")
    return jsonify(service.predict_url(_request_url(), resize=resize))


@bp.route("/health", methods=["GET"])
def health() -> tuple[Response, int]:
    service = _service()
    if not service.ready:
        return jsonify({"status": "loading"}), 503
    classifier = service.classifier
    body = {"status": "ok", "model": classifier.spec.name, "version": classifier.spec.version}
    return jsonify({**body, "backend": classifier.backend}), 200


def _error_response(error: errors.NsfwError) -> tuple[Response, int, dict[str, str]]:
    return jsonify(error.to_dict()), error.status, dict(error.headers)


def _handle_nsfw_error(error: errors.NsfwError) -> tuple[Response, int, dict[str, str]]:
    level = logging.ERROR if error.status >= 500 and error.status not in (502, 503, 504) else logging.INFO
    log.log(level, "%s %s -> %d %s: %s", request.method, request.path, error.status, error.code, error.detail)
    return _error_response(error)


_HTTP_ERRORS: dict[int, type[errors.NsfwError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
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


def _handle_unexpected(exc: Exception) -> tuple[Response, int, dict[str, str]]:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _error_response(errors.NsfwError(repr(exc)))


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(errors.NsfwError, _handle_nsfw_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
