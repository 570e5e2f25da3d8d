"""What every platform adapter shares: its answers as bytes with a status, the one Ask it makes of
the pipeline, the review queue's name for its caller, and the metric of what it answered."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from flask import Response, g

from nsfw import metrics
from nsfw.errors import ModelNotServed
from nsfw.model.specs import GANTMAN_CLASSES
from nsfw.pipeline.service import Ask, Prediction, ReviewContext
from nsfw.pipeline.verdict import Policy
from nsfw.web import state
from nsfw.web.access import client_address


@dataclass(frozen=True)
class Answer:
    """One answer in a platform's shape: what the app returns, and what the front door writes for a
    request it refuses before the app (nsfw/web/frontend.py)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        response = Response(self.body, status=self.status, content_type=self.content_type)
        response.headers.update(self.headers)
        return response


def json_answer(status: int, body: object, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(body, separators=(",", ":")).encode() + b"\n", headers=dict(headers or {}))


def text_answer(status: int, text: str) -> Answer:
    return Answer(status, text.encode(), content_type="text/plain; charset=utf-8")


def caller_name(platform: str) -> str:
    """Whose item an image of this request is in the review queue: the key's name when a key came
    with it (two communities on one service keep their refs apart), else the platform's."""
    key = str(g.get("api_key", "-"))
    return platform if key == "-" else key


def ask(platform: str, *, ref: str | None = None, source_url: str | None = None) -> Ask:
    """The pipeline call of an adapter: the default model, a verdict under the service's thresholds
    (NSFW_ADULT_THRESHOLD...: no platform's protocol carries its own to us), the caller's download
    share, and the review queue told whose image it is, when the queue is on."""
    service = state.service()
    review = None
    if service.review_hook is not None:
        review = ReviewContext(key_name=caller_name(platform), ref=ref, source_url=source_url)
    return Ask(policy=Policy.of(service.settings), caller=client_address(), review=review)


def gantman_model() -> str | None:
    """The served model that answers in GantMan's five classes, which Misskey's and Discourse's
    protocols name: None for the default (when it is one), else the first served one."""
    models = state.service().models
    if models.default.spec.classes == GANTMAN_CLASSES:
        return None
    for name, classifier in models.served.items():
        if classifier.spec.classes == GANTMAN_CLASSES:
            return name
    raise ModelNotServed("this platform's protocol names GantMan's five classes, and no GantMan model is served")


def verdict_of(prediction: Prediction) -> str:
    assert prediction.verdict is not None  # ask() always asks for one
    g.setdefault("verdicts", []).append(prediction.verdict.label)  # for the access log (nsfw/web/observe.py)
    return prediction.verdict.label


def human_probability(prediction: Prediction) -> float | None:
    """A human's decision remembered for these bytes, as the one probability a single-score protocol
    carries (nsfw_api's score, Discourse's nsfw_probability): 1 for adult, 0 for safe; None when the
    model decided. (Misskey's and Discourse's per-class answers stay the model's own.)"""
    if prediction.tier != "human" or prediction.verdict is None:
        return None
    return {"adult": 1.0, "safe": 0.0}.get(prediction.verdict.label)


def count(platform: str, outcome: str) -> None:
    """One image's outcome (adult, unknown, safe) or one error's code, by platform."""
    metrics.PLATFORM_ANSWERS.labels(platform, outcome).inc()
