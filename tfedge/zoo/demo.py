"""The end-to-end demo: reference model -> int8 TFLite -> evaluation, as one table.

Each stage is a function returning a row, so later stages (optimize, bench, push) slot in.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tfedge.analyze.evaluate import evaluate
from tfedge.convert.converter import convert
from tfedge.zoo.reference import build_reference


@dataclass
class DemoRow:
    model: str
    accuracy: float
    size_bytes: int
    gzip_bytes: int
    size_ratio: float
    full_integer: str


@dataclass
class BenchRow:
    target: str
    runtime: str
    float32_p50_us: float
    int8_p50_us: float
    speedup: float
    emulated: bool


@dataclass
class ShipResult:
    state: str
    serving: str | None
    model_version: int | None
    device_dir: str


@dataclass
class DemoResult:
    rows: list[DemoRow] = field(default_factory=list)
    bench: list[BenchRow] = field(default_factory=list)
    ship: ShipResult | None = None
    notes: list[str] = field(default_factory=list)


def run_demo(
    models_dir: str | os.PathLike, out_dir: str | os.PathLike, say: Callable[[str], None] = print
) -> DemoResult:
    """Run the demo and return its table; ``say`` reports each step as it starts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say("1. reference model: digits CNN on scikit-learn's handwritten digits (built if missing)")
    ref = build_reference("digits", models_dir)
    say("2. convert: float32 and verified full-integer int8 TFLite")
    f32 = convert(ref.model, out / "digits_float32.tflite", quant="none")
    i8 = convert(ref.model, out / "digits_int8.tflite", calib=ref.train)
    say("3. evaluate on the held-out split")
    keras_acc = _accuracy(ref.model, ref.test)
    rows = [
        DemoRow(
            "keras float32",
            keras_acc,
            os.path.getsize(ref.model),
            _gzip_size(ref.model),
            float("nan"),
            "-",
        ),
        _tflite_row("tflite float32", f32, ref.test, f32.size_bytes),
        _tflite_row("tflite int8", i8, ref.test, f32.size_bytes),
    ]
    say(
        "3b. Keras 3: the same network saved by Keras 3 converts through "
        "the verified tf_keras bridge"
    )
    rows.append(_keras3_row(ref, out, f32.size_bytes))
    say("4. compress: prune 75% -> 16 clusters -> PCQAT -> int8 (recipe prune-cluster-qat)")
    rows.append(_optimized_row(ref, out / "optimized", f32.size_bytes))
    say(
        "5. benchmark int8 against float32: local CPU, "
        "then emulated Raspberry Pi 4 (qemu, Cortex-A72)"
    )
    bench_rows = [
        _bench_row(i8.output, f32.output, target, profile) for target, profile in DEMO_TARGETS
    ]
    notes = [
        f"int8 accuracy drop: {100 * (keras_acc - rows[2].accuracy):.2f} points",
        "emulated timings are qemu's: relative comparisons only, never a device's latency",
    ]
    say(
        "6. ship: sign the compressed model into a TUF repository; "
        "a device agent pulls, smoke-tests and installs it"
    )
    shipped = ship_to_stand_in_device(str(out / "optimized" / "model.tflite"), out)
    return DemoResult(rows=rows, bench=bench_rows, ship=shipped, notes=notes)


def ship_to_stand_in_device(model: str, out: Path) -> ShipResult:
    """Publish ``model`` to a fresh signed repository on loopback; one agent poll installs it."""
    import shutil
    import threading

    from tfedge.ota.repository import init_repository, make_server, publish
    from tfedge_device.agent import AgentConfig, poll_once

    repo, device = out / "ota-repo", out / "device"
    for d in (repo, device):
        shutil.rmtree(d, ignore_errors=True)
    root_json = init_repository(repo).root_json
    assert root_json is not None  # a new repository always has its root metadata
    root = Path(root_json)
    publish(repo, model, "digits", 1)
    server = make_server(repo, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = "http://{}:{}".format(*server.server_address[:2])
        result = poll_once(AgentConfig(url, device, "digits", root), log=lambda m: None)
    finally:
        server.shutdown()
        server.server_close()
    return ShipResult(result.state, result.serving, result.model_version, str(device))


DEMO_TARGETS = (("local", "local"), ("qemu", "rpi4"))


def _bench_row(int8_path: str, float_path: str, target: str, profile: str) -> BenchRow:
    from tfedge.targets.bench import bench

    r = bench(int8_path, target=target, profile=profile, compare=float_path, runs=50, min_secs=0.3)
    assert r.compare is not None and r.speedup is not None  # both set by compare=
    return BenchRow(
        r.target,
        f"{r.runtime['name']} {r.runtime['version']}",
        r.compare.latency_us.p50,
        r.latency_us.p50,
        r.speedup,
        r.emulated,
    )


def _tflite_row(label: str, result, test_data: str, float_bytes: int) -> DemoRow:
    return DemoRow(
        label,
        _accuracy(result.output, test_data),
        result.size_bytes,
        _gzip_size(result.output),
        result.size_bytes / float_bytes,
        "yes" if result.full_integer else "no",
    )


def _accuracy(model, test_data) -> float:
    accuracy = evaluate(model, test_data).accuracy
    assert accuracy is not None  # the demo's models are digits classifiers
    return accuracy


def _keras3_row(ref, out: Path, float_bytes: int) -> DemoRow:
    """The digits network as a user's Keras 3 ``.keras`` file (same weights), converted to int8."""
    path = save_digits_as_keras3(ref.model, out / "digits_keras3.keras")
    result = convert(path, out / "digits_keras3_int8.tflite", calib=ref.train)
    return _tflite_row("keras 3 file -> int8", result, ref.test, float_bytes)


def save_digits_as_keras3(tf_keras_model: str, path: Path) -> Path:
    """Rebuild the digits network with Keras 3, copy the weights of ``tf_keras_model``, save it."""
    from tfedge._tf import import_keras3
    from tfedge.io.models import detect_format, load_keras_model
    from tfedge.zoo.reference import digits_model

    model = digits_model(keras=import_keras3())
    model.set_weights(load_keras_model(detect_format(tf_keras_model)).get_weights())
    model.save(path)
    return path


def _optimized_row(ref, out_dir: Path, float_bytes: int) -> DemoRow:
    from tfedge.analyze.inspect import inspect_tflite
    from tfedge.optimize.pipeline import optimize

    result = optimize(ref.model, "prune-cluster-qat", ref.train, ref.test, out_dir)
    final = result.final
    verdict = "yes" if inspect_tflite(result.model).full_integer else "no"
    assert final.accuracy is not None  # digits is a classifier
    return DemoRow(
        "prune-cluster-qat int8",
        final.accuracy,
        final.tflite_bytes,
        final.gzip_bytes,
        final.tflite_bytes / float_bytes,
        verdict,
    )


def _gzip_size(path) -> int:
    return len(gzip.compress(Path(path).read_bytes(), 9))
