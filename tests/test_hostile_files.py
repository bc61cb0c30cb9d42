"""Hostile and careless data and configuration files (issue 12, part 2, and FIFOs of part 1).

Each case: exit 1 (2 for usage), one ``Error:`` line with a hint, no traceback, nothing left
behind, the input unchanged; bombs in a child process whose peak memory (``os.wait4``'s
``ru_maxrss``) and time are bounded. Only the signal case and the image folder need TensorFlow.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tfedge.errors import DataError, OutputError, ProfileError, RecipeError, UsageError

from .conftest import assert_one_error_line
from .peak_memory import run_with_peak_rss

REPO = Path(__file__).resolve().parents[1]
RPI4 = REPO / "tfedge" / "targets" / "device_profiles" / "rpi4.yaml"


# ------------------------------------------------------------------ helpers
def _alias_bomb(levels: int = 9) -> str:
    """A flow-style "billion laughs" (9^levels strings) in about 330 bytes."""
    text = '[&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
    for i in range(1, levels):
        text += f", &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]"
    return text + f", *{chr(96 + levels)}]"


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _tiny_tflite(path: Path) -> Path:
    """A valid full-int8 FULLY_CONNECTED model (4 inputs, 3 classes), built without TF."""
    from . import hostile_tflite

    return hostile_tflite.write(path, hostile_tflite.base())


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with its sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _child_wait4(code: str, timeout: float = 60.0, env: dict | None = None):
    """Run ``code`` in a fresh Python: (exit code, stderr, its own peak RSS in MB by wait4)."""
    argv = [sys.executable, "-c", textwrap.dedent(code)]
    returncode, err, _, peak_mb = run_with_peak_rss(
        argv, timeout, cwd=REPO, env={**os.environ, **(env or {})}
    )
    return returncode, err, peak_mb


# ------------------------------------------------------------------ FIFOs, devices, folders
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "{fifo}.tflite"],
        ["evaluate", "{fifo}.tflite", "--data", "{good_npz}"],
        ["evaluate", "{model}", "--data", "{fifo}.npz"],
        ["convert", "{fifo}.keras", "-o", "{tmp}/out.tflite", "--quant", "none"],
        ["convert", "{fifo}.tflite", "-o", "{tmp}/out.tflite", "--quant", "none"],
        ["bench", "{fifo}.tflite"],
        ["bench", "{model}", "--data", "{fifo}.npz"],
        ["bench", "{model}", "--inventory", "{fifo}.yaml"],
        ["profiles", "show", "{fifo}.yaml"],
        ["optimize", "{model}", "-r", "{fifo}.yaml", "--data", "{good_npz}", "--eval",
         "{good_npz}", "-o", "{tmp}/outdir"],
    ],
    ids=["inspect", "evaluate", "evaluate-data", "convert", "convert-tflite", "bench",
         "bench-data", "inventory", "profile", "recipe"],
)  # fmt: skip
def test_fifo_is_refused_not_read(run_cli, tmp_path, args):
    """A FIFO where a file is expected would block the read forever: refused by its type."""
    (tmp_path / "in").mkdir()
    model = _tiny_tflite(tmp_path / "in" / "m.tflite")
    good = tmp_path / "in" / "good.npz"
    np.savez(good, x=np.zeros((4, 4), np.float32), y=np.zeros(4, np.int64))
    suffix = Path(args[[i for i, a in enumerate(args) if "{fifo}" in a][0]]).suffix
    fifo = _fifo(tmp_path / "in" / f"pipe{suffix}")
    values = dict(fifo=str(fifo.with_suffix("")), model=model, good_npz=good, tmp=tmp_path)
    before = _snapshot(tmp_path / "in")
    result = run_cli(*[a.format(**values) for a in args], expect=None)
    assert result.exit_code in (1, 2), result.output
    assert_one_error_line(result, "FIFO", "not a regular file")
    assert "hint:" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # nothing written
    assert _snapshot(tmp_path / "in") == before


@pytest.mark.timeout(30)
def test_character_device_as_model_and_directory_as_profile(run_cli, tmp_path):
    result = run_cli("inspect", "/dev/zero", expect=1)
    assert_one_error_line(result, "/dev/zero", "character device")
    (tmp_path / "board.yaml").mkdir()
    result = run_cli("profiles", "show", tmp_path / "board.yaml", expect=1)
    assert_one_error_line(result, "board.yaml", "is a directory")


def test_check_regular_file_names_each_kind(tmp_path):
    from tfedge.fsutil import check_regular_file, read_text_file

    with pytest.raises(DataError, match="does not exist"):
        check_regular_file(tmp_path / "none.npz", "data", DataError)
    with pytest.raises(DataError, match="socket"):
        import socket

        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / "s.npz"))
        try:
            check_regular_file(tmp_path / "s.npz", "data", DataError)
        finally:
            sock.close()
    link = tmp_path / "link.yaml"
    link.symlink_to(_fifo(tmp_path / "p"))
    with pytest.raises(ProfileError, match="FIFO"):  # symlinks are followed
        read_text_file(link, "profile", ProfileError, "h")


# ------------------------------------------------------------------ data files
def test_npz_holding_npy_bytes_and_the_reverse(run_cli, tmp_path):
    x = np.zeros((4, 4), np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    (tmp_path / "a.npz").write_bytes(buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, x=x)
    (tmp_path / "b.npy").write_bytes(buf.getvalue())
    model = _tiny_tflite(tmp_path / "m.tflite")
    result = run_cli("evaluate", model, "--data", tmp_path / "a.npz", expect=1)
    assert_one_error_line(result, "a.npz", "single .npy array, not an .npz")
    result = run_cli("evaluate", model, "--data", tmp_path / "b.npy", expect=1)
    assert_one_error_line(result, "b.npy", "an .npz archive, not a single .npy")


def _npy_header(shape, descr="<f4") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * (118 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()


def test_npy_header_claiming_terabytes(run_cli, tmp_path):
    bad = tmp_path / "tera.npy"
    bad.write_bytes(_npy_header((10**12, 8, 8, 1)) + b"\0" * 64)
    result = run_cli("evaluate", _tiny_tflite(tmp_path / "m.tflite"), "--data", bad, expect=1)
    assert_one_error_line(result, "tera.npy", "header", "256,000,000,000,000 bytes")


@pytest.mark.parametrize(
    ("y", "fragment"),
    [
        (np.array(3), "single value"),
        (np.array([0.0, np.nan, 1.0, 2.0]), "NaN"),
        (np.array(["a", "b", "c", "d"]), "not numbers"),
    ],
    ids=["scalar", "nan", "strings"],
)
def test_bad_labels_are_one_error(run_cli, tmp_path, y, fragment):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 4), np.float32), y=y)
    result = run_cli("evaluate", _tiny_tflite(tmp_path / "m.tflite"), "--data", data, expect=1)
    assert_one_error_line(result, "d.npz", fragment)


@pytest.mark.parametrize("label", [999, 3, -1])
def test_labels_outside_the_models_classes(run_cli, tmp_path, label):
    """The tiny model has 3 classes: 3, 999 and -1 gave ``accuracy 0.0000`` with exit 0."""
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((5, 4), np.float32), y=np.array([0, 1, 2, 0, label]))
    result = run_cli("evaluate", _tiny_tflite(tmp_path / "m.tflite"), "--data", data, expect=1)
    assert_one_error_line(result, "1 label(s) outside the model's 3 classes", str(label))


def test_uint8_inputs_are_quantized_not_wrapped(tmp_path):
    """uint8 data holds real values, as for a Keras model: 200 must not wrap to int8 -56."""
    import tfedge
    from tfedge.io.data import Dataset

    model = _tiny_tflite(tmp_path / "m.tflite")
    x = np.random.default_rng(0).integers(0, 256, size=(16, 4)).astype(np.uint8)
    as_uint8 = tfedge.evaluate(model, Dataset(x, None, "u8")).outputs
    as_float = tfedge.evaluate(model, Dataset(x.astype(np.float32), None, "f32")).outputs
    np.testing.assert_array_equal(as_uint8, as_float)


def test_device_script_quantizes_integer_data(tmp_path):
    from tfedge_device.interpreter import prepare_input

    detail = {"shape": np.array([1, 2]), "dtype": np.int8, "quantization": (1.0, -128), "name": "x"}
    got = prepare_input(detail, np.array([[200, 0]], np.uint8))
    np.testing.assert_array_equal(got, np.array([[72, -128]], np.int8))  # 200 - 128, not -56


def _zip_bomb(path: Path, unpacked: int, declared: int | None = None) -> Path:
    """An .npz whose x.npy is ``unpacked`` bytes of zeros (compressed about 1000x)."""
    count = (unpacked - 128) // 4
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("x.npy", "w") as member:
            member.write(_npy_header((count,)))
            block = b"\0" * (1 << 22)
            left = count * 4
            while left:
                member.write(block[: min(left, len(block))])
                left -= min(left, len(block))
    if declared is not None:  # a central directory that lies about the unpacked size
        raw = bytearray(path.read_bytes())
        central = raw.rindex(b"PK\x01\x02")
        raw[central + 24 : central + 28] = declared.to_bytes(4, "little")
        path.write_bytes(bytes(raw))
    return path


LOAD = """
import sys
from tfedge.errors import TfedgeError
from tfedge.io.data import load_data
try:
    load_data(sys.argv[1] if len(sys.argv) > 1 else {path!r})
