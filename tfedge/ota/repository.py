"""A signed model repository with python-tuf: init, publish, promote, refresh, rotate keys, serve.

Layout of ``REPO`` (only ``public/`` is served; private keys never are)::

    REPO/keys/<role>.pem           PKCS#8 private keys (0600, dir 0700) of targets, snapshot,
                                   timestamp, and root unless ``init`` put it elsewhere
                                   (``root_keys``: e.g. a removable disk); encrypted with a
                                   password if ``init(encrypt=True)``
    REPO/keys/signers.json         where each role's keys are (:mod:`tfedge.ota.keys`)
    REPO/public/metadata/          1.root.json ... N.root.json, N.targets.json, N.snapshot.json,
                                   timestamp.json (consistent snapshots)
    REPO/public/targets/models/<sha256>.<name>.tflite           for every device
    REPO/public/targets/groups/<group>/models/<sha256>.<name>.tflite   for one group (canary)
    REPO/public/targets/golden/<sha256>.<sha256>.npz            golden data (its own target)
    REPO/public/targets/compressed/<sha256>.<model sha256>.tflite.xz   a compressed model

Everything under ``public/`` is 0644 (directories 0755) whatever the umask: a static server
running as another user must read it. Each operation loads only the keys it signs with:
``publish``/``promote`` targets, snapshot and timestamp; ``refresh`` snapshot and timestamp
(targets too when it nears expiry and its key is there); ``rotate_keys`` a threshold of root
keys, plus the roles it re-signs. The root key can stay offline.

Each model target carries signed ``custom`` metadata: ``model_version`` (monotonic),
``min_runtime_version``, the input/output ``signature``, compatible ``profiles`` and
``arch``, and ``tfedge: {schema: 3, golden_target, golden_length, golden_hashes,
compressed}``: the golden input with its expected outputs is the TUF target
``golden/<sha256>.npz``; ``compressed`` (schema 3) lists compressed forms of the model, each
its own TUF target ``compressed/<model sha256>.tflite.xz`` (:mod:`tfedge.ota.compress`) with
its codec and the decompressed length and sha256. Devices before schema 3 ignore it and
download the full model; devices before schema 2 read ``golden_npz`` (base64) and
``golden_sha256``, kept unless ``legacy_golden=False``.

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
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

from tfedge.errors import OtaError, UsageError
from tfedge.fsutil import write_bytes_atomic
from tfedge.ota import compress as compression
from tfedge.ota import delta as deltas_lib
from tfedge.ota import keys as keystore
from tfedge.ota import target_path, valid_name

ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
PUBLIC_FILE_MODE, PUBLIC_DIR_MODE = 0o644, 0o755  # served files: readable by any user
# custom["tfedge"]["schema"]: 2 = golden data as its own target; 3 = compressed forms too
CUSTOM_SCHEMA = 3
DELTA_SCHEMA = 4  # 4 = deltas too (only when the target names some); all of 3 kept
# targets a model target names (no custom of their own)
SIDE_PREFIXES = ("golden/", compression.PREFIX, deltas_lib.PREFIX)
TARGETS_MAX_LENGTH = 5_000_000  # python-tuf's default UpdaterConfig.targets_max_length
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
    root_keys: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, [])}


# ---------------------------------------------------------------- public operations
def init_repository(
    repo: str | Path,
    root_keys: list[str | Path] | tuple = (),
    root_threshold: int = 1,
    encrypt: bool = False,
    password: keystore.PasswordArg = None,
) -> RepoResult:
    """Create ``repo`` with fresh ed25519 keys for the four roles and version-1 metadata.

    Args:
        root_keys: files to write the root keys to (one key each, e.g. on removable disks),
            instead of ``REPO/keys/root.pem``; none may exist yet.
        root_threshold: how many root keys must sign a new root (1 to ``len(root_keys)``).
        encrypt: encrypt every private key with a password (``password``, else
            ``TFEDGE_KEY_PASSWORD``, else the prompt ``password`` is).

    Raises:
        OtaError: ``repo`` already holds a repository.  UsageError: bad root key files or
            threshold; nothing is created then.
    """
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

    layout = RepoLayout(Path(repo))
    if layout.keys.exists() or layout.metadata.exists():
        raise OtaError(
            f"{repo} already holds a repository",
            "pick an empty directory, or use `tfedge ota publish`",
        )
    root_files = [Path(p) for p in root_keys] or [layout.keys / "root.pem"]
    _check_root_key_files(root_files, root_threshold, bool(root_keys))
    secret = keystore.Passwords(password).new_password() if encrypt else None
    try:
        _make_dirs(layout.root, PUBLIC_DIR_MODE)
        layout.keys.mkdir(mode=0o700)
        os.chmod(layout.keys, 0o700)
        for folder in (layout.metadata, layout.targets):
            _make_dirs(folder, PUBLIC_DIR_MODE)
    except OSError as exc:
        raise OtaError(
            f"cannot create the repository {repo}: {exc.strerror}",
            "choose a directory you can write to",
        ) from exc
    signers = {role: CryptoSigner.generate_ed25519() for role in ONLINE_ROLES}
    root_signers = [CryptoSigner.generate_ed25519() for _ in root_files]
    where: dict[str, list[dict]] = {}
    for path, signer in zip(root_files, root_signers):
        keystore.save_key(path, signer, secret)
        uri = keystore.file_uri(path, layout.keys, secret is not None)
        where.setdefault("root", []).append({"keyid": signer.public_key.keyid, "uri": uri})
    for role, signer in signers.items():
        keystore.save_key(layout.key_file(role), signer, secret)
        uri = keystore.file_uri(layout.key_file(role), layout.keys, secret is not None)
        where[role] = [{"keyid": signer.public_key.keyid, "uri": uri}]
    keystore.write_signers(layout.keys, where)
    root = Metadata(Root(expires=_expiry("root")))
    for signer in root_signers:
        root.signed.add_key(signer.public_key, "root")
    root.signed.roles["root"].threshold = root_threshold
    for role, signer in signers.items():
        root.signed.add_key(signer.public_key, role)
    state = _State(
        layout,
        root,
        Metadata(Targets(expires=_expiry("targets"))),
        Metadata(Snapshot(expires=_expiry("snapshot"))),
        Metadata(Timestamp(expires=_expiry("timestamp"))),
        signers,
        root_signers=root_signers,
        initial=True,
    )
    state.write_root()
    state.write_targets_chain()
    state.initial = False
    _public_modes(layout.public)
    return state.result("init", root_keys=[str(p) for p in root_files])


def _check_root_key_files(files: list[Path], threshold: int, given: bool) -> None:
    if not 1 <= threshold <= len(files):
        raise UsageError(
            f"a root threshold of {threshold} with {len(files)} root key(s)",
            "the threshold is how many of the root keys must sign: 1 to the number of "
            "--root-key files",
        )
    if not given:
        return
    resolved = [os.path.abspath(p) for p in files]
    if len(set(resolved)) != len(resolved):
        raise UsageError("the same --root-key file is given twice", "give one file per root key")
    for path in files:
        if path.exists():
            raise UsageError(
                f"the root key file {path} already exists",
                "give a new file name: init never overwrites a key",
            )
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise UsageError(
                f"cannot write the root key to {path}: {path.parent} is not a writable directory",
                "mount the removable disk (or create the directory) first",
            )


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
    legacy_golden: bool = True,
    password: keystore.PasswordArg = None,
    compress: str = compression.DEFAULT_CODEC,
    deltas: int = 0,
) -> RepoResult:
    """Add ``model`` as signed target ``name`` (for ``group`` only, if given) at ``version``.

    Signs with the targets, snapshot and timestamp keys (never root).

    Args:
        profiles: device profiles it is made for; their arches go into the metadata.
        golden: an .npz whose ``x`` gives the golden inputs (default: seeded random ones).
        allow_signature_change: let devices accept a different input/output signature.
        allow_lower: publish a version lower than the last one (devices still refuse it).
        legacy_golden: also put the golden data in ``custom["golden_npz"]`` for agents
            before custom schema 2 (they cannot install the model without it).
        password: for encrypted keys (see :class:`tfedge.ota.keys.Passwords`).
        compress: also publish the model compressed as its own target, named in
            ``custom["tfedge"]["compressed"]``: ``lzma``; ``zstd`` (and lzma, for devices
            without ``zstandard``); ``none``: the full model only.
        deltas: also publish a delta from each of the last ``deltas`` published versions
            (at most :data:`tfedge.ota.delta.MAX_COUNT`), named in
            ``custom["tfedge"]["deltas"]`` (schema 4; :mod:`tfedge.ota.delta`).

    Raises:
        UsageError: a bad name, group, version or codec.  ModelLoadError: not a TFLite model.
        OtaError: the version does not increase; the input/output signature differs from the
            published one of ``name`` and ``allow_signature_change`` is not set. Both are
            checked before anything is written or signed, so the version stays free.
    """
    _check_publish_args(name, version, group)
    compression.check_codec(compress)
    deltas_lib.check_count(deltas)
    model = Path(model)
    custom, blob = _metadata_and_golden(
        model, version, profiles, golden, allow_signature_change, legacy_golden
    )
    codecs = {"none": [], "lzma": ["lzma"], "zstd": ["zstd", "lzma"]}[compress]  # lzma: any device
    packed = [compression.compressed_form(model.read_bytes(), codec) for codec in codecs]
    if packed:
        custom["tfedge"]["compressed"] = [entry for entry, _ in packed]
    with _locked(repo, ONLINE_ROLES, password) as state:
        path = target_path(name, group)
        _check_version_increases(state, path, version, allow_lower)
        if not allow_signature_change:
            _check_signature_unchanged(state, name, group, custom["signature"])
        bases = deltas_lib.previous_bases(
            state.targets.signed.targets,
            [path] + ([target_path(name)] if group else []),
            state.layout.targets,
            deltas,
        )
        data = model.read_bytes()
        smallest = min([len(data), *(entry["length"] for entry, _ in packed)])
        made = deltas_lib.deltas_to(data, bases, smaller_than=smallest)
        if made:
            custom["tfedge"].update(schema=DELTA_SCHEMA, deltas=[entry for entry, _ in made])
        target = _add_target(state, path, model, custom, blob, [*packed, *made])
        state.write_targets_chain()
        return state.result(
            "publish", target=path, sha256=target.hashes["sha256"], model_version=version
        )


def promote(
    repo: str | Path, name: str, group: str, password: keystore.PasswordArg = None
) -> RepoResult:
    """Widen a staged rollout: make ``group``'s current ``name`` the version for every device.

    Signs with the targets, snapshot and timestamp keys; the golden target is shared.
    """
    from tuf.api.metadata import TargetFile

    with _locked(repo, ONLINE_ROLES, password) as state:
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
    password: keystore.PasswordArg = None,
) -> RepoResult:
    """Re-sign timestamp and snapshot with new expiry dates (and targets when it nears expiry).

    Needs the snapshot and timestamp keys only. Targets is re-signed when it is within
    ``TARGETS_RENEW_WITHIN_DAYS`` of expiry and its key can be loaded; otherwise a note says
    so (``publish`` re-signs it). Run it from cron more often than ``timestamp_days``, or
    every device stops updating with ExpiredMetadataError.
    """
    with _locked(repo, ("snapshot", "timestamp"), password) as state:
        notes = []
        renew_targets = state.targets.signed.expires < _expiry_in(TARGETS_RENEW_WITHIN_DAYS)
        if renew_targets:
            try:
                state.load_signers(("targets",))
            except OtaError as err:
                renew_targets = False
                expires = state.targets.signed.expires.strftime("%Y-%m-%d")
                notes.append(
                    f"targets expires {expires} and was not re-signed ({err.message}); "
                    "publish, or refresh with the targets key"
                )
        state.write_targets_chain(
            bump_targets=renew_targets, snapshot_days=snapshot_days, timestamp_days=timestamp_days
        )
        return state.result("refresh", notes=notes)


# what each key rotation re-signs after the new root (the new key signs its own role)
_RESIGN_AFTER_ROTATION = {
    "root": (),
    "timestamp": (),
    "snapshot": ("timestamp",),
    "targets": ("snapshot", "timestamp"),
}


def rotate_keys(
    repo: str | Path,
    role: str,
    root_keys: list[str | Path] | tuple = (),
    password: keystore.PasswordArg = None,
) -> RepoResult:
    """Replace ``role``'s key: a new root version revokes the old key and lists the new one.

    The new root is signed by a threshold of root keys: ``root_keys`` (files, e.g. on a
    removable disk), else the ones ``signers.json`` records. Rotating root replaces the key
    of the first of them (the new private key goes to the same file) and signs with the
    old and the new keys. The role's metadata is then re-signed with its new key (and
    snapshot and timestamp after targets, timestamp after snapshot). A new key is
    encrypted when the key it replaces was.
    """
    from securesystemslib.signer import CryptoSigner

    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}", f"choose one of {', '.join(ROLES)}")
    why = f"rotating the {role} key (a new root version)"
    with _locked(repo, _RESIGN_AFTER_ROTATION[role], password, root_keys, why) as state:
        new = CryptoSigner.generate_ed25519()
        if role == "root":
            old_signer, key_path = state.root_signers[0], state.root_paths[0]
            old_keyid = old_signer.public_key.keyid
        else:
            old_keyid = state.root.signed.roles[role].keyids[0]
            key_path = state.key_path(role)
        if key_path is None:
            raise OtaError(
                f"the {role} key {old_keyid[:12]} is not in a file; tfedge can only rotate "
                "file keys",
                "give the root key files with --root-key, the one to replace first",
            )
        encrypted = keystore.is_encrypted(key_path)
        secret = state.passwords.for_new_key() if encrypted else None
        pending = key_path.with_name(key_path.name + ".new")
        keystore.save_key(pending, new, secret)
        state.root.signed.revoke_key(old_keyid, role)
        state.root.signed.add_key(new.public_key, role)
        extra = []
        if role == "root":
            state.root_signers[0] = new
            extra = [old_signer]
        else:
            state.signers[role] = new
        state.root.signed.version += 1
        state.root.signed.expires = _expiry("root")
        state.write_root(extra_signers=extra)
        os.replace(pending, key_path)
        entries = [e for e in state.where.get(role, []) if e["keyid"] != old_keyid]
        entry = {
            "keyid": new.public_key.keyid,
            "uri": keystore.file_uri(key_path, state.layout.keys, encrypted),
        }
        state.where[role] = [entry, *entries] if role == "root" else [entry]
        keystore.write_signers(state.layout.keys, state.where)
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
        p: t.custom.get("model_version")
        for p, t in sorted(state.targets.signed.targets.items())
        if not p.startswith(SIDE_PREFIXES)  # golden data, compressed forms: no custom
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
    """The signed ``custom`` block for ``model`` (with the legacy ``golden_npz``, from which
    :func:`_add_target` also writes the golden target)."""
    return _metadata_and_golden(model, version, profiles, golden, allow_signature_change)[0]


def _metadata_and_golden(
    model: Path,
    version: int,
    profiles=(),
    golden=None,
    allow_signature_change=False,
    legacy_golden: bool = True,
) -> tuple[dict, bytes]:
    """The signed ``custom`` block for ``model``, and the bytes of its golden target."""
    from tfedge.convert.tflite_model import read_tflite
    from tfedge.ota.golden import golden_npz
    from tfedge.ota.signature import signature_from_tflite
    from tfedge.targets.profiles import check_tflite_against_profile, load_profile

    parsed = read_tflite(model)
    loaded = [load_profile(p) for p in profiles]
    for profile in loaded:  # size, full-integer (the one verifier) and runtime ops
        check_tflite_against_profile(profile, model)
    blob = golden_npz(model, golden)
    sha = hashlib.sha256(blob).hexdigest()
    custom = {
        "model_version": int(version),
        "min_runtime_version": parsed.min_runtime_version,
        "signature": signature_from_tflite(model),
        "profiles": [p.name for p in loaded],
        "arch": sorted({p.machine_arch for p in loaded}) or ["any"],
        "tfedge": {
            "schema": CUSTOM_SCHEMA,
            "golden_target": golden_target_path(sha),
            "golden_length": len(blob),
            "golden_hashes": {"sha256": sha},
        },
        "allow_signature_change": bool(allow_signature_change),
        "source": model.name,
        "published": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if legacy_golden:  # read by agents before custom schema 2
        custom["golden_npz"] = base64.b64encode(blob).decode("ascii")
        custom["golden_sha256"] = sha
    return custom, blob


def golden_target_path(sha256: str) -> str:
    """The TUF target path of a golden file (content-addressed: shared by equal goldens)."""
    return f"golden/{sha256}.npz"


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


def _add_target(
    state: "_State",
    path: str,
    model: Path,
    custom: dict,
    golden: bytes | None = None,
    compressed: list | tuple = (),
):
    """Add ``model`` as target ``path``, its golden data (``golden``, else the legacy
    ``custom["golden_npz"]``) as the target ``custom["tfedge"]["golden_target"]``, and its
    ``compressed`` forms (``(entry, bytes)`` from :func:`tfedge.ota.compress.compressed_form`)
    as the targets their entries name."""
    from tuf.api.metadata import TargetFile

    meta = custom.get("tfedge") or {}
    if meta.get("golden_target"):
        if golden is None:
            golden = base64.b64decode(custom.get("golden_npz", ""))
        golden_target = TargetFile.from_data(meta["golden_target"], golden, ["sha256"])
        if golden_target.hashes != meta.get("golden_hashes"):
            raise OtaError(
                f"the golden data of {path} does not match its metadata",
                "publish the model again",
            )
        _write_served(state, golden_target, golden)
        state.targets.signed.targets[golden_target.path] = golden_target
    for entry, packed in compressed:
        _add_side_target(state, entry["target"], packed, entry["hashes"], path)
    data = model.read_bytes()
    target = TargetFile.from_data(path, data, ["sha256"])
    target.unrecognized_fields["custom"] = custom
    _write_served(state, target, data)
    state.targets.signed.targets[path] = target
    return target


def _add_side_target(state: "_State", path: str, data: bytes, hashes: dict, owner: str) -> None:
    """Add ``data`` as target ``path``, which ``owner``'s signed metadata names by ``hashes``."""
    from tuf.api.metadata import TargetFile

    target = TargetFile.from_data(path, data, ["sha256"])
    if target.hashes != hashes:
        raise OtaError(
            f"the compressed form of {owner} does not match its metadata", "publish again"
        )
    _write_served(state, target, data)
    state.targets.signed.targets[path] = target


