"""Run the device script on a real board over SSH (a Raspberry Pi or any Linux machine).

Model, data and the device script (``bench.py`` with ``interpreter.py`` beside it, in
``WORKDIR/tfedge-device/``) are copied by SFTP (skipped when the device already has them),
their sha256 is checked *on the device*, the script runs there with the device's own
Python, and its JSON comes back. Host keys are checked against known_hosts, never accepted
silently; authentication is by key or ssh-agent only.

Target syntax: ``ssh://user@host[:port][/workdir][?python=PATH&key=PATH&known_hosts=PATH]``.
Without a workdir the files go to ``~/tfedge-bench``.

Example:
    >>> target = parse_target("ssh://pi@raspberrypi.local/srv/bench?python=~/venv/bin/python")
    >>> target.host, target.port, target.workdir, target.python
    ('raspberrypi.local', 22, '/srv/bench', '~/venv/bin/python')
    >>> report, _ = run(Job(Path("model.tflite"), threads=4), target)
"""

from __future__ import annotations

import asyncio
import io
import os
import posixpath
import shlex
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from tfedge.errors import BenchError, TargetError, UsageError
from tfedge.fsutil import sha256_file
from tfedge.targets.job import DEVICE_FILES, DEVICE_SCRIPT, Job, parse_report

DEFAULT_WORKDIR = "tfedge-bench"
SCRIPT_DIR = "tfedge-device"  # the device script's folder inside the workdir
_QUERY_KEYS = ("python", "key", "known_hosts", "connect_timeout")


