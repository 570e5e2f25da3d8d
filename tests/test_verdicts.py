"""Verdicts: the policy table, its validation, and the ?detail=true shape next to the flat default."""

from __future__ import annotations

import io
import re
from dataclasses import replace

import pytest
from flask.testing import FlaskClient
from PIL import Image

from nsfw import create_app, errors
from nsfw.config import ConfigError, Settings
from nsfw.model.specs import OPEN_NSFW_SPEC
from nsfw.pipeline.verdict import Policy
from tests.support import MESSAGES, REPO, FakeClassifier, ImageServer, corpus_bytes

CLASSES = ("drawings", "hentai", "neutral", "porn", "sexy")
MODELS_MD = REPO / "models" / "MODELS.md"


def _scores(*values: float) -> dict[str, float]:
    return dict(zip(CLASSES, values, strict=True))


@pytest.mark.parametrize(
    ("scores", "label", "rule"),
    [
        (_scores(0.0, 0.0, 1.0, 0.0, 0.0), "safe", "safe_threshold"),
        (_scores(0.9, 0.05, 0.05, 0.0, 0.0), "safe", "safe_threshold"),  # drawings count as safe
        (_scores(0.0, 0.0, 0.0, 1.0, 0.0), "adult", "adult_threshold"),
        (_scores(0.0, 0.7, 0.3, 0.0, 0.0), "adult", "adult_threshold"),  # hentai counts as adult; >= decides
        (_scores(0.1, 0.1, 0.2, 0.3, 0.3), "adult", "adult_threshold"),  # porn + sexy + hentai = 0.7
        (_scores(0.1, 0.0, 0.5, 0.2, 0.2), "unknown", "for human review"),  # 0.4 adult, 0.6 safe
        (_scores(0.0, 0.0, 0.69, 0.0, 0.31), "unknown", "for human review"),
    ],
)
def test_the_default_policy(scores: dict[str, float], label: str, rule: str) -> None:
    verdict = Policy.of(Settings()).decide(scores)
    assert verdict.label == label and rule in verdict.reason


def test_the_reason_carries_the_numbers() -> None:
    verdict = Policy(0.95, 0.95).decide(_scores(0.0, 0.0, 0.1, 0.6, 0.3))
    assert verdict.to_dict() == {"label": "unknown", "reason": verdict.reason}
    assert "hentai+porn+sexy 0.900 < adult_threshold 0.95" in verdict.reason


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, Policy(0.7, 0.7)),
        ({"adult_threshold": "0.95"}, Policy(0.95, 0.7)),
        ({"adult_threshold": "0.95", "safe_threshold": "0.95"}, Policy(0.95, 0.95)),
        ({"safe_threshold": "1"}, Policy(0.7, 1.0)),
    ],
)
def test_overrides(values: dict[str, str], expected: Policy) -> None:
    assert Policy(0.7, 0.7).overridden(values) == expected


@pytest.mark.parametrize(
    "values",
    [
        {"adult_threshold": "high"},
        {"adult_threshold": "nan"},
        {"adult_threshold": "0"},
        {"safe_threshold": "1.5"},
        {"adult_threshold": "0.5", "safe_threshold": "0.5"},  # both rules could match one image
        {"adult_threshold": "0.2"},
    ],
)
def test_bad_overrides_are_invalid_policy(values: dict[str, str]) -> None:
    with pytest.raises(errors.InvalidPolicy):
        Policy(0.7, 0.7).overridden(values)


def test_bad_settings_stop_the_boot_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="NSFW_ADULT_THRESHOLD"):
        Settings.from_env({"NSFW_ADULT_THRESHOLD": "0.3", "NSFW_SAFE_THRESHOLD": "0.6"})
    assert Policy.of(Settings.from_env({"NSFW_ADULT_THRESHOLD": "0.95", "NSFW_SAFE_THRESHOLD": "0.95"})) == Policy(
        0.95, 0.95
    )


def test_the_default_answer_stays_flat_and_detail_explains_it(client: FlaskClient, image_server: ImageServer) -> None:
    url = image_server.add_file("/l.jpg", corpus_bytes("rocket.jpg"))
    flat = client.post("/predict", query_string={"url": url}).get_json()
    assert list(flat) == list(CLASSES)
    detail = client.post("/predict", query_string={"url": url, "detail": "true"}).get_json()
    assert detail["scores"] == flat
    assert detail["verdict"] == {"label": "safe", "reason": "drawings+neutral 1.000 >= safe_threshold 0.7"}
    assert detail["model"] == {"name": "mobilenet_v2", "version": "nsfwjs-4.4.0", "backend": "litert"}
    assert detail["tier"] == 1 and detail["policy"] == {"adult_threshold": 0.7, "safe_threshold": 0.7}
    assert 0 < detail["timing_ms"]["classify"] <= detail["timing_ms"]["total"]
    assert "frames" not in detail  # a still image
    strict = client.post("/predict", query_string={"url": url, "detail": "1", "safe_threshold": "1"}).get_json()
    assert strict["verdict"]["label"] == "unknown" and strict["policy"]["safe_threshold"] == 1.0


