"""Analyses of a graph that passes and users share.

:func:`channel_groups` finds which channels of which layers must be pruned together (see
:mod:`mcc.analysis.dependency`); :func:`prune_sensitivity` measures how much the metric drops
when each of those groups alone is pruned (see :mod:`mcc.analysis.sensitivity`).
"""

from mcc.analysis.dependency import ChannelGroup, ChannelGroups, channel_groups
from mcc.analysis.sensitivity import prune_sensitivity

__all__ = ["channel_groups", "ChannelGroup", "ChannelGroups", "prune_sensitivity"]
