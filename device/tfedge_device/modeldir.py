"""The model directory on a device: one protocol, used by the agent and by ``tfedge push``.

Layout (one model per directory)::

    MODEL_DIR/
      versions/<sha256>.tflite        every kept version, named by its content hash
      versions/<sha256>.golden.npz    its golden input and expected outputs (smoke/health test)
      current -> versions/<sha>.tflite  the active model: a symlink switched by rename(2)
      manifest.json                   name and version history (newest last)

The ``current`` symlink is the single source of truth for what is active: it is replaced
with one ``rename``, so a reader (or a power cut) sees either the old or the new model,
never a mix. The manifest is history only; every method here tolerates a manifest that is
one step ahead of or behind the symlink (a crash between the two writes).

:class:`ModelDir` speaks the protocol over a small file-operations backend
(:class:`FileOps`, paths relative to the model directory): :class:`LocalFiles` here, for
the agent on the device itself, and an SFTP backend on the host for ``tfedge push``
(``tfedge.ota.sftp_backend``). Standard library only.

Example:
    >>> d = ModelDir("/var/lib/tfedge/kws")       # a path means LocalFiles
    >>> d.current_sha()
    '3f1c...'
    >>> previous_sha(d.manifest(), d.current_sha())
    'a07e...'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Protocol

MANIFEST_SCHEMA = 1
CURRENT = "current"
VERSIONS = "versions"
MANIFEST = "manifest.json"
DEFAULT_KEEP = 3
PARTIAL_SUFFIXES = (".part", ".tmp")
PUBLIC_FILE_MODE, PUBLIC_DIR_MODE = 0o644, 0o755  # what the agent writes for other users
_SHA = re.compile(r"[0-9a-f]{64}\Z")
_VERSION_FILE = re.compile(r"([0-9a-f]{64})\.(tflite|golden\.npz)\Z")


def is_sha256(value) -> bool:
    """True for a lowercase hex sha256: the only thing a version file may be named after."""
    return isinstance(value, str) and _SHA.match(value) is not None


class ModelDirError(Exception):
    """The model directory is damaged, or a file did not arrive intact."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


# ---------------------------------------------------------------- the backend interface
class FileOps(Protocol):
    """File operations inside one directory; ``rel`` paths are POSIX and relative to it."""

    def where(self, rel: str = "") -> str:
        """Where ``rel`` is, for messages and for programs run there (a path or a URL)."""

    def makedirs(self, rel: str) -> None: ...

    def listdir(self, rel: str) -> list[str]:
        """Names in folder ``rel``; empty when it does not exist."""

    def read_bytes(self, rel: str) -> bytes:
        """The file's bytes; FileNotFoundError when it does not exist."""

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Create or truncate ``rel``, write ``data`` and fsync it (the protocol renames)."""

    def put(self, local: str | os.PathLike, rel: str) -> None:
        """Copy the local file ``local`` to ``rel`` and fsync it."""

    def rename(self, src: str, dst: str) -> None:
        """Atomically rename ``src`` over ``dst`` (replacing it)."""

    def symlink(self, target: str, rel: str) -> None: ...

    def readlink(self, rel: str) -> str | None:
        """The link's target; None when ``rel`` is missing or not a symlink."""

    def remove(self, rel: str) -> None:
        """Delete file ``rel``; no error when it is already gone."""

    def sha256(self, rel: str) -> str | None:
        """The hex sha256 of ``rel`` computed where it is stored; None when missing."""

    def fsync_dir(self, *rels: str) -> None:
        """Make new names and renames in these folders durable."""

    def free_bytes(self) -> int: ...


