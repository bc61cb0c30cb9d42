"""Compression passes, found by name: ``prune``, ``cluster``, ``qat``, ``distill``, ``low_rank``.

Importing this package does not import TensorFlow; a pass imports it when it runs.

Example:
    >>> from tfedge.passes import build_pass, pass_names
    >>> pass_names()
    ['cluster', 'distill', 'low_rank', 'prune', 'qat']
"""

from __future__ import annotations

from tfedge.passes.base import PassConfig, PassContext, PassResult, TrainConfig
from tfedge.passes.registry import PASSES, build_pass, pass_names

__all__ = [
    "PASSES",
    "PassConfig",
    "PassContext",
    "PassResult",
    "TrainConfig",
    "build_pass",
    "pass_names",
]
