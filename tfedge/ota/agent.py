"""The device agent: poll a signed repository, install a newer model safely, roll back on failure.

Every poll builds a fresh python-tuf ``Updater`` that trusts only the root the device was
installed with (``--root``), never a writable cache. A newer, compatible model is
downloaded to a staging file on the model directory's filesystem, re-verified, fsynced,
smoke-tested in a child process, moved into ``versions/``, and activated by renaming the
``current`` symlink (the directory is fsynced). A health check then runs (a user command,
by default the smoke test in a fresh process); if it fails, the previous model comes back.

Every step is journalled (:mod:`tfedge.ota.journal`), so an agent killed at any moment
resumes or rolls back when it restarts. ``status.json`` tells a fleet dashboard where the
device is: Downloading, Installing, Success, Failure or RolledBack. One agent per model
directory (``agent.lock``). Runs without TensorFlow: numpy, a TFLite runtime and tuf.

Usage (on the device, also ``tfedge agent``):
    python -m tfedge.ota.agent --repo-url https://models.example.com --model-dir /var/lib/tfedge/kws \\
        --name kws --root /etc/tfedge/root.json [--group canary] [--interval 300] [--once]

Example:
    >>> cfg = AgentConfig("http://127.0.0.1:8000", Path("/var/lib/tfedge/kws"), "kws", Path("root.json"))
    >>> poll_once(cfg).state
    'Success'
"""

from __future__ import annotations

import argparse
import base64
import errno
import fcntl
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfedge.errors import OtaError, UsageError
from tfedge.ota import target_path, valid_name
from tfedge.ota.journal import PRE_SWITCH, ROLLING_BACK, Journal
from tfedge.ota.versions import (
    DEFAULT_KEEP,
    ModelDir,
    add_record,
    fsync_dir,
    fsync_file,
    make_record,
    now_iso,
    record_for,
    sha256_file,
    write_json_atomic,
)

STATES = ("Downloading", "Installing", "Success", "Failure", "RolledBack")
PAUSE_ENV = "TFEDGE_AGENT_PAUSE_AT"  # test hook: stop (SIGSTOP) right after this journal step
DELAY_ENV = "TFEDGE_AGENT_STEP_DELAY"  # test hook: linger this many seconds after every step
SPACE_FACTOR = 2  # free space needed: twice the model (staging + the version kept)
SPACE_MARGIN = 64 * 1024


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs; validated up front by :func:`validate`."""

    repo_url: str
    model_dir: Path
    name: str
    root: Path
    group: str | None = None
    interval: float = 300.0
    health_cmd: str | None = None
    health_timeout: float = 60.0
    post_switch_cmd: str | None = None
    keep: int = DEFAULT_KEEP
    profile: str | None = None
    arch: str = field(default_factory=platform.machine)
    smoke_timeout: float = 120.0
    threads: int = 1


@dataclass
class PollResult:
    """The outcome of one poll; ``state`` is what status.json says."""

    state: str
    message: str
    serving: str | None = None
    model_version: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "Success"

    def to_dict(self) -> dict:
        return asdict(self)


class InstallError(Exception):
    """One install failed for ``reason``; nothing visible changed (or it was rolled back)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


# ---------------------------------------------------------------- configuration
def validate(cfg: AgentConfig) -> AgentConfig:
    """Check the configuration before anything touches the network or the disk."""
    if not cfg.repo_url.startswith(("http://", "https://")):
        raise UsageError(
            f"--repo-url {cfg.repo_url!r} is not an http(s) URL", "e.g. https://models.example.com"
        )
    if not valid_name(cfg.name) or (cfg.group is not None and not valid_name(cfg.group)):
        raise UsageError(
            f"bad --name {cfg.name!r} or --group {cfg.group!r}",
            "use letters, digits, '.', '_', '-'",
        )
    if not cfg.root.is_file():
        raise UsageError(
            f"trusted root {cfg.root} does not exist",
            "install the repository's 1.root.json with the agent and pass --root PATH",
        )
    if cfg.interval <= 0 or cfg.health_timeout <= 0 or cfg.keep < 2:
        raise UsageError(
            "--interval and --health-timeout must be positive and --keep at least 2",
            "e.g. --interval 300 --health-timeout 60 --keep 3",
        )
    return cfg


