"""``cluster``: tfmot weight clustering, fine-tuned, wrappers stripped.

After ``prune`` the clustering keeps the zeros (``preserve_sparsity`` is automatic), so the
kernel of each clustered layer holds at most ``clusters`` distinct values plus zero.

Example (recipe):
    passes:
      - cluster: {clusters: 16, epochs: 1, init: kmeans++}
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import (PassResult, check_bool, check_choice, check_names, check_number, check_selection,
                   clone_with_weights, import_tfmot, kernel_of, register_pass, select_layers)

INITS = {"kmeans++": "KMEANS_PLUS_PLUS", "linear": "LINEAR", "density": "DENSITY_BASED", "random": "RANDOM"}


@register_pass("cluster")
@dataclass(frozen=True)
class Cluster:
    """Share ``clusters`` centroids among the weights of each selected kernel.

    Args:
        clusters: centroids per kernel (per output channel with ``per_channel``).
        init: centroid initialisation: ``kmeans++``, ``linear``, ``density`` or ``random``.
        preserve_sparsity: keep zeros at zero; ``null`` (default) means "yes after prune".
        per_channel: cluster each Conv2D output channel separately.
        epochs: fine-tuning epochs.
        learning_rate: fine-tuning learning rate; defaults to a tenth of ``train.learning_rate``.
        layers: layer-name patterns to cluster; all clusterable layers when empty.
        layer_types: layer class names to cluster.
    """

    clusters: int = 16
    init: str = "kmeans++"
    preserve_sparsity: bool | None = None
    per_channel: bool = False
    epochs: int = 1
    learning_rate: float | None = None
    layers: tuple = ()
    layer_types: tuple = ()

    def __post_init__(self):
        check_number(self, "clusters", 2, 256, integer=True)
        check_choice(self, "init", list(INITS))
        check_bool(self, "preserve_sparsity", optional=True)
        check_bool(self, "per_channel")
        check_number(self, "epochs", 1, 1000, integer=True)
        check_number(self, "learning_rate", 0, 1, lo_open=True, optional=True)
        check_names(self, "layers")
        check_names(self, "layer_types")

    def selected(self, model) -> list[str]:
        return select_layers(model, self.layers, self.layer_types, lambda l: clusterable(l, self.clusters))

    def check(self, model, ctx) -> None:
        check_selection(self, model, self.selected(model), "clustered")

    def keeps_sparsity(self, applied) -> bool:
        return self.preserve_sparsity if self.preserve_sparsity is not None else "prune" in applied

    def apply(self, model, ctx) -> PassResult:
        tfmot = import_tfmot()
        chosen = set(self.selected(model))
        check_selection(self, model, sorted(chosen), "clustered")
        params = self._params(tfmot, ctx.applied)
        base = clone_with_weights(model)
        wrap = lambda layer: tfmot.clustering.keras.cluster_weights(layer, **params) \
            if layer.name in chosen else layer  # noqa: E731
        wrapped = import_keras_clone(base, wrap)
        ctx.compile(wrapped, learning_rate=self.learning_rate or ctx.train.learning_rate / 10)
        ctx.fit(wrapped, self.epochs, "cluster")
        plain = tfmot.clustering.keras.strip_clustering(wrapped)
        return PassResult(plain, {"unique_by_layer": unique_values(plain, chosen),
                                  "preserve_sparsity": self.keeps_sparsity(ctx.applied)})

    def _params(self, tfmot, applied) -> dict:
        init = getattr(tfmot.clustering.keras.CentroidInitialization, INITS[self.init])
        params = {"number_of_clusters": self.clusters, "cluster_centroids_init": init}
        if self.keeps_sparsity(applied):
            params["preserve_sparsity"] = True
        if self.per_channel:
            params["cluster_per_channel"] = True
        return params


def clusterable(layer, clusters: int = 2) -> bool:
    """tfmot clusters this layer's kernel, and the kernel has more weights than clusters."""
    from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import ClusteringRegistry

    if not layer.trainable_weights or not ClusteringRegistry.supports(layer):
        return False
    try:
        names = ClusteringRegistry._weight_names(layer)
    except KeyError:
        return False
    kernel = kernel_of(layer)
    return bool(names) and kernel is not None and int(np.prod(kernel.shape)) > clusters


def import_keras_clone(model, wrap):
    from .._tf import import_keras

    return import_keras().models.clone_model(model, clone_function=wrap)


def unique_values(model, names) -> dict[str, int]:
    """Distinct values in the kernel of each named layer."""
    return {l.name: int(np.unique(kernel_of(l).numpy()).size) for l in model.layers
            if l.name in names and kernel_of(l) is not None}
