"""The image itself as the request: multipart upload, raw image/* body, JSON image_base64. The same
scores, decoding and limits as ?url=, and every body capped before it is read whole."""

from __future__ import annotations

import base64
import io
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from nsfw import create_app
from nsfw.config import Settings
from nsfw.model import Classifier
from tests.support import MESSAGES, FakeClassifier, ImageServer, corpus_bytes, files_open_under

PHOTO = "rocket.jpg"


def _error(response: object, status: int, code: str) -> None:
    assert response.status_code == status, response.get_json()  # type: ignore[attr-defined]
    assert response.get_json() == {"error": {"code": code, "message": MESSAGES[code]}}  # type: ignore[attr-defined]


def test_the_same_image_by_url_upload_raw_body_and_base64_scores_identically(
    client: FlaskClient, image_server: ImageServer
) -> None:
    data = corpus_bytes(PHOTO)
    url = image_server.add_file("/p.jpg", data)
    encoded = base64.b64encode(data).decode()
    answers = {
        "url": client.post("/predict", query_string={"url": url}),
        "multipart": client.post("/predict", data={"image": (io.BytesIO(data), "p.jpg")}),
        "raw": client.post("/predict", data=data, content_type="image/jpeg"),
        "raw, any image type": client.post("/predict", data=data, content_type="image/png"),
        "base64": client.post("/predict", json={"image_base64": encoded}),
        "data uri": client.post("/predict", json={"image_base64": "data:image/jpeg;base64," + encoded}),
        "base64 with line breaks": client.post(
            "/predict", json={"image_base64": "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))}
        ),
        "urlsafe base64": client.post("/predict", json={"image_base64": base64.urlsafe_b64encode(data).decode()}),
    }
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 200)
    reference = answers["url"].get_json()
    assert all(r.get_json() == reference for r in answers.values())  # identical, not merely close


def test_uploads_go_through_the_same_decoding_and_errors(fake_client: FlaskClient) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"/>'
    _error(fake_client.post("/predict", data=svg, content_type="image/svg+xml"), 422, "unsupported_image_format")
    _error(fake_client.post("/predict", data={"image": (io.BytesIO(b"<html>"), "a.jpg")}), 422, "invalid_image")
    _error(fake_client.post("/predict", data=b"", content_type="image/jpeg"), 422, "invalid_image")
    half = corpus_bytes(PHOTO)[:5000]
    _error(fake_client.post("/predict", json={"image_base64": base64.b64encode(half).decode()}), 422, "invalid_image")


@pytest.mark.parametrize("value", ["not base64!", "abc", 5, ["x"], "data:image/png;base64,@@@@"])
def test_bad_base64_is_400(value: object, fake_client: FlaskClient) -> None:
    _error(fake_client.post("/predict", json={"image_base64": value}), 400, "invalid_base64")


def test_exactly_one_image_per_request(fake_client: FlaskClient, image_server: ImageServer) -> None:
    data = corpus_bytes(PHOTO)
    url = image_server.add_file("/p.jpg", data)
    encoded = base64.b64encode(data).decode()
    two_files = {"image": [(io.BytesIO(data), "a.jpg"), (io.BytesIO(data), "b.jpg")]}
    _error(fake_client.post("/predict", json={"url": url, "image_base64": encoded}), 400, "too_many_images")
    _error(fake_client.post(f"/predict?url={url}", data=data, content_type="image/jpeg"), 400, "too_many_images")
    _error(fake_client.post("/predict", data=two_files), 400, "too_many_images")
    _error(fake_client.post("/predict", data={"other": (io.BytesIO(data), "a.jpg")}), 400, "missing_url")


@pytest.fixture()
def small_caps(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FlaskClient, Path]:
    """NSFW_MAX_BYTES of 200 kB (and NSFW_MAX_VIDEO_BYTES as small: an upload may carry a video, so its
    multipart cap is the larger of the two), and a spill folder that must stay empty."""
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    small = replace(settings, max_bytes=200_000, max_video_bytes=200_000)
    return create_app(small, FakeClassifier()).test_client(), spill


def test_bodies_over_their_cap_are_413_before_they_are_read(small_caps: tuple[FlaskClient, Path]) -> None:
    client, spill = small_caps
    big = b"\xff\xd8\xff" + b"x" * 300_000
    read: list[int] = []

    class Counting(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            read.append(len(chunk))
            return chunk

    response = client.post(
        "/predict", input_stream=Counting(big), content_type="image/jpeg", headers={"Content-Length": str(len(big))}
    )
    _error(response, 413, "payload_too_large")
    assert sum(read) == 0  # refused on its Content-Length alone
    _error(client.post("/predict", data={"image": (io.BytesIO(big), "a.jpg")}), 413, "payload_too_large")
    _error(client.post("/predict", json={"image_base64": base64.b64encode(big * 2).decode()}), 413, "payload_too_large")
    assert list(spill.iterdir()) == [] and files_open_under(spill) == []


def test_an_image_over_max_bytes_inside_an_allowed_body_is_422(small_caps: tuple[FlaskClient, Path]) -> None:
    client, spill = small_caps
    over = b"\xff\xd8\xff" + b"x" * 210_000  # over 200 kB, under the body caps of multipart and JSON
    _error(client.post("/predict", data={"image": (io.BytesIO(over), "a.jpg")}), 422, "image_too_large")
    _error(client.post("/predict", json={"image_base64": base64.b64encode(over).decode()}), 422, "image_too_large")
    assert list(spill.iterdir()) == [] and files_open_under(spill) == []


def test_a_large_multipart_upload_leaves_no_temporary_file(
    settings: Settings, litert: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Werkzeug spools file parts over 500 kB to a temporary file; it is gone after the request."""
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    client = create_app(settings, litert).test_client()
    big = corpus_bytes("big_astronaut_4096.jpg")
    assert len(big) > 1024 * 1024
    # Encoded here, in memory: the test client would spool its own copy of a big body to a file.
    boundary, body = encode_multipart({"image": FileStorage(io.BytesIO(big), "big.jpg", "image", "image/jpeg")})
    response = client.post("/predict", data=body, content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 200
    assert list(spill.iterdir()) == [] and files_open_under(spill) == []