# ---------------------------------------------------------------- the daemon
def run(cfg: AgentConfig, once: bool = False, log=None) -> int:
    """Hold the directory lock and poll (once, or every ``interval`` seconds); return an exit code."""
    log = log or _log
    cfg = validate(cfg)
    ModelDir(cfg.model_dir).ensure()
    with directory_lock(cfg.model_dir):
        while True:
            result = poll_once(cfg, log)
            if once:
                return 0 if result.ok else 1
            time.sleep(cfg.interval * random.uniform(0.9, 1.1))


class directory_lock:
    """An exclusive ``flock`` on ``MODEL_DIR/agent.lock``; a second agent gets an OtaError."""

    def __init__(self, model_dir: Path) -> None:
        self.path = Path(model_dir) / "agent.lock"
        self.handle = None

    def __enter__(self):
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "?"
            self.handle.close()
            raise OtaError(
                f"another agent (pid {holder}) already manages {self.path.parent}",
                "run one agent per model directory; stop the other one (systemctl stop tfedge-agent)",
            )
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def poll_once(cfg: AgentConfig, log=None) -> PollResult:
    """Recover from an interrupted install, then check the repository and install if newer."""
    log = log or _log
    agent = _Agent(cfg, log)
    result = agent.recover()
    if result is None or result.state == "Success":
        result = agent.poll() or result
    agent.write_status(result)
    log(f"{result.state}: {result.message}")
    return result


