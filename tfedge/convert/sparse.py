"""Does a ``.tflite`` model match XNNPACK's sparse inference pattern, and if not, why not.

XNNPACK runs part of a float model in NCHW layout with sparse 1x1 convolutions when the
model stores sparse weights (``tfedge convert --sparse``: DENSIFY ops) and a part of its graph
passes the rules of ``xnn_subgraph_rewrite_for_nchw`` (XNNPACK ``src/subgraph.c``):

- it starts with a 3x3 stride-2 CONV_2D over 3 input channels, padded exactly 1 on each side
  (a ZeroPadding2D(1) before a 'valid' convolution; TensorFlow 'same' padding with stride 2
  is not explicit padding, and on an even input it pads 0 before and 1 after);
- inside: 1x1 convolutions (no stride, no padding), depthwise 3x3 or 5x5 convolutions (stride
  1 or 2, padded 1 or 2 on each side, multiplier 1), 4-D ADD/MUL, RESIZE_BILINEAR, unary ops;
- it ends with a MEAN over height and width (GlobalAveragePooling2D) or a DEPTH_TO_SPACE,
  and no value inside is read by an op outside;
- more than 2/3 of its 1x1 convolution (and fully-connected) weights are zero;
- everything computes in float32 or float16 (XNNPACK has no sparse int8 kernels).

This module replays those rules on tfedge's own reading of the file; nothing runs.

Example:
    >>> check = xnnpack_sparse_check("model_sparse.tflite")
    >>> check.matches, check.reasons[:1]
    (False, ['CONV_2D #1 (conv1): 3x3 stride-2 convolution padded top 0, left 0, bottom 1, ...'])
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from tfedge.convert.tflite_model import Op, Tensor, TfliteModel, read_tflite

# layout flags, as XNNPACK names them
NCHW, NHWC2NCHW, NCHW2NHWC = 1, 2, 4
FLOAT = {"float32", "float16"}
INTEGER_ACTIVATIONS = {"int8", "uint8", "int16"}  # a quantized model (not an argmax's int64)
UNPACK_OPS = {"DENSIFY", "DEQUANTIZE"}  # run once on constants before inference (static unpack)
PAD_OPS = {"PAD", "PADV2"}
UNARY_OPS = {
    "ABS", "CEIL", "COS", "ELU", "EXP", "FLOOR", "GELU", "HARD_SWISH", "LEAKY_RELU", "LOG",
    "LOGISTIC", "NEG", "RELU", "RELU6", "RELU_N1_TO_1", "ROUND", "RSQRT", "SIN", "SQRT",
    "SQUARE", "TANH",
}  # fmt: skip
ARITY = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "MEAN": 2, "ADD": 2, "MUL": 2}
REASONS_SHOWN = 6
SAME_NOTE = (
    "XNNPACK keeps TensorFlow 'same' padding implicit for a strided convolution (on an even "
    "input it pads 0 before and 1 after; the converter writes Keras MobileNetV2's asymmetric "
    "ZeroPadding2D that way too): pad explicitly, ZeroPadding2D(1) then padding='valid'"
)
SAME, VALID = 0, 1  # TFLite's Padding enum


@dataclass
class SparseCheck:
    """The verdict: ``matches`` when XNNPACK would switch part of the model to sparse
    inference; otherwise ``reasons`` says why not, first cause first."""

    matches: bool
    reasons: list[str] = field(default_factory=list)
    sparse_tensors: int = 0  # constants stored sparse (DENSIFY inputs)
    nchw_ops: int = 0  # ops XNNPACK would run in NCHW (sparse) layout
    zeros_1x1: int = 0  # zero weights of the 1x1 convolutions / fully-connected layers
    weights_1x1: int = 0  # in the best candidate subgraph

    def describe(self) -> str:
        if self.matches:
            return (
                f"matches XNNPACK's sparse pattern: {self.nchw_ops} ops run sparse (NCHW), "
                f"1x1 weights {_share(self.zeros_1x1, self.weights_1x1)} zero"
            )
        return "does not match XNNPACK's sparse pattern: " + "; ".join(self.reasons)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Node:
    op: Op
    inputs: list[int]  # tensors computed at run time (not constants, not unpacked constants)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right (explicit)
    same_flag: bool = False  # TensorFlow SAME padding XNNPACK could not make explicit
    flags: int = 0
    why: str = ""  # why flags is 0

    @property
    def label(self) -> str:
        layer = self.op.layer
        return f"{self.op.name} #{self.op.index}" + (f" ({layer})" if layer else "")


def xnnpack_sparse_check(path: str | os.PathLike[str]) -> SparseCheck:
    """Check the ``.tflite`` file at ``path`` (ModelLoadError if it is not a valid model)."""
    return check_model(read_tflite(path))


def check_model(model: TfliteModel) -> SparseCheck:
    """Check a model read by :func:`tfedge.convert.tflite_model.read_tflite`."""
    sparse = sum(1 for t in model.tensors if t.sparsity is not None)
    reasons = []
    if not sparse:
        reasons.append("no weights are stored sparse (convert with `tfedge convert --sparse`)")
    integer = sorted({t.dtype for op in model.ops for t in op.outputs} & INTEGER_ACTIVATIONS)
    if integer:
        reasons.append(
            f"it computes in {', '.join(integer)}; XNNPACK's sparse kernels are "
            "float32/float16 only"
        )
    if integer:  # every op would say the same
        return SparseCheck(False, reasons, sparse_tensors=sparse)
    static = _static_values(model)
    nodes = _nodes(model, static)
    for node in nodes:
        node.flags, node.why = _layout_flags(node, static)
    verdict = _clusters(nodes, static)
    verdict.sparse_tensors = sparse
    verdict.reasons = reasons + verdict.reasons
    verdict.matches = verdict.matches and not reasons
    if not verdict.matches and any(n.same_flag and n.why for n in nodes):
        verdict.reasons.append(SAME_NOTE)
    return verdict


# ---------------------------------------------------------------- graph as XNNPACK sees it
def _static_values(model: TfliteModel) -> dict[int, Tensor]:
    """Tensors known before inference, by index, with the constant holding their values:
    constants, and the outputs of DENSIFY/DEQUANTIZE of them (the delegate unpacks those)."""
    static = {t.index: t for t in model.tensors if t.is_constant}
    for op in model.ops:
        if op.name in UNPACK_OPS and op.inputs and op.inputs[0].index in static:
            for out in op.outputs:
                static[out.index] = static[op.inputs[0].index]
    return static


def _small_values(t: Tensor, static: dict[int, Tensor]) -> np.ndarray:
    """A small constant's values (paddings, axes), flat; empty when it is stored sparse (the
    check never densifies: a hostile file could ask for far more memory than it holds)."""
    source = static[t.index]
    if source.data is None or source.sparsity is not None:
        return np.zeros(0, np.int64)
    return source.data.reshape(-1)


def _zeros(t: Tensor, static: dict[int, Tensor]) -> int:
    """Zero weights of static ``t``, counted on what the file stores (sparse or not)."""
    source = static[t.index]
    stored = source.data if source.data is not None else np.zeros(0)
    return source.size - int(np.count_nonzero(stored))


def _nodes(model: TfliteModel, static: dict[int, Tensor]) -> list[_Node]:
    """The ops XNNPACK gets, with zero PADs folded into the convolution after them."""
    consumers: dict[int, list[Op]] = {}
    for op in model.ops:
        for t in op.inputs:
            consumers.setdefault(t.index, []).append(op)
    nodes, fused = [], {}
    for op in model.ops:
        if op.name in UNPACK_OPS and op.inputs and op.inputs[0].index in static:
            continue
        if op.name in PAD_OPS and _fusable_pad(op, consumers, static):
            fused[op.outputs[0].index] = op
            continue
        dynamic = [t.index for t in op.inputs if t.index not in static]
        node = _Node(op, dynamic)
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            _explicit_padding(node, fused.get(op.inputs[0].index), static)
        nodes.append(node)
    return nodes


def _fusable_pad(op: Op, consumers: dict[int, list[Op]], static: dict[int, Tensor]) -> bool:
    """A zero PAD of height/width only, read by one convolution XNNPACK can fold it into."""
    readers = consumers.get(op.outputs[0].index, []) if op.outputs else []
    if len(readers) != 1 or readers[0].name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return False
    conv = readers[0]
    if conv.options.get("padding") == SAME and _strides(conv) != (1, 1):
        return False  # XNNPACK keeps TF SAME padding for strided convolutions: no folding
    pads = _pads(op, static)
    if pads is None or pads.shape != (4, 2) or pads[0].any() or pads[3].any():
        return False
    if len(op.inputs) > 2 and op.inputs[2].index in static:
        value = _small_values(op.inputs[2], static)
        return value.size == 1 and not value.any()
    return len(op.inputs) <= 2


def _pads(op: Op, static: dict[int, Tensor]) -> np.ndarray | None:
    if len(op.inputs) < 2 or op.inputs[1].index not in static:
        return None
    pads = _small_values(op.inputs[1], static).astype(np.int64)
    return pads.reshape(-1, 2) if pads.size == 8 else None


def _strides(op: Op) -> tuple[int, int]:
    return op.options.get("stride_h", 1), op.options.get("stride_w", 1)


def _explicit_padding(node: _Node, pad: Op | None, static: dict[int, Tensor]) -> None:
    """Padding as XNNPACK defines it: TF SAME made explicit for stride 1, a PAD folded in."""
    op = node.op
    if op.options.get("padding", SAME) == SAME and len(op.inputs) > 1:
        if _strides(op) != (1, 1):
            node.same_flag = True
        else:
            kh, kw = op.inputs[1].shape[1:3] if len(op.inputs[1].shape) == 4 else (1, 1)
            ph = (kh - 1) * op.options.get("dilation_h", 1)
            pw = (kw - 1) * op.options.get("dilation_w", 1)
            node.padding = (ph // 2, pw // 2, ph - ph // 2, pw - pw // 2)
    if pad is not None:
        pads = _pads(pad, static)
        assert pads is not None
        added = (int(pads[1][0]), int(pads[2][0]), int(pads[1][1]), int(pads[2][1]))
        node.padding = tuple(a + b for a, b in zip(node.padding, added))  # type: ignore[assignment]
        node.inputs = [t.index for t in pad.inputs[:1]] + node.inputs[1:]


# ---------------------------------------------------------------- per-op rules
def _layout_flags(node: _Node, static: dict[int, Tensor]) -> tuple[int, str]:
    """XNNPACK's ``xnn_check_nchw_compatibility`` for one op: (flags, why not)."""
    op = node.op
    if len(op.inputs) < ARITY.get(op.name, 1) or not op.outputs:
        return 0, f"{node.label} lacks inputs or outputs"
    dtypes = {t.dtype for t in op.inputs + op.outputs}
    if not dtypes <= FLOAT | ({"int32"} if op.name in ("MEAN", "RESIZE_BILINEAR") else set()):
        return 0, f"{node.label} computes in {', '.join(sorted(dtypes - FLOAT))}"
    if op.name == "CONV_2D":
        return _conv_flags(node)
    if op.name == "DEPTHWISE_CONV_2D":
        return _depthwise_flags(node)
    if op.name == "FULLY_CONNECTED":
        return NCHW, ""
    if op.name == "DEPTH_TO_SPACE":
        return NCHW2NHWC, ""
    if op.name == "MEAN":
        return _mean_flags(node, static)
    if op.name in ("ADD", "MUL"):
        return _binary_flags(node, static)
    if op.name == "RESIZE_BILINEAR":
        shape = op.inputs[0].shape
        ok = len(shape) == 4 and shape[1] > 1 and shape[2] > 1
        return (NCHW, "") if ok else (0, f"{node.label} resizes a 1-pixel input")
    if op.name in UNARY_OPS:
        ok = len(op.inputs[0].shape) == 4
        return (NCHW, "") if ok else (0, f"{node.label} has a {len(op.inputs[0].shape)}-D input")
    return 0, f"{node.label} has no NCHW kernel in XNNPACK"


