"""The optimize worker: TensorFlow work in one child per run, the caller's Keras left alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tfedge.errors import ConversionError
from tfedge.optimize.worker import OptimizeWorker

ROOT = Path(__file__).resolve().parent.parent

KERAS3_SESSION = """
import json, os, sys
import numpy as np
import tensorflow as tf     # a notebook user's session: TensorFlow with Keras 3
import keras

import tfedge

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8)).astype("float32")
y = (x[:, 0] > 0).astype("int64")
np.savez(sys.argv[1] + "/data.npz", x=x, y=y)
inp = keras.Input((8,), name="features")
model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dense(32, activation="relu")(inp)))
recipe = sys.argv[1] + "/recipe.yaml"
with open(recipe, "w") as f:
    f.write("schema_version: 1\\npasses:\\n  - prune: {target_sparsity: 0.5, epochs: 1}\\n")
data = sys.argv[1] + "/data.npz"
result = tfedge.optimize(model, recipe, data, data, sys.argv[1] + "/out")
print(json.dumps({
    "stages": [s.name for s in result.stages],
    "tf_keras_module": tf.keras.layers.Dense.__module__,
    "tf_keras_imported": "tf_keras" in sys.modules,
    "legacy_env": os.environ.get("TF_USE_LEGACY_KERAS"),
}))
"""


@pytest.mark.slow
@pytest.mark.tf
def test_keras3_session_keeps_keras3_after_a_tfmot_recipe(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", KERAS3_SESSION, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["stages"] == ["float32", "int8", "prune"]
    assert seen["tf_keras_module"].startswith(("keras.", "keras.src")), seen
    assert not seen["tf_keras_imported"] and seen["legacy_env"] is None, seen


def test_a_dead_worker_is_one_error_naming_the_signal():
    with pytest.raises(ConversionError, match="SIGKILL.*job 'fold'") as err:
        with OptimizeWorker() as worker:
            worker.proc.send_signal(signal.SIGKILL)
            worker.call("fold")
    assert "\n" not in err.value.message
    assert worker.proc.poll() is not None and not worker.tmp.exists()
