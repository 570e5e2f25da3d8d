"""Pleroma's, Rebased's and Akkoma's NsfwApiPolicy, as EugenCepoi/nsfw_api answered it.

The policy (pleroma `lib/pleroma/web/activity_pub/mrf/nsfw_api_policy.ex`) asks
`GET <its url, with a trailing slash>?url=<attachment URL>`, the attachment's URL not percent-encoded
(`Map.put(:query, "url=#{url}")`), with no key: the URL is all it can carry, so a key's token may be
the path's segment (`/compat/nsfw_api/<token>/`), or NSFW_COMPAT_OPEN=nsfw_api opens the route. It
decodes the body as JSON whatever the status and takes action when `score >= threshold` (0.7,
tuned on Yahoo's open_nsfw); anything else, an error included, passes the post as safe.

nsfw_api (`web/app.py`) answered `{"score": P(nsfw), "url": u}`, a failure as 200
`{"error_code", "error_reason", "url"}`, and a missing url as 400 text. So do we; the score is
open_nsfw's meaning of P(nsfw) in GantMan's classes: hentai + porn + sexy (NSFW_COMPAT_NSFW_API_SCORE
=porn_hentai leaves sexy out); when the default model is a two-class one (open_nsfw itself), its own
P(nsfw)."""

from __future__ import annotations

import logging
from dataclasses import replace
from urllib.parse import unquote

from flask import Blueprint, Response, request

from nsfw.config import Settings
from nsfw.errors import NsfwError
from nsfw.web import state
from nsfw.web.compat import common

log = logging.getLogger(__name__)
PLATFORM = "nsfw_api"
bp = Blueprint(PLATFORM, __name__)

SCORE_CLASSES = {"adult": ("hentai", "porn", "sexy"), "porn_hentai": ("hentai", "porn")}


def raw_url(query: bytes) -> str | None:
    """The image URL of a raw query string: everything after its `url=`, `&` and `?` included, as
    Pleroma writes it unencoded (a client that did encode it is decoded once). Bytes outside
    printable ASCII are percent-escaped, as a URL carries them. None when there is none."""
    if query.startswith(b"url="):
        raw = query[4:]
    elif b"&url=" in query:
        raw = query.split(b"&url=", 1)[1]
    else:
        return None
    url = "".join(chr(byte) if 0x20 < byte < 0x7F else f"%{byte:02X}" for byte in raw)
    if "://" not in url and "%3a%2f%2f" in url.lower():
        url = unquote(url)
    return url or None


@bp.route("/compat/nsfw_api/", methods=["GET"], strict_slashes=False)
@bp.route("/compat/nsfw_api/<token>/", methods=["GET"], strict_slashes=False)
def classify(token: str | None = None) -> Response:
    """`{"score", "url"}` for the image at ?url=; a failure as nsfw_api's 200 `{"error_code", ...}`."""
    del token  # the access check read it (nsfw/web/access.py)
    url = raw_url(request.query_string)
    if url is None:
        common.count(PLATFORM, "missing_url")
        return common.text_answer(400, "Missing url parameter").response()
    service = state.service()
    nsfw_class = service.models.default.spec.nsfw_class if service.models.ready else None
    try:
        ask = common.ask(PLATFORM, source_url=url)
        if nsfw_class is None:  # GantMan's classes: the default's, or another served GantMan model's
            ask = replace(ask, model=common.gantman_model())
        prediction = service.predict_url(url, ask)
    except NsfwError as error:
        common.count(PLATFORM, error.code)
        log.info("nsfw_api -> %s: %s", error.code, error.detail)
        return common.json_answer(200, _error(error, url)).response()
    common.count(PLATFORM, common.verdict_of(prediction))
    human = common.human_probability(prediction)
    if human is not None:  # a moderator decided these bytes: Pleroma acts on it as on any score
        score = human
    elif nsfw_class is not None:  # open_nsfw (nsfw_api's own model) or Bumble's: their P(nsfw) as it is
        score = prediction.scores[nsfw_class]
    else:
        classes = SCORE_CLASSES[service.settings.compat_nsfw_api_score]
        score = min(1.0, sum(prediction.scores[name] for name in classes))
    return common.json_answer(200, {"score": score, "url": url}).response()


def _error(error: NsfwError, url: str | None) -> dict[str, object]:
    """nsfw_api's failure: an HTTP status as error_code, a reason, and the url asked about."""
    return {"error_code": error.status, "error_reason": f"{error.code}: {error.message}", "url": url}


def refusal(error: NsfwError, settings: Settings) -> common.Answer:
    """A request refused before the image (a key, a limit, a full worker): nsfw_api's failure shape,
    with the refusal's own status and headers (Retry-After). Pleroma reads it as safe either way."""
    del settings
    return common.json_answer(error.status, _error(error, None), dict(error.headers))
