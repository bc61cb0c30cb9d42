"""Device profiles: what a target board is and what a model must fit into.

A profile is a small YAML file with a versioned schema (``schema_version: 1``), validated
on load. The shipped ones live in ``tfedge/targets/device_profiles/`` (installed with the package);
a path to a user's own file works wherever a name does.

Example:
    >>> p = load_profile("rpi4")
    >>> p.cpu, p.default_threads, p.budgets.max_model_bytes
    ('cortex-a72', 4, 50000000)
    >>> check_model_against_profile(
    ...     p, 600_000, full_integer=True, float_ops=[], op_names={"CONV_2D"}
    ... )
"""

from __future__ import annotations

import math
import os
import platform
import re
import reprlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tfedge.errors import ProfileError
from tfedge.fsutil import check_regular_file
from tfedge.safe_yaml import load_yaml_file

SCHEMA_VERSION = 1
PROFILES_DIR = Path(__file__).parent / "device_profiles"
ARCHES = ("aarch64", "x86_64", "armv7l", "native")
RUNTIMES = ("ai-edge-litert", "tflite-runtime")
QEMU_CPUS = (
    "cortex-a35",
    "cortex-a53",
    "cortex-a57",
    "cortex-a72",
    "cortex-a76",
    "neoverse-n1",
    "max",
)
# Custom ops that the stock LiteRT / tflite-runtime op resolver registers itself.
RUNTIME_CUSTOM_OPS = frozenset(
    {
        "TFLite_Detection_PostProcess",
        "Convolution2DTransposeBias",
        "MaxPoolingWithArgmax2D",
        "MaxUnpooling2D",
    }
)
ARMV7_HINT = (
    "there are no 32-bit (armv7l) wheels of ai-edge-litert or tflite-runtime for Python 3.11; "
    "flash the 64-bit Raspberry Pi OS (Raspberry Pi Imager -> 'Raspberry Pi OS (64-bit)'), "
    "or check `uname -m` says aarch64 and `getconf LONG_BIT` says 64"
)

_REQUIRED = (
    "schema_version",
    "name",
    "description",
    "arch",
    "cpu",
    "cores",
    "ram_mb",
    "storage",
    "runtime",
    "requires_full_integer",
    "budgets",
    "default_threads",
)
_OPTIONAL = ("unsupported_ops",)
_BUDGET_KEYS = ("max_model_bytes", "max_ram_mb", "target_latency_ms")


@dataclass(frozen=True)
class Budgets:
    """Limits a model must respect on the device; ``None`` means no limit."""

    max_model_bytes: int | None = None
    max_ram_mb: float | None = None
    target_latency_ms: float | None = None


@dataclass(frozen=True)
class DeviceProfile:
    """One target board, loaded from a validated YAML file."""

    name: str
    description: str
    arch: str
    cpu: str
    cores: int | None
    ram_mb: int | None
    storage: str | None
    runtime: str
    requires_full_integer: bool
    budgets: Budgets
    default_threads: int | None
    unsupported_ops: tuple[str, ...] = ()
    source: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def threads(self) -> int:
        """Default thread count: ``default_threads``, else the cores, else this machine's cores."""
        return self.default_threads or self.cores or os.cpu_count() or 1

    @property
    def machine_arch(self) -> str:
        """The ``uname -m`` this profile stands for (``native`` resolves to this machine)."""
        return platform.machine() if self.arch == "native" else self.arch

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["unsupported_ops"] = list(self.unsupported_ops)
        return data


def list_profiles() -> list[DeviceProfile]:
    """All profiles shipped with tfedge, sorted by name."""
    return [load_profile(p) for p in sorted(PROFILES_DIR.glob("*.yaml"))]


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | os.PathLike | DeviceProfile) -> DeviceProfile:
    """Load a shipped profile by name (``rpi4``) or a profile file by path.

    Raises:
        ProfileError: unknown name, unreadable file, or a file that breaks the schema.
    """
    if isinstance(name_or_path, DeviceProfile):
        return name_or_path
    path = _resolve(str(name_or_path))
    raw = load_yaml_file(
        path,
        "profile",
        ProfileError,
        "a profile is a small UTF-8 YAML file; see tfedge/targets/device_profiles/rpi4.yaml",
    )
    return _build(raw, str(path))


