"""Misskey's sensitive media detection, as misskey-dev/sensitive-detector answers it.

Misskey (`packages/backend/src/core/SensitiveMediaDetectionService.ts`) appends `v1/detect-images` to
the admin's "Detection service endpoint URL" and POSTs each chunk of at most "Max images per request"
(4) images as multipart/form-data: parts `image0`, `image1`... (filenames `0.png`..., each
`image/png`, 299x299; video frames too), `Authorization: Bearer <API key>` when one is set. Any
non-2xx, a bad shape or a timeout makes the whole chunk "not judged"; a part with `success: false`
only that image. It flags an image itself: `Sexy`, `Hentai` or `Porn` `>` its sensitivity
threshold (0.5 by default), so the probabilities are the model's own, never our verdict's.

The answers are sensitive-detector's (`docs/api-detect-images.md`, `apps/server/src/routes/
detect-images.ts`): `{"success": true, "result": {"results": [...]}}`, one result a part in part
order, each `{"success": true, "predictions": [{"className", "probability"}, ...]}` with the five
classes, most probable first, or `{"success": false, "error": {"code", "message"}}`; a request-level
failure `{"success": false, "error": {...}}` with 400, 401, 413 or 415 (and 429, 503 for our limits).
Any image Pillow reads is taken, not only 299x299 PNGs: a superset of the reference server. A
non-file part, or two parts of one name, refuse the request (400) rather than answer out of order."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.datastructures import FileStorage

from nsfw.config import Settings
from nsfw.errors import (
    BadRequest,
    DeadlineExceeded,
    ImageTooLarge,
    ImageTooLargeToDecode,
    ImageTooManyPixels,
    InvalidImage,
    ModelNotServed,
    NsfwError,
    PayloadTooLarge,
    Unavailable,
    UnsupportedImageFormat,
    UnsupportedMediaType,
)
from nsfw.pipeline.batch import BatchItem, predict_batch
from nsfw.pipeline.service import Prediction
from nsfw.web import limits, state
from nsfw.web.compat import common

log = logging.getLogger(__name__)
PLATFORM = "misskey"
bp = Blueprint(PLATFORM, __name__)

KEY_RULE = "Misskey's API key field (sent as Authorization: Bearer)"
WHERE = "Misskey: Control panel > Security > Detection of sensitive media > Detection service endpoint URL"

# GantMan's classes as sensitive-detector names them (Misskey matches them case-sensitively).
CLASS_NAMES = {"drawings": "Drawing", "hentai": "Hentai", "neutral": "Neutral", "porn": "Porn", "sexy": "Sexy"}
MULTIPART = "multipart/form-data"


def paste_url(base: str) -> str:
    """What the admin pastes: the base, to which Misskey appends v1/detect-images."""
    return f"{base}/compat/{PLATFORM}"


def _failure(status: int, code: str, message: str) -> Response:
    """A request-level failure in sensitive-detector's words."""
    common.count(PLATFORM, code)
    return common.json_answer(status, {"success": False, "error": {"code": code, "message": message}}).response()


@bp.route("/compat/misskey/health", methods=["GET"])
def health() -> Response:
    """sensitive-detector's probe: 200 `{"status": "ok"}`, or 503 with a reason."""
    if not state.service().models.ready:
        return common.json_answer(503, {"status": "unavailable", "reason": "model_unavailable"}).response()
    return common.json_answer(200, {"status": "ok"}).response()


@bp.route("/compat/misskey/v1/detect-images", methods=["POST"])
def detect_images() -> Response:
    service = state.service()
    if request.mimetype != MULTIPART:
        return _failure(415, "UNSUPPORTED_MEDIA_TYPE", "content-type must be multipart/form-data")
    with service.flow.decoding_body():
        try:
            images = [storage for _, storage in request.files.items(multi=True)]
            fields = list(request.form.keys())
        except ValueError:  # a body Werkzeug cannot split
            return _failure(400, "INVALID_REQUEST", "failed to parse multipart body")
    try:  # the parts are files (on disk past 500 KiB): closed however this ends
        return _detect(images, fields)
    finally:
        for storage in images:
            storage.close()


