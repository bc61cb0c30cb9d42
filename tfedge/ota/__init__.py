"""Over-the-air model delivery.

* ``push``/``rollback``/``status`` (:mod:`tfedge.ota.push`): one device over SSH, with an
  on-device hash check, a smoke test and an atomic switch of a ``current`` symlink.
* ``ota init/publish/refresh/rotate-keys/serve`` (:mod:`tfedge.ota.repository`): a signed
  python-tuf repository of models, with model metadata in the signed ``custom`` field.
* the device agent (:mod:`tfedge.ota.agent`, also ``python -m tfedge.ota.agent``): polls
  the repository, verifies, smoke-tests, switches atomically, health-checks and rolls back.

This package's ``__init__`` stays light: the agent runs on devices without TensorFlow.

Example:
    >>> target_path("kws"), target_path("kws", group="canary")
    ('models/kws.tflite', 'groups/canary/models/kws.tflite')
"""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def target_path(name: str, group: str | None = None) -> str:
    """The TUF target path of model ``name``, for everyone or for one device group."""
    base = f"models/{name}.tflite"
    return f"groups/{group}/{base}" if group else base


def valid_name(text: str) -> bool:
    return bool(NAME_PATTERN.match(text or ""))
