"""An emulated Raspberry Pi: an aarch64 Debian bookworm root run with qemu-user-static.

``setup()`` builds the root once (debootstrap ``--foreign`` + ``dpkg -x``; no chroot and no
binfmt_misc needed), adds numpy and an aarch64 TFLite runtime that works under qemu, checks
it by creating an interpreter under emulation, and caches it under
``$XDG_CACHE_HOME/tfedge/emulator`` (default ``~/.cache/tfedge/emulator``). Later calls reuse it.

Emulation is for functional parity (numerics, op coverage, the device script itself); its
timings and memory are qemu's, never a device's.

Example:
    >>> env = setup()                    # about 1-2 minutes the first time, instant after
    >>> env.runtime, env.runtime_version
    ('ai-edge-litert', '1.4.0')
    >>> env.command("cortex-a72", ["script.py", "--probe"])[:3]
    ['/usr/bin/qemu-aarch64-static', '-cpu', 'cortex-a72']
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tfedge.errors import TargetError
from tfedge.fsutil import replace_dir

SUITE = "bookworm"
PYTHON = "usr/bin/python3.11"
NUMPY = "numpy==1.26.4"
# ai-edge-litert 2.x segfaults under qemu-user; these two run (checked at setup anyway).
RUNTIMES = {"ai-edge-litert": "ai-edge-litert==1.4.0", "tflite-runtime": "tflite-runtime==2.14.0"}
PLATFORMS = (
    "manylinux_2_17_aarch64",
    "manylinux2014_aarch64",
    "manylinux_2_27_aarch64",
    "manylinux_2_28_aarch64",
    "manylinux_2_34_aarch64",
)
MARKER = "ready.json"
LAYOUT_VERSION = 1


@dataclass(frozen=True)
class Emulator:
    """A built, verified emulated root."""

    root: Path
    site: Path
    runtime: str
    runtime_version: str
    numpy_version: str
    qemu: str
    mirror: str
    built_at: str

    def command(self, cpu: str, args: list[str]) -> list[str]:
        """The argv that runs ``python3.11 *args`` under qemu with CPU model ``cpu``."""
        return [self.qemu, "-cpu", cpu, "-L", str(self.root), str(self.root / PYTHON), *args]

    def env(self) -> dict[str, str]:
        """Environment for :meth:`command`: the aarch64 wheels on PYTHONPATH, none of the host's."""
        return {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(self.site),
            "PYTHONNOUSERSITE": "1",
            "LANG": "C.UTF-8",
            "HOME": str(self.root / "root"),
        }


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tfedge/emulator`` (default ``~/.cache/tfedge/emulator``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tfedge" / "emulator"


def env_dir() -> Path:
    return cache_dir() / f"{SUITE}-arm64-v{LAYOUT_VERSION}"


def status() -> Emulator | None:
    """The cached emulator if it is built, else None (never builds)."""
    marker = env_dir() / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        env = Emulator(**{**data, "root": Path(data["root"]), "site": Path(data["site"])})
    except (ValueError, TypeError, KeyError):
        return None
    return env if (env.root / PYTHON).exists() and env.site.is_dir() else None


def require() -> Emulator:
    """The cached emulator, or TargetError telling the user to run ``tfedge emulator setup``."""
    env = status()
    if env is None:
        raise TargetError(
            "the emulated aarch64 root is not set up yet",
            "run `tfedge emulator setup` once (needs root or user namespaces; ~2 minutes)",
        )
    if not Path(env.qemu).exists():
        raise TargetError(f"{env.qemu} is missing", "install it: apt-get install qemu-user-static")
    return env


def setup(
    mirror: str | None = None, runtime: str = "auto", force: bool = False, log=lambda msg: None
) -> Emulator:
    """Build (once) and return the emulated root; safe to call concurrently.

    Args:
        mirror: Debian mirror URL; default: read from this machine's apt sources.
        runtime: ``ai-edge-litert``, ``tflite-runtime`` or ``auto`` (the first that works).
        force: rebuild even if a cached root exists.
        log: called with one line per step.
    """
    _check_runtime_choice(runtime)
    ready = status()
    if ready and not force and runtime in ("auto", ready.runtime):
        return ready
    with _lock(cache_dir() / "setup.lock"):
        existing = status()
        if existing and not force and runtime in ("auto", existing.runtime):
            return existing
        qemu = _require_tool("qemu-aarch64-static", "qemu-user-static")
        mirror = mirror or apt_mirror()
        return _build(qemu, mirror, runtime, log)


def _check_runtime_choice(runtime: str) -> None:
    if runtime != "auto" and runtime not in RUNTIMES:
        raise TargetError(
            f"unknown emulator runtime {runtime!r}", f"use auto or one of {', '.join(RUNTIMES)}"
        )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(qemu: str, mirror: str, runtime: str, log) -> Emulator:
    final = env_dir()
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
    try:
        root, site = work / "root", work / "site"
        log(f"debootstrap {SUITE} arm64 from {mirror} (about a minute)")
        _debootstrap(root, mirror)
        _unpack_debs(root)
        log("downloading aarch64 wheels: " + NUMPY + " and a TFLite runtime")
        name, version = _install_runtime(qemu, root, site, runtime, log)
        replace_dir(work, final)
        env = Emulator(
            root=final / "root",
            site=final / "site",
            runtime=name,
            runtime_version=version,
            numpy_version=NUMPY.split("==")[1],
            qemu=qemu,
            mirror=mirror,
            built_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        _write_marker(final, env)
        log(f"ready: {final} ({name} {version})")
        return env
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_marker(final: Path, env: Emulator) -> None:
    data = {k: str(v) for k, v in asdict(env).items()}
    tmp = final / (MARKER + ".part")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, final / MARKER)


# ---------------------------------------------------------------- the Debian root
def apt_mirror(sources_dir: str = "/etc/apt") -> str:
    """The Debian mirror this machine's apt sources name (deb822 ``URIs:`` or sources.list).

    Raises:
        TargetError: when no Debian mirror is found (pass ``--mirror`` then).
    """
    base = Path(sources_dir)
    candidates = _deb822_uris(sorted(base.glob("sources.list.d/*.sources")))
    candidates += _one_line_uris(
        [base / "sources.list", *sorted(base.glob("sources.list.d/*.list"))]
    )
    for uri in candidates:
        if "security" not in uri and "debian" in uri:
            return uri.rstrip("/")
    raise TargetError(
        f"no Debian mirror found in {base}/sources.list or {base}/sources.list.d/*.sources",
        "pass one: tfedge emulator setup --mirror http://<your Debian mirror>/debian",
    )


def _deb822_uris(files: list[Path]) -> list[str]:
    uris = []
    for path in files:
        for stanza in re.split(r"\n\s*\n", _read(path)):
            if re.search(r"^Enabled:\s*no", stanza, re.M | re.I):
                continue
            uris += [u for m in re.findall(r"^URIs:\s*(.+)$", stanza, re.M) for u in m.split()]
    return uris


def _one_line_uris(files: list[Path]) -> list[str]:
    uris = []
    for path in files:
        for line in _read(path).splitlines():
            match = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
            if match:
                uris.append(match.group(1))
    return uris


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _debootstrap(root: Path, mirror: str) -> None:
    debootstrap = _require_tool("debootstrap", "debootstrap")
    argv = [
        debootstrap,
        "--foreign",
        "--arch=arm64",
        "--variant=minbase",
        "--include=python3",
        SUITE,
        str(root),
        mirror,
    ]
    _run(_as_root(argv), "debootstrap", timeout=1800)


def _as_root(argv: list[str]) -> list[str]:
    """Run as root directly, or inside a user namespace where we map to root."""
    if os.geteuid() == 0:
        return argv
    unshare = shutil.which("unshare")
    if (
        unshare
        and subprocess.run([unshare, "--map-root-user", "true"], capture_output=True).returncode
        == 0
    ):
        return [unshare, "--map-root-user", *argv]
    raise TargetError(
        "building the emulated root needs root or unprivileged user namespaces",
        "run `sudo tfedge emulator setup` once, or enable kernel.unprivileged_userns_clone",
    )


def _unpack_debs(root: Path) -> None:
    """Unpack every downloaded .deb (what the second stage would do, without a chroot)."""
    archives = sorted((root / "var/cache/apt/archives").glob("*.deb"))
    if not archives:
        raise TargetError(
            f"debootstrap left no packages in {root}/var/cache/apt/archives",
            "check the mirror serves arm64 (try --mirror)",
        )
    for deb in archives:
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}", timeout=600)
        deb.unlink()
    if not (root / PYTHON).exists():
        raise TargetError(
            f"the emulated root has no {PYTHON}", "rebuild with `tfedge emulator setup --force`"
        )


