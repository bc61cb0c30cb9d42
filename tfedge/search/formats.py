"""Which number format runs fastest on the target, read from a study's measured trials.

The answer depends on the CPU: int8 against float32 on MobileNetV2-0.35 measured 1.44x on a
host with AVX-512 VNNI and 0.58x on one without, and integer kernels win by far under an
emulated Cortex-A72. The search measures it instead of assuming it: per quantization mode,
the fastest trial. The fair comparison is the format alone (trials with no pass: the same
network in each format); when fewer than two formats have such a trial, the fastest trial of
each format is compared, passes included, and the summary says so.

Example:
    >>> found = fastest_formats(result.trials, "qemu")
    >>> found["fastest"], found["line"]  # MobileNetV2-0.35, 96x96, formats only
    ('int8', 'fastest format on qemu: int8 18 ms; float32 62.9 ms (3.49x slower); ...')
"""

from __future__ import annotations


def fastest_formats(trials: list[dict], target: str) -> dict | None:
    """``{"basis", "by_quant", "fastest", "line"}`` from the measured ``trials`` (None when
    they measured fewer than two formats)."""
    alone = _fastest_per_quant([t for t in trials if not t["recipe"].get("passes")])
    basis = "the format alone (trials with no pass)"
    found = alone
    if len(alone) < 2:
        found = _fastest_per_quant(trials)
        basis = "the fastest trial of each format, passes included"
    if len(found) < 2:
        return None
    order = sorted(found, key=lambda q: found[q]["p50_ms"])
    first = found[order[0]]["p50_ms"]
    rest = [
        f"{q} {found[q]['p50_ms']:.3g} ms ({found[q]['p50_ms'] / first:.2f}x slower)"
        for q in order[1:]
    ]
    line = (
        f"fastest format on {target}: {order[0]} {first:.3g} ms; {'; '.join(rest)} "
        f"(compared: {basis})"
    )
    return {"basis": basis, "by_quant": found, "fastest": order[0], "line": line}


def quant_of(trial: dict) -> str:
    """The trial's quantization mode (``none`` is float32; ``+mixed`` when some layers keep
    another precision)."""
    convert = trial["recipe"].get("convert") or {}
    quant = str(convert.get("quant", "int8"))
    quant = "float32" if quant == "none" else quant
    return f"{quant}+mixed" if convert.get("precision") else quant


def _fastest_per_quant(trials: list[dict]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for t in trials:
        quant = quant_of(t)
        if quant not in found or t["p50_ms"] < found[quant]["p50_ms"]:
            found[quant] = {
                "number": t["number"],
                "p50_ms": t["p50_ms"],
                **{k: t.get(k) for k in ("accuracy", "tflite_bytes", "gzip_bytes")},
            }
    return found
