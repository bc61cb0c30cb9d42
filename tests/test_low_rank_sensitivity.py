"""low_rank's default ranks come from the sensitivity analysis on held-out training data."""

from __future__ import annotations

import numpy as np
import pytest

from tfedge.passes import PassContext, TrainConfig, build_pass
from tfedge.passes.sensitivity import candidate_ranks, rank_sensitivity

pytestmark = [pytest.mark.tf, pytest.mark.slow]


@pytest.fixture(scope="module")
def mlp_digits():
    """Flatten -> Dense(256) -> Dense(256) -> Dense(10), trained on sklearn digits (seeded)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from tfedge._tf import import_keras

    k = import_keras()
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    k.utils.set_random_seed(0)
    inp = k.Input((8, 8, 1))
    h = k.layers.Flatten()(inp)
    h = k.layers.Dense(256, activation="relu", name="fc1")(h)
    h = k.layers.Dense(256, activation="relu", name="fc2")(h)
    model = k.Model(inp, k.layers.Dense(10, name="logits")(h))
    loss = k.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss, metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=30, batch_size=32, verbose=0)
    ctx = PassContext(x=xtr, y=ytr, train=TrainConfig(), seed=0, eval_x=xte, eval_y=yte)
    return model, ctx


def _dense_params(model) -> int:
    return sum(l.count_params() for l in model.layers if type(l).__name__ == "Dense")


def test_default_low_rank_cuts_40_percent_of_dense_params_within_1_point(mlp_digits):
    model, ctx = mlp_digits
    before = ctx.accuracy(model)
    result = build_pass("low_rank", {}).apply(model, ctx)  # defaults: max_drop 0.5, 2 epochs
    assert set(result.metrics["layers"]) == {"fc1", "fc2"}
    assert result.metrics["sensitivity"]["metric"] == "accuracy"
    cut = 1 - _dense_params(result.model) / _dense_params(model)
    assert cut >= 0.40, cut
    assert ctx.accuracy(result.model) >= before - 0.01


def test_explicit_energy_still_chooses_ranks_from_the_weights(mlp_digits):
    model, ctx = mlp_digits
    result = build_pass("low_rank", {"energy": 0.9, "epochs": 0}).apply(model, ctx)
    assert "sensitivity" not in result.metrics
    s = np.linalg.svd(model.get_layer("fc1").kernel.numpy(), compute_uv=False)
    share = np.cumsum(s**2) / np.sum(s**2)
    assert result.metrics["layers"]["fc1"]["rank"] == int(np.searchsorted(share, 0.9) + 1)


def test_sensitivity_is_exact_above_the_true_rank_and_leaves_the_model_alone(mlp_digits):
    """A kernel of rank 3: every candidate rank >= 3 scores as the model itself."""
    from tfedge.passes.base import clone_with_weights

    model, ctx = mlp_digits
    model = clone_with_weights(model)
    rng = np.random.default_rng(0)
    layer = model.get_layer("fc2")
    low = (rng.normal(size=(256, 3)) @ rng.normal(size=(3, 256)) / 16).astype(np.float32)
    layer.set_weights([low, layer.get_weights()[1]])
    kept = [w.copy() for w in model.get_weights()]
    table = rank_sensitivity(model, ["fc2"], ctx.eval_x, ctx.eval_y, ranks={"fc2": [1, 3, 8]})
    rows = {r.rank: r for r in table.layers["fc2"].rows}
    assert rows[3].drop == rows[8].drop == 0.0
    assert rows[1].params == 512
    assert all(np.array_equal(a, b) for a, b in zip(kept, model.get_weights()))
    assert candidate_ranks(64, 256)[-1] * (64 + 256) < 64 * 256
