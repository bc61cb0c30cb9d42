"""Push a model to one device over SSH, with an atomic switch; roll back; show status.

The device gets the model directory of the device package (:mod:`tfedge_device.modeldir`:
``versions/<sha256>.tflite``, a ``current`` symlink, ``manifest.json``), through the same
:class:`~tfedge_device.modeldir.ModelDir` protocol the agent uses, over SFTP
(:mod:`tfedge.ota.sftp_backend`). Each step fails cleanly, before anything visible changes
on the device:

1. the host key is checked against known_hosts (never accepted silently);
2. the directory is one nobody else can change under the push: the model directory, every
   folder above it and ``versions/`` are real folders (not symlinks) owned by the pushing
   account or root and writable by no other account; ``current`` is a symlink into
   ``versions/`` and the manifest is well formed (else an error, never "nothing installed");
3. the model name is the one the directory holds (``name`` only asserts it; on a first push
   it defaults to the directory's name), and the input/output signature is compared with the
   active model's (``--allow-signature-change``);
4. leftovers of interrupted pushes are removed and free space is checked;
5. the model goes to ``versions/.<sha>.<random>.part`` (same directory), is fsynced, hashed
   *on the device*, then renamed to ``versions/<sha>.tflite`` (``posix-rename``). With
   ``compress`` (``auto``, the default: lzma unless samples of the model show it would save
   under 5%, as for random or dense int8 weights, where compressing costs more time than it
   saves; ``lzma``; ``zstd``) it is compressed while it is sent, as
   the standard input of the device's Python running :mod:`tfedge_device.decompress` (sent
   as ``python -c``), which decompresses it in fixed-size chunks into that ``.part``, capped
   at the model's length, and fsyncs it; the hash check and the rename are the same. zstd is
   used only when the device imports ``zstandard`` (else lzma, with a note); a device whose
   Python cannot run gets the model uncompressed (with a note);
6. the device script (``bench.py --smoke`` with ``interpreter.py``) is uploaded to a new
   private folder (in /tmp, random name, mode 0700), its sha256 is checked by the command that
   runs it; it loads the model, allocates, runs a golden input made on the host and compares
   the outputs within one quantization step; a malformed verdict is a failure;
7. ``current`` is replaced by one rename of a new symlink, and the directory is fsynced;
8. only the last ``keep`` versions stay (``versions/`` is checked again first, and only
   files named ``<sha256>.tflite`` / ``<sha256>.golden.npz`` are ever deleted).

``on_step(step, info)``, when given, is called between steps (``checked``, ``uploaded``,
``tools_uploaded``, ``smoke_tested``, ``switched``): tests use it to change the device at
exactly that point.

Connection, URL and host-key handling are the benchmark harness's (:mod:`tfedge.targets.ssh`).

Example:
    >>> r = push("kws_int8.tflite", "ssh://pi@raspberrypi.local/srv/models/kws")
    >>> r.sha256[:12], r.previous[:12], r.switched
    ('3f1c2a9d8e7b', 'a07e55c1d2f3', True)
    >>> rollback("ssh://pi@raspberrypi.local/srv/models/kws").sha256[:12]
    'a07e55c1d2f3'
"""

from __future__ import annotations

import contextlib
import numbers
import posixpath
import secrets
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfedge.errors import OtaError, TargetError, UsageError
from tfedge.fsutil import sha256_file
from tfedge.ota import compress as compression
from tfedge.ota import valid_name
from tfedge.ota.sftp_backend import SftpFiles, open_model_dir
from tfedge.targets import ssh
from tfedge.targets.job import DEVICE_FILES, DEVICE_SCRIPT, last_json
from tfedge_device.modeldir import (
    DEFAULT_KEEP,
    MANIFEST,
    VERSIONS,
    ModelDir,
    ModelDirError,
    add_record,
    make_record,
    previous_sha,
    record_for,
)