@dataclass(frozen=True)
class SshTarget:
    """Where and how to reach one board."""

    host: str
    user: str | None = None
    port: int = 22
    workdir: str = DEFAULT_WORKDIR
    python: str = "python3"
    key: str | None = None
    known_hosts: str | None = None
    connect_timeout: float = 15.0

    @property
    def label(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port != 22 else ""
        return f"ssh://{user}{self.host}{port}"

    def known_hosts_path(self) -> Path:
        return Path(os.path.expanduser(self.known_hosts or "~/.ssh/known_hosts"))


def parse_target(url: str, **overrides) -> SshTarget:
    """Parse an ``ssh://`` target URL; keyword overrides (python, key, ...) win over the query.

    Raises:
        UsageError: not an ssh:// URL, no host, a bad port, or an unknown query key.
    """
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise UsageError(f"{url!r} is not an SSH target", "write ssh://user@host[:port][/workdir]")
    try:
        port = parts.port or 22
    except ValueError as exc:
        raise UsageError(f"bad port in {url!r}", "write ssh://user@host:2222") from exc
    target = SshTarget(
        host=parts.hostname,
        user=unquote(parts.username) if parts.username else None,
        port=port,
        workdir=unquote(parts.path) or DEFAULT_WORKDIR,
    )
    target = replace(target, **_query(parts.query, url))
    return replace(target, **{k: v for k, v in overrides.items() if v is not None})


def _query(query: str, url: str) -> dict:
    values: dict[str, str | float] = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = sorted(set(values) - set(_QUERY_KEYS))
    if unknown:
        raise UsageError(
            f"unknown option(s) {', '.join(unknown)} in {url!r}", f"known: {', '.join(_QUERY_KEYS)}"
        )
    if "connect_timeout" in values:
        values["connect_timeout"] = float(values["connect_timeout"])
    return values


def run(job: Job, target: SshTarget) -> tuple[dict, np.ndarray | None]:
    """Benchmark ``job`` on ``target``; return the device's report and (if kept) raw outputs."""
    return asyncio.run(run_async(job, target))


async def run_async(job: Job, target: SshTarget) -> tuple[dict, np.ndarray | None]:
    """The coroutine behind :func:`run`, for benchmarking several boards concurrently."""
    async with connect(target) as conn:
        async with conn.start_sftp_client() as sftp:
            workdir = await resolve_workdir(conn, sftp, target)
            remote = await _upload(conn, sftp, workdir, _files(job), target)
            outputs = (
                f"{workdir}/outputs-{uuid.uuid4().hex[:12]}.npy"
                if job.keep_outputs and job.data
                else None
            )
            report = await _run_script(conn, job, target, remote, outputs)
            values = await _fetch_outputs(sftp, outputs) if outputs else None
            report["emulated"] = False
            return report, values


# ---------------------------------------------------------------- connecting
class connect:
    """``async with connect(target) as conn``: an asyncssh connection with the host key checked
    against known_hosts; every failure to connect becomes a TargetError."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.conn: Any = None

    async def __aenter__(self):
        import asyncssh

        self.conn = await _open(asyncssh, self.target)
        return self.conn

    async def __aexit__(self, *exc) -> None:
        if self.conn is not None:
            self.conn.close()
            await self.conn.wait_closed()


async def _open(asyncssh, target: SshTarget):
    known_hosts = _require_known_hosts(target)
    options: dict[str, Any] = {
        "port": target.port,
        "username": target.user,
        "known_hosts": str(known_hosts),
        "connect_timeout": target.connect_timeout,
    }
    if target.key:
        options["client_keys"] = [os.path.expanduser(target.key)]
    try:
        return await asyncssh.connect(target.host, **options)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise TargetError(
            f"the host key of {target.label} is not trusted: it is not in, or does not match, "
            f"{known_hosts}",
            _keyscan_hint(target),
        ) from exc
    except asyncssh.PermissionDenied as exc:
        raise TargetError(
            f"authentication failed for {target.label}: {exc.reason}",
            "tfedge logs in with keys or the ssh-agent only: copy your key with `ssh-copy-id "
            f"-p {target.port} {target.user or '$USER'}@{target.host}` or pass ?key=PATH",
        ) from exc
    except (asyncio.TimeoutError, TimeoutError) as exc:
        raise TargetError(
            f"timed out after {target.connect_timeout:.0f} s connecting to {target.label}",
            "check the board is powered, on this network, and that sshd runs",
        ) from exc
    except (OSError, asyncssh.Error) as exc:
        raise TargetError(
            f"cannot reach {target.label}: {exc}",
            f"check the host name, that sshd listens on port {target.port}, and the network",
        ) from exc


def _require_known_hosts(target: SshTarget) -> Path:
    path = target.known_hosts_path()
    if not path.is_file():
        raise TargetError(
            f"no known_hosts file at {path}, so the host key of {target.label} cannot be checked",
            _keyscan_hint(target),
        )
    return path


def _keyscan_hint(target: SshTarget) -> str:
    return (
        "check the board's fingerprint "
        "(on the board: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), "
        f"then trust it: ssh-keyscan -p {target.port} {target.host} "
        f">> {target.known_hosts or '~/.ssh/known_hosts'}"
    )


# ---------------------------------------------------------------- files
def _files(job: Job) -> dict[str, Path]:
    """Remote name -> local path; names carry the content hash so boards cache them."""
    files = {f"{SCRIPT_DIR}/{name}": path for name, path in DEVICE_FILES.items()}
    for path in (job.model, job.data, *job.alternates):
        if path:
            files[f"{sha256_file(path)[:16]}-{path.name}"] = path
    return files


async def resolve_workdir(conn, sftp, target: SshTarget) -> str:
    """The absolute path of the target's workdir (``~/`` and relative paths are under the
    login's home), created if missing."""
    import asyncssh

    workdir = target.workdir
    if workdir.startswith("/~/") or not workdir.startswith("/"):  # relative to the login's home
        home = (await sftp.realpath(".")).rstrip("/")
        workdir = f"{home}/{workdir.removeprefix('/').removeprefix('~/')}"
    try:
        await sftp.makedirs(workdir, exist_ok=True)
    except asyncssh.SFTPError as exc:  # no permission, a file in the way, a full disk
        raise TargetError(
            f"cannot create {workdir} on {target.label}: {exc}",
            "pick a writable workdir: ssh://user@host/home/user/tfedge-bench",
        ) from exc
    return workdir


async def _upload(
    conn, sftp, workdir: str, files: dict[str, Path], target: SshTarget
) -> dict[str, str]:
    """Copy what the board lacks, then prove every file arrived intact by hashing it there."""
    remote = {name: f"{workdir}/{name}" for name in files}
    expected = {remote[name]: sha256_file(path) for name, path in files.items()}
    present = await remote_sha256(conn, list(expected), target)
    for name, path in files.items():
        if present.get(remote[name]) != expected[remote[name]]:
            await sftp.makedirs(posixpath.dirname(remote[name]), exist_ok=True)
            await _put(sftp, path, remote[name])
    present = await remote_sha256(conn, list(expected), target)
    bad = [p for p, digest in expected.items() if present.get(p) != digest]
    if bad:
        raise TargetError(
            f"sha256 mismatch on {target.label} after upload: {', '.join(bad)}",
            "the copy was corrupted or the disk is full; check `df -h` on the board and retry",
        )
    return {str(files[name]): remote[name] for name in files}


async def _put(sftp, local: Path, remote: str) -> None:
    partial = f"{remote}.{uuid.uuid4().hex[:8]}.part"  # unique: boards may be benched concurrently
    await sftp.put(str(local), partial)
    await sftp.posix_rename(partial, remote)


async def remote_sha256(conn, paths: list[str], target: SshTarget) -> dict[str, str]:
    """``{path: sha256}`` computed on the device (``sha256sum``); missing files are absent."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    result = await conn.run(f"sha256sum {quoted} 2>/dev/null", check=False)
    digests = {}
    for line in (result.stdout or "").splitlines():
        digest, _, path = line.partition("  ")
        digests[path.strip()] = digest.strip()
    if result.exit_status not in (0, 1):
        raise TargetError(
            f"cannot run sha256sum on {target.label} (exit {result.exit_status})",
            "install coreutils on the board",
        )
    return digests


async def _fetch_outputs(sftp, remote: str) -> np.ndarray:
    buffer = io.BytesIO()
    async with sftp.open(remote, "rb") as handle:
        buffer.write(await handle.read())
    await sftp.remove(remote)
    buffer.seek(0)
    return np.load(buffer, allow_pickle=False)


# ---------------------------------------------------------------- running
async def _run_script(
    conn, job: Job, target: SshTarget, remote: dict[str, str], outputs: str | None
) -> dict:
    data = remote.get(str(job.data)) if job.data else None
    alternates = [remote[str(path)] for path in job.alternates]
    args = job.script_args(remote[str(job.model)], data, outputs, alternates)
    command = " ".join(
        [
            quote_python(target.python),
            shlex.quote(remote[str(DEVICE_SCRIPT)]),
            *map(shlex.quote, args),
        ]
    )
    try:
        result = await asyncio.wait_for(conn.run(command, check=False), timeout=job.timeout)
    except (asyncio.TimeoutError, TimeoutError) as exc:
        raise BenchError(
            f"the benchmark on {target.label} timed out after {job.timeout:.0f} s",
            "lower --runs/--min-secs, or check the board is not overloaded",
        ) from exc
    return _interpret(result, job, target)


def _interpret(result, job: Job, target: SshTarget) -> dict:
    stdout, stderr = result.stdout or "", result.stderr or ""
    if result.exit_status == 127:
        from tfedge_device.interpreter import INSTALL_HINT

        raise TargetError(f"{target.python} is not found on {target.label}", INSTALL_HINT)
    code = -_signal_number(result.exit_signal) if result.exit_signal else result.exit_status
    return parse_report(stdout, stderr, code, job.model, target.label)


def _signal_number(exit_signal) -> int:
    import signal

    name = exit_signal[0] if isinstance(exit_signal, tuple) else str(exit_signal)
    try:
        return int(signal.Signals["SIG" + name.removeprefix("SIG")])
    except KeyError:
        return 6


def quote_python(python: str) -> str:
    """Quote a remote interpreter path, keeping a leading ``~/`` expandable."""
    if python.startswith("~/"):
        return '"$HOME"/' + shlex.quote(python[2:])
    return shlex.quote(python)
