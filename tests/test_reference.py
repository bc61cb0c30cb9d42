"""The reference models are real classifiers in inference mode, not only while training."""

from __future__ import annotations

import pytest

from tfedge.analyze.evaluate import evaluate
from tfedge.zoo.reference import build_reference


def test_digits_reference_model_is_accurate(digits):
    assert evaluate(digits.model, digits.test).accuracy >= 0.95


@pytest.mark.slow
@pytest.mark.tf
def test_kws_reference_model_is_accurate_in_inference_mode(tmp_path):
    """Its BatchNormalization statistics once lagged: right in training, chance in inference."""
    kws = build_reference("kws", tmp_path)
    assert evaluate(kws.model, kws.test).accuracy >= 0.8