def _write_served(state: "_State", target, data: bytes) -> None:
    served = state.layout.targets / _served_name(target.path, target.hashes["sha256"])
    _make_dirs(served.parent, PUBLIC_DIR_MODE)
    write_bytes_atomic(served, data, mode=PUBLIC_FILE_MODE)


def _drop_unused_golden(targets) -> None:
    """Remove golden and compressed targets no model target names any more (targets.json
    stays small)."""
    used = set()
    for p, t in targets.items():
        if p.startswith(SIDE_PREFIXES):
            continue
        meta = (t.custom or {}).get("tfedge") or {}
        used.add(meta.get("golden_target"))
        for side in ("compressed", "deltas"):
            used.update(e.get("target") for e in meta.get(side) or [] if isinstance(e, dict))
    for path in [p for p in targets if p.startswith(SIDE_PREFIXES) and p not in used]:
        del targets[path]


def _served_name(path: str, sha: str) -> str:
    """Consistent snapshots serve ``dir/<sha256>.<basename>``."""
    folder, _, base = path.rpartition("/")
    return f"{folder}/{sha}.{base}" if folder else f"{sha}.{base}"


def _copy_target(src: Path, dst: Path) -> None:
    _make_dirs(dst.parent, PUBLIC_DIR_MODE)
    if not dst.exists():
        write_bytes_atomic(dst, src.read_bytes(), mode=PUBLIC_FILE_MODE)


