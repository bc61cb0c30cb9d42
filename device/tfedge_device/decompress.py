"""Streaming decompression of a downloaded model in bounded memory (the device side).

The agent downloads a compressed form of a model (``lzma`` always; ``zstd`` when the
``zstandard`` package imports) and decompresses it here, reading and writing fixed-size
chunks: memory stays near the decoder's own (about 9 MB for xz preset 6) whatever the
model's size. The output is capped at the length the signed metadata gives, so a hostile
stream cannot fill the disk; the caller then checks the signed sha256 of the result.

It also runs as a script, which ``tfedge push`` sends to the device as ``python -c`` (no file
to upload or tamper with): ``--codecs`` prints the codecs this device decodes, and
``DST CODEC MAX_LENGTH`` decompresses standard input into the new file DST, fsyncs it and
prints ``{"written": N}`` (else ``{"error": ...}``, exit 1, DST removed).

Example:
    >>> with open("m.tflite.xz", "rb") as src, open("m.tflite", "wb") as dst:
    ...     decompress_stream(src, dst, "lzma", max_length=97_088)
    97088
"""

from __future__ import annotations

import contextlib
import json
import lzma
import os
import sys
from typing import BinaryIO, cast

CHUNK = 64 * 1024  # bytes read from the compressed file and written out per step
LZMA_MEMLIMIT = 64 * 1024 * 1024  # refuse xz streams needing more (preset 9 needs ~65 MB)
ZSTD_MAX_WINDOW = 1 << 24  # 16 MiB: zstd -19 uses at most 8 MiB

__all__ = ["CHUNK", "DecompressError", "available_codecs", "decompress_stream", "main"]


class DecompressError(Exception):
    """The compressed stream is bad, truncated, too large, or its codec is unknown here."""


def available_codecs() -> tuple[str, ...]:
    """The codecs this device decodes: ``lzma`` (standard library), ``zstd`` if installed."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return ("lzma",)
    return ("lzma", "zstd")


def decompress_stream(src: BinaryIO, dst: BinaryIO, codec: str, max_length: int) -> int:
    """Decompress ``src`` into ``dst`` chunk by chunk; return the number of bytes written.

    Raises:
        DecompressError: unknown codec, corrupt or truncated stream, data after the end of
            the stream, or more than ``max_length`` bytes of output.
    """
    if codec not in available_codecs():
        raise DecompressError(f"codec {codec!r} is not available on this device")
    try:
        if codec == "lzma":
            return _lzma(src, dst, max_length)
        return _zstd(src, dst, max_length)
    except lzma.LZMAError as exc:
        raise DecompressError(f"bad {codec} stream: {exc}") from exc


def _lzma(src: BinaryIO, dst: BinaryIO, max_length: int) -> int:
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=LZMA_MEMLIMIT)
    written = 0
    while not decoder.eof:
        data = b""
        if decoder.needs_input:
            data = src.read(CHUNK)
            if not data:
                raise DecompressError("the lzma stream is truncated")
        out = decoder.decompress(data, max_length=CHUNK)
        written = _write(dst, out, written, max_length)
    if decoder.unused_data or src.read(1):
        raise DecompressError("data after the end of the lzma stream")
    return written


def _zstd(src: BinaryIO, dst: BinaryIO, max_length: int) -> int:
    import zstandard

    decoder = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    written = 0
    try:
        head = src.read(18)  # a frame header's largest size; no seek: src may be a pipe
        size = zstandard.frame_content_size(head)  # -1: not in the header
        with decoder.stream_reader(
            cast(BinaryIO, _Prepended(head, src)),
            read_size=CHUNK,
            read_across_frames=False,
            closefd=False,
        ) as reader:
            while out := reader.read(CHUNK):
                written = _write(dst, out, written, max_length)
    except zstandard.ZstdError as exc:
        raise DecompressError(f"bad zstd stream: {exc}") from exc
    if size >= 0 and written != size:
        raise DecompressError("the zstd stream is truncated")
    if src.read(1):
        raise DecompressError("data after the end of the zstd stream")
    return written


def _write(dst: BinaryIO, out: bytes, written: int, max_length: int) -> int:
    written += len(out)
    if written > max_length:
        raise DecompressError(f"the stream decompresses to more than {max_length} bytes")
    dst.write(out)
    return written


class _Prepended:
    """``src`` read after the bytes ``head`` already taken from it."""

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        self.head, self.src = head, src

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.src.read(size)
        out = self.head if size < 0 else self.head[:size]
        self.head = self.head[len(out) :]
        return out


def main(argv: list[str] | None = None) -> int:
    """``--codecs``: print ``{"codecs": [...]}``. ``DST CODEC MAX_LENGTH``: decompress standard
    input into the new file DST (never an existing one), fsync it, print ``{"written": N}``;
    on a bad stream print ``{"error": ...}``, remove DST and return 1."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--codecs"]:
        print(json.dumps({"codecs": list(available_codecs())}))
        return 0
    dst, codec, limit = args[0], args[1], int(args[2])
    try:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as out:
                written = decompress_stream(sys.stdin.buffer, out, codec, limit)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
    except (DecompressError, OSError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps({"written": written}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
