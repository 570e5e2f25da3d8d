"""The platform adapters (nsfw/web/compat/), each asked on real gunicorn with the bytes its platform's
own code sends, and each answer read the way that code reads it. Every test cites the file it followed.

One image set for all: microaneurysms.png (porn 0.86: adult), grace_hopper.jpg (neutral 0.998: safe)
and cell.png (porn 0.51, neutral 0.49: unknown, for a human) under the default thresholds; each
platform sends its unknown as bytes of its own (the same pixels saved again), so that each lands in
the review queue as an item of its own, under the key (or, with none, the platform) that sent it."""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from PIL import Image, ImageOps

from nsfw import create_app
from nsfw.accesslog import redact_target
from nsfw.config import Settings, parse_api_keys
from nsfw.model import Classifier
from nsfw.model.specs import OPEN_NSFW_SPEC
from nsfw.web.compat.discourse import percent
from nsfw.web.compat.nsfw_api import raw_url
from tests.served import Gunicorn, call
from tests.support import FakeClassifier, ImageServer, corpus_bytes, encode

MISSKEY, LEMMY, DISCOURSE, MODERATOR = "k" * 43, "l" * 43, "d" * 43, "m" * 43
ADULT, SAFE, UNKNOWN = "microaneurysms.png", "grace_hopper.jpg", "cell.png"


def _environment(tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "NSFW_API_KEYS": f"misskey:{MISSKEY},lemmy:{LEMMY},discourse:{DISCOURSE},moderator:{MODERATOR}:review",
        "NSFW_REVIEW": "true",
        "NSFW_DATA_DIR": str(tmp_path / "data"),
        "NSFW_SECRET_KEY": "s" * 40,
        **more,
    }


def _exchange(server: Gunicorn, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """raw, byte for byte, on a connection of its own; the answer's status, headers and body."""
    host, port = server.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(raw)
        answer = http.client.HTTPResponse(connection)
        answer.begin()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()


def _host(server: Gunicorn) -> str:
    return server.base.removeprefix("http://")


def _resaved(name: str) -> bytes:
    """The corpus image's pixels in a PNG of other bytes: the same scores, another sha256."""
    return encode(Image.open(io.BytesIO(corpus_bytes(name))), "PNG", compress_level=1)


def _queue(server: Gunicorn) -> list[dict]:
    status, body, _ = call(server, "GET", "/reviews", MODERATOR)
    assert status == 200, body
    return json.loads(body)["items"]


# Misskey -------------------------------------------------------------------------------------------


def _misskey_png(data: bytes) -> bytes:
    """FileInfoService.ts's picture for detection: sharp `.resize(299, 299)` (cover: centre crop),
    `.rotate()` (EXIF), `.flatten({r: 119, g: 119, b: 119})`, `.png()`; Pillow's equivalent."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGBA")
    image = ImageOps.fit(image, (299, 299), Image.Resampling.LANCZOS)
    flat = Image.new("RGB", image.size, (119, 119, 119))
    flat.paste(image, mask=image.getchannel("A"))
    return encode(flat, "PNG")


def _misskey_request(host: str, images: list[bytes], key: str | None, boundary: str) -> bytes:
    """SensitiveMediaDetectionService.ts's chunk as node-fetch v3 writes it: Node's FormData with
    `form.append(`image${i}`, new Blob([image], {type: 'image/png'}), `${i}.png`)`, serialised by
    formdata-polyfill's formDataToBlob (a 32-character boundary, each part CRLF-ended, the closing
    delimiter with no CRLF after it), `Authorization: Bearer <key>` only when a key is set, POSTed to
    the admin's URL + `v1/detect-images`."""
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image{i}"; filename="{i}.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + image
            + b"\r\n"
            for i, image in enumerate(images)
        )
        + f"--{boundary}--".encode()
    )
    headers = [
        f"Host: {host}",
        "User-Agent: Misskey/2025.12.0 (https://misskey.example)",
        "Accept: */*",
        "Accept-Encoding: gzip, deflate, br",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        f"Content-Length: {len(body)}",
        *([f"Authorization: Bearer {key}"] if key else []),
        "Connection: close",
    ]
    return ("POST /compat/misskey/v1/detect-images HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n").encode() + body


def _misskey_flags(predictions: list[dict], threshold: float = 0.5) -> tuple[bool, bool]:
    """DriveService's judgement of one image's predictions: sensitive when Sexy, Hentai or Porn is
    `>` the sensitivity threshold (medium: 0.5), porn when Porn `>` 0.75; className matched exactly."""
    p = {x["className"]: x["probability"] for x in predictions}
    sensitive = any(p.get(name, 0) > threshold for name in ("Sexy", "Hentai", "Porn"))
    return sensitive, p.get("Porn", 0) > 0.75