# ---------------------------------------------------------------- Python wheels
def _install_runtime(qemu: str, root: Path, site: Path, runtime: str, log) -> tuple[str, str]:
    _pip_install(NUMPY, site)
    problems = []
    for name in [runtime] if runtime != "auto" else list(RUNTIMES):
        target = site.parent / f"site-{name}"
        _pip_install(RUNTIMES[name], target)
        probe = _probe(qemu, root, [site, target], name)
        if "runtime" in probe:
            _merge(target, site)
            return probe["runtime"]["name"], probe["runtime"]["version"]
        problems.append(f"{name}: {probe.get('error', probe)}")
        log(f"{name} does not work under qemu: {problems[-1]}")
    raise TargetError(
        "no TFLite runtime works under qemu: " + "; ".join(problems),
        "report this with `tfedge emulator setup --runtime tflite-runtime` output",
    )


def _pip_install(requirement: str, target: Path) -> None:
    """Download the aarch64 cp311 wheel of ``requirement`` and unzip it into ``target``."""
    download = target.parent / ".wheels"
    download.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "-d",
        str(download),
        requirement,
    ]
    for tag in PLATFORMS:
        argv[6:6] = ["--platform", tag]
    _run(argv, f"pip download {requirement}", timeout=900)
    name = requirement.split("==")[0].replace("-", "_")
    wheels = sorted(download.glob(f"{name}-*.whl"))
    if not wheels:
        raise TargetError(
            f"pip downloaded no aarch64 wheel for {requirement}", "check pip can reach its index"
        )
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extractall(target)


