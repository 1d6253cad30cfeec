"""Helpers for the channel-analysis and pruning tests: dead units and exact comparisons."""

import numpy as np
import torch
from torch import nn

import mcc
from mcc.analysis import channel_groups
from mcc.passes.prune import apply_pruning


def positions(cg, group, node, role):
    """The positions of ``node``'s ``role`` channels that belong to ``group``."""
    return group.members.get((node, role), [])


def kill_units(graph, cg, units: np.ndarray) -> None:
    """Zero every parameter entry that holds one of ``units`` (union-find roots), so that those
    channels contribute nothing: their removal must then leave the outputs unchanged."""
    gm = graph.module
    with torch.no_grad():
        for slot in cg.slots:
            owner = gm.get_submodule(slot.module) if slot.module else gm
            tensor = getattr(owner, slot.attr)
            if not isinstance(tensor, nn.Parameter):
                continue
            dead = np.flatnonzero(np.isin(cg.roots(slot.ids), units))
            if len(dead):
                tensor.index_fill_(slot.axis, torch.from_numpy(dead), 0.0)


def prune_dead(model, x, pick, *, atol=1e-5):
    """Trace ``model``, kill the units ``pick(cg)`` returns, prune them, and check the pruned
    graph computes what the graph with dead units computed. Returns (graph, pruned, cg)."""
    graph = mcc.trace(model, x)
    cg = channel_groups(graph)
    units = pick(cg)
    kill_units(graph, cg, units)
    with torch.no_grad():
        expected = graph(x)
    pruned = graph.copy()
    apply_pruning(pruned, channel_groups(pruned), units)
    with torch.no_grad():
        got = pruned(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=atol)
    return graph, pruned, cg


def weight_count(graph) -> int:
    return sum(p.numel() for p in graph.parameters())
