"""Reading ``.npz`` and ``.npy`` files without trusting them (numpy and the standard library only).

Headers first: a swapped format (``.npy`` bytes in an ``.npz`` and the reverse), a header that
claims more data than the file holds, arrays over the memory cap (:func:`max_data_bytes`) and
zip bombs (from the zip headers: sizes and compression ratio) are one DataError before any array
is allocated; reading never goes past the sizes the headers declare. ``allow_pickle`` is never
on: object arrays are refused. No TensorFlow here, so the benchmark and OTA code can check a
file before a child process loads it.

Example:
    >>> arrays, y = read_npz(Path("models/digits/test.npz"))
    >>> sorted(arrays), y.shape
    (['x'], (360,))
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from tfedge.errors import DataError
from tfedge.fsutil import check_regular_file, open_regular

MAX_DATA_BYTES = 8 << 30
"""The most array bytes one data file may hold (all arrays together, as loaded; at most half
of this machine's memory), unless ``TFEDGE_MAX_DATA_BYTES`` says otherwise: a 2.5 MB zip bomb
must not fill the memory."""
MAX_NPZ_ARRAYS = 1000
BOMB_RATIO = 200
"""A compressed ``.npz`` member over :data:`BOMB_MIN_BYTES` that unpacks more than this many
times its size is refused from the headers (deflate's limit is about 1032x)."""
BOMB_MIN_BYTES = 64 << 20


def max_data_bytes() -> int:
    """The cap on a data file's array bytes: ``TFEDGE_MAX_DATA_BYTES`` or :data:`MAX_DATA_BYTES`."""
    if "TFEDGE_MAX_DATA_BYTES" in os.environ:
        try:
            return int(os.environ["TFEDGE_MAX_DATA_BYTES"])
        except ValueError:
            pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return MAX_DATA_BYTES
    return min(MAX_DATA_BYTES, memory // 2)


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def read_npz(
    path: Path, headers_only: bool = False
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Every array of an ``.npz``, sizes capped from the zip headers and again while reading.

    ``headers_only``: check the zip and ``.npy`` headers, read no data, return nothing.
    """
    cap = max_data_bytes()
    hint = "write it with numpy.savez"
    with open_regular(path, "data", DataError, "check the path") as handle:
        head = handle.read(8)
        if head.startswith(NPY_MAGIC):
            raise DataError(
                f"{path} holds a single .npy array, not an .npz archive",
                "rename it to .npy, or save arrays x and y with numpy.savez",
            )
        handle.seek(0)
        try:
            with zipfile.ZipFile(handle) as archive:
                members = [i for i in archive.infolist() if i.filename.endswith(".npy")]
                _check_declared_sizes(path, members, cap)
                arrays, budget = {}, cap
                for info in members:
                    with archive.open(info) as member:
                        stream = _CappedReader(member, info.file_size, path)
                        where = f"{path}, array '{info.filename[: -len('.npy')]}'"
                        if headers_only:
                            budget -= _npy_header(stream, where, info.file_size, budget)[3]
                            continue
                        array = _read_npy_stream(stream, where, info.file_size, budget)
                    budget -= array.nbytes
                    arrays[info.filename[: -len(".npy")]] = array
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
            raise DataError(f"{path} is not a readable .npz file ({_short(exc)})", hint) from None
        except NotImplementedError as exc:  # an unsupported compression method
            raise DataError(f"{path} is not a readable .npz file ({_short(exc)})", hint) from None
    y = arrays.pop("y", None)
    return arrays, y


def _check_declared_sizes(path: Path, members: list[zipfile.ZipInfo], cap: int) -> None:
    """Refuse from the zip's headers, before unpacking: too many arrays, too many bytes, or a
    compression ratio only a zip bomb has (numpy.savez stores; savez_compressed of real data
    rarely shrinks it 100x)."""
    if len(members) > MAX_NPZ_ARRAYS:
        raise DataError(
            f"{path} holds {len(members):,} arrays, more than the {MAX_NPZ_ARRAYS:,} tfedge reads",
            "save one array per model input and y",
        )
    total = 0
    for info in members:
        total += info.file_size
        if info.file_size > cap or total > cap:
            raise DataError(
                f"{path} unpacks to more than {cap:,} bytes ({info.filename}: "
                f"{info.file_size:,} bytes from {info.compress_size:,})",
                "use a smaller data file, or raise the limit with TFEDGE_MAX_DATA_BYTES=BYTES",
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > BOMB_MIN_BYTES and ratio > BOMB_RATIO:
            raise DataError(
                f"{path}: {info.filename} unpacks {info.compress_size:,} bytes to "
                f"{info.file_size:,} ({ratio:,.0f}x): a zip bomb, not data",
                "save real data with numpy.savez (uncompressed)",
            )


class _CappedReader(io.RawIOBase):
    """A read-only stream that fails once more than ``limit`` bytes have been read."""

    def __init__(self, raw, limit: int, path: Path) -> None:
        self.raw, self.limit, self.count, self.path = raw, limit, 0, path

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self.limit - self.count + 1 if size is None or size < 0 else size
        data = self.raw.read(min(want, self.limit - self.count + 1))
        self.count += len(data)
        if self.count > self.limit:
            raise DataError(
                f"{self.path} unpacks to more bytes than its headers declare or than "
                f"{self.limit:,}",
                "the file is damaged or hostile; write it again with numpy.savez",
            )
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _npy_header(stream, where: str, size: int, budget: int):
    """``(shape, fortran_order, dtype, data bytes)`` of the ``.npy`` header at ``stream``,
    checked against what the stream holds (``size`` bytes in all) and ``budget``."""
    fmt = np.lib.format
    version = fmt.read_magic(stream)
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = read_header(stream)
    if dtype.hasobject:
        raise DataError(
            f"{where} holds Python objects, which tfedge does not load",
            "store numbers: x.astype(np.float32)",
        )
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    available = size - stream.count
    if nbytes > available:
        raise DataError(
            f"{where} is truncated or its header lies: the header declares {nbytes:,} bytes "
            f"of data, the file holds {max(available, 0):,}",
            "the file is damaged; write it again with numpy.save / numpy.savez",
        )
    if nbytes > budget:
        raise DataError(
            f"{where} holds {nbytes:,} bytes of data, over the {budget:,} bytes tfedge loads",
            "use a smaller data file, or raise the limit with TFEDGE_MAX_DATA_BYTES=BYTES",
        )
    return shape, fortran, dtype, nbytes


def _read_npy_stream(stream, where: str, size: int, budget: int) -> np.ndarray:
    """One ``.npy`` of ``size`` bytes from ``stream``, its header checked before any data.

    The header's shape must fit in what the stream holds (a header claiming terabytes is
    refused, not allocated) and in ``budget``; the data is read in blocks into the array.
    """
    shape, fortran, dtype, nbytes = _npy_header(stream, where, size, budget)
    array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    view = memoryview(array.reshape(-1, order="A").view(np.uint8))  # type: ignore[arg-type]
    done = 0
    while done < nbytes:
        got = stream.readinto(view[done : done + (16 << 20)])
        if not got:
            raise DataError(
                f"{where} is truncated: {done:,} of {nbytes:,} bytes of data",
                "the file is damaged; write it again with numpy.save / numpy.savez",
            )
        done += got
    return array


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def check_data_file(path: str | Path) -> Path:
    """Check an ``.npz``/``.npy`` before another process loads it (e.g. the benchmark script):
    a regular file whose headers are sound and within the caps. Reads no array data.

    Raises:
        DataError: what :func:`load_data` would say about the file's form and size.
    """
    path = check_regular_file(path, "data file", DataError, "check the path")
    if path.suffix == ".npz":
        read_npz(path, headers_only=True)
    elif path.suffix == ".npy":
        read_npy(path, headers_only=True)
    return path


def read_npy(path: Path, headers_only: bool = False) -> np.ndarray:
    hint = "write it with numpy.save"
    with open_regular(path, "data", DataError, "check the path") as handle:
        head = handle.read(8)
        if head.startswith(ZIP_MAGIC):
            raise DataError(
                f"{path} is an .npz archive, not a single .npy array", "rename it to .npz"
            )
        handle.seek(0)
        size = os.fstat(handle.fileno()).st_size
        try:
            stream = _CappedReader(handle, size, path)
            if headers_only:
                _npy_header(stream, str(path), size, max_data_bytes())
                return np.empty(0)
            return _read_npy_stream(stream, str(path), size, max_data_bytes())
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"{path} is not a readable .npy file ({_short(exc)})", hint) from None