def _resolve(name: str) -> Path:
    looks_like_path = os.sep in name or name.endswith((".yaml", ".yml"))
    if looks_like_path:
        return check_regular_file(
            Path(name).expanduser(), "profile file", ProfileError, "check the path"
        )
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(
            f"unknown device profile {name!r}",
            f"use one of {', '.join(profile_names())}, or a path to your own .yaml file",
        )
    return path


def _build(raw: Any, source: str) -> DeviceProfile:
    if not isinstance(raw, dict):
        raise ProfileError(
            f"profile {source} is not a mapping of keys to values",
            "see tfedge/targets/device_profiles/rpi4.yaml for the format",
        )
    _check_keys(raw, source)
    _check_schema_version(raw["schema_version"], source)
    return DeviceProfile(
        name=_name(raw, source),
        description=_required_string(raw, "description", source),
        arch=_choice(raw, "arch", ARCHES, source),
        cpu=_required_string(raw, "cpu", source, single_line=True),
        cores=_positive(raw, "cores", source, optional=True),
        ram_mb=_positive(raw, "ram_mb", source, optional=True),
        storage=_single_line(raw, "storage", source, optional=True),
        runtime=_choice(raw, "runtime", RUNTIMES, source),
        requires_full_integer=_boolean(raw, "requires_full_integer", source),
        budgets=_budgets(raw["budgets"], source),
        default_threads=_positive(raw, "default_threads", source, optional=True),
        unsupported_ops=tuple(_string_list(raw, "unsupported_ops", source)),
        source=source,
    )


def _check_keys(raw: dict, source: str) -> None:
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ProfileError(
            f"profile {source} is missing {', '.join(missing)}",
            "every profile needs: " + ", ".join(_REQUIRED),
        )
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ProfileError(
            f"profile {source} has unknown key(s) {', '.join(unknown)}",
            "allowed keys: " + ", ".join(_REQUIRED + _OPTIONAL),
        )


def _check_schema_version(version: Any, source: str) -> None:
    if version != SCHEMA_VERSION:
        raise ProfileError(
            f"profile {source} has schema_version {version!r}; this tfedge reads {SCHEMA_VERSION}",
            "upgrade tfedge, or rewrite the profile for schema_version 1",
        )


def _string(raw: dict, key: str, source: str, optional: bool = False) -> str | None:
    value = raw.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(
            f"profile {source}: {key} must be a non-empty string, got {_short(value)}",
            f"e.g. {key}: ...",
        )
    return value


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def _name(raw: dict, source: str) -> str:
    """A profile name: letters, digits, '.', '_', '-' (no space or newline: reports show it)."""
    value = _required_string(raw, "name", source)
    if not _NAME.match(value):
        raise ProfileError(
            f"profile {source}: name must be letters, digits, '.', '_' or '-' (up to 64), "
            f"got {_short(value)}",
            "e.g. name: my-board",
        )
    return value


def _single_line(raw: dict, key: str, source: str, optional: bool = False) -> str | None:
    value = _string(raw, key, source, optional)
    if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ProfileError(
            f"profile {source}: {key} must be one line without control characters, "
            f"got {_short(value)}",
            f"write {key} on one line",
        )
    return value


def _required_string(raw: dict, key: str, source: str, single_line: bool = False) -> str:
    value = _single_line(raw, key, source) if single_line else _string(raw, key, source)
    assert value is not None  # _string raises for a missing required key
    return value


def _choice(raw: dict, key: str, choices: tuple[str, ...], source: str) -> str:
    value = raw.get(key)
    if value not in choices:
        raise ProfileError(
            f"profile {source}: {key} is {_short(value)}", f"use one of {', '.join(choices)}"
        )
    return value


def _positive(raw: dict, key: str, source: str, optional: bool = False, number=int):
    value = raw.get(key)
    if value is None and optional:
        return None
    ok_types = (int, float) if number is float else (int,)
    if (
        isinstance(value, bool)
        or not isinstance(value, ok_types)
        or not math.isfinite(value)
        or value <= 0
    ):
        kind = "number" if number is float else "integer"
        raise ProfileError(
            f"profile {source}: {key} must be a positive {kind}"
            f"{' or null' if optional else ''}, got {_short(value)}",
            "write a number greater than 0 (NaN and infinity are not budgets)",
        )
    return value


def _boolean(raw: dict, key: str, source: str) -> bool:
    value = raw.get(key)
    if not isinstance(value, bool):
        raise ProfileError(
            f"profile {source}: {key} must be true or false, got {_short(value)}",
            f"e.g. {key}: false",
        )
    return value


