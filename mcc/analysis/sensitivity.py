"""Pruning sensitivity: how much the metric drops when one channel group alone is pruned.

Layers differ a lot in how much pruning they tolerate: the first convolution or a narrow
bottleneck can cost points at 10 %, a wide late layer nothing at 50 %. :func:`prune_sensitivity`
measures it instead of guessing. It prunes one group at a time (every other group untouched),
at each ratio, evaluates, and reports the metric drop next to the share of the model's MACs that
pruning saved. Groups that lose much for little gain belong in ``prune-channels{ignore=[...]}``;
groups that lose nothing can take a higher ratio.

``mcc analyze sensitivity MODEL --pass prune-channels --ratios 0.1,0.3,0.5`` prints these rows.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from mcc.errors import MccError, ModelError
from mcc.graph import Graph

_CRITERIA = ("l1", "l2", "bn-gamma", "random")


def prune_sensitivity(graph: Graph, evaluate: Callable[[torch.nn.Module], float],
                      ratios: Sequence[float] = (0.1, 0.3, 0.5), *, criterion: str = "l1",
                      round_to: int = 8) -> list[dict]:
    """One row per prunable channel group, most sensitive first.

    ``evaluate(module) -> float`` is higher for better models (accuracy in points, say); it is
    called once on ``graph`` and once per group and ratio on a pruned copy (``graph`` itself is
    not changed). Each group is pruned as ``prune-channels{ratio=r, criterion, round_to}``
    would prune it. A row holds ``group`` (the layer that creates the channels), ``channels``
    (its width) and, for each ratio ``r``: ``kept@r`` (channels left), ``macs@r`` (fraction of
    the model's MACs removed) and ``drop@r`` (metric before minus metric after). Rows are
    ordered by the drop at the largest ratio, largest first.
    """
    from mcc.analysis.dependency import channel_groups
    from mcc.report import count_flops, run_evaluation

    if not isinstance(graph, Graph):
        raise ModelError(f"prune_sensitivity expects an mcc.Graph (mcc.trace(model, inputs)), "
                         f"got {type(graph).__name__}")
    ratios = _check_ratios(ratios)
    if criterion not in _CRITERIA:
        raise MccError(f"prune_sensitivity ranks channels by {', '.join(_CRITERIA)}; got "
                       f"criterion={criterion!r} (taylor needs training data, so it is not offered "
                       "here)")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise MccError(f"round_to must be a positive integer, got {round_to!r}")
    graph.propagate_shapes()
    base = run_evaluation(evaluate, graph.module)
    base_flops = count_flops(graph.module, graph.example_inputs)
    groups = channel_groups(graph).prunable
    rows = []
    todo = [(g, r) for g in groups for r in ratios]
    bar = tqdm(total=len(todo), desc="sensitivity", unit="run", leave=False,
               disable=not sys.stderr.isatty())
    try:
        for g in groups:
            row = {"group": g.root, "channels": g.width}
            for r in ratios:
                pruned, kept = _prune_one(graph, g, r, criterion, round_to)
                flops = count_flops(pruned.module, pruned.example_inputs)
                row[f"kept@{r:g}"] = kept
                row[f"macs@{r:g}"] = 1.0 - flops / base_flops if base_flops else 0.0
                row[f"drop@{r:g}"] = base - run_evaluation(evaluate, pruned.module)
                bar.update(1)
            rows.append(row)
    finally:
        bar.close()
    last = f"drop@{ratios[-1]:g}"
    rows.sort(key=lambda row: -row[last])
    return rows


def _prune_one(graph: Graph, group, ratio: float, criterion: str, round_to: int):
    """A copy of ``graph`` with only ``group`` pruned at ``ratio``; and the channels it keeps."""
    from mcc.analysis.dependency import channel_groups
    from mcc.passes.prune import apply_pruning, importance, select

    work = graph.copy()
    work_groups = channel_groups(work)
    match = [g for g in work_groups.prunable if g.root == group.root and g.width == group.width
             and g.units == group.units]
    if len(match) != 1:  # the analysis is deterministic: a copy has the same groups
        raise RuntimeError(f"group {group.root!r} not found again in a copy of the graph")
    g = match[0]
    scores = importance(work, work_groups, [g], criterion)
    removal = select([g], scores, ratio, "layer", round_to)[g.index]
    if len(removal):
        apply_pruning(work, work_groups, g.unit_ids[removal])
    return work, int(g.width - g.unit_sizes[removal].sum())


def _check_ratios(ratios) -> tuple[float, ...]:
    try:
        values = tuple(ratios)
    except TypeError:
        raise MccError(f"ratios must be a sequence of numbers in [0, 1), got {ratios!r}") from None
    if not values:
        raise MccError("ratios is empty; give at least one pruning ratio, e.g. (0.1, 0.3, 0.5)")
    for r in values:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise MccError(f"every pruning ratio must be a number in [0, 1), got {r!r}")
    return tuple(float(r) for r in values)


__all__ = ["prune_sensitivity"]
