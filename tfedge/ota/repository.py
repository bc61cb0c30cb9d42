"""A signed model repository with python-tuf: init, publish, promote, refresh, rotate keys, serve.

Layout of ``REPO`` (only ``public/`` is served; private keys never are)::

    REPO/keys/<role>.pem           PKCS#8 private keys (0600), root/targets/snapshot/timestamp
    REPO/public/metadata/          1.root.json ... N.root.json, N.targets.json, N.snapshot.json,
                                   timestamp.json (consistent snapshots)
    REPO/public/targets/models/<sha256>.<name>.tflite           for every device
    REPO/public/targets/groups/<group>/models/<sha256>.<name>.tflite   for one group (canary)

Each model target carries signed ``custom`` metadata: ``model_version`` (monotonic),
``min_runtime_version``, the input/output ``signature``, compatible ``profiles`` and
``arch``, and a golden input with its expected outputs (``golden_npz``, base64).

Example:
    >>> init_repository("repo")
    >>> publish("repo", "kws_int8.tflite", name="kws", version=3, profiles=["rpi4"], group="canary")
    >>> promote("repo", "kws", group="canary")   # widen to every device
    >>> refresh("repo")                           # from cron, daily
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.server
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

from tfedge.errors import OtaError, UsageError
from tfedge.fsutil import write_bytes_atomic
from tfedge.ota import target_path, valid_name

ROLES = ("root", "targets", "snapshot", "timestamp")
EXPIRY_DAYS = {"root": 365.0, "targets": 365.0, "snapshot": 7.0, "timestamp": 1.0}
TARGETS_RENEW_WITHIN_DAYS = 30.0


@dataclass(frozen=True)
class RepoLayout:
    """Where a repository keeps its keys and its served files."""

    root: Path

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def public(self) -> Path:
        return self.root / "public"

    @property
    def metadata(self) -> Path:
        return self.public / "metadata"

    @property
    def targets(self) -> Path:
        return self.public / "targets"

    def key_file(self, role: str) -> Path:
        return self.keys / f"{role}.pem"

    @property
    def root_json(self) -> Path:
        """The first root: what devices are installed with (``tfedge agent --root``)."""
        return self.metadata / "1.root.json"


@dataclass
class RepoResult:
    """What an operation on the repository did."""

    repo: str
    action: str
    versions: dict = field(default_factory=dict)
    target: str | None = None
    sha256: str | None = None
    model_version: int | None = None
    expires: dict = field(default_factory=dict)
    root_json: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, [])}


# ---------------------------------------------------------------- public operations
def init_repository(repo: str | Path) -> RepoResult:
    """Create ``repo`` with fresh ed25519 keys for the four roles and version-1 metadata.

    Raises:
        OtaError: ``repo`` already holds a repository.
    """
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

    layout = RepoLayout(Path(repo))
    if layout.keys.exists() or layout.metadata.exists():
        raise OtaError(
            f"{repo} already holds a repository",
            "pick an empty directory, or use `tfedge ota publish`",
        )
    for folder in (layout.keys, layout.metadata, layout.targets):
        folder.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.keys, 0o700)
    signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
    for role, signer in signers.items():
        _save_key(layout.key_file(role), signer)
    root = Metadata(Root(expires=_expiry("root")))
    for role, signer in signers.items():
        root.signed.add_key(signer.public_key, role)
    state = _State(
        layout,
        root,
        Metadata(Targets(expires=_expiry("targets"))),
        Metadata(Snapshot(expires=_expiry("snapshot"))),
        Metadata(Timestamp(expires=_expiry("timestamp"))),
        signers,
        initial=True,
    )
    state.write_root()
    state.write_targets_chain()
    state.initial = False
    return state.result("init")


def publish(
    repo: str | Path,
    model: str | Path,
    name: str,
    version: int,
    profiles: list[str] | tuple = (),
    group: str | None = None,
    golden: str | Path | None = None,
    allow_signature_change: bool = False,
    allow_lower: bool = False,
) -> RepoResult:
    """Add ``model`` as signed target ``name`` (for ``group`` only, if given) at ``version``.

    Args:
        profiles: device profiles it is made for; their arches go into the metadata.
        golden: an .npz whose ``x`` gives the golden inputs (default: seeded random ones).
        allow_signature_change: let devices accept a different input/output signature.
        allow_lower: publish a version lower than the last one (devices still refuse it).

    Raises:
        UsageError: a bad name, group or version.  ModelLoadError: not a TFLite model.
        OtaError: the version does not increase; the input/output signature differs from the
            published one of ``name`` and ``allow_signature_change`` is not set. Both are
            checked before anything is written or signed, so the version stays free.
    """
    _check_publish_args(name, version, group)
    model = Path(model)
    custom = model_metadata(model, version, profiles, golden, allow_signature_change)
    with _locked(repo) as state:
        path = target_path(name, group)
        _check_version_increases(state, path, version, allow_lower)
        if not allow_signature_change:
            _check_signature_unchanged(state, name, group, custom["signature"])
        target = _add_target(state, path, model, custom)
        state.write_targets_chain()
        return state.result(
            "publish", target=path, sha256=target.hashes["sha256"], model_version=version
        )


def promote(repo: str | Path, name: str, group: str) -> RepoResult:
    """Widen a staged rollout: make ``group``'s current ``name`` the version for every device."""
    from tuf.api.metadata import TargetFile

    with _locked(repo) as state:
        staged = state.targets.signed.targets.get(target_path(name, group))
        if staged is None:
            raise OtaError(
                f"{name} was never published to group {group!r}",
                f"publish first: tfedge ota publish REPO MODEL --name {name} --group {group} "
                "--version N",
            )
        path = target_path(name)
        _check_version_increases(state, path, staged.custom["model_version"], False)
        src = state.layout.targets / _served_name(staged.path, staged.hashes["sha256"])
        _copy_target(src, state.layout.targets / _served_name(path, staged.hashes["sha256"]))
        state.targets.signed.targets[path] = TargetFile(
            staged.length, staged.hashes, path, {"custom": dict(staged.custom)}
        )
        state.write_targets_chain()
        return state.result(
            "promote",
            target=path,
            sha256=staged.hashes["sha256"],
            model_version=staged.custom["model_version"],
        )


