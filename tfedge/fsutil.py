"""File-system helpers for every output tfedge writes on the host.

Never leave a half-written file or folder: write to a temporary sibling, fsync it, rename it
over the target, then fsync the directory so the rename itself survives a power cut. Files
get the mode a plain ``open()`` would give them (``0o666 & ~umask``, so 0644 under the usual
022), not the 0600 of ``tempfile.mkstemp``; secrets ask for their mode explicitly.

Example:
    >>> write_bytes_atomic("out/model.tflite", blob)            # 0644 under umask 022
    >>> write_bytes_atomic("keys/root.json", key, mode=0o600)   # private
    >>> sha256_file("out/model.tflite")[:12]
    '3f2a9c0d1b7e'
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tfedge.errors import OutputError


def check_writable(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if its directory exists and is writable, else raise OutputError."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"output {path} is a directory", "give a file name, e.g. model.tflite")
    if not parent.is_dir():
        raise OutputError(
            f"output directory {parent} does not exist", f"create it first: mkdir -p {parent}"
        )
    if not os.access(parent, os.W_OK):
        raise OutputError(
            f"cannot write to {parent}", "choose an output path in a writable directory"
        )
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    The file gets ``mode`` if given, else the umask's default for a new file. On any
    exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is
    left as it was.
    """
    path = check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise OutputError(
            f"cannot write to {path.parent} ({exc.strerror})",
            "choose an output path in a writable directory",
        ) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, default_file_mode() if mode is None else mode)
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically and return the path (``mode``: see atomic_path)."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file under the current umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # Reading the umask means setting it; do it once per process (not thread-safe otherwise).
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder ``new`` in place of ``target`` (same file system).

    ``target`` is never missing and never half-replaced: the old folder is renamed aside,
    the new one renamed in, and only then is the old one deleted.
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
    else:
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
