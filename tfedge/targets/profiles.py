"""Device profiles: what a target board is and what a model must fit into.

A profile is a small YAML file with a versioned schema (``schema_version: 1``), validated
on load by the shared layer of ``tfedge.config`` (unknown keys refused, the key path and a
"did you mean" in every message; ``tfedge profiles schema`` prints the JSON Schema). The
shipped ones live in ``tfedge/targets/device_profiles/`` (installed with the package);
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

import os
import platform
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, PrivateAttr, field_validator, model_validator

from tfedge.config import Config, Names, json_schema, validate
from tfedge.errors import ProfileError
from tfedge.fsutil import check_regular_file
from tfedge.safe_yaml import load_yaml_file

SCHEMA_VERSION = 1
PROFILES_DIR = Path(__file__).parent / "device_profiles"
Arch = Literal["aarch64", "x86_64", "armv7l", "native"]
Runtime = Literal["ai-edge-litert", "tflite-runtime"]
ARCHES = get_args(Arch)
RUNTIMES = get_args(Runtime)
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
FORMAT_HINT = "see tfedge/targets/device_profiles/rpi4.yaml, or `tfedge profiles schema`"

# A profile name: letters, digits, '.', '_', '-' (no space or newline: reports show it).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN.rstrip("$") + r"\Z")

Positive = Annotated[int, Field(gt=0)]
# A budget in MB or ms: a finite number greater than 0 (NaN and infinity are not budgets).
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Budgets(Config):
    """Limits a model must respect on the device; null means no limit."""

    max_model_bytes: Positive | None = Field(None, description="Largest .tflite file, in bytes.")
    max_ram_mb: PositiveNumber | None = Field(
        None, description="Largest peak RSS of the benchmark on the device, in MB."
    )
    target_latency_ms: PositiveNumber | None = Field(
        None, description="Largest median latency of one inference on the device, in ms."
    )


class DeviceProfile(Config):
    """A device profile: one target board, its CPU, runtime and budgets."""

    schema_version: Literal[1] = Field(description="Version of this file format; must be 1.")
    name: str = Field(
        description="Letters, digits, '.', '_' or '-', up to 64.",
        json_schema_extra={"pattern": NAME_PATTERN},
    )
    description: str = Field(
        description="Shown by `profiles list`.", json_schema_extra={"minLength": 1}
    )
    arch: Arch = Field(
        description="`uname -m` of the board; `native` is the machine tfedge runs on."
    )
    cpu: str = Field(
        description="CPU core, e.g. cortex-a72 (qemu's -cpu).", json_schema_extra={"minLength": 1}
    )
    cores: Positive | None = Field(description="CPU cores of the board, or null if unknown.")
    ram_mb: Positive | None = Field(description="RAM of the board in MB, or null if unknown.")
    storage: str | None = Field(description="e.g. microSD, or null.")
    runtime: Runtime = Field(description="The TFLite runtime installed on the board.")
    requires_full_integer: bool = Field(
        description="true if every op must compute in integers (e.g. no FPU to spare)."
    )
    default_threads: Positive | None = Field(
        description="Interpreter threads on the board; null: its cores."
    )
    budgets: Budgets = Field(
        description="What a model must fit into; a null budget means no limit."
    )
    unsupported_ops: Names = Field(
        (), description="TFLite op names the board's runtime lacks, e.g. [CONV_3D]."
    )
    _source: str = PrivateAttr("")

    @field_validator("unsupported_ops", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return () if value is None else value

    @model_validator(mode="after")
    def _check_text(self) -> DeviceProfile:
        if not _NAME.match(self.name):
            raise ValueError(
                f"name must be letters, digits, '.', '_' or '-' (up to 64), got {_short(self.name)}"
                " (hint: e.g. name: my-board)"
            )
        for key in ("description", "cpu", "storage"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise ValueError(f"{key} must not be blank (hint: e.g. {key}: ...)")
            if key != "description" and value is not None and _control(value):
                raise ValueError(
                    f"{key} must be one line without control characters, got {_short(value)}"
                    f" (hint: write {key} on one line)"
                )
        return self

    @property
    def source(self) -> str:
        """The file this profile was read from."""
        return self._source

    @property
    def threads(self) -> int:
        """Default thread count: ``default_threads``, else the cores, else this machine's cores."""
        return self.default_threads or self.cores or os.cpu_count() or 1

    @property
    def machine_arch(self) -> str:
        """The ``uname -m`` this profile stands for (``native`` resolves to this machine)."""
        return platform.machine() if self.arch == "native" else self.arch

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump()
        data["unsupported_ops"] = list(self.unsupported_ops)
        data["source"] = self.source
        return data


def _control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def profile_schema() -> dict:
    """JSON Schema of a device profile file (``tfedge profiles schema``)."""
    return json_schema(DeviceProfile, "tfedge device profile")


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
        path, "profile", ProfileError, "a profile is a small UTF-8 YAML file; " + FORMAT_HINT
    )
    return parse_profile(raw, str(path))


def parse_profile(raw: Any, source: str) -> DeviceProfile:
    """A profile from the mapping ``raw`` read from ``source`` (named in every error).

    Example:
        >>> parse_profile({**yaml.safe_load(open("b.yaml")), "arch": "mips"}, "b.yaml")
        Traceback (most recent call last):
        tfedge.errors.ProfileError: profile b.yaml: arch = 'mips' is not one of aarch64, ...
    """
    if not isinstance(raw, dict):
        raise ProfileError(f"profile {source} is not a mapping of keys to values", FORMAT_HINT)
    _check_schema_version(raw.get("schema_version"), source)
    profile = validate(DeviceProfile, raw, f"profile {source}", ProfileError)
    profile._source = source
    return profile


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


def _check_schema_version(version: Any, source: str) -> None:
    """A missing version is the schema's business; another number gets its own advice."""
    if version is not None and (type(version) is not int or version != SCHEMA_VERSION):
        raise ProfileError(
            f"profile {source}: schema_version = {version!r}, "
            f"but this tfedge reads {SCHEMA_VERSION}",
            "upgrade tfedge, or rewrite the profile for schema_version 1",
        )


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for an error line."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
