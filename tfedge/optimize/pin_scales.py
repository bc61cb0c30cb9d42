"""Give a converted model the quantization parameters of a base model (``ota_base`` pinning).

After a full fine-tune every per-channel weight scale and most activation ranges move, so
``tfedge.ota.delta`` can pair no buffer with the base's (a buffer is diffed only when its
tensors' quantization is unchanged) and the delta is as large as the model. ``pin_scales``
rewrites the new model's flatbuffer so that every tensor has the base's scales and zero
points: constant buffers (int8 weights, int32 biases) are requantized to them (``round(q *
s_new / s_base)``, clipped to the type's range), activations simply take the base's ranges
(as if calibrated like the base). It is done only when the two models have the same
structure (tensors, types, shapes, quantization axes), so that every constraint the
converter kept between scales (a bias's scale is its input's times its weight's; pooling
and reshapes keep their input's) holds as it holds in the base.

The result must be run and evaluated again (``tfedge.optimize.ota_base`` does): clipping and
the base's activation ranges can cost accuracy.
"""

from __future__ import annotations

import numpy as np

from tfedge.convert.tflite_model import parse_tflite

__all__ = ["pin_scales"]


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _int_types() -> dict[int, type]:
    t = _schema().TensorType
    return {t.INT8: np.int8, t.UINT8: np.uint8, t.INT16: np.int16, t.INT32: np.int32}


def pin_scales(base: bytes, new: bytes) -> tuple[bytes | None, int, str]:
    """``new`` with the base's quantization parameters: (bytes, tensors changed, "") or
    (None, 0, why not) when the models differ in structure.

    Raises:
        ModelLoadError: either is not a valid TFLite model.
    """
    import flatbuffers

    parse_tflite(base, "the base model")  # bounds-checked first: the object API is not
    parse_tflite(new, "the new model")
    schema = _schema()
    old = schema.ModelT.InitFromPackedBuf(bytearray(base), 0)
    model = schema.ModelT.InitFromPackedBuf(bytearray(new), 0)
    why = _mismatch(old, model)
    if why:
        return None, 0, why
    changed, done = 0, set()
    for graph_old, graph in zip(old.subgraphs, model.subgraphs):
        for t_old, t in zip(graph_old.tensors, graph.tensors):
            q_old, q = t_old.quantization, t.quantization
            if not _scales(q) or _same(q_old, q):
                continue
            buffer = model.buffers[t.buffer] if t.buffer else None
            if buffer is not None and _has_data(buffer) and t.buffer not in done:
                buffer.data = _requantize(buffer.data, t, q, q_old)
                done.add(t.buffer)
            q.scale, q.zeroPoint = list(q_old.scale), list(q_old.zeroPoint)
            changed += 1
    builder = flatbuffers.Builder(len(new) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), changed, ""


def _mismatch(old, model) -> str:
    """Why the two models cannot share quantization parameters, or ""."""
    if any(getattr(b, "offset", 0) > 1 for b in list(model.buffers or [])):
        return "the new model keeps its weights outside the flatbuffer"
    if len(old.subgraphs or []) != len(model.subgraphs or []):
        return "the models have different numbers of subgraphs"
    for g, (graph_old, graph) in enumerate(zip(old.subgraphs, model.subgraphs)):
        if len(graph_old.tensors or []) != len(graph.tensors or []):
            return f"subgraph {g} has {len(graph.tensors or [])} tensors, the base's " + str(
                len(graph_old.tensors or [])
            )
        for t_old, t in zip(graph_old.tensors, graph.tensors):
            why = _tensor_mismatch(old, model, t_old, t)
            if why:
                return f"tensor {_name(t)}: {why}"
    return ""


def _tensor_mismatch(old, model, t_old, t) -> str:
    if t_old.type != t.type or list(_shape(t_old)) != list(_shape(t)):
        return "another type or shape than in the base"
    q_old, q = t_old.quantization, t.quantization
    if bool(_scales(q_old)) != bool(_scales(q)):
        return "quantized in one model only"
    if _scales(q) and (
        len(q_old.scale) != len(q.scale) or q_old.quantizedDimension != q.quantizedDimension
    ):
        return "another number of scales or quantized axis"
    constant = _has_data(model.buffers[t.buffer]) if t.buffer else False
    constant_old = _has_data(old.buffers[t_old.buffer]) if t_old.buffer else False
    if constant != constant_old:
        return "constant in one model only"
    if constant and _scales(q) and t.type not in _int_types():
        return "a quantized constant of a type that is not an integer"
    return ""


def _requantize(data, t, q, q_old) -> np.ndarray:
    dtype = _int_types()[t.type]
    shape = tuple(_shape(t)) or (-1,)
    values: np.ndarray = np.frombuffer(bytes(np.asarray(data, np.uint8)), dtype).reshape(shape)
    axis = q.quantizedDimension if len(q.scale) > 1 else None
    real = (values.astype(np.float64) - _along(q.zeroPoint, axis, values.ndim)) * _along(
        q.scale, axis, values.ndim
    )
    pinned = np.rint(real / _along(q_old.scale, axis, values.ndim)) + _along(
        q_old.zeroPoint, axis, values.ndim
    )
    info = np.iinfo(dtype)
    low = -info.max if dtype is np.int8 else info.min  # int8 weights are symmetric: -127..127
    pinned = np.clip(pinned, low, info.max).astype(dtype)
    return np.frombuffer(pinned.tobytes(), np.uint8).copy()


def _along(values, axis: int | None, ndim: int) -> np.ndarray:
    array = np.asarray(values if values is not None else [0], np.float64)
    if axis is None or array.size == 1:
        return array.reshape(())
    shape = [1] * ndim
    shape[axis] = array.size
    return array.reshape(shape)


def _scales(q) -> bool:
    return q is not None and q.scale is not None and len(q.scale) > 0


def _same(q_old, q) -> bool:
    return list(q_old.scale) == list(q.scale) and list(
        q_old.zeroPoint if q_old.zeroPoint is not None else []
    ) == list(q.zeroPoint if q.zeroPoint is not None else [])


def _has_data(buffer) -> bool:
    return buffer is not None and buffer.data is not None and len(buffer.data) > 0


def _shape(t) -> list[int]:
    return [] if t.shape is None else [int(d) for d in t.shape]


def _name(t) -> str:
    name = t.name
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
