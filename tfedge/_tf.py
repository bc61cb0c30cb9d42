"""Import TensorFlow the one way tfedge needs it: Keras 2 (tf_keras) for tfmot, quiet logs.

Every TensorFlow import in tfedge goes through here, lazily, so ``tfedge --help`` and the
device-side code never pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings


def debug_enabled() -> bool:
    return os.environ.get("TFEDGE_DEBUG") == "1"


def prepare_environment(legacy_keras: bool = True) -> None:
    """Set the variables TensorFlow reads at import time. Call before importing it."""
    if legacy_keras:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    else:  # Keras 3 models convert through TensorFlow's converter without the legacy switch
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    if not debug_enabled():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GLOG_minloglevel", "3")


@contextlib.contextmanager
def keep_keras_selection():
    """Keras 3 work in the caller's own process: leave its choice of Keras as it was.

    ``tf.keras`` picks Keras 2 or 3 from ``TF_USE_LEGACY_KERAS`` when first touched, so code
    running in a user's process (``optimize`` loading a Keras 3 model there) must not set it.
    Inside the block an unset variable reads ``0`` (``import_tf`` then leaves it alone);
    afterwards it is unset again.
    """
    saved = os.environ.get("TF_USE_LEGACY_KERAS")
    if saved is None:
        os.environ["TF_USE_LEGACY_KERAS"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)


def import_tf():
    """Return the ``tensorflow`` module, imported with Keras 2 selected and logs quieted."""
    prepare_environment()
    with quiet_native_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe logs once, here, while quiet

    if not debug_enabled():
        tf.get_logger().setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="tensorflow")
        warnings.filterwarnings("ignore", module="tf_keras")
        warnings.filterwarnings("ignore", module="tensorflow_model_optimization")
    return tf


@contextlib.contextmanager
def quiet_native_stderr():
    """Hide what TensorFlow's C++ side prints while it loads (CUDA probes and the like)."""
    if debug_enabled():
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras():
    """Return ``tf_keras`` (Keras 2), the Keras tfmot works with.

    Registers tfedge's custom activations (``tfedge.io.activations``) so models that use them
    load in every process.
    """
    import_tf()
    import tf_keras

    from tfedge.io.activations import register

    register(tf_keras)
    return tf_keras


def import_keras3():
    """Return the ``keras`` package (Keras 3), imported quietly, for reading Keras 3 files."""
    import_tf()
    with quiet_native_stderr():
        import keras
    return keras
