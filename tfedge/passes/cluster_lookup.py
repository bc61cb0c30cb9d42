"""Per-channel cluster lookups as one op per kernel, in place of tfmot's loop over channels.

tfmot's ``ClusteringAlgorithmPerChannel`` serves per-channel clustering (``cluster`` with
``per_channel``) and the cluster-preserving QAT (CQAT, PCQAT) of every ``Conv2D`` whose channels
hold the same number of centroids. It finds each weight's nearest centroid and gathers the
clustered kernel in a Python loop over the output channels, so a traced training step holds an
argmin, a gather and a bincount sub-graph per channel of every convolution, rebuilt on each
call. On a nested NASNetMobile, PCQAT's first trace of the training step grew past 14 GB and
20 minutes. The same lookups are one broadcast argmin and one batched gather per kernel, with the
same indices, weights and gradients (``tests/test_cluster_lookup.py`` compares them with the
loop's). ``install()`` puts the class where tfmot's registry looks it up.
"""

from __future__ import annotations

from functools import cache


@cache
def vectorised_per_channel() -> type:
    """tfmot's per-channel clustering algorithm with its channel loops vectorised.

    Only the ``channels_last`` layout (the only one a CPU runs) is vectorised; for
    ``channels_first`` tfmot's own methods run unchanged.
    """
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.clustering.keras.cluster_config import (
        GradientAggregation,
    )
    from tensorflow_model_optimization.python.core.clustering.keras.clustering_algorithm import (
        ClusteringAlgorithmPerChannel,
    )

    def channels_first_of(tensor):
        rank = len(tensor.shape)
        return tf.transpose(tensor, [rank - 1, *range(rank - 1)])

    def channels_last_of(tensor):
        rank = len(tensor.shape)
        return tf.transpose(tensor, [*range(1, rank), 0])

    class VectorisedPerChannel(ClusteringAlgorithmPerChannel):
        def get_pulling_indices(self, weight):
            if self.data_format == "channels_first":
                return super().get_pulling_indices(weight)
            # (..., channels, 1) against (channels, clusters): the nearest centroid of the
            # weight's own channel; argmin keeps the first of equals, as the loop's does.
            distance = tf.abs(tf.expand_dims(weight, axis=-1) - self.cluster_centroids)
            return tf.argmin(distance, axis=-1)

        def get_clustered_weight(self, pulling_indices, original_weight):
            if self.data_format == "channels_first":
                return super().get_clustered_weight(pulling_indices, original_weight)
            by_channel = channels_first_of(pulling_indices)
            centroids = self._centroids_with_gradient(by_channel)
            clustered = channels_last_of(tf.gather(centroids, by_channel, batch_dims=1))
            return self.add_gradient_to_original_weight(clustered, tf.identity(original_weight))

        def _centroids_with_gradient(self, by_channel):
            if self.cluster_gradient_aggregation == GradientAggregation.SUM:
                return self.cluster_centroids
            if self.cluster_gradient_aggregation != GradientAggregation.AVG:
                raise ValueError(
                    f"cluster_gradient_aggregation={self.cluster_gradient_aggregation} "
                    "not implemented"
                )
            clusters = self.cluster_centroids.shape[-1]
            flat = tf.reshape(tf.cast(by_channel, tf.int32), (tf.shape(by_channel)[0], -1))
            sizes = tf.math.bincount(
                flat,
                minlength=clusters,
                maxlength=clusters,
                dtype=self.cluster_centroids.dtype,
                axis=-1,
            )
            return self.average_centroids_gradient_by_cluster_size(
                self.cluster_centroids, tf.stop_gradient(sizes)
            )

    return VectorisedPerChannel


def install() -> None:
    """Make tfmot's clustering registry hand out the vectorised class (idempotent)."""
    from tensorflow_model_optimization.python.core.clustering.keras import clustering_registry

    clustering_registry.ClusteringAlgorithmPerChannel = vectorised_per_channel()
