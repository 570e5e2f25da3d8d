"""Discourse AI's NSFW module (discourse/discourse-ai, last at 0abd4b12, removed from the plugin in
December 2024 but still deployed).

`lib/nsfw/classification.rb` asks, per model of `ai_nsfw_models` and per image upload of a post,
`lib/inference/discourse_classifier.rb`'s `POST "#{ai_nsfw_inference_service_api_endpoint}/api/v1/classify"`
with JSON `{"model": "nsfw_detector"|"opennsfw2", "content": "<the upload's absolute URL>"}`,
`Content-Type: application/json`, `Referer: <the forum>` and `X-API-KEY: <ai_nsfw_inference_service_api_key>`
when that is set. It raises on any status but 200 and 415 (the job is retried later), skips an
upload whose 415 body has `"status": 415`, and flags the post when, after `.to_i`:
- nsfw_detector: any of drawings, hentai, porn, sexy `>=` its `ai_nsfw_flag_threshold_<class>`
  (neutral is ignored; any other key crashes the job), so the five keys as integers 0-100;
- opennsfw2: the answer's first value `>= ai_nsfw_flag_threshold_general`: `{"nsfw_probability": n}`,
  0-100, open_nsfw's own when this service serves it, else GantMan's hentai + porn + sexy.
The percentages are rounded down (`percent`), so that Discourse's `>=` on them is `>=` on the probability."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from flask import Blueprint, Response

from nsfw.config import Settings
from nsfw.errors import (
    DownloadBudgetExceeded,
    ImageTooLarge,
    InvalidImage,
    NsfwError,
    UnsupportedMediaType,
)
from nsfw.model.specs import GANTMAN_ADULT, GANTMAN_CLASSES, OPEN_NSFW
from nsfw.web import state
from nsfw.web.api import json_body
from nsfw.web.compat import common

log = logging.getLogger(__name__)
PLATFORM = "discourse"
bp = Blueprint(PLATFORM, __name__)

NSFW_DETECTOR, OPENNSFW2 = "nsfw_detector", "opennsfw2"
# Images this service will never read, however often Discourse asks: 415, so that it skips them
# instead of retrying the job.
_UNREADABLE = (InvalidImage, ImageTooLarge, DownloadBudgetExceeded, UnsupportedMediaType)


def percent(probability: float) -> int:
    """The probability in whole percent, rounded down: Discourse's `.to_i >= t` then holds exactly
    when the probability is at least t / 100 (rounding to nearest flags 0.595 at a threshold of 60).
    The epsilon keeps 0.6, which is 59.99999... in binary, at 60."""
    return min(100, max(0, math.floor(probability * 100 + 1e-9)))


def _model_for(model: str) -> str | None:
    """The served model that answers Discourse's `model` (None: the service's default)."""
    if model == OPENNSFW2 and OPEN_NSFW in state.service().models.served:
        return OPEN_NSFW
    return common.gantman_model()


@bp.route("/compat/discourse/api/v1/classify", methods=["POST"])
def classify() -> Response:
    service = state.service()
    with service.flow.decoding_body():
        body = json_body()
    if not isinstance(body, dict) or body.get("model") not in (NSFW_DETECTOR, OPENNSFW2):
        return _failure(400, 'the body must be JSON {"model": "nsfw_detector"|"opennsfw2", "content": "<URL>"}')
    url = body.get("content")
    if not isinstance(url, str) or not url:
        return _failure(400, "content must be the image's URL")
    model = body["model"]
    try:
        ask = replace(common.ask(PLATFORM, source_url=url), model=_model_for(model))
        prediction = service.predict_url(url, ask)
    except _UNREADABLE as error:
        common.count(PLATFORM, error.code)
        unsupported = {"error": "Unsupported image type", "status": 415, "code": error.code}
        return common.json_answer(415, unsupported).response()
    except NsfwError as error:
        common.count(PLATFORM, error.code)
        return refusal(error, service.settings).response()
    common.count(PLATFORM, common.verdict_of(prediction))
    scores = prediction.scores
    if model == NSFW_DETECTOR:
        return common.json_answer(200, {name: percent(scores[name]) for name in GANTMAN_CLASSES}).response()
    nsfw = prediction.model.nsfw_class
    probability = scores[nsfw] if nsfw else sum(scores[name] for name in GANTMAN_ADULT)
    human = common.human_probability(prediction)  # a moderator's decision on these bytes wins
    probability = probability if human is None else human
    return common.json_answer(200, {"nsfw_probability": percent(probability)}).response()


def _failure(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    common.count(PLATFORM, "bad_request")
    return common.json_answer(status, {"error": message, "status": status}, headers).response()


def refusal(error: NsfwError, settings: Settings) -> common.Answer:
    """Any other failure, in the shape of the plugin's own stub (`{"error", "status"}`) with its
    status: Discourse raises on it and retries the job later. Never 415, which would skip the image."""
    del settings
    status = 502 if error.status == 415 else error.status
    body = {"error": error.message, "status": status, "code": error.code}
    return common.json_answer(status, body, dict(error.headers))