def _string_list(raw: dict, key: str, source: str) -> list[str]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(
            f"profile {source}: {key} must be a list of op names, got {_short(value)}",
            f"e.g. {key}: [CONV_2D]",
        )
    return value


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for an error line."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _budgets(raw: Any, source: str) -> Budgets:
    if not isinstance(raw, dict):
        raise ProfileError(
            f"profile {source}: budgets must be a mapping with {', '.join(_BUDGET_KEYS)}"
        )
    unknown = sorted(set(raw) - set(_BUDGET_KEYS))
    if unknown:
        raise ProfileError(
            f"profile {source}: unknown budget(s) {', '.join(unknown)}",
            f"allowed budgets: {', '.join(_BUDGET_KEYS)}",
        )
    where = f"{source} budgets"
    return Budgets(
        max_model_bytes=_positive(raw, "max_model_bytes", where, optional=True),
        max_ram_mb=_positive(raw, "max_ram_mb", where, optional=True, number=float),
        target_latency_ms=_positive(raw, "target_latency_ms", where, optional=True, number=float),
    )


def check_model_against_profile(
    profile: DeviceProfile, size_bytes: int, full_integer: bool, float_ops: list, op_names: set[str]
) -> None:
    """Check what is known before the model runs: its size, integer-only ops, runtime ops.

    RAM and latency budgets need the model to run on the target; ``tfedge bench`` checks them.

    Raises:
        ProfileError: naming the number that breaks the profile.

    Example:
        >>> check_model_against_profile(load_profile("rpi-zero-2w"), 9_000_000, True, [], set())
        Traceback (most recent call last):
        tfedge.errors.ProfileError: model is 9,000,000 bytes, over rpi-zero-2w's budget of ...
    """
    _check_size(profile, size_bytes)
    _check_full_integer(profile, full_integer, float_ops)
    _check_ops(profile, op_names)


def _check_size(profile: DeviceProfile, size_bytes: int) -> None:
    limit = profile.budgets.max_model_bytes
    if limit is not None and size_bytes > limit:
        raise ProfileError(
            f"model is {size_bytes:,} bytes, over {profile.name}'s budget of {limit:,} bytes "
            f"by {size_bytes - limit:,} bytes ({size_bytes / limit:.2f}x)",
            "quantize to int8, prune/cluster before conversion, or pick a smaller architecture",
        )


def _check_full_integer(profile: DeviceProfile, full_integer: bool, float_ops: list) -> None:
    if profile.requires_full_integer and not full_integer:
        shown = ", ".join(str(op) for op in list(float_ops)[:5])
        more = f" (first: {shown})" if shown else ""
        raise ProfileError(
            f"{profile.name} requires a full-integer model, but {len(float_ops)} op(s) compute "
            f"in float{more}",
            "convert with full-integer quantization and a representative dataset "
            "(tfedge convert --calib ...)",
        )


def _check_ops(profile: DeviceProfile, op_names: set[str]) -> None:
    bad = sorted(op for op in op_names if _unsupported(profile, op))
    if bad:
        raise ProfileError(
            f"{len(bad)} op(s) are not supported by {profile.name}'s runtime {profile.runtime}: "
            f"{', '.join(bad)}",
            "avoid SELECT_TF_OPS (Flex) and custom ops when converting; "
            "use TFLite builtin ops only",
        )


def _unsupported(profile: DeviceProfile, op: str) -> bool:
    if op in profile.unsupported_ops:
        return True
    if op.startswith("CUSTOM:"):
        return op.split(":", 1)[1] not in RUNTIME_CUSTOM_OPS
    return op.startswith("Flex")


def check_tflite_against_profile(profile: DeviceProfile | str, path: str | os.PathLike) -> None:
    """Read ``path`` (pure Python, no interpreter) and run :func:`check_model_against_profile`.

    Example:
        >>> check_tflite_against_profile("rpi3b", "model_int8.tflite")
    """
    from tfedge.convert.tflite_model import read_tflite
    from tfedge.convert.verify import find_float_ops

    profile = load_profile(profile)
    model = read_tflite(path)
    float_ops = [op.describe() for op in find_float_ops(model)]
    check_model_against_profile(
        profile, model.size_bytes, not float_ops, float_ops, {op.name for op in model.ops}
    )
