"""Push a model to one device over SSH, with an atomic switch; roll back; show status.

The device gets the layout of :mod:`tfedge.ota.versions` (``versions/<sha256>.tflite``, a
``current`` symlink, ``manifest.json``). Each step fails cleanly, before anything visible
changes on the device:

1. the host key is checked against known_hosts (never accepted silently);
2. the input/output signature is compared with the active model's (``--allow-signature-change``);
3. leftovers of interrupted pushes are removed and free space is checked;
4. the model goes to ``versions/.<sha>.<random>.part`` (same directory), is fsynced, hashed
   *on the device*, then renamed to ``versions/<sha>.tflite`` (``posix-rename``);
5. the device script (``bench_device.py --smoke``) loads it, allocates, runs a golden
   input made on the host and compares the outputs within one quantization step;
6. ``current`` is replaced by one rename of a new symlink, and the directory is fsynced;
7. only the last ``keep`` versions stay.

Connection, URL and host-key handling are the benchmark harness's (``tfedge.targets.ssh``).

Example:
    >>> r = push("kws_int8.tflite", "ssh://pi@raspberrypi.local/srv/models/kws")
    >>> r.sha256[:12], r.previous[:12], r.switched
    ('3f1c2a9d8e7b', 'a07e55c1d2f3', True)
    >>> rollback("ssh://pi@raspberrypi.local/srv/models/kws").sha256[:12]
    'a07e55c1d2f3'
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import shlex
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfedge.errors import OtaError, TargetError, UsageError
from tfedge.ota import valid_name
from tfedge.ota.versions import (
    CURRENT,
    DEFAULT_KEEP,
    MANIFEST,
    VERSIONS,
    add_record,
    make_record,
    new_manifest,
    previous_sha,
    record_for,
    sha256_file,
    shas_to_keep,
    trim_history,
)
from tfedge.targets import ssh

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
    return _run(_push_async(job, target))


def rollback(url: str, name: str | None = None, **ssh_overrides) -> PushResult:
    """Switch the device back to the version that was active before the current one."""
    target = _target(url, ssh_overrides)
    return _run(_rollback_async(target, _check_name(name) if name else None))


def device_status(url: str, **ssh_overrides) -> DeviceStatus:
    """Read the model directory at ``url`` without changing anything."""
    return _run(_status_async(_target(url, ssh_overrides)))


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


def _run(coroutine):
    import asyncssh

    try:
        return asyncio.run(coroutine)
    except (asyncssh.Error, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise TargetError(
            f"the SSH connection failed mid-operation: {exc}",
            "nothing was switched; check the device and push again (leftovers are "
            "cleaned on the next push)",
        ) from exc


@dataclass
class _PushJob:
    model: Path
    name: str
    signature: dict
    golden: bytes | None
    allow_signature_change: bool
    keep: int


# ---------------------------------------------------------------- the remote directory
class _Remote:
    """The model directory on the device, through one SSH connection and its SFTP session."""

    def __init__(self, conn, sftp, target: ssh.SshTarget, root: str) -> None:
        self.conn, self.sftp, self.target, self.root = conn, sftp, target, root
        self.versions = posixpath.join(root, VERSIONS)

    @classmethod
    async def open(cls, conn, sftp, target: ssh.SshTarget) -> "_Remote":
        root = await ssh._workdir(conn, sftp, target)
        remote = cls(conn, sftp, target, root)
        await sftp.makedirs(remote.versions, exist_ok=True)
        return remote

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def model_path(self, sha: str) -> str:
        return posixpath.join(self.versions, f"{sha}.tflite")

    async def current_sha(self) -> str | None:
        try:
            link = await self.sftp.readlink(self.path(CURRENT))
        except Exception:  # no such file: nothing installed yet
            return None
        base = posixpath.basename(link)
        return base[: -len(".tflite")] if base.endswith(".tflite") else None

    async def manifest(self, name: str | None) -> dict:
        import asyncssh

        try:
            async with self.sftp.open(self.path(MANIFEST), "rb") as handle:
                return json.loads(await handle.read())
        except asyncssh.SFTPNoSuchFile:
            return new_manifest(name or "")
        except ValueError as exc:
            raise OtaError(
                f"{self.path(MANIFEST)} on {self.target.label} is not valid JSON ({exc})",
                "fix or remove the damaged manifest on the device",
            ) from exc

    async def listdir(self, folder: str) -> list[str]:
        try:
            return [n for n in await self.sftp.listdir(folder) if n not in (".", "..")]
        except Exception:
            return []

    async def write_durable(self, path: str, data: bytes) -> None:
        """Write ``data`` to a temporary sibling, fsync it, posix-rename it over ``path``."""
        tmp = f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.part"
        async with self.sftp.open(tmp, "wb") as handle:
            await handle.write(data)
            await handle.fsync()
        await self.sftp.posix_rename(tmp, path)

    async def upload(self, local: Path, path: str) -> None:
        """Upload to a ``.part`` sibling, fsync, check its sha256 on the device, rename into place."""
        tmp = f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.part"
        await self.sftp.put(str(local), tmp)
        async with self.sftp.open(tmp, "ab") as handle:
            await handle.fsync()
        expected = sha256_file(local)
        found = (await ssh._remote_sha256(self.conn, [tmp], self.target)).get(tmp)
        if found != expected:
            await self._remove(tmp)
            raise OtaError(
                f"sha256 mismatch on {self.target.label} after upload ({found} != {expected})",
                "the copy was corrupted or the disk is full; check `df -h` on the device and retry",
            )
        await self.sftp.posix_rename(tmp, path)

    async def has_file(self, path: str, sha: str) -> bool:
        return (await ssh._remote_sha256(self.conn, [path], self.target)).get(path) == sha

    async def free_bytes(self) -> int:
        stats = await self.sftp.statvfs(self.root)
        return stats.bavail * stats.frsize

    async def switch_to(self, sha: str) -> None:
        """Replace ``current`` with one rename of a fresh symlink, then fsync the directory."""
        tmp = self.path(f".{CURRENT}.{uuid.uuid4().hex[:8]}.tmp")
        await self.sftp.symlink(f"{VERSIONS}/{sha}.tflite", tmp)
        await self.sftp.posix_rename(tmp, self.path(CURRENT))
        await self.fsync_dirs(self.root)

    async def fsync_dirs(self, *folders: str) -> None:
        """fsync directories on the device (``sync DIR`` opens and fsyncs each one)."""
        quoted = " ".join(shlex.quote(f) for f in folders)
        result = await self.conn.run(f"sync -- {quoted}", check=False)
        if result.exit_status != 0:
            raise OtaError(
                f"cannot fsync {quoted} on {self.target.label}: {(result.stderr or '').strip()}",
                "the device needs coreutils 8.24 or newer (any current Raspberry Pi OS has it)",
            )

    async def clean_leftovers(self) -> list[str]:
        """Remove temporary files that an interrupted push left behind."""
        removed = []
        for folder in (self.root, self.versions):
            for name in await self.listdir(folder):
                if name.startswith(".") and name.endswith((".part", ".tmp")):
                    await self._remove(posixpath.join(folder, name))
                    removed.append(name)
        return removed

    async def prune(self, manifest: dict, current: str, keep: int) -> list[str]:
        kept = set(shas_to_keep(manifest, current, keep))
        removed = []
        for name in await self.listdir(self.versions):
            sha = name.split(".")[0]
            if not name.startswith(".") and sha not in kept:
                await self._remove(posixpath.join(self.versions, name))
                removed.append(name)
        return removed

    async def version_shas(self) -> list[str]:
        return sorted(
            {
                n[: -len(".tflite")]
                for n in await self.listdir(self.versions)
                if n.endswith(".tflite") and not n.startswith(".")
            }
        )

    async def _remove(self, path: str) -> None:
        try:
            await self.sftp.remove(path)
        except Exception:
            pass


# ---------------------------------------------------------------- push
async def _push_async(job: _PushJob, target: ssh.SshTarget) -> PushResult:
    clock = _Clock()
    async with ssh._connect(target) as conn:
        async with conn.start_sftp_client() as sftp:
            remote = await _Remote.open(conn, sftp, target)
            clock.lap("connect")
            manifest, current = await remote.manifest(job.name), await remote.current_sha()
            sha = sha256_file(job.model)
            result = PushResult(target.label, remote.root, sha, current, switched=False)
            _check_same_model(manifest, job.name, target)
            if sha == current:
                result.already_current = True
                return result
            result.notes = _check_signature(manifest, current, job)
            result.cleaned = await remote.clean_leftovers()
            await _check_space(remote, job)
            clock.lap("checks")
            result.uploaded = await _upload_version(remote, job, sha)
            clock.lap("upload")
            if job.golden is not None:
                result.smoke = await _smoke_test(remote, job, sha)
                clock.lap("smoke_test")
            manifest = add_record(
                dict(manifest, name=job.name),
                make_record(
                    sha,
                    f"push {job.model.name}",
                    bytes=job.model.stat().st_size,
                    signature=job.signature,
                ),
            )
            await remote.write_durable(
                remote.path(MANIFEST), json.dumps(trim_history(manifest), indent=1).encode()
            )
            await remote.switch_to(sha)
            result.switched = True
            clock.lap("switch")
            result.removed = await remote.prune(manifest, sha, job.keep)
            result.seconds = clock.laps
            return result


def _check_same_model(manifest: dict, name: str, target: ssh.SshTarget) -> None:
    if manifest.get("name") and manifest["name"] != name:
        raise OtaError(
            f"the directory on {target.label} holds model {manifest['name']!r}, not {name!r}",
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


async def _check_space(remote: _Remote, job: _PushJob) -> None:
    needed = job.model.stat().st_size + len(job.golden or b"") + SPACE_MARGIN
    free = await remote.free_bytes()
    if free < needed:
        raise OtaError(
            f"not enough space in {remote.root} on {remote.target.label}: {free} bytes free, "
            f"{needed} needed",
            "free space on the device, or lower --keep",
        )


async def _upload_version(remote: _Remote, job: _PushJob, sha: str) -> bool:
    """Put ``versions/<sha>.tflite`` (and its golden file) on the device; False if already there."""
    final = remote.model_path(sha)
    uploaded = False
    if not await remote.has_file(final, sha):
        await remote.upload(job.model, final)
        uploaded = True
    if job.golden is not None:
        await remote.write_durable(posixpath.join(remote.versions, f"{sha}.golden.npz"), job.golden)
    await remote.fsync_dirs(remote.versions)
    return uploaded


async def _smoke_test(remote: _Remote, job: _PushJob, sha: str) -> dict:
    """Run the harness's device script in ``--smoke`` mode on the device; OtaError if it fails."""
    script = await _device_script(remote)
    golden = posixpath.join(remote.versions, f"{sha}.golden.npz")
    command = " ".join(
        [
            ssh._python(remote.target.python),
            shlex.quote(script),
            shlex.quote(remote.model_path(sha)),
            "--smoke",
            shlex.quote(golden),
            "--threads",
            "1",
        ]
    )
    result = await remote.conn.run(command, check=False)
    report = _last_json(result.stdout or "")
    if result.exit_status == 127 or report.get("kind") == "runtime_missing":
        from tfedge.device.bench_device import INSTALL_HINT

        raise TargetError(
            f"no working TFLite runtime for {remote.target.python} on {remote.target.label}: "
            f"{report.get('error', (result.stderr or '').strip()[-200:])}",
            INSTALL_HINT + "; or push with --no-smoke-test",
        )
    if result.exit_status != 0 or not report.get("ok"):
        for path in (remote.model_path(sha), golden):
            await remote._remove(path)
        reason = report.get("error") or (
            f"max difference {report.get('max_abs_diff')} > tolerance {report.get('tolerance')}"
            if report
            else (result.stderr or "")[-300:]
        )
        raise OtaError(
            f"the smoke test failed on {remote.target.label}: {reason}; nothing was switched",
            "run the model locally (tfedge bench MODEL), re-convert it, or check the device's runtime",
        )
    return report


