"""BatchNormalization statistics re-estimated after a pass changed the weights under them.

A BatchNormalization layer normalises with the *moving* mean and variance at inference, and
those move slowly (``momentum`` 0.99 in every ``keras.applications`` model: about 100 steps
to forget). A pass that prunes half of the kernels, snaps them to clusters or replaces a layer
changes what each BatchNormalization sees within a few steps, but its moving statistics still
describe the weights before the pass. Measured on a nested MobileNetV3Small (32 px, 4
classes, 10 steps per epoch): one epoch of `prune` to 50% left 47.7% accuracy, the same model
with its statistics re-estimated 89.1% (`docs/zoo.md`). Re-estimating is the usual cure
(PyTorch's ``torch.optim.swa_utils.update_bn``, EagleEye's adaptive BatchNorm for pruning):
run the training samples through the model in training mode, no gradient, and set each
moving statistic to the average of the batch statistics.
"""

from __future__ import annotations

from tfedge.io.data import num_samples, take

MAX_SAMPLES = 2048  # enough for stable statistics; bounds the time on a large training set


def batchnorm_layers(model) -> list:
    """The BatchNormalization layers of ``model`` (anything with moving statistics)."""
    return [
        layer
        for layer in model.submodules
        if hasattr(layer, "moving_mean") and hasattr(layer, "momentum")
    ]


def reestimate_batchnorm(model, ctx) -> int:
    """Set the moving statistics of every BatchNormalization in ``model`` to the mean of its
    batch statistics over (up to ``MAX_SAMPLES``) training samples; return how many layers.

    Only the moving statistics change: weights, masks and clusters are untouched, so the
    sparsity and cluster counts a pass reached stay as they are.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    total = min(num_samples(ctx.x), MAX_SAMPLES)
    size = ctx.train.batch_size
    try:
        for start in range(0, total, size):
            batch = min(size, total - start)
            for layer in layers:
                layer.momentum = start / (start + batch)  # the mean over the samples seen
            model(ctx.inputs_for(model, take(ctx.x, slice(start, start + batch))), training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)
