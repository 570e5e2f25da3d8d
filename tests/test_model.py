"""The model itself on nsfwjs's fixed tensors: every backend within 1e-5 of the reference."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nsfw.config import ConfigError, Settings
from nsfw.model import Classifier, infer, load_classifier, warm_up
from nsfw.model.specs import MOBILENET_V2
from tests.reference import Corpus
from tests.support import REPO, FakeClassifier

TOLERANCE = 1e-5


def _check(classifier: Classifier, reference: Corpus) -> None:
    fixed = reference.synthetic(224)
    assert fixed is not None, "every corpus has the 224x224 fixed tensors"
    x, expected = fixed
    batch = classifier.predict(x)
    assert batch.shape == (8, 5) and batch.dtype == np.float32
    assert np.abs(batch - expected).max() <= TOLERANCE
    one_by_one = np.concatenate([classifier.predict(x[i : i + 1]) for i in range(len(x))])
    assert np.abs(one_by_one - expected).max() <= TOLERANCE


def test_litert_matches_nsfwjs_on_fixed_tensors(litert: Classifier, reference: Corpus) -> None:
    assert litert.backend == "litert"
    _check(litert, reference)


@pytest.mark.tensorflow
@pytest.mark.slow
def test_tensorflow_matches_nsfwjs_on_fixed_tensors(reference: Corpus) -> None:
    classifier = load_classifier(Settings(backend="tensorflow", load_in_background=False))
    assert classifier.backend == "tensorflow"
    _check(classifier, reference)


def _head(path: Path, features: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The final Dense's kernel and bias as model.keras stores them (h5py, no TensorFlow)."""
    h5py = pytest.importorskip("h5py")
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
        dense = [weights[f"layers/{name}/vars"] for name in weights["layers"] if name.startswith("dense")]
        ((kernel, bias),) = [(v["0"][()], v["1"][()]) for v in dense if v["0"].shape == (features, classes)]
    return kernel, bias


def test_litert_infer_gives_predicts_probabilities_and_the_features_the_head_reads(
    litert: Classifier, reference: Corpus
) -> None:
    fixed = reference.synthetic(224)
    assert fixed is not None
    x, expected = fixed
    inference = infer(litert, x)
    assert litert.embedding_size == 128  # type: ignore[attr-defined]
    assert inference.embeddings is not None and inference.embeddings.shape == (8, 128)
    assert inference.embeddings.dtype == np.float32 and (inference.embeddings >= 0).all()  # relu
    np.testing.assert_array_equal(inference.probabilities, litert.predict(x))
    assert np.abs(inference.probabilities - expected).max() <= TOLERANCE
    # Dense 5 softmax on the embeddings, in float64 NumPy, reproduces the probabilities.
    kernel, bias = _head(REPO / "models" / MOBILENET_V2.artifacts["tensorflow"], 128, 5)
    logits = inference.embeddings.astype(np.float64) @ kernel + bias
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert np.abs(probs - inference.probabilities).max() <= TOLERANCE
    one = infer(litert, x[:1])
    assert one.embeddings is not None and np.abs(one.embeddings - inference.embeddings[:1]).max() <= TOLERANCE


@pytest.mark.tensorflow
@pytest.mark.slow
def test_both_backends_give_keras_dense_128_output_as_embeddings(litert: Classifier, reference: Corpus) -> None:
    import keras

    fixed = reference.synthetic(224)
    assert fixed is not None
    x, _ = fixed
    model = keras.models.load_model(REPO / "models" / MOBILENET_V2.artifacts["tensorflow"], compile=False)
    dense_128 = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dense) and layer.units == 128)
    expected = keras.Model(model.inputs[0], dense_128.output)(x, training=False).numpy()
    classifier = load_classifier(Settings(backend="tensorflow", load_in_background=False))
    for which in (litert, classifier):
        inference = infer(which, x)
        assert which.embedding_size == 128  # type: ignore[attr-defined]
        np.testing.assert_array_equal(inference.probabilities, which.predict(x))
        assert inference.embeddings is not None
        assert np.abs(inference.embeddings - expected).max() <= TOLERANCE * max(1.0, float(expected.max()))


def test_unknown_model_fails_at_boot() -> None:
    with pytest.raises(ConfigError, match="NSFW_MODEL"):
        load_classifier(Settings(model="resnet"))


def test_warm_up_refuses_a_broken_model() -> None:
    warm_up(FakeClassifier())
    with pytest.raises(RuntimeError):
        warm_up(FakeClassifier(probabilities=(float("nan"),) * 5))
    with pytest.raises(RuntimeError):
        warm_up(FakeClassifier(probabilities=(0.5, 0.5)))


def test_serving_path_does_not_import_tensorflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from nsfw.config import Settings; from nsfw.model import load_classifier; "
        "load_classifier(Settings(load_in_background=False)); import app; "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')], 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"NSFW_LOAD_IN_BACKGROUND": "false"})