# ---------------------------------------------------------------- one poll
class _Agent:
    def __init__(self, cfg: AgentConfig, log) -> None:
        self.cfg, self.log = cfg, log
        self.dir = ModelDir(cfg.model_dir).ensure()
        self.journal = Journal(self.dir.root / "journal.json")
        self.staging = self.dir.root / ".staging"

    # ---- what is served
    def serving(self) -> tuple[str | None, int | None]:
        sha = self.dir.current_sha()
        record = record_for(self.dir.manifest(self.cfg.name), sha) or {}
        return sha, record.get("model_version")

    def _result(self, state: str, message: str, reason: str | None = None) -> PollResult:
        sha, version = self.serving()
        return PollResult(state, message, sha, version, reason)

    def write_status(self, result: PollResult) -> None:
        """Best effort: a full disk must not stop the agent from serving."""
        status = dict(result.to_dict(), name=self.cfg.name, time=now_iso(), pid=os.getpid())
        try:
            write_json_atomic(self.dir.root / "status.json", status)
        except OSError as exc:
            self.log(f"cannot write status.json: {exc}")

    # ---- polling the repository
    def poll(self) -> PollResult | None:
        from tuf.api import exceptions as tuf_errors

        try:
            updater = self._updater()
            updater.refresh()
            target = self._choose(updater)
        except tuf_errors.DownloadError as exc:
            return self._unreachable(exc)
        except OSError as exc:
            return self._result(
                "Failure",
                f"cannot update the metadata cache: {exc}; {self._serving_text()}",
                "disk_full" if exc.errno == errno.ENOSPC else "io",
            )
        except tuf_errors.RepositoryError as exc:
            return self._result(
                "Failure",
                f"repository metadata rejected ({type(exc).__name__}: {exc}); "
                f"{self._serving_text()}",
                type(exc).__name__,
            )
        if target is None:
            return self._result(
                "Failure",
                f"no target {target_path(self.cfg.name)} in the repository; {self._serving_text()}",
                "no_target",
            )
        try:
            return self.install(updater, target)
        except InstallError as err:
            return self._result("Failure", f"{err.message}; {self._serving_text()}", err.reason)

    def _updater(self):
        from tuf.ngclient import Updater

        metadata = self.dir.root / "tuf"
        metadata.mkdir(exist_ok=True)
        base = self.cfg.repo_url.rstrip("/")
        return Updater(
            metadata_dir=str(metadata),
            metadata_base_url=f"{base}/metadata/",
            target_base_url=f"{base}/targets/",
            target_dir=str(self.staging),
            bootstrap=self.cfg.root.read_bytes(),
        )

    def _choose(self, updater):
        """The highest-versioned target for this device: everyone's, or its group's."""
        paths = [target_path(self.cfg.name)] + (
            [target_path(self.cfg.name, self.cfg.group)] if self.cfg.group else []
        )
        found = [t for t in (updater.get_targetinfo(p) for p in paths) if t is not None]
        return max(found, key=lambda t: int(t.custom.get("model_version", 0)), default=None)

    def _unreachable(self, exc: Exception) -> PollResult:
        cause = exc.__cause__ or exc
        return self._result(
            "Failure",
            f"repository {self.cfg.repo_url} unreachable ({type(cause).__name__}); "
            f"{self._serving_text()}",
            "unreachable",
        )

    def _serving_text(self) -> str:
        sha, version = self.serving()
        return (
            f"still serving the last good model {sha[:12]} (version {version})"
            if sha
            else "no model installed"
        )

    # ---- deciding
    def _check(self, target) -> None:
        """Refuse, before downloading, what this device must not install."""
        custom, sha = target.custom, target.hashes["sha256"]
        version = int(custom.get("model_version", 0))
        current_sha, current_version = self.serving()
        if sha in self.dir.manifest(self.cfg.name).get("rejected", []):
            raise InstallError("rejected", f"version {version} ({sha[:12]}) failed here before")
        if current_version is not None and version < current_version:
            raise InstallError(
                "lower_version",
                f"refusing version {version}: lower than the installed version {current_version}",
            )
        if current_version is not None and version == current_version and sha != current_sha:
            raise InstallError("lower_version", f"version {version} is installed with other bytes")
        self._check_compatible(custom)
        self._check_space(target.length)

    def _check_compatible(self, custom: dict) -> None:
        from tfedge.ota.signature import runtime_satisfies, signature_diff

        arches = custom.get("arch") or ["any"]
        if "any" not in arches and self.cfg.arch not in arches:
            raise InstallError(
                "arch", f"the model is for {', '.join(arches)}, this device is {self.cfg.arch}"
            )
        if (
            self.cfg.profile
            and custom.get("profiles")
            and self.cfg.profile not in custom["profiles"]
        ):
            raise InstallError(
                "profile",
                f"the model is for profiles {custom['profiles']}, "
                f"this device is {self.cfg.profile}",
            )
        runtime = _runtime()
        if not runtime_satisfies(
            runtime["name"], runtime["version"], custom.get("min_runtime_version")
        ):
            raise InstallError(
                "runtime",
                f"the model needs TFLite runtime {custom.get('min_runtime_version')}, "
                f"this device has {runtime['name']} {runtime['version']}",
            )
        current = record_for(self.dir.manifest(self.cfg.name), self.dir.current_sha()) or {}
        changes = signature_diff(current.get("signature"), custom.get("signature"))
        if changes and not custom.get("allow_signature_change"):
            raise InstallError(
                "signature",
                "the input/output signature changed ("
                + "; ".join(changes)
                + "); publish with --allow-signature-change if the application handles it",
            )

    def _check_space(self, length: int) -> None:
        stats = os.statvfs(self.dir.root)
        free, needed = stats.f_bavail * stats.f_frsize, SPACE_FACTOR * length + SPACE_MARGIN
        if free < needed:
            raise InstallError(
                "disk_full",
                f"not enough space in {self.dir.root}: {free} bytes free, {needed} needed",
            )

    # ---- installing
    def install(self, updater, target) -> PollResult:
        sha, version = target.hashes["sha256"], int(target.custom.get("model_version", 0))
        if sha == self.dir.current_sha():
            return self._result("Success", f"up to date: version {version} ({sha[:12]})")
        self._check(target)
        previous, _ = self.serving()
        self._step(
            "download_start",
            sha256=sha,
            model_version=version,
            previous=previous,
            target=target.path,
            custom={k: v for k, v in target.custom.items() if k != "golden_npz"},
        )
        try:
            self._stage(updater, target)
            self._smoke_test(
                self._staged(sha), self._staged_golden(sha), target.custom["signature"]
            )
            self._step("smoke_tested")
            self._install_files(sha)
        except InstallError:
            self._abort_staging()
            raise
        except OSError as exc:
            self._abort_staging()
            reason = "disk_full" if exc.errno == errno.ENOSPC else "io"
            raise InstallError(
                reason, f"cannot stage version {version}: {exc.strerror or exc}"
            ) from exc
        except Exception as exc:  # tuf's RepositoryError/DownloadError: a bad or unreachable target
            self._abort_staging()
            raise InstallError(
                type(exc).__name__,
                f"download of version {version} rejected ({type(exc).__name__}: {exc})",
            ) from exc
        return self._switch_and_check()

    def _step(self, step: str, **data) -> dict:
        entry = self.journal.write(step, **data)
        self.log(f"step {step} {data.get('sha256', '')[:12]}".rstrip())
        if os.environ.get(PAUSE_ENV) == step:
            self.log(f"PAUSED at {step}")
            os.kill(os.getpid(), signal.SIGSTOP)
        if os.environ.get(DELAY_ENV):
            time.sleep(float(os.environ[DELAY_ENV]))
        return entry

    def _status(self, state: str, message: str) -> None:
        self.write_status(self._result(state, message))

    def _staged(self, sha: str) -> Path:
        return self.staging / f"{sha}.tflite.part"

    def _staged_golden(self, sha: str) -> Path:
        return self.staging / f"{sha}.golden.npz.part"

    def _stage(self, updater, target) -> None:
        """Download into staging, re-verify length and hash from disk, fsync; write the golden file."""
        sha = target.hashes["sha256"]
        self._status(
            "Downloading", f"downloading version {target.custom.get('model_version')} ({sha[:12]})"
        )
        self.staging.mkdir(exist_ok=True)
        staged = self._staged(sha)
        updater.download_target(target, filepath=str(staged))
        self._step("downloaded")
        if os.path.getsize(staged) != target.length or sha256_file(staged) != sha:
            raise InstallError(
                "LengthOrHashMismatchError", "the staged file does not match its signed hash"
            )
        fsync_file(staged)
        golden = base64.b64decode(target.custom.get("golden_npz", ""))
        if hashlib.sha256(golden).hexdigest() != target.custom.get("golden_sha256"):
            raise InstallError("golden", "the golden data does not match its signed hash")
        with open(self._staged_golden(sha), "wb") as handle:
            handle.write(golden)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(self.staging)
        self._step("verified")
        self._status(
            "Installing", f"smoke-testing version {target.custom.get('model_version')} ({sha[:12]})"
        )

    def _smoke_test(self, model: Path, golden: Path, signature: dict | None) -> None:
        """Run the smoke test in a child process; raise InstallError if it does not pass."""
        report = run_smoke(model, golden, signature, self.cfg.smoke_timeout, self.cfg.threads)
        if not report.get("ok"):
            raise InstallError(
                "smoke_test", f"smoke test failed: {report.get('error', 'no verdict')}"
            )

    def _install_files(self, sha: str) -> None:
        os.replace(self._staged_golden(sha), self.dir.golden_path(sha))
        self.dir.install_file(self._staged(sha), sha)
        self._step("staged")

    def _abort_staging(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self.journal.clear()

    # ---- switching, health, commit, rollback
    def _switch_and_check(self) -> PollResult:
        entry = self.journal.read()
        manifest = self.dir.manifest(self.cfg.name)
        custom = entry.get("custom", {})
        record = make_record(
            entry["sha256"],
            f"{self.cfg.repo_url} {entry.get('target')}",
            model_version=entry.get("model_version"),
            signature=custom.get("signature"),
            min_runtime_version=custom.get("min_runtime_version"),
        )
        self.dir.save_manifest(add_record(manifest, record))
        self._step("switching")
        return self._finish_switch()

    def _finish_switch(self) -> PollResult:
        entry = self.journal.read()
        self.dir.switch_to(entry["sha256"])
        self._step("switched")
        self._status(
            "Installing", f"switched to version {entry.get('model_version')}; health check running"
        )
        return self._health_and_commit()

    def _health_and_commit(self) -> PollResult:
        entry = self.journal.read()
        problem = self._post_switch_and_health(entry["sha256"])
        if problem:
            return self.rollback(problem)
        self._step("health_checked")
        return self._commit()

    def _commit(self) -> PollResult:
        entry = self._step("committed")
        return self._cleanup_after_commit(entry)

    def _post_switch_and_health(self, sha: str) -> str | None:
        env = dict(os.environ, TFEDGE_MODEL=str(self.dir.current_link), TFEDGE_MODEL_SHA256=sha)
        if self.cfg.post_switch_cmd:
            problem = _run_command(
                self.cfg.post_switch_cmd, env, self.cfg.health_timeout, "post-switch command"
            )
            if problem:
                return problem
        if self.cfg.health_cmd:
            return _run_command(self.cfg.health_cmd, env, self.cfg.health_timeout, "health check")
        report = run_smoke(
            self.dir.current_link,
            self.dir.golden_path(sha),
            None,
            self.cfg.health_timeout,
            self.cfg.threads,
        )
        return (
            None if report.get("ok") else f"health check (smoke test) failed: {report.get('error')}"
        )

    def rollback(self, problem: str) -> PollResult:
        """Restore the previous model; mark the failed version rejected so it is not retried."""
        entry = self.journal.write(ROLLING_BACK, problem=problem)
        self.log(f"step {ROLLING_BACK}: {problem}")
        bad, previous = entry["sha256"], entry.get("previous")
        if previous and self.dir.model_path(previous).is_file():
            self.dir.switch_to(previous)
        elif not previous:
            _unlink(self.dir.current_link)
            fsync_dir(self.dir.root)
        manifest = self.dir.manifest(self.cfg.name)
        manifest = dict(manifest, rejected=sorted({*manifest.get("rejected", []), bad}))
        if previous:
            manifest = add_record(
                manifest,
                dict(
                    record_for(manifest, previous) or {},
                    sha256=previous,
                    time=now_iso(),
                    event="rollback",
                    reason=problem,
                ),
            )
        self.dir.save_manifest(manifest)
        for path in (self.dir.model_path(bad), self.dir.golden_path(bad)):
            _unlink(path)
        self.journal.clear()
        return self._result(
            "RolledBack", f"version {entry.get('model_version')} rolled back: {problem}", "health"
        )

    # ---- recovery after a crash
    def recover(self) -> PollResult | None:
        """Finish or undo an install a killed agent left behind; None when there was none."""
        self.dir.clean_partials()
        entry = self.journal.read()
        if entry is None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return None
        step = entry["step"]
        self.log(f"recovering from an install interrupted after step {step}")
        if step in PRE_SWITCH:
            self._abort_staging()
            return None  # nothing visible changed; the poll starts the install again
        if step == ROLLING_BACK:
            return self.rollback(entry.get("problem", "interrupted"))
        if step == "switching":
            return self._finish_switch()
        if step == "switched":
            return self._health_and_commit()
        if step == "health_checked":
            return self._commit()
        return self._cleanup_after_commit(entry)

    def _cleanup_after_commit(self, entry: dict) -> PollResult:
        self.dir.prune(self.dir.manifest(self.cfg.name), self.cfg.keep)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.journal.clear()
        return self._result(
            "Success", f"installed version {entry.get('model_version')} ({entry['sha256'][:12]})"
        )


# ---------------------------------------------------------------- helpers
_RUNTIME: dict = {}


def _runtime() -> dict:
    """The TFLite runtime on this device (found by creating an interpreter), cached per process."""
    if not _RUNTIME:
        from tfedge.device import bench_device

        try:
            _RUNTIME.update(bench_device.find_runtime()[1])
        except bench_device.DeviceError as err:
            raise InstallError("runtime_missing", err.message) from err
    return _RUNTIME


def run_smoke(
    model: Path, golden: Path, signature: dict | None, timeout: float, threads: int = 1
) -> dict:
    """``python -m tfedge.ota.smoke`` in a child process; its JSON verdict (``ok`` False on a crash)."""
    argv = [
        sys.executable,
        "-m",
        "tfedge.ota.smoke",
        str(model),
        str(golden),
        "--threads",
        str(threads),
    ]
    sig_file = None
    if signature is not None:
        sig_file = Path(str(golden) + ".sig.json")
        sig_file.write_text(json.dumps(signature))
        argv += ["--signature", str(sig_file)]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=_child_env()
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the smoke test took longer than {timeout:.0f} s"}
    finally:
        if sig_file is not None:
            _unlink(sig_file)
    return _verdict(proc)


def _verdict(proc: subprocess.CompletedProcess) -> dict:
    lines = (proc.stdout or "").strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {
            "ok": False,
            "error": f"the smoke test crashed (exit {proc.returncode}): "
            f"{(proc.stderr or '').strip()[-300:]}",
        }
    report["ok"] = bool(report.get("ok")) and proc.returncode == 0
    return report


def _child_env() -> dict:
    package_parent = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=package_parent + (os.pathsep + path if path else ""))


