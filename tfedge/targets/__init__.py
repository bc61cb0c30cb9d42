"""Where models run: device profiles, and the local, emulated (qemu) and SSH benchmark targets.

Nothing here imports TensorFlow or the passes.
"""

from __future__ import annotations

from tfedge.targets.bench import BenchResult, bench

__all__ = ["BenchResult", "bench"]
