"""Where the time goes in a ``.tflite``: per Keras layer or per op, on any bench target.

The Python TFLite runtimes have no per-op profiler, so time is measured by differences:
for each group of consecutive ops (one Keras layer by default, one op with ``per_op``), a
*prefix model* is written whose outputs are the outputs of the group's last op, the later
ops removed. Every prefix is benchmarked in the same device-script run as the whole
model, alternating over several rounds. In each round, a group's time is
``t(prefix ending at it) - t(previous prefix)`` (the first group's is its prefix's time,
so it carries the interpreter's fixed cost of an invoke), where ``t`` is the fastest of
the round's runs, in CPU time of the invoking thread when the interpreter has one thread
(else wall-clock time). Other work on the machine only ever adds time, and a difference of
two medians of a few runs drowns small ops in it (measured on a loaded 2-core host: on
MobileNetV2, 45 of 64 layers within the noise with medians, about 12 with minimums; under
qemu, where a run outlasts the scheduler's time slice, only CPU time stays clean: kws's
noise fell from 4.2 ms to 0.06 ms per layer). A group's time is the p50 of its per-round
differences, its noise their spread. The sum of the groups is checked against the whole
model's time, measured the same way in the same run.

The prefixes are built on the host from the model's flatbuffer (the TFLite schema's object
API, no TensorFlow), checked by tfedge's bounds-checked reader, and run by the same job
code as ``tfedge bench`` on ``local``, ``qemu`` and ``ssh://`` targets.

Example:
    >>> p = op_profile("kws_int8.tflite", target="local", threads=1)
    >>> [(row.name, round(row.share, 2)) for row in p.sorted_rows()][:2]
    [('conv0', 0.55), ('pw3', 0.08)]
    >>> print(format_profile(p))  # the table of ``tfedge bench --op-profile``
"""

from __future__ import annotations

import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfedge.convert.layer_names import KerasLayers, op_layers, op_tensor
from tfedge.convert.tflite_model import TfliteModel, parse_tflite, read_tflite
from tfedge.errors import BenchError, ModelLoadError

DEFAULT_ROUNDS = 5


@dataclass(frozen=True)
class OpGroup:
    """Consecutive ops (indices into the main subgraph's execution order) timed as one."""

    name: str
    ops: tuple[int, ...]
    op_types: tuple[str, ...]

    @property
    def last(self) -> int:
        return self.ops[-1]


@dataclass
class ProfileRow:
    """One group's time: its per-round differences, their p50 and spread, share of the model."""

    name: str
    ops: tuple[int, ...]
    op_types: tuple[str, ...]
    rounds_us: tuple[float, ...]  # t(prefix ending here) - t(previous prefix), per round
    share: float

    @property
    def p50_us(self) -> float:
        return statistics.median(self.rounds_us)

    @property
    def min_us(self) -> float:
        return min(self.rounds_us)

    @property
    def max_us(self) -> float:
        return max(self.rounds_us)

    @property
    def noise_us(self) -> float:
        """The median distance of the rounds from their p50 (one disturbed round does not
        count); ``min_us`` and ``max_us`` give the whole range."""
        p50 = self.p50_us
        return statistics.median(abs(value - p50) for value in self.rounds_us)

    @property
    def resolved(self) -> bool:
        """Whether this group's time stands out of its noise (more than twice it)."""
        return abs(self.p50_us) > 2 * self.noise_us

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ops": list(self.ops),
            "op_types": list(self.op_types),
            "p50_us": self.p50_us,
            "rounds_us": list(self.rounds_us),
            "min_us": self.min_us,
            "max_us": self.max_us,
            "noise_us": self.noise_us,
            "resolved": self.resolved,
            "share": self.share,
        }


@dataclass
class OpProfile:
    """Time per group and the whole model's time, p50 over the rounds."""

    model: str
    mode: str  # "layers" or "ops"
    rounds: int
    rows: list[ProfileRow]
    total_us: float
    bench: Any = field(default=None, repr=False)  # the BenchResult of the whole model
    statistic: str = "min_us"  # of each round's runs: see STATISTICS

    @property
    def sum_us(self) -> float:
        """The groups' p50s: what the whole model should take."""
        return sum(row.p50_us for row in self.rows)

    @property
    def sum_ratio(self) -> float:
        return self.sum_us / self.total_us if self.total_us > 0 else float("nan")

    @property
    def noise_us(self) -> float:
        """The median of the groups' noise: below it, a group's time is not resolved."""
        return statistics.median(row.noise_us for row in self.rows) if self.rows else 0.0

    def sorted_rows(self) -> list[ProfileRow]:
        return sorted(self.rows, key=lambda row: row.p50_us, reverse=True)

    def to_dict(self) -> dict[str, Any]:
        where = {}
        if self.bench is not None:
            keys = ("target", "emulated", "arch", "runtime", "threads")
            where = {k: v for k, v in self.bench.to_dict().items() if k in keys}
        return {
            "model": self.model,
            **where,
            "mode": self.mode,
            "rounds": self.rounds,
            "statistic": self.statistic,
            "total_us": self.total_us,
            "sum_us": self.sum_us,
            "sum_ratio": self.sum_ratio,
            "noise_us": self.noise_us,
            "rows": [row.to_dict() for row in self.sorted_rows()],
        }


