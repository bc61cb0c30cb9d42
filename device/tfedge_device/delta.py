"""Per-tensor delta updates, the device side: rebuild a new model from the installed one.

A delta (made on the host by :mod:`tfedge.ota.delta`) is an xz stream (lzma, preset 6: the
decoder needs about 9 MB) holding a header and a list of byte-range operations. The device
applies it without parsing the flatbuffer, reading and writing at most :data:`CHUNK` bytes
at a time, so memory stays bounded whatever the model's size.

Wire format (all integers little-endian, inside the xz stream)::

    header   b"TFEDELT1", base sha256 (32 raw bytes), new sha256 (32 raw bytes),
             base length (u64), new length (u64)
    ops      repeated, each a kind byte then its fields; they write the new file in order:
             1 COPY  base offset (u64), length (u64)              new = base[off:off+len]
             2 ADD   base offset (u64), length (u64), len bytes d  new[i] = base[off+i] + d[i]
                                                                   (mod 256)
             3 DATA  length (u64), len bytes                       new = the bytes
             0 END   the stream must end here (nothing after it)

The agent uses a delta only when the installed model's sha256 is the delta's signed base,
downloads it as its own TUF target (signed length and hash), and installs the result only
when it hashes to the full model's signed sha256 and length: :func:`apply_delta` checks
the header against both, every range against the base's length, the output against the
new length, and the sha256 of what it wrote.

Example:
    >>> with open(delta, "rb") as d, open(base, "rb") as b, open(out, "wb") as o:
    ...     apply_delta(d, b, o, base_sha256, new_sha256, new_length)
    97088
"""

from __future__ import annotations

import hashlib
import lzma
import os
import signal
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tfedge_device.decompress import CHUNK, LZMA_MEMLIMIT

MAGIC = b"TFEDELT1"
FORMAT = 1  # custom["tfedge"]["deltas"][i]["format"]
END, COPY, ADD, DATA = 0, 1, 2, 3
HEADER = struct.Struct("<8s32s32sQQ")
RANGE = struct.Struct("<QQ")
LENGTH = struct.Struct("<Q")
PAUSE_ENV = "TFEDGE_AGENT_PAUSE_AT"  # test hook: "delta_apply" stops after the first chunk

__all__ = [
    "ADD",
    "COPY",
    "DATA",
    "END",
    "FORMAT",
    "HEADER",
    "MAGIC",
    "DeltaError",
    "apply_delta",
    "delta_entry",
    "fetch_and_apply",
]


class DeltaError(Exception):
    """The delta is not for this base, is malformed, or does not rebuild the signed model."""


def delta_entry(custom: dict, base_sha256: str | None) -> dict | None:
    """The well-formed delta named by signed custom metadata (schema 4 or later) whose base
    is ``base_sha256``; None when there is none (then the compressed or full model)."""
    meta = custom.get("tfedge")
    if not base_sha256 or not isinstance(meta, dict):
        return None
    schema = meta.get("schema")
    if not isinstance(schema, int) or schema < 4:
        return None
    for entry in meta.get("deltas") or []:
        if (
            isinstance(entry, dict)
            and entry.get("base_sha256") == base_sha256
            and entry.get("format") == FORMAT
            and entry.get("codec") == "lzma"
            and isinstance(entry.get("target"), str)
            and isinstance(entry.get("length"), int)
            and isinstance(entry.get("hashes"), dict)
        ):
            return entry
    return None


def fetch_and_apply(updater, target, entry: dict, base: Path, packed: Path, staged: Path) -> int:
    """Download the delta ``entry`` names through TUF into ``packed`` and rebuild ``target``
    from the installed ``base`` into ``staged``; the number of bytes it downloaded.

    Raises:
        DeltaError: the delta is not the signed one, or does not rebuild ``target``.
        tuf errors: TUF refused the download (wrong length or hash, unreachable).
    """
    info = updater.get_targetinfo(entry["target"])
    if info is None or info.length != entry["length"] or info.hashes != entry["hashes"]:
        raise DeltaError("it is missing or not the one the model names")
    updater.download_target(info, filepath=str(packed))  # TUF checks length and hash
    with open(packed, "rb") as src, open(base, "rb") as old, open(staged, "wb") as dst:
        apply_delta(src, old, dst, entry["base_sha256"], target.hashes["sha256"], target.length)
    return int(info.length)


