"""The platform adapters: each platform's own protocol for asking an external classifier, served under
/compat/<platform>/ and translated into the one pipeline call /predict makes.

One module a platform (misskey, pictrs, nsfw_api, discourse; Matrix's content scanner runs
`python -m nsfw check`, nsfw/check.py), each with its blueprint and `refusal`: how an error of ours
reads in that platform's shape. The app's error handlers (nsfw/web/answers.py) and the front door's
refusals (nsfw/web/frontend.py) both ask `refusal_for`, so a 401, a 413 or a 503 reaches the
platform in the shape its code reads. Keys, body caps and rate limits are the route table's
(nsfw/web/routes.py); the Ask, the review queue's name for the caller and the metric are common.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from flask import Flask

from nsfw.config import COMPAT_PLATFORMS, Settings
from nsfw.errors import NsfwError
from nsfw.web import routes
from nsfw.web.compat import common, discourse, misskey, nsfw_api, pictrs

ADAPTERS: dict[str, ModuleType] = {
    misskey.PLATFORM: misskey,
    pictrs.PLATFORM: pictrs,
    nsfw_api.PLATFORM: nsfw_api,
    discourse.PLATFORM: discourse,
}
assert tuple(ADAPTERS) == COMPAT_PLATFORMS


def install(app: Flask, settings: Settings) -> None:
    """The routes of every adapter NSFW_COMPAT turns on; the others' paths answer 404."""
    for name in dict.fromkeys(settings.compat):
        app.register_blueprint(ADAPTERS[name].bp)


def refusal_for(path: str, error: NsfwError, settings: Settings) -> common.Answer | None:
    """The answer to error in the shape of the platform whose route path is, when its adapter is on;
    None for every other path (the service's own error shape)."""
    platform = routes.route_for(path).platform
    if platform is None or platform not in settings.compat:
        return None
    refusal: Callable[[NsfwError, Settings], common.Answer] = ADAPTERS[platform].refusal
    common.count(platform, error.code)
    return refusal(error, settings)


def instructions(base: str, settings: Settings) -> list[dict[str, Any]]:
    """For GET /: per platform, whether its adapter is on, what to paste where, and how the key goes."""
    keyed = bool(settings.api_keys)

    def key_rule(platform: str, how: str) -> str:
        if not keyed:
            return "none: this service has no keys (NSFW_API_KEYS is empty)"
        if platform in settings.compat_open:
            return "none: NSFW_COMPAT_OPEN lets this platform in without one"
        return how

    def token_path(platform: str) -> str:
        needs = keyed and platform not in settings.compat_open
        return f"{base}{routes.COMPAT_PREFIX}{platform}" + ("/<token of a key with the predict scope>" if needs else "")

    rows = [
        {
            "name": misskey.PLATFORM,
            "paste": misskey.paste_url(base),
            "where": misskey.WHERE,
            "key": key_rule(misskey.PLATFORM, misskey.KEY_RULE),
        },
        {
            "name": pictrs.PLATFORM,
            "paste": token_path(pictrs.PLATFORM),
            "where": "pict-rs: PICTRS__MEDIA__EXTERNAL_VALIDATION (or [media] external_validation)",
            "key": key_rule(pictrs.PLATFORM, "a key's token as the URL's last segment"),
        },
        {
            "name": nsfw_api.PLATFORM,
            "paste": token_path(nsfw_api.PLATFORM) + "/",
            "where": "Pleroma, Akkoma, Rebased: config :pleroma, :mrf_nsfw_api, url: (with the NsfwApiPolicy MRF)",
            "key": key_rule(nsfw_api.PLATFORM, "a key's token as the URL's last segment, or NSFW_COMPAT_OPEN=nsfw_api"),
        },
        {
            "name": discourse.PLATFORM,
            "paste": f"{base}{routes.COMPAT_PREFIX}{discourse.PLATFORM}",
            "where": "Discourse: ai_nsfw_inference_service_api_endpoint",
            "key": key_rule(discourse.PLATFORM, "ai_nsfw_inference_service_api_key (sent as X-API-KEY)"),
        },
    ]
    for row in rows:
        row["on"] = row["name"] in settings.compat
    rows.append(
        {
            "name": "matrix",
            "on": True,
            "paste": f"python -m nsfw check FILE --service {base} --key-file /path/to/key",
            "where": "matrix-content-scanner: scan.script (README, Platforms)",
            "key": key_rule("matrix", "--key or --key-file"),
        }
    )
    return rows