except TfedgeError as exc:
    print("Error:", exc, file=sys.stderr)
    sys.exit(exc.exit_code)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("declared", "env", "fragment"),
    [
        (None, {}, "zip bomb"),  # 1000x: refused from the zip headers, nothing unpacked
        (None, {"TFEDGE_MAX_DATA_BYTES": str(50 << 20)}, "unpacks to more than 52,428,800"),
        (4096, {}, "not a readable .npz"),  # the headers say 4 KiB: reading stops there
    ],
    ids=["ratio", "cap", "lying-headers"],
)
def test_npz_zip_bomb_stays_in_bounded_memory(tmp_path, declared, env, fragment):
    bomb = _zip_bomb(tmp_path / "bomb.npz", 300 << 20, declared)
    assert bomb.stat().st_size < 1 << 20
    code, err, peak_mb = _child_wait4(LOAD.format(path=str(bomb)), env=env)
    assert code == 1, err
    assert err.count("Error:") == 1 and fragment in err and "Traceback" not in err, err
    assert peak_mb < 200, f"peak RSS {peak_mb:.0f} MB loading a 300 MB bomb"


def test_npz_reader_keeps_data_exact(tmp_path):
    from tfedge.io.data import load_data

    x = np.asfortranarray(np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4))
    np.savez_compressed(tmp_path / "c.npz", x=x, y=np.arange(2))
    np.save(tmp_path / "f.npy", x)
    for name in ("c.npz", "f.npy"):
        got = load_data(tmp_path / name).x
        assert got.dtype == x.dtype and got.flags.writeable
        np.testing.assert_array_equal(got, x)