def refresh(
    repo: str | Path,
    timestamp_days: float = EXPIRY_DAYS["timestamp"],
    snapshot_days: float = EXPIRY_DAYS["snapshot"],
) -> RepoResult:
    """Re-sign timestamp and snapshot with new expiry dates (and targets when it nears expiry).

    Run it from cron more often than ``timestamp_days``, or every device stops updating
    with ExpiredMetadataError.
    """
    with _locked(repo) as state:
        renew_targets = state.targets.signed.expires < _expiry_in(TARGETS_RENEW_WITHIN_DAYS)
        state.write_targets_chain(
            bump_targets=renew_targets, snapshot_days=snapshot_days, timestamp_days=timestamp_days
        )
        return state.result("refresh")


def rotate_keys(repo: str | Path, role: str) -> RepoResult:
    """Replace ``role``'s key: a new root version (signed by the root key, old and new for
    root itself) revokes the old key, then the role's metadata is re-signed with the new one."""
    from securesystemslib.signer import CryptoSigner

    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}", f"choose one of {', '.join(ROLES)}")
    with _locked(repo) as state:
        new = CryptoSigner.generate_ed25519()
        pending = state.layout.keys / f"{role}.new.pem"
        _save_key(pending, new)
        old_keyid = state.root.signed.roles[role].keyids[0]
        state.root.signed.revoke_key(old_keyid, role)
        state.root.signed.add_key(new.public_key, role)
        extra = [state.signers["root"]] if role == "root" else []
        state.signers[role] = new
        state.root.signed.version += 1
        state.root.signed.expires = _expiry("root")
        state.write_root(extra_signers=extra)
        os.replace(pending, state.layout.key_file(role))
        if role != "root":
            state.write_targets_chain(
                bump_targets=role == "targets", bump_snapshot=role in ("targets", "snapshot")
            )
        return state.result("rotate-keys")


def repo_status(repo: str | Path) -> RepoResult:
    """Versions, expiry dates and targets of ``repo`` (read-only)."""
    state = _State.load(RepoLayout(Path(repo)))
    result = state.result("status")
    result.versions["targets_list"] = {
        p: t.custom.get("model_version") for p, t in sorted(state.targets.signed.targets.items())
    }
    return result


def make_server(
    repo: str | Path, port: int = 8000, host: str = "127.0.0.1"
) -> http.server.ThreadingHTTPServer:
    """A static HTTP server for ``REPO/public`` (trials and tests; any static server will do)."""
    layout = RepoLayout(Path(repo))
    if not layout.metadata.is_dir():
        raise OtaError(
            f"{repo} is not a repository (no public/metadata)", "create one: tfedge ota init REPO"
        )
    handler = partial(_QuietHandler, directory=str(layout.public))
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise OtaError(
            f"cannot listen on {host}:{port}: {exc.strerror}", "pick another --port"
        ) from exc
    server.daemon_threads = True
    return server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per request would drown a fleet test
        pass


