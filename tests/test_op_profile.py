"""``tfedge bench --op-profile``: prefix models built on the host, timed by the real device
script with the real LiteRT interpreter, differences aggregated per Keras layer or per op."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_one_error_line
from tfedge.analyze.op_profile import aggregate, op_profile, plan_groups, write_prefixes
from tfedge.convert.tflite_model import read_tflite
from tfedge.errors import BenchError

FAST = dict(runs=10, min_secs=0.02, threads=1)
KWS_LAYERS = ["conv0"] + [f"{kind}{i}" for i in range(1, 5) for kind in ("dw", "pw")] + ["gap"]


@pytest.fixture(scope="module")
def kws_files(tmp_path_factory) -> dict[str, Path]:
    """The kws reference's DS-CNN (depthwise blocks, fused BatchNorm, a mean), untrained,
    full-int8 from random calibration: the op mix of a real keyword spotter in seconds;
    and its Keras file."""
    import tensorflow as tf

    from tests.harness_helpers import convert_int8
    from tfedge.zoo.reference import kws_model

    tf.random.set_seed(0)
    calib = np.random.default_rng(0).normal(size=(16, 49, 10, 1)).astype(np.float32)
    out = tmp_path_factory.mktemp("kws")
    model = kws_model()
    model.save(out / "kws.h5")
    (out / "kws_int8.tflite").write_bytes(convert_int8(tf, model, calib))
    return {"int8": out / "kws_int8.tflite", "keras": out / "kws.h5"}


@pytest.fixture(scope="module")
def kws_int8(kws_files) -> Path:
    return kws_files["int8"]


def _interpreter(path: Path, **kwargs):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1, **kwargs)
    interp.allocate_tensors()
    return interp


def _run(interp, x: np.ndarray):
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp


@pytest.mark.tf
@pytest.mark.parametrize("model", ["kws", "digits_float"])
def test_every_prefix_outputs_the_full_models_tensor_bit_exactly(
    model, kws_int8, harness_models, tmp_path
):
    path = kws_int8 if model == "kws" else harness_models["float"]
    tflite = read_tflite(path)
    groups = plan_groups(tflite, per_op=True)
    prefixes = write_prefixes(path, groups, tmp_path)  # each re-read by the checked reader
    assert len(prefixes) == len(tflite.ops)
    detail = _interpreter(path).get_input_details()[0]
    rng = np.random.default_rng(0)
    if detail["dtype"] == np.int8:
        x = rng.integers(-128, 128, size=detail["shape"]).astype(np.int8)
    else:
        x = rng.random(detail["shape"], dtype=np.float32)
    full = _run(_interpreter(path, experimental_preserve_all_tensors=True), x)
    for op, prefix in zip(tflite.ops, prefixes):
        out = _run(_interpreter(prefix), x)
        (detail,) = out.get_output_details()
        assert detail["index"] == op.outputs[0].index
        assert np.array_equal(out.get_tensor(detail["index"]), full.get_tensor(detail["index"]))
    last = _run(_interpreter(prefixes[-1]), x)
    whole = full.get_output_details()[0]["index"]
    assert np.array_equal(last.get_tensor(whole), full.get_tensor(whole))
    # The first prefix keeps only the weights its op reads.
    assert prefixes[0].stat().st_size < path.stat().st_size * 0.75


@pytest.mark.tf
def test_layers_group_consecutive_ops_and_cover_every_op_once(kws_int8):
    groups = plan_groups(read_tflite(kws_int8))
    assert [g.name for g in groups][:-1] == KWS_LAYERS
    assert groups[-1].name.startswith("FULLY_CONNECTED ")  # the output names no layer
    assert [i for g in groups for i in g.ops] == list(range(len(read_tflite(kws_int8).ops)))
    per_op = plan_groups(read_tflite(kws_int8), per_op=True)
    assert per_op[1].name == "DEPTHWISE_CONV_2D dw1"


@pytest.mark.tf
def test_op_profile_on_the_local_cpu_accounts_for_every_op(kws_int8):
    profile = op_profile(kws_int8, target="local", rounds=5, **FAST)
    ops = len(read_tflite(kws_int8).ops)
    assert sorted(i for row in profile.rows for i in row.ops) == list(range(ops))
    assert {row.name for row in profile.rows} >= set(KWS_LAYERS)
    assert profile.rounds == 5 and profile.total_us > 0
    # One interpreter thread: each prefix's fastest run in the invoking thread's CPU time.
    assert profile.statistic == "cpu_min_us"
    sweep = profile.bench.sweep
    assert {"p50_us", "min_us", "cpu_min_us"} <= set(sweep) and sweep["rounds"] == 5
    assert all(len(r) == len(profile.rows) + 1 for r in sweep["cpu_min_us"])
    # The groups' times add up to the whole model's, within the noise of a shared machine.
    assert 0.5 < profile.sum_ratio < 2.0
    assert sum(row.share for row in profile.rows) == pytest.approx(profile.sum_ratio)
    p50s = [row.p50_us for row in profile.sorted_rows()]
    assert p50s == sorted(p50s, reverse=True)
    assert all(row.min_us <= row.p50_us <= row.max_us for row in profile.rows)
    data = profile.to_dict()
    assert data["target"] == "local" and data["runtime"]["name"]
    assert len(data["rows"]) == len(profile.rows)


@pytest.mark.tf
@pytest.mark.parametrize("keep_bytes", [0, 1 << 30])
def test_device_sweep_loads_big_alternates_one_at_a_time(
    harness_models, tmp_path, monkeypatch, keep_bytes
):
    from tfedge_device import bench as device_bench

    model = harness_models["int8"]
    prefixes = write_prefixes(model, plan_groups(read_tflite(model)), tmp_path)
    monkeypatch.setattr(device_bench, "KEEP_ALTERNATES_BYTES", keep_bytes)
    report = device_bench.benchmark(
        str(model), 1, runs=2, min_secs=0, alternates=[str(p) for p in prefixes], rounds=2
    )
    sweep = report["sweep"]
    assert sweep["rounds"] == 2
    for key in ("p50_us", "min_us", "cpu_min_us"):
        assert [len(r) for r in sweep[key]] == [len(prefixes) + 1] * 2
        assert all(v > 0 for r in sweep[key] for v in r)


@pytest.mark.tf
def test_cli_op_profile_table_and_json(run_cli, harness_models):
    model = harness_models["int8"]
    ops = len(read_tflite(model).ops)
    fast = ("--rounds", "3", "--runs", "24", "--min-secs", "0.06", "--threads", "1")
    text = run_cli("bench", model, "--op-profile", *fast).stdout
    assert "LAYER" in text and "SHARE" in text
    assert "of the whole model" in text and "noise" in text
    data = json.loads(run_cli("bench", model, "--op-profile", "ops", "--json", *fast).stdout)
    assert data["mode"] == "ops" and data["rounds"] == 3
    assert sorted(i for row in data["rows"] for i in row["ops"]) == list(range(ops))
    assert 0.3 < data["sum_ratio"] < 3.0


@pytest.mark.tf
def test_cli_op_profile_names_ops_after_the_keras_models_layers(run_cli, kws_files):
    fast = ("--rounds", "1", "--runs", "2", "--min-secs", "0", "--threads", "1", "--json")
    guessed = json.loads(run_cli("bench", kws_files["int8"], "--op-profile", *fast).stdout)
    named = json.loads(
        run_cli(
            "bench", kws_files["int8"], "--op-profile", "--keras", kws_files["keras"], *fast
        ).stdout
    )
    assert "logits" not in {row["name"] for row in guessed["rows"]}
    assert {row["name"] for row in named["rows"]} == set(KWS_LAYERS) | {"logits"}


@pytest.mark.slow
def test_op_profile_under_qemu(emulator_env, harness_models):
    profile = op_profile(harness_models["int8"], target="qemu", rounds=2, runs=3, min_secs=0)
    assert profile.bench.emulated and profile.bench.arch == "aarch64"
    assert profile.bench.runtime["version"] == emulator_env.runtime_version
    ops = len(read_tflite(harness_models["int8"]).ops)
    assert sorted(i for row in profile.rows for i in row.ops) == list(range(ops))
    assert profile.total_us > 0 and np.isfinite(profile.sum_ratio)  # emulated: no ratio


@pytest.mark.slow
def test_op_profile_over_ssh_ships_the_prefixes(sshd, harness_models, tmp_path, ssh_home):
    workdir = tmp_path / "device-workdir"
    profile = op_profile(
        harness_models["int8"],
        target=sshd.url(str(workdir)),
        rounds=2,
        runs=2,
        min_secs=0,
        python=sys.executable,
        key=str(sshd.user_key),
        known_hosts=str(sshd.known_hosts),
    )
    assert not profile.bench.emulated and profile.bench.target.startswith("ssh://")
    ops = len(read_tflite(harness_models["int8"]).ops)
    assert sorted(i for row in profile.rows for i in row.ops) == list(range(ops))
    shipped = [p.name for p in workdir.iterdir() if "-prefix-" in p.name]
    assert len(shipped) == len(profile.rows)


def test_aggregate_takes_per_round_differences():
    from tfedge.analyze.op_profile import OpGroup, ProfileRow

    groups = [OpGroup("a", (0,), ("CONV_2D",)), OpGroup("b", (1, 2), ("ADD", "RELU"))]
    sweep = {
        "min_us": [[100.0, 30.0, 90.0], [110.0, 40.0, 100.0], [100.0, 20.0, 100.0]],
        "p50_us": [[200.0, 30.0, 90.0]] * 3,
    }
    profile = aggregate("m.tflite", groups, sweep)  # the rounds' fastest runs by default
    a, b = profile.rows
    assert (a.p50_us, a.min_us, a.max_us, a.noise_us) == (30.0, 20.0, 40.0, 10.0)
    assert (b.p50_us, b.min_us, b.max_us, b.noise_us) == (60.0, 60.0, 80.0, 0.0)
    assert a.resolved and b.resolved
    assert not ProfileRow("c", (3,), ("ADD",), (1.0, 5.0, -3.0), 0.0).resolved  # 1 ± 4
    assert profile.total_us == 100.0 and profile.sum_ratio == pytest.approx(0.9)
    assert [r.name for r in profile.sorted_rows()] == ["b", "a"]
    assert aggregate("m.tflite", groups, sweep, statistic="p50_us").total_us == 200.0
    with pytest.raises(BenchError, match="expected 3"):
        aggregate("m.tflite", groups, {"min_us": [[100.0, 30.0]]})


def test_op_profile_of_a_file_that_is_no_model_is_one_error(run_cli, tmp_path):
    bad = tmp_path / "notes.tflite"
    bad.write_bytes(b"this is not a flatbuffer" * 10)
    before = sorted(tmp_path.iterdir())
    result = run_cli("bench", bad, "--op-profile", expect=1)
    assert_one_error_line(result, "not a tflite model")
    assert sorted(tmp_path.iterdir()) == before
    assert bad.read_bytes() == b"this is not a flatbuffer" * 10


def test_op_profile_options_alone_and_a_keras_file_without_layers(run_cli, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\0\0\0\0TFL3" + b"\0" * 32)
    notes = tmp_path / "notes.h5"
    notes.write_text("not a Keras file")
    assert_one_error_line(run_cli("bench", model, "--rounds", "3", expect=2), "--op-profile")
    result = run_cli("bench", model, "--keras", notes, expect=2)
    assert_one_error_line(result, "--keras", "--op-profile")
    result = run_cli("bench", model, "--op-profile", "--keras", notes, expect=1)
    assert_one_error_line(result, "notes.h5", "no Keras layer names")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "notes.h5"]


@pytest.mark.parametrize("option", ["--inventory", "--compare"])
def test_op_profile_with_inventory_or_compare_is_a_usage_error(run_cli, tmp_path, option):
    other = tmp_path / "other.yaml"
    other.write_text("devices: [{target: local}]\n")
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\0\0\0\0TFL3" + b"\0" * 32)
    result = run_cli("bench", model, "--op-profile", option, other, expect=2)
    assert_one_error_line(result, "--op-profile", option)