def _conv_flags(node: _Node) -> tuple[int, str]:
    o, w = node.op.options, node.op.inputs[1].shape
    if len(w) != 4:
        return 0, f"{node.label} has a {len(w)}-D filter"
    if (o.get("dilation_h", 1), o.get("dilation_w", 1)) != (1, 1):
        return 0, f"{node.label} is dilated"
    kh, kw, channels = w[1], w[2], w[3]
    strides = _strides(node.op)
    if (kh, kw) == (1, 1):
        if any(node.padding) or node.same_flag or strides != (1, 1):
            return 0, f"{node.label}: 1x1 convolution with stride {strides} or padding"
        return NCHW, ""
    if (kh, kw) != (3, 3):
        return 0, f"{node.label}: {kh}x{kw} convolution (the sparse part takes 1x1, 3x3 first)"
    if node.same_flag or node.padding != (1, 1, 1, 1):
        return 0, f"{node.label}: 3x3 stride-{strides[0]} convolution {_padding_text(node)}"
    if strides != (2, 2) or channels != 3:
        stride = strides[0] if strides[0] == strides[1] else strides
        return 0, (
            f"{node.label}: 3x3 stride-{stride} convolution over {channels} channels (a "
            "full 3x3 convolution can only start the sparse part: stride 2 over 3 channels)"
        )
    return NHWC2NCHW, ""


