"""Over-the-air model delivery.

* ``push``/``rollback``/``status`` (:mod:`tfedge.ota.push`): one device over SSH, with an
  on-device hash check, a smoke test and an atomic switch of a ``current`` symlink. It
  speaks the device package's model-directory protocol (:mod:`tfedge_device.modeldir`)
  over SFTP (:mod:`tfedge.ota.sftp_backend`).
* ``ota init/publish/refresh/rotate-keys/serve`` (:mod:`tfedge.ota.repository`): a signed
  python-tuf repository of models, with model metadata in the signed ``custom`` field.
* the device agent lives in the device package (:mod:`tfedge_device.agent`, ``tfedge-agent``
  on a device); ``python -m tfedge.ota.agent`` still runs it on a host.

This package's ``__init__`` stays light.

Example:
    >>> target_path("kws"), target_path("kws", group="canary")
    ('models/kws.tflite', 'groups/canary/models/kws.tflite')
"""

from __future__ import annotations

from tfedge_device import NAME_PATTERN, target_path, valid_name

__all__ = ["NAME_PATTERN", "target_path", "valid_name"]
