"""The end-to-end demo: reference model -> int8 TFLite -> evaluation, as one table.

Each stage is a function returning a row, so later stages (optimize, bench, push) slot in.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
class FasterRow:
    """The channel-pruned int8 model against the int8 model, on one target."""

    target: str
    int8_p50_us: float
    channels_p50_us: float
    speedup: float
    emulated: bool


@dataclass
class ShipResult:
    state: str
    serving: str | None
    model_version: int | None
    device_dir: str
    update: str = ""  # how version 2 of the fine-tuned model arrived (6b)
    fleet: str = ""  # what the fleet collector says the devices run


@dataclass
class _Poll:
    """One agent poll of the demo: the repository on loopback, the device, its log."""

    url: str
    root: Path
    collector: str
    token: str
    log: list[str] = field(default_factory=list)

    def __call__(self, device: Path, name: str, device_id: str):
        from tfedge_device.agent import AgentConfig, poll_once

        config = AgentConfig(
            self.url, device, name, self.root, report_url=self.collector,
            report_token=self.token, device_id=device_id,
        )  # fmt: skip
        return poll_once(config, log=self.log.append)


@dataclass
class SearchLine:
    """The demo's search: its trials and the best feasible one (or the closest to feasible)."""

    trials: int
    front: int
    best: str | None
    closest: str | None
    output_dir: str


@dataclass
class DemoResult:
    rows: list[DemoRow] = field(default_factory=list)
    bench: list[BenchRow] = field(default_factory=list)
    faster: list[FasterRow] = field(default_factory=list)
    macs: tuple[int, int] | None = None
    channels_report: str | None = None  # report.md with the per-group table, timed locally
    ship: ShipResult | None = None
    search: SearchLine | None = None
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
        "4b. your own model: a Keras 3 classifier written as tutorials do (Rescaling first, "
        "a backbone nested as one layer with hard-swish and squeeze-and-excite, a new head) "
        "-> prune 50% -> cluster -> PCQAT -> int8, and a model.keras that Keras 3 loads"
    )
    rows.append(_own_model_row(ref, out, f32.size_bytes))
    say(
        "4c. faster, not only smaller: remove whole channels (filters) until half the MACs "
        "are left, fine-tune, then int8 (recipe channels)"
    )
    thinner = _channels_run(ref, out / "channels")
    rows.append(_run_row("channels 50% MACs int8", thinner, f32.size_bytes))
    say(
        f"4d. search: {SEARCH_TRIALS} trials over recipes (channels keep, int8) on digits, "
        "measured on the local CPU (relative budgets)"
    )
    searched = search_line(ref, out / "search")
    say(
        "5. benchmark int8 against float32, and the channel-pruned int8 against int8: "
        "local CPU, then emulated Raspberry Pi 4 (qemu, Cortex-A72)"
    )
    bench_rows = [
        _bench_row(i8.output, f32.output, target, profile) for target, profile in DEMO_TARGETS
    ]
    faster = [
        _faster_row(thinner.model, i8.output, target, profile) for target, profile in DEMO_TARGETS
    ]
    notes = [
        f"int8 accuracy drop: {100 * (keras_acc - rows[2].accuracy):.2f} points",
        "emulated timings are qemu's: relative comparisons only, never a device's latency",
    ]
    say(
        "6. ship: sign the compressed model into a TUF repository (its root key kept "
        "offline); a device agent pulls, smoke-tests and installs it"
    )
    say(
        "6b. a new version: digits' last layer fine-tuned on other data, optimized against the "
        "version devices run (recipe ota_base: its calibration samples), published with a "
        "delta; the agents report to a fleet collector"
    )
    shipped = ship_to_stand_in_device(str(out / "optimized" / "model.tflite"), out, ref)
    channels = thinner.stage("channels").metrics
    return DemoResult(
        rows=rows,
        bench=bench_rows,
        faster=faster,
        macs=(channels["macs_before"], channels["macs_after"]),
        channels_report=str(Path(thinner.output_dir) / "report.md"),
        ship=shipped,
        search=searched,
        notes=notes,
    )