SPACE_MARGIN = 64 * 1024
AUTO_MIN_SAVING = 0.05  # compress="auto" sends the model as it is when lzma saves less
TOOLS_CHANGED = 86  # exit status of the smoke-test command when the script's sha256 differs
Step = Callable[[str, dict], None]


@dataclass
class PushResult:
    """What a push (or a rollback) did on one device."""

    target: str
    model_dir: str
    sha256: str
    previous: str | None
    switched: bool
    already_current: bool = False
    uploaded: bool = False
    smoke: dict | None = None
    removed: list = field(default_factory=list)
    cleaned: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    compression: str = "none"  # the codec the model was sent with ("none": as it is)
    model_bytes: int = 0  # the model's size
    sent_bytes: int = 0  # bytes of the model sent to the device (0: it was there already)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DeviceStatus:
    """The model directory on one device: what is active, what ``rollback`` would restore."""

    target: str
    model_dir: str
    name: str | None
    current: dict | None
    previous: dict | None
    versions: list
    leftovers: list
    history: list

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- public API
def push(
    model: str | Path,
    url: str,
    name: str | None = None,
    smoke_test: bool = True,
    allow_signature_change: bool = False,
    keep: int = DEFAULT_KEEP,
    golden: str | Path | None = None,
    on_step: Step | None = None,
    compress: str = "auto",
    **ssh_overrides,
) -> PushResult:
    """Install ``model`` as the active model of the directory at ``url`` (ssh://user@host/dir).

    ``name`` asserts which model the directory holds; by default it is the one it holds
    (the directory's name on a first push). ``compress`` (``auto``, ``lzma``, ``zstd`` or
    ``none``) is how the model travels; the device decompresses it and checks its sha256.

    Raises:
        UsageError: bad URL, name, keep or compress.  ModelLoadError: not a TFLite model.
        TargetError: host key, login, connection or device runtime problems.
        OtaError: a directory another account can change, another model's directory,
            signature changed, not enough space, hash mismatch, smoke test failed.
    """
    from tfedge.ota.golden import golden_npz
    from tfedge.ota.signature import signature_from_tflite

    model = Path(model)
    target = _target(url, ssh_overrides)
    name = _check_name(name) if name else None
    if keep < 2:
        raise UsageError(
            f"--keep {keep} would leave nothing to roll back to", "keep at least 2 versions"
        )
    if compress != "auto":
        compression.check_codec(compress)
    signature = signature_from_tflite(model)  # also proves it is a readable TFLite file
    blob = golden_npz(model, golden) if smoke_test else None
    job = _PushJob(model, name, signature, blob, allow_signature_change, keep, on_step, compress)
    clock = _Clock()
    with _model_dir(target) as device:
        clock.lap("connect")
        return _push(device, job, clock)


def rollback(url: str, name: str | None = None, **ssh_overrides) -> PushResult:
    """Switch the device back to the version that was active before the current one."""
    target = _target(url, ssh_overrides)
    with _model_dir(target) as device:
        return _rollback(device, _check_name(name) if name else None)


def device_status(url: str, **ssh_overrides) -> DeviceStatus:
    """Read the model directory at ``url`` without changing anything."""
    with _model_dir(_target(url, ssh_overrides)) as device:
        return _status(device.dir, device.label, device.files.root)


def local_status(path: str | Path) -> DeviceStatus:
    """Read a model directory on this machine (as ``push`` and the agent lay it out), no SSH."""
    root = Path(path)
    if not (root / VERSIONS).is_dir() and not (root / MANIFEST).is_file():
        raise OtaError(
            f"{root} is not a model directory (no {VERSIONS}/ or {MANIFEST})",
            "give the folder `tfedge push` or `tfedge agent --model-dir` writes, or "
            "ssh://user@host/path/to/model_dir for one on a device",
        )
    try:
        return _status(ModelDir(root), "local", str(root.resolve()))
    except ModelDirError as err:
        raise OtaError(err.message, err.hint) from err
    except OSError as err:
        raise OtaError(f"cannot read {root}: {err}", "check the folder and its files") from err