@pytest.mark.tf
def test_image_folder_with_mixed_sizes(run_cli, tmp_path):
    from tfedge._tf import import_tf

    tf = import_tf()
    for name, shape in (("cat/a.png", (8, 8, 1)), ("dog/b.png", (16, 8, 3))):
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        png = tf.io.encode_png(np.zeros(shape, np.uint8)).numpy()
        (tmp_path / "imgs" / name).write_bytes(png)
    result = run_cli(
        "evaluate", _tiny_tflite(tmp_path / "m.tflite"), "--data", tmp_path / "imgs", expect=1
    )
    assert_one_error_line(result, "images differ in size", "8x8x1", "16x8x3")


# ------------------------------------------------------------------ YAML and text files
@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("schema_version: 1\nname: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9"),
        (bytes(range(256)) * 4, "binary file"),
        (b"a: [" * 200 + b"]" * 200, "nested"),
        (b"&a [*a]", "recursive alias"),
    ],
    ids=["latin-1", "binary", "deep", "recursive"],
)
def test_profile_that_is_not_yaml_text(run_cli, tmp_path, content, fragment):
    bad = tmp_path / "board.yaml"
    bad.write_bytes(content)
    result = run_cli("profiles", "show", bad, expect=1)
    assert_one_error_line(result, "board.yaml", fragment)


