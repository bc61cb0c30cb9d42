"""The channel graph and removal (``tfedge.passes.channel_graph``, ``tfedge.passes.channels``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import assert_one_error_line

pytestmark = pytest.mark.tf

# group widths of the bookkeeping model: stem (tied by an Add), branch, side, separable, head
WIDTHS = {"stem": 16, "branch": 8, "side": 12, "sep": 8, "head": 10}


def _keras():
    from tfedge._tf import import_keras

    return import_keras()


def bookkeeping_model(stem=16, branch=8, side=12, sep=8, head=10):
    """Residual Adds, a Concatenate tied by an Add, a depthwise block, BatchNormalization, a
    SeparableConv2D and a Flatten -> Dense head."""
    k = _keras()
    L = k.layers
    x = L.Input((8, 8, 3), name="image")
    a = L.ReLU(name="a_relu")(
        L.BatchNormalization(name="a_bn")(L.Conv2D(stem, 3, padding="same", name="a")(x))
    )
    b = L.ReLU(name="b_relu")(L.BatchNormalization(name="b_bn")(L.Conv2D(stem, 1, name="b")(a)))
    add1 = L.Add(name="add1")([a, b])
    dw = L.DepthwiseConv2D(3, padding="same", name="dw")(add1)
    dw = L.ReLU(6.0, name="dw_relu")(L.BatchNormalization(name="dw_bn")(dw))
    c = L.Conv2D(branch, 1, name="c")(dw)
    d = L.Conv2D(side, 1, activation="relu", name="d")(add1)
    cat = L.Concatenate(name="cat")([c, d])
    e = L.BatchNormalization(name="e_bn")(L.Conv2D(branch + side, 1, name="e")(cat))
    add2 = L.Add(name="add2")([cat, e])
    s = L.SeparableConv2D(sep, 3, padding="same", name="sep")(add2)
    pooled = L.MaxPooling2D(2, name="pool")(L.Activation("relu", name="sep_relu")(s))
    h = L.Dense(head, activation="relu", name="fc")(L.Flatten(name="flat")(pooled))
    out = L.Dense(4, name="out")(L.Dropout(0.1, name="drop")(h))
    return k.Model(x, out, name="bookkeeping")


def _randomise(model, rng) -> None:
    for layer in model.layers:
        weights = [rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()]
        if type(layer).__name__ == "BatchNormalization":
            weights[2] = rng.normal(0, 0.3, weights[2].shape).astype(np.float32)  # mean
            weights[3] = rng.uniform(0.5, 2.0, weights[3].shape).astype(np.float32)  # variance
        if weights:
            layer.set_weights(weights)


def _kill(model, graph, dead_labels: set[int]) -> None:
    """Make every position carrying a dead label emit exactly 0: producers' filters and
    biases, depthwise biases, and BatchNormalization shifts (beta = gamma mean / sqrt(var+eps))."""
    for layer in model.layers:
        labels = graph.outputs.get(layer.name, [])
        dead = np.array([label in dead_labels for label in labels], dtype=bool)
        if not dead.any() or not layer.weights:
            continue
        kind, weights = type(layer).__name__, layer.get_weights()
        if kind == "BatchNormalization":
            gamma, beta, mean, var = weights
            beta[dead] = (gamma * mean / np.sqrt(var + layer.epsilon))[dead]
        elif kind == "DepthwiseConv2D":
            weights[1][dead] = 0
        else:
            weights[-2 if kind != "SeparableConv2D" else 1][..., dead] = 0
            weights[-1][dead] = 0
        layer.set_weights(weights)


def _group_of(graph, layer: str):
    return next(g for g in graph.groups if layer in g.members)


def test_graph_groups_coupled_channels() -> None:
    from tfedge.passes.channel_graph import ChannelGraph

    graph = ChannelGraph(bookkeeping_model())
    stem = _group_of(graph, "a")
    assert set(stem.members) == {"a", "b"} and stem.size == 16 and stem.prunable
    # the Concatenate's inputs are tied to 'e' through add2, by offset
    tied = _group_of(graph, "e")
    assert set(tied.members) == {"c", "d", "e"} and tied.size == 20 and tied.prunable
    assert tied.members["e"] == tied.members["c"] + tied.members["d"]
    assert _group_of(graph, "sep").prunable and _group_of(graph, "fc").prunable
    out = _group_of(graph, "out")
    assert not out.prunable and "'out' is a model output" in out.reasons
    assert len(graph.groups) == 5


def test_graph_leaves_unknown_layers_whole() -> None:
    from tfedge.passes.channel_graph import ChannelGraph

    k = _keras()
    L = k.layers
    x = L.Input((8, 8, 3))
    a = L.Conv2D(8, 1, name="a")(x)
    b = L.Conv2D(8, 1, name="b")(x)
    odd = L.Lambda(lambda t: t * 2.0, name="odd")(a)
    moved = L.Reshape((8, 64), name="moved")(b)  # the channel axis goes
    y = L.Dense(3, name="y")(L.Flatten()(L.Concatenate()([L.Flatten()(odd), L.Flatten()(moved)])))
    graph = ChannelGraph(k.Model(x, y))
    assert not _group_of(graph, "a").prunable
    assert any("'odd' is a Lambda" in r for r in _group_of(graph, "a").reasons)
    assert any("'moved' moves the channel axis" in r for r in _group_of(graph, "b").reasons)


def test_removing_dead_channels_keeps_outputs(seed) -> None:
    """The index bookkeeping test: channels made exactly dead, then removed, change nothing."""
    from tfedge.passes.channel_graph import ChannelGraph
    from tfedge.passes.channels import prune_channels

    rng = np.random.default_rng(seed)
    model = bookkeeping_model()
    _randomise(model, rng)
    graph = ChannelGraph(model)
    removed = {"a": 5, "e": 7, "sep": 3, "fc": 4}  # channels removed per group
    keep, dead = {}, set()
    for layer, count in removed.items():
        group = _group_of(graph, layer)
        gone = set(rng.choice(group.size, count, replace=False).tolist())
        keep[group.id] = sorted(set(range(group.size)) - gone)
        for name, channels in group.members.items():
            dead |= {graph.producers[name][i] for i, c in enumerate(channels) if c in gone}
    _kill(model, graph, dead)
    x = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    before = model(x, training=False).numpy()
    weights_before = [w.copy() for w in model.get_weights()]

    thinner = prune_channels(model, keep, graph)

    after = thinner(x, training=False).numpy()
    assert after.shape == before.shape == (6, 4)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    assert np.abs(before).max() > 0.1  # not trivially zero
    assert all(
        np.array_equal(a, b) for a, b in zip(model.get_weights(), weights_before, strict=True)
    )
    tied = _group_of(graph, "e")
    gone_c = sum(1 for c in tied.members["c"] if c not in keep[tied.id])
    expected = bookkeeping_model(
        stem=16 - 5, branch=8 - gone_c, side=12 - (7 - gone_c), sep=8 - 3, head=10 - 4
    )
    assert thinner.count_params() == expected.count_params() < model.count_params()
    for small, ref in zip(thinner.layers, expected.layers, strict=True):
        assert [w.shape for w in small.weights] == [w.shape for w in ref.weights], small.name


def test_removal_changes_outputs_when_channels_are_alive(seed) -> None:
    """The check above can fail: removing live channels changes the outputs."""
    from tfedge.passes.channel_graph import ChannelGraph
    from tfedge.passes.channels import prune_channels

    rng = np.random.default_rng(seed)
    model = bookkeeping_model()
    _randomise(model, rng)
    graph = ChannelGraph(model)
    group = _group_of(graph, "sep")
    x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    thinner = prune_channels(model, {group.id: [0, 1, 2, 3]}, graph)
    assert not np.allclose(thinner(x).numpy(), model(x).numpy(), atol=1e-4)


def test_bad_plans_are_refused() -> None:
    from tfedge.errors import RecipeError
    from tfedge.passes.channel_graph import ChannelGraph
    from tfedge.passes.channels import kept_count, prune_channels

    model = bookkeeping_model()
    graph = ChannelGraph(model)
    out = _group_of(graph, "out")
    with pytest.raises(RecipeError, match="cannot be pruned"):
        prune_channels(model, {out.id: [0, 1]}, graph)
    with pytest.raises(RecipeError, match="must keep 1 to"):
        prune_channels(model, {_group_of(graph, "sep").id: []}, graph)
    with pytest.raises(RecipeError, match="no channel group"):
        prune_channels(model, {99: [0]}, graph)
    with pytest.raises(RecipeError, match="outside"):
        kept_count(16, 1.5)
    assert kept_count(96, 0.5) == 48 and kept_count(16, 0.3) == 8 and kept_count(20, 0.5) == 16
    assert kept_count(4, 0.5) == 4


def test_channels_pass_in_a_recipe_thins_digits_and_converts_to_int8(digits, tmp_path):
    """`channels -> int8` through `tfedge.optimize`: fewer MACs in the verified int8 file."""
    import json

    import yaml

    import tfedge
    from tfedge.analyze.inspect import inspect_tflite

    recipe = tmp_path / "channels.yaml"
    passes = [{"channels": {"keep": 0.5, "round_to": 4, "minimum": 4, "epochs": 1}}]
    recipe.write_text(yaml.safe_dump({"schema_version": 1, "passes": passes, "seed": 0}))
    out = tmp_path / "out"
    result = tfedge.optimize(digits.model, recipe, digits.train, digits.test, out, target="local")
    report = json.loads((out / "report.json").read_text())
    stage = report["stages"][-1]
    assert stage["name"] == "channels"
    metrics = stage["metrics"]
    assert metrics["groups_pruned"] >= 2 and metrics["macs_after"] < 0.6 * metrics["macs_before"]
    assert metrics["params_after"] < metrics["params_before"]
    float_int8 = inspect_tflite(out / "stages" / "01-int8.tflite")  # the unpruned int8
    final = inspect_tflite(result.model)
    assert final.full_integer and final.macs < 0.6 * float_int8.macs
    assert final.outputs[0].shape == float_int8.outputs[0].shape
    # per group, read from both .tflite files and timed on the target (--target local)
    costs = metrics["costs"]
    assert costs["before_stage"] == "int8" and costs["target"] == "local"
    assert costs["total_us_before"] > 0 and costs["total_us_after"] > 0
    pruned = [
        cost
        for group, cost in zip(metrics["groups"], costs["groups"])
        if group["channels_after"] < group["channels_before"]
    ]
    assert len(pruned) == metrics["groups_pruned"]
    for cost in pruned:
        assert 0 < cost["params_after"] < cost["params_before"]
        assert 0 < cost["macs_after"] < cost["macs_before"]
    assert sum(c["macs_before"] for c in costs["groups"]) <= float_int8.macs
    assert sum(c["latency_us_before"] for c in costs["groups"]) > 0
    text = (out / "report.md").read_text()
    assert "Time on local, one thread" in text and "| MACs before | after |" in text
    assert all(s["metrics"]["bench"]["p50_us"] > 0 for s in report["stages"])  # every stage
    assert "p50 latency on local" in text and (out / "report.html").is_file()


def test_channels_pass_refuses_bad_options_and_unprunable_models():
    from tfedge.errors import RecipeError
    from tfedge.passes import PassContext, build_pass

    with pytest.raises(RecipeError, match=r"keep = 1.5 is out of range"):
        build_pass("channels", {"keep": 1.5})
    k = _keras()
    inp = k.Input((4,))
    model = k.Model(inp, k.layers.Dense(3, name="only")(inp))  # its units are the output
    ctx = PassContext(x=np.zeros((4, 4), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(RecipeError, match="no channel of the model can be removed") as err:
        build_pass("channels", {}).apply(model, ctx)
    assert "output" in err.value.hint


# -- sensitivity, targets, criteria ------------------------------------------------------------
def _dead_half(graph, model, layer: str, rng) -> tuple[object, list[int]]:
    """Make half of ``layer``'s group exactly dead; returns the group and its live channels."""
    group = _group_of(graph, layer)
    gone = set(rng.choice(group.size, group.size // 2, replace=False).tolist())
    dead = {
        graph.producers[name][i]
        for name, channels in group.members.items()
        for i, c in enumerate(channels)
        if c in gone
    }
    _kill(model, graph, dead)
    return group, sorted(set(range(group.size)) - gone)


def test_sensitivity_of_dead_channels_is_zero_and_of_live_ones_is_not(seed) -> None:
    from tfedge.passes.channel_graph import ChannelGraph
    from tfedge.passes.channel_sensitivity import channel_sensitivity
    from tfedge.passes.channels import MacCounter, keras_macs, prune_channels

    rng = np.random.default_rng(seed)
    model = bookkeeping_model()
    _randomise(model, rng)
    graph = ChannelGraph(model)
    group, alive = _dead_half(graph, model, "a", rng)  # the stem, tied through add1
    x = rng.normal(size=(48, 8, 8, 3)).astype(np.float32)
    y = model.predict(x, verbose=0) + rng.normal(0, 0.1, (48, 4)).astype(np.float32)

    table = channel_sensitivity(model, graph, x, y, ratios=(0.5, 0.25), round_to=1, minimum=1)

    assert [s.group for s in table] == [g.id for g in graph.groups if g.prunable]
    stem = next(s for s in table if s.group == group.id)
    assert stem.metric == "mse" and stem.baseline > 0 and stem.criterion == "l1"
    half, quarter = stem.rows
    assert half.channels == 8 and abs(half.drop) < 1e-3  # only the dead channels went
    assert quarter.channels == 4 and quarter.drop > 1.0  # live ones went too
    thinner = prune_channels(model, {group.id: alive}, graph)
    assert half.macs == keras_macs(thinner) < keras_macs(model)
    every = {g.id: list(range(0, g.size, 2)) for g in graph.groups if g.prunable}
    counted = MacCounter(model, graph).macs(every)  # every group at once, without building
    assert counted == keras_macs(prune_channels(model, every, graph)) < half.macs
    assert 0 < stem.macs_share <= 1 and quarter.macs_fraction < half.macs_fraction < 1
    assert stem.to_json()["rows"][0]["channels"] == 8


def _labelled(model, rng, n=160):
    """Random inputs labelled by the model itself (every class the model predicts)."""
    x = rng.normal(size=(n, 8, 8, 3)).astype(np.float32)
    return x, model.predict(x, verbose=0).argmax(1).astype(np.int64)


def test_target_macs_spreads_the_cut_by_sensitivity_and_lands_on_the_target(seed) -> None:
    from tfedge.passes import PassContext, build_pass
    from tfedge.passes.channels import keras_macs

    rng = np.random.default_rng(seed)
    model = bookkeeping_model(stem=32, branch=16, side=24, sep=16, head=16)
    _randomise(model, rng)
    x, y = _labelled(model, rng)
    weights = [w.copy() for w in model.get_weights()]
    options = {"target_macs": 0.5, "round_to": 2, "minimum": 2, "epochs": 0}
    options["criterion"] = "taylor"
    result = build_pass("channels", options).apply(model, PassContext(x=x, y=y))

    reached = keras_macs(result.model) / keras_macs(model)
    assert abs(reached - 0.5) <= 0.05 * 0.5, reached
    metrics = result.metrics
    assert metrics["target_macs"] == 0.5 and metrics["macs_fraction"] == round(reached, 4)
    assert len(metrics["sensitivity"]) == 4  # every prunable group analysed
    assert metrics["criterion"] == "taylor" and metrics["sensitivity"][0]["criterion"] == "taylor"
    keeps = [g["keep"] for g in metrics["groups"] if "left_whole" not in g]
    assert len(set(keeps)) > 1  # not one ratio everywhere
    assert result.model.output_shape == model.output_shape
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights, strict=True))