def _depthwise_flags(node: _Node) -> tuple[int, str]:
    o, w = node.op.options, node.op.inputs[1].shape
    strides = _strides(node.op)
    if (o.get("dilation_h", 1), o.get("dilation_w", 1)) != (1, 1):
        return 0, f"{node.label} is dilated"
    channels = node.op.inputs[0].shape[-1] if node.op.inputs[0].shape else 0
    if len(w) != 4 or w[3] != channels:
        return 0, f"{node.label} has a depth multiplier other than 1"
    if strides[0] != strides[1] or strides[0] not in (1, 2):
        return 0, f"{node.label}: depthwise stride {strides} (it must be 1 or 2)"
    k = w[1] if len(w) == 4 and w[1] == w[2] else 0
    if k not in (3, 5):
        return 0, f"{node.label}: depthwise kernel {list(w[1:3])} (it must be 3x3 or 5x5)"
    side = k // 2
    if node.same_flag or node.padding != (side,) * 4:
        padding = _padding_text(node, side)
        return 0, f"{node.label}: {k}x{k} stride-{strides[0]} depthwise convolution {padding}"
    return NCHW, ""


def _padding_text(node: _Node, side: int = 1) -> str:
    if node.same_flag:
        return "with TensorFlow 'same' padding"
    top, left, bottom, right = node.padding
    return (
        f"padded top {top}, left {left}, bottom {bottom}, right {right} "
        f"(it must be {side} on each side)"
    )