def test_inventory_not_utf8(run_cli, tmp_path):
    inventory = tmp_path / "devices.yaml"
    inventory.write_bytes("devices:\n  - {name: caf\xe9, target: local}\n".encode("latin-1"))
    result = run_cli(
        "bench", _tiny_tflite(tmp_path / "m.tflite"), "--inventory", inventory, expect=2
    )
    assert_one_error_line(result, "devices.yaml", "not UTF-8")


BOMB_CODE = """
import sys
from tfedge.errors import TfedgeError
from tfedge.targets.profiles import load_profile
from tfedge.optimize.recipe import load_recipe
try:
    {call}
except TfedgeError as exc:
    print("Error:", exc, file=sys.stderr)
    sys.exit(exc.exit_code)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["profile-description", "recipe-layers"])
def test_yaml_alias_bomb_stays_in_bounded_memory(tmp_path, where):
    bomb = _alias_bomb()
    if where == "profile-description":
        text = "".join(
            f"description: {bomb}\n" if line.startswith("description:") else line
            for line in RPI4.read_text().splitlines(keepends=True)
        )
        call = f"load_profile({str(tmp_path / 'bomb.yaml')!r})"
    else:
        text = f"schema_version: 1\npasses:\n  - prune: {{target_sparsity: 0.5, layers: {bomb}}}\n"
        call = f"load_recipe({str(tmp_path / 'bomb.yaml')!r})"
    (tmp_path / "bomb.yaml").write_text(text)
    assert len(bomb) < 400
    started = time.monotonic()
    code, err, peak_mb = _child_wait4(BOMB_CODE.format(call=call))
    assert code == 1 and err.count("Error:") == 1 and "Traceback" not in err, err
    assert "alias" in err and "hint:" in err, err
    assert peak_mb < 200 and time.monotonic() - started < 30, peak_mb


def test_yaml_anchors_within_limits_still_load():
    from tfedge.safe_yaml import load_yaml

    data = load_yaml("a: &x [1, 2]\nb: *x\n", "test", RecipeError, "h")
    assert data == {"a": [1, 2], "b": [1, 2]}


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (("target_latency_ms: 50", "target_latency_ms: .nan"), "got nan"),
        (("max_ram_mb: 1024", "max_ram_mb: .inf"), "got inf"),
        (("name: rpi4", 'name: "rpi4\\n"'), "name must be"),
        (("cpu: cortex-a72", 'cpu: "cortex-a72\\nsecond line"'), "one line"),
    ],
    ids=["nan-budget", "inf-budget", "newline-name", "newline-cpu"],
)
def test_profile_values_that_were_accepted(run_cli, tmp_path, edit, fragment):
    text = RPI4.read_text()
    assert edit[0] in text
    (tmp_path / "p.yaml").write_text(text.replace(edit[0], edit[1]))
    result = run_cli("profiles", "show", tmp_path / "p.yaml", expect=1)
    assert_one_error_line(result, "p.yaml", fragment)


def test_names_with_a_trailing_newline_are_invalid():
    from tfedge.ota import valid_name

    assert valid_name("kws") and valid_name("kws-v1.2")
    for bad in ("kws\n", "kws\r\n", "\nkws", "a" * 65, ""):
        assert not valid_name(bad), repr(bad)


# ------------------------------------------------------------------ names and outputs
def test_bench_model_name_over_255_bytes(run_cli, tmp_path):
    result = run_cli("bench", tmp_path / ("a" * 300 + ".tflite"), expect=1)
    assert_one_error_line(result, "name is too long", "255")


def test_output_name_limits(tmp_path):
    from tfedge.fsutil import atomic_path, check_writable

    longest = tmp_path / ("b" * 244 + ".tflite")  # 251 bytes: the temporary name must fit too
    with atomic_path(longest) as tmp:
        assert len(tmp.name) <= 255
        tmp.write_bytes(b"x")
    assert longest.read_bytes() == b"x"
    with pytest.raises(OutputError, match="over the file system's 255"):
        check_writable(tmp_path / ("c" * 300 + ".tflite"))


@pytest.mark.parametrize("how", ["same", "hard-link", "other-path", "symlink"])
def test_convert_output_that_is_the_input(run_cli, tmp_path, how):
    model = tmp_path / "in.keras"
    model.write_bytes(b"PK\x03\x04 not read: refused before any work")
    (tmp_path / "sub").mkdir()
    output = {
        "same": model,
        "hard-link": tmp_path / "hard.keras",
        "other-path": tmp_path / "sub" / ".." / "in.keras",
        "symlink": tmp_path / "sub" / "link.keras",
    }[how]
    if how == "hard-link":
        os.link(model, output)
    if how == "symlink":
        output.symlink_to(model)
    before = _snapshot(tmp_path)
    result = run_cli("convert", model, "-o", output, "--quant", "none", expect=2)
    assert_one_error_line(result, "would overwrite the input")
    assert _snapshot(tmp_path) == before


def test_convert_output_that_is_the_calibration_data(run_cli, tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.zeros((4, 4), np.float32))
    model = _tiny_tflite(tmp_path / "m.keras")
    result = run_cli("convert", model, "--calib", calib, "-o", calib, expect=2)
    assert_one_error_line(result, "would overwrite the input", "calib.npz")


def test_optimize_outdir_holding_an_input(run_cli, tmp_path):
    """OUTDIR is replaced whole: an earlier output holding this run's model or data is refused
    (re-optimizing out/model.keras into out/ used to replace the model being read)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")  # an earlier `tfedge optimize` output
    np.savez(out / "train.npz", x=np.zeros((4, 4), np.float32), y=np.zeros(4, np.int64))
    for model in (out / "model.keras", tmp_path / "m.keras"):
        model.write_bytes(b"PK\x03\x04")
    np.savez(tmp_path / "t.npz", x=np.zeros((4, 4), np.float32), y=np.zeros(4, np.int64))
    before = _snapshot(tmp_path)
    for model, data in ((out / "model.keras", tmp_path / "t.npz"), (tmp_path / "m.keras", None)):
        result = run_cli(
            "optimize", model, "-r", "int8", "--data", data or out / "train.npz", "--eval",
            out / "train.npz", "-o", out, expect=2,
        )  # fmt: skip
        assert_one_error_line(result, "would overwrite the input")
    assert _snapshot(tmp_path) == before


