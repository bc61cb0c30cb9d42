"""Each pass alone, with real tfmot and real (short) training on the digits reference model."""

from __future__ import annotations

import numpy as np
import pytest

from tfedge.errors import RecipeError, TrainingError
from tfedge.passes import PassContext, TrainConfig, build_pass

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher(digits):
    from tfedge.io.models import load_tf_keras_model

    return load_tf_keras_model(digits.model)


@pytest.fixture(scope="module")
def ctx(digits):
    from tfedge.io.data import load_data

    train, test = load_data(digits.train), load_data(digits.test)
    return PassContext(
        x=train.x.astype(np.float32),
        y=train.y,
        train=TrainConfig(),
        seed=0,
        eval_x=test.x,
        eval_y=test.y,
    )


def _kernel(model, name):
    return model.get_layer(name).kernel.numpy()


def _int8(model, calib, tmp_path):
    import tfedge
    from tfedge.optimize.pipeline import weight_stats

    out = tmp_path / "m.tflite"
    assert tfedge.convert(model, out, calib=calib).full_integer
    return weight_stats(out)


def test_prune_reaches_target_in_keras_and_in_the_int8_tflite(teacher, ctx, tmp_path):
    before = [w.copy() for w in teacher.get_weights()]
    result = build_pass("prune", {"target_sparsity": 0.75, "epochs": 2}).apply(teacher, ctx)
    for layer, sparsity in result.metrics["sparsity_by_layer"].items():
        assert abs(sparsity - 0.75) <= 0.02, (layer, sparsity)
    assert not any(
        "prune" in type(l).__name__.lower() for l in result.model.layers
    )  # wrappers stripped
    assert all(
        np.array_equal(a, b) for a, b in zip(before, teacher.get_weights())
    )  # input untouched
    stats = _int8(result.model, ctx.x, tmp_path)
    for layer in ("conv1", "conv2", "fc1", "logits"):
        assert abs(stats["layers"][layer]["sparsity"] - 0.75) <= 0.02, (
            layer,
            stats["layers"][layer],
        )
    assert ctx.accuracy(result.model) > 0.9


def test_prune_2_by_4_and_blocks(teacher, ctx):
    m_by_n = build_pass("prune", {"structure": "2:4", "epochs": 1, "layer_types": ["Dense"]}).apply(
        teacher, ctx
    )
    kernel = _kernel(m_by_n.model, "fc1")  # (in, out): groups of 4 along the input channels
    groups = kernel.T.reshape(kernel.shape[1], -1, 4)
    assert np.all(np.sum(groups == 0, axis=-1) >= 2)
    blocks = build_pass("prune", {"target_sparsity": 0.5, "block_size": [1, 4], "epochs": 1}).apply(
        teacher, ctx
    )
    assert set(blocks.metrics["sparsity_by_layer"]) == {
        "fc1",
        "logits",
    }  # block sparsity: rank-2 kernels only
    quads = _kernel(blocks.model, "fc1").reshape(512, 16, 4)
    zero_blocks = np.all(quads == 0, axis=-1)
    assert np.array_equal(zero_blocks, np.any(quads == 0, axis=-1))  # blocks are zero together
    assert abs(zero_blocks.mean() - 0.5) <= 0.02


def test_cluster_after_prune_keeps_zeros_and_at_most_k_values(teacher, ctx, tmp_path):
    pruned = build_pass("prune", {"target_sparsity": 0.5, "epochs": 1}).apply(teacher, ctx).model
    ctx2 = PassContext(**{**ctx.__dict__, "applied": ("prune",)})
    result = build_pass("cluster", {"clusters": 8, "epochs": 1}).apply(pruned, ctx2)
    assert result.metrics["preserve_sparsity"] is True
    for name in ("conv1", "conv2", "fc1", "logits"):
        kernel = _kernel(result.model, name)
        assert np.unique(kernel[kernel != 0]).size <= 8
        assert abs(np.mean(kernel == 0) - np.mean(_kernel(pruned, name) == 0)) <= 0.01
    stats = _int8(result.model, ctx.x, tmp_path)
    assert (
        stats["max_unique_per_channel"] <= 8 + 1
    )  # per output channel in the int8 file, zero included
    assert stats["sparsity"] >= 0.49