def test_detail_lists_an_animations_frames(client: FlaskClient, image_server: ImageServer) -> None:
    frames = [Image.new("RGB", (64, 64), (i * 20, 0, 0)) for i in range(12)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    url = image_server.add_file("/a.gif", out.getvalue(), "image/gif")
    detail = client.post("/predict", query_string={"url": url, "detail": "true"}).get_json()
    listed = detail["frames"]
    assert listed["count"] == 12 and [f["index"] for f in listed["classified"]] == [0, 2, 3, 5, 6, 8, 9, 11]
    chosen = next(f for f in listed["classified"] if f["index"] == listed["chosen"])
    assert chosen["scores"] == detail["scores"]


def test_detail_and_policy_on_batches_and_their_errors(client: FlaskClient, image_server: ImageServer) -> None:
    url = image_server.add_file("/l.jpg", corpus_bytes("rocket.jpg"))
    items = {"items": [{"url": url}, {"url": "http://10.0.0.1/"}]}
    results = client.post("/predict/batch?detail=true", json=items).get_json()["results"]
    assert results[0]["verdict"]["label"] == "safe" and results[1]["error"]["code"] == "url_not_allowed"
    for query in ("adult_threshold=0.1", "safe_threshold=x", "detail=maybe", "detail=true&detail=false"):
        response = client.post(f"/predict?url={url}&{query}")
        assert response.status_code == 400, query
        code = response.get_json()["error"]["code"]
        assert code in ("invalid_policy", "bad_request") and response.get_json()["error"]["message"] == MESSAGES[code]
    assert client.post("/predict/batch?adult_threshold=2", json=items).get_json()["error"]["code"] == "invalid_policy"


def test_models_lists_the_catalogue_with_provenance(client: FlaskClient) -> None:
    listed = client.get("/models").get_json()["models"]
    md = MODELS_MD.read_text()

    def checksum(artifact: str) -> str:
        found = re.search(rf"`{re.escape(artifact)}` \| \d+ \| `([0-9a-f]{{64}})`", md)
        assert found, artifact
        return found.group(1)

    assert [entry["name"] for entry in listed] == [
        "mobilenet_v2",
        "inception_v3",
        "mobilenet_v2_mid",
        "open_nsfw",
        "private_detector",
    ]
    mobilenet, inception, mid, open_nsfw, private = listed
    assert mobilenet == {
        "name": "mobilenet_v2",
        "version": "nsfwjs-4.4.0",
        "served": True,
        "default": True,
        "backend": "litert",
        "input_size": 224,
        "classes": list(CLASSES),
        "adult_classes": ["hentai", "porn", "sexy"],
        "source": "GantMan's NSFW MobileNetV2, rebuilt from npm nsfwjs@4.4.0 (models/MODELS.md)",
        "licence": "MIT (nsfwjs: Infinite Red; weights: GantMan nsfw_model)",
        "sha256": checksum("mobilenet_v2/model.tflite"),
    }
    # Not served here (NSFW_MODELS defaults to mobilenet_v2), still listed with their checksums.
    assert inception["served"] is False and inception["input_size"] == 299 and inception["classes"] == list(CLASSES)
    assert inception["sha256"] == checksum("inception_v3/model.npz") and inception["backend"] == "onnxruntime"
    assert mid["served"] is False and mid["input_size"] == 224 and mid["classes"] == list(CLASSES)
    assert mid["sha256"] == checksum("mobilenet_v2_mid/model.npz") and mid["backend"] == "onnxruntime"
    assert open_nsfw["classes"] == ["sfw", "nsfw"] and open_nsfw["adult_classes"] == ["nsfw"]
    assert open_nsfw["sha256"] == checksum("open_nsfw/open-nsfw.onnx") and "BSD-2-Clause" in open_nsfw["licence"]
    assert private["served"] is False and private["sha256"] is None and private["input_size"] == 480


def test_model_choice_is_checked(client: FlaskClient, image_server: ImageServer) -> None:
    url = image_server.add_file("/a.jpg", corpus_bytes("rocket.jpg"))
    for query, code in (
        ({"model": "resnet"}, "unknown_model"),
        ({"model": "inception_v3"}, "model_not_served"),
        ({"model": ["mobilenet_v2", "mobilenet_v2"]}, "bad_request"),
    ):
        answer = client.post("/predict", query_string={"url": url, **query})
        assert answer.status_code == 400 and answer.get_json()["error"]["code"] == code, query
    assert client.post("/predict", query_string={"url": url, "model": "mobilenet_v2"}).status_code == 200


def test_models_of_their_own_answer_their_classes_and_verdicts(settings: Settings, image_server: ImageServer) -> None:
    mobilenet = FakeClassifier()
    yahoo = FakeClassifier(spec=OPEN_NSFW_SPEC, probabilities=(0.2, 0.8))
    client = create_app(replace(settings, models=("open_nsfw",)), [mobilenet, yahoo]).test_client()
    url = image_server.add_file("/a.jpg", corpus_bytes("rocket.jpg"))
    flat = client.post("/predict", query_string={"url": url, "model": "open_nsfw"}).get_json()
    assert flat == {"sfw": pytest.approx(0.2), "nsfw": pytest.approx(0.8)}
    detail = client.post("/predict", query_string={"url": url, "model": "open_nsfw", "detail": "true"}).get_json()
    assert detail["verdict"] == {"label": "adult", "reason": "nsfw 0.800 >= adult_threshold 0.7"}
    assert detail["model"]["name"] == "open_nsfw"
    refused = client.post("/predict", query_string={"url": url, "model": "open_nsfw", "resize": "gantman"})
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "bad_request"
    one = client.post("/models/open_nsfw/predict", query_string={"url": url}).get_json()
    assert set(one) == {"open_nsfw", "time"} and one["open_nsfw"] == pytest.approx(0.8)
    everything = client.post("/models/all/predict", query_string={"url": url}).get_json()
    assert set(everything) == {"nsfw_model", "open_nsfw", "time"} and set(everything["nsfw_model"]) == set(CLASSES)
    assert image_server.hits.count("/a.jpg") == 4  # /models/all/predict fetched it once
    assert len(mobilenet.seen) == 1 and len(yahoo.seen) == 4

    assert client.post("/models").status_code == 405
