#!/usr/bin/env python3
"""`tfedge optimize` against the tfmot script a user writes by hand (issue 10, item 6).

The peer (``PEER`` below, run as its own script) makes the tfmot calls of the tfmot guides:
``prune_low_magnitude`` with ``PolynomialDecay(0 -> 0.75)`` over 2 epochs, ``strip_pruning``,
``cluster_weights(16, kmeans++, preserve_sparsity=True)`` for 1 epoch, ``strip_clustering``,
PCQAT (``Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)``) for 1 epoch, then
``TFLiteConverter`` full-int8 with 256 calibration samples, and scores the ``.tflite``.
``tfedge optimize`` runs the same recipe (``RECIPE`` below, also kept in the JSON) on
the same float model and data (the digits reference model) and also reports every stage.

Both run as fresh processes, alternating, for several rounds; round i seeds both with i
(training, k-means++ and calibration draw from it, and the final size varies by about 1%
between seeds). The table gives the median wall times and their ratio (goal: tfedge <= 1.3x
the peer), the mean gzip -9 sizes of the final ``.tflite`` files and their ratio (goal:
tfedge <= the peer), and the accuracies.
Writes bench-results/optimize_peer.{json,md}.

Usage: python scripts/bench_optimize_peer.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tfedge.fsutil import write_bytes_atomic  # noqa: E402
from tfedge.targets.job import last_json  # noqa: E402
from tfedge.zoo.reference import build_reference  # noqa: E402

# The peer's recipe for tfedge: the same passes, epochs, learning rates, batches and data.
# ``ramp: 1.0`` is the peer's schedule (PolynomialDecay over every step of the 2 epochs);
# tfedge's default (0.7) reaches the target earlier and fine-tunes with the final mask.
RECIPE = """# What the hand-written tfmot script (PEER in scripts/bench_optimize_peer.py) does.
schema_version: 1
name: peer
passes:
  - prune: {target_sparsity: 0.75, epochs: 2, ramp: 1.0}
  - cluster: {clusters: 16, init: kmeans++, preserve_sparsity: true, epochs: 1}
  - qat: {epochs: 1, scheme: pcqat}
train: {optimizer: adam, learning_rate: 0.001, batch_size: 32, validation_split: 0.1}
convert: {quant: int8, calib_samples: 256}
seed: SEED
"""

PEER = """
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve \\
    .default_8bit_cluster_preserve_quantize_scheme import Default8BitClusterPreserveQuantizeScheme

model_path, train_path, test_path, out_path, seed = sys.argv[1:6]
PRUNE_EPOCHS, CLUSTER_EPOCHS, QAT_EPOCHS, LR = 2, 1, 1, 1e-3
BATCH, SPLIT = 32, 0.1
keras.utils.set_random_seed(int(seed))
with np.load(train_path) as f:
    x, y = f["x"].astype(np.float32), f["y"]
with np.load(test_path) as f:
    x_test, y_test = f["x"].astype(np.float32), f["y"]


def fit(model, epochs, lr, callbacks=()):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=BATCH, epochs=epochs, validation_split=SPLIT, verbose=0,
              callbacks=list(callbacks))


model = keras.models.load_model(model_path)

# 1. magnitude pruning, 0 -> 75 % over the fine-tuning steps
end_step = int(np.ceil(len(x) * (1 - SPLIT) / BATCH)) * PRUNE_EPOCHS
schedule = tfmot.sparsity.keras.PolynomialDecay(
    initial_sparsity=0.0, final_sparsity=0.75, begin_step=0, end_step=end_step, frequency=10
)
pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
fit(pruned, PRUNE_EPOCHS, LR, [tfmot.sparsity.keras.UpdatePruningStep()])
pruned = tfmot.sparsity.keras.strip_pruning(pruned)

# 2. sparsity-preserving clustering, 16 centroids
clustered = tfmot.clustering.keras.cluster_weights(
    pruned,
    number_of_clusters=16,
    cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS,
    preserve_sparsity=True,
)
fit(clustered, CLUSTER_EPOCHS, LR / 10)
clustered = tfmot.clustering.keras.strip_clustering(clustered)

# 3. PCQAT
annotated = tfmot.quantization.keras.quantize_annotate_model(clustered)
pcqat = tfmot.quantization.keras.quantize_apply(
    annotated, Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)
)
fit(pcqat, QAT_EPOCHS, LR / 10)

# 4. full-int8 conversion, 256 calibration samples
idx = np.random.default_rng(0).choice(len(x), size=256, replace=False)
converter = tf.lite.TFLiteConverter.from_keras_model(pcqat)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = lambda: ([x[i : i + 1]] for i in idx)
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
converter.inference_input_type = tf.int8
converter.inference_output_type = tf.int8
with open(out_path, "wb") as f:
    f.write(converter.convert())

# 5. accuracy of the .tflite
interp = tf.lite.Interpreter(model_path=out_path)
interp.allocate_tensors()
inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
scale, zero = inp["quantization"]
hits = 0
for i in range(len(x_test)):
    q = np.clip(np.round(x_test[i : i + 1] / scale + zero), -128, 127).astype(np.int8)
    interp.set_tensor(inp["index"], q)
    interp.invoke()
    hits += int(interp.get_tensor(out["index"])[0].argmax() == y_test[i])