def _make_dirs(path: Path, mode: int) -> None:
    """``mkdir -p path``; the folders it creates get ``mode`` whatever the umask."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    path.mkdir(parents=True, exist_ok=True)
    for folder in missing:
        os.chmod(folder, mode)


def _public_modes(public: Path) -> None:
    """Make every file under ``public`` 0644 and every folder 0755 (repairs repositories
    written under a strict umask by older versions); symlinks are left alone."""
    for folder, dirs, files in os.walk(public):
        for name, mode in [(d, PUBLIC_DIR_MODE) for d in dirs] + [
            (f, PUBLIC_FILE_MODE) for f in files
        ]:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
                os.chmod(path, mode)
    if stat.S_IMODE(os.stat(public).st_mode) != PUBLIC_DIR_MODE:
        os.chmod(public, PUBLIC_DIR_MODE)


# ---------------------------------------------------------------- loading, signing, writing
def _expiry(role: str) -> datetime:
    return _expiry_in(EXPIRY_DAYS[role])


def _expiry_in(days: float) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


@contextlib.contextmanager
def _locked(
    repo: str | Path,
    roles: tuple = ONLINE_ROLES,
    password: keystore.PasswordArg = None,
    root_keys: list[str | Path] | tuple = (),
    root_for: str | None = None,
):
    """Load the repository's current state under an exclusive lock (one writer at a time),
    with the signers of ``roles`` and, when ``root_for`` says why, a threshold of root keys.
    Every key is loaded before anything is written."""
    layout = RepoLayout(Path(repo))
    if not layout.metadata.is_dir():
        raise OtaError(
            f"{repo} is not a repository (no public/metadata)", "create one: tfedge ota init REPO"
        )
    with open(layout.root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _State.load(layout)
        state.passwords = keystore.Passwords(password)
        state.where = keystore.read_signers(layout.keys, state.root.signed)
        state.load_signers(roles)
        if root_for:
            state.load_root_signers(root_keys, root_for)
        yield state
        _public_modes(layout.public)


@dataclass
class _State:
    layout: RepoLayout
    root: Any  # tuf Metadata[Root]; each role's object is what its file holds
    targets: Any
    snapshot: Any
    timestamp: Any
    signers: dict  # role -> signer, for the roles this operation signs (never root)
    root_signers: list = field(default_factory=list)  # a threshold of root keys, if needed
    root_paths: list = field(default_factory=list)  # their files (None: not a file)
    initial: bool = False  # version-1 metadata of a new repository: sign without bumping
    passwords: Any = None  # keystore.Passwords
    where: dict = field(default_factory=dict)  # signers.json: role -> [{keyid, uri}]

    @classmethod
    def load(cls, layout: RepoLayout) -> "_State":
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
        return cls(layout, root, targets, snapshot, timestamp, {})

    # ---- keys
    def _entry(self, role: str) -> dict:
        keyids = self.root.signed.roles[role].keyids
        for entry in self.where.get(role, []):
            if entry.get("keyid") in keyids:
                return entry
        raise OtaError(
            f"no {role} key of this repository is recorded in {self.layout.keys}/signers.json",
            "restore REPO/keys from your backup",
        )

    def key_path(self, role: str) -> Path | None:
        """The file holding ``role``'s key (None for a KMS/HSM signer)."""
        return keystore.uri_path(self._entry(role)["uri"], self.layout.keys)

    def load_signers(self, roles) -> None:
        for role in roles:
            if role not in self.signers:
                entry = self._entry(role)
                self.signers[role] = keystore.load_signer(
                    entry,
                    self.root.signed.keys[entry["keyid"]],
                    self.layout.keys,
                    self.passwords,
                    f"{role} key",
                )

    def load_root_signers(self, files, why: str) -> None:
        """Load root keys (``files``, else the recorded ones) until the root threshold."""
        spec = self.root.signed.roles["root"]
        threshold, keyids = spec.threshold, spec.keyids
        missing: list[str] = []
        if files:
            for given in files:
                path = Path(given)
                signer = keystore.load_file_signer(path, self.passwords, "root key")
                if signer.public_key.keyid not in keyids:
                    raise OtaError(
                        f"{path} is not one of this repository's root keys",
                        "give the root key files of this repository (after a root rotation, "
                        "the new ones)",
                    )
                if signer.public_key.keyid not in {s.public_key.keyid for s in self.root_signers}:
                    self.root_signers.append(signer)
                    self.root_paths.append(path)
        else:
            for entry in self.where.get("root", []):
                if entry.get("keyid") not in keyids or len(self.root_signers) >= threshold:
                    continue
                recorded = keystore.uri_path(entry["uri"], self.layout.keys)
                if recorded is not None and not recorded.exists():
                    missing.append(str(recorded))
                    continue
                self.root_signers.append(
                    keystore.load_signer(
                        entry,
                        self.root.signed.keys[entry["keyid"]],
                        self.layout.keys,
                        self.passwords,
                        "root key",
                    )
                )
                self.root_paths.append(recorded)
        if len(self.root_signers) < threshold:
            found = f"{len(self.root_signers)} found" + (
                f"; missing: {', '.join(missing)}" if missing else ""
            )
            raise OtaError(
                f"{why} needs {threshold} of the {len(keyids)} root key(s): {found}",
                "give the offline root key file(s): --root-key PATH (e.g. on the removable disk)",
            )

    # ---- writing
    def write_root(self, extra_signers=()) -> None:
        self.root.signatures.clear()
        for signer in (*self.root_signers, *extra_signers):
            self.root.sign(signer, append=True)
        self._write(self.root, f"{self.root.signed.version}.root.json")

    def write_targets_chain(
        self,
        bump_targets: bool = True,
        bump_snapshot: bool = True,
        snapshot_days: float = EXPIRY_DAYS["snapshot"],
        timestamp_days: float = EXPIRY_DAYS["timestamp"],
    ) -> None:
        """Sign and write targets -> snapshot -> timestamp, the timestamp last (clients see it
        only once everything it points to is in place).

        Raises:
            OtaError: targets.json would be larger than devices accept (nothing written).
        """
        from tuf.api.metadata import MetaFile

        if bump_targets:
            _drop_unused_golden(self.targets.signed.targets)
            self._bump(self.targets, "targets", _expiry("targets"))
            size = len(self.targets.to_bytes())
            if size > TARGETS_MAX_LENGTH:
                raise OtaError(
                    f"targets.json would be {size:,} bytes, over the {TARGETS_MAX_LENGTH:,} "
                    "devices accept",
                    "publish with --no-legacy-golden (agents before custom schema 2 cannot "
                    "install such a model) or remove models from the repository",
                )
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
        write_bytes_atomic(self.layout.metadata / name, md.to_bytes(), mode=PUBLIC_FILE_MODE)

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
