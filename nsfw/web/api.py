"""The HTTP surface.

Endpoints:
- `POST|GET /predict?url=<http(s) URL>[&resize=nsfwjs|gantman]`: the five scores as a flat JSON
  object (NSFW-FLASK's shape). The URL may also come as JSON `{"url": ...}` or a form field; or the
  image itself: a multipart file `image`, a raw `image/*` body, or JSON `{"image_base64": ...}`.
- `POST /predict/batch` with JSON `{"items": [{"url": ...} | {"image_base64": ...}, ...]}`:
  `{"results": [...]}` in the same order, each the flat scores or that item's own error.
- `&detail=true` on either: scores, verdict (adult | unknown | safe, with its reason and, when the
  first is unknown and a second tier is set, the second tier's), model, timing and frames;
  `&adult_threshold=` / `&safe_threshold=` override the verdict policy for the request.
- `&model=<name>` on either: another served model (NSFW_MODELS) instead of NSFW_MODEL.
- `GET /models`: the catalogue: each model's name, version, whether it is served here, backend, input
  size, classes, adult classes, source, licence, sha256.
- `POST /models/<name>/predict?url=` (NSFW-FLASK's v2): `{"<name>": p or scores, "time": s}`;
  `<name>` = `all` runs every served model on the one image, fetched once.
- `GET /health`: 200 `{"status": "ok", ...}` once the model is loaded and warmed; 503 before. It does
  no network and no inference, so it never waits behind predictions.
Every failure is `{"error": {"code", "message"}}` with the status of nsfw.errors (answers.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import shutil
import tempfile
import time
from collections import Counter
from typing import IO, Any, NamedTuple

from flask import Blueprint, Response, g, jsonify, request

from nsfw import errors, metrics
from nsfw.config import RESIZE_MODES
from nsfw.fetch import SPOOL_MEMORY_BYTES
from nsfw.model.specs import MODELS, NSFWJS
from nsfw.pipeline.batch import BatchItem
from nsfw.pipeline.batch import predict_batch as run_batch
from nsfw.pipeline.flow import TENANT
from nsfw.pipeline.service import Ask, Prediction, PredictionService, ReviewContext
from nsfw.pipeline.verdict import OVERRIDABLE, Policy
from nsfw.web import limits, routes, state
from nsfw.web.access import client_address

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)


def _service() -> PredictionService:
    return state.service()


def _one(values: list[str], name: str) -> str | None:
    if len(values) > 1:
        raise errors.BadRequest(f"{name} given {len(values)} times")
    return values[0] if values else None


_DATA_URI = re.compile(r"data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.I)
_URLSAFE = str.maketrans("-_", "+/")


@bp.before_app_request
def _limit_the_body() -> None:
    """Each body is capped by what it carries, and refused with 413 before it is read whole.

    A chunked body (no Content-Length) that reaches the cap is refused here too: Werkzeug stops
    reading such a stream at the cap and returns what it has (one byte of slack: exactly-the-cap
    counts as over)."""
    limit = request.max_content_length = routes.body_limit(_service().settings, request.path, request.mimetype)
    if request.content_length is not None or not request.environ.get("wsgi.input_terminated"):
        return
    if len(request.get_data(cache=True)) >= limit:
        raise errors.PayloadTooLarge(f"streamed body reached {limit} bytes")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members; a key given twice is refused (parsers disagree on which one counts)."""
    members = dict(pairs)
    if len(members) != len(pairs):
        twice = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise errors.InvalidJson(f"key {twice[:40]!r} given twice")
    return members


def _no_constant(name: str) -> None:
    raise errors.InvalidJson(f"{name} is not JSON")


