"""Smoke-test a model on the device, in its own process: load, allocate, check the signature,
run the golden input, compare outputs within one quantization step.

The agent runs this as a child process (a model that crashes the runtime kills the child,
not the agent), before the switch and, by default, as the health check after it. It
uses :mod:`tfedge_device.interpreter` for loading and the golden comparison, like the
benchmark script's ``--smoke``. Prints one JSON object; exit 0 when the model passes, 1
when it fails.

Usage:
    tfedge-smoke MODEL.tflite GOLDEN.npz [--signature SIG.json] [--threads N]
    python -m tfedge_device.smoke MODEL.tflite GOLDEN.npz

Example:
    >>> check("versions/3f1c.tflite", "versions/3f1c.golden.npz", expected_signature=sig)["ok"]
    True
"""

from __future__ import annotations

import argparse
import json
import sys

from tfedge_device import interpreter
from tfedge_device.signature import quantization_notes, signature_diff, signature_from_interpreter


def check(
    model: str, golden: str, expected_signature: dict | None = None, threads: int | None = 1
) -> dict:
    """The smoke-test verdict for ``model`` as a dict with ``ok`` and the reason when not ok."""
    try:
        interp, runtime = interpreter.load_interpreter(model, threads)
        actual = signature_from_interpreter(interp)
        mismatch = signature_diff(expected_signature, actual) + quantization_notes(
            expected_signature, actual
        )
        if mismatch:
            return {
                "ok": False,
                "reason": "signature",
                "error": "the model's signature is not the signed one: " + "; ".join(mismatch),
                "signature": actual,
            }
        report = interpreter.smoke(model, golden, threads=threads)
    except interpreter.DeviceError as err:
        return {"ok": False, "reason": err.kind, "error": err.message}
    report["signature"] = actual
    if not report["ok"]:
        report.update(
            reason="outputs",
            error=f"golden outputs differ by {report['max_abs_diff']} "
            f"(tolerance {report['tolerance']})",
        )
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Smoke-test a .tflite on this device; print JSON.")
    parser.add_argument("model")
    parser.add_argument("golden")
    parser.add_argument("--signature", help="JSON file with the expected input/output signature")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    expected = None
    if args.signature:
        with open(args.signature) as handle:
            expected = json.load(handle)
    report = check(args.model, args.golden, expected, args.threads)
    sys.stdout.write(json.dumps(report, default=interpreter.json_default) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
