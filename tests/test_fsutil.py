"""tfedge.fsutil: atomic writes honour the umask and never leave half-written output; hashes."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from tfedge.errors import OutputError
from tfedge.fsutil import atomic_path, made_parents, replace_dir, sha256_file, write_bytes_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the caller's afterwards."""
    import tfedge.fsutil as fsutil

    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)
        fsutil._UMASK = None  # the module reads the umask once per process

    yield set_mask
    os.umask(saved)
    fsutil._UMASK = None


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_honours_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    out = write_bytes_atomic(tmp_path / "model.tflite", b"abc")
    assert out.read_bytes() == b"abc" and _mode(out) == expected


def test_explicit_mode_keeps_secrets_private(tmp_path, umask):
    umask(0o022)
    assert _mode(write_bytes_atomic(tmp_path / "key", b"secret", mode=0o600)) == 0o600


def test_failed_write_leaves_the_old_file_and_no_leftovers(tmp_path):
    target = write_bytes_atomic(tmp_path / "report.json", b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_missing_output_directory_is_a_typed_error(tmp_path):
    with pytest.raises(OutputError, match="does not exist") as err:
        write_bytes_atomic(tmp_path / "nope" / "x.bin", b"")
    assert "mkdir -p" in err.value.hint


def test_replace_dir_swaps_whole_folders(tmp_path):
    out = tmp_path / "out"
    for content in ("first", "second"):
        new = tmp_path / f".out.{content}"
        new.mkdir()
        (new / "model.tflite").write_text(content)
        replace_dir(new, out)
        assert (out / "model.tflite").read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sha256_file_matches_hashlib_across_blocks(tmp_path):
    data = bytes(range(251)) * 12_600  # three 1 MiB blocks and a partial one
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_made_parents_creates_and_removes_only_what_it_made(tmp_path):
    (tmp_path / "kept").mkdir()
    with made_parents(tmp_path / "kept" / "a" / "b") as folder:
        assert folder.is_dir()
    assert (tmp_path / "kept" / "a" / "b").is_dir()  # success keeps them
    with pytest.raises(RuntimeError), made_parents(tmp_path / "kept" / "x" / "y"):
        raise RuntimeError("the run failed")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["a"]
    with pytest.raises(KeyboardInterrupt), made_parents(tmp_path / "kept" / "z" / "w") as folder:
        (folder / "partial-report").write_text("kept: the folder is not empty")
        raise KeyboardInterrupt
    assert (tmp_path / "kept" / "z" / "w" / "partial-report").exists()
