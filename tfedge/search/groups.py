"""The channel groups a search's ``channels: {groups: N}`` gives their own keep ratio.

The N prunable groups of the model (``tfedge.passes.channel_graph``) with the largest share
of its MACs, found once per study and kept in it; each is named by its first layer, the name
the channels pass's ``ratios`` takes. A trial's ``channels.group.K`` is the keep ratio of the
K-th of them; the other groups keep the trial's global ``channels.keep``.
"""

from __future__ import annotations

from tfedge.search.space import Space


def largest_groups(space: Space, study, inputs) -> list[str]:
    """One layer per group, the groups with the most MACs first (stored in ``study``); []
    when the space gives no group its own ratio."""
    if space.channels is None or not space.channels.groups:
        return []
    stored = study.user_attrs.get("channel_groups")
    if stored is not None:
        return list(stored)
    names = _largest(inputs.model, space.channels.groups, inputs.trust_model)
    study.set_user_attr("channel_groups", names)
    return names


def _largest(model_path: str, count: int, trust_model: bool) -> list[str]:
    from tfedge.io.models import load_tf_keras_model, trusting
    from tfedge.passes.channel_graph import ChannelGraph
    from tfedge.passes.channel_sensitivity import _macs_share
    from tfedge.passes.channels import keras_macs

    with trusting(trust_model):
        model = load_tf_keras_model(model_path)
    graph = ChannelGraph(model)
    base = max(keras_macs(model), 1)
    prunable = [g for g in graph.groups if g.prunable]
    ranked = sorted(prunable, key=lambda g: -_macs_share(model, graph, g, base))
    return [next(iter(g.members)) for g in ranked[:count]]