async def _device_script(remote: _Remote) -> str:
    from tfedge.targets.job import DEVICE_SCRIPT

    path = remote.path(TOOLS, ssh.SCRIPT_NAME)
    if not await remote.has_file(path, sha256_file(DEVICE_SCRIPT)):
        await remote.sftp.makedirs(remote.path(TOOLS), exist_ok=True)
        await remote.upload(DEVICE_SCRIPT, path)
    return path


def _last_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
            return value if isinstance(value, dict) else {}
        except ValueError:
            continue
    return {}


# ---------------------------------------------------------------- rollback and status
async def _rollback_async(target: ssh.SshTarget, name: str | None) -> PushResult:
    async with ssh._connect(target) as conn:
        async with conn.start_sftp_client() as sftp:
            remote = await _Remote.open(conn, sftp, target)
            manifest, current = await remote.manifest(name), await remote.current_sha()
            if name:
                _check_same_model(manifest, name, target)
            present = set(await remote.version_shas())
            previous = previous_sha(manifest, current, exists=lambda s: s in present)
            if previous is None:
                raise OtaError(
                    f"no previous version to roll back to in {remote.root} on {target.label}",
                    "push a model first; `tfedge status` lists what the device holds",
                )
            record = dict(
                record_for(manifest, previous) or {},
                **make_record(previous, f"rollback from {current}", event="rollback"),
            )
            manifest = add_record(manifest, record)
            await remote.write_durable(
                remote.path(MANIFEST), json.dumps(trim_history(manifest), indent=1).encode()
            )
            await remote.switch_to(previous)
            return PushResult(target.label, remote.root, previous, current, switched=True)


async def _status_async(target: ssh.SshTarget) -> DeviceStatus:
    async with ssh._connect(target) as conn:
        async with conn.start_sftp_client() as sftp:
            remote = await _Remote.open(conn, sftp, target)
            manifest, current = await remote.manifest(None), await remote.current_sha()
            present = await remote.version_shas()
            previous = previous_sha(manifest, current, exists=lambda s: s in present)
            leftovers = [n for n in await remote.listdir(remote.versions) if n.endswith(".part")]
            return DeviceStatus(
                target.label,
                remote.root,
                manifest.get("name") or None,
                _entry(manifest, current),
                _entry(manifest, previous),
                present,
                leftovers,
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
