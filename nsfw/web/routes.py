"""One route table: for each path, the scope a key needs, whether a moderator's session may stand in
for the key, whether the rate limits count it, and what its body may carry. The front door
(frontend.py), the access check (access.py), the rate limits (limits.py) and the body caps (api.py,
frontend.py) all read it; none of them knows a path of its own."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nsfw.config import Settings

# Body kinds: what a route's body may carry, and so its cap (body_limit).
FIELDS = "fields"  # a few fields: a label, a note, a form
IMAGE = "image"  # by its Content-Type: an image, a multipart upload, JSON with image_base64, or fields
BATCH = "batch"  # as IMAGE, but JSON is a batch's (NSFW_MAX_BATCH_BYTES)
UPLOADS = "uploads"  # several images in one multipart body, as a batch (NSFW_MAX_BATCH_BYTES)
SIGNALS = "signals"  # as IMAGE, but a text body is a list of hashes (NSFW_MAX_BATCH_BYTES)

PREDICT, REVIEW, BANKS = "predict", "review", "banks"  # the scopes of nsfw.config.SCOPES a route may need


@dataclass(frozen=True)
class Route:
    path: str
    prefix: bool = False  # the path is a prefix (every path starting with it), not one path
    scope: str | None = PREDICT  # None: answered to anyone (or, for the pages, a session of their own)
    session: bool = False  # a moderator's session cookie may stand in for a key (the app checks it)
    limited: bool = True  # counted by the rate limits
    body: str = IMAGE
    metrics_token: bool = False  # NSFW_METRICS_TOKEN, when set, stands in for a key here
    page: bool = False  # a moderator's page: its answers carry the pages' security headers
    # A platform adapter's route (nsfw/web/compat/): answers, refusals included, in that platform's
    # shape; on or off with NSFW_COMPAT, open with NSFW_COMPAT_OPEN.
    platform: str | None = None
    # The key's token may be the path's segment after /compat/<platform>/: the URL is all that
    # pict-rs and Pleroma can carry. The logs show that segment as REDACTED (redact_path).
    path_token: bool = False
    # Its body may be a video (a raw video/* body or a multipart upload): NSFW_MAX_VIDEO_BYTES.
    video: bool = False

    # The path is a regular expression the whole path must match (one path per item, say).
    pattern: bool = False

    def matches(self, path: str) -> bool:
        if self.pattern:
            return re.fullmatch(self.path, path) is not None
        return path.startswith(self.path) if self.prefix else path == self.path


# The moderator's pages sign in with a session of their own (nsfw/review/pages.py), never a key.
PAGES_PATH = "/review"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
REVIEWS_PREFIX = "/reviews"
APPEAL_PATTERN = r"/reviews/[^/]+/appeal"
BANKS_PATH = "/banks"
LANDING_PATH = "/"
COMPAT_PREFIX = "/compat/"
MISSKEY_HEALTH_PATH = "/compat/misskey/health"


def _compat(platform: str, **route: object) -> tuple[Route, Route]:
    """A platform's routes: /compat/<platform> and every path under it."""
    base = f"{COMPAT_PREFIX}{platform}"
    return (
        Route(base, platform=platform, **route),  # type: ignore[arg-type]
        Route(base + "/", prefix=True, platform=platform, **route),  # type: ignore[arg-type]
    )


# First match wins; a path none matches is DEFAULT's. Unknown paths need `predict`, so that a
# stranger learns nothing about which routes exist.
ROUTES: tuple[Route, ...] = (
    Route(HEALTH_PATH, scope=None, limited=False),  # the platform's probe
    Route("/openapi.json", scope=None),  # the API's description and its page
    Route("/docs", scope=None),
    Route("/docs/", prefix=True, scope=None),
    Route(METRICS_PATH, limited=False, metrics_token=True),  # the scraper's page
    # The review API: a review key, or a moderator's session; bodies are a label, a note. (A stranger
    # with a made-up session cookie reaches the app, which checks sessions, so its body stays small.)
    # An appeal is the client app's (a predict key that sent the image), not a moderator's.
    Route(APPEAL_PATTERN, pattern=True, scope=PREDICT, body=FIELDS),
    Route(REVIEWS_PREFIX, prefix=True, scope=REVIEW, session=True, body=FIELDS),
    # The hash banks: a banks key; a bank's signals come as an image, a hash, or a list of them.
    Route(BANKS_PATH, scope=BANKS, body=FIELDS),
    Route(BANKS_PATH + "/", prefix=True, scope=BANKS, body=SIGNALS),
    Route(PAGES_PATH, scope=None, body=FIELDS, page=True),
    Route(PAGES_PATH + "/", prefix=True, scope=None, body=FIELDS, page=True),
    Route(PAGES_PATH, prefix=True, body=FIELDS, page=True),  # /reviewX: no route, but no big body either
    Route("/predict/batch", body=BATCH),
    Route("/predict", video=True),
    Route("/models/", prefix=True, video=True),  # /models/<name>/predict
    Route(LANDING_PATH, scope=None, body=FIELDS),  # what this service is, for an operator's first visit
    # Misskey's probe of its detector, open like /health; then Misskey's detect-images, a key in
    # Authorization: Bearer when keys are on.
    Route(MISSKEY_HEALTH_PATH, scope=None, limited=False, body=FIELDS, platform="misskey"),
    *_compat("misskey", body=UPLOADS),
    *_compat("pictrs", path_token=True, video=True),  # the stored file's bytes, raw
    *_compat("nsfw_api", path_token=True, body=FIELDS),  # GET ?url=
    *_compat("discourse", body=FIELDS),  # JSON {"model", "content": URL}, X-API-KEY
)
DEFAULT = Route("/", prefix=True)


