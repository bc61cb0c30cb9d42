"""What runs on a board: numpy, a TFLite runtime and tuf, never TensorFlow or the host package.

Modules, in the order a model meets them on a device:

* :mod:`tfedge_device.interpreter`: find the TFLite runtime that works here, load a model,
  feed it, read its outputs, compare them with a golden file.
* :mod:`tfedge_device.bench`: the benchmark script (``tfedge-bench-device``). With
  ``interpreter.py`` next to it, it also runs as a plain file copied to a board
  (``SCRIPT_FILES``): that is how ``tfedge bench`` and ``tfedge push`` use it.
* :mod:`tfedge_device.modeldir`: the model-directory protocol (``versions/``, ``current``,
  ``manifest.json``) over a small file-operations backend; the local one is here, the host
  brings an SFTP one for ``tfedge push``.
* :mod:`tfedge_device.signature`: a model's input/output signature and runtime versions.
* :mod:`tfedge_device.smoke`, :mod:`tfedge_device.journal`, :mod:`tfedge_device.config`,
  :mod:`tfedge_device.agent`: the update agent (``tfedge-agent``).

This ``__init__`` imports only the standard library: the host imports it to find the
script's files.

Example:
    >>> target_path("kws"), target_path("kws", group="canary")
    ('models/kws.tflite', 'groups/canary/models/kws.tflite')
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

__version__ = "0.1.0"

# The files a board needs to run the benchmark script without installing this package.
SCRIPT_FILES = ("bench.py", "interpreter.py")
SCRIPT = SCRIPT_FILES[0]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def target_path(name: str, group: str | None = None) -> str:
    """The TUF target path of model ``name``, for everyone or for one device group."""
    base = f"models/{name}.tflite"
    return f"groups/{group}/{base}" if group else base


def valid_name(text: str) -> bool:
    """Whether ``text`` is a usable model or group name (letters, digits, '.', '_', '-')."""
    return bool(NAME_PATTERN.match(text or ""))


def child_env() -> dict[str, str]:
    """The environment for ``python -m tfedge_device.<module>`` in a child process: this one,
    plus where this package is when it is not on the default path (e.g. a source checkout), so
    the child imports the same code."""
    package_parent = str(Path(__file__).resolve().parents[1])
    if package_parent in map(_resolved, sys.path):
        return dict(os.environ)
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=package_parent + (os.pathsep + path if path else ""))


def _resolved(entry: str) -> str:
    try:
        return str(Path(entry or ".").resolve())
    except OSError:
        return entry
