"""What every runner shares: the job to run, the device script's argv, reading its answer.

A runner (local, qemu, ssh) only decides *where* the device script runs and how files get
there; this module builds the script's arguments and turns its JSON (or its crash) into
a report dict or a typed error.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path

import tfedge_device
from tfedge.errors import BenchError, DataError, TargetError

# The benchmark script of the device package, and the files that must sit next to each
# other on a target for it to run there as a plain file (no package installed).
DEVICE_DIR = Path(tfedge_device.__file__).resolve().parent
DEVICE_SCRIPT = DEVICE_DIR / tfedge_device.SCRIPT
DEVICE_FILES = {name: DEVICE_DIR / name for name in tfedge_device.SCRIPT_FILES}


@dataclass(frozen=True)
class Job:
    """One benchmark of one model, independent of the target."""

    model: Path
    threads: int | None = None
    runs: int = 50
    warmup: int = 1
    min_secs: float = 1.0
    data: Path | None = None
    xnnpack: bool = True
    cpus: str | None = None
    keep_outputs: bool = False
    timeout: float = 600.0
    alternates: tuple[Path, ...] = ()  # more models timed in turn with ``model`` (op profile)
    rounds: int = 1

    def script_args(
        self,
        model: str,
        data: str | None = None,
        outputs: str | None = None,
        alternates: list[str] | None = None,
    ) -> list[str]:
        """Arguments for the device script, given where model/data/outputs (and the
        alternates) live on the target."""
        args = [
            model,
            "--runs",
            str(self.runs),
            "--warmup",
            str(self.warmup),
            "--min-secs",
            str(self.min_secs),
        ]
        if self.warmup == 0:
            args += ["--warmup-min-secs", "0"]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if data:
            args += ["--data", data]
        if outputs:
            args += ["--save-outputs", outputs]
        if not self.xnnpack:
            args.append("--no-xnnpack")
        if self.cpus:
            args += ["--cpus", self.cpus]
        if alternates:
            args += ["--rounds", str(self.rounds), "--alternates", *alternates]
        return args


def parse_report(stdout: str, stderr: str, returncode: int, model: Path, where: str) -> dict:
    """The device script's JSON report, or a typed error that says what went wrong where.

    Raises:
        BenchError: the runtime crashed, the model cannot be loaded, or no JSON came back.
        TargetError: the target has no working runtime (the hint has the install command).
        DataError: the data does not fit the model.
    """
    if returncode is not None and returncode < 0:
        raise _crash(returncode, stderr, model, where)
    report = last_json(stdout)
    if report is None:
        tail = " | ".join(stderr.strip().splitlines()[-3:]) or f"exit status {returncode}"
        raise BenchError(
            f"the device script gave no report on {where}: {tail}",
            "run it by hand there: python3 bench.py MODEL.tflite (or tfedge-bench-device)",
        )
    if "error" in report:
        raise _reported_error(report, model, where)
    return report


def _crash(returncode: int, stderr: str, model: Path, where: str) -> BenchError:
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return BenchError(
        f"the TFLite runtime crashed ({name}) running {model.name} on {where}; "
        "tfedge itself is unaffected",
        "the model is malformed or hostile, or hits a runtime bug: "
        "check it with `tfedge inspect`, re-convert it",
    )


def _reported_error(report: dict, model: Path, where: str) -> Exception:
    kind, message, hint = report.get("kind"), report.get("error", ""), report.get("hint", "")
    if kind == "runtime_missing":
        return TargetError(f"no TFLite runtime on {where}: {message}", hint)
    if kind == "data_invalid":
        return DataError(f"on {where}: {message}", hint)
    if kind == "model_invalid":
        return BenchError(f"{model.name} cannot be loaded on {where}: {message}", hint)
    return BenchError(
        f"the device script failed on {where}: {message}", hint or "run it with --debug"
    )


def last_json(stdout: str) -> dict | None:
    """The last line of ``stdout`` that is a JSON object, or None (what the device tools print)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def check_model_file(model: Path) -> Path:
    """Refuse a missing, empty or non-TFLite file before any target is involved."""
    from tfedge.errors import ModelLoadError
    from tfedge.fsutil import open_regular

    with open_regular(model, "model", ModelLoadError, "check the path") as handle:
        head = handle.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise ModelLoadError(
            f"{model} is not a TFLite model (no TFL3 identifier)",
            "pass a .tflite file written by the TFLite converter or `tfedge convert`",
        )
    return model
