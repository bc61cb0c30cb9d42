"""Golden inputs and the model's raw outputs for them: what the smoke test compares against.

The host makes the golden file before a model ships (``tfedge push``, ``tfedge ota publish``)
by running this module in a fresh child process with a timeout: the model is a user's file,
and a model that crashes or hangs the interpreter must not take ``tfedge`` down. Inputs are
seeded random values in each input's dtype and range (as TFLite's ``benchmark_model`` does),
or the first samples of a given ``.npz``/``.npy``. Prints one JSON object; on error
``{"error", "kind", "hint"}`` with the benchmark script's exit codes.

Usage:
    python -m tfedge_device.golden MODEL.tflite OUT.npz [--data DATA.npz] [--samples 4] [--seed 0]

Example:
    >>> x, y = make_golden("kws_int8.tflite", samples=4)
    >>> x.shape[0], y.dtype
    (4, dtype('int8'))
"""

from __future__ import annotations

import argparse
import json
import sys

from tfedge_device import interpreter

DEFAULT_SAMPLES = 4


def make_golden(model: str, data: str | None = None, samples: int = DEFAULT_SAMPLES, seed: int = 0):
    """``(x, y)``: golden inputs and the raw (not dequantized) outputs ``model`` gives for them."""
    np = interpreter.import_numpy()
    interp, _ = interpreter.load_interpreter(model, threads=1)
    if data is None:
        x = np.stack([interpreter.random_inputs(interp, seed + i)[0] for i in range(samples)])
    else:
        x = np.asarray(interpreter.load_data(data)[0])[:samples]
    raw, _ = interpreter.predict_all(interp, x)
    return x, raw


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write golden inputs and outputs for a .tflite model.")
    p.add_argument("model")
    p.add_argument("out", help="the .npz to write (arrays x and y)")
    p.add_argument("--data", help=".npz with x (or .npy): real inputs instead of random ones")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        x, y = make_golden(args.model, args.data, args.samples, args.seed)
        with open(args.out, "wb") as handle:
            interpreter.import_numpy().savez_compressed(handle, x=x, y=y)
        report, code = {"samples": int(len(x)), "shape": list(y.shape)}, 0
    except interpreter.DeviceError as err:
        report, code = err.to_dict(), err.exit_code
    except Exception as exc:  # anything unexpected still answers in JSON
        message = f"{type(exc).__name__}: {interpreter.first_line(exc)}"
        report, code = {"error": message, "kind": "internal", "hint": ""}, interpreter.EXIT_INTERNAL
    sys.stdout.write(json.dumps(report) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