def _target(url: str, overrides: dict) -> ssh.SshTarget:
    target = ssh.parse_target(url, **overrides)
    if not url.split("?")[0].partition("//")[2].partition("/")[2]:
        raise UsageError(
            f"{url!r} names no model directory", "write ssh://user@host[:port]/path/to/model_dir"
        )
    return target


def _check_name(name: str) -> str:
    if not valid_name(name):
        raise UsageError(
            f"bad model name {name!r}", "use letters, digits, '.', '_' or '-' (e.g. kws)"
        )
    return name


@dataclass
class _Device:
    """The model directory on one device: the protocol, and the backend it runs over."""

    dir: ModelDir
    files: SftpFiles

    @property
    def label(self) -> str:
        return self.files.target.label


@contextlib.contextmanager
def _model_dir(target: ssh.SshTarget) -> Iterator[_Device]:
    """One SSH session on the model directory; its protocol errors become OtaErrors."""
    with open_model_dir(target) as files:
        try:
            files.check_trusted(VERSIONS, create=True)  # versions/ is made only in a safe folder
            yield _Device(ModelDir(files), files)
        except ModelDirError as err:
            raise OtaError(err.message, err.hint) from err


@dataclass
class _PushJob:
    model: Path
    name: str | None  # None: the directory's
    signature: dict
    golden: bytes | None
    allow_signature_change: bool
    keep: int
    on_step: Step | None = None
    compress: str = "none"

    def step(self, name: str, **info) -> None:
        if self.on_step is not None:
            self.on_step(name, info)


# ---------------------------------------------------------------- push
def _push(device: _Device, job: _PushJob, clock: _Clock) -> PushResult:
    manifest = device.dir.manifest(strict=True)
    name = _model_name(manifest, job.name, device)
    current = device.dir.current_sha(strict=True)
    sha = sha256_file(job.model)
    result = PushResult(device.label, device.files.root, sha, current, switched=False)
    result.model_bytes = job.model.stat().st_size
    if sha == current:
        result.already_current = True
        return result
    result.notes = _check_signature(manifest, current, job)
    result.cleaned = device.dir.clean_partials()
    _check_space(device, job)
    clock.lap("checks")
    job.step("checked", sha256=sha)
    golden = job.golden
    _upload(device, job, sha, result, sync_dir=golden is None)
    if golden is not None:  # versions/ is fsynced once, after both renames
        device.dir.write_durable(ModelDir.golden_file(sha), golden)
    clock.lap("upload")
    job.step("uploaded", sha256=sha)
    if job.golden is not None:
        result.smoke = _smoke_test(device, sha, job)
        clock.lap("smoke_test")
        job.step("smoke_tested", sha256=sha)
    record = make_record(
        sha, f"push {job.model.name}", bytes=job.model.stat().st_size, signature=job.signature
    )
    manifest = add_record(dict(manifest, name=name), record)
    device.dir.save_manifest(manifest, sync_dir=False)  # switch_to fsyncs the same folder
    device.dir.switch_to(sha)
    result.switched = True
    clock.lap("switch")
    job.step("switched", sha256=sha)
    result.removed = _prune(device, manifest, job.keep, sha)
    result.seconds = clock.laps
    return result


def _upload(device: _Device, job: _PushJob, sha: str, result: PushResult, sync_dir: bool) -> None:
    """Put the model at ``versions/<sha>.tflite`` (unless it is there already), compressed on
    the way when the device can decompress it; fills ``result``'s upload fields."""
    rel = ModelDir.model_file(sha)
    if device.files.sha256(rel) == sha:
        return
    codec = _codec_for(device, _worth_it(job, result.notes), result.notes)
    if codec == "none":
        device.dir.add_version(job.model, sha, sync_dir)
        sent = result.model_bytes
    else:
        sent = _send_compressed(device, job.model, sha, codec, result.model_bytes)
        if sync_dir:
            device.files.fsync_dir(VERSIONS)
    result.uploaded, result.compression, result.sent_bytes = True, codec, sent


