"""File-system helpers for every file tfedge reads or writes on the host.

Inputs: only regular files are opened (:func:`check_regular_file`, :func:`open_regular`,
:func:`read_text_file`): a FIFO or a device would block a read forever. Outputs: never one
of the inputs (:func:`check_not_input`); terminating signals clean up like Ctrl-C
(:func:`signals_as_interrupt`).

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
import errno
import hashlib
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tfedge.errors import OutputError, TfedgeError, UsageError

NAME_MAX = 255
"""The longest file name (bytes) of the file systems tfedge writes to (ext4, xfs, btrfs, tmpfs)."""
CONFIG_MAX_BYTES = 1 << 20
"""The largest YAML file (recipe, profile, inventory) tfedge reads: real ones are a few KB."""
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words: ``a regular file``, ``a FIFO (named pipe)``, ..."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def check_regular_file(
    path: str | os.PathLike,
    what: str = "file",
    error: type[TfedgeError] = UsageError,
    hint: str = "give the path of a regular file",
) -> Path:
    """Return ``path`` if it is a regular file (symlinks followed), else raise ``error``.

    Refuses, before anything opens it, what would hang or never end a read: a FIFO, a
    device, a socket, a directory; and a missing file or an over-long name, as one error.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise error(_stat_problem(path, what, exc), hint) from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is {file_kind(st.st_mode)}, not a regular file", hint)
    return path


def _stat_problem(path: Path, what: str, exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        longest = max((len(os.fsencode(p)) for p in path.parts), default=0)
        return f"{what} name is too long ({longest} bytes; the file system allows {NAME_MAX})"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"{what} {path} does not exist"
    return f"cannot read {what} {path} ({exc.strerror})"


@contextlib.contextmanager
def open_regular(
    path: str | os.PathLike,
    what: str = "file",
    error: type[TfedgeError] = UsageError,
    hint: str = "give the path of a regular file",
) -> Iterator:
    """Open ``path`` for binary reading only if it is a regular file, checked on the open file.

    ``O_NONBLOCK`` keeps the open itself from waiting on a FIFO swapped in after a check.
    """
    path = check_regular_file(path, what, error, hint)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise error(_stat_problem(path, what, exc), hint) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is {file_kind(st.st_mode)}, not a regular file", hint)
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_text_file(
    path: str | os.PathLike,
    what: str,
    error: type[TfedgeError],
    hint: str,
    max_bytes: int = CONFIG_MAX_BYTES,
) -> str:
    """The UTF-8 text of a small configuration file, or one ``error`` saying what is wrong.

    Refuses a non-regular file, one over ``max_bytes``, binary content (NUL bytes) and
    bytes that are not UTF-8 (naming the offset).
    """
    with open_regular(path, what, error, hint) as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"cannot read {what} {path} ({exc.strerror})", hint) from None
    if len(data) > max_bytes:
        raise error(
            f"{what} {path} is over {max_bytes:,} bytes, too large for a configuration file",
            hint,
        )
    if b"\0" in data:
        raise error(f"{what} {path} is a binary file, not YAML text", hint)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            "save it as UTF-8; " + hint,
        ) from None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file: same path, a symlink or a hard link to it."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(
    output: str | os.PathLike, inputs: Iterable, flag: str = "-o", folder: bool = False
) -> None:
    """Refuse an output that is one of the inputs (same path, symlink or hard link), lies
    inside an input folder, or (``folder``: an output folder that is replaced whole) holds an
    input. Checked before any work.

    Raises:
        UsageError: naming the input the output would destroy.
    """
    out = os.path.realpath(output)
    for source in inputs:
        if source is None or not isinstance(source, (str, os.PathLike)):
            continue
        src = os.path.realpath(source)
        inside = _within(out, src) or (folder and _within(src, out))
        if same_file(output, source) or inside:
            raise UsageError(
                f"output {output} would overwrite the input {source}",
                f"give {flag} a new {'folder' if folder else 'file'} name, apart from the inputs",
            )


def _within(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


class Terminated(KeyboardInterrupt):
    """A terminating signal (SIGTERM, SIGHUP, ...) turned into an interrupt, so cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


TERMINATING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name)
)


@contextlib.contextmanager
def signals_as_interrupt(signals: Iterable[int] = TERMINATING_SIGNALS) -> Iterator[None]:
    """Within the block, a terminating signal raises :class:`Terminated` (a KeyboardInterrupt).

    Every ``finally`` and ``with`` then cleans up as for Ctrl-C: temporary files and folders
    go, a child process is killed (``subprocess.run`` does it). Only the first signal raises;
    later ones are ignored until the block ends, so cleanup itself is never cut short.
    A no-op outside the main thread, where Python cannot install handlers, and for a signal
    that is ignored or already handled.
    """
    fired: list[int] = []

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        raise Terminated(signum)

    previous = {}
    try:
        for signum in signals:
            # Only where the signal would kill us: an ignored one (nohup) stays ignored, and
            # a handler of the embedding program stays in charge.
            if signal.getsignal(signum) == signal.SIG_DFL:
                previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def check_writable(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if its directory exists and is writable, else raise OutputError."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise OutputError(
            f"output name is {len(os.fsencode(path.name))} bytes long, over the file system's "
            f"{NAME_MAX}",
            "choose a shorter file name",
        )
    if path.is_dir():
        raise OutputError(f"output {path} is a directory", "give a file name, e.g. model.tflite")
    with contextlib.suppress(OSError):  # e.g. -o /dev/null: never replace a device or a FIFO
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise OutputError(
                f"output {path} is {file_kind(mode)}, not a regular file",
                "give a file name, e.g. model.tflite",
            )
    if not parent.is_dir():
        raise OutputError(
            f"output directory {parent} does not exist", f"create it first: mkdir -p {parent}"
        )
    if not os.access(parent, os.W_OK):
        raise OutputError(
            f"cannot write to {parent}", "choose an output path in a writable directory"
        )
    return path


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextlib.contextmanager
def made_parents(folder: str | os.PathLike) -> Iterator[Path]:
    """Create ``folder`` and its missing parents (``mkdir -p``) for the block; if the block
    fails, remove again those it created that are still empty."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for created in missing:  # deepest first
            with contextlib.suppress(OSError):
                created.rmdir()
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    The file gets ``mode`` if given, else the umask's default for a new file. On any
    exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is
    left as it was.
    """
    path = check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".part", dir=path.parent)
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


def temp_prefix(name: str) -> str:
    """``.NAME.`` for a temporary sibling, NAME cut so the whole name fits in NAME_MAX bytes.

    ``mkstemp`` adds 8 random characters and the caller a suffix (``.part``, up to 16 bytes).
    """
    room = NAME_MAX - 8 - 16 - 2
    encoded = os.fsencode(name)
    if len(encoded) > room:
        name = encoded[:room].decode("utf-8", "ignore") if isinstance(name, str) else name
    return f".{name}."


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