def _run_command(command: str, env: dict, timeout: float, what: str) -> str | None:
    """Run a user's shell command; a problem description unless it exits 0 in time."""
    try:
        proc = subprocess.run(
            command, shell=True, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f"{what} `{command}` did not finish within {timeout:.0f} s"
    if proc.returncode != 0:
        return f"{what} `{command}` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-200:]}"
    return None


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _log(message: str) -> None:
    sys.stderr.write(f"tfedge-agent[{os.getpid()}] {time.strftime('%H:%M:%S')} {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- command line (no click needed)
def parse_args(argv=None) -> tuple[AgentConfig, bool]:
    p = argparse.ArgumentParser(
        prog="python -m tfedge.ota.agent",
        description="Install signed model updates from a TUF repository.",
    )
    p.add_argument("--repo-url", required=True, help="base URL serving metadata/ and targets/")
    p.add_argument(
        "--model-dir", required=True, type=Path, help="the model directory this agent manages"
    )
    p.add_argument("--name", required=True, help="model name (target models/NAME.tflite)")
    p.add_argument(
        "--root", required=True, type=Path, help="the trusted root.json installed with the agent"
    )
    p.add_argument("--group", help="device group for staged rollouts (e.g. canary)")
    p.add_argument(
        "--interval", type=float, default=300.0, help="seconds between polls (default 300)"
    )
    p.add_argument("--once", action="store_true", help="poll once and exit (0 = up to date)")
    p.add_argument(
        "--health-cmd",
        help="shell command that must exit 0 after the switch "
        "(default: the smoke test in a fresh process); $TFEDGE_MODEL is the active model",
    )
    p.add_argument(
        "--health-timeout", type=float, default=60.0, help="seconds for the health check"
    )
    p.add_argument(
        "--post-switch-cmd", help="shell command run after the switch, e.g. to reload the app"
    )
    p.add_argument(
        "--keep", type=int, default=DEFAULT_KEEP, help="versions kept on disk (default 3)"
    )
    p.add_argument("--profile", help="this device's profile name (refuses models made for others)")
    a = p.parse_args(argv)
    cfg = AgentConfig(
        a.repo_url,
        a.model_dir,
        a.name,
        a.root,
        a.group,
        a.interval,
        a.health_cmd,
        a.health_timeout,
        a.post_switch_cmd,
        a.keep,
        a.profile,
    )
    return cfg, a.once


def main(argv=None) -> int:
    cfg, once = parse_args(argv)
    try:
        return run(cfg, once)
    except (OtaError, UsageError) as err:
        sys.stderr.write(f"Error: {err}\n")
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