def test_bn_criterion_keeps_the_channels_with_the_largest_gamma() -> None:
    from tfedge.passes.channel_graph import ChannelGraph
    from tfedge.passes.channels import criterion_used, plan_keep

    model = bookkeeping_model()
    graph = ChannelGraph(model)
    stem = _group_of(graph, "a")
    gammas = {"a_bn": np.linspace(0.1, 1.6, 16), "b_bn": np.zeros(16)}
    gammas["b_bn"][[0, 1]] = 5.0  # the shared channels 0 and 1 matter through b's BN
    for name, gamma in gammas.items():
        layer = model.get_layer(name)
        weights = layer.get_weights()
        weights[0] = -gamma.astype(np.float32)  # |gamma| counts, not its sign
        layer.set_weights(weights)
    for name in ("a", "b"):  # filter norms ranked the other way round
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * 0 + np.linspace(2, 1, 16, dtype=np.float32), bias])

    plan = plan_keep(model, graph, 0.5, round_to=1, minimum=1, criterion="bn")

    assert plan[stem.id] == [0, 1, 10, 11, 12, 13, 14, 15]
    assert plan_keep(model, graph, 0.5, round_to=1, minimum=1)[stem.id] == list(range(8))
    assert criterion_used(model, graph, stem, "bn") == "bn"
    assert criterion_used(model, graph, _group_of(graph, "sep"), "bn") == "l1"  # no BN after