def _mean_flags(node: _Node, static: dict[int, Tensor]) -> tuple[int, str]:
    op = node.op
    spatial = len(op.inputs) > 1 and op.inputs[1].index in static
    if spatial:
        axes = _small_values(op.inputs[1], static)
        spatial = sorted(int(a) % 4 for a in axes) == [1, 2]
    if len(op.inputs[0].shape) != 4 or not spatial:
        return 0, f"{node.label} is not a mean over height and width of a 4-D tensor"
    return NCHW | NCHW2NHWC, ""


def _binary_flags(node: _Node, static: dict[int, Tensor]) -> tuple[int, str]:
    op = node.op
    if any(len(t.shape) != 4 for t in op.inputs[:2]):
        return 0, f"{node.label} has an input that is not 4-D"
    for t in op.inputs[:2]:
        if t.index in static and sum(d != 1 for d in t.shape) > 1:
            return 0, f"{node.label} has a constant that is not a scalar or vector"
    return NCHW, ""


# ---------------------------------------------------------------- clusters
def _clusters(nodes: list[_Node], static: dict[int, Tensor]) -> SparseCheck:
    """Join NCHW-able ops into subgraphs as XNNPACK does; the best one decides."""
    producer = {t.index: i for i, n in enumerate(nodes) for t in n.op.outputs}
    readers: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.inputs:
            readers.setdefault(t, []).append(i)
    parent = list(range(len(nodes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    broken: dict[int, str] = {}  # node -> why its subgraph cannot switch
    for i, n in enumerate(nodes):
        if not n.flags & (NCHW | NCHW2NHWC):
            continue
        for t in n.inputs:
            p = producer.get(t)
            if p is None:
                broken[i] = f"{n.label} reads the model's input directly"
            elif nodes[p].flags & (NCHW | NHWC2NCHW) and p not in broken:
                parent[root(p)] = root(i)
            else:
                broken[i] = f"{n.label} reads {nodes[p].label}, which cannot run in NCHW"
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        if n.flags:
            groups.setdefault(root(i), []).append(i)
    verdicts = [_cluster(members, nodes, readers, broken, static) for members in groups.values()]
    return _best(verdicts, nodes)


def _cluster(members, nodes, readers, broken, static) -> SparseCheck:
    inside = set(members)
    flags = 0
    for i in members:
        flags |= nodes[i].flags
    why = [broken[i] for i in members if i in broken]
    for i in members:
        if nodes[i].flags & (NCHW | NCHW2NHWC):
            for t in nodes[i].inputs:
                outside = [r for r in readers.get(t, []) if r not in inside]
                if outside:
                    why.append(f"{nodes[outside[0]].label} reads a value inside the sparse part")
    if not flags & NHWC2NCHW:
        why.append("no 3x3 stride-2 CONV_2D over 3 channels, padded 1 on each side, starts it")
    if not flags & NCHW2NHWC:
        why.append("no MEAN over height and width (or DEPTH_TO_SPACE) ends it")
    zeros, weights = _zeros_1x1([nodes[i] for i in members], static)
    if weights and zeros * 3 <= weights * 2:
        why.append(
            f"its 1x1 convolution weights are {_share(zeros, weights)} zero; XNNPACK needs "
            "more than 2/3"
        )
    elif not weights:
        why.append("it has no 1x1 convolutions")
    return SparseCheck(not why, why, 0, len(members), zeros, weights)


def _zeros_1x1(members: list[_Node], static: dict[int, Tensor]) -> tuple[int, int]:
    zeros = weights = 0
    for n in members:
        if len(n.op.inputs) < 2 or n.op.inputs[1].index not in static:
            continue
        w = n.op.inputs[1]
        one_by_one = n.op.name == "CONV_2D" and len(w.shape) == 4 and w.shape[1:3] == (1, 1)
        if not (one_by_one or n.op.name == "FULLY_CONNECTED"):
            continue
        zeros, weights = zeros + _zeros(w, static), weights + static[w.index].size
    return zeros, weights


def _best(verdicts: list[SparseCheck], nodes: list[_Node]) -> SparseCheck:
    matching = [v for v in verdicts if v.matches]
    if matching:
        best = max(matching, key=lambda v: v.nchw_ops)
        best.nchw_ops = sum(v.nchw_ops for v in matching)
        return best
    # No candidate subgraph: the ops that broke the pattern are the reasons (first first).
    reasons = [n.why for n in nodes if n.why and n.op.name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    candidates = [v for v in verdicts if len(v.reasons) and v.nchw_ops > 1]
    if candidates:
        best = max(candidates, key=lambda v: v.nchw_ops)
        reasons = _unique(reasons[:2] + best.reasons + reasons[2:])
        best.reasons = _shown(reasons)
        best.nchw_ops = 0
        return best
    if not reasons:
        reasons = ["no part of it can run in XNNPACK's NCHW layout"]
    return SparseCheck(False, _shown(_unique(reasons)))


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _shown(reasons: list[str]) -> list[str]:
    if len(reasons) <= REASONS_SHOWN:
        return reasons
    return reasons[:REASONS_SHOWN] + [f"and {len(reasons) - REASONS_SHOWN} more"]


def _share(part: int, whole: int) -> str:
    return f"{part:,}/{whole:,} ({100 * part / whole:.0f}%)" if whole else "0/0"