def json_body() -> object:
    """The request's JSON body, strictly (RFC 8259): invalid, duplicate keys, NaN or Infinity, or
    nested past the interpreter's recursion limit (Flask let that RecursionError through: a 500) are
    a 400 invalid_json. Numbers are JSON's, so ASCII digits only."""
    try:
        return json.loads(request.get_data(cache=True), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise errors.InvalidJson("nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise errors.InvalidJson(f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _decode_base64(value: object) -> IO[bytes]:
    if not isinstance(value, str):
        raise errors.InvalidBase64("image_base64 is not a string")
    text = "".join(_DATA_URI.sub("", value.strip(), count=1).split())  # a data: URI, line breaks
    if len(text) // 4 * 3 - text[-2:].count("=") > _service().settings.max_bytes:  # padding is no data
        raise errors.ImageTooLarge(f"image_base64 of {len(text)} characters")
    try:
        data = base64.b64decode(text.translate(_URLSAFE), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.InvalidBase64(str(exc)) from None
    return spooled(data)


def spooled(data: bytes) -> IO[bytes]:
    """The bytes in a spooled file: a request waiting for the model holds 1 MiB of memory at most."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115 - the service closes it
    spool.write(data)
    spool.seek(0)
    return spool


def spooled_body() -> IO[bytes]:
    """The raw request body in a spooled file, copied a MiB at a time: a video's 100 MiB never sits
    in memory (the front door spooled it to disk already)."""
    if request.content_length is None:  # read whole by _limit_the_body (another server, chunked)
        return spooled(request.get_data())
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115 - the caller closes it
    try:
        shutil.copyfileobj(request.stream, spool, 1 << 20)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def _has_body() -> bool:
    return bool(request.content_length) or "Transfer-Encoding" in request.headers


def request_image() -> tuple[str | None, IO[bytes] | None]:
    """The one image of this request: a url (query, JSON or form), a multipart upload named image,
    a raw image/* body, or JSON image_base64. Exactly one, once. A body is parsed under the
    service's body-decoding limit (a JSON base64 body takes about three times its size meanwhile)."""
    if not _has_body():
        return _parse_request_image()
    with _service().flow.decoding_body():
        return _parse_request_image()


def _parse_request_image() -> tuple[str | None, IO[bytes] | None]:
    urls: list[str] = request.args.getlist("url")
    images: list[IO[bytes]] = []
    if request.is_json:
        body = json_body()
        if not isinstance(body, dict):
            raise errors.BadRequest("JSON body is not an object")
        if "url" in body:
            if not isinstance(body["url"], str):
                raise errors.InvalidUrl("url is not a string")
            urls.append(body["url"])
        if "image_base64" in body:
            images.append(_decode_base64(body["image_base64"]))
    elif request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        urls += request.form.getlist("url")
        images += [upload.stream for upload in request.files.getlist("image")]
    elif request.mimetype.startswith(("image/", "video/")):
        images.append(spooled_body())
    elif _has_body():
        # HOSTILE_INPUTS.md: a body where none is expected is a 413, as if its cap were zero.
        raise errors.PayloadTooLarge(f"unexpected body of type {request.mimetype or 'unknown'}")
    try:
        if len(urls) > 1:
            raise errors.InvalidUrl("url given more than once")
        if urls and images or len(images) > 1:
            raise errors.TooManyImages(f"{len(urls)} urls and {len(images)} images")
    except errors.NsfwError:
        for image in images:
            image.close()
        raise
    if images:
        return None, images[0]
    if not urls or not urls[0]:
        raise errors.MissingUrl()
    return urls[0], None


class Options(NamedTuple):
    model: str | None
    resize: str | None
    detail: bool
    policy: Policy


def _options() -> Options:
    """The per-request options: model, resize mode, detail flag, and the verdict policy with overrides."""
    service = _service()
    model = _one(request.args.getlist("model"), "model")
    spec = service.models.named(model).spec
    resize = _one(request.args.getlist("resize"), "resize")
    if resize is not None and resize not in RESIZE_MODES:
        raise errors.BadRequest(f"resize={resize!r}")
    if resize is not None and spec.preprocessing != NSFWJS:
        raise errors.BadRequest(f"resize applies to GantMan's models, not {spec.name}")
    detail = _one(request.args.getlist("detail"), "detail") or "false"
    if detail.lower() not in _FLAGS:
        raise errors.BadRequest(f"detail={detail!r}")
    for name in OVERRIDABLE:
        _one(request.args.getlist(name), name)
    return Options(model, resize, _FLAGS[detail.lower()], Policy.of(service.settings).overridden(request.args))


_FLAGS = {"true": True, "1": True, "false": False, "0": False}


def _answer(prediction: Prediction, detail: bool, policy: Policy, started: float) -> dict[str, Any]:
    """The flat five scores (NSFW-FLASK's shape), or with ?detail=true everything behind them."""
    if not detail:
        return prediction.scores
    assert prediction.verdict is not None  # detail passes the policy down, so the service decided
    g.setdefault("verdicts", []).append(prediction.verdict.label)  # for the access log (nsfw/web/observe.py)
    answer: dict[str, Any] = {
        "scores": prediction.scores,
        "verdict": prediction.verdict.to_dict(),
        "model": {"name": prediction.model.name, "version": prediction.model.version, "backend": prediction.backend},
        "tier": prediction.tier,
        "policy": {"adult_threshold": policy.adult_threshold, "safe_threshold": policy.safe_threshold},
        "timing_ms": {
            "classify": round(prediction.seconds * 1e3, 2),
            "total": round((time.perf_counter() - started) * 1e3, 2),
        },
    }
    if prediction.second_tier is not None:
        answer["second_tier"] = prediction.second_tier
    if prediction.adapter is not None:  # the promoted adapter's version and p(adult), when it was asked
        answer["adapter"] = prediction.adapter
    # Whether the result came from the cache is not said: a hit would tell one key that another sent
    # these bytes (the metrics tell the operator).
    if prediction.review is not None:
        answer["review"] = prediction.review
    if prediction.match is not None:  # what a near-duplicate matched: a human decision, a bank
        answer["match"] = prediction.match
    if prediction.video is not None:
        answer["video"] = prediction.video
    if prediction.frame_count > 1 or prediction.video is not None:
        answer["frames"] = {
            "count": prediction.frame_count,
            "chosen": prediction.frame_indices[prediction.chosen],
            "classified": prediction.classified(),
        }
    return answer


_REF_CHARACTERS = 200


def _ref(value: object) -> str | None:
    """A client's reference for the review queue (a user or upload id): 1-200 printable characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= _REF_CHARACTERS or not value.isprintable():
        raise errors.BadRequest(f"ref must be 1-{_REF_CHARACTERS} printable characters")
    return value


def _review_context(detail: bool, source_url: str | None = None) -> ReviewContext | None:
    """What the review queue needs of this request: detailed answers only, and only with the queue on
    (answers without detail never touch the store)."""
    ref = _ref(_one(request.args.getlist("ref"), "ref"))
    if not detail or _service().review_hook is None:
        return None
    return ReviewContext(key_name=g.get("api_key", "-"), ref=ref, source_url=source_url)


@bp.before_app_request
def _tenant() -> None:
    """Every call of the service in this request is its key's (pipeline.flow.TENANT), reset at its end."""
    g.tenant_token = TENANT.set(str(g.get("api_key", "-")))


@bp.teardown_app_request
def _tenant_ends(_: BaseException | None) -> None:
    token = g.pop("tenant_token", None)
    if token is not None:
        TENANT.reset(token)


@bp.route("/predict", methods=["GET", "POST"])
def predict() -> Response:
    started = time.perf_counter()
    service = _service()
    options = _options()
    url, image = request_image()
    # A verdict (and with it a second tier's opinion) is only worked out when it is asked for.
    ask = Ask(
        model=options.model,
        resize=options.resize,
        policy=options.policy if options.detail else None,
        caller=client_address(),
        review=_review_context(options.detail, url),
    )
    if image is not None:
        with image:
            prediction = service.predict_image(image, ask)
    else:
        assert url is not None  # request_image gives one or the other
        prediction = service.predict_url(url, ask)
    return jsonify(_answer(prediction, options.detail, options.policy, started))


def _batch_item(raw: object) -> BatchItem:
    """One item of a batch as the service takes it; a malformed item carries its own error."""
    try:
        if not isinstance(raw, dict) or len({"url", "image_base64"} & raw.keys()) != 1:
            raise errors.TooManyImages("a batch item needs exactly one of url and image_base64")
        ref = _ref(raw.get("ref"))
        if "image_base64" in raw:
            return BatchItem(image=_decode_base64(raw["image_base64"]), ref=ref)
        url = raw["url"]
        if not isinstance(url, str):
            raise errors.InvalidUrl("url is not a string")
        if not url:
            raise errors.MissingUrl()
        return BatchItem(url=url, ref=ref)
    except errors.NsfwError as exc:
        return BatchItem(error=exc)


@bp.route("/predict/batch", methods=["POST"])
def predict_batch() -> Response:
    started = time.perf_counter()
    service = _service()
    model, resize, detail, policy = _options()
    with service.flow.decoding_body():
        body = json_body() if request.is_json else None
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise errors.BadRequest('the body must be JSON {"items": [...]}')
        items = body["items"]
        if len(items) > service.settings.max_batch:
            raise errors.TooManyItems(f"{len(items)} items > {service.settings.max_batch}")
        limits.charge(len(items) - 1)  # each item counts against the caller's limit, as a request would
        batch = [_batch_item(raw) for raw in items]
        del body, items  # the JSON text goes; the decoded images wait in spooled files
    try:
        ask = Ask(model, resize, policy if detail else None, client_address(), _review_context(detail))
        results = run_batch(service, batch, ask)
    finally:
        for item in batch:
            if item.image is not None:
                item.image.close()
    return jsonify(
        {
            "results": [
                result.to_dict() if isinstance(result, errors.NsfwError) else _answer(result, detail, policy, started)
                for result in results
            ]
        }
    )


@bp.route("/models", methods=["GET"])
def models() -> Response:
    """The catalogue: every model, whether this worker serves it, and what a client needs to trust
    and use its scores."""
    service = _service()
    served = service.models.served
    listing = []
    for name, spec in MODELS.items():
        classifier = served.get(name)
        entry: dict[str, Any] = {
            "name": name,
            "version": spec.version,
            "served": classifier is not None,
            "default": name == service.models.default.spec.name,
            "backend": classifier.backend if classifier else next(iter(spec.artifacts), "tensorflow"),
            "input_size": spec.input_size,
            "classes": list(spec.classes),
            "adult_classes": list(spec.adult_classes),
            "source": spec.source,
            "licence": spec.licence,
            "sha256": service.models.artifact_sha256(classifier) if classifier else service.models.bundled_sha256(spec),
        }
        listing.append(entry)
    return jsonify({"models": listing})


def _flask_value(prediction: Prediction) -> float | dict[str, float]:
    """NSFW-FLASK's value for one model: a two-class model's NSFW probability, else the scores."""
    nsfw_class = prediction.model.nsfw_class
    return prediction.scores[nsfw_class] if nsfw_class else prediction.scores


# NSFW-FLASK called GantMan's MobileNetV2 `nsfw_model` in /models/all/predict.
_FLASK_NAMES = {"mobilenet_v2": "nsfw_model"}


@bp.route("/models/<name>/predict", methods=["POST"])
def predict_with_model(name: str) -> Response:
    """NSFW-FLASK's v2 routes: `{"<model>": p or scores, "time": seconds}` for one model, and for
    `all` every served model on the one image, fetched once."""
    started = time.perf_counter()
    service = _service()
    url, image = request_image()
    try:
        if name == "all":
            predictions = service.predict_all(url, image, caller=client_address())
            answer: dict[str, Any] = {
                _FLASK_NAMES.get(model, model): _flask_value(prediction) for model, prediction in predictions.items()
            }
        elif image is not None:
            answer = {name: _flask_value(service.predict_image(image, Ask(model=name)))}
        else:
            assert url is not None
            answer = {name: _flask_value(service.predict_url(url, Ask(model=name, caller=client_address())))}
    finally:
        if image is not None:
            image.close()
    return jsonify({**answer, "time": round(time.perf_counter() - started, 4)})


def health_answer(service: PredictionService) -> tuple[dict[str, Any], int]:
    """/health's body and status; also answered by nsfw/web/frontend.py on its event loop, never queued."""
    if not service.models.ready:
        return {"status": "loading"}, 503
    classifier = service.models.default
    body = {"status": "ok", "model": classifier.spec.name, "version": classifier.spec.version}
    return {**body, "backend": classifier.backend, "models": list(service.models.served)}, 200


@bp.route("/metrics", methods=["GET"])
def metrics_page() -> Response:
    """Prometheus' text format, every worker of this instance together (nsfw/metrics.py)."""
    return Response(metrics.exposition(), content_type=metrics.CONTENT_TYPE)


@bp.route("/health", methods=["GET"])
def health() -> tuple[Response, int]:
    body, status = health_answer(_service())
    return jsonify(body), status