def test_qat_lists_unsupported_layers_before_training_then_skips_them(ctx):
    from tfedge._tf import import_keras

    k = import_keras()
    model = k.Sequential(
        [
            k.layers.InputLayer(input_shape=(8, 8, 1)),
            k.layers.Flatten(name="flat"),
            k.layers.Dense(16, activation="relu", name="fc"),
            k.layers.UnitNormalization(name="norm"),
            k.layers.Dense(10, name="out"),
        ]
    )
    with pytest.raises(
        RecipeError, match=r"cannot quantize 1 layer\(s\): norm \(UnitNormalization\)"
    ):
        build_pass("qat", {}).check(model, ctx)
    result = build_pass("qat", {"unsupported": "skip", "epochs": 1}).apply(model, ctx)
    assert result.quantize_wrapped and result.metrics["skipped_layers"] == [
        "norm (UnitNormalization)"
    ]


def test_qat_picks_the_collaborative_scheme():
    qat = build_pass("qat", {})
    assert [qat.chosen_scheme(a) for a in [(), ("prune",), ("cluster",), ("prune", "cluster")]] == [
        "default",
        "pqat",
        "cqat",
        "pcqat",
    ]


def test_low_rank_parameter_count_as_computed(teacher, ctx):
    lr = build_pass("low_rank", {"param_ratio": 0.25, "epochs": 0})
    plans = lr.plan(teacher)
    assert [p.layer for p in plans] == ["fc1"]  # logits is the output layer: left alone
    rank = int(0.25 * 512 * 64 / (512 + 64))
    assert plans[0].rank == rank
    result = lr.apply(teacher, ctx)
    assert result.model.count_params() == teacher.count_params() - 512 * 64 + rank * (512 + 64)
    assert result.metrics["layers"]["fc1"] == {
        "rank": rank,
        "params_before": 512 * 64 + 64,
        "params_after": rank * (512 + 64) + 64,
    }
    assert [l.name for l in result.model.layers][-3:] == ["fc1_lr", "fc1", "logits"]


def test_low_rank_svd_is_exact_on_low_rank_kernels_for_dense_and_1x1_conv(ctx):
    from tfedge._tf import import_keras

    k = import_keras()
    inp = k.Input((4, 4, 32))
    x = k.layers.Conv2D(32, 1, activation="relu", name="pw")(inp)
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(64, activation="relu", name="fc")(x)
    model = k.Model(inp, k.layers.Dense(10, name="out")(x))
    rng = np.random.default_rng(0)
    for name, (n_in, n_out) in {"pw": (32, 32), "fc": (512, 64)}.items():
        layer = model.get_layer(name)
        low = (rng.normal(size=(n_in, 3)) @ rng.normal(size=(3, n_out))).astype(np.float32)
        layer.set_weights([low.reshape(layer.kernel.shape), layer.get_weights()[1]])
    result = build_pass("low_rank", {"energy": 0.9999, "epochs": 0}).apply(model, ctx)
    assert {n: v["rank"] for n, v in result.metrics["layers"].items()} == {"pw": 3, "fc": 3}
    x = rng.normal(size=(8, 4, 4, 32)).astype(np.float32)
    np.testing.assert_allclose(result.model(x).numpy(), model(x).numpy(), rtol=1e-3, atol=1e-3)


def test_distill_alpha_1_equals_the_student_trained_alone(teacher, ctx):
    """Same architecture, seed, data order, epochs and optimizer: with only the label loss, they
    match."""
    result = build_pass(
        "distill", {"width": 0.25, "epochs": 2, "alpha": 1.0, "compare_alone": True}
    ).apply(teacher, ctx)
    m = result.metrics
    assert m["student_params"] < m["teacher_params"] / 8 and m["teacher_accuracy"] > 0.95
    assert m["student_accuracy"] == pytest.approx(m["student_alone_accuracy"], abs=0.01)
    assert result.model.get_layer("fc1").units == 16


def test_distill_with_soft_targets_and_feature_pairs(teacher, ctx):
    result = build_pass(
        "distill", {"width": 0.5, "epochs": 2, "features": [["fc1", "fc1"]], "feature_weight": 0.01}
    ).apply(teacher, ctx)
    assert 0.0 < result.metrics["student_accuracy"] <= 1.0
    assert [l.name for l in result.model.layers] == [l.name for l in teacher.layers]
    with pytest.raises(RecipeError, match="the student has no layer 'nope'"):
        build_pass("distill", {"features": [["fc1", "nope"]], "epochs": 1}).apply(teacher, ctx)


