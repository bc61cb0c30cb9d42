"""A cheap, deterministic measurement for the search tests (no TensorFlow).

The figures follow from the recipe alone, so the study's storage, resume, deduplication and
constraints are tested with real Optuna and fast trials; ``tests/test_search.py`` also runs
the real measurement (optimize + bench) end to end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tfedge.search.objectives import Built, Measured

LATENCY = {"int8": 1.0, "int16x8": 1.6, "float16": 2.0, "dynamic": 1.4, "none": 2.0}
BYTES = {"int8": 25_000, "int16x8": 27_000, "float16": 50_000, "dynamic": 26_000, "none": 100_000}
CALLS = "SEARCH_TEST_CALLS"  # a file that gets one line per measured recipe
HANG = "SEARCH_TEST_HANG"  # "N:PATH": the Nth measurement writes PATH, then waits to be killed


class CheapMeasure:
    """Figures from the recipe: sparsity and clusters shrink gzip bytes and cost accuracy.

    ``bench_seconds``: each bench holds its device that long. ``meet``: a folder where the
    first bench of each trial on each device waits (up to 30 s) until ``meet_count``
    devices have started one, so that the devices measure at the same time.
    """

    def __init__(self, bench_seconds: float = 0.0, meet: str = "", meet_count: int = 0):
        self.bench_seconds, self.meet, self.meet_count = bench_seconds, meet, meet_count

    def build(self, recipe, trial_dir: Path) -> Built:
        quant = recipe.convert.quant
        options = {p.pass_name: p for p in recipe.passes}
        sparsity = options["prune"].target_sparsity if "prune" in options else 0.0
        clustered = "cluster" in options
        gzip = BYTES[quant] * (1 - 0.8 * sparsity) * (0.6 if clustered else 1.0)
        accuracy = 0.97 - 0.1 * sparsity**2 - (0.01 if clustered else 0.0)
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "model.tflite").write_bytes(b"TFL3" + recipe.canonical_sha256.encode())
        (trial_dir / "latency_ms").write_text(str(LATENCY[quant] * (1 - 0.3 * sparsity)))
        if os.environ.get(CALLS):
            with open(os.environ[CALLS], "a") as handle:
                handle.write(recipe.canonical_sha256 + "\n")
            _hang_if_asked(Path(os.environ[CALLS]))
        return Built(
            model=str(trial_dir / "model.tflite"),
            score=accuracy,
            accuracy=accuracy,
            mse=None,
            tflite_bytes=BYTES[quant],
            gzip_bytes=int(gzip),
            float32_bytes=100_000,
        )

    def bench(self, built: Built, device, trial_dir: Path) -> Measured:
        if self.meet and trial_dir.parent.name == "trials":
            self._meet(device.name)
        time.sleep(self.bench_seconds)
        latency = float((trial_dir / "latency_ms").read_text())
        return built.measured(latency, 20.0, {"target": device.target, "device": device.name})

    def _meet(self, name: str) -> None:
        folder = Path(self.meet)
        folder.mkdir(exist_ok=True)
        (folder / name).touch()
        deadline = time.monotonic() + 30
        while len(list(folder.iterdir())) < self.meet_count and time.monotonic() < deadline:
            time.sleep(0.05)


cheap_measure = CheapMeasure()


def _hang_if_asked(calls: Path) -> None:
    if not os.environ.get(HANG):
        return
    count, marker = os.environ[HANG].split(":", 1)
    if len(calls.read_text().split()) == int(count):
        Path(marker).write_text(str(os.getpid()))
        time.sleep(600)  # until the test kills this process


def run_search(out: str, trials: str, space_text: str) -> None:
    """A search with the cheap measurement, as a separate process would run it."""
    from tfedge.search import search
    from tfedge.search.space import parse_space

    names = ("model.keras", "train.npz", "test.npz")
    paths = [str(Path(out).parent / name) for name in names]
    search(*paths, out, trials=int(trials), space=parse_space(space_text), measure=cheap_measure)
