"""The banks API, every route needing a key with the `banks` scope (nsfw/web/routes.py: /banks...).
Thin: the rules are nsfw/matching/banks.py's.

- `GET /banks`, `POST /banks` {"name", "label", "distance"?}; `GET|DELETE /banks/<name>`.
- `POST /banks/<name>/signals`: an image (upload, raw body, JSON url or image_base64: hashed like a
  prediction's, each classified frame one signal), one hash (JSON {"pdq", "note"?, "quality"?}), or
  many (a text/plain or text/csv body of `pdq[,quality[,note]]` lines, or JSON Lines). The answer
  says how many were added, and, for an adult bank, which decided-safe items they match now
  (`rereview`: a human said safe to something the bank says is adult).
- `GET /banks/<name>/signals?format=csv|jsonl`: the export, in the order the signals were added, in
  the format imported (so a list moves between this service and HMA, or ThreatExchange's tools).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, stream_with_context
from sqlalchemy.exc import SQLAlchemyError

from nsfw import errors, metrics
from nsfw.matching.banks import Matcher
from nsfw.matching.pdq import parse
from nsfw.matching.store import Hashed, one_line, parse_lines
from nsfw.pipeline.service import Ask
from nsfw.web import state
from nsfw.web.access import client_address
from nsfw.web.answers import error_response
from nsfw.web.api import json_body, request_image
from nsfw.web.routes import SIGNAL_TYPES

bp = Blueprint("banks", __name__)
log = logging.getLogger(__name__)

EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
MAX_REREVIEW = 100
# Past this many signals at once the decided items are not searched (the search is signals x items).
MAX_REREVIEW_SIGNALS = 1000


def _matcher() -> Matcher:
    return state.matcher()


def _operator() -> str:
    return str(g.get("api_key", "-"))


@bp.errorhandler(SQLAlchemyError)
def _store_failed(exc: SQLAlchemyError) -> Any:
    metrics.REVIEW_STORE_ERRORS.labels("banks").inc()
    error = errors.ReviewStoreUnavailable()
    log.warning("%s %s -> 503 %s: %s: %s", request.method, request.path, error.code, type(exc).__name__, str(exc)[:300])
    return error_response(error)


@bp.get("/banks")
def list_banks() -> Response:
    return jsonify({"banks": _matcher().banks.list()})


@bp.post("/banks")
def create_bank() -> tuple[Response, int]:
    if not request.is_json:
        raise errors.InvalidBank("the body must be JSON")
    bank = _matcher().banks.create(json_body(), _operator())
    log.info("bank %s (%s) created by %s", bank["name"], bank["label"], _operator())
    return jsonify(bank), 201


@bp.get("/banks/<name>")
def get_bank(name: str) -> Response:
    return jsonify(_matcher().banks.get(name))


@bp.delete("/banks/<name>")
def delete_bank(name: str) -> Response:
    _matcher().banks.delete(name)
    log.info("bank %s deleted by %s", name, _operator())
    return jsonify({"name": name, "deleted": True})


@bp.post("/banks/<name>/signals")
def add_signals(name: str) -> Response:
    matcher = _matcher()
    label, distance = matcher.banks.label_of(name)  # 404 before the body is read
    min_quality = matcher.index.min_quality  # a signal below it is never matched, so it lists nothing
    try:
        added = matcher.banks.add(name, _signals(label), _operator(), keep=MAX_REREVIEW_SIGNALS + 1)
    except (ValueError, UnicodeDecodeError) as exc:  # a line met half-way: nothing was added
        raise errors.InvalidSignals(str(exc)[:300]) from None
    if not added.received:
        raise errors.InvalidSignals("no signal in the body")
    answer: dict[str, Any] = {"bank": name, "received": added.received, "added": added.added}
    if added.label == "adult" and added.received > MAX_REREVIEW_SIGNALS:
        answer["rereview_skipped"] = f"more than {MAX_REREVIEW_SIGNALS} signals at once"
    elif added.label == "adult":
        found = matcher.rereview(
            [pdq for pdq, quality in added.first if quality is None or quality >= min_quality], "safe", distance
        )
        answer["rereview"] = found[:MAX_REREVIEW]
        if len(found) > MAX_REREVIEW:
            answer["rereview_more"] = len(found) - MAX_REREVIEW
    log.info("bank %s: %d of %d signals added by %s", name, added.added, added.received, _operator())
    return jsonify(answer)


def _signals(label: str) -> Iterable[Hashed]:
    """The body's signals: a list of hashes (read line by line as they are added), one hash, or an
    image to hash."""
    if request.mimetype in SIGNAL_TYPES:
        # A chunked body was read whole by the body cap's check (nsfw/web/api.py); any other streams.
        raw = request.stream if request.content_length is not None else io.BytesIO(request.get_data(cache=True))
        # utf-8-sig: a spreadsheet's CSV export starts with a byte order mark.
        return parse_lines(io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline=""))
    if request.is_json:
        body = json_body()
        if isinstance(body, dict) and "pdq" in body:
            if set(body) - {"pdq", "note", "quality"}:
                raise errors.InvalidSignals("a hash's JSON has pdq, and if any, note and quality")
            quality, note = body.get("quality"), body.get("note")
            if quality is not None and (type(quality) is not int or not 0 <= quality <= 100):
                raise errors.InvalidSignals("quality must be 0..100")
            if note is not None and not isinstance(note, str):
                raise errors.InvalidSignals("note must be a string")
            try:
                return [Hashed(parse(str(body["pdq"])), quality, one_line(note))]
            except ValueError as exc:
                raise errors.InvalidSignals(str(exc)) from None
    return _hashed_image(label)


def _hashed_image(label: str) -> list[Hashed]:
    """An image sent to a bank, hashed as a prediction would hash it (the same fetch, limits and
    decode), noted with where it came from: each classified frame one signal, or for an adult bank
    the frame the model found least safe alone (a harmless frame of an animation must not make its
    copies adult, as a decision's rule is)."""
    service = state.service()
    url, image = request_image()
    ask = Ask(caller=client_address())
    if image is not None:
        with image:
            prediction = service.predict_image(image, ask)
        note = "upload"
    else:
        assert url is not None
        prediction = service.predict_url(url, ask)
        note = url[:500]
    frames = prediction.hashes or []
    if label == "adult" and frames:
        frames = [frames[prediction.chosen]]
    return [Hashed(frame.original, frame.quality, note) for frame in frames]


@bp.get("/banks/<name>/signals")
def export_signals(name: str) -> Response:
    fmt = request.args.get("format", "csv")
    if fmt not in EXPORT_TYPES:
        raise errors.BadRequest(f"format={fmt!r}: csv or jsonl")
    lines = _matcher().banks.export(name, fmt)
    first = next(lines, "")  # a missing bank or a failing store is still an error answer
    response = Response(stream_with_context(_chained(first, lines)), content_type=EXPORT_TYPES[fmt])
    response.headers["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _chained(first: str, rest: Iterator[str]) -> Iterator[bytes]:
    yield first.encode()
    for line in rest:
        yield line.encode()