def ship_to_stand_in_device(model: str, out: Path, ref=None) -> ShipResult:
    """Publish ``model`` to a fresh signed repository on loopback; one agent poll installs it.

    With ``ref`` (the digits reference), also 6b: a second device runs the int8 digits model
    (version 1); version 2, its head fine-tuned and optimized with ``ota_base``, is published
    with deltas and arrives as one. Both agents report to a fleet collector.
    """
    import shutil
    import threading

    from tfedge.ota.collector import make_collector
    from tfedge.ota.repository import init_repository, make_server, publish

    repo, device, offline = out / "ota-repo", out / "device", out / "offline-root-key"
    fleet_dir = out / "fleet"
    for d in (repo, device, offline, fleet_dir, out / "device-2"):
        shutil.rmtree(d, ignore_errors=True)
    offline.mkdir(mode=0o700)
    fleet_dir.mkdir()
    # the root key lives outside the repository (a removable disk in real life): publishing
    # needs only the targets, snapshot and timestamp keys
    root_json = init_repository(repo, root_keys=[offline / "root.pem"]).root_json
    assert root_json is not None  # a new repository always has its root metadata
    publish(repo, model, "digits", 1)
    token = secrets_token()
    tokens = fleet_dir / "tokens.txt"
    tokens.write_text(f"stand-in {token}\nstand-in-2 {token}x\n")
    collector = make_collector(tokens, fleet_dir / "fleet.sqlite", port=0)
    server = make_server(repo, port=0)
    for service in (server, collector):
        threading.Thread(target=service.serve_forever, daemon=True).start()
    try:
        url = "http://{}:{}".format(*server.server_address[:2])
        report = "http://{}:{}/report".format(*collector.server_address[:2])
        poll = _Poll(url, Path(root_json), report, token)
        result = poll(device, "digits", "stand-in")
        update = _delta_update(repo, out, ref, replace(poll, token=token + "x")) if ref else ""
    finally:
        for service in (server, collector):
            service.shutdown()
            service.server_close()
    shipped = ShipResult(result.state, result.serving, result.model_version, str(device))
    shipped.update, shipped.fleet = update, _fleet_line(fleet_dir / "fleet.sqlite")
    return shipped


def secrets_token() -> str:
    import secrets

    return secrets.token_hex(16)


def _delta_update(repo: Path, out: Path, ref, poll: _Poll) -> str:
    """6b: version 1 (int8) installed, then version 2 (head fine-tuned, ``ota_base``) as a delta."""
    from tfedge.optimize.pipeline import optimize
    from tfedge.ota.repository import publish

    device = out / "device-2"
    v1 = optimize(ref.model, "int8", ref.train, ref.test, out / "ota-v1")
    publish(repo, v1.model, "digits-int8", 1)
    first = poll(device, "digits-int8", "stand-in-2")
    v2_keras, other = fine_tune_head(ref, out)
    recipe = out / "ota_v2_recipe.yaml"
    recipe.write_text(OTA_V2_RECIPE.format(base=(out / "ota-v1" / "model.tflite").resolve()))
    v2 = optimize(str(v2_keras), str(recipe), str(other), ref.test, out / "ota-v2")
    publish(repo, v2.model, "digits-int8", 2, deltas=2)
    poll.log.clear()
    second = poll(device, "digits-int8", "stand-in-2")
    staged = [line for line in poll.log if line.startswith("model staged from delta")]
    sent = int(staged[0].split("(")[-1].split()[0]) if staged else None
    how = f"a {sent:,}-byte delta" if sent is not None else "the whole model (no delta)"
    return (
        f"version {first.model_version} -> {second.model_version} ({second.state}): "
        f"{how} instead of the {os.path.getsize(v2.model):,}-byte model"
    )


OTA_V2_RECIPE = """\
schema_version: 1
description: version 2 of digits-int8, its delta to version 1 kept small
passes: []
convert: {{quant: int8}}
ota_base: {{model: {base}}}
"""