def _detect(images: list[FileStorage], fields: list[str]) -> Response:
    service = state.service()
    if fields:
        # A part's name may be none at all (Werkzeug's None for a malformed Content-Disposition).
        return _failure(400, "INVALID_REQUEST", f"part is not a file: {str(fields[0])[:64]}")
    if len(request.files.keys()) != len(images):  # Werkzeug groups a name's parts: their order is lost
        return _failure(400, "INVALID_REQUEST", "two parts have the same name")
    if not images:
        return _failure(400, "INVALID_REQUEST", "no parts in multipart body")
    most = service.settings.max_batch
    if len(images) > most:
        return _failure(413, "REQUEST_TOO_LARGE", f"too many parts: {len(images)} exceeds limit of {most}")
    limits.charge(len(images) - 1)  # each image counts against the caller's limit, as in a batch
    ask = replace(common.ask(PLATFORM), model=common.gantman_model())
    results = predict_batch(service, [_item(storage.stream) for storage in images], ask)
    return common.json_answer(200, {"success": True, "result": {"results": [_result(r) for r in results]}}).response()


def _item(stream: Any) -> BatchItem:
    stream.seek(0, 2)
    empty = stream.tell() == 0
    stream.seek(0)
    return BatchItem(error=InvalidImage("part body is empty")) if empty else BatchItem(image=stream)


def _result(result: Prediction | NsfwError) -> dict[str, Any]:
    if isinstance(result, NsfwError):
        common.count(PLATFORM, result.code)
        code, message = _part_error(result)
        return {"success": False, "error": {"code": code, "message": message}}
    common.count(PLATFORM, common.verdict_of(result))
    ranked = sorted(result.scores.items(), key=lambda item: item[1], reverse=True)
    return {"success": True, "predictions": [{"className": CLASS_NAMES[n], "probability": p} for n, p in ranked]}


def _part_error(error: NsfwError) -> tuple[str, str]:
    """One part's failure as sensitive-detector words it."""
    if isinstance(error, UnsupportedImageFormat | UnsupportedMediaType):
        return "UNSUPPORTED_MEDIA_TYPE", f"unsupported image: {error.message}"
    if isinstance(error, ImageTooLarge | ImageTooManyPixels | ImageTooLargeToDecode):
        return "REQUEST_TOO_LARGE", error.message
    if isinstance(error, InvalidImage):
        return "IMAGE_DECODE_FAILED", "IMAGE_DECODE_FAILED"
    if isinstance(error, Unavailable):
        return "MODEL_UNAVAILABLE", "MODEL_UNAVAILABLE"
    if isinstance(error, DeadlineExceeded):
        return "DETECTION_FAILED", "inference timed out"
    return "DETECTION_FAILED", error.message


def refusal(error: NsfwError, settings: Settings) -> common.Answer:
    """A request-level failure: `{"success": false, "error": {"code", "message"}}` with its status."""
    del settings
    status, code, message = error.status, "DETECTION_FAILED", error.message
    if status == 401:
        code, message = "AUTHENTICATION_REQUIRED", "missing or invalid bearer token"
    elif isinstance(error, PayloadTooLarge):
        code = "REQUEST_TOO_LARGE"
    elif status in (404, 405):  # sensitive-detector answers an unknown route 400
        status, code, message = 400, "INVALID_REQUEST", "no route for this method and path"
    elif isinstance(error, ModelNotServed):  # the operator serves no GantMan model: ours, not the caller's
        status, code, message = 503, "MODEL_UNAVAILABLE", "no model with GantMan's five classes is served"
    elif isinstance(error, BadRequest):
        code = "INVALID_REQUEST"
    elif isinstance(error, Unavailable):
        code = "MODEL_UNAVAILABLE"
    elif status < 500:
        code = error.code.upper()  # 403, 408, 429: ours, in its style
    body = {"success": False, "error": {"code": code, "message": message}}
    return common.json_answer(status, body, dict(error.headers))