# The bodies a bank takes as a list of hashes (nsfw/matching/views.py).
SIGNAL_TYPES = ("text/plain", "text/csv", "application/x-ndjson", "application/jsonl", "application/json-lines")


def route_for(path: str) -> Route:
    return next((route for route in ROUTES if route.matches(path)), DEFAULT)


def path_token(path: str) -> str | None:
    """The key's token a path carries (Route.path_token): its segment after /compat/<platform>/."""
    route = route_for(path)
    if not route.path_token:
        return None
    base = f"{COMPAT_PREFIX}{route.platform}/"
    if not path.startswith(base):
        return None
    return path[len(base) :].split("/", 1)[0] or None


def redact_path(path: str) -> str:
    """The path as the logs may show it: a token in it (path_token) replaced by REDACTED, and under
    /compat/ any segment shaped like a key's token too, so that a URL mistyped by its operator
    (`//compat/pictrs/<token>`, `/compat/pictrs//<token>`) does not write the key into the log."""
    token = path_token(path)
    if token is not None:
        base = f"{COMPAT_PREFIX}{route_for(path).platform}/"
        path = base + REDACTED + path[len(base) + len(token) :]
    if COMPAT_PREFIX.strip("/") in path.lower():
        path = "/".join(REDACTED if _TOKEN_SHAPED.fullmatch(part) else part for part in path.split("/"))
    return path


REDACTED = "REDACTED"
# What a key's token looks like (nsfw/config.py: 32-512 URL-safe characters).
_TOKEN_SHAPED = re.compile(r"[A-Za-z0-9_-]{32,512}")


def is_page(path: str) -> bool:
    """A moderator's page (nsfw/review/pages.py): signed in with its own session."""
    return path == PAGES_PATH or path.startswith(PAGES_PATH + "/")


# The moderators' session cookie (nsfw/review/pages.py sets it; the front door looks for it).
SESSION_COOKIE = "nsfw_session"


def may_use_session(path: str, cookie_header: str | None) -> bool:
    """A request the app must decide (the front door cannot read a session): one carrying a
    moderator's session cookie to a route that takes one, with its CSRF check."""
    return route_for(path).session and SESSION_COOKIE + "=" in (cookie_header or "")


def body_limit(settings: Settings, path: str, mimetype: str) -> int:
    """The cap of a request body, by what its route takes and what it carries: an image, an image in
    base64, or a few fields. The front door refuses past it from Content-Length alone, before any
    100 Continue; the app applies it again to what it reads."""
    kind = route_for(path).body
    if kind == FIELDS:
        return settings.max_request_bytes
    if kind == UPLOADS or kind == SIGNALS and mimetype in SIGNAL_TYPES:
        return settings.max_batch_bytes
    if mimetype.startswith("image/"):
        return settings.max_bytes
    video_cap = settings.max_video_bytes if route_for(path).video else 0  # only where a video is taken
    if mimetype.startswith("video/"):
        return video_cap or settings.max_request_bytes
    if mimetype == "multipart/form-data":  # an image, or a video
        return max(settings.max_bytes, video_cap) + settings.max_request_bytes
    if kind == BATCH:
        return settings.max_batch_bytes
    if mimetype == "application/json" or mimetype.startswith("application/") and mimetype.endswith("+json"):
        return settings.max_json_image_bytes  # may carry image_base64: 4 characters per 3 bytes
    return settings.max_request_bytes