def test_misskey_as_its_sensitive_media_detection_service_asks(
    start_gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """misskey-dev/misskey `packages/backend/src/core/SensitiveMediaDetectionService.ts` (the request,
    and how it reads the answer) and misskey-dev/sensitive-detector `docs/api-detect-images.md` (the
    answer's shape): one chunk of four parts, one of them not an image. Misskey's `>` rule on the
    answer flags the adult image sensitive and porn, the photo neither; the probabilities are the
    model's own (the same as /predict's on the same bytes), most probable first; the broken part
    fails alone; the unknown image is queued under the key that sent it."""
    server = start_gunicorn(_environment(tmp_path))
    adult, safe, unknown = (_misskey_png(corpus_bytes(name)) for name in (ADULT, SAFE, UNKNOWN))
    broken = adult[: len(adult) // 3]
    status, headers, body = _exchange(
        server,
        _misskey_request(_host(server), [adult, safe, broken, unknown], MISSKEY, "----3287640219371059420164822271"),
    )
    assert status == 200 and headers["content-type"] == "application/json", body
    answer = json.loads(body)
    assert answer["success"] is True
    first, second, third, fourth = answer["result"]["results"]
    assert _misskey_flags(first["predictions"]) == (True, True)
    assert _misskey_flags(second["predictions"]) == (False, False)
    assert third == {"success": False, "error": {"code": "IMAGE_DECODE_FAILED", "message": "IMAGE_DECODE_FAILED"}}
    assert _misskey_flags(fourth["predictions"]) == (True, False)
    for result, image in ((first, adult), (second, safe), (fourth, unknown)):
        probabilities = [p["probability"] for p in result["predictions"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert _by_class(result["predictions"]) == _predict(server, image, MISSKEY)  # the model's own
    (item,) = _queue(server)
    assert item["key"] == "misskey" and item["scores"] == _by_class(fourth["predictions"])

    # The reference server's request-level failures, in its shape.
    status, _, body = _exchange(server, _misskey_request(_host(server), [safe], None, "-" * 4 + "1" * 28))
    assert status == 401 and json.loads(body) == {
        "success": False,
        "error": {"code": "AUTHENTICATION_REQUIRED", "message": "missing or invalid bearer token"},
    }
    status, _, body = _exchange(server, _misskey_request(_host(server), [], MISSKEY, "-" * 4 + "2" * 28))
    assert status == 400 and json.loads(body)["error"]["code"] == "INVALID_REQUEST"
    status, _, body = _exchange(
        server, f"GET /compat/misskey/health HTTP/1.1\r\nHost: {_host(server)}\r\n\r\n".encode()
    )
    assert (status, json.loads(body)) == (200, {"status": "ok"})


_CLASSES = {"Drawing": "drawings", "Hentai": "hentai", "Neutral": "neutral", "Porn": "porn", "Sexy": "sexy"}


def _by_class(predictions: list[dict]) -> dict[str, float]:
    return {_CLASSES[p["className"]]: p["probability"] for p in predictions}


def _predict(server: Gunicorn, image: bytes, key: str) -> dict[str, float]:
    request = (
        f"POST /predict HTTP/1.1\r\nHost: {_host(server)}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(image)}\r\nConnection: close\r\n\r\n"
    ).encode() + image
    status, _, body = _exchange(server, request)
    assert status == 200, body
    return json.loads(body)


# pict-rs -------------------------------------------------------------------------------------------


def _pictrs_request(host: str, path: str, data: bytes, media_type: str, chunk: int = 8192) -> bytes:
    """pict-rs `src/ingest.rs` (fn `ingest`) with `src/lib.rs`'s client: `client.post(endpoint)`,
    the configured URL as it is, `.header("Content-Type", input_type.media_type())`,
    `.body(Body::wrap_stream(..))` (a stream: chunked, no Content-Length), reqwest's user agent
    `pict-rs v0.5.0-main` and `accept: */*`, no key."""
    head = (
        f"POST {path} HTTP/1.1\r\ncontent-type: {media_type}\r\nuser-agent: pict-rs v0.5.0-main\r\n"
        f"accept: */*\r\ntransfer-encoding: chunked\r\nhost: {host}\r\n\r\n"
    ).encode()
    body = b"".join(
        f"{len(data[i : i + chunk]):x}\r\n".encode() + data[i : i + chunk] + b"\r\n" for i in range(0, len(data), chunk)
    )
    return head + body + b"0\r\n\r\n"


def _accepted(status: int) -> bool:
    """What pict-rs does with the answer: `response.status().is_success()`, the body never read."""
    return 200 <= status < 300


def test_pictrs_as_its_external_validation_posts(start_gunicorn: Callable[..., Gunicorn], tmp_path: Path) -> None:
    """pict-rs `src/ingest.rs` and `defaults.toml` (`external_validation_timeout = 30`): the status
    decides. Adult is rejected with 406 and a JSON reason (as db0/pictrs-safety `apis/v1/base.py`
    answers), safe and unknown are accepted, the unknown queued under the key whose token is the
    URL's; what cannot be judged (not an image, a video, a body past the cap) is accepted by
    default; a wrong token is refused whatever the error rule says; the token never reaches the log."""
    server = start_gunicorn(_environment(tmp_path, NSFW_MAX_BYTES="1048576"))
    host, path = _host(server), f"/compat/pictrs/{LEMMY}"

    def validate(data: bytes, media_type: str = "image/png", at: str = path) -> tuple[int, dict]:
        status, _, body = _exchange(server, _pictrs_request(host, at, data, media_type))
        return status, json.loads(body)

    status, answer = validate(corpus_bytes(ADULT))
    assert status == 406 and not _accepted(status) and answer["verdict"]["label"] == "adult", answer
    status, answer = validate(corpus_bytes(SAFE), "image/jpeg")
    assert _accepted(status) and answer["verdict"]["label"] == "safe"
    unknown = _resaved(UNKNOWN)
    status, answer = validate(unknown)
    assert _accepted(status) and answer["verdict"]["label"] == "unknown"
    (item,) = _queue(server)
    assert item["key"] == "lemmy"
    # Not judged: accepted (NSFW_COMPAT_PICTRS_ON_ERROR=accept, the default), and said so.
    for data, media_type in ((b"not an image", "image/png"), (b"\x00\x00\x00\x18ftypmp42", "video/mp4")):
        status, answer = validate(data, media_type)
        assert _accepted(status) and answer["accepted"] == "NSFW_COMPAT_PICTRS_ON_ERROR=accept", answer
    status, answer = validate(b"\xff" * (1_048_576 + 100_000))  # refused by the front door, past NSFW_MAX_BYTES
    assert _accepted(status) and answer["error"]["code"] == "payload_too_large", answer
    status, answer = validate(corpus_bytes(ADULT), at=f"/compat/pictrs/{'w' * 43}")
    assert status == 401 and not _accepted(status)
    status, answer = validate(corpus_bytes(ADULT), at="/compat/pictrs")
    assert status == 401

    log = server.log.read_text()
    assert "/compat/pictrs/REDACTED" in log and LEMMY not in log


def _pictrs_client(settings: Settings, litert: Classifier, **compat: str) -> FlaskClient:
    keyed = replace(settings, api_keys=parse_api_keys(f"lemmy:{LEMMY}"), **compat)
    return create_app(keyed, litert).test_client()


def test_pictrs_rejects_unknown_and_what_it_cannot_judge_when_its_operator_says_so(
    settings: Settings, litert: Classifier
) -> None:
    strict = _pictrs_client(settings, litert, compat_pictrs_unknown="reject", compat_pictrs_on_error="reject")
    answer = strict.post(f"/compat/pictrs/{LEMMY}", data=_resaved(UNKNOWN), content_type="image/png")
    assert answer.status_code == 406 and answer.json["verdict"]["label"] == "unknown"
    answer = strict.post(f"/compat/pictrs/{LEMMY}", data=b"not an image", content_type="image/png")
    assert answer.status_code == 422 and answer.json["error"]["code"] == "invalid_image"
    answer = strict.post(f"/compat/pictrs/{LEMMY}", data=corpus_bytes(SAFE), content_type="image/jpeg")
    assert answer.status_code == 200


# Pleroma, Akkoma, Rebased ----------------------------------------------------------------------------


def _pleroma_request(host: str, base_path: str, image_url: str) -> bytes:
    """Pleroma `lib/pleroma/web/activity_pub/mrf/nsfw_api_policy.ex`: `build_request_url` parses the
    configured url, `fix_path` gives its path one trailing slash, `Map.put(:query, "url=#{url}")`
    puts the attachment's URL in unencoded, and `HTTP.get(request)` sends it (no key, no body)."""
    return (
        f"GET {base_path.rstrip('/')}/?url={image_url} HTTP/1.1\r\nhost: {host}\r\n"
        "user-agent: Pleroma 2.9.1; https://pleroma.example <admin@pleroma.example>\r\n\r\n"
    ).encode()


def _pleroma_verdict(status: int, body: bytes, threshold: float = 0.7) -> str:
    """check_url_nsfw: `{:ok, %{"score" => score}} when score >= threshold` is nsfw; any other
    answer (an error's JSON, a status, no JSON) is sfw. Jason.decode reads the body whatever the status."""
    del status
    try:
        answer = json.loads(body)
    except ValueError:
        return "sfw"
    score = answer.get("score") if isinstance(answer, dict) else None
    return "nsfw" if isinstance(score, int | float) and score >= threshold else "sfw"


def test_pleroma_as_its_nsfw_api_policy_asks(
    start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer, tmp_path: Path
) -> None:
    """The policy sends no key: NSFW_COMPAT_OPEN=nsfw_api lets it in, and its unknown image is
    queued under the platform's name. The attachment URL's own `?` and `&` reach the image host
    as they were (read from the raw query, not split at `&`)."""
    server = start_gunicorn(_environment(tmp_path, NSFW_COMPAT_OPEN="nsfw_api"))
    image_server.add_file("/media/adult.png", corpus_bytes(ADULT), "image/png")
    image_server.add_file("/media/safe.jpg", corpus_bytes(SAFE))
    image_server.add_file("/media/unknown.png", _resaved(UNKNOWN), "image/png")
    host, base = _host(server), "/compat/nsfw_api"

    def ask(path: str) -> tuple[int, bytes]:
        status, _, body = _exchange(server, _pleroma_request(host, base, image_server.url(path)))
        return status, body

    status, body = ask("/media/adult.png?name=a.png&sig=x%2Fy")
    assert _pleroma_verdict(status, body) == "nsfw" and json.loads(body)["score"] == pytest.approx(0.873, abs=0.01)
    assert json.loads(body)["url"] == image_server.url("/media/adult.png?name=a.png&sig=x%2Fy")
    assert "/media/adult.png?name=a.png&sig=x%2Fy" in image_server.hits
    assert _pleroma_verdict(*ask("/media/safe.jpg")) == "sfw"
    status, body = ask("/media/unknown.png")
    assert _pleroma_verdict(status, body) == "sfw" and 0.3 < json.loads(body)["score"] < 0.7
    (item,) = _queue(server)
    assert item["key"] == "nsfw_api" and item["source_url"] == image_server.url("/media/unknown.png")
    status, body = ask("/media/gone.png")  # nsfw_api's failure: 200, error_code: Pleroma passes the post
    assert status == 200 and json.loads(body)["error_code"] == 502 and _pleroma_verdict(status, body) == "sfw"
    status, _, body = _exchange(server, f"GET {base}/ HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
    assert (status, body) == (400, b"Missing url parameter")


def test_pleroma_needs_a_token_in_its_url_when_keys_are_on_and_it_is_not_open(
    settings: Settings, litert: Classifier, image_server: ImageServer
) -> None:
    keyed = replace(settings, api_keys=parse_api_keys(f"pleroma:{LEMMY}"))
    client = create_app(keyed, litert).test_client()
    url = image_server.add_file("/safe.jpg", corpus_bytes(SAFE))
    refused = client.get(f"/compat/nsfw_api/?url={url}")
    assert refused.status_code == 401 and refused.json["error_code"] == 401  # nsfw_api's shape: Pleroma passes it
    answer = client.get(f"/compat/nsfw_api/{LEMMY}/?url={url}")
    assert answer.status_code == 200 and answer.json["score"] < 0.01


def test_the_raw_query_keeps_the_url_as_pleroma_wrote_it() -> None:
    assert raw_url(b"url=https://h/a.png?x=1&y=2") == "https://h/a.png?x=1&y=2"
    assert raw_url(b"url=https%3A%2F%2Fh%2Fa.png") == "https://h/a.png"  # a client that did encode it
    assert raw_url(b"url=https://h/\xc3\xa9 x.png") == "https://h/%C3%A9%20x.png"
    assert raw_url(b"other=1") is None and raw_url(b"url=") is None


# Discourse -----------------------------------------------------------------------------------------


def _discourse_request(host: str, model: str, content: str, key: str) -> bytes:
    """discourse-ai `lib/inference/discourse_classifier.rb` (at 0abd4b12, the last with the NSFW
    module): Faraday on FinalDestination's Net::HTTP adapter POSTs `#{endpoint}/api/v1/classify` with
    `{ model: model, content: content }.to_json` and headers Referer, `Content-Type:
    application/json`, `X-API-KEY` (written `X-Api-Key` by Net::HTTP), and Faraday's own."""
    body = json.dumps({"model": model, "content": content}, separators=(",", ":")).encode()
    headers = [
        "Referer: https://forum.example",
        "Content-Type: application/json",
        f"X-Api-Key: {key}",
        "User-Agent: Faraday v2.12.2",
        "Accept-Encoding: gzip;q=1.0,deflate;q=0.6,identity;q=0.3",
        "Accept: */*",
        "Connection: close",
        f"Host: {host}",
        f"Content-Length: {len(body)}",
    ]
    return ("POST /compat/discourse/api/v1/classify HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n").encode() + body


# lib/nsfw/classification.rb's site settings: ai_nsfw_flag_threshold_{drawings,hentai,porn,sexy,general}.
DISCOURSE_THRESHOLDS = {"drawings": 60, "hentai": 60, "porn": 60, "sexy": 70, "general": 60}


def _discourse_verdict(model: str, answer: dict) -> bool:
    """classification.rb: `data.except(:neutral, ...)`; nsfw_detector flags when any class's `.to_i
    >= ai_nsfw_flag_threshold_<class>`, opennsfw2 when `classification.values.first.to_i >= general`."""
    data = {k: v for k, v in answer.items() if k != "neutral"}
    if model == "opennsfw2":
        return int(next(iter(data.values()))) >= DISCOURSE_THRESHOLDS["general"]
    return any(int(value) >= DISCOURSE_THRESHOLDS[key] for key, value in data.items())


def test_discourse_as_its_nsfw_module_asks(
    start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer, tmp_path: Path
) -> None:
    """discourse-ai `lib/nsfw/classification.rb` and `lib/inference/discourse_classifier.rb`: the
    percentages are integers (`.to_i` is theirs), an image this service cannot read is 415 with
    `"status": 415` in the body (Discourse skips it), and a failure of the image's host is another
    status (Discourse raises and retries the job)."""
    server = start_gunicorn(_environment(tmp_path))
    adult = image_server.add_file("/uploads/default/original/1X/adult.png", corpus_bytes(ADULT), "image/png")
    safe = image_server.add_file("/uploads/default/original/1X/safe.jpg", corpus_bytes(SAFE))
    unknown = image_server.add_file("/uploads/default/original/1X/unknown.png", _resaved(UNKNOWN), "image/png")
    broken = image_server.add_file("/uploads/default/original/1X/broken.png", b"not an image", "image/png")

    def classify(model: str, url: str, key: str = DISCOURSE) -> tuple[int, dict]:
        status, _, body = _exchange(server, _discourse_request(_host(server), model, url, key))
        return status, json.loads(body)

    for model in ("nsfw_detector", "opennsfw2"):
        status, answer = classify(model, adult)
        assert status == 200 and _discourse_verdict(model, answer), answer
        assert all(isinstance(value, int) and 0 <= value <= 100 for value in answer.values())
        status, answer = classify(model, safe)
        assert status == 200 and not _discourse_verdict(model, answer), answer
    status, answer = classify("nsfw_detector", adult)
    assert set(answer) == {"drawings", "hentai", "neutral", "porn", "sexy"} and answer["porn"] == 86
    status, answer = classify("nsfw_detector", unknown)
    assert status == 200
    (item,) = _queue(server)
    assert item["key"] == "discourse" and item["source_url"] == unknown
    status, answer = classify("nsfw_detector", broken)
    assert status == 415 and answer["status"] == 415  # `classification.dig(:status) != 415`: skipped
    status, answer = classify("nsfw_detector", image_server.url("/uploads/gone.png"))
    assert status == 502 and answer["status"] == 502  # not 200 or 415: Net::HTTPBadResponse, retried
    status, answer = classify("nsfw_detector", safe, key="w" * 43)
    assert status == 401 and answer["status"] == 401


# Every adapter ---------------------------------------------------------------------------------------


def test_the_landing_page_tells_an_operator_what_to_paste_where(
    start_gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """GET / was a 404: now JSON for a client, HTML for a browser, open with keys on, and never a token."""
    server = start_gunicorn(_environment(tmp_path, NSFW_COMPAT="misskey,pictrs,discourse"))
    host = _host(server)
    status, headers, body = _exchange(server, f"GET / HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode())
    about = json.loads(body)
    assert status == 200 and about["version"] and about["models"][0] == {"name": "mobilenet_v2", "default": True}
    platforms = {p["name"]: p for p in about["platforms"]}
    assert platforms["misskey"]["paste"] == f"http://{host}/compat/misskey" and platforms["misskey"]["on"]
    assert platforms["pictrs"]["paste"] == f"http://{host}/compat/pictrs/<token of a key with the predict scope>"
    assert platforms["nsfw_api"]["on"] is False and platforms["matrix"]["paste"].startswith("python -m nsfw check")
    assert about["links"]["review"] == f"http://{host}/review"
    status, headers, page = _exchange(
        server, f"GET / HTTP/1.1\r\nHost: {host}\r\nAccept: text/html,application/xhtml+xml,*/*;q=0.8\r\n\r\n".encode()
    )
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"] and b"/compat/misskey" in page
    for token in (MISSKEY, LEMMY, DISCOURSE, MODERATOR):
        assert token.encode() not in body + page
    # A disabled adapter's routes are not there (the key is right; the route is off).
    request = f"GET /compat/nsfw_api/?url=http://127.0.0.1:1/x.png HTTP/1.1\r\nHost: {host}\r\n"
    status, _, body = _exchange(server, f"{request}Authorization: Bearer {MISSKEY}\r\n\r\n".encode())
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


def test_a_hostile_host_header_is_escaped_on_the_landing_page(settings: Settings, litert: Classifier) -> None:
    client = create_app(settings, litert).test_client()
    page = client.get("/", headers={"Host": 'x"><script>alert(1)</script>', "Accept": "text/html"})
    assert page.status_code == 200 and b"<script>" not in page.data


def test_the_metrics_count_each_platforms_answers_by_outcome(settings: Settings, litert: Classifier) -> None:
    from nsfw import metrics

    client = create_app(settings, litert).test_client()
    before = metrics.PLATFORM_ANSWERS.labels("pictrs", "adult")._value.get()
    assert client.post("/compat/pictrs", data=corpus_bytes(ADULT), content_type="image/png").status_code == 406
    assert metrics.PLATFORM_ANSWERS.labels("pictrs", "adult")._value.get() == before + 1
    assert re.search(
        r'nsfw_platform_answers_total\{outcome="adult",platform="pictrs"\} \d', client.get("/metrics").text
    )


# What the reviews of the adapters found, each a test ------------------------------------------------


def test_nsfw_api_answers_open_nsfws_own_probability_when_that_is_the_default(
    settings: Settings, image_server: ImageServer
) -> None:
    """With NSFW_MODEL=open_nsfw the adapter summed GantMan's classes of an open_nsfw answer: a
    KeyError, a 500, which Pleroma reads as safe for every attachment."""
    two_class = FakeClassifier(spec=OPEN_NSFW_SPEC, probabilities=(0.25, 0.75))
    client = create_app(replace(settings, model="open_nsfw", models=("open_nsfw",)), two_class).test_client()
    url = image_server.add_file("/a.png", corpus_bytes(ADULT), "image/png")
    answer = client.get(f"/compat/nsfw_api/?url={url}")
    assert answer.status_code == 200 and answer.json == {"score": 0.75, "url": url}


def test_pictrs_refuses_past_the_rate_limit_whatever_the_error_rule(settings: Settings) -> None:
    """Accepting a 429 would let a flood of uploads through unjudged: pict-rs shares one key."""
    fake = FakeClassifier()
    client = create_app(replace(settings, rate_limit="2/minute"), fake).test_client()
    statuses = [
        client.post("/compat/pictrs", data=_resaved(SAFE), content_type="image/png").status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 429] and len(fake.seen) == 2


def test_discourse_percentages_are_rounded_down_so_its_threshold_means_the_probability() -> None:
    """Discourse flags `.to_i >= 60`: 0.595 rounded to nearest was 60, flagged below the threshold."""
    assert [percent(p) for p in (0.0, 0.595, 0.5999, 0.6, 0.695, 0.999999, 1.0)] == [0, 59, 59, 60, 69, 99, 100]


def test_misskey_refuses_two_parts_of_one_name_rather_than_answer_out_of_order(settings: Settings) -> None:
    """Werkzeug groups a name's parts together: image0, image1, image0 answered safe, safe, adult."""
    client = create_app(settings, FakeClassifier()).test_client()
    boundary = "-" * 4 + "7" * 28
    raw = _misskey_request("h", [_resaved(SAFE), _resaved(ADULT), _resaved(SAFE)], None, boundary)
    body = raw.split(b"\r\n\r\n", 1)[1].replace(b'name="image2"', b'name="image0"')
    answer = client.post(
        "/compat/misskey/v1/detect-images", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert answer.status_code == 400 and answer.json["error"]["code"] == "INVALID_REQUEST"


@pytest.mark.parametrize(
    "target",
    [
        f"//compat/pictrs/{LEMMY}",
        f"/compat//pictrs/{LEMMY}",
        f"/compat/pictrs//{LEMMY}",
        f"/COMPAT/pictrs/{LEMMY}",
        f"/compat/pictrs/../pictrs/{LEMMY}",
        f"/compat/misskey/{LEMMY}",
        f"/compat/%70ictrs/{LEMMY}",
        f"http://h//compat/pictrs/{LEMMY}",
        f"/compat/nsfw_api/{LEMMY}/?url=http://h/a.png",
    ],
)
def test_a_token_in_a_mistyped_platform_url_never_reaches_the_log(target: str) -> None:
    """Only the exact /compat/<platform>/<token> was redacted: a double slash wrote the key in clear."""
    assert LEMMY not in redact_target(target) and "REDACTED" in redact_target(target)


def test_every_access_log_atom_that_carries_the_path_is_redacted() -> None:
    """A custom format's %(U)s or %({raw_uri}e)s showed the token; the shipped %(r)s did not."""
    from gunicorn.config import Config

    from nsfw.accesslog import Logger

    environ = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": f"/compat/pictrs/{LEMMY}",
        "PATH_INFO": f"/compat/pictrs/{LEMMY}",
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_REFERER": f"https://lemmy.example/compat/pictrs/{LEMMY}",
    }

    class Answer:
        status = "200 OK"
        sent = 0
        headers: list[tuple[str, str]] = []

    class Request:
        headers: list[tuple[str, str]] = [("REFERER", environ["HTTP_REFERER"])]

    import datetime

    atoms = Logger(Config()).atoms(Answer(), Request(), environ, datetime.timedelta(seconds=0.1))
    assert LEMMY not in json.dumps(atoms, default=str)


def test_with_the_limits_store_down_and_closed_each_platform_gets_its_own_shape(
    settings: Settings, tmp_path: Path, image_server: ImageServer
) -> None:
    """The 503 of NSFW_RATE_LIMIT_ON_ERROR=closed was the service's shape on every adapter, so pict-rs
    rejected every upload even with ON_ERROR=accept (an outage of ours)."""
    from tests.servers import RedisServer

    redis = RedisServer(tmp_path)
    limited = replace(settings, rate_limit="100/minute", rate_limit_storage=redis.uri, rate_limit_on_error="closed")
    client = create_app(limited, FakeClassifier()).test_client()
    assert client.post("/compat/pictrs", data=_resaved(SAFE), content_type="image/png").status_code == 200
    redis.stop()
    answer = client.post("/compat/pictrs", data=_resaved(SAFE), content_type="image/png")
    assert answer.status_code == 200 and answer.json["accepted"] == "NSFW_COMPAT_PICTRS_ON_ERROR=accept"
    answer = client.post(
        "/compat/misskey/v1/detect-images",
        data={"image0": (io.BytesIO(_resaved(SAFE)), "0.png", "image/png")},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 503 and answer.json["success"] is False
    url = image_server.add_file("/a.png", corpus_bytes(SAFE))
    assert client.get(f"/compat/nsfw_api/?url={url}").json["error_code"] == 503
    answer = client.post("/compat/discourse/api/v1/classify", json={"model": "nsfw_detector", "content": url})
    assert answer.status_code == 503 and answer.json["status"] == 503


def test_a_platform_named_twice_in_nsfw_compat_is_served_once(settings: Settings) -> None:
    assert Settings.from_env({"NSFW_COMPAT": "misskey,misskey,pictrs"}).compat == ("misskey", "pictrs")
    client = create_app(replace(settings, compat=("misskey", "misskey")), FakeClassifier()).test_client()
    assert client.get("/compat/misskey/health").status_code == 200


def test_a_moderators_decision_reaches_the_single_score_platforms(
    settings: Settings, tmp_path: Path, image_server: ImageServer
) -> None:
    """A decided image kept its model score for Pleroma (0.6, passed as safe) after a moderator called
    it adult; now nsfw_api's score and Discourse's nsfw_probability say the decision (1.0, 100), and
    pict-rs rejects. Misskey's and Discourse's per-class answers stay the model's own."""
    from nsfw.store.migrate import upgrade

    keys = parse_api_keys(f"lemmy:{LEMMY},moderator:{MODERATOR}:review")
    reviewing = replace(
        settings, review=True, data_dir=tmp_path, api_keys=keys, secret_key="s" * 40, compat_open=("nsfw_api",)
    )
    upgrade(reviewing.database)
    app = create_app(reviewing, FakeClassifier())  # 0.6 adult, 0.4 safe: unknown
    try:
        client = app.test_client()
        image = _resaved(SAFE)
        url = image_server.add_file("/u.png", image, "image/png")
        assert client.get(f"/compat/nsfw_api/?url={url}").json["score"] == pytest.approx(0.6)
        moderator = {"Authorization": f"Bearer {MODERATOR}"}
        (item,) = client.get("/reviews", headers=moderator).json["items"]
        assert item["key"] == "nsfw_api" and item["source_url"] == url
        decided = client.post(f"/reviews/{item['id']}/decision", json={"label": "adult"}, headers=moderator)
        assert decided.status_code == 200
        assert client.get(f"/compat/nsfw_api/?url={url}").json == {"score": 1.0, "url": url}
        lemmy = {"Authorization": f"Bearer {LEMMY}"}
        opennsfw2 = client.post(
            "/compat/discourse/api/v1/classify", json={"model": "opennsfw2", "content": url}, headers=lemmy
        )
        assert opennsfw2.json == {"nsfw_probability": 100}
        assert client.post(f"/compat/pictrs/{LEMMY}", data=image, content_type="image/png").status_code == 406
    finally:
        app.extensions["nsfw.review"].close()


def test_the_landing_page_is_never_cached_for_another_client(settings: Settings) -> None:
    answer = create_app(settings, FakeClassifier()).test_client().get("/")
    assert answer.headers["Cache-Control"] == "no-store" and "Accept" in answer.headers["Vary"]


def test_pictrs_judges_the_videos_it_stores(settings: Settings, litert: Classifier) -> None:
    """pict-rs sends video/mp4 and video/webm (src/formats/video.rs): judged by their sampled frames,
    no longer accepted unjudged."""
    from scripts.hostile_videos import marked_clip

    safe = Image.open(io.BytesIO(corpus_bytes(SAFE))).convert("RGB")
    adult = Image.open(io.BytesIO(corpus_bytes(ADULT))).convert("RGB")
    client = create_app(settings, litert).test_client()
    clip = marked_clip(safe, adult, (5.0, 6.0), codec="vp9", container="webm")
    answer = client.post("/compat/pictrs", data=clip, content_type="video/webm")
    assert answer.status_code == 406 and answer.json["verdict"]["label"] == "adult"
    calm = marked_clip(safe, safe, (0.0, 0.0), seconds=2.0, codec="h264", container="mp4")
    assert client.post("/compat/pictrs", data=calm, content_type="video/mp4").status_code == 200


def test_a_video_of_an_unread_codec_is_skipped_by_discourse_and_unsupported_for_misskey(
    settings: Settings, litert: Classifier, image_server: ImageServer
) -> None:
    """A 415 of ours (another container or codec) is Discourse's own 415 rule (skip the upload), and
    Misskey's UNSUPPORTED_MEDIA_TYPE for the part."""
    from scripts.hostile_videos import clip

    mpeg4 = clip(lambda t: Image.new("RGB", (64, 48)), seconds=2, codec="mpeg4", container="mp4")
    client = create_app(settings, litert).test_client()
    url = image_server.add_file("/clip.mp4", mpeg4, "video/mp4")
    answer = client.post("/compat/discourse/api/v1/classify", json={"model": "nsfw_detector", "content": url})
    assert answer.status_code == 415 and answer.json["status"] == 415
    answer = client.post(
        "/compat/misskey/v1/detect-images",
        data={"image0": (io.BytesIO(mpeg4), "0.png", "image/png")},
        content_type="multipart/form-data",
    )
    assert answer.json["result"]["results"][0]["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"


def test_misskey_refuses_a_part_whose_name_cannot_be_read_without_a_500(settings: Settings) -> None:
    """schemathesis sent a part named `"a\\"` (its closing quote escaped): Werkzeug names it None, and
    the refusal's message sliced None (a 500)."""
    client = create_app(settings, FakeClassifier()).test_client()
    boundary = "ad01973294092a219fa5a9d7f8652eeb"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="a\\"\r\n\r\nx\r\n--{boundary}--\r\n'.encode()
    answer = client.post(
        "/compat/misskey/v1/detect-images", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert answer.status_code == 400 and answer.json["error"]["code"] == "INVALID_REQUEST"