# ---------------------------------------------------------------- grouping
def plan_groups(
    model: TfliteModel, per_op: bool = False, layers: KerasLayers | None = None
) -> list[OpGroup]:
    """Groups of consecutive ops: one per Keras layer run (one per op with ``per_op``).

    An op whose tensors name no layer is a group of its own, named ``OP_TYPE tensor`` after
    its output tensor. In per-op mode every group is named ``OP_TYPE layer``.
    """
    names = op_layers(model.ops, layers)
    groups: list[OpGroup] = []
    for op, layer in zip(model.ops, names):
        label = layer or f"{op.name} {op_tensor(op) or f'op {op.index}'}"
        if per_op:
            name = f"{op.name} {layer}" if layer else label
            groups.append(OpGroup(name, (op.index,), (op.name,)))
        elif groups and layer and groups[-1].name == layer:
            last = groups[-1]
            groups[-1] = OpGroup(last.name, last.ops + (op.index,), last.op_types + (op.name,))
        else:
            groups.append(OpGroup(label, (op.index,), (op.name,)))
    return groups


# ---------------------------------------------------------------- prefix models
def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


class PrefixBuilder:
    """Writes prefixes of one model's main subgraph (the first one) as new ``.tflite`` bytes.

    Other subgraphs (the bodies of control flow) are kept whole: a WHILE op's time is its
    body's.
    """

    def __init__(self, raw: bytes, name: str = "model") -> None:
        self.name = name
        parse_tflite(raw, name)  # bounds-checked first: the object API below is not
        self.model = _schema().ModelT.InitFromPackedBuf(bytearray(raw), 0)
        self._check()
        self.graph = self.model.subgraphs[0]
        self.ops = list(self.graph.operators or [])
        self.buffers = list(self.model.buffers or [])

    def _check(self) -> None:
        buffers = self.model.buffers or []
        if any(getattr(b, "offset", 0) > 1 for b in buffers):
            raise ModelLoadError(
                f"{self.name} keeps its weights outside the flatbuffer (a >2 GB layout)",
                "per-op profiling reads models whose weights are inside the flatbuffer",
            )
        if not self.model.subgraphs or not self.model.subgraphs[0].operators:
            raise ModelLoadError(f"{self.name} has no ops to profile", "pass a converted model")

    def prefix(self, end: int) -> bytes:
        """The model cut after op ``end`` (its outputs become the model's outputs)."""
        import flatbuffers

        graph, model = self.graph, self.model
        kept = self.ops[: end + 1]
        saved = (graph.operators, graph.outputs, model.buffers, model.signatureDefs)
        try:
            graph.operators = kept
            graph.outputs = [i for i in kept[-1].outputs if i >= 0]
            model.buffers = self._used_buffers(kept)
            model.signatureDefs = None  # a signature names the whole model's outputs
            builder = flatbuffers.Builder(1024)
            builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
            return bytes(builder.Output())
        finally:
            graph.operators, graph.outputs, model.buffers, model.signatureDefs = saved

    def _used_buffers(self, kept: list) -> list:
        """The buffers, with the data of those no kept op reads emptied (indices unchanged).

        Only for a single-subgraph model: other subgraphs (control flow) may read any buffer.
        """
        if len(self.model.subgraphs) > 1:
            return self.buffers
        tensors = self.graph.tensors
        used = {
            tensors[i].buffer
            for op in kept
            for i in list(op.inputs) + list(op.outputs)
            if 0 <= i < len(tensors)
        }
        empty = _schema().BufferT()
        return [b if i in used else empty for i, b in enumerate(self.buffers)]


def write_prefixes(
    model: str | os.PathLike, groups: list[OpGroup], out_dir: str | os.PathLike
) -> list[Path]:
    """Write one prefix per group (ending at its last op) into ``out_dir``; each is re-read
    by the bounds-checked reader before it is used."""
    path = Path(model)
    builder = PrefixBuilder(path.read_bytes(), path.name)
    out = Path(out_dir)
    paths = []
    for number, end in enumerate(g.last for g in groups):
        target = out / f"prefix-{number:04d}.tflite"
        target.write_bytes(builder.prefix(end))
        try:
            read_tflite(target)
        except ModelLoadError as exc:
            raise BenchError(
                f"the prefix of {path.name} ending at op {end} is not a valid model: {exc.message}",
                "profile per layer instead, or report this model",
            ) from None
        paths.append(target)
    return paths


