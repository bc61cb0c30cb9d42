"""Reference models: deterministic, built and trained locally, no downloads.

``digits``   the CNN for scikit-learn's bundled handwritten digits (real data, fixed split).
``kws``      the MLPerf Tiny keyword-spotting DS-CNN shape (49x10x1, 12 classes), synthetic data.
``vww``      MobileNetV2 alpha 0.35 at 96x96x3, 2 classes, random initialisation, synthetic data.
``anomaly``  the MLPerf Tiny anomaly-detection dense autoencoder (640 inputs), synthetic data.

Each is written to ``DIR/NAME/`` as ``model.keras``, ``train.npz`` and ``test.npz``.

Example:
    >>> build_reference("digits", "models")
    ReferenceModel(name='digits', ...)
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfedge.errors import UsageError

SEED = 1234


@dataclass
class ReferenceModel:
    name: str
    directory: str
    model: str
    train: str
    test: str
    task: str  # "classification" or "reconstruction"


def reference_names() -> list[str]:
    return list(_BUILDERS)


def reference_paths(name: str, root: str | os.PathLike) -> ReferenceModel:
    """Where reference model ``name`` lives under ``root`` (built or not)."""
    if name not in _BUILDERS:
        raise UsageError(
            f"unknown reference model '{name}'", f"choose one of {', '.join(_BUILDERS)}"
        )
    d = Path(root) / name
    task = "reconstruction" if name == "anomaly" else "classification"
    return ReferenceModel(
        name, str(d), str(d / "model.keras"), str(d / "train.npz"), str(d / "test.npz"), task
    )


def build_reference(name: str, root: str | os.PathLike, force: bool = False) -> ReferenceModel:
    """Build (train) reference model ``name`` under ``root`` unless it is already there."""
    ref = reference_paths(name, root)
    if not force and all(Path(p).exists() for p in (ref.model, ref.train, ref.test)):
        return ref
    _seed_everything()
    model, (x_tr, y_tr), (x_te, y_te) = _BUILDERS[name]()
    Path(ref.directory).mkdir(parents=True, exist_ok=True)
    _save_npz(ref.train, x_tr, y_tr)
    _save_npz(ref.test, x_te, y_te)
    tmp = Path(ref.directory) / ".model.keras.part.keras"
    model.save(tmp)
    os.replace(tmp, ref.model)
    return ref


def digits_data() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits as 8x8x1 floats in [0, 1], split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    idx = np.random.default_rng(SEED).permutation(len(x))
    cut = int(0.8 * len(x))
    return (x[idx[:cut]], y[idx[:cut]]), (x[idx[cut:]], y[idx[cut:]])


def digits_model(width: float = 1.0, keras=None):
    """Conv2D(16) -> Conv2D(32) -> MaxPooling2D -> Flatten -> Dense(64) -> Dense(10).

    Built with ``tf_keras`` unless ``keras`` (e.g. the Keras 3 package) is given.
    """
    from tfedge._tf import import_keras

    k = keras or import_keras()
    w = lambda n: max(1, int(round(n * width)))  # noqa: E731
    return k.Sequential(
        [
            k.Input(shape=(8, 8, 1), name="image"),
            k.layers.Conv2D(w(16), 3, padding="same", activation="relu", name="conv1"),
            k.layers.Conv2D(w(32), 3, padding="same", activation="relu", name="conv2"),
            k.layers.MaxPooling2D(2, name="pool"),
            k.layers.Flatten(name="flatten"),
            k.layers.Dense(w(64), activation="relu", name="fc1"),
            k.layers.Dense(10, name="logits"),
        ],
        name="digits_cnn",
    )


def compile_classifier(model, learning_rate: float = 1e-3):
    from tfedge._tf import import_keras

    k = import_keras()
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _build_digits():
    train, test = digits_data()
    model = compile_classifier(digits_model())
    model.fit(*train, epochs=25, batch_size=32, verbose=0, shuffle=True)
    return model, train, test


# Keras's default 0.99 lets the running statistics lag far behind after the few hundred steps
# the synthetic set allows: the model was right in training mode and at chance in inference.
BN_MOMENTUM = 0.9


def kws_model():
    """The MLPerf Tiny DS-CNN (small) for keyword spotting: 49x10x1 MFCCs, 12 classes."""
    from tfedge._tf import import_keras

    k = import_keras()
    inp = k.Input((49, 10, 1), name="mfcc")
    x = k.layers.Conv2D(64, (10, 4), strides=2, padding="same", use_bias=False, name="conv0")(inp)
    x = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name="bn0")(x)
    x = k.layers.ReLU(name="relu0")(x)
    for i in range(1, 5):
        x = k.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"dw{i}_bn")(x)
        x = k.layers.ReLU(name=f"dw{i}_relu")(x)
        x = k.layers.Conv2D(64, 1, use_bias=False, name=f"pw{i}")(x)
        x = k.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"pw{i}_bn")(x)
        x = k.layers.ReLU(name=f"pw{i}_relu")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    out = k.layers.Dense(12, name="logits")(x)
    return k.Model(inp, out, name="kws_dscnn")


def _build_kws():
    x, y = _synthetic_classes((49, 10, 1), classes=12, n=1200)
    model = compile_classifier(kws_model())
    model.fit(x[:960], y[:960], epochs=8, batch_size=64, verbose=0)
    return model, (x[:960], y[:960]), (x[960:], y[960:])


def vww_model():
    """MobileNetV2 alpha 0.35 at 96x96x3 with 2 classes, random initialisation (no download)."""
    from tfedge._tf import import_keras

    k = import_keras()
    return k.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=2, classifier_activation=None
    )


def _build_vww():
    x, y = _synthetic_classes((96, 96, 3), classes=2, n=240)
    model = compile_classifier(vww_model())
    return model, (x[:200], y[:200]), (x[200:], y[200:])


def anomaly_model():
    """The MLPerf Tiny anomaly-detection autoencoder: 640 -> 128x4 -> 8 -> 128x4 -> 640."""
    from tfedge._tf import import_keras

    k = import_keras()
    inp = k.Input((640,), name="frames")
    x = inp
    for i, units in enumerate([128, 128, 128, 128, 8, 128, 128, 128, 128]):
        x = k.layers.Dense(units, name=f"dense{i}")(x)
        x = k.layers.BatchNormalization(name=f"bn{i}")(x)
        x = k.layers.ReLU(name=f"relu{i}")(x)
    out = k.layers.Dense(640, name="reconstruction")(x)
    return k.Model(inp, out, name="anomaly_ae")


def _build_anomaly():
    from tfedge._tf import import_keras

    k = import_keras()
    rng = np.random.default_rng(SEED)
    basis = rng.normal(size=(8, 640)).astype(np.float32)
    x = (rng.normal(size=(1200, 8)).astype(np.float32) @ basis) / 8.0
    model = anomaly_model()
    model.compile(optimizer=k.optimizers.Adam(1e-3), loss="mse")
    model.fit(x[:1000], x[:1000], epochs=3, batch_size=64, verbose=0)
    return model, (x[:1000], x[:1000]), (x[1000:], x[1000:])


def _synthetic_classes(shape: tuple[int, ...], classes: int, n: int):
    """Class-dependent smooth patterns plus noise, from a fixed seed."""
    rng = np.random.default_rng(SEED)
    prototypes = rng.normal(size=(classes, *shape)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    x = prototypes[y] + 0.8 * rng.normal(size=(n, *shape)).astype(np.float32)
    return x.astype(np.float32), y.astype(np.int64)


def _save_npz(path: str, x: np.ndarray, y: np.ndarray) -> None:
    tmp = path + ".part.npz"
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, path)


def _seed_everything() -> None:
    from tfedge._tf import import_tf

    tf = import_tf()
    random.seed(SEED)
    np.random.seed(SEED)
    tf.random.set_seed(SEED)
    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()


_BUILDERS = {
    "digits": _build_digits,
    "kws": _build_kws,
    "vww": _build_vww,
    "anomaly": _build_anomaly,
}
