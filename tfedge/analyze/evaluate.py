"""Accuracy (classifiers) or MSE (everything else) of a Keras or ``.tflite`` model on data.

For ``.tflite`` the inputs are quantized and the outputs dequantized with the model's own
scale and zero point, so the numbers compare directly with the float model's. A model with
several inputs takes one array per input (see ``tfedge.io.data``); each is matched to its
input by name (the TFLite signature keeps the Keras input names) and quantized with that
input's own scale and zero point.

Example:
    >>> evaluate("model.tflite", "test.npz").accuracy
    0.975
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfedge.errors import DataError
from tfedge.io.data import (
    Dataset,
    Inputs,
    InputSpec,
    arrange_inputs,
    as_float32,
    check_dataset,
    check_labels,
    keras_input_specs,
    load_data,
    num_samples,
)
from tfedge.io.models import detect_format, load_keras_model, trusting
from tfedge.progress import progress_iter


@dataclass
class EvalResult:
    model: str
    samples: int
    task: str  # "classification", "regression" or "unlabelled"
    accuracy: float | None = None
    mse: float | None = None
    outputs: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("outputs")
        return {k: v for k, v in d.items() if v is not None}


@dataclass
class CompareResult:
    a: EvalResult
    b: EvalResult
    agreement: float | None
    max_abs_diff: float

    def to_dict(self) -> dict:
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "top1_agreement": self.agreement,
            "max_abs_diff": self.max_abs_diff,
            "samples": self.a.samples,
        }


def evaluate(
    model: str | Path,
    data,
    *,
    progress: bool = False,
    isolate: bool = True,
    trust_model: bool = False,
) -> EvalResult:
    """Run ``model`` on ``data`` and score it against the labels.

    ``data`` is a path (.npz, .npy, image folder), a ``Dataset``, a tuple ``(x, y)`` of
    arrays (``x`` a dict of arrays for several inputs; ``y`` None for outputs only), or the
    inputs ``x`` alone.

    A ``.tflite`` runs in a fresh child with a timeout (``tfedge.analyze.isolated``), so a
    model that crashes or hangs the runtime is one error; ``isolate=False`` runs it here
    (only for models tfedge has just written itself, e.g. in the optimize worker). A Keras
    model whose layers carry Python code (Lambda) is refused unless ``trust_model``.
    """
    ds = as_dataset(data)
    with trusting(trust_model):
        outputs = predict(model, ds.x, progress=progress, isolate=isolate)
    return _score(str(model), ds, outputs)


def compare(
    model_a: str | Path,
    model_b: str | Path,
    data,
    *,
    progress: bool = False,
    trust_model: bool = False,
) -> CompareResult:
    """Evaluate two models on the same data (as for :func:`evaluate`) and measure how far
    apart their outputs are."""
    ds = as_dataset(data)
    a = evaluate(model_a, ds, progress=progress, trust_model=trust_model)
    b = evaluate(model_b, ds, progress=progress, trust_model=trust_model)
    out_a, out_b = a.outputs, b.outputs
    assert out_a is not None and out_b is not None  # evaluate() keeps the outputs
    if out_a.shape != out_b.shape:
        raise DataError(
            f"the models' outputs differ in shape: {out_a.shape[1:]} vs {out_b.shape[1:]}",
            "compare two versions of the same model",
        )
    agreement = None
    if out_a.ndim == 2 and out_a.shape[1] > 1:
        agreement = float(np.mean(out_a.argmax(1) == out_b.argmax(1)))
    return CompareResult(a, b, agreement, float(np.max(np.abs(out_a - out_b))))


def as_dataset(data) -> Dataset:
    """``data`` as a checked Dataset: a path, a Dataset, ``(x, y)``, or the inputs ``x``."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_data(Path(data))
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        labels = None if y is None else np.asarray(y)
        return check_dataset(Dataset(_arrays(x), labels, "data (x, y)"))
    if isinstance(data, (np.ndarray, dict)):
        return check_dataset(Dataset(_arrays(data), None, "data x"))
    raise DataError(
        f"data of type {type(data).__name__} is not something tfedge can evaluate on",
        "pass a .npz path, a tuple (x, y) of arrays, or the input array x",
    )


def _arrays(x):
    if isinstance(x, dict):
        return {str(name): np.asarray(a) for name, a in x.items()}
    return np.asarray(x)