def test_taylor_criterion_ranks_channels_by_their_effect_on_the_loss(seed) -> None:
    """Channels with large filters that nothing downstream reads score 0 by taylor, yet the
    most by l1."""
    from tfedge.passes.channel_graph import ChannelGraph
    from tfedge.passes.channels import plan_counts, taylor_scores

    k = _keras()
    inp = k.Input((6,))
    model = k.Model(inp, k.layers.Dense(3, name="out")(k.layers.Dense(8, name="h")(inp)))
    rng = np.random.default_rng(seed)
    hidden = rng.normal(0, 1, (6, 8)).astype(np.float32)
    hidden[:, :4] *= 10  # the large filters ...
    head = rng.normal(0, 1, (8, 3)).astype(np.float32)
    head[:4] = 0  # ... feed nothing
    model.get_layer("h").set_weights([hidden, np.zeros(8, np.float32)])
    model.get_layer("out").set_weights([head, np.zeros(3, np.float32)])
    graph = ChannelGraph(model)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)

    scores = taylor_scores(model, graph, x, y, samples=40, batch_size=16)

    group = _group_of(graph, "h")
    assert np.all(scores[group.id][:4] == 0) and np.all(scores[group.id][4:] > 0)
    assert plan_counts(model, graph, {group.id: 4}, scores)[group.id] == [4, 5, 6, 7]
    assert plan_counts(model, graph, {group.id: 4}, "l1")[group.id] == [0, 1, 2, 3]


