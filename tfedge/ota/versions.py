"""The model directory on a device, shared by ``tfedge push`` (over SSH) and the agent.

Layout (one model per directory)::

    MODEL_DIR/
      versions/<sha256>.tflite        every kept version, named by its content hash
      versions/<sha256>.golden.npz    its golden input and expected outputs (smoke/health test)
      current -> versions/<sha>.tflite  the active model: a symlink switched by rename(2)
      manifest.json                   name and version history (newest last)

The ``current`` symlink is the single source of truth for what is active: it is replaced
with one ``rename``, so a reader (or a power cut) sees either the old or the new model,
never a mix. The manifest is history only; every function here tolerates a manifest that
is one step ahead of or behind the symlink (a crash between the two writes).

This module runs on the device: standard library only.

Example:
    >>> d = ModelDir("/var/lib/tfedge/kws")
    >>> d.current_sha()
    '3f1c...'
    >>> previous_sha(d.manifest(), d.current_sha())
    'a07e...'
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

MANIFEST_SCHEMA = 1
CURRENT = "current"
VERSIONS = "versions"
MANIFEST = "manifest.json"
DEFAULT_KEEP = 3


# ---------------------------------------------------------------- durable file primitives
def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames and new names in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON to a temporary sibling, fsync it, rename it over ``path``, fsync the directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(path.parent)


def read_json(path: str | os.PathLike, default=None):
    """The JSON in ``path``, or ``default`` when it is missing or unreadable."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------- the manifest (pure functions)
def new_manifest(name: str) -> dict:
    return {"schema": MANIFEST_SCHEMA, "name": name, "history": [], "rejected": []}


def make_record(sha: str, source: str, event: str = "install", **extra) -> dict:
    """One history entry: which bytes became active, when, from where, and why."""
    return {"sha256": sha, "time": now_iso(), "source": source, "event": event, **extra}


def add_record(manifest: dict, record: dict) -> dict:
    """A copy of ``manifest`` with ``record`` appended (newest last)."""
    return dict(manifest, history=[*manifest.get("history", []), record])


def record_for(manifest: dict, sha: str | None) -> dict | None:
    """The newest install record of ``sha`` (rollbacks copy it), or None."""
    for record in reversed(manifest.get("history", [])):
        if record["sha256"] == sha:
            return record
    return None


def previous_sha(manifest: dict, current: str | None, exists=lambda sha: True) -> str | None:
    """The version that was active before ``current``: what ``rollback`` restores.

    Records newer than the last activation of ``current`` (an install that crashed before
    its switch) are ignored.
    """
    history = manifest.get("history", [])
    newest = max((i for i, r in enumerate(history) if r["sha256"] == current), default=None)
    if newest is None:
        return None
    for record in reversed(history[:newest]):
        if record["sha256"] != current and exists(record["sha256"]):
            return record["sha256"]
    return None


def shas_to_keep(manifest: dict, current: str | None, keep: int) -> list[str]:
    """The ``keep`` most recently active distinct versions, always including ``current``."""
    kept = [current] if current else []
    for record in reversed(manifest.get("history", [])):
        if len(kept) >= max(keep, 1):
            break
        if record["sha256"] not in kept:
            kept.append(record["sha256"])
    return kept


def trim_history(manifest: dict, limit: int = 100) -> dict:
    return dict(manifest, history=manifest.get("history", [])[-limit:])


# ---------------------------------------------------------------- a local model directory
class ModelDir:
    """The versioned model directory at ``root`` on this machine (the agent's view)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.versions = self.root / VERSIONS
        self.current_link = self.root / CURRENT
        self.manifest_path = self.root / MANIFEST

    def ensure(self) -> "ModelDir":
        self.versions.mkdir(parents=True, exist_ok=True)
        return self

    def model_path(self, sha: str) -> Path:
        return self.versions / f"{sha}.tflite"

    def golden_path(self, sha: str) -> Path:
        return self.versions / f"{sha}.golden.npz"

    def current_sha(self) -> str | None:
        """The hash the ``current`` symlink names, or None before the first install."""
        try:
            target = os.readlink(self.current_link)
        except (FileNotFoundError, OSError):
            return None
        name = os.path.basename(target)
        return name[: -len(".tflite")] if name.endswith(".tflite") else None

    def manifest(self, name: str = "") -> dict:
        return read_json(self.manifest_path) or new_manifest(name)

    def save_manifest(self, manifest: dict) -> None:
        write_json_atomic(self.manifest_path, trim_history(manifest))

    def install_file(self, staged: Path, sha: str) -> Path:
        """Move a verified, fsynced file from staging (same filesystem) into ``versions/``."""
        final = self.model_path(sha)
        os.replace(staged, final)
        fsync_dir(self.versions)
        return final

    def switch_to(self, sha: str) -> None:
        """Point ``current`` at ``versions/<sha>.tflite`` with one rename, then fsync the directory."""
        if not self.model_path(sha).is_file():
            raise FileNotFoundError(f"{self.model_path(sha)} is missing")
        tmp = self.root / f".{CURRENT}.{os.getpid()}.tmp"
        _unlink(tmp)
        os.symlink(f"{VERSIONS}/{sha}.tflite", tmp)
        os.replace(tmp, self.current_link)
        fsync_dir(self.root)

    def prune(self, manifest: dict, keep: int = DEFAULT_KEEP) -> list[str]:
        """Delete versions beyond the ``keep`` most recent; return the removed hashes."""
        kept = set(shas_to_keep(manifest, self.current_sha(), keep))
        removed = []
        for path in self.versions.iterdir():
            sha = path.name.split(".")[0]
            if sha not in kept and not path.name.startswith("."):
                _unlink(path)
                removed.append(sha)
        return sorted(set(removed))

    def clean_partials(self) -> list[str]:
        """Remove leftovers of interrupted uploads or downloads (``.*.part``/``.tmp``)."""
        removed = []
        for folder in (self.root, self.versions):
            for path in folder.glob(".*"):
                if path.name.endswith((".part", ".tmp")):
                    _unlink(path)
                    removed.append(path.name)
        return removed
