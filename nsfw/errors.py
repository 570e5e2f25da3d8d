"""The one exception tree of request failures: each class fixes its HTTP status, code and public message.

`detail` is private: it goes to the log, never to the client (it may hold a resolved address, an
upstream status or an exception text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator


class NsfwError(Exception):
    """Base of every failure a request can end in; unexpected exceptions become this (500)."""

    status = 500
    code = "internal_error"
    message = "The server failed to process the request."
    headers: dict[str, str] = {}

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.message)
        self.detail = detail

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}

    def to_json(self) -> bytes:
        """The body as the front door writes it, before the app (nsfw/web/frontend.py)."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode() + b"\n"


# 400: the request itself is wrong.
class BadRequest(NsfwError):
    status = 400
    code = "bad_request"
    message = "The request is malformed."


class InvalidUrl(BadRequest):
    code = "invalid_url"
    message = "The url is not a valid http(s) URL."


class MissingUrl(InvalidUrl):
    code = "missing_url"
    message = "Give the image as a url, an upload named image, a raw image body, or image_base64."


class UrlSchemeNotAllowed(InvalidUrl):
    code = "url_scheme_not_allowed"
    message = "Only http and https URLs are fetched."


class InvalidBase64(BadRequest):
    code = "invalid_base64"
    message = "image_base64 is not valid base64."


class TooManyImages(BadRequest):
    code = "too_many_images"
    message = "Give exactly one image: a url, an upload, a raw body or image_base64."


class InvalidPolicy(BadRequest):
    code = "invalid_policy"
    message = "The verdict thresholds are invalid: each in (0, 1], and together above 1."


class InvalidLabel(BadRequest):
    code = "invalid_label"
    message = (
        'The decision needs {"label": "adult" | "safe"}, a note, if any, as a string, and a reason_code, if any, '
        "of NSFW_REVIEW_REASONS."
    )


class InvalidAppeal(BadRequest):
    code = "invalid_appeal"
    message = (
        'An appeal needs {"statement": the user\'s words, 1-5000 characters} and, if any, "ref": one of '
        "this key's refs on the item."
    )


class InvalidBank(BadRequest):
    code = "invalid_bank"
    message = (
        'A bank needs {"name": 1-64 of A-Z a-z 0-9 _ . -, "label": "adult" | "safe"}, and "distance" 0..128 if any.'
    )


class InvalidSignals(BadRequest):
    code = "invalid_signals"
    message = "The signals are not PDQ hashes (64 hex digits, one a line, with optional ,quality,note; or JSON Lines)."


class TooManySignals(NsfwError):
    status = 413
    code = "too_many_signals"
    message = "At most 100000 signals a request: send a longer list in parts."


class InvalidJson(BadRequest):
    code = "invalid_json"
    message = "The body is not valid JSON (duplicate keys, NaN, Infinity and very deep nesting are refused)."


class UnknownModel(BadRequest):
    code = "unknown_model"
    message = "No such model; GET /models lists them."


class ModelNotServed(BadRequest):
    code = "model_not_served"
    message = "This model is not loaded here; the operator enables it with NSFW_MODELS (GET /models)."


class UnreadableFile(BadRequest):
    """The command line's own: a path that does not exist or cannot be read."""

    code = "unreadable_file"
    message = "The file could not be read."


class TooManyItems(BadRequest):
    code = "too_many_items"
    message = "The batch has more items than allowed."


class UrlNotAllowed(BadRequest):
    """Also a host name that does not resolve: outsiders must not tell the two apart (the internal
    DNS would otherwise be enumerable through us); the log keeps the difference."""

    code = "url_not_allowed"
    message = "The url points to a destination that is not allowed, or its host name does not resolve."


class UrlPortNotAllowed(UrlNotAllowed):
    code = "url_port_not_allowed"
    message = "The url's port is not allowed."


# 401 / 403: keys (nsfw/web/access.py).
class Unauthorized(NsfwError):
    status = 401
    code = "unauthorized"
    message = "An API key is needed: Authorization: Bearer <token>, or X-API-Key: <token>."
    headers = {"WWW-Authenticate": 'Bearer realm="nsfw-api"'}


