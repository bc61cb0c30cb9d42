"""Memory a ``.tflite`` needs before it runs: the activation arena and the weights' bytes.

Read from the file alone (no interpreter). Tensor lifetimes follow the op order of the
main subgraph, as TFLite's ``ArenaPlanner`` sets them: a model input is live from the first
op to the end, a tensor from the op that writes it to its last reader, a model output to
the end. Constant tensors are weights, not activations. The arena is then planned like
``ArenaPlanner`` / ``SimpleMemoryArena``: tensors live for the whole run first, then the
others in decreasing size, each at the best-fitting gap (aligned to 64 bytes) among the
tensors whose lifetimes overlap it; the arena is the highest end offset. A RESHAPE-like op
writes in place over its input when that input dies there, as the runtime does.

Sizes come from the shapes stored in the file (the converter stores 1 for a dynamic batch).
The builtin CONV_2D kernel's im2col scratch (a kernel larger than 1x1) is planned with the
tensors; other kernels' scratch, the runtime's own memory, and the XNNPACK delegate (its own
activation workspace, and a packed copy of the weights) are not counted.

Example:
    >>> plan = plan_memory(read_tflite("model_int8.tflite"))
    >>> plan.arena_bytes, plan.activation_peak_bytes, plan.weights_bytes
    (1600, 1600, 3928)
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass

from tfedge.convert.tflite_model import Op, Tensor, TfliteModel
from tfedge.errors import ProfileError
from tfedge.targets.profiles import DeviceProfile

ALIGNMENT = 64  # TFLite's kDefaultTensorAlignment
DTYPE_BYTES = {
    "float32": 4.0,
    "float16": 2.0,
    "bfloat16": 2.0,
    "float64": 8.0,
    "int8": 1.0,
    "uint8": 1.0,
    "int16": 2.0,
    "uint16": 2.0,
    "int32": 4.0,
    "uint32": 4.0,
    "int64": 8.0,
    "uint64": 8.0,
    "bool": 1.0,
    "complex64": 8.0,
    "complex128": 16.0,
    "int4": 0.5,
}
# Ops whose output the runtime may place over their input (same bytes, another shape).
IN_PLACE_OPS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "BITCAST"})
FOREVER = math.inf
MAX_PLANNED = 20_000  # activation tensors the greedy plan places (real models: < 5,000)


@dataclass
class Placement:
    """One activation tensor in the arena: bytes, live over ops ``first..last``, at ``offset``."""

    tensor: int
    name: str
    bytes: int
    first: int
    last: float  # an op index, or inf: live to the end
    offset: int = 0
    shares: int | None = None  # the tensor whose bytes it reuses (an in-place op)
    scratch: bool = False  # a kernel's temporary, not a tensor of the file


@dataclass
class MemoryPlan:
    arena_bytes: int  # the greedy plan's highest end offset
    activation_peak_bytes: int  # max over ops of the live tensors' bytes (any plan's floor)
    weights_bytes: int  # constant buffers
    tensors: list[Placement]

    def to_dict(self) -> dict:
        """Plain JSON: a tensor live to the end has ``last`` None (not infinity)."""
        data = asdict(self)
        for t in data["tensors"]:
            t["last"] = None if t["last"] == FOREVER else int(t["last"])
        return data


def plan_memory(model: TfliteModel) -> MemoryPlan:
    """Lifetimes, the arena plan and the weights of ``model``'s main subgraph."""
    ops = main_ops(model)
    lives = _lifetimes(model, ops)
    placed = _place(lives)
    return MemoryPlan(
        arena_bytes=max((p.offset + p.bytes for p in placed), default=0),
        activation_peak_bytes=_live_peak(placed, len(ops)),
        weights_bytes=weights_bytes(model),
        tensors=sorted(placed, key=lambda p: p.tensor),
    )