def _merge(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        os.replace(item, dst / item.name)
    src.rmdir()


def _probe(qemu: str, root: Path, paths: list[Path], prefer: str) -> dict:
    from tfedge.targets.job import DEVICE_SCRIPT as script

    argv = [
        qemu,
        "-cpu",
        "cortex-a72",
        "-L",
        str(root),
        str(root / PYTHON),
        str(script),
        "--probe",
        "--runtime",
        prefer,
    ]
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join(map(str, paths)),
        "PYTHONNOUSERSITE": "1",
    }
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired:
        return {"error": "the probe timed out under qemu"}
    lines = out.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else {}
    except ValueError:
        report = {}
    if report.get("runtime", {}).get("name") != prefer:
        return {
            "error": report.get("error") or f"exit {out.returncode}: {out.stderr.strip()[-300:]}"
        }
    return report


# ---------------------------------------------------------------- helpers
def _require_tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if not path:
        raise TargetError(f"{name} is not installed", f"install it: apt-get install {package}")
    return path


def _run(argv: list[str], what: str, timeout: float) -> None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise TargetError(
            f"{what} timed out after {timeout:.0f} s", "check the network and retry"
        ) from exc
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise TargetError(
            f"{what} failed (exit {out.returncode}): {' | '.join(tail)}",
            "check the mirror (--mirror) and that you can reach it",
        )