def _worth_it(job: _PushJob, notes: list) -> str:
    """The codec asked for; for ``auto``, lzma unless it would save under AUTO_MIN_SAVING."""
    if job.compress != "auto":
        return job.compress
    ratio = compression.estimate_ratio(job.model, "lzma")
    if ratio > 1 - AUTO_MIN_SAVING:
        notes.append(
            f"sent uncompressed: lzma would save about {max(0.0, 1 - ratio):.0%} of this model "
            "(--compress lzma to compress it anyway)"
        )
        return "none"
    return "lzma"


def _codec_for(device: _Device, asked: str, notes: list) -> str:
    """``asked``, if the device's Python decodes it; else lzma, else none (with a note)."""
    if asked == "none":
        return asked
    python = device.files.target.python
    probe = device.files.run(_decompress_command(python, "--codecs"))
    codecs = (last_json(probe.stdout or "") or {}).get("codecs")
    if probe.exit_status != 0 or not isinstance(codecs, list) or "lzma" not in codecs:
        why = (probe.stderr or "").strip()[-200:] or f"exit {probe.exit_status}"
        notes.append(
            f"sent uncompressed: {python} on {device.label} cannot decompress ({why}); "
            "pass --remote-python, or --compress none"
        )
        return "none"
    if asked not in codecs:
        notes.append(
            f"sent with lzma: {python} on {device.label} has no zstandard package for zstd "
            "(pip install zstandard there to use it)"
        )
        return "lzma"
    return asked


def _send_compressed(device: _Device, model: Path, sha: str, codec: str, size: int) -> int:
    """Stream ``model`` compressed to the device's decompressor, which writes a ``.part`` in
    ``versions/``; check its sha256 there and rename it into place. Bytes sent."""
    files = device.files
    tmp = f"{VERSIONS}/.{sha}.tflite.{secrets.token_hex(4)}.part"
    command = _decompress_command(files.target.python, files.abs(tmp), codec, str(size))
    result, sent = files.run_with_input(command, compression.compress_file(model, codec))
    stdout = (result.stdout or b"").decode(errors="replace")
    report = last_json(stdout) or {}
    if result.exit_status != 0 or report.get("written") != size:
        files.remove(tmp)
        stderr = (result.stderr or b"").decode(errors="replace").strip()[-300:]
        raise OtaError(
            f"decompressing the model on {device.label} failed: "
            f"{report.get('error') or stderr or f'exit {result.exit_status}'}; "
            "nothing was switched",
            "check the device's disk and Python, or push with --compress none",
        )
    found = files.sha256(tmp)
    if found != sha:
        files.remove(tmp)
        raise OtaError(
            f"sha256 mismatch in {files.where(tmp)} after decompressing ({found} != {sha}); "
            "nothing was switched",
            "the copy was corrupted or the disk is full; check `df -h` on the device and retry",
        )
    files.rename(tmp, ModelDir.model_file(sha))
    return sent


def _decompress_command(python: str, *args: str) -> str:
    """The device's Python running :mod:`tfedge_device.decompress` sent as ``-c`` source."""
    from tfedge_device import decompress

    source = Path(decompress.__file__).read_text()
    return " ".join(
        [
            "PYTHONDONTWRITEBYTECODE=1",
            ssh.quote_python(python),
            "-c",
            shlex.quote(source),
            *map(shlex.quote, args),
        ]
    )


def _model_name(manifest: dict, asked: str | None, device: _Device) -> str:
    """The model the directory holds (``asked`` must match it), else ``asked``, else the
    directory's name."""
    held = manifest.get("name") or None
    if held and asked and held != asked:
        _check_same_model(manifest, asked, device.label)
    if held:
        if not valid_name(held):
            raise OtaError(
                f"the manifest on {device.label} names the model {held!r}, not a valid name",
                "fix or remove the damaged manifest on the device",
            )
        return held
    if asked:
        return asked
    folder = posixpath.basename(device.files.root.rstrip("/"))
    if not valid_name(folder):
        raise UsageError(
            f"cannot name the model after its directory {folder!r}",
            "pass --name NAME (letters, digits, '.', '_' or '-')",
        )
    return folder


