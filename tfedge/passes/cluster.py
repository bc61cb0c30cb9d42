"""``cluster``: tfmot weight clustering, fine-tuned, wrappers stripped.

After ``prune`` the clustering keeps the zeros (``preserve_sparsity`` is automatic), so the
kernel of each clustered layer holds at most ``clusters`` distinct values plus zero.

Example (recipe):
    passes:
      - cluster: {clusters: 16, epochs: 1, init: kmeans++}
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from tfedge.config import Names
from tfedge.passes.base import (
    OptionalRate,
    PassConfig,
    PassResult,
    check_selection,
    clone_with_weights,
    import_tfmot,
    kernel_of,
    select_layers,
)

INITS = {
    "kmeans++": "KMEANS_PLUS_PLUS",
    "linear": "LINEAR",
    "density": "DENSITY_BASED",
    "random": "RANDOM",
}


class Cluster(PassConfig):
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

    pass_name: ClassVar[str] = "cluster"
    guard_hint: ClassVar[str] = "use more clusters, add epochs, or cluster fewer layers (layers:)"

    clusters: int = Field(default=16, ge=2, le=256)
    init: Literal["kmeans++", "linear", "density", "random"] = "kmeans++"
    preserve_sparsity: bool | None = None
    per_channel: bool = False
    epochs: int = Field(default=1, ge=1, le=1000)
    learning_rate: OptionalRate = None
    layers: Names = ()
    layer_types: Names = ()

    def selected(self, model) -> list[str]:
        return select_layers(
            model, self.layers, self.layer_types, lambda l: clusterable(l, self.clusters)
        )

    def check(self, model, ctx) -> None:
        check_selection(self, model, self.selected(model), "clustered")

    def layer_counts(self, model, names, applied) -> tuple[dict[str, int], dict[str, str]]:
        """``({layer: clusters}, {layer: why skipped})`` for the layers ``names`` of ``model``,
        on the weights it has now (``cluster_count``)."""
        keep_zeros = self.keeps_sparsity(applied)
        counts, skipped = {}, {}
        for name in names:
            layer = model.get_layer(name)
            per_channel = self.per_channel and type(layer).__name__ == "Conv2D"
            k, why = cluster_count(kernel_of(layer).numpy(), self.clusters, keep_zeros, per_channel)
            if k:
                counts[name] = k
            else:
                skipped[name] = why
        return counts, skipped

    def keeps_sparsity(self, applied) -> bool:
        return self.preserve_sparsity if self.preserve_sparsity is not None else "prune" in applied

    def apply(self, model, ctx) -> PassResult:
        tfmot = import_tfmot()
        selected = self.selected(model)
        check_selection(self, model, sorted(selected), "clustered")
        params = self._params(tfmot, ctx.applied)
        counts, skipped = self.layer_counts(model, selected, ctx.applied)
        base = clone_with_weights(model)

        def wrap(layer):
            if layer.name not in counts:
                return layer
            options = {**params, "number_of_clusters": counts[layer.name]}
            return tfmot.clustering.keras.cluster_weights(layer, **options)

        wrapped = import_keras_clone(base, wrap)
        ctx.compile(wrapped, learning_rate=self.learning_rate or ctx.train.learning_rate / 10)
        ctx.fit(wrapped, self.epochs, "cluster")
        plain = tfmot.clustering.keras.strip_clustering(wrapped)
        return PassResult(
            plain,
            {
                "unique_by_layer": unique_values(plain, selected),
                "clusters_by_layer": counts,
                "skipped_layers": skipped,
                "preserve_sparsity": self.keeps_sparsity(ctx.applied),
            },
        )

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
    from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import (
        ClusteringRegistry,
    )

    if not layer.trainable_weights or not ClusteringRegistry.supports(layer):
        return False
    try:
        names = ClusteringRegistry._weight_names(layer)
    except KeyError:
        return False
    kernel = kernel_of(layer)
    return bool(names) and kernel is not None and int(np.prod(kernel.shape)) > clusters


def cluster_count(
    kernel: np.ndarray, clusters: int, keep_zeros: bool, per_channel: bool = False
) -> tuple[int, str]:
    """Centroids tfmot can initialise for ``kernel``: ``(k, "")``, or ``(0, why)`` to skip it.

    tfmot's k-means++ needs at least as many points as centroids. Keeping zeros, it fixes one
    centroid at zero and splits the other ``k - 1`` between the negative and the positive weights
    in proportion to their counts, so a pruned kernel with few non-zeros of one sign can ask for
    more centroids than it has points (``num_to_sample 5 vs 3``). ``k`` is the largest count
    ``<= clusters`` that every slice (every output channel with ``per_channel``) can feed; a kernel
    that cannot feed even the minimum (2, or 3 keeping zeros) is left as it is.
    """
    slices = [kernel[..., c] for c in range(kernel.shape[-1])] if per_channel else [kernel]
    minimum = 3 if keep_zeros else 2
    k = clusters
    while k >= minimum and not all(_feasible(s, k, keep_zeros) for s in slices):
        k -= 1
    if k >= minimum:
        return k, ""
    if keep_zeros:
        fewest = min(int(np.count_nonzero(s)) for s in slices)
        return 0, f"{fewest} non-zero weight(s): too few to cluster (kept as is)"
    return 0, f"{min(s.size for s in slices)} weight(s): too few to cluster (kept as is)"


def _feasible(weights: np.ndarray, k: int, keep_zeros: bool) -> bool:
    if not keep_zeros:
        return weights.size >= k
    negative, positive = int(np.sum(weights < 0)), int(np.sum(weights > 0))
    if negative + positive == 0:  # tfmot returns the zero centroid alone: not k centroids
        return False
    # tfmot's split of the k - 1 non-zero centroids (tf.math.round: half to even, like np.round)
    n_negative = int(np.round((k - 1) * negative / (negative + positive)))
    return n_negative <= negative and k - 1 - n_negative <= positive


def import_keras_clone(model, wrap):
    from tfedge._tf import import_keras

    return import_keras().models.clone_model(model, clone_function=wrap)


def unique_values(model, names) -> dict[str, int]:
    """Distinct values in the kernel of each named layer."""
    return {
        l.name: int(np.unique(kernel_of(l).numpy()).size)
        for l in model.layers
        if l.name in names and kernel_of(l) is not None
    }