class Forbidden(NsfwError):
    status = 403
    code = "forbidden"
    message = "This API key does not have the scope this route needs."


class LeadOnly(Forbidden):
    code = "lead_only"
    message = "Only a lead may do this: decide an escalated item, or undo another moderator's decision."


class RateLimited(NsfwError):
    status = 429
    code = "rate_limited"
    message = "Too many requests for this key (or address); retry after the seconds in Retry-After."


# 404 / 405 / 413: Flask's own HTTP errors, in our JSON shape.
class NotFound(NsfwError):
    status = 404
    code = "not_found"
    message = "No such route."


# 409: the review queue's states.
class Claimed(NsfwError):
    status = 409
    code = "claimed"
    message = "Another moderator holds a claim on this item; try another one."


class AlreadyDecided(NsfwError):
    status = 409
    code = "already_decided"
    message = "This item has been decided already."


class NotDecided(NsfwError):
    status = 409
    code = "not_decided"
    message = "This item has no decision to revert or appeal."


class AlreadyAppealed(NsfwError):
    status = 409
    code = "already_appealed"
    message = "This decision was appealed already: an item is appealed once."


class TooManyAppeals(NsfwError):
    status = 429
    code = "too_many_appeals"
    message = (
        "This key has a part in as many pending review items as it may (NSFW_REVIEW_MAX_PENDING_PER_KEY); "
        "appeal when some are decided."
    )


class SameModerator(NsfwError):
    status = 409
    code = "same_moderator"
    message = "An appeal is decided by another moderator than the one whose decision it contests."


class BankExists(NsfwError):
    status = 409
    code = "bank_exists"
    message = "A bank of this name exists; delete it first, or add signals to it."


class UnknownAdapter(NsfwError):
    status = 404
    code = "unknown_adapter"
    message = "There is no such adapter version for this model."


class AdapterRefused(NsfwError):
    """Promotion of a version that did not pass the gate, or of one made for another model version."""

    status = 409
    code = "adapter_refused"
    message = "This adapter version may not be promoted: it did not beat the base model (see its report card)."


class NotEnoughDecisions(NsfwError):
    status = 409
    code = "not_enough_decisions"
    message = "An adapter needs decided items of both labels, with embeddings of the served model, to learn from."


class PendingTwin(NsfwError):
    status = 409
    code = "pending_twin"
    message = "The same image is pending review again as another item; decide that one instead."


class MethodNotAllowed(NsfwError):
    status = 405
    code = "method_not_allowed"
    message = "The method is not allowed for this route."


class RequestTimeout(NsfwError):
    status = 408
    code = "request_timeout"
    message = "The request body did not arrive in time."


class PayloadTooLarge(NsfwError):
    status = 413
    code = "payload_too_large"
    message = "The request body is too large, or not expected here."


# 414 / 431 / 501: answered by the HTTP server (nsfw/web/frontend.py) before the app sees the request.
class UriTooLong(NsfwError):
    status = 414
    code = "uri_too_long"
    message = "The request line is longer than 8190 bytes."


class HeadersTooLarge(NsfwError):
    status = 431
    code = "headers_too_large"
    message = "The request has too many header fields, or one too large."


class TransferCodingNotImplemented(NsfwError):
    status = 501
    code = "not_implemented"
    message = "The request's transfer coding is not supported (chunked is)."


# 422: the fetched bytes are not an image we classify.
class ImageTooLarge(NsfwError):
    status = 422
    code = "image_too_large"
    message = "The image is larger than the allowed number of bytes."


class InvalidImage(NsfwError):
    status = 422
    code = "invalid_image"
    message = "The data is not a decodable image."


class UnsupportedImageFormat(InvalidImage):
    code = "unsupported_image_format"
    message = "The image format is not supported (JPEG, PNG, GIF, WebP and BMP are)."


class ImageTooManyPixels(InvalidImage):
    code = "image_too_many_pixels"
    message = "The image has more pixels than allowed."