def _check_same_model(manifest: dict, name: str, label: str) -> None:
    if manifest.get("name") and manifest["name"] != name:
        raise OtaError(
            f"the directory on {label} holds model {manifest['name']!r}, not {name!r}",
            f"leave out --name (or pass --name {manifest['name']}), or push to another directory",
        )


def _check_signature(manifest: dict, current: str | None, job: _PushJob) -> list[str]:
    from tfedge.ota.signature import quantization_notes, signature_diff

    active = (record_for(manifest, current) or {}).get("signature")
    if current is not None and not isinstance(active, dict):
        if not job.allow_signature_change:
            raise OtaError(
                f"the active model {current[:12]} has no recorded input/output signature, "
                "so the new model's cannot be compared with it",
                "pass --allow-signature-change if the application handles the new model",
            )
        return []
    changes = signature_diff(active, job.signature)
    if changes and not job.allow_signature_change:
        raise OtaError(
            "the input/output signature differs from the active model's: " + "; ".join(changes),
            "the application would break; pass --allow-signature-change if it handles the new one",
        )
    return quantization_notes(active, job.signature)


def _check_space(device: _Device, job: _PushJob) -> None:
    needed = job.model.stat().st_size + len(job.golden or b"") + SPACE_MARGIN
    free = device.files.free_bytes()
    if free < needed:
        raise OtaError(
            f"not enough space in {device.files.root} on {device.label}: {free} bytes free, "
            f"{needed} needed",
            "free space on the device, or lower --keep",
        )


def _smoke_test(device: _Device, sha: str, job: _PushJob) -> dict:
    """Run the device script in ``--smoke`` mode on the device; OtaError if it fails.

    The script runs from a private folder made for this push; the command that runs it first
    checks the sha256 of both files, so what runs is what was uploaded."""
    files = device.files
    tools = files.private_tempdir()
    ran = False
    try:
        job.step("tools_uploaded", tools=_upload_tools(device, tools), sha256=sha)
        result = files.run(_smoke_command(device, tools, sha))  # removes the folder
        ran = True
    finally:
        if not ran:
            files.remove_tree(tools)
    return _smoke_verdict(device, sha, result)


def _upload_tools(device: _Device, tools: str) -> dict[str, str]:
    """Copy the device script's files into ``tools``; ``{remote path: sha256}``."""
    remote = {posixpath.join(tools, name): local for name, local in DEVICE_FILES.items()}
    device.files.put_many(remote)
    return {path: sha256_file(local) for path, local in remote.items()}


def _smoke_command(device: _Device, tools: str, sha: str) -> str:
    files, target = device.files, device.files.target
    check = " ".join(
        shlex.quote(f"{sha256_file(local)}  {posixpath.join(tools, name)}")
        for name, local in DEVICE_FILES.items()
    )
    run = " ".join(
        [
            "PYTHONDONTWRITEBYTECODE=1",
            ssh.quote_python(target.python),
            shlex.quote(posixpath.join(tools, DEVICE_SCRIPT.name)),
            shlex.quote(files.abs(ModelDir.model_file(sha))),
            "--smoke",
            shlex.quote(files.abs(ModelDir.golden_file(sha))),
            "--threads",
            "1",
        ]
    )
    remove = f"rm -rf -- {shlex.quote(tools)}"
    return (
        f"printf '%s\\n' {check} | sha256sum --check --status - "
        f"|| {{ {remove}; exit {TOOLS_CHANGED}; }}; {run}; status=$?; {remove}; exit $status"
    )