def predict(
    model,
    x: Inputs,
    *,
    progress: bool = False,
    threads: int | None = None,
    isolate: bool = True,
) -> np.ndarray:
    """Float outputs of ``model`` (a path or an in-memory Keras model) for inputs ``x``."""
    if not isinstance(model, (str, Path)):
        arrays = arrange_inputs(as_float32(x), keras_input_specs(model), "data")
        return np.asarray(
            model.predict(arrays[0] if len(arrays) == 1 else arrays, verbose=0, batch_size=256)
        )
    fmt = detect_format(model)
    if fmt.kind == "tflite":
        from tfedge.analyze.isolated import predict_tflite_isolated

        run = predict_tflite_isolated if isolate else predict_tflite
        return run(model, x, progress=progress, threads=threads)
    return predict(load_keras_model(fmt), x, progress=progress)


def predict_tflite(
    path, x: Inputs, *, progress: bool = False, threads: int | None = None
) -> np.ndarray:
    """Run a ``.tflite`` model here, sample by sample, quantizing inputs and dequantizing outputs.

    In this process: for tfedge's own models and for the isolated child; a user's file goes
    through :func:`tfedge.analyze.isolated.predict_tflite_isolated`.
    """
    from tfedge.analyze.runtime import load_interpreter
    from tfedge.convert.tflite_model import read_tflite
    from tfedge_device import interpreter as device

    read_tflite(path)  # a damaged file fails here, cleanly, before the interpreter sees it
    interp, _ = load_interpreter(str(path), threads=threads)
    details = interp.get_input_details()
    # Data values are real numbers, as for a Keras model: uint8 images are quantized with the
    # input's scale, never cast (200 would wrap to -56 in an int8 input).
    arrays = arrange_inputs(as_float32(x), tflite_input_specs(interp), "data")
    # A model converted with a fixed batch size over 1 (``--batch-size``; its recurrent state
    # is sized for it, so it cannot be resized) takes that many samples at a time, the last
    # group padded with copies of its last sample.
    batch = max(1, int(details[0]["shape"][0])) if len(details[0]["shape"]) else 1
    count, results = num_samples(x), []
    for i in progress_iter(range(0, count, batch), "Evaluating", progress):
        take = np.minimum(np.arange(i, i + batch), count - 1)
        device.run_once(interp, [device.prepare_input(d, a[take]) for d, a in zip(details, arrays)])
        results.extend(device.output_of(interp)[1][: min(batch, count - i)])
    return np.stack(results)


def tflite_input_specs(interp) -> list[InputSpec]:
    """The inputs of a TFLite interpreter in tensor order, named as in its signature.

    The signature's names are the Keras model's input names.
    """
    by_index = _signature_input_names(interp)
    return [
        InputSpec(
            by_index.get(d["index"], _plain_tensor_name(d["name"])),
            tuple(int(n) for n in d["shape"]),
            np.dtype(d["dtype"]).name,
        )
        for d in interp.get_input_details()
    ]


def _signature_input_names(interp) -> dict[int, str]:
    signatures = interp.get_signature_list()
    if len(signatures) != 1:
        return {}
    runner = interp.get_signature_runner(next(iter(signatures)))
    return {detail["index"]: name for name, detail in runner.get_input_details().items()}


def _plain_tensor_name(name: str) -> str:
    """``serving_default_image:0`` -> ``image``: the converter's name for a signature input."""
    return name.split(":")[0].removeprefix("serving_default_")


def _score(name: str, ds: Dataset, outputs: np.ndarray) -> EvalResult:
    n = len(ds)
    if ds.y is None:
        return EvalResult(name, n, "unlabelled", outputs=outputs)
    y = np.asarray(ds.y)
    if _is_classification(y, outputs):
        check_labels(y, outputs.reshape(n, -1).shape[1], ds.source)
        acc = float(np.mean(outputs.reshape(n, -1).argmax(1) == y.reshape(n)))
        return EvalResult(name, n, "classification", accuracy=acc, outputs=outputs)
    if y.reshape(n, -1).shape != outputs.reshape(n, -1).shape:
        raise DataError(
            f"{ds.source}: labels have shape {y.shape[1:]}, outputs {outputs.shape[1:]}",
            "give class indices for a classifier or targets shaped like the output",
        )
    mse = float(np.mean((outputs.reshape(n, -1) - y.reshape(n, -1).astype(np.float32)) ** 2))
    return EvalResult(name, n, "regression", mse=mse, outputs=outputs)


def _is_classification(y: np.ndarray, outputs: np.ndarray) -> bool:
    flat = outputs.reshape(len(outputs), -1)
    return (
        np.issubdtype(y.dtype, np.integer)
        and y.reshape(len(y), -1).shape[1] == 1
        and flat.shape[1] > 1
    )