@pytest.mark.parametrize("head", ["activation", "layer"])
def test_distill_a_softmax_model_uses_its_logits(teacher, ctx, head):
    """Ending in softmax (as an activation or a Softmax layer) must distil exactly like ending in
    logits: the soft targets come from the logits, not from log(probabilities) clipped at a floor
    (many of this teacher's probabilities are below 1e-8), and the student's gradient does not
    vanish."""
    from tfedge._tf import import_keras

    k = import_keras()
    config = teacher.get_config()
    if head == "activation":
        config["layers"][-1]["config"]["activation"] = "softmax"
    else:
        config["layers"].append({"class_name": "Softmax", "config": {"name": "probs", "axis": -1}})
    softmax_teacher = k.Sequential.from_config(config)
    softmax_teacher.set_weights(teacher.get_weights())
    options = {"width": 0.25, "epochs": 2, "alpha": 0.0, "temperature": 4.0}
    from_logits = build_pass("distill", options).apply(teacher, ctx).model
    from_probs = build_pass("distill", options).apply(softmax_teacher, ctx).model
    assert [l.name for l in from_probs.layers][-1] == (
        "logits" if head == "activation" else "probs"
    )
    if head == "activation":
        assert from_probs.layers[-1].activation.__name__ == "softmax"  # put back after training
    x = ctx.eval_x.astype(np.float32)
    expected = tf_softmax(from_logits.predict(x, verbose=0))
    np.testing.assert_allclose(from_probs.predict(x, verbose=0), expected, atol=2e-3)


def tf_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def test_nan_loss_stops_with_the_stage_named(teacher, ctx):
    bad = PassContext(
        **{**ctx.__dict__, "x": ctx.x * 1e38, "train": TrainConfig(learning_rate=0.9)}
    )
    with pytest.raises(TrainingError, match="stage 'low_rank'.*NaN"):
        build_pass("low_rank", {"param_ratio": 0.25, "epochs": 1}).apply(teacher, bad)


def _dense_bn_model(seed: int = 0):
    """A tiny autoencoder, each Dense followed by BatchNormalization and ReLU (like anomaly)."""
    from tfedge._tf import import_keras

    k = import_keras()
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(160, 4)) @ rng.normal(size=(4, 32))).astype(np.float32) / 4
    inp = k.Input((32,), name="frames")
    h = inp
    for i, units in enumerate([16, 4, 16]):
        h = k.layers.BatchNormalization(name=f"bn{i}")(k.layers.Dense(units, name=f"dense{i}")(h))
        h = k.layers.ReLU(name=f"relu{i}")(h)
    model = k.Model(inp, k.layers.Dense(32, name="out")(h))
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, x, epochs=2, batch_size=32, verbose=0)
    # the input range QAT sees (training batches) differs from the calibration range: the held-out
    # validation split holds the largest input
    x[-1, 0] = 3 * np.abs(x).max()
    return model, x


@pytest.mark.tf
def test_dense_batchnorm_prune_cluster_qat_converts_full_integer(tmp_path):
    import tfedge
    from tfedge.optimize.pipeline import weight_stats
    from tfedge.passes.rebuild import fold_for_qat

    model, x = _dense_bn_model()
    folded, pairs, moved = fold_for_qat(model)
    assert moved == {}
    assert pairs == {
        "bn0": "dense0",
        "bn1": "dense1",
        "bn2": "dense2",
        "relu0": "dense0",
        "relu1": "dense1",
        "relu2": "dense2",
    }
    assert [type(layer).__name__ for layer in folded.layers] == ["InputLayer"] + ["Dense"] * 4
    assert np.allclose(model.predict(x, verbose=0), folded.predict(x, verbose=0), atol=1e-5)
    ctx = PassContext(x=x, y=x, train=TrainConfig(batch_size=32), seed=0)
    current = folded
    for name, options in [
        ("prune", {"target_sparsity": 0.5, "epochs": 1}),
        ("cluster", {"clusters": 8, "epochs": 1}),
    ]:
        current = build_pass(name, options).apply(current, ctx).model
        ctx.applied += (name,)
    result = build_pass("qat", {"epochs": 1}).apply(current, ctx)
    assert result.metrics["scheme"] == "pcqat" and result.metrics["folded_into_dense"] == {}
    saved = tmp_path / "qat"
    result.model.save(saved, save_format="tf")
    converted = tfedge.convert(str(saved), tmp_path / "m.tflite", calib=x)
    assert converted.full_integer, converted.float_ops
    stats = weight_stats(tmp_path / "m.tflite")  # PCQAT kept the zeros and the clusters (a separate
    assert stats["sparsity"] >= 0.48  # ReLU layer after the Dense used to lose both)
    assert stats["max_unique_per_channel"] <= 8 + 1
    # qat alone folds too (no pipeline before it)
    alone = build_pass("qat", {"epochs": 1}).apply(
        model, PassContext(x=x, y=x, train=TrainConfig(), seed=0)
    )
    assert set(alone.metrics["folded_into_dense"]) == {
        "bn0",
        "bn1",
        "bn2",
        "relu0",
        "relu1",
        "relu2",
    }