def main_ops(model: TfliteModel) -> list[Op]:
    """The ops of subgraph 0 (the reader lists every subgraph's ops, the main one first)."""
    main = {id(t) for t in model.tensors}
    ops = []
    for op in model.ops:
        if not all(id(t) in main for t in op.inputs + op.outputs):
            break
        ops.append(op)
    return ops


def tensor_bytes(t: Tensor) -> int:
    """Bytes of ``t`` from its shape and dtype (a string tensor: 0, its size is dynamic)."""
    return math.ceil(math.prod(t.shape) * DTYPE_BYTES.get(t.dtype, 0.0))


def weights_bytes(model: TfliteModel) -> int:
    """Bytes of the constant buffers (each counted once, however many tensors share it)."""
    seen: set[int] = set()
    total = 0
    for t in model.tensors:
        if t.data is not None and id(t.data) not in seen:
            seen.add(id(t.data))
            total += t.nbytes
    return total


def _lifetimes(model: TfliteModel, ops: list[Op]) -> list[Placement]:
    lives: dict[int, Placement] = {}

    def live(t: Tensor, first: int) -> None:
        if t.is_constant or t.index in lives:
            return
        lives[t.index] = Placement(t.index, t.name, tensor_bytes(t), first, first)

    for t in model.inputs:
        live(t, 0)
        lives[t.index].last = FOREVER
    for i, op in enumerate(ops):
        for t in op.outputs:
            live(t, i)
        for t in op.inputs:
            if t.index in lives and lives[t.index].last != FOREVER:
                lives[t.index].last = max(lives[t.index].last, i)
    for t in model.outputs:
        if t.index in lives:
            lives[t.index].last = FOREVER
    _share_in_place(ops, lives)
    return list(lives.values()) + _scratch(model, ops)


def _scratch(model: TfliteModel, ops: list[Op]) -> list[Placement]:
    """The im2col buffer a builtin CONV_2D kernel plans for a kernel larger than 1x1."""
    out: list[Placement] = []
    for i, op in enumerate(ops):
        if op.name != "CONV_2D" or len(op.inputs) < 2 or not op.outputs:
            continue
        src, w, y = op.inputs[0], op.inputs[1].shape, op.outputs[0].shape
        if len(w) != 4 or len(y) != 4 or w[1] * w[2] == 1:
            continue
        size = math.ceil(math.prod(y[:3]) * w[1] * w[2] * w[3] * DTYPE_BYTES.get(src.dtype, 0.0))
        index = len(model.tensors) + len(out)
        out.append(Placement(index, f"{op.name} {i} im2col", size, i, i, scratch=True))
    return out


def _share_in_place(ops: list[Op], lives: dict[int, Placement]) -> None:
    """An in-place op's output reuses its input's bytes when the input dies at that op."""
    for i, op in enumerate(ops):
        if op.name not in IN_PLACE_OPS or not op.inputs or len(op.outputs) != 1:
            continue
        src, out = lives.get(op.inputs[0].index), lives.get(op.outputs[0].index)
        if src is None or out is None or src.last != i or src.shares is not None:
            continue
        if src.first == 0 and src.last == FOREVER or out.bytes > src.bytes:
            continue
        src.last = out.last
        out.shares = src.tensor


def _place(lives: list[Placement]) -> list[Placement]:
    """Offsets as ``ArenaPlanner`` gives them (see the module docstring).

    Past :data:`MAX_PLANNED` tensors (a hostile file; the planner is quadratic) each tensor
    gets its own bytes, an upper bound.
    """
    owners = [p for p in lives if p.shares is None]
    owners.sort(
        key=lambda p: (
            (0, p.tensor, 0, 0)
            if p.first == 0 and p.last == FOREVER
            else (1, -p.bytes, p.first, p.tensor)
        )
    )
    placed: list[Placement] = []  # sorted by offset
    end = 0
    for p in owners:
        if len(owners) > MAX_PLANNED:
            p.offset, end = _align(end), _align(end) + p.bytes
            continue
        p.offset = _best_offset(p, placed)
        bisect.insort(placed, p, key=lambda o: o.offset)
    by_index = {p.tensor: p for p in lives}
    for p in lives:
        if p.shares is not None:
            owner = by_index[p.shares]
            p.offset, p.first = owner.offset, owner.first
    return lives


