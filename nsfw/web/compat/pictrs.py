"""pict-rs' external validation (Lemmy's image server).

pict-rs (`src/ingest.rs`, fn `ingest`) POSTs each stored file to `[media] external_validation`, the
URL as configured with nothing appended: the raw bytes, chunked, `Content-Type` the file's media
type (image/png, image/jpeg, image/webp, image/avif, image/jxl, image/gif, image/apng, video/mp4,
video/webm), no key. It reads the status alone: any 2xx accepts, anything else (or no answer in
`external_validation_timeout`, 30 s) rejects the upload. So the key's token rides in the URL,
`/compat/pictrs/<token>`, and the answers are:

| verdict | answer |
|---|---|
| safe | 200 |
| unknown | 200, queued for review (NSFW_COMPAT_PICTRS_UNKNOWN=reject: 406) |
| adult | 406 with a JSON reason, as db0's pictrs-safety answers |
| not judged: unreadable, too large, a failure of ours | NSFW_COMPAT_PICTRS_ON_ERROR: 200 (accept) or its own status |
| a wrong or missing token | 401 / 403 whatever NSFW_COMPAT_PICTRS_ON_ERROR says: a misconfiguration must show |
| past NSFW_RATE_LIMIT | 429 whatever it says: else a flood of uploads would pass unjudged |

Videos (video/mp4, video/webm) are judged like images, by their sampled frames (nsfw/imaging/video.py)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response

from nsfw.config import Settings
from nsfw.errors import NsfwError
from nsfw.web import state
from nsfw.web.api import spooled_body
from nsfw.web.compat import common

log = logging.getLogger(__name__)
PLATFORM = "pictrs"
bp = Blueprint(PLATFORM, __name__)

# Refusals that are never accepted on error: who is calling is wrong (a key, a path), or it asked more
# than its rate limit allows (accepting past the limit would let a flood of uploads through unjudged).
_ALWAYS_REFUSED = (401, 403, 404, 405, 429)


@bp.route("/compat/pictrs", methods=["POST"], strict_slashes=False)
@bp.route("/compat/pictrs/<token>", methods=["POST"])
def validate(token: str | None = None) -> Response:
    del token  # the access check read it (nsfw/web/access.py)
    service = state.service()
    settings = service.settings
    try:
        with service.flow.decoding_body():
            image = spooled_body()
        with image:
            prediction = service.predict_image(image, common.ask(PLATFORM))
    except NsfwError as error:
        common.count(PLATFORM, error.code)
        log.info("pictrs: not judged (%s: %s)", error.code, error.detail)
        return on_error(error, settings).response()
    label = common.verdict_of(prediction)
    common.count(PLATFORM, label)
    assert prediction.verdict is not None
    verdict = prediction.verdict.to_dict()
    if label == "adult" or label == "unknown" and settings.compat_pictrs_unknown == "reject":
        return common.json_answer(406, {"message": f"Rejected: the image is {label}", "verdict": verdict}).response()
    return common.json_answer(200, {"message": "Image OK", "verdict": verdict}).response()


def on_error(error: NsfwError, settings: Settings) -> common.Answer:
    """An upload this service could not judge: accepted (200) or rejected (the error's own status),
    as NSFW_COMPAT_PICTRS_ON_ERROR says."""
    body = {"message": f"Not judged: {error.message}", **error.to_dict()}
    if settings.compat_pictrs_on_error == "accept" and error.status not in _ALWAYS_REFUSED:
        return common.json_answer(200, {**body, "accepted": "NSFW_COMPAT_PICTRS_ON_ERROR=accept"})
    return common.json_answer(error.status, body, dict(error.headers))


def refusal(error: NsfwError, settings: Settings) -> common.Answer:
    """A request refused before the image (a limit, a full worker, a body past its cap, a key)."""
    return on_error(error, settings)