def fine_tune_head(ref, out: Path) -> tuple[Path, Path]:
    """The digits model with its last layer trained one epoch on the other half of the
    training data (the rest frozen); that data."""
    import numpy as np

    from tfedge._tf import import_keras, import_tf, prepare_environment

    prepare_environment(legacy_keras=True)
    k, tf = import_keras(), import_tf()
    with np.load(ref.train) as train:
        x, y = train["x"][1::2][::-1], train["y"][1::2][::-1]
    other = out / "ota_v2_train.npz"
    np.savez(other, x=x, y=y)
    model = k.models.load_model(ref.model)
    for layer in model.layers[:-1]:
        layer.trainable = False
    tf.keras.utils.set_random_seed(1)
    model.compile(
        optimizer=k.optimizers.Adam(1e-3),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    model.save(out / "ota_v2.keras")
    return out / "ota_v2.keras", other


def _fleet_line(db: Path) -> str:
    from tfedge.ota.fleet import fleet_view

    view = fleet_view(db)
    rollout = "; ".join(
        f"{r['name']} version {r['latest_version']} on {r['devices_on_latest']} of {r['devices']}"
        for r in view.rollout
    )
    return f"{len(view.devices)} devices reported: {rollout}"


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


def _faster_row(channels_path: str, int8_path: str, target: str, profile: str) -> FasterRow:
    from tfedge.targets.bench import bench

    r = bench(channels_path, target=target, profile=profile, compare=int8_path, runs=50)
    assert r.compare is not None and r.speedup is not None  # both set by compare=
    return FasterRow(r.target, r.compare.latency_us.p50, r.latency_us.p50, r.speedup, r.emulated)


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
    return _recipe_row(
        "prune-cluster-qat int8", ref.model, "prune-cluster-qat", ref, out_dir, float_bytes
    )


def _own_model_row(ref, out: Path, float_bytes: int) -> DemoRow:
    """A user's Keras 3 model (nested backbone, Rescaling, hard-swish, SE) through a recipe."""
    path = train_own_keras3_model(ref, out / "my_digits_keras3.keras")
    recipe = out / "my_model_recipe.yaml"
    recipe.write_text(OWN_MODEL_RECIPE)
    label = "your Keras 3 model, PCQAT int8"
    return _recipe_row(label, str(path), str(recipe), ref, out / "my_model", float_bytes)


def search_line(ref, out_dir: Path) -> SearchLine:
    """A narrow, cheap search (``SEARCH_SPACE``) on the digits model into ``out_dir``."""
    from tfedge.search import search

    space = out_dir.parent / "search_space.yaml"
    space.write_text(SEARCH_SPACE)
    result = search(ref.model, ref.train, ref.test, out_dir, space=str(space), trials=SEARCH_TRIALS)
    best = result.best
    closest = result.closest[0] if result.closest else None
    return SearchLine(
        trials=len(result.trials),
        front=len(result.front),
        best=_trial_text(best) if best else None,
        closest=(f"trial {closest['number']}: {', '.join(closest['over'])}" if closest else None),
        output_dir=str(out_dir),
    )


def _trial_text(row: dict) -> str:
    passes = ", ".join(
        f"{name} {opts.get('keep', '')}".strip()
        for p in row["recipe"]["passes"]
        for name, opts in p.items()
    )
    return (
        f"trial {row['number']} ({passes or 'no pass'} -> {row['recipe']['convert']['quant']}): "
        f"{100 * row['accuracy']:.2f}%, p50 {1000 * row['p50_ms']:,.1f} us, "
        f"{row['gzip_bytes']:,} gzip B"
    )


def _channels_run(ref, out_dir: Path):
    """The digits model thinned to half its MACs by the ``channels`` pass, then int8."""
    from tfedge.optimize.pipeline import optimize

    recipe = out_dir.parent / "channels_recipe.yaml"
    recipe.write_text(CHANNELS_RECIPE)
    return optimize(ref.model, str(recipe), ref.train, ref.test, out_dir, target="local")


def _recipe_row(label: str, model: str, recipe: str, ref, out_dir: Path, float_bytes: int):
    """``model`` optimized with ``recipe`` on the digits data, as one row of the table."""
    from tfedge.optimize.pipeline import optimize

    return _run_row(label, optimize(model, recipe, ref.train, ref.test, out_dir), float_bytes)


def _run_row(label: str, result, float_bytes: int) -> DemoRow:
    """One row of the table from an optimize result."""
    from tfedge.analyze.inspect import inspect_tflite

    final = result.final
    verdict = "yes" if inspect_tflite(result.model).full_integer else "no"
    assert final.accuracy is not None  # digits is a classifier
    return DemoRow(
        label,
        final.accuracy,
        final.tflite_bytes,
        final.gzip_bytes,
        final.tflite_bytes / float_bytes,
        verdict,
    )


# A 7k-parameter model loses too much at prune-cluster-qat's 75%: half, and a looser guard.
OWN_MODEL_RECIPE = """\
schema_version: 1
description: prune 50% -> cluster 16 (sparsity kept) -> PCQAT -> int8, for a small model
passes:
  - prune: {target_sparsity: 0.5, epochs: 4}
  - cluster: {clusters: 16, epochs: 1}
  - qat: {epochs: 1}
train: {optimizer: adam, learning_rate: 0.001, batch_size: 32, validation_split: 0.1}
convert: {quant: int8}
max_accuracy_drop: 5
"""


# The demo's search: the channels pass's keep ratio only, int8, one epoch, short benchmarks.
SEARCH_TRIALS = 3
SEARCH_SPACE = """\
channels: {keep: [0.3, 0.9]}
low_rank: false
prune: false
cluster: false
quant: [int8]
epochs: [1, 1]
budgets: {latency: 1.0, size: 0.2}
measure: {runs: 20, warmup: 1, min_secs: 0.2}
"""


# Whole filters removed until half of the MACs are left, fine-tuned, then int8.
CHANNELS_RECIPE = """\
schema_version: 1
description: remove channels down to half the MACs, fine-tune, int8
passes:
  - channels: {target_macs: 0.5, epochs: 3}
train: {optimizer: adam, learning_rate: 0.001, batch_size: 32, validation_split: 0.1}
convert: {quant: int8}
max_accuracy_drop: 3
"""


def train_own_keras3_model(ref, path: Path) -> Path:
    """Build and train (about 12 s) the user-style Keras 3 digits model; save it to ``path``."""
    import numpy as np

    from tfedge._tf import import_keras3

    keras = import_keras3()
    keras.utils.set_random_seed(1234)
    model = own_keras3_model(keras)
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    with np.load(ref.train) as train:
        model.fit(train["x"], train["y"], epochs=15, batch_size=32, verbose=0)
    model.save(path)
    return path


def own_keras3_model(keras):
    """Rescaling -> nested ``backbone`` (hard-swish, squeeze-and-excite, residual) -> new head."""
    layers = keras.layers
    pixels = keras.Input((8, 8, 1))
    x = layers.Conv2D(32, 3, padding="same", use_bias=False, name="stem")(pixels)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("hard_silu", name="stem_act")(x)
    x = layers.Add(name="block1_add")([x, _se_block(layers, x, 32, "block1")])
    x = _se_block(layers, x, 64, "block2")
    backbone = keras.Model(pixels, x, name="backbone")
    image = keras.Input((8, 8, 1), name="pixels")
    x = layers.Rescaling(2.0, offset=-1.0, name="rescale")(image)
    x = layers.GlobalAveragePooling2D(name="pool")(backbone(x))
    return keras.Model(image, layers.Dense(10, name="logits")(x), name="my_digits")


def _se_block(layers, x, channels: int, name: str):
    """Depthwise conv, hard-swish, squeeze-and-excite, 1x1 projection (MobileNetV3's block)."""
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.Activation("hard_silu", name=f"{name}_dw_act")(x)
    se = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    se = layers.Conv2D(max(4, channels // 4), 1, activation="relu", name=f"{name}_se_reduce")(se)
    se = layers.Conv2D(x.shape[-1], 1, name=f"{name}_se_expand")(se)
    se = layers.Activation("hard_sigmoid", name=f"{name}_se_gate")(se)
    x = layers.Multiply(name=f"{name}_se_scale")([x, se])
    x = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_project")(x)
    return layers.BatchNormalization(name=f"{name}_project_bn")(x)


def _gzip_size(path) -> int:
    return len(gzip.compress(Path(path).read_bytes(), 9))