def test_check_not_input_allows_distinct_paths(tmp_path):
    from tfedge.fsutil import check_not_input

    (tmp_path / "a.keras").write_bytes(b"a")
    check_not_input(tmp_path / "a.tflite", [tmp_path / "a.keras", None, np.zeros(2)])
    (tmp_path / "saved_model").mkdir()
    with pytest.raises(UsageError, match="would overwrite"):  # inside a SavedModel folder
        check_not_input(tmp_path / "saved_model" / "x.tflite", [tmp_path / "saved_model"])


# ------------------------------------------------------------------ terminating signals
SIGNAL_CHILD = """
import os, signal, sys, tempfile, time
from pathlib import Path
from tfedge.fsutil import Terminated, atomic_path, signals_as_interrupt
out = Path(sys.argv[1])
try:
    with signals_as_interrupt():
        with tempfile.TemporaryDirectory(dir=out.parent, prefix="work-"), atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            print("ready", flush=True)
            time.sleep(30)
except Terminated as stop:
    sys.exit(128 + stop.signum)
"""


def _default_signals() -> None:
    """A terminal's dispositions: a shell's background job (CI) starts with SIGQUIT and SIGINT
    ignored, which tfedge rightly leaves alone (like ``nohup``)."""
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
def test_terminating_signal_cleans_up_like_ctrl_c(tmp_path, signum):
    out = tmp_path / "o.tflite"
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_CHILD, str(out)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        preexec_fn=_default_signals,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    assert any(p.name.endswith(".part") for p in tmp_path.iterdir())
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == 128 + signum
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_an_ignored_hangup_stays_ignored(tmp_path):
    """Under ``nohup`` (SIGHUP ignored) a hang-up must not abort the run."""
    out = tmp_path / "o.tflite"
    code = "import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN)\n" + SIGNAL_CHILD
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(out)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        preexec_fn=_default_signals,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    proc.send_signal(signal.SIGHUP)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)  # still running
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("signum", "delay"),
    [(signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0), (signal.SIGKILL, 0.0)],
    ids=["TERM", "KILL", "KILL-while-worker-starts"],
)
def test_signal_during_convert_leaves_nothing(digits, tmp_path, signum, delay):
    """The CLI (a real conversion in its worker child) on SIGTERM: no .part, no temp folder.

    Even SIGKILL, which tfedge cannot catch: the worker learns of it (PR_SET_PDEATHSIG),
    removes the ``.part`` and the job folder, and ends instead of converting on. That holds
    also when tfedge dies while its worker is still importing (``delay`` 0: the job file is
    written just before the worker starts).
    """
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfedge", "convert", str(digits.model), "-o",
         str(out_dir / "o.tflite"), "--calib", str(digits.train)],
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(temp_root)},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(temp_root.glob("*/job.json")) and time.monotonic() < deadline:
        time.sleep(0.1)  # the worker's job exists: the conversion is under way
    time.sleep(delay)
    assert proc.poll() is None, "the conversion ended before the signal"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    if signum == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, err.decode()
        assert b"Traceback" not in err and b"Aborted: SIGTERM" in err, err.decode()
    deadline = time.monotonic() + 60  # the orphaned worker cleans up once the converter yields
    while (list(out_dir.iterdir()) or list(temp_root.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(out_dir.iterdir()) == []
    assert list(temp_root.iterdir()) == []


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_optimize_labels_outside_the_models_classes(run_cli, digits, tmp_path):
    """Checked with the data against the model, before any stage trains or converts."""
    with np.load(digits.train) as f:
        x, y = f["x"], f["y"].copy()
    y[5] = 999
    np.savez(tmp_path / "train.npz", x=x, y=y)
    result = run_cli(
        "optimize", digits.model, "-r", "int8", "--data", tmp_path / "train.npz", "--eval",
        digits.test, "-o", tmp_path / "out", expect=1,
    )  # fmt: skip
    assert_one_error_line(result, "training data", "outside the model's 10 classes", "999")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.npz"]


@pytest.mark.parametrize("output", ["/dev/null", "fifo"])
def test_output_that_is_a_device_or_fifo(run_cli, tmp_path, output):
    """``-o /dev/null`` (as root) used to replace the device node with a regular file."""
    target = _fifo(tmp_path / "out.tflite") if output == "fifo" else Path(output)
    model = tmp_path / "m.keras"
    model.write_bytes(b"PK\x03\x04")
    result = run_cli("convert", model, "-o", target, "--quant", "none", expect=1)
    assert_one_error_line(result, "not a regular file")
    assert not target.is_file()


@pytest.mark.timeout(60)
def test_bench_checks_data_headers_before_the_device_script_loads_them(run_cli, tmp_path):
    """bench hands --data to the device script (np.load): tfedge checks the headers first."""
    bomb = _zip_bomb(tmp_path / "bomb.npz", 300 << 20)
    result = run_cli("bench", _tiny_tflite(tmp_path / "m.tflite"), "--data", bomb, expect=1)
    assert_one_error_line(result, "bomb.npz", "zip bomb")
    tera = tmp_path / "tera.npy"
    tera.write_bytes(_npy_header((10**12, 4)) + b"\0" * 64)
    result = run_cli("bench", tmp_path / "m.tflite", "--data", tera, expect=1)
    assert_one_error_line(result, "tera.npy", "header lies")