def test_channels_pass_refuses_bad_targets_and_ratios(seed) -> None:
    from tfedge.errors import RecipeError
    from tfedge.passes import PassContext, build_pass

    cases = [
        ({"keep": 0.5, "target_macs": 0.5}, "keep and target_macs exclude each other"),
        ({"ratios": {"fc": 1.5}}, r"ratios.fc = 1.5 is out of range"),
        ({"ratios": {"fc": 0}}, r"ratios.fc = 0 is out of range"),
        ({"target_macs": 0}, r"target_macs = 0 is out of range"),
        ({"distill": True, "epochs": 0}, "distill needs training"),
    ]
    for options, message in cases:
        with pytest.raises(RecipeError, match=message) as err:
            build_pass("channels", options)
        assert err.value.hint, options
    model = bookkeeping_model()
    x = np.zeros((4, 8, 8, 3), np.float32)
    ctx = PassContext(x=x, y=np.zeros(4, np.int64))
    checks = [
        ({"ratios": {"fcc": 0.5}}, "ratios names no layer 'fcc'", "did you mean 'fc'"),
        ({"ratios": {"a_bn": 0.5}}, "'a_bn' is a BatchNormalization", "DepthwiseConv2D"),
        ({"ratios": {"out": 0.5}}, "the channels of 'out' cannot be removed", "model output"),
        ({"ratios": {"a": 0.5, "b": 0.25}}, "'a' and 'b' share their channels", "same ratio"),
        ({"target_macs": 0.01}, "target_macs 0.01 cannot be reached", "raise target_macs to"),
    ]
    for options, message, hint in checks:
        with pytest.raises(RecipeError, match=message) as err:
            build_pass("channels", options).check(model, ctx)
        assert hint in err.value.hint, (options, err.value.hint)
    regression = PassContext(x=x, y=np.zeros((4, 4), np.float32))
    with pytest.raises(RecipeError, match="distill needs class labels"):
        build_pass("channels", {"distill": True}).check(model, regression)


