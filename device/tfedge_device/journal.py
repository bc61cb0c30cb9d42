"""The agent's journal: the last install step it made durable, so a restart can resume or roll back.

Steps, in order (``STEPS``)::

    download_start -> downloaded -> verified -> smoke_tested -> staged
      -> switching -> switched -> health_checked -> committed

Before ``switching`` nothing visible has changed: a restart discards the staging files and
starts over. From ``switching`` on, the ``current`` symlink may name the new model: a
restart finishes the switch and re-runs the health check, which commits or rolls back.
A rollback in progress is journalled as ``rolling_back`` and is redone on restart.

Standard library only.

Example:
    >>> j = Journal("/var/lib/tfedge/kws/journal.json")
    >>> j.write("download_start", sha256="3f1c...", model_version=4, previous="a07e...")
    >>> j.read()["step"]
    'download_start'
"""

from __future__ import annotations

import os
from pathlib import Path

from tfedge_device.modeldir import is_sha256, now_iso, read_json, unlink, write_json_atomic

STEPS = (
    "download_start",
    "downloaded",
    "verified",
    "smoke_tested",
    "staged",
    "switching",
    "switched",
    "health_checked",
    "committed",
)
ROLLING_BACK = "rolling_back"
PRE_SWITCH = STEPS[: STEPS.index("switching")]


class Journal:
    """A small JSON file rewritten atomically (and fsynced) at every step."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def read(self) -> dict | None:
        """The journalled step, or None when there is none or it is not one this agent wrote:
        the hashes it names (files it may delete or switch to) must be sha256 hex digests."""
        entry = read_json(self.path)
        if not isinstance(entry, dict) or entry.get("step") not in (*STEPS, ROLLING_BACK):
            return None
        previous = entry.get("previous")
        if not is_sha256(entry.get("sha256")) or not (previous is None or is_sha256(previous)):
            return None
        return entry

    def write(self, step: str, **data) -> dict:
        """Record ``step`` (keeping earlier fields of this install); durable when it returns."""
        if step not in STEPS and step != ROLLING_BACK:
            raise ValueError(f"unknown journal step {step!r}")
        entry = dict(self.read() or {}, **data, step=step, time=now_iso())
        write_json_atomic(self.path, entry)
        return entry

    def clear(self) -> None:
        unlink(self.path)
