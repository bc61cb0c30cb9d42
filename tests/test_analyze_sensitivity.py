"""``tfedge analyze sensitivity`` (``tfedge.analyze.sensitivity``): each channel group and each
Dense / 1x1 conv cut alone, scored without fine-tuning; the cache, the outputs, bad input."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from tests.conftest import assert_one_error_line

pytestmark = pytest.mark.tf

RANK = 4  # the true rank of fc's kernel (16 x 32)
ROBUST = dict(round_to=4, minimum=4)


def _keras():
    from tfedge._tf import import_keras

    return import_keras()


def _tiny_model(k):
    """c1 (3x3) -> c2 (1x1) -> pool -> fc (Dense) -> out: three prunable groups (c1, c2, fc),
    two factorisable layers (c2, fc). c1's channels 8..15 are dead (zero filters and bias, so
    l1 removes them first); fc's kernel has rank ``RANK``."""
    L = k.layers
    rng = np.random.default_rng(0)
    k.utils.set_random_seed(0)  # the layers' initial weights
    image = L.Input((8, 8, 3), name="image")
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="c1")(image)
    h = L.Conv2D(16, 1, activation="relu", name="c2")(h)
    h = L.Dense(32, activation="relu", name="fc")(L.GlobalAveragePooling2D(name="gap")(h))
    model = k.Model(image, L.Dense(4, name="out")(h), name="tiny")
    model.get_layer("c1").set_weights(_dead_half(model.get_layer("c1").get_weights()))
    kernel = rng.normal(size=(16, RANK)) @ rng.normal(size=(RANK, 32)) * 0.3
    model.get_layer("fc").set_weights([kernel.astype(np.float32), np.zeros(32, np.float32)])
    return model


def _dead_half(weights: list) -> list:
    kernel, bias = weights
    kernel[..., 8:] = 0
    bias[8:] = 0
    return [kernel, bias]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The model (.keras) and data labelled by the model itself (baseline accuracy 100)."""
    k = _keras()
    root = tmp_path_factory.mktemp("sensitivity")
    model = _tiny_model(k)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 8, 8, 3)).astype(np.float32)
    head = model.get_layer("out")  # centre the logits, so that every class is predicted
    head.set_weights([head.get_weights()[0], -model.predict(x, verbose=0).mean(0)])
    out = model.predict(x, verbose=0)
    model.save(root / "tiny.keras")
    np.savez(root / "train.npz", x=x, y=out.argmax(1).astype(np.int64))
    noisy = out + rng.normal(0, 0.1, out.shape)  # a baseline MSE of about 0.01
    np.savez(root / "targets.npz", x=x, y=noisy.astype(np.float32))
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tfedge" / "sensitivity"


def _curve(report, kind: str, name: str):
    return next(c for c in report.curves if c.kind == kind and c.name == name)


@pytest.fixture(scope="module")
def full(tiny):
    """The analysis of the tf_keras file at the default ratios (0.75, 0.5, 0.25), uncached."""
    from tfedge.analyze.sensitivity import analyze_sensitivity

    return analyze_sensitivity(
        tiny / "tiny.keras", tiny / "train.npz", tiny / "train.npz", cache=False, **ROBUST
    )


def test_each_group_and_layer_is_cut_alone_and_sorted_most_robust_first(full, cache):
    report = full
    assert report.metric == "accuracy" and report.baseline == 100.0 and report.samples == 96
    found = {(c.kind, c.name) for c in report.curves}
    assert found == {
        ("channels", "c1"),
        ("channels", "c2"),
        ("channels", "fc"),
        ("rank", "c2"),
        ("rank", "fc"),
    }
    assert [c.sensitivity for c in report.curves] == sorted(c.sensitivity for c in report.curves)
    fc = _curve(report, "rank", "fc")  # every rank tried is >= the kernel's true rank: exact
    assert [p.kept for p in fc.points] == [12, 8, 4] and all(p.drop == 0 for p in fc.points)
    assert report.curves[0] is fc
    c1 = _curve(report, "channels", "c1")  # keeping 12 or 8 removes only dead channels
    assert [p.kept for p in c1.points] == [12, 8, 4]
    assert c1.points[0].drop == c1.points[1].drop == 0 and c1.points[2].drop > 0
    assert c1.points[2].macs_fraction < c1.points[0].macs_fraction < 1
    assert report.left_whole == [{"layers": ["out"], "reasons": ["'out' is a model output"]}]
    assert not cache.exists()


def test_float_targets_are_scored_by_mse(tiny, cache):
    from tfedge.analyze.sensitivity import analyze_sensitivity

    report = analyze_sensitivity(
        tiny / "tiny.keras", tiny / "targets.npz", ratios=[0.5], cache=False, **ROBUST
    )
    assert report.metric == "mse" and report.drop_unit == "% more MSE"
    assert 0.005 < report.baseline < 0.02  # the targets: the model's outputs + noise (0.1)
    assert abs(_curve(report, "rank", "fc").points[0].drop) < 1e-3  # percent
    assert _curve(report, "channels", "fc").points[0].drop > 10


def test_taylor_ranks_channels_on_the_training_data(tiny, cache):
    """c1's dead channels have no activation, so taylor removes them first: no drop at 0.5."""
    from tfedge.analyze.sensitivity import analyze_sensitivity

    data = tiny / "train.npz"
    report = analyze_sensitivity(
        tiny / "tiny.keras", data, data, ratios=[0.5], criterion="taylor", cache=False, **ROBUST
    )
    assert report.options["criterion"] == "taylor"
    assert _curve(report, "channels", "c1").points[0].drop == 0
    assert _curve(report, "channels", "c2").points[0].drop > 0