def _best_offset(p: Placement, placed: list[Placement]) -> int:
    """The smallest gap that fits ``p`` among overlapping tensors, else the end."""
    if not p.bytes:
        return 0
    best, best_fit, current = None, math.inf, 0
    for other in placed:
        if other.last < p.first or other.first > p.last:
            continue
        aligned = _align(current)
        if aligned + p.bytes <= other.offset and other.offset - aligned < best_fit:
            best, best_fit = aligned, other.offset - current
        current = max(current, other.offset + other.bytes)
        if best_fit == 0:
            break
    return _align(current) if best is None else best


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _live_peak(placed: list[Placement], n_ops: int) -> int:
    """The most bytes live at once (an in-place output adds nothing to its input's bytes)."""
    change = [0] * (n_ops + 2)
    for p in placed:
        if p.shares is None:
            change[min(p.first, n_ops)] += p.bytes
            change[n_ops + 1 if p.last == FOREVER else int(p.last) + 1] -= p.bytes
    peak = live = 0
    for delta in change:
        live += delta
        peak = max(peak, live)
    return peak


# ---------------------------------------------------------------- a profile's budgets
MIB = 1024 * 1024  # a profile's MB are the MiB `tfedge bench` reports peak RSS in


@dataclass
class BudgetVerdict:
    """One budget of a profile against the estimate: ``used`` bytes of ``limit`` bytes."""

    budget: str  # "ram" or "flash"
    what: str
    used: int
    limit: int | None
    fits: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self, profile: str) -> str:
        if self.limit is None:
            return f"{self.budget}: {self.what} {self.used:,} bytes, {profile} sets no budget"
        if self.fits:
            return (
                f"{self.budget}: {self.what} {self.used:,} bytes fits {profile}'s budget of "
                f"{self._limit()}"
            )
        return f"{self.budget}: {self.what} {self.used:,} bytes is {self.over(profile)}"

    def over(self, profile: str) -> str:
        limit = self.limit or 1
        return (
            f"over {profile}'s budget of {self._limit()} by {self.used - limit:,} bytes "
            f"({self.used / limit:.2f}x)"
        )

    def _limit(self) -> str:
        limit = self.limit or 0
        return f"{round(limit / MIB, 3):g} MB" if self.budget == "ram" else f"{limit:,} bytes"


def memory_verdicts(
    profile: DeviceProfile, size_bytes: int, arena_bytes: int, weights_bytes: int
) -> list[BudgetVerdict]:
    """The RAM budget against arena + weights, the model budget against the file's size."""
    budgets = profile.budgets
    ram = arena_bytes + weights_bytes
    ram_limit = None if budgets.max_ram_mb is None else int(budgets.max_ram_mb * MIB)
    flash_limit = budgets.max_model_bytes
    return [
        BudgetVerdict(
            "ram", "arena + weights", ram, ram_limit, ram_limit is None or ram <= ram_limit
        ),
        BudgetVerdict(
            "flash",
            "model file",
            size_bytes,
            flash_limit,
            flash_limit is None or size_bytes <= flash_limit,
        ),
    ]


def enforce_memory_budgets(profile: DeviceProfile, verdicts: list[BudgetVerdict]) -> None:
    """Raise ProfileError naming every budget the estimate breaks."""
    over = [v for v in verdicts if not v.fits]
    if over:
        raise ProfileError(
            "; ".join(f"{v.what} is {v.used:,} bytes, {v.over(profile.name)}" for v in over),
            "quantize to int8, prune channels or pick a smaller architecture or input size; "
            "the runtime's own memory comes on top, which `tfedge bench --profile` measures",
        )