def apply_delta(
    src: BinaryIO,
    base: BinaryIO,
    dst: BinaryIO,
    base_sha256: str,
    new_sha256: str,
    new_length: int,
) -> int:
    """Apply the delta in ``src`` to ``base``, writing the new model to ``dst``; return its
    length. Memory is bounded by :data:`CHUNK` (plus the xz decoder's own).

    Raises:
        DeltaError: a header for another base or model, a malformed or truncated stream, a
            range outside the base, output longer or shorter than ``new_length``, or output
            whose sha256 is not ``new_sha256``.
    """
    stream = _Decoded(src)
    try:
        magic, base_sha, new_sha, base_len, new_len = HEADER.unpack(stream.read(HEADER.size))
    except struct.error as exc:
        raise DeltaError("the delta has no valid header") from exc
    if magic != MAGIC:
        raise DeltaError("not a tfedge delta (bad magic)")
    if base_sha.hex() != base_sha256:
        raise DeltaError(f"it is for base {base_sha.hex()[:12]}, not {base_sha256[:12]}")
    if new_sha.hex() != new_sha256 or new_len != new_length:
        raise DeltaError("it builds another model than the signed one")
    if base.seek(0, os.SEEK_END) != base_len:
        raise DeltaError("the installed base has another length than the delta's")
    out = _Output(dst, new_length)
    while True:
        kind = stream.read(1)[0]
        if kind == END:
            break
        if kind in (COPY, ADD):
            offset, length = RANGE.unpack(stream.read(RANGE.size))
            if offset + length > base_len:
                raise DeltaError(f"a range ends past the base ({offset + length} > {base_len})")
            _copy(stream, base, out, offset, length, add=kind == ADD)
        elif kind == DATA:
            (length,) = LENGTH.unpack(stream.read(LENGTH.size))
            for size in _chunks(length):
                out.write(stream.read(size))
        else:
            raise DeltaError(f"unknown operation {kind}")
    stream.finish()
    return out.finish(new_sha256)


def _chunks(length: int):
    while length > 0:
        size = min(CHUNK, length)
        yield size
        length -= size


def _copy(stream: "_Decoded", base: BinaryIO, out: "_Output", offset: int, length: int, add: bool):
    base.seek(offset)
    for size in _chunks(length):
        old = base.read(size)
        if len(old) != size:
            raise DeltaError("the installed base is shorter than it was")
        if add:
            diff = np.frombuffer(stream.read(size), np.uint8)
            old = (np.frombuffer(old, np.uint8) + diff).tobytes()  # uint8 wraps: mod 256
        out.write(old)


class _Output:
    """Writes the rebuilt model, capped at its signed length, hashing as it goes."""

    def __init__(self, dst: BinaryIO, limit: int) -> None:
        self.dst, self.limit, self.written = dst, limit, 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.written > self.limit:
            raise DeltaError(f"it writes more than the signed {self.limit} bytes")
        self.sha.update(data)
        self.dst.write(data)
        if os.environ.get(PAUSE_ENV) == "delta_apply":  # test hook: killed mid-application
            self.dst.flush()
            os.environ.pop(PAUSE_ENV)
            os.kill(os.getpid(), signal.SIGSTOP)

    def finish(self, sha256: str) -> int:
        if self.written != self.limit:
            raise DeltaError(f"it writes {self.written} bytes, not the signed {self.limit}")
        if self.sha.hexdigest() != sha256:
            raise DeltaError("it rebuilds bytes other than the signed model")
        return self.written


class _Decoded:
    """Exact reads of at most CHUNK bytes from an xz stream, decoded a chunk at a time."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=LZMA_MEMLIMIT)
        self.buf = b""

    def _more(self) -> bytes:
        data = b""
        if self.decoder.needs_input:
            data = self.src.read(CHUNK)
            if not data:
                raise DeltaError("the delta is truncated")
        try:
            return self.decoder.decompress(data, max_length=CHUNK)
        except lzma.LZMAError as exc:
            raise DeltaError(f"bad xz stream: {exc}") from exc

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if self.decoder.eof:
                raise DeltaError("the delta is truncated")
            self.buf += self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def finish(self) -> None:
        """After END: nothing may follow, neither in the xz stream nor after it."""
        if self.buf:
            raise DeltaError("data after the end of the delta")
        while not self.decoder.eof:
            if self._more():
                raise DeltaError("data after the end of the delta")
        if self.decoder.unused_data or self.src.read(1):
            raise DeltaError("data after the end of the xz stream")
