"""Where a search's trials are measured: one target, or the devices of an inventory.

The devices form a pool: a worker takes a free device, benchmarks its trial's model on it and
gives it back, so the devices of ``--inventory`` measure trials concurrently, one trial per
device at a time. The pool is a lock file per device in OUTDIR (``.device-N.lock``), shared
by the local worker processes. With a single ``--target`` the pool has one device: several
local workers then never time two models at once (they would share the cores).

The devices of one search are interchangeable: the same kind of target (all ``local``, all
``qemu`` or all ``ssh://``) and the same profile, so that their figures compare and one set
of budgets applies to every trial.

Example:
    >>> pool = DevicePool([Device("a", "local"), Device("b", "local")], Path("out"))
    >>> with pool.take() as first, pool.take() as second:  # another worker takes the other
    ...     first.name, second.name
    ('a', 'b')
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tfedge.errors import UsageError

SSH_KEYS = ("python", "key", "known_hosts", "connect_timeout")
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Device:
    """One place to measure: a bench target with its profile and options."""

    name: str
    target: str
    profile: str | None = None
    threads: int | None = None
    ssh: dict = field(default_factory=dict)  # python, key, known_hosts, connect_timeout

    def bench_options(self) -> dict:
        """Keyword arguments of ``tfedge.targets.bench.bench`` for this device."""
        options: dict = {"target": self.target, "profile": self.profile, **self.ssh}
        if self.threads is not None:
            options["threads"] = self.threads
        return options


def single(target: str, profile: str | None, ssh: dict | None = None) -> list[Device]:
    """The one device of a search with ``--target``."""
    return [Device(target, target, profile, ssh=dict(ssh or {}))]


def from_inventory(inventory, profile: str | None) -> tuple[list[Device], str | None]:
    """The devices of an inventory file (or its loaded entries), and the search's profile.

    A device without a profile takes ``profile``; the search's profile is ``profile`` or,
    without one, the devices' own.

    Raises:
        UsageError: the file breaks the inventory schema, or its devices are not
            interchangeable (different kinds of target or different profiles);
        ProfileError: a device's profile does not load.
    """
    from tfedge.targets.bench import load_inventory, target_kind

    entries = inventory if isinstance(inventory, list) else load_inventory(inventory)
    kinds = sorted({target_kind(e["target"]) for e in entries})
    if len(kinds) > 1:
        raise UsageError(
            f"the inventory mixes {' and '.join(kinds)} targets: their timings do not compare",
            "list devices of one kind (all ssh://, all qemu or all local) for one search",
        )
    profiles = sorted({e.get("profile") or profile or "" for e in entries})
    if len(profiles) > 1 or (profile and profiles != [profile]):
        shown = ", ".join(p or "(none)" for p in sorted(set(profiles) | {profile or ""}))
        raise UsageError(
            f"the inventory's devices and --profile name different profiles ({shown})",
            "a search's devices must be interchangeable: give them one profile",
        )
    chosen = profiles[0] or None
    devices = [
        Device(
            name=e["name"],
            target=e["target"],
            profile=chosen,
            threads=e.get("threads"),
            ssh={k: e[k] for k in SSH_KEYS if k in e},
        )
        for e in entries
    ]
    return devices, chosen


def label(devices: list[Device]) -> str:
    """What the study is tied to: the target, or ``inventory:`` and the devices' targets."""
    if len(devices) == 1 and devices[0].name == devices[0].target:
        return devices[0].target
    return "inventory:" + ",".join(sorted(d.target for d in devices))


class DevicePool:
    """The devices, taken one trial at a time by the workers sharing ``lock_dir``.

    ``first`` is the device a worker tries first (its index), so that workers spread over
    the devices; when that one is busy it takes any free one, and waits when none is.
    """

    def __init__(self, devices: list[Device], lock_dir: Path, first: int = 0) -> None:
        self.devices, self.lock_dir, self.first = devices, Path(lock_dir), first

    def lock_path(self, index: int) -> Path:
        return self.lock_dir / f".device-{index}.lock"

    @contextmanager
    def take(self) -> Iterator[Device]:
        """A free device, held until the block ends."""
        count = len(self.devices)
        order = [(self.first + i) % count for i in range(count)]
        while True:
            for index in order:
                handle = open(self.lock_path(index), "a")  # noqa: SIM115 (held past this loop)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                try:
                    yield self.devices[index]
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    handle.close()
                return
            time.sleep(POLL_SECONDS)