def test_iterative_distilled_ratios_meet_the_target_and_keep_the_override(seed) -> None:
    """steps: 2 with distill and bn: two removals, each fine-tuned against the unpruned model;
    the layer given in ratios keeps its share, the others make up the MACs."""
    from tfedge.passes import PassContext, build_pass
    from tfedge.passes.base import TrainConfig
    from tfedge.passes.channels import keras_macs

    rng = np.random.default_rng(seed)
    model = bookkeeping_model(stem=32, branch=16, side=24, sep=16, head=16)
    _randomise(model, rng)
    x, y = _labelled(model, rng, 96)
    options = {
        "target_macs": 0.5,
        "ratios": {"fc": 0.25},
        "round_to": 2,
        "minimum": 2,
        "criterion": "bn",
        "epochs": 1,
        "distill": True,
        "steps": 2,
    }
    ctx = PassContext(x=x, y=y, seed=seed, train=TrainConfig(validation_split=0))
    result = build_pass("channels", options).apply(model, ctx)

    reached = keras_macs(result.model) / keras_macs(model)
    assert abs(reached - 0.5) <= 0.05 * 0.5, reached
    fc = next(g for g in result.metrics["groups"] if g["layers"] == ["fc"])
    assert fc["channels_after"] == 4 and result.model.get_layer("fc").units == 4
    assert result.metrics["steps"] == 2 and result.metrics["distilled"]
    assert result.metrics["criterion"] == "bn"
    sep = next(g for g in result.metrics["groups"] if g["layers"] == ["sep"])
    assert sep["criterion"] == "l1"  # no BatchNormalization after it
    assert np.isfinite(result.model.predict(x[:4], verbose=0)).all()