# ---------------------------------------------------------------- durable local primitives
def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a local file, read in 1 MiB blocks."""
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


def unlink(path: str | os.PathLike) -> None:
    """Delete a file; no error when it is already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class LocalFiles:
    """:class:`FileOps` on this machine's file system, under ``root``.

    New files get the mode a plain ``open()`` gives (``0o666 & ~umask``); with ``public``
    (the agent), files written here are 0644 and folders it creates 0755 whatever the umask,
    so status.json and the manifest are readable by a dashboard running as another user.
    """

    def __init__(self, root: str | os.PathLike, public: bool = False) -> None:
        self.root = Path(root)
        self.public = public

    def path(self, rel: str = "") -> Path:
        return self.root / rel if rel else self.root

    def where(self, rel: str = "") -> str:
        return str(self.path(rel))

    def makedirs(self, rel: str) -> None:
        path = self.path(rel)
        created = [p for p in (path, *path.parents) if not p.exists()] if self.public else []
        path.mkdir(parents=True, exist_ok=True)
        for folder in created:
            os.chmod(folder, PUBLIC_DIR_MODE)

    def listdir(self, rel: str) -> list[str]:
        try:
            return os.listdir(self.path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def read_bytes(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def write_bytes(self, rel: str, data: bytes) -> None:
        with open(self.path(rel), "wb") as handle:
            if self.public:
                os.fchmod(handle.fileno(), PUBLIC_FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def put(self, local: str | os.PathLike, rel: str) -> None:
        shutil.copyfile(local, self.path(rel))
        fsync_file(self.path(rel))

    def rename(self, src: str, dst: str) -> None:
        os.replace(self.path(src), self.path(dst))

    def symlink(self, target: str, rel: str) -> None:
        os.symlink(target, self.path(rel))

    def readlink(self, rel: str) -> str | None:
        try:
            return os.readlink(self.path(rel))
        except OSError:
            return None

    def remove(self, rel: str) -> None:
        """Delete ``rel``, only ever inside ``root``: its folder is resolved (``..`` and
        symlinks) and must be ``root`` or below it; the last name itself is never followed."""
        path = self.path(rel)
        folder = os.path.realpath(path.parent)
        root = os.path.realpath(self.root)
        if folder != root and not folder.startswith(root.rstrip(os.sep) + os.sep):
            raise ModelDirError(
                f"refusing to delete {path}: it resolves to {folder}, outside {root}",
                f"remove the symlink or '..' that leads out of {root}",
            )
        unlink(os.path.join(folder, path.name))

    def sha256(self, rel: str) -> str | None:
        try:
            return sha256_file(self.path(rel))
        except (FileNotFoundError, IsADirectoryError):
            return None

    def fsync_dir(self, *rels: str) -> None:
        for rel in rels or ("",):
            fsync_dir(self.path(rel))

    def free_bytes(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize


def write_durable(files: FileOps, rel: str, data: bytes, sync_dir: bool = True) -> None:
    """Write ``data`` to a temporary sibling, fsync it, rename it over ``rel``, fsync the folder
    (unless ``sync_dir`` is False: the caller fsyncs that folder next)."""
    tmp = _partial_name(rel)
    try:
        files.write_bytes(tmp, data)
        files.rename(tmp, rel)
    except BaseException:
        with contextlib.suppress(OSError):  # best effort: a later clean_partials removes it
            files.remove(tmp)
        raise
    if sync_dir:
        files.fsync_dir(posixpath.dirname(rel))


def write_json_atomic(path: str | os.PathLike, data, public: bool = False) -> None:
    """Write JSON to local ``path`` durably (temporary sibling, fsync, rename, fsync folder);
    ``public``: mode 0644 whatever the umask."""
    path = Path(path)
    text = json.dumps(data, indent=1, sort_keys=True)
    write_durable(LocalFiles(path.parent, public), path.name, text.encode())


def read_json(path: str | os.PathLike, default=None):
    """The JSON in local ``path``, or ``default`` when it is missing or unreadable."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default


def _partial_name(rel: str) -> str:
    folder, name = posixpath.split(rel)
    return posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.part")


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


# ---------------------------------------------------------------- the protocol
class ModelDir:
    """The versioned model directory behind ``files`` (a :class:`FileOps`, or a local path)."""

    def __init__(self, files: FileOps | str | os.PathLike) -> None:
        self.files: FileOps = LocalFiles(files) if isinstance(files, (str, os.PathLike)) else files

    def ensure(self) -> ModelDir:
        self.files.makedirs(VERSIONS)
        return self

    def where(self, rel: str = "") -> str:
        return self.files.where(rel)

    @staticmethod
    def model_file(sha: str) -> str:
        return f"{VERSIONS}/{_checked_sha(sha)}.tflite"

    @staticmethod
    def golden_file(sha: str) -> str:
        return f"{VERSIONS}/{_checked_sha(sha)}.golden.npz"

    # ---- reading
    def current_sha(self, strict: bool = False) -> str | None:
        """The hash the ``current`` symlink names, or None before the first install.

        ``strict``: a ``current`` that names anything but ``versions/<sha256>.tflite`` is a
        ModelDirError (not "nothing installed")."""
        link = self.files.readlink(CURRENT)
        name = posixpath.basename(link or "")
        sha = name[: -len(".tflite")] if name.endswith(".tflite") else None
        sha = sha if is_sha256(sha) else None  # the agent installs over anything else
        if strict and link is not None and (link != f"{VERSIONS}/{name}" or sha is None):
            raise ModelDirError(
                f"{self.where(CURRENT)} points to {link!r}, not to versions/<sha256>.tflite",
                "the directory was changed by hand; fix or remove the link on the device",
            )
        return sha

    def manifest(self, name: str = "", strict: bool = False) -> dict:
        """The manifest; a new one when missing. A damaged one is replaced by a new one,
        or (``strict``) raises ModelDirError."""
        try:
            manifest = json.loads(self.files.read_bytes(MANIFEST))
        except FileNotFoundError:
            return new_manifest(name)
        except ValueError as exc:
            if strict:
                raise ModelDirError(
                    f"{self.where(MANIFEST)} is not valid JSON ({exc})",
                    "fix or remove the damaged manifest on the device",
                ) from exc
            return new_manifest(name)
        if strict and not _manifest_ok(manifest):
            raise ModelDirError(
                f"{self.where(MANIFEST)} is not a tfedge manifest (a name and a history of "
                "records with a sha256 are expected)",
                "fix or remove the damaged manifest on the device",
            )
        return manifest

    def version_shas(self) -> list[str]:
        """The hashes of the model files in ``versions/``."""
        found = (_VERSION_FILE.match(n) for n in self.files.listdir(VERSIONS))
        return sorted(m.group(1) for m in found if m and m.group(2) == "tflite")

    def has_version(self, sha: str) -> bool:
        return sha in self.version_shas()

    def leftovers(self) -> list[str]:
        """Temporary files that an interrupted upload or download left in ``versions/``."""
        return [n for n in self.files.listdir(VERSIONS) if _is_partial(n)]

    # ---- writing
    def write_durable(self, rel: str, data: bytes, sync_dir: bool = True) -> None:
        write_durable(self.files, rel, data, sync_dir)

    def save_manifest(self, manifest: dict, sync_dir: bool = True) -> None:
        """Write the manifest durably (``sync_dir`` False: a switch fsyncs the folder next)."""
        text = json.dumps(trim_history(manifest), indent=1, sort_keys=True)
        self.write_durable(MANIFEST, text.encode(), sync_dir)

    def put_verified(
        self, local: str | os.PathLike, rel: str, sha: str, sync_dir: bool = True
    ) -> bool:
        """Copy ``local`` to ``rel`` through a fsynced ``.part`` sibling whose hash is checked
        where it is stored; False (nothing copied) when ``rel`` already has these bytes."""
        if self.files.sha256(rel) == sha:
            return False
        tmp = _partial_name(rel)
        self.files.put(local, tmp)
        found = self.files.sha256(tmp)
        if found != sha:
            self.files.remove(tmp)
            raise ModelDirError(
                f"sha256 mismatch in {self.where(rel)} after the copy ({found} != {sha})",
                "the copy was corrupted or the disk is full; check `df -h` on the device and retry",
            )
        self.files.rename(tmp, rel)
        if sync_dir:
            self.files.fsync_dir(posixpath.dirname(rel))
        return True

    def add_version(self, local: str | os.PathLike, sha: str, sync_dir: bool = True) -> bool:
        """Upload a model file as ``versions/<sha>.tflite``; False when it is already there."""
        return self.put_verified(local, self.model_file(sha), sha, sync_dir)

    def install_staged(self, staged: str, sha: str) -> None:
        """Move a verified, fsynced file from ``staged`` (same file system) into ``versions/``."""
        self.files.rename(staged, self.model_file(sha))
        self.files.fsync_dir(VERSIONS)

    def switch_to(self, sha: str) -> None:
        """Point ``current`` at ``versions/<sha>.tflite`` by one rename; fsync the directory."""
        if not self.has_version(sha):
            raise FileNotFoundError(f"{self.where(self.model_file(sha))} is missing")
        tmp = f".{CURRENT}.{uuid.uuid4().hex[:8]}.tmp"
        self.files.symlink(self.model_file(sha), tmp)
        self.files.rename(tmp, CURRENT)
        self.files.fsync_dir("")

    def clear_current(self) -> None:
        """Remove ``current`` (a first install that was rolled back: nothing is active)."""
        self.files.remove(CURRENT)
        self.files.fsync_dir("")

    def remove_version(self, sha: str) -> None:
        for rel in (self.model_file(sha), self.golden_file(sha)):
            self.files.remove(rel)

    def prune(self, manifest: dict, keep: int = DEFAULT_KEEP) -> list[str]:
        """Delete versions beyond the ``keep`` most recent; return the removed file names."""
        kept = set(shas_to_keep(manifest, self.current_sha(), keep))
        removed = []
        for name in sorted(self.files.listdir(VERSIONS)):
            match = _VERSION_FILE.match(name)  # only ever version files: nothing else in there
            if match and match.group(1) not in kept:
                self.files.remove(f"{VERSIONS}/{name}")
                removed.append(name)
        return removed

    def clean_partials(self) -> list[str]:
        """Remove leftovers of interrupted uploads or downloads (``.*.part`` / ``.*.tmp``)."""
        removed = []
        for folder in ("", VERSIONS):
            for name in self.files.listdir(folder):
                if _is_partial(name):
                    self.files.remove(posixpath.join(folder, name))
                    removed.append(name)
        return removed


def _is_partial(name: str) -> bool:
    return name.startswith(".") and name.endswith(PARTIAL_SUFFIXES)


def _checked_sha(sha: str) -> str:
    if not is_sha256(sha):
        raise ModelDirError(
            f"{sha!r} is not a sha256: version files are named by their hash",
            "the journal or manifest was changed by hand; remove it",
        )
    return sha


def _manifest_ok(manifest) -> bool:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("name", ""), str):
        return False
    history = manifest.get("history", [])
    return isinstance(history, list) and all(
        isinstance(r, dict) and isinstance(r.get("sha256"), str) for r in history
    )
