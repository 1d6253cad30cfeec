"""Mixed precision by sensitivity: which layers cost accuracy when quantized, and keeping the
fewest of them in float to meet an accuracy budget.

``sensitivity`` quantizes one layer at a time (its weights, its input and output
activations; everything else float), calibrates, and reports how much the metric drops.
``quantize{auto_skip=B}`` uses that ranking greedily: it leaves the most sensitive layer in
float, then the two most sensitive, … until the fully calibrated graph's metric is within
``B`` of the float model's. Layer drops are not additive, so each candidate set is measured,
not predicted.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Callable

import torch
from tqdm import tqdm

from mcc.errors import QuantizationError, ReportError
from mcc.graph import Graph
from mcc.quant import structure as st


def sensitivity(graph: Graph, evaluate: Callable[[torch.nn.Module], float], data,
                num_batches: int | None = None, **options) -> list[tuple[str, float]]:
    """``[(layer node name, metric drop)]``, most sensitive first.

    ``graph`` is a float graph (a quantized one is stripped back to float and its quantize
    options are the defaults); ``options`` are quantize pass options (``weights="int4"``…);
    ``data`` calibrates each single-layer quantization; ``evaluate(module) -> float`` is higher
    for better models (accuracy in points, say).
    """
    from mcc.quant.calibrate import read_batches

    float_graph, config = _float_and_config(graph, options)
    batches = read_batches(float_graph, data, num_batches)
    base = _metric(evaluate, float_graph.module)
    return _ranking(float_graph, config, batches, evaluate, base)


def _float_and_config(graph: Graph, options: dict):
    from mcc.pass_manager import make_pass

    if not isinstance(graph, Graph):
        raise QuantizationError(f"sensitivity expects an mcc.Graph, got {type(graph).__name__}")
    previous = graph.module.meta.get(st.CONFIG_KEY)
    base = {} if previous is None else previous.non_default_options()
    base.update(options)
    base.pop("auto_skip", None)
    config = make_pass("quantize", **base)
    return (st.strip(graph) if st.is_quantized(graph) else graph), config


def _ranking(float_graph: Graph, config, batches, evaluate, base: float) -> list[tuple[str, float]]:
    names = _layer_names(float_graph, config)
    drops = []
    for name in tqdm(names, desc="sensitivity", disable=not sys.stderr.isatty(), leave=False):
        others = [n for n in names if n != name]
        graph = _quantized(float_graph, config, list(config.skip) + others, batches)
        drops.append((name, base - _metric(evaluate, graph.module)))
    return sorted(drops, key=lambda item: -item[1])


def _layer_names(float_graph: Graph, config) -> list[str]:
    """The layers ``config`` would quantize, in execution order."""
    from mcc.pass_manager import AnalysisManager

    probe = float_graph.copy()
    result = config.run(probe, AnalysisManager(probe))
    return [n.name for n, _ in st.quantized_layers(result.graph)]


def _quantized(float_graph: Graph, config, skip: list[str], batches) -> Graph:
    """A calibrated copy of ``float_graph`` quantized by ``config`` with ``skip`` left float."""
    from mcc.pass_manager import AnalysisManager
    from mcc.quant.calibrate import calibrate_batches

    graph = float_graph.copy()
    variant = dataclasses.replace(config, skip=tuple(dict.fromkeys(skip)), auto_skip=None)
    variant.run(graph, AnalysisManager(graph))
    if st.is_quantized(graph):
        calibrate_batches(graph, batches)
    return graph


def auto_skip_layers(graph: Graph, float_graph: Graph, batches, evaluate, config) -> dict:
    """Keep in float the fewest layers (greedy by sensitivity) that bring the calibrated graph's
    metric within ``config.auto_skip`` of the float one; rewrites ``graph`` in place."""
    budget = config.auto_skip
    base = _metric(evaluate, float_graph.module)
    score = _metric(evaluate, graph.module)
    result = {"float_metric": base, "all_quantized_metric": score, "budget": budget, "kept_float": []}
    if base - score <= budget:
        result["metric"] = score
        return result
    plain = dataclasses.replace(config, auto_skip=None)
    ranking = _ranking(float_graph, plain, batches, evaluate, base)
    result["sensitivity"] = ranking
    best = None
    for k in range(1, len(ranking) + 1):
        kept = [name for name, _ in ranking[:k]]
        candidate = _quantized(float_graph, plain, list(config.skip) + kept, batches)
        score = _metric(evaluate, candidate.module)
        best = (candidate, kept, score)
        if base - score <= budget:
            break
    candidate, kept, score = best
    candidate.module.meta[st.CONFIG_KEY] = config
    graph.module = candidate.module
    result.update(kept_float=kept, metric=score)
    return result


def _metric(evaluate, module) -> float:
    name = getattr(evaluate, "__qualname__", repr(evaluate))
    try:
        value = evaluate(module)
    except Exception as exc:
        raise ReportError(f"the evaluation function {name} failed: {type(exc).__name__}: {exc}") from exc
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ReportError(f"the evaluation function {name} returned {value!r}, not a number") from None
    if not math.isfinite(value):
        raise ReportError(f"the evaluation function {name} returned {value}, not a finite number")
    return value
