"""The review API, every route needing a key with the `review` scope (nsfw/web/routes.py: /reviews...).
The moderator is the key's name. Thin: the rules are nsfw/review/queue.py's."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, stream_with_context
from sqlalchemy.exc import SQLAlchemyError

from nsfw import errors, metrics
from nsfw.numbers import parse_int
from nsfw.review.queue import MAX_PAGE, ReviewQueue
from nsfw.web import state
from nsfw.web.answers import error_response

bp = Blueprint("reviews", __name__)
log = logging.getLogger(__name__)

STATUSES = ("pending", "decided", "expired")
EXPORT_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


def _queue() -> ReviewQueue:
    queue: ReviewQueue = state.review().queue
    return queue


def _moderator() -> str:
    return str(g.get("api_key", "-"))


def _lead() -> bool:
    """A key with the review scope is the operator's tool, with a lead's rights; a moderator signed in
    on the pages has their role's (nsfw/review/pages.py sets g.account)."""
    account = g.get("account")
    return account is None or bool(account.lead)


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


@bp.url_value_preprocessor
def _no_nul(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """An id with a NUL names no item (PostgreSQL's text refuses the character: it must not reach the
    store and read as the store failing, which a predict key could otherwise set off at will)."""
    if any("\x00" in str(value) for value in (values or {}).values()):
        raise errors.NotFound("no such item")


@bp.errorhandler(SQLAlchemyError)
def _store_failed(exc: SQLAlchemyError) -> Any:
    """A failing store is a 503 in the error shape, logged and counted; never a 500."""
    metrics.REVIEW_STORE_ERRORS.labels("api").inc()
    error = errors.ReviewStoreUnavailable()
    log.warning("%s %s -> 503 %s: %s: %s", request.method, request.path, error.code, type(exc).__name__, str(exc)[:300])
    return error_response(error)


def _one_arg(name: str, default: str) -> str:
    values = request.args.getlist(name)
    if len(values) > 1:
        raise errors.BadRequest(f"{name} given {len(values)} times")
    return values[0] if values else default


@bp.get("/reviews")
def list_reviews() -> Response:
    status = _one_arg("status", "pending")
    if status not in STATUSES:
        raise errors.BadRequest(f"status={status!r}")
    try:
        limit = parse_int(_one_arg("limit", "50"))
    except ValueError:
        raise errors.BadRequest("limit is not a number") from None
    if not 1 <= limit <= MAX_PAGE:
        raise errors.BadRequest(f"limit must be 1..{MAX_PAGE}")
    cursor = _one_arg("cursor", "") or None
    escalated = _one_arg("escalated", "")
    if escalated not in ("", "true", "false"):
        raise errors.BadRequest(f"escalated={escalated!r}: true or false")
    only = None if escalated == "" else escalated == "true"
    queue = _queue()
    items, following = queue.page(status, limit, cursor, only)
    # How many there are in all (the page's counts are the server's, not the items loaded).
    return jsonify({"items": items, "next_cursor": following, "total": queue.count(status, only)})


@bp.get("/reviews/export")
def export() -> Response:
    fmt = _one_arg("format", "jsonl")
    if fmt not in EXPORT_TYPES:
        raise errors.BadRequest(f"format={fmt!r}: jsonl or csv")
    # Streamed as the rows come (the front door passes the chunks on as they are made): memory stays
    # flat however many decided items there are.
    lines = _queue().export(fmt)
    first = next(lines, "")  # a store that fails now is still a 503, not a broken stream
    response = Response(stream_with_context(_joined(first, lines)), content_type=EXPORT_TYPES[fmt])
    response.headers["Content-Disposition"] = f'attachment; filename="reviews.{fmt}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _joined(first: str, rest: Iterator[str]) -> Iterator[bytes]:
    """The export's lines in chunks of about EXPORT_CHUNK bytes (one hand-over each, not one a line)."""
    chunk = [first.encode()]
    size = len(chunk[0])
    for line in rest:
        data = line.encode()
        chunk.append(data)
        size += len(data)
        if size >= EXPORT_CHUNK:
            yield b"".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield b"".join(chunk)


EXPORT_CHUNK = 64 * 1024


@bp.get("/reviews/webhooks")
def webhooks() -> Response:
    status = _one_arg("status", "") or None
    if status not in (None, "pending", "delivered", "failed"):
        raise errors.BadRequest(f"status={status!r}")
    return jsonify({"deliveries": _queue().deliveries(status)})


@bp.get("/reviews/<review_id>")
def get_review(review_id: str) -> Response:
    queue = _queue()
    return jsonify(queue.get(review_id) | {"audit": queue.audit_log(review_id)})


@bp.get("/reviews/<review_id>/thumbnail")
def thumbnail(review_id: str) -> Response:
    picture = _queue().thumbnail(review_id)
    if picture is None:
        raise errors.NotFound(f"{review_id} has no thumbnail (past retention)")
    return _picture(picture)


@bp.get("/reviews/<review_id>/preview")
def preview(review_id: str) -> Response:
    """The picture a moderator opens full-size (longest side NSFW_REVIEW_PREVIEW_PX)."""
    picture = _queue().preview(review_id)
    if picture is None:
        raise errors.NotFound(f"{review_id} has no preview (past retention)")
    return _picture(picture)


@bp.get("/reviews/<review_id>/frames/<int:position>")
def frame(review_id: str, position: int) -> Response:
    """An animation's classified frame as the moderator sees it (position: its place in the strip)."""
    picture = _queue().frame_picture(review_id, position)
    if picture is None:
        raise errors.NotFound(f"{review_id} has no frame {position}")
    return _picture(picture)


def _picture(picture: bytes) -> Response:
    response = Response(picture, content_type="image/jpeg")
    # An image of unknown content: never sniffed into something else, never kept by a browser or proxy.
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = "default-src 'none'"
    return response


@bp.post("/reviews/<review_id>/claim")
def claim(review_id: str) -> Response:
    return jsonify(_queue().claim(review_id, _moderator(), lead=_lead()))


def count_decision(item: dict[str, Any]) -> None:
    """A decision, and the near-duplicates decided with it, in the metrics (the API's and the search
    page's bulk decisions alike)."""
    metrics.REVIEW_DECISIONS.labels(item["label"]).inc()
    if item["near_duplicates"]:
        metrics.RETROACTIVE_DECISIONS.labels(item["label"]).inc(len(item["near_duplicates"]))


@bp.post("/reviews/<review_id>/release")
def release(review_id: str) -> Response:
    """End the caller's claim (the page's skip, moving on, a closed tab's beacon)."""
    return jsonify(_queue().release(review_id, _moderator()))


@bp.post("/reviews/<review_id>/decision")
def decide(review_id: str) -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise errors.InvalidLabel('the body must be JSON {"label": ...}')
    item = _queue().decide(
        review_id, _moderator(), body.get("label"), body.get("note"), body.get("reason_code"), lead=_lead()
    )
    count_decision(item)
    state.review().wake.set()  # this worker's sender sends it now
    return jsonify(item)


@bp.post("/reviews/<review_id>/revert")
def revert(review_id: str) -> Response:
    item = _queue().revert(review_id, _moderator(), _body().get("reason"), lead=_lead())
    state.review().wake.set()
    return jsonify(item)


@bp.post("/reviews/<review_id>/escalate")
def escalate(review_id: str) -> Response:
    """Hand the item to the leads (with a note, if any)."""
    return jsonify(_queue().escalate(review_id, _moderator(), _body().get("note")))


@bp.post("/reviews/<review_id>/appeal")
def appeal(review_id: str) -> Response:
    """The client app's user contests the decision (a key with the predict scope that sent the image;
    nsfw/web/routes.py)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise errors.InvalidAppeal('the body must be JSON {"statement": ..., "ref": ...}')
    item = _queue().appeal(review_id, _moderator(), body.get("statement"), body.get("ref"))
    metrics.REVIEW_APPEALS.inc()
    return jsonify(_for_client(item))


def _for_client(item: dict[str, Any]) -> dict[str, Any]:
    """What the appealing key is told of the item: its own state, never a moderator's name, a note or
    another key's refs."""
    return {
        "id": item["id"],
        "status": item["status"],
        "kind": item["kind"],
        "appeal": {name: item["appeal"][name] for name in ("appealed", "ref", "statement", "label")},
    }


@bp.delete("/reviews/<review_id>")
def delete_review(review_id: str) -> Response:
    _queue().delete(review_id, _moderator())
    state.review().wake.set()  # review.deleted goes out now
    return jsonify({"id": review_id, "deleted": True})