class ImageTooLargeToDecode(InvalidImage):
    code = "image_too_large_to_decode"
    message = (
        "Decoding the image would take more memory than allowed (every frame decoded, on its real canvas, "
        "at the decoder's sample size)."
    )


class ImageTooComplex(InvalidImage):
    code = "image_too_complex"
    message = "Decoding the image would take more work than allowed (JPEG scans, frames), or took too long."


class InvalidVideo(InvalidImage):
    code = "invalid_video"
    message = "The data is not a video that could be read."


class VideoTooLong(InvalidImage):
    code = "video_too_long"
    message = "The video is longer than the service reads (NSFW_MAX_VIDEO_SECONDS)."


class VideoTooComplex(InvalidImage):
    code = "video_too_complex"
    message = "The video has more streams than the service reads, or its decoder needed more memory than allowed."


class UnsupportedMediaType(NsfwError):
    status = 415
    code = "unsupported_media_type"
    message = (
        "The video's container or codec is not one the service reads: MP4/MOV or WebM/MKV with H.264, "
        "H.265, AV1, VP8 or VP9."
    )


class DownloadBudgetExceeded(NsfwError):
    status = 422
    code = "download_budget_exceeded"
    message = "The request's images together are larger than the bytes one request may fetch."


# 502 / 504: the image host misbehaved.
class UpstreamError(NsfwError):
    status = 502
    code = "upstream_error"
    message = "The image could not be fetched."


class TooManyRedirects(UpstreamError):
    code = "too_many_redirects"
    message = "The image URL redirected too many times."


class UpstreamTimeout(NsfwError):
    status = 504
    code = "upstream_timeout"
    message = "The image host did not answer in time."


class DeadlineExceeded(NsfwError):
    status = 504
    code = "deadline_exceeded"
    message = "The batch's deadline passed before this item was classified."


# 503: we cannot serve right now.
class Unavailable(NsfwError):
    status = 503
    code = "unavailable"
    message = "The model is not loaded yet."
    headers = {"Retry-After": "5"}


class ReviewStoreUnavailable(Unavailable):
    code = "review_store_unavailable"
    message = "The review store is not answering; retry shortly."


class RateLimitUnavailable(Unavailable):
    code = "rate_limit_unavailable"
    message = "The rate limit store is not answering and this service fails closed; retry shortly."


class SpoolUnavailable(Unavailable):
    code = "spool_unavailable"
    message = "The service has no room to hold the video now; try again later."


class Overloaded(Unavailable):
    code = "overloaded"
    message = "All inference slots are busy; retry shortly."
    headers = {"Retry-After": "1"}


# Why a detailed prediction's image was not queued for review, or its ref not kept: not a failure of
# the request, which answers 200 with its verdict and this under `review.error` (nsfw/review/).
class ReviewProblem(Exception):
    code = "review_failed"
    message = "The image was not queued for review (the log says why)."

    def __init__(self, detail: str = "", *, code: str | None = None, message: str | None = None) -> None:
        super().__init__(detail or self.message)
        self.detail = detail
        if code is not None:
            self.code = code
        if message is not None:
            self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ReviewStoreFailed(ReviewProblem):
    code = "review_store_unavailable"
    message = "The review store is not answering: this image was not queued (the log says why)."


class ReviewQueueFull(ReviewProblem):
    code = "review_queue_full"
    message = "This key has as many pending review items as it may (NSFW_REVIEW_MAX_PENDING_PER_KEY): not queued."


class ReviewRefsFull(ReviewProblem):
    code = "review_refs_full"
    message = "The image's review item has as many refs of this key as it may (NSFW_REVIEW_MAX_REFS): not kept."


def review_problems() -> list[type[ReviewProblem]]:
    """The review problems an answer may name (nsfw/web/openapi.py lists their codes)."""
    return [ReviewProblem, *ReviewProblem.__subclasses__()]


def every_error(cls: type[NsfwError] = NsfwError) -> Iterator[type[NsfwError]]:
    """cls and every error class under it: the codes the API can answer (nsfw/web/openapi.py lists them)."""
    yield cls
    for sub in cls.__subclasses__():
        yield from every_error(sub)