print(json.dumps({"accuracy": hits / len(x_test)}))
"""


def gzip_bytes(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), 9))


def run_timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{cmd[1:3]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def run_peer(ref, work: Path, seed: int) -> dict:
    out = work / f"peer-{seed}.tflite"
    cmd = [sys.executable, str(work / "peer.py"), ref.model, ref.train, ref.test, str(out)]
    seconds, stdout = run_timed([*cmd, str(seed)])
    return {
        "seed": seed,
        "seconds": round(seconds, 2),
        "accuracy": last_json(stdout)["accuracy"],
        "tflite_bytes": out.stat().st_size,
        "gzip_bytes": gzip_bytes(out),
    }


def run_tfedge(ref, work: Path, seed: int) -> dict:
    out, recipe = work / f"tfedge-{seed}", work / f"recipe-{seed}.yaml"
    recipe.write_text(RECIPE.replace("SEED", str(seed)))
    cmd = [sys.executable, "-m", "tfedge", "optimize", ref.model, "--recipe", str(recipe)]
    cmd += ["--data", ref.train, "--eval", ref.test, "-o", str(out), "--json"]
    seconds, stdout = run_timed(cmd)
    report = json.loads(stdout)
    return {
        "seed": seed,
        "seconds": round(seconds, 2),
        "accuracy": report["stages"][-1]["accuracy"],
        "float_accuracy": report["stages"][0]["accuracy"],
        "tflite_bytes": (out / "model.tflite").stat().st_size,
        "gzip_bytes": gzip_bytes(out / "model.tflite"),
        "stage_seconds": {s["name"]: s["seconds"] for s in report["stages"]},
    }


def summary(peer: list[dict], tfedge: list[dict]) -> dict:
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    mean = lambda rows, key: statistics.fmean(r[key] for r in rows)  # noqa: E731
    return {
        "rounds": len(peer),
        "peer_s": round(med(peer, "seconds"), 2),
        "tfedge_s": round(med(tfedge, "seconds"), 2),
        "time_ratio": round(med(tfedge, "seconds") / med(peer, "seconds"), 3),
        "peer_gzip_bytes": round(mean(peer, "gzip_bytes")),
        "tfedge_gzip_bytes": round(mean(tfedge, "gzip_bytes")),
        "gzip_ratio": round(mean(tfedge, "gzip_bytes") / mean(peer, "gzip_bytes"), 4),
        "peer_accuracy": round(mean(peer, "accuracy"), 4),
        "tfedge_accuracy": round(mean(tfedge, "accuracy"), 4),
        "float_accuracy": tfedge[0]["float_accuracy"],
    }


def markdown(s: dict, peer: list[dict], tfedge: list[dict]) -> str:
    lines = [
        "digits reference model; prune 0.75 (2 epochs) -> cluster 16 (1) -> PCQAT (1) -> int8; "
        f"{s['rounds']} rounds of fresh processes, alternating, round i with seed i for both; "
        "times are medians, sizes and accuracies means over the seeds",
        "",
        "| | wall time | gzip -9 of .tflite | .tflite accuracy |",
        "|---|---:|---:|---:|",
        f"| hand-written tfmot (peer) | {s['peer_s']:.1f} s | {s['peer_gzip_bytes']:,} B | "
        f"{100 * s['peer_accuracy']:.2f}% |",
        f"| `tfedge optimize` (every stage reported) | {s['tfedge_s']:.1f} s | "
        f"{s['tfedge_gzip_bytes']:,} B | {100 * s['tfedge_accuracy']:.2f}% |",
        f"| **tfedge / peer** | **{s['time_ratio']:.2f}x** (goal <= 1.3) | "
        f"**{s['gzip_ratio']:.4f}** (goal <= 1) | float model {100 * s['float_accuracy']:.2f}% |",
        "",
        "| seed | peer s | tfedge s | peer gzip B | tfedge gzip B | peer acc | tfedge acc |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p, t in zip(peer, tfedge):
        lines.append(
            f"| {p['seed']} | {p['seconds']:.1f} | {t['seconds']:.1f} | {p['gzip_bytes']:,} | "
            f"{t['gzip_bytes']:,} | {100 * p['accuracy']:.2f}% | {100 * t['accuracy']:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="round i uses seed i (default 3)")
    args = parser.parse_args()
    ref = build_reference("digits", ROOT / "models")
    peer, tfedge = [], []
    with tempfile.TemporaryDirectory(prefix="tfedge-peer-") as tmp:
        work = Path(tmp)
        (work / "peer.py").write_text(PEER)
        for seed in range(args.rounds):  # alternate who goes first, so drift hits both alike
            order = (run_peer, run_tfedge) if seed % 2 == 0 else (run_tfedge, run_peer)
            for run in order:
                row = run(ref, work, seed)
                (peer if run is run_peer else tfedge).append(row)
                print(f"seed {seed} {run.__name__[4:]}: {row}", file=sys.stderr)
    s = summary(peer, tfedge)
    table = markdown(s, peer, tfedge)
    print(table)
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    result = {
        "summary": s,
        "peer": peer,
        "tfedge": tfedge,
        "recipe": RECIPE,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    write_bytes_atomic(out_dir / "optimize_peer.json", json.dumps(result, indent=2).encode())
    write_bytes_atomic(out_dir / "optimize_peer.md", table.encode())


if __name__ == "__main__":
    main()
