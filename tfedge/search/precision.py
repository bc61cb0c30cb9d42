"""The layers a search's ``precision`` block may move off int8: the most sensitive ones.

Ranked once per study on the model's float32 conversion (``tfedge.convert.mixed.
rank_layers``: each layer alone in int8, the rest float32, scored by how far the outputs
move), kept in the study so every worker and a resumed search use the same layers. A
trial's ``precision.N`` then names the N-th of them (see ``tfedge.search.space``).
"""

from __future__ import annotations

from pathlib import Path

from tfedge.search.space import Space


def ranked_layers(space: Space, study, inputs, outdir: Path, seed: int = 0) -> list[str]:
    """The ``space.precision.layers`` most sensitive layers of ``inputs.model`` (stored in
    ``study``); [] when the space has no precision block or no int8 choice."""
    if space.precision is None or "int8" not in space.quant:
        return []
    stored = study.user_attrs.get("precision_layers")
    if stored is not None:
        return list(stored)
    names = _rank(inputs, outdir / "precision", seed)[: space.precision.layers]
    study.set_user_attr("precision_layers", names)
    return names


def _rank(inputs, folder: Path, seed: int) -> list[str]:
    from tfedge.convert.converter import convert
    from tfedge.convert.keras_layers import keras_layers
    from tfedge.convert.mixed import rank_layers
    from tfedge.io.data import load_data

    folder.mkdir(parents=True, exist_ok=True)
    float_model = folder / "float32.tflite"
    convert(inputs.model, float_model, quant="none", trust_model=inputs.trust_model)
    x = load_data(inputs.data).x
    ranking = rank_layers(float_model, x, keras_layers(inputs.model), seed=seed)
    return [row.layer for row in ranking]