def _smoke_verdict(device: _Device, sha: str, result) -> dict:
    target = device.files.target
    if result.exit_status == TOOLS_CHANGED and not (result.stdout or "").strip():
        device.dir.remove_version(sha)
        raise OtaError(
            f"the device script on {device.label} changed between its upload and its run; "
            "nothing was run and nothing was switched",
            "someone on the device can write to its temporary folder: check $TMPDIR there",
        )
    report = last_json(result.stdout or "") or {}
    if result.exit_status == 127 or report.get("kind") == "runtime_missing":
        from tfedge_device.interpreter import INSTALL_HINT

        raise TargetError(
            f"no working TFLite runtime for {target.python} on {device.label}: "
            f"{report.get('error', (result.stderr or '').strip()[-200:])}",
            INSTALL_HINT + "; or push with --no-smoke-test",
        )
    problem = _smoke_problem(report, result)
    if problem:
        device.dir.remove_version(sha)
        raise OtaError(
            f"the smoke test failed on {device.label}: {problem}; nothing was switched",
            "run the model locally (tfedge bench MODEL), re-convert it, "
            "or check the device's runtime",
        )
    return report


def _smoke_problem(report: dict, result) -> str | None:
    """Why the verdict is not a pass (a malformed one is not), or None."""
    if report.get("error"):
        return str(report["error"])[:300]
    if not report:
        return (result.stderr or "").strip()[-300:] or f"no report (exit {result.exit_status})"
    number = (numbers.Real,)
    diff, tolerance = report.get("max_abs_diff"), report.get("tolerance")
    if (
        not isinstance(report.get("ok"), bool)
        or not isinstance(diff, number)
        or isinstance(diff, bool)
        or not (tolerance is None or isinstance(tolerance, number))
    ):
        keys = ", ".join(sorted(map(str, report))[:8])
        return f"the device gave a malformed verdict (keys: {keys})"
    if result.exit_status != 0 or not report["ok"]:
        return f"max difference {diff} > tolerance {tolerance}"
    return None


def _prune(device: _Device, manifest: dict, keep: int, sha: str) -> list[str]:
    """Delete old versions, after checking again that ``versions/`` is the folder it was."""
    try:
        device.files.check_trusted(VERSIONS)
    except OtaError as err:
        raise OtaError(
            f"{sha[:12]} is active, but old versions were not removed: {err.message}",
            err.hint,
        ) from err
    return device.dir.prune(manifest, keep)


# ---------------------------------------------------------------- rollback and status
def _rollback(device: _Device, name: str | None) -> PushResult:
    manifest = device.dir.manifest(name or "", strict=True)
    current = device.dir.current_sha(strict=True)
    if name:
        _check_same_model(manifest, name, device.label)
    present = set(device.dir.version_shas())
    previous = previous_sha(manifest, current, exists=lambda s: s in present)
    if previous is None:
        raise OtaError(
            f"no previous version to roll back to in {device.files.root} on {device.label}",
            "push a model first; `tfedge status` lists what the device holds",
        )
    record = dict(
        record_for(manifest, previous) or {},
        **make_record(previous, f"rollback from {current}", event="rollback"),
    )
    manifest = add_record(manifest, record)
    device.dir.save_manifest(manifest, sync_dir=False)  # switch_to fsyncs the same folder
    device.dir.switch_to(previous)
    return PushResult(device.label, device.files.root, previous, current, switched=True)


def _status(model_dir: ModelDir, label: str, root: str) -> DeviceStatus:
    manifest = model_dir.manifest(strict=True)
    current = model_dir.current_sha(strict=True)
    present = model_dir.version_shas()
    previous = previous_sha(manifest, current, exists=lambda s: s in present)
    return DeviceStatus(
        label,
        root,
        manifest.get("name") or None,
        _entry(manifest, current),
        _entry(manifest, previous),
        present,
        model_dir.leftovers(),
        manifest.get("history", [])[-10:],
    )


def _entry(manifest: dict, sha: str | None) -> dict | None:
    if sha is None:
        return None
    record = record_for(manifest, sha) or {"sha256": sha}
    return {k: v for k, v in record.items() if k != "signature"}


class _Clock:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 4)
        self.laps["total"] = round(now - self.start, 4)
        self.last = now
