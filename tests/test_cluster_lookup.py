"""The vectorised per-channel cluster lookup gives tfmot's loop's indices, weights and gradients,
with a graph whose size does not grow with the channel count."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tf


def _algorithms():
    from tensorflow_model_optimization.python.core.clustering.keras.clustering_algorithm import (
        ClusteringAlgorithmPerChannel,
    )

    from tfedge.passes.cluster_lookup import vectorised_per_channel

    return ClusteringAlgorithmPerChannel, vectorised_per_channel()


def _kernel_and_centroids(rng, channels: int, clusters: int = 6):
    kernel = rng.normal(size=(3, 3, 5, channels)).astype(np.float32)
    centroids = np.sort(rng.normal(size=(channels, clusters)), axis=1).astype(np.float32)
    # A weight exactly on a centroid and one halfway between two: ties pick the same index.
    kernel[0, 0, 0, 0] = centroids[0, 2]
    kernel[0, 0, 1, 0] = (centroids[0, 3] + centroids[0, 4]) / 2
    return kernel, centroids


def _lookup(cls, kernel, centroids, aggregation):
    import tensorflow as tf

    centroid_var = tf.Variable(centroids)
    weight_var = tf.Variable(kernel)
    algorithm = cls(centroid_var, aggregation, "channels_last")
    upstream = tf.constant(np.linspace(-1, 1, kernel.size, dtype=np.float32).reshape(kernel.shape))
    with tf.GradientTape() as tape:
        indices = algorithm.get_pulling_indices(weight_var)
        clustered = algorithm.get_clustered_weight(tf.cast(indices, tf.int32), weight_var)
        loss = tf.reduce_sum(clustered * upstream)
    d_centroids, d_weight = tape.gradient(loss, [centroid_var, weight_var])
    return [t.numpy() for t in (indices, clustered, d_centroids, d_weight)]


@pytest.mark.parametrize("aggregation", ["SUM", "AVG"])
def test_the_vectorised_lookup_matches_tfmots_loop(seed, aggregation):
    from tensorflow_model_optimization.python.core.clustering.keras.cluster_config import (
        GradientAggregation,
    )

    loop, vectorised = _algorithms()
    kernel, centroids = _kernel_and_centroids(np.random.default_rng(seed), channels=7)
    mode = GradientAggregation[aggregation]
    expected = _lookup(loop, kernel, centroids, mode)
    got = _lookup(vectorised, kernel, centroids, mode)
    names = ("indices", "clustered weights", "centroid gradient", "weight gradient")
    for name, want, have in zip(names, expected, got, strict=True):
        assert have.shape == want.shape, name
        np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-6, err_msg=name)
    assert set(np.unique(got[1][..., 3])) <= set(centroids[3]), "a channel takes its own centroids"


def _traced_ops(cls, channels: int) -> int:
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.clustering.keras.cluster_config import (
        GradientAggregation,
    )

    kernel, centroids = _kernel_and_centroids(np.random.default_rng(0), channels)
    algorithm = cls(tf.Variable(centroids), GradientAggregation.AVG, "channels_last")
    weight = tf.Variable(kernel)

    @tf.function
    def step():
        indices = tf.cast(algorithm.get_pulling_indices(weight), tf.int32)
        return algorithm.get_clustered_weight(indices, weight)

    return len(step.get_concrete_function().graph.get_operations())


def test_the_traced_lookup_does_not_grow_with_the_channels():
    loop, vectorised = _algorithms()
    assert _traced_ops(vectorised, 8) == _traced_ops(vectorised, 64)
    assert _traced_ops(loop, 64) > 4 * _traced_ops(loop, 8), "tfmot's loop grows (the cause)"


def test_tfedge_installs_the_vectorised_lookup_for_conv2d():
    from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import (
        ClusteringLookupRegistry,
    )

    from tfedge.passes.base import import_tfmot

    import_tfmot()
    import tf_keras

    layer = tf_keras.layers.Conv2D(4, 3)
    impl = ClusteringLookupRegistry().get_clustering_impl(layer, "kernel", cluster_per_channel=True)
    assert impl is _algorithms()[1]