def test_second_run_is_read_from_the_cache(tiny, cache):
    from tfedge.analyze.sensitivity import analyze_sensitivity

    args = (tiny / "tiny.keras", tiny / "train.npz")
    first = analyze_sensitivity(*args, ratios=[0.5], **ROBUST)
    assert not first.cached and len(list(cache.glob("*.json"))) == 1
    second = analyze_sensitivity(*args, ratios=[0.5], **ROBUST)
    assert second.cached
    assert {**second.to_dict(), "cached": False} == first.to_dict()
    other = analyze_sensitivity(*args, ratios=[0.25], **ROBUST)  # other options: computed
    assert not other.cached and len(list(cache.glob("*.json"))) == 2


def test_cli_prints_the_table_and_writes_json_and_svg(tiny, cache, tmp_path, run_cli):
    model, data = tiny / "tiny.keras", tiny / "train.npz"
    report, plot = tmp_path / "report.json", tmp_path / "plot.svg"
    args = ["analyze", "sensitivity", model, "--data", data, "--eval", data, "--round-to", "4"]
    args += ["--minimum", "4", "-o", report, "--plot", plot]
    result = run_cli(*args, "--json")
    printed = json.loads(result.stdout)
    assert json.loads(report.read_text()) == printed
    means = [c["sensitivity"] for c in printed["curves"]]
    assert means == sorted(means) and printed["curves"][0]["name"] == "fc"
    svg = ET.fromstring(plot.read_text())
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == len(printed["curves"]) == 5
    table = run_cli(*args[:-4]).stdout  # the same analysis, now from the cache
    assert "(cached)" in table and "most robust first" in table
    assert "left whole: out: 'out' is a model output" in table


def test_a_keras3_file_goes_through_the_bridge(tiny, full, cache, tmp_path):
    """The same model saved by Keras 3 gives the same scores as the tf_keras file."""
    from tfedge._tf import import_keras3
    from tfedge.analyze.sensitivity import analyze_sensitivity

    keras = import_keras3()
    model3 = _tiny_model(keras)
    model3.set_weights(_keras().models.load_model(tiny / "tiny.keras").get_weights())
    model3.save(tmp_path / "tiny3.keras")
    ours = analyze_sensitivity(
        tmp_path / "tiny3.keras", *[tiny / "train.npz"] * 2, ratios=[0.5], cache=False, **ROBUST
    )

    def at_half(report) -> set:
        return {
            (c.kind, c.name, p.kept, p.score)
            for c in report.curves
            for p in c.points
            if p.ratio == 0.5
        }

    assert ours.baseline == full.baseline == 100.0
    assert at_half(ours) == at_half(full)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("case", "code", "fragments"),
    [
        ("ratio", 2, ("ratio 1.5 is outside (0, 1)",)),
        ("words", 2, ("--ratios 'half' is not a list of numbers",)),
        ("shape", 1, ("samples have shape (5, 5, 3)", "expects (8, 8, 3)")),
        ("labels", 1, ("has no labels",)),
        ("nothing", 1, ("nothing in", "can be analysed")),
    ],
)
def test_bad_input_is_one_error_line(tiny, cache, tmp_path, run_cli, case, code, fragments):
    k = _keras()
    model, data, ratios = tiny / "tiny.keras", tiny / "train.npz", "0.5"
    if case in ("ratio", "words"):
        ratios = {"ratio": "0.5,1.5", "words": "half"}[case]
    elif case == "shape":
        data = tmp_path / "small.npz"
        np.savez(data, x=np.zeros((8, 5, 5, 3), np.float32), y=np.zeros(8, np.int64))
    elif case == "labels":
        data = tmp_path / "unlabelled.npz"
        np.savez(data, x=np.zeros((8, 8, 8, 3), np.float32))
    else:  # one Dense: its units are the model's output, and low_rank leaves the output alone
        inp = k.Input((4,))
        model = tmp_path / "one.keras"
        k.Model(inp, k.layers.Dense(3, name="only")(inp)).save(model)
        data = tmp_path / "vectors.npz"
        np.savez(data, x=np.zeros((8, 4), np.float32), y=np.zeros(8, np.int64))
    before = {p: _digest(p) for p in (model, data)}
    out = tmp_path / "out" / "report.json"
    out.parent.mkdir()
    args = ["analyze", "sensitivity", model, "--data", data, "--ratios", ratios, "-o", out]
    result = run_cli(*args, "--plot", tmp_path / "out" / "plot.svg", expect=code)
    assert_one_error_line(result, *fragments)
    assert "(hint: " in result.stderr
    assert list(out.parent.iterdir()) == [] and not cache.exists()
    assert before == {p: _digest(p) for p in (model, data)}
