"""Push a model to one device over SSH, with an atomic switch; roll back; show status.

The device gets the model directory of the device package (:mod:`tfedge_device.modeldir`:
``versions/<sha256>.tflite``, a ``current`` symlink, ``manifest.json``), through the same
:class:`~tfedge_device.modeldir.ModelDir` protocol the agent uses, over SFTP
(:mod:`tfedge.ota.sftp_backend`). Each step fails cleanly, before anything visible changes
on the device:

1. the host key is checked against known_hosts (never accepted silently);
2. the input/output signature is compared with the active model's (``--allow-signature-change``);
3. leftovers of interrupted pushes are removed and free space is checked;
4. the model goes to ``versions/.<sha>.<random>.part`` (same directory), is fsynced, hashed
   *on the device*, then renamed to ``versions/<sha>.tflite`` (``posix-rename``);
5. the device script (``bench.py --smoke``, uploaded to ``.tools/`` with ``interpreter.py``)
   loads it, allocates, runs a golden input made on the host and compares the outputs
   within one quantization step;
6. ``current`` is replaced by one rename of a new symlink, and the directory is fsynced;
7. only the last ``keep`` versions stay.

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
import shlex
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfedge.errors import OtaError, TargetError, UsageError
from tfedge.fsutil import sha256_file
from tfedge.ota import valid_name
from tfedge.ota.sftp_backend import SftpFiles, open_model_dir
from tfedge.targets import ssh
from tfedge.targets.job import DEVICE_FILES, DEVICE_SCRIPT, last_json
from tfedge_device.modeldir import (
    DEFAULT_KEEP,
    ModelDir,
    ModelDirError,
    add_record,
    make_record,
    previous_sha,
    record_for,
)

TOOLS = ".tools"  # the device script lives here, inside the model directory
SPACE_MARGIN = 64 * 1024


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
    **ssh_overrides,
) -> PushResult:
    """Install ``model`` as the active model of the directory at ``url`` (ssh://user@host/dir).

    Raises:
        UsageError: bad URL, name or keep.  ModelLoadError: not a TFLite model.
        TargetError: host key, login, connection or device runtime problems.
        OtaError: signature changed, not enough space, hash mismatch, smoke test failed.
    """
    from tfedge.ota.golden import golden_npz
    from tfedge.ota.signature import signature_from_tflite

    model = Path(model)
    target = _target(url, ssh_overrides)
    name = _check_name(name or model.stem)
    if keep < 2:
        raise UsageError(
            f"--keep {keep} would leave nothing to roll back to", "keep at least 2 versions"
        )
    signature = signature_from_tflite(model)  # also proves it is a readable TFLite file
    blob = golden_npz(model, golden) if smoke_test else None
    job = _PushJob(model, name, signature, blob, allow_signature_change, keep)
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
        return _status(device)


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
            yield _Device(ModelDir(files).ensure(), files)
        except ModelDirError as err:
            raise OtaError(err.message, err.hint) from err


@dataclass
class _PushJob:
    model: Path
    name: str
    signature: dict
    golden: bytes | None
    allow_signature_change: bool
    keep: int


# ---------------------------------------------------------------- push
def _push(device: _Device, job: _PushJob, clock: _Clock) -> PushResult:
    manifest = device.dir.manifest(job.name, strict=True)
    current = device.dir.current_sha()
    sha = sha256_file(job.model)
    result = PushResult(device.label, device.files.root, sha, current, switched=False)
    _check_same_model(manifest, job.name, device.label)
    if sha == current:
        result.already_current = True
        return result
    result.notes = _check_signature(manifest, current, job)
    result.cleaned = device.dir.clean_partials()
    _check_space(device, job)
    clock.lap("checks")
    golden = job.golden
    result.uploaded = device.dir.add_version(job.model, sha, sync_dir=golden is None)
    if golden is not None:  # versions/ is fsynced once, after both renames
        device.dir.write_durable(ModelDir.golden_file(sha), golden)
    clock.lap("upload")
    if job.golden is not None:
        result.smoke = _smoke_test(device, sha)
        clock.lap("smoke_test")
    record = make_record(
        sha, f"push {job.model.name}", bytes=job.model.stat().st_size, signature=job.signature
    )
    manifest = add_record(dict(manifest, name=job.name), record)
    device.dir.save_manifest(manifest, sync_dir=False)  # switch_to fsyncs the same folder
    device.dir.switch_to(sha)
    result.switched = True
    clock.lap("switch")
    result.removed = device.dir.prune(manifest, job.keep)
    result.seconds = clock.laps
    return result


def _check_same_model(manifest: dict, name: str, label: str) -> None:
    if manifest.get("name") and manifest["name"] != name:
        raise OtaError(
            f"the directory on {label} holds model {manifest['name']!r}, not {name!r}",
            f"pass --name {manifest['name']}, or push to another directory",
        )


def _check_signature(manifest: dict, current: str | None, job: _PushJob) -> list[str]:
    from tfedge.ota.signature import quantization_notes, signature_diff

    active = (record_for(manifest, current) or {}).get("signature")
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


def _smoke_test(device: _Device, sha: str) -> dict:
    """Run the device script in ``--smoke`` mode on the device; OtaError if it fails."""
    files, target = device.files, device.files.target
    model, golden = ModelDir.model_file(sha), ModelDir.golden_file(sha)
    command = " ".join(
        [
            ssh.quote_python(target.python),
            shlex.quote(_device_script(device)),
            shlex.quote(files.abs(model)),
            "--smoke",
            shlex.quote(files.abs(golden)),
            "--threads",
            "1",
        ]
    )
    result = files.run(command)
    report = last_json(result.stdout or "") or {}
    if result.exit_status == 127 or report.get("kind") == "runtime_missing":
        from tfedge_device.interpreter import INSTALL_HINT

        raise TargetError(
            f"no working TFLite runtime for {target.python} on {device.label}: "
            f"{report.get('error', (result.stderr or '').strip()[-200:])}",
            INSTALL_HINT + "; or push with --no-smoke-test",
        )
    if result.exit_status != 0 or not report.get("ok"):
        device.dir.remove_version(sha)
        reason = report.get("error") or (
            f"max difference {report.get('max_abs_diff')} > tolerance {report.get('tolerance')}"
            if report
            else (result.stderr or "")[-300:]
        )
        raise OtaError(
            f"the smoke test failed on {device.label}: {reason}; nothing was switched",
            "run the model locally (tfedge bench MODEL), re-convert it, "
            "or check the device's runtime",
        )
    return report


def _device_script(device: _Device) -> str:
    """Put the device script's files in ``.tools/`` (unless there already); its remote path."""
    wanted = {f"{TOOLS}/{name}": local for name, local in DEVICE_FILES.items()}
    present = device.files.sha256_many(list(wanted))  # one command for all of them
    for rel, local in wanted.items():
        sha = sha256_file(local)
        if present.get(rel) != sha:
            device.files.makedirs(TOOLS)
            device.dir.put_verified(local, rel, sha)
    return device.files.abs(f"{TOOLS}/{DEVICE_SCRIPT.name}")


# ---------------------------------------------------------------- rollback and status
def _rollback(device: _Device, name: str | None) -> PushResult:
    manifest = device.dir.manifest(name or "", strict=True)
    current = device.dir.current_sha()
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


def _status(device: _Device) -> DeviceStatus:
    manifest = device.dir.manifest(strict=True)
    current = device.dir.current_sha()
    present = device.dir.version_shas()
    previous = previous_sha(manifest, current, exists=lambda s: s in present)
    return DeviceStatus(
        device.label,
        device.files.root,
        manifest.get("name") or None,
        _entry(manifest, current),
        _entry(manifest, previous),
        present,
        device.dir.leftovers(),
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
