"""One row of the ``optimize`` report: a converted stage, measured.

Runs in the optimize worker (``tfedge.optimize.worker``), next to the models it measures;
the rows go back to the caller as plain ``Stage`` objects.
"""

from __future__ import annotations

import gzip
import json
import lzma
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfedge.convert.tflite_model import read_tflite
from tfedge.io.data import Dataset, as_float32, num_samples, take

WEIGHT_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D"}


@dataclass
class Stage:
    """One row of the report: the model after a stage, as converted and as Keras saw it."""

    name: str
    accuracy: float | None
    keras_accuracy: float | None
    mse: float | None
    params: int
    nonzero_params: int
    sparsity: float
    unique_weights: int
    tflite_bytes: int
    gzip_bytes: int
    xz_bytes: int
    seconds: float
    tflite: str
    quant: str
    layers: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    reused: bool = False  # measured by the failed run that ``--resume`` continued


def stage_row(
    name: str,
    path: Path,
    evals: Dataset,
    quant: str,
    seconds: float,
    metrics: dict,
    keras_accuracy: float | None,
    params: int,
) -> Stage:
    """Measure the converted stage at ``path``: accuracy, sizes, weight statistics.

    ``keras_accuracy`` and ``params`` were measured on the Keras model (by the worker's main
    thread, or for the direct Keras 3 path by the caller); ``seconds`` is the time the stage
    took before this measurement, which adds its own.
    """
    from tfedge.analyze.evaluate import evaluate

    started = time.perf_counter()
    raw = path.read_bytes()
    scored = evaluate(path, evals, isolate=False)  # tfedge just wrote it: run it here
    stats = weight_stats(path)
    return Stage(
        name=name,
        accuracy=scored.accuracy,
        keras_accuracy=keras_accuracy,
        mse=scored.mse,
        params=int(params),
        nonzero_params=stats["nonzero"],
        sparsity=stats["sparsity"],
        unique_weights=stats["max_unique_per_channel"],
        tflite_bytes=len(raw),
        gzip_bytes=len(gzip.compress(raw, 9)),
        xz_bytes=len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
        seconds=round(seconds + time.perf_counter() - started, 2),
        tflite=f"stages/{path.name}",
        quant=quant,
        layers=stats["layers"],
        metrics=_jsonable(metrics),
    )


def keras_accuracy_of(model, ctx) -> float | None:
    """``ctx.accuracy(model)`` without ``predict``: eager calls in batches of 256.

    ``predict`` builds and traces a new function for every model it sees; each stage has a
    new model and is scored once, so calling the model directly is faster (same outputs).
    """
    if ctx.eval_x is None or ctx.eval_y is None or not ctx.classification:
        return None
    x = as_float32(ctx.eval_x)
    n = num_samples(x)
    batches = [ctx.inputs_for(model, take(x, slice(i, i + 256))) for i in range(0, n, 256)]
    out = np.concatenate([np.asarray(model(b, training=False)) for b in batches])
    return float(np.mean(out.reshape(n, -1).argmax(1) == np.asarray(ctx.eval_y).reshape(-1)))


def weight_stats(path) -> dict:
    """Zeros and distinct values in the weight kernels of a ``.tflite`` file, as users check them.

    ``sparsity`` is the share of zeros in all conv/fully-connected kernels;
    ``max_unique_per_channel`` the most distinct values any output channel of those kernels
    holds. ``nonzero`` counts non-zero weights and biases. ``layers`` gives both per layer.
    """
    model = read_tflite(path)
    layers, zeros, size, nonzero, unique = {}, 0, 0, 0, 0
    for op in model.ops:
        if op.name not in WEIGHT_OPS or len(op.inputs) < 2 or op.inputs[1].data is None:
            continue
        kernel = op.inputs[1]
        values = np.asarray(kernel.data).reshape(kernel.shape)
        per_channel = _unique_per_channel(values, _channel_axis(op.name, kernel))
        layers[_layer_name(op)] = {
            "sparsity": round(float(np.mean(values == 0)), 4),
            "max_unique_per_channel": per_channel,
            "weights": int(values.size),
        }
        zeros, size = zeros + int(np.sum(values == 0)), size + values.size
        nonzero += int(np.count_nonzero(values)) + _bias_nonzero(op)
        unique = max(unique, per_channel)
    return {
        "sparsity": round(zeros / size, 4) if size else 0.0,
        "nonzero": nonzero,
        "max_unique_per_channel": unique,
        "layers": layers,
    }


def _layer_name(op) -> str:
    """The Keras layer of a weighted op, from its kernel's tensor name (QAT's ``quant_`` off)."""
    from tfedge.convert.tflite_model import layer_from_tensor_name

    name = layer_from_tensor_name(op.inputs[1].name) if "/" in op.inputs[1].name else op.layer
    return name[len("quant_") :] if name.startswith("quant_") else name


def _channel_axis(op_name: str, kernel) -> int:
    if kernel.scale and len(kernel.scale) > 1:
        return kernel.quantized_dimension
    return 3 if op_name == "DEPTHWISE_CONV_2D" else 0


def _unique_per_channel(values: np.ndarray, axis: int) -> int:
    moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    return max(int(np.unique(row).size) for row in moved)


def _bias_nonzero(op) -> int:
    if len(op.inputs) > 2 and op.inputs[2].data is not None:
        return int(np.count_nonzero(op.inputs[2].data))
    return 0


def _jsonable(value):
    return json.loads(json.dumps(value, default=json_default))


def json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
