"""The model itself on nsfwjs's fixed tensors: every backend within 1e-5 of the reference."""

from __future__ import annotations

import numpy as np
import pytest

from nsfw.config import ConfigError, Settings
from nsfw.model import Classifier, load_classifier, warm_up
from tests.reference import Corpus
from tests.support import FakeClassifier

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