def test_cluster_count_fits_tfmot_kmeans_plus_plus():
    from tfedge.passes.cluster import cluster_count

    # 4 non-zeros, 3 of them negative: tfmot would ask k-means++ for 5 negative centroids out of 3
    kernel = np.zeros((8, 3), np.float32)
    kernel[0, :3], kernel[1, 0] = [-0.5, -0.2, -0.1], 0.3
    assert cluster_count(kernel, 8, keep_zeros=True) == (
        5,
        "",
    )  # zero + 3 negative + 1 positive centroids
    assert cluster_count(kernel, 8, keep_zeros=False) == (8, "")
    assert cluster_count(np.zeros((4, 4), np.float32), 8, keep_zeros=True)[0] == 0
    k, why = cluster_count(np.array([[0.0, 0.0, 0.0, 0.4]], np.float32), 8, keep_zeros=True)
    assert k == 0 and "1 non-zero" in why


@pytest.mark.tf
def test_cluster_a_layer_with_fewer_values_than_clusters_does_not_crash():
    from tfedge._tf import import_keras

    k = import_keras()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    model = k.Sequential(
        [
            k.layers.InputLayer(input_shape=(8,)),
            k.layers.Dense(16, activation="relu", name="big"),
            k.layers.Dense(3, name="tiny"),
            k.layers.Dense(8, name="out"),
        ]
    )
    tiny = np.zeros((16, 3), np.float32)
    tiny[0, :3], tiny[1, 0] = [-0.5, -0.2, -0.1], 0.3  # 4 non-zero weights, 3 negative
    model.get_layer("tiny").set_weights([tiny, np.zeros(3, np.float32)])
    few = np.zeros((3, 8), np.float32)
    few[0, 0] = 0.7  # one non-zero weight: nothing to cluster
    model.get_layer("out").set_weights([few, np.zeros(8, np.float32)])
    ctx = PassContext(x=x, y=x, train=TrainConfig(), seed=0, applied=("prune",))
    result = build_pass("cluster", {"clusters": 8, "epochs": 1}).apply(model, ctx)
    assert result.metrics["clusters_by_layer"] == {"big": 8, "tiny": 5}
    assert result.metrics["skipped_layers"] == {
        "out": "1 non-zero weight(s): too few to cluster (kept as is)"
    }
    assert np.count_nonzero(_kernel(result.model, "tiny")) == 4


@pytest.mark.tf
def test_batchnorm_statistics_reestimated_as_the_mean_over_the_training_samples():
    """After a pass changed the weights, every BatchNormalization's moving mean becomes the mean
    of what it now sees over all training samples (batches weighted by size), its moving
    variance the mean of the batch variances; weights and momentum are untouched."""
    from tfedge._tf import import_keras
    from tfedge.passes.batchnorm import reestimate_batchnorm

    k = import_keras()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 6, 6, 3)).astype(np.float32)  # batches of 32, 32, 32 and 4
    inp = k.Input((6, 6, 3))
    conv = k.layers.Conv2D(4, 3, name="conv")
    model = k.Model(inp, k.layers.BatchNormalization(name="bn")(conv(inp)))
    conv.set_weights([w * 3 + 1 for w in conv.get_weights()])  # stale moving statistics
    weights = [w.copy() for w in model.get_weights()]
    bn = model.get_layer("bn")
    ctx = PassContext(x=x, y=np.zeros(100, np.int64), train=TrainConfig(batch_size=32), seed=0)

    assert reestimate_batchnorm(model, ctx) == 1

    features = conv(x).numpy().reshape(100, -1, 4)
    batches = [features[i : i + 32] for i in range(0, 100, 32)]
    np.testing.assert_allclose(bn.moving_mean.numpy(), features.mean((0, 1)), rtol=1e-4)
    sizes = np.array([len(b) for b in batches], np.float64)
    variances = np.stack([b.reshape(-1, 4).var(0) for b in batches])
    expected = (sizes[:, None] * variances).sum(0) / sizes.sum()
    np.testing.assert_allclose(bn.moving_variance.numpy(), expected, rtol=0.02)  # n/(n-1)
    assert bn.momentum == 0.99
    for before, after in zip(weights[:2], model.get_weights()[:2]):
        np.testing.assert_array_equal(before, after)