# ---------------------------------------------------------------- model metadata
def model_metadata(
    model: Path, version: int, profiles=(), golden=None, allow_signature_change=False
) -> dict:
    """The signed ``custom`` block for ``model``."""
    from tfedge.convert.tflite_model import read_tflite
    from tfedge.ota.golden import golden_npz
    from tfedge.ota.signature import signature_from_tflite
    from tfedge.targets.profiles import check_tflite_against_profile, load_profile

    parsed = read_tflite(model)
    loaded = [load_profile(p) for p in profiles]
    for profile in loaded:  # size, full-integer (the one verifier) and runtime ops
        check_tflite_against_profile(profile, model)
    blob = golden_npz(model, golden)
    return {
        "model_version": int(version),
        "min_runtime_version": parsed.min_runtime_version,
        "signature": signature_from_tflite(model),
        "profiles": [p.name for p in loaded],
        "arch": sorted({p.machine_arch for p in loaded}) or ["any"],
        "golden_npz": base64.b64encode(blob).decode("ascii"),
        "golden_sha256": hashlib.sha256(blob).hexdigest(),
        "allow_signature_change": bool(allow_signature_change),
        "source": model.name,
        "published": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _check_publish_args(name: str, version: int, group: str | None) -> None:
    if not valid_name(name):
        raise UsageError(
            f"bad model name {name!r}", "use letters, digits, '.', '_' or '-' (e.g. kws)"
        )
    if group is not None and not valid_name(group):
        raise UsageError(
            f"bad group name {group!r}", "use letters, digits, '.', '_' or '-' (e.g. canary)"
        )
    if not isinstance(version, int) or version < 1:
        raise UsageError(
            f"bad model version {version!r}", "versions are integers from 1, increasing per release"
        )


def _check_version_increases(state: "_State", path: str, version: int, allow_lower: bool) -> None:
    existing = state.targets.signed.targets.get(path)
    last = existing.custom.get("model_version", 0) if existing is not None else 0
    if version <= last and not allow_lower:
        raise OtaError(
            f"{path} is already at version {last}; version {version} would not be installed",
            f"publish version {last + 1} or higher: devices refuse lower versions",
        )


def _check_signature_unchanged(
    state: "_State", name: str, group: str | None, signature: dict
) -> None:
    """Refuse a signature the devices of ``group`` (or every device) would refuse.

    The comparison is the devices' own (:func:`tfedge_device.signature.signature_diff`, as the
    agent and ``push`` use it) against the published target they would replace: for a group,
    the higher version of the group's and everyone's (what its devices install).
    """
    from tfedge.ota.signature import signature_diff

    targets = state.targets.signed.targets
    paths = [target_path(name, group)] + ([target_path(name)] if group else [])
    published_targets = [targets[p] for p in paths if p in targets]
    if not published_targets:
        return
    current = max(published_targets, key=lambda t: t.custom.get("model_version", 0))
    published = current.custom.get("signature")
    changes = signature_diff(published, signature)
    if changes:
        version = current.custom.get("model_version")
        raise OtaError(
            f"the input/output signature differs from {current.path} version {version}: "
            + "; ".join(changes),
            "devices would refuse it, since their application would break; pass "
            "--allow-signature-change if the application handles the new signature",
        )


def _add_target(state: "_State", path: str, model: Path, custom: dict):
    from tuf.api.metadata import TargetFile

    data = model.read_bytes()
    target = TargetFile.from_data(path, data, ["sha256"])
    target.unrecognized_fields["custom"] = custom
    served = state.layout.targets / _served_name(path, target.hashes["sha256"])
    served.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(served, data)
    state.targets.signed.targets[path] = target
    return target


def _served_name(path: str, sha: str) -> str:
    """Consistent snapshots serve ``dir/<sha256>.<basename>``."""
    folder, _, base = path.rpartition("/")
    return f"{folder}/{sha}.{base}" if folder else f"{sha}.{base}"


def _copy_target(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        write_bytes_atomic(dst, src.read_bytes())


# ---------------------------------------------------------------- loading, signing, writing
def _expiry(role: str) -> datetime:
    return _expiry_in(EXPIRY_DAYS[role])


def _expiry_in(days: float) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


def _save_key(path: Path, signer) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(signer.private_bytes)
        handle.flush()
        os.fsync(handle.fileno())


def _load_signer(path: Path, public_key):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    try:
        return CryptoSigner(load_pem_private_key(path.read_bytes(), password=None), public_key)
    except (OSError, ValueError) as exc:
        raise OtaError(
            f"cannot load the private key {path}: {exc}",
            "keys live in REPO/keys; restore them from your backup",
        ) from exc


@contextlib.contextmanager
def _locked(repo: str | Path):
    """Load the repository's current state under an exclusive lock (one writer at a time)."""
    layout = RepoLayout(Path(repo))
    if not layout.metadata.is_dir():
        raise OtaError(
            f"{repo} is not a repository (no public/metadata)", "create one: tfedge ota init REPO"
        )
    with open(layout.root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield _State.load(layout, with_signers=True)


@dataclass
class _State:
    layout: RepoLayout
    root: Any  # tuf Metadata[Root]; each role's object is what its file holds
    targets: Any
    snapshot: Any
    timestamp: Any
    signers: dict
    initial: bool = False  # version-1 metadata of a new repository: sign without bumping

    @classmethod
    def load(cls, layout: RepoLayout, with_signers: bool = False) -> "_State":
        from tuf.api.metadata import Metadata

        def read(name: str) -> Any:
            return Metadata.from_file(str(layout.metadata / name))

        try:
            root = read(f"{_latest_root(layout)}.root.json")
            timestamp = read("timestamp.json")
            snapshot = read(f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
            targets = read(f"{snapshot.signed.meta['targets.json'].version}.targets.json")
        except (OSError, ValueError, KeyError) as exc:
            raise OtaError(
                f"cannot read the metadata of {layout.root}: {exc}",
                "the repository is damaged; restore public/metadata from a backup",
            ) from exc
        signers = {}
        if with_signers:
            for role in ROLES:
                keyid = root.signed.roles[role].keyids[0]
                signers[role] = _load_signer(layout.key_file(role), root.signed.keys[keyid])
        return cls(layout, root, targets, snapshot, timestamp, signers)

    def write_root(self, extra_signers=()) -> None:
        self.root.signatures.clear()
        for signer in (self.signers["root"], *extra_signers):
            self.root.sign(signer, append=True)
        write_bytes_atomic(
            self.layout.metadata / f"{self.root.signed.version}.root.json", self.root.to_bytes()
        )

    def write_targets_chain(
        self,
        bump_targets: bool = True,
        bump_snapshot: bool = True,
        snapshot_days: float = EXPIRY_DAYS["snapshot"],
        timestamp_days: float = EXPIRY_DAYS["timestamp"],
    ) -> None:
        """Sign and write targets -> snapshot -> timestamp, the timestamp last (clients see it
        only once everything it points to is in place)."""
        from tuf.api.metadata import MetaFile

        if bump_targets:
            self._bump(self.targets, "targets", _expiry("targets"))
        if bump_targets or bump_snapshot:
            self.snapshot.signed.meta["targets.json"] = MetaFile(self.targets.signed.version)
            self._bump(self.snapshot, "snapshot", _expiry_in(snapshot_days))
        self.timestamp.signed.snapshot_meta = MetaFile(self.snapshot.signed.version)
        self._bump(self.timestamp, "timestamp", _expiry_in(timestamp_days))
        if bump_targets:
            self._write(self.targets, f"{self.targets.signed.version}.targets.json")
        if bump_targets or bump_snapshot:
            self._write(self.snapshot, f"{self.snapshot.signed.version}.snapshot.json")
        self._write(self.timestamp, "timestamp.json")

    def _bump(self, md, role: str, expires: datetime) -> None:
        md.signed.version += 0 if self.initial else 1
        md.signed.expires = expires
        md.signatures.clear()
        md.sign(self.signers[role])

    def _write(self, md, name: str) -> None:
        write_bytes_atomic(self.layout.metadata / name, md.to_bytes())

    def result(self, action: str, **extra) -> RepoResult:
        mds = {
            "root": self.root,
            "targets": self.targets,
            "snapshot": self.snapshot,
            "timestamp": self.timestamp,
        }
        return RepoResult(
            repo=str(self.layout.root),
            action=action,
            versions={r: m.signed.version for r, m in mds.items()},
            expires={r: m.signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ") for r, m in mds.items()},
            root_json=str(self.layout.root_json),
            **extra,
        )


def _latest_root(layout: RepoLayout) -> int:
    versions = [
        int(p.name.split(".")[0])
        for p in layout.metadata.glob("*.root.json")
        if p.name.split(".")[0].isdigit()
    ]
    if not versions:
        raise OtaError(
            f"{layout.root} has no root metadata", "create the repository: tfedge ota init REPO"
        )
    return max(versions)


def remove_unused_targets(repo: str | Path) -> list[str]:
    """Delete served target files no current target refers to (old models); return their names."""
    state = _State.load(RepoLayout(Path(repo)))
    used = {_served_name(p, t.hashes["sha256"]) for p, t in state.targets.signed.targets.items()}
    removed = []
    for path in state.layout.targets.rglob("*"):
        rel = path.relative_to(state.layout.targets).as_posix()
        if path.is_file() and rel not in used:
            path.unlink()
            removed.append(rel)
    return removed


__all__ = [
    "init_repository",
    "publish",
    "promote",
    "refresh",
    "rotate_keys",
    "repo_status",
    "make_server",
    "remove_unused_targets",
    "RepoLayout",
    "RepoResult",
    "model_metadata",
]
