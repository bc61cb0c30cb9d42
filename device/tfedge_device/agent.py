"""The device agent: poll a signed repository, install a newer model safely, roll back on failure.

Every poll builds a fresh python-tuf ``Updater`` that trusts only the root the device was
installed with (``--root``), never a writable cache. A newer, compatible model is
downloaded (a signed delta from the installed model when the metadata names one, else its
compressed form when the signed metadata names one in a codec this device decodes: each
checked by TUF, then applied or decompressed in bounded memory and checked against the full
model's signed hash; on any problem the full model) to a staging file on the model
directory's filesystem, re-verified, fsynced, smoke-tested in a child process, moved into
``versions/``, and activated by renaming the ``current`` symlink (the directory is fsynced).
A health check then runs (a user command, by default the smoke test in a fresh process); if
it fails, the previous model comes back.

Every step is journalled (:mod:`tfedge_device.journal`), so an agent killed at any moment
resumes or rolls back when it restarts. ``status.json`` tells a fleet dashboard where the
device is: Downloading, Installing, Success, Failure or RolledBack. One agent per model
directory (``agent.lock``). Runs without TensorFlow: numpy, a TFLite runtime and tuf. The
model directory is :class:`tfedge_device.modeldir.ModelDir` over local files, the same
protocol ``tfedge push`` speaks over SFTP.

Usage (on the device; also ``python -m tfedge_device.agent``, and ``tfedge agent`` on a host):
    tfedge-agent --repo-url https://models.example.com --model-dir /var/lib/tfedge/kws \\
        --name kws --root /etc/tfedge/root.json [--group canary] [--interval 300] [--once]

Example:
    >>> cfg = AgentConfig("http://127.0.0.1:8000", Path("/var/lib/tfedge/kws"), "kws",
    ...                   Path("root.json"))
    >>> poll_once(cfg).state
    'Success'
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from tfedge_device import child_env, target_path
from tfedge_device.config import AgentConfig, AgentError, ConfigError, parse_args, validate
from tfedge_device.decompress import DecompressError, available_codecs, decompress_stream
from tfedge_device.delta import DeltaError, delta_entry, fetch_and_apply
from tfedge_device.journal import PRE_SWITCH, ROLLING_BACK, Journal
from tfedge_device.modeldir import (
    CURRENT,
    LocalFiles,
    ModelDir,
    add_record,
    fsync_dir,
    fsync_file,
    make_record,
    now_iso,
    record_for,
    sha256_file,
    unlink,
    write_json_atomic,
)
from tfedge_device.report import report_status

__all__ = [
    "AgentConfig",
    "AgentError",
    "ConfigError",
    "PollResult",
    "main",
    "parse_args",
    "poll_once",
    "run",
    "run_smoke",
    "validate",
]

STATES = ("Downloading", "Installing", "Success", "Failure", "RolledBack")
PAUSE_ENV = "TFEDGE_AGENT_PAUSE_AT"  # test hook: stop (SIGSTOP) right after this journal step
DELAY_ENV = "TFEDGE_AGENT_STEP_DELAY"  # test hook: linger this many seconds after every step
SPACE_FACTOR = 2  # free space needed: twice the model (staging + the version kept)
SPACE_MARGIN = 64 * 1024
STAGING = ".staging"  # downloads land here, on the model directory's file system


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


# ---------------------------------------------------------------- the daemon
def run(cfg: AgentConfig, once: bool = False, log=None) -> int:
    """Hold the directory lock and poll (once, or every ``interval`` s); return an exit code."""
    log = log or _log
    cfg = validate(cfg)
    ModelDir(LocalFiles(cfg.model_dir, public=True)).ensure()
    with directory_lock(cfg.model_dir):
        while True:
            result = poll_once(cfg, log)
            if once:
                return 0 if result.ok else 1
            time.sleep(cfg.interval * random.uniform(0.9, 1.1))


class directory_lock:
    """An exclusive ``flock`` on ``MODEL_DIR/agent.lock``; a second agent gets an AgentError."""

    def __init__(self, model_dir: Path) -> None:
        self.path = Path(model_dir) / "agent.lock"
        self.handle: TextIO | None = None

    def __enter__(self):
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "?"
            self.handle.close()
            raise AgentError(
                f"another agent (pid {holder}) already manages {self.path.parent}",
                "run one agent per model directory; stop the other one "
                "(systemctl stop tfedge-agent@NAME)",
            ) from exc
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.close()


def poll_once(cfg: AgentConfig, log=None) -> PollResult:
    """Recover from an interrupted install, then check the repository and install if newer."""
    log = log or _log
    agent = _Agent(cfg, log)
    recovered = agent.recover()
    result = agent.poll() if recovered is None or recovered.ok else recovered
    agent.write_status(result)
    log(f"{result.state}: {result.message}")
    report_status(cfg, result.to_dict(), log)  # best effort, bounded; never changes the result
    return result


# ---------------------------------------------------------------- one poll
class _Agent:
    def __init__(self, cfg: AgentConfig, log) -> None:
        self.cfg, self.log = cfg, log
        self.root = Path(cfg.model_dir)
        self.files = LocalFiles(self.root, public=True)  # status.json, manifest: 0644
        self.dir = ModelDir(self.files).ensure()
        self.journal = Journal(self.root / "journal.json")
        self.staging = self.root / STAGING

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
            write_json_atomic(self.root / "status.json", status, public=True)
        except OSError as exc:
            self.log(f"cannot write status.json: {exc}")

    # ---- polling the repository
    def poll(self) -> PollResult:
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

        metadata = self.root / "tuf"
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
        from tfedge_device.signature import runtime_satisfies, signature_diff

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
        stats = os.statvfs(self.root)
        free, needed = stats.f_bavail * stats.f_frsize, SPACE_FACTOR * length + SPACE_MARGIN
        if free < needed:
            raise InstallError(
                "disk_full",
                f"not enough space in {self.root}: {free} bytes free, {needed} needed",
            )

    # ---- installing
    def install(self, updater, target) -> PollResult:
        from tuf.api import exceptions as tuf_errors

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
                self._staged(sha), self._staged_golden(sha), target.custom.get("signature")
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
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:  # a bad target
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
        return self.files.path(self._staged_rel(sha))

    def _staged_golden(self, sha: str) -> Path:
        return self.files.path(self._staged_rel(sha, ".golden.npz"))

    @staticmethod
    def _staged_rel(sha: str, suffix: str = ".tflite") -> str:
        return f"{STAGING}/{sha}{suffix}.part"

    def _stage(self, updater, target) -> None:
        """Download into staging, re-verify length and hash from disk, fsync; write the golden."""
        sha = target.hashes["sha256"]
        self._status(
            "Downloading", f"downloading version {target.custom.get('model_version')} ({sha[:12]})"
        )
        self.staging.mkdir(exist_ok=True)
        staged = self._staged(sha)
        if not self._stage_delta(updater, target, staged) and not self._stage_compressed(
            updater, target, staged
        ):
            updater.download_target(target, filepath=str(staged))
        self._step("downloaded")
        if os.path.getsize(staged) != target.length or sha256_file(staged) != sha:
            raise InstallError(
                "LengthOrHashMismatchError", "the staged file does not match its signed hash"
            )
        fsync_file(staged)
        self._stage_golden(updater, target)
        fsync_dir(self.staging)
        self._step("verified")
        self._status(
            "Installing", f"smoke-testing version {target.custom.get('model_version')} ({sha[:12]})"
        )

    def _stage_delta(self, updater, target, staged: Path) -> bool:
        """Stage the model from a signed delta whose base is the installed model; False
        (logged, nothing left behind) when there is none or it fails a check."""
        from tuf.api import exceptions as tuf_errors

        base = self.dir.current_sha()
        entry = delta_entry(target.custom, base)
        if entry is None or base is None:
            return False
        packed = self.files.path(self._staged_rel(target.hashes["sha256"], ".delta"))
        try:
            size = fetch_and_apply(
                updater, target, entry, self.files.path(ModelDir.model_file(base)), packed, staged
            )
            self.log(f"model staged from delta {entry['target']} ({size} bytes)")
            return True
        except DeltaError as err:
            why = str(err)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            why = f"{type(exc).__name__}: {exc}"
        finally:
            unlink(packed)
        unlink(staged)
        self.log(f"delta {entry['target']} not used ({why}); downloading the model")
        return False

    def _stage_compressed(self, updater, target, staged: Path) -> bool:
        """Stage the model from a compressed form the signed metadata names; False (logged,
        nothing left behind) when there is none this device decodes or it fails a check."""
        from tuf.api import exceptions as tuf_errors

        entry = compressed_entry(target.custom, available_codecs())
        if entry is None:
            offered = _offered_codecs(target.custom)
            if offered:
                self.log(
                    f"no compressed form in a codec this device decodes ({', '.join(offered)}); "
                    "downloading the full model"
                )
            return False
        packed = self.files.path(self._staged_rel(target.hashes["sha256"], ".compressed"))
        try:
            self._fetch_and_decompress(updater, target, entry, packed, staged)
            return True
        except (InstallError, DecompressError) as err:
            why = getattr(err, "message", str(err))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        finally:
            unlink(packed)
        unlink(staged)
        self.log(
            f"compressed target {entry['target']} not used ({why}); downloading the full model"
        )
        return False

    def _fetch_and_decompress(self, updater, target, entry: dict, packed: Path, staged: Path):
        info = updater.get_targetinfo(entry["target"])
        if info is None or info.length != entry["length"] or info.hashes != entry["hashes"]:
            raise InstallError("compressed", "it is missing or not the one the model names")
        if (
            entry["decompressed_length"] != target.length
            or entry["decompressed_hashes"].get("sha256") != target.hashes["sha256"]
        ):
            raise InstallError("compressed", "it names other bytes than the model")
        updater.download_target(info, filepath=str(packed))  # TUF checks length and hash
        with open(packed, "rb") as src, open(staged, "wb") as dst:
            decompress_stream(src, dst, entry["codec"], max_length=target.length)
        if (
            os.path.getsize(staged) != target.length
            or sha256_file(staged) != target.hashes["sha256"]
        ):
            raise InstallError("compressed", "it decompresses to bytes other than the signed model")
        self.log(f"model staged from {entry['target']} ({info.length} bytes, {entry['codec']})")

    def _stage_golden(self, updater, target) -> None:
        """Stage the golden data: the TUF target the signed custom schema 2 names (verified by
        TUF like the model), else the base64 ``golden_npz`` of older repositories."""
        staged = self._staged_golden(target.hashes["sha256"])
        path, length, hashes = golden_target(target.custom)
        if path is not None:
            info = updater.get_targetinfo(path)
            if info is None or info.length != length or info.hashes != hashes:
                raise InstallError(
                    "golden", f"the golden target {path} is missing or not the one the model names"
                )
            updater.download_target(info, filepath=str(staged))
            if sha256_file(staged) != hashes.get("sha256"):
                raise InstallError("golden", "the golden data does not match its signed hash")
            fsync_file(staged)
            return
        golden = base64.b64decode(target.custom.get("golden_npz", ""))
        if hashlib.sha256(golden).hexdigest() != target.custom.get("golden_sha256"):
            raise InstallError("golden", "the golden data does not match its signed hash")
        with open(staged, "wb") as handle:
            handle.write(golden)
            handle.flush()
            os.fsync(handle.fileno())

    def _smoke_test(self, model: Path, golden: Path, signature: dict | None) -> None:
        """Run the smoke test in a child process; raise InstallError if it does not pass."""
        report = run_smoke(model, golden, signature, self.cfg.smoke_timeout, self.cfg.threads)
        if not report.get("ok"):
            raise InstallError(
                "smoke_test", f"smoke test failed: {report.get('error', 'no verdict')}"
            )

    def _install_files(self, sha: str) -> None:
        self.files.rename(self._staged_rel(sha, ".golden.npz"), ModelDir.golden_file(sha))
        self.dir.install_staged(self._staged_rel(sha), sha)
        self._step("staged")

    def _abort_staging(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self.journal.clear()

    # ---- switching, health, commit, rollback
    def _entry(self) -> dict:
        """The journal of the install in progress (written before these steps run)."""
        entry = self.journal.read()
        if entry is None:
            raise InstallError("journal", f"the install journal {self.journal.path} is gone")
        return entry

    def _switch_and_check(self) -> PollResult:
        entry = self._entry()
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
        entry = self._entry()
        self.dir.switch_to(entry["sha256"])
        self._step("switched")
        self._status(
            "Installing", f"switched to version {entry.get('model_version')}; health check running"
        )
        return self._health_and_commit()

    def _health_and_commit(self) -> PollResult:
        entry = self._entry()
        problem = self._post_switch_and_health(entry["sha256"])
        if problem:
            return self.rollback(problem)
        self._step("health_checked")
        return self._commit()

    def _commit(self) -> PollResult:
        entry = self._step("committed")
        return self._cleanup_after_commit(entry)

    def _post_switch_and_health(self, sha: str) -> str | None:
        env = dict(os.environ, TFEDGE_MODEL=str(self.root / CURRENT), TFEDGE_MODEL_SHA256=sha)
        if self.cfg.post_switch_cmd:
            problem = _run_command(
                self.cfg.post_switch_cmd, env, self.cfg.health_timeout, "post-switch command"
            )
            if problem:
                return problem
        if self.cfg.health_cmd:
            return _run_command(self.cfg.health_cmd, env, self.cfg.health_timeout, "health check")
        report = run_smoke(
            self.root / CURRENT,
            self.files.path(ModelDir.golden_file(sha)),
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
        if previous and self.dir.has_version(previous):
            self.dir.switch_to(previous)
        elif not previous:
            self.dir.clear_current()
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
        self.dir.remove_version(bad)
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
def golden_target(custom: dict) -> tuple[str | None, int | None, dict]:
    """``(path, length, hashes)`` of the golden target named by signed custom metadata of
    schema 2 or later (``custom["tfedge"]``); ``(None, None, {})`` for older metadata,
    whose golden data is the base64 ``golden_npz``."""
    meta = custom.get("tfedge")
    schema = meta.get("schema") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(schema, int) or schema < 2:
        return None, None, {}
    path, length = meta.get("golden_target"), meta.get("golden_length")
    hashes = meta.get("golden_hashes")
    if (
        not isinstance(path, str)
        or not isinstance(length, int)
        or not isinstance(hashes, dict)
        or not isinstance(hashes.get("sha256"), str)
    ):
        raise InstallError("golden", "the signed metadata names no valid golden target")
    return path, length, hashes


def compressed_entry(custom: dict, codecs) -> dict | None:
    """The first well-formed compressed form named by signed custom metadata of schema 3 or
    later whose codec is in ``codecs``; None if there is none (then the full model)."""
    meta = custom.get("tfedge")
    schema = meta.get("schema") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(schema, int) or schema < 3:
        return None
    for entry in meta.get("compressed") or []:
        if (
            isinstance(entry, dict)
            and entry.get("codec") in codecs
            and isinstance(entry.get("target"), str)
            and isinstance(entry.get("length"), int)
            and isinstance(entry.get("hashes"), dict)
            and isinstance(entry.get("decompressed_length"), int)
            and isinstance(entry.get("decompressed_hashes"), dict)
        ):
            return entry
    return None


def _offered_codecs(custom: dict) -> list[str]:
    meta = custom.get("tfedge")
    entries = meta.get("compressed") if isinstance(meta, dict) else None
    if not isinstance(entries, list):
        return []
    return [str(e.get("codec")) for e in entries if isinstance(e, dict)]


_RUNTIME: dict = {}


def _runtime() -> dict:
    """The TFLite runtime on this device (found by creating an interpreter), cached per process."""
    if not _RUNTIME:
        from tfedge_device import interpreter

        try:
            _RUNTIME.update(interpreter.find_runtime()[1])
        except interpreter.DeviceError as err:
            raise InstallError("runtime_missing", err.message) from err
    return _RUNTIME


def run_smoke(
    model: Path, golden: Path, signature: dict | None, timeout: float, threads: int = 1
) -> dict:
    """``python -m tfedge_device.smoke`` in a child process; its JSON verdict (``ok`` False on a
    crash)."""
    argv = [
        sys.executable,
        "-m",
        "tfedge_device.smoke",
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
            argv, capture_output=True, text=True, timeout=timeout, env=child_env()
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the smoke test took longer than {timeout:.0f} s"}
    finally:
        if sig_file is not None:
            unlink(sig_file)
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


def _run_command(command: str, env: dict, timeout: float, what: str) -> str | None:
    """Run a user's shell command; a problem description unless it exits 0 in time."""
    try:
        proc = subprocess.run(
            command, shell=True, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f"{what} `{command}` did not finish within {timeout:.0f} s"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-200:]
        return f"{what} `{command}` exited {proc.returncode}: {tail}"
    return None


def _log(message: str) -> None:
    sys.stderr.write(f"tfedge-agent[{os.getpid()}] {time.strftime('%H:%M:%S')} {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- command line (no click needed)
def main(argv=None) -> int:
    cfg, once = parse_args(argv)
    try:
        return run(cfg, once)
    except AgentError as err:
        sys.stderr.write(f"Error: {err}\n")
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