def test_dry_run_plans_target_macs_and_ratios(seed) -> None:
    """Without data the counts of target_macs wait for the run; with data they are the
    sensitivity's, and the planned model meets the target; ratios are planned either way."""
    from tfedge.optimize.plan import _plan_channels
    from tfedge.passes import PassContext, build_pass
    from tfedge.passes.channels import keras_macs

    rng = np.random.default_rng(seed)
    model = bookkeeping_model(stem=32, branch=16, side=24, sep=16, head=16)
    _randomise(model, rng)
    options = {"target_macs": 0.5, "ratios": {"fc": 0.25}, "round_to": 2, "minimum": 2}
    p = build_pass("channels", options)
    empty = PassContext(x=np.zeros((0, 8, 8, 3), np.float32), y=np.zeros(0, np.int64))
    plan, planned = _plan_channels(p, model, empty, ())
    reasons = {note.layer: note.reason for note in plan.touch}
    assert reasons["fc"] == "16 -> 4 channels"
    assert reasons["sep"] == "16 channels: count chosen at run time"
    assert "at run time by sensitivity" in plan.notes[0] and "about" in plan.notes[0]
    taylor = build_pass("channels", {"criterion": "taylor", "round_to": 2, "minimum": 2})
    plan, planned = _plan_channels(taylor, model, empty, ())
    assert "taylor ranks the channels on the data at run time (shown: l1)" in plan.notes
    assert planned.get_layer("sep").filters == 8

    x, y = _labelled(model, rng, 64)
    plan, planned = _plan_channels(p, model, PassContext(x=x, y=y), ())
    assert any("chosen by sensitivity on the data" in note for note in plan.notes)
    assert abs(keras_macs(planned) / keras_macs(model) - 0.5) <= 0.025
    assert planned.get_layer("fc").units == 4


def test_optimize_refuses_an_unknown_target(run_cli, digits, tmp_path):
    """``--target`` is checked before any data is read or any stage trains."""
    recipe = tmp_path / "channels.yaml"
    recipe.write_text("schema_version: 1\npasses:\n  - channels: {keep: 0.5}\n")
    result = run_cli(
        "optimize", digits.model, "-r", recipe, "--data", digits.train, "--eval", digits.test,
        "-o", tmp_path / "out", "--target", "pi4", expect=2,
    )  # fmt: skip
    assert_one_error_line(result, "unknown target 'pi4'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["channels.yaml"]