# ---------------------------------------------------------------- profiling
def op_profile(
    model: str | os.PathLike,
    target: str = "local",
    per_op: bool = False,
    rounds: int = DEFAULT_ROUNDS,
    runs: int = 20,
    min_secs: float = 0.1,
    layers: KerasLayers | None = None,
    **bench_options,
) -> OpProfile:
    """Time ``model``'s Keras layers (or ops, ``per_op``) on ``target``.

    Every prefix is benchmarked ``rounds`` times in one device-script run with the whole
    model, each time for at least ``runs`` invokes and ``min_secs``.

    Args:
        bench_options: what :func:`tfedge.targets.bench.bench` takes (profile, threads,
            xnnpack, cpus, timeout, ssh options).

    Raises:
        ModelLoadError: not a ``.tflite``, or one whose prefixes cannot be written.
        BenchError, TargetError, ProfileError, UsageError: as ``bench``.
    """
    from tfedge.targets.bench import bench
    from tfedge.targets.job import check_model_file

    path = check_model_file(Path(model))
    groups = plan_groups(read_tflite(path), per_op, layers)
    with tempfile.TemporaryDirectory(prefix="tfedge-op-profile-") as tmp:
        prefixes = write_prefixes(path, groups, tmp)
        result = bench(
            path,
            target=target,
            runs=runs,
            min_secs=min_secs,
            alternates=prefixes,
            rounds=rounds,
            **bench_options,
        )
    statistic = "cpu_min_us" if result.threads == 1 else "min_us"
    return aggregate(str(path), groups, result.sweep, per_op, result, statistic)


def aggregate(
    model: str,
    groups: list[OpGroup],
    sweep: dict | None,
    per_op: bool = False,
    bench_result=None,
    statistic: str = "min_us",
) -> OpProfile:
    """Turn the device script's per-round times into an OpProfile.

    ``sweep[statistic]`` (``min_us`` or ``p50_us`` of each round's runs) holds one list per
    round: the whole model's time first, then each group's prefix's.
    """
    rounds = (sweep or {}).get(statistic) or []  # none: a device script without --alternates
    if not rounds or any(len(r) != len(groups) + 1 for r in rounds):
        raise BenchError(
            f"the device script timed {len(rounds[0]) if rounds else 0} models per round, "
            f"expected {len(groups) + 1}",
            "update tfedge on the host and rerun",
        )
    total = statistics.median(r[0] for r in rounds)
    rows = []
    for k, group in enumerate(groups):
        deltas = tuple(r[k + 1] - (r[k] if k else 0.0) for r in rounds)
        share = statistics.median(deltas) / total if total > 0 else float("nan")
        rows.append(ProfileRow(group.name, group.ops, group.op_types, deltas, share))
    mode = "ops" if per_op else "layers"
    return OpProfile(model, mode, len(rounds), rows, total, bench_result, statistic)


STATISTICS = {
    "cpu_min_us": "fastest run in CPU time",
    "min_us": "fastest run",
    "p50_us": "median run",
}
SUM_TOLERANCE = 0.2  # the groups' sum this far off the whole model's time: not trustworthy


def format_profile(profile: OpProfile, limit: int | None = None) -> str:
    """The table: groups sorted by time (``~`` marks a time within its noise), then the sum
    against the whole model and the noise."""
    rows = profile.sorted_rows()
    shown = rows[:limit] if limit else rows
    layers = profile.mode == "layers"
    head = "LAYER" if layers else "OP LAYER"
    width = max([len(head)] + [len(r.name) for r in shown])
    lines = [
        f"{head:{width}}  {'OPS':>3}  {'MS P50':>8}  {'± MS':>7}  {'SHARE':>6}"
        + ("  KINDS" if layers else "")
    ]
    for r in shown:
        mark = " " if r.resolved else "~"
        kinds = "  " + ",".join(dict.fromkeys(r.op_types)) if layers else ""
        lines.append(
            f"{r.name:{width}}  {len(r.ops):>3}  {mark}{r.p50_us / 1000:7.3f}  "
            f"{r.noise_us / 1000:7.3f}  {r.share:6.1%}{kinds}"
        )
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more")
    lines += [
        f"sum         {profile.sum_us / 1000:.3f} ms = {profile.sum_ratio:.0%} of the whole "
        f"model's {profile.total_us / 1000:.3f} ms (p50 over {profile.rounds} rounds of the "
        f"differences of each prefix's {STATISTICS.get(profile.statistic, profile.statistic)})",
        f"noise       ± {profile.noise_us / 1000:.3f} ms per row (the rounds' median distance "
        "from their p50); ~ marks a time within its noise",
    ]
    if not abs(profile.sum_ratio - 1) <= SUM_TOLERANCE:
        lines.append(
            f"warning     the sum is {abs(profile.sum_ratio - 1):.0%} off the whole model's "
            "time: rerun with more --rounds or --min-secs, on a quieter machine"
        )
    return "\n".join(lines)


__all__ = [
    "OpGroup",
    "OpProfile",
    "PrefixBuilder",
    "ProfileRow",
    "aggregate",
    "format_profile",
    "op_profile",
    "plan_groups",
    "write_prefixes",
]
