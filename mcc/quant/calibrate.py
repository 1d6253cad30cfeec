"""Calibration: run real inputs through a quantized graph and fix every quantizer's parameters.

``calibrate(graph, data)`` does, in place and in this order:

1. reads up to ``num_batches`` batches from ``data`` (kept in memory, so that every step sees
   the same batches even from a shuffling DataLoader) and checks them against the model's
   example inputs;
2. performs the data-driven weight steps the quantize pass asked for — AdaRound, then bias
   correction — layer by layer in execution order (see :mod:`mcc.quant.adaround`);
3. runs the batches through the graph with every activation quantizer observing, checking each
   node's output for NaN/Inf, then freezes scales and zero points;
4. with ``quantize{auto_skip=…}``, puts back in float the fewest layers needed to keep the
   metric within the budget (see :mod:`mcc.quant.sensitivity`).

Without data the graph cannot be calibrated: quantizing activations on random noise gives
scales that have nothing to do with the real activations.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import fx
from tqdm import tqdm

from mcc.errors import QuantizationError
from mcc.graph import Graph
from mcc.quant import structure as st


def calibrate(graph: Graph, data: Iterable, num_batches: int | None = None, *,
              evaluate: Callable[[torch.nn.Module], float] | None = None) -> dict[str, Any]:
    """Calibrate the quantized ``graph`` in place on ``data``; returns statistics.

    ``data`` is any iterable of input batches: tensors (or numpy arrays), tuples of tensors for
    multi-input models, or ``(input, label)`` pairs as a DataLoader yields them (the label is
    ignored). A single tensor is taken as one batch. Batches must match the model's example
    inputs in every dimension but the first. ``evaluate(module) -> float`` is needed only when
    the graph was quantized with ``auto_skip``.
    """
    if not isinstance(graph, Graph):
        raise QuantizationError(f"calibrate expects an mcc.Graph, got {type(graph).__name__}")
    if not st.is_quantized(graph):
        raise QuantizationError("the graph has no quantizers: run the quantize pass first, e.g. "
                                "mcc.compress(model, x, pipeline='fold-bn,quantize')")
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                    or num_batches < 1):
        raise QuantizationError(f"num_batches must be a positive integer or None, got {num_batches!r}")
    batches = read_batches(graph, data, num_batches)
    config = graph.module.meta.get(st.CONFIG_KEY)
    auto_skip = getattr(config, "auto_skip", None)
    float_graph = None
    if auto_skip is not None:
        if evaluate is None:
            raise QuantizationError(
                f"quantize{{auto_skip={auto_skip}}} compares accuracy before and after: pass "
                "mcc.calibrate(graph, data, evaluate=fn) with fn(module) -> metric")
        float_graph = st.strip(graph)
    stats = calibrate_batches(graph, batches)
    if auto_skip is not None:
        from mcc.quant.sensitivity import auto_skip_layers

        stats["auto_skip"] = auto_skip_layers(graph, float_graph, batches, evaluate, config)
    return stats


def calibrate_batches(graph: Graph, batches: list[tuple[torch.Tensor, ...]]) -> dict[str, Any]:
    """Steps 2 and 3 of :func:`calibrate` on batches already read and checked."""
    from mcc.quant.adaround import reconstruct

    gm = graph.module
    quantizers = st.activation_quantizers(graph)
    pending = [(n, m) for n, m in st.quantized_layers(graph) if m.pending]
    stats: dict[str, Any] = {"batches": len(batches), "activation_quantizers": len(quantizers)}
    was_training = gm.training
    gm.eval()
    try:
        if pending:
            reference = st.float_reference(gm)
            _check_finite(reference, batches, "checking calibration data")
            stats.update(reconstruct(graph, batches, reference))
        for _, m in quantizers:
            m.start_observing()
        try:
            _check_finite(gm, batches, "calibrating")
            for _, m in quantizers:
                m.freeze()
        finally:
            for _, m in quantizers:
                m.observing = False
        fitted = fit_biases(graph)
        if fitted:
            stats["bias_fitted_channels"] = fitted
        st.record_input_scales(graph)
    finally:
        gm.train(was_training)
    return stats


#: An integer engine adds the bias to the int32 accumulator as round(b / (S_in·S_w)); half of
#: int32's range is left for the products and the input zero point's share.
BIAS_LIMIT = 2 ** 30


def fit_biases(graph: Graph) -> int:
    """Widen the weight scale of output channels whose bias would overflow int32 once the
    input scale is known; returns how many channels changed.

    BN folding leaves channels with near-zero weights and a large bias (a dead filter whose
    BatchNorm keeps a constant output). Their tiny weight scale makes b / (S_in·S_w) exceed
    int32, which no int8 engine can represent. Raising S_w to |b| / (S_in·2^30) costs such a
    channel nothing (its weights are ~0 either way) and keeps the fake-quant graph equal to what
    the engine computes.
    """
    changed = 0
    for layer, quantizer in st.biased_layers(graph):
        weight_quant = layer.weight_quant
        if weight_quant.scheme != "linear":
            continue
        s_in = quantizer.scale.detach().reshape(-1)
        if s_in.numel() != 1:
            continue
        bias = layer.bias.detach().abs().float()
        needed = bias / (s_in * BIAS_LIMIT)
        scale = weight_quant.scale.detach()
        if scale.numel() == 1:
            needed = needed.max()
        needed = needed.reshape(scale.shape)
        grow = needed > scale
        if bool(grow.any()):
            with torch.no_grad():
                weight_quant.scale.copy_(torch.where(grow, needed, scale))
            changed += int(grow.sum())
    return changed


def read_batches(graph: Graph, data, num_batches: int | None) -> list[tuple[torch.Tensor, ...]]:
    """The first ``num_batches`` batches of ``data`` as tuples of tensors, checked against the
    graph's example inputs."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        data = [data]
    try:
        iterator = iter(data)
    except TypeError:
        raise QuantizationError(f"calibration data must be an iterable of input batches (a list of "
                                f"tensors, a DataLoader…), got {type(data).__name__}") from None
    examples = graph.example_inputs
    out = []
    for index, batch in enumerate(iterator):
        if num_batches is not None and index >= num_batches:
            break
        out.append(_check_batch(index, _inputs_of(index, batch, len(examples)), examples))
    if not out:
        raise QuantizationError("the calibration data yielded no batches; give a few batches of "
                                "real inputs (32 batches is typical)")
    return out


def _inputs_of(index: int, batch, n_inputs: int) -> tuple:
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch:
        # (input, label) from a DataLoader: the model takes the first n_inputs entries
        return tuple(batch[:n_inputs])
    raise QuantizationError(f"calibration batch {index} is a {type(batch).__name__}; expected a "
                            "tensor, a tuple of tensors, or an (input, label) pair")


def _check_batch(index: int, inputs: tuple, examples: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    if len(inputs) != len(examples):
        raise QuantizationError(f"calibration batch {index} has {len(inputs)} inputs but the model "
                                f"takes {len(examples)}")
    out = []
    for k, (x, ex) in enumerate(zip(inputs, examples)):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise QuantizationError(f"calibration batch {index}, input {k}: expected a tensor, got "
                                    f"{type(x).__name__}")
        if x.dim() != ex.dim() or tuple(x.shape[1:]) != tuple(ex.shape[1:]):
            raise QuantizationError(
                f"calibration batch {index}, input {k} has shape {list(x.shape)} but the model's "
                f"input is {list(ex.shape)}; only the batch (first) dimension may differ")
        if ex.is_floating_point() and not x.is_floating_point():
            raise QuantizationError(
                f"calibration batch {index}, input {k} has dtype {str(x.dtype).removeprefix('torch.')}"
                f" but the model takes {str(ex.dtype).removeprefix('torch.')}: preprocess the "
                "calibration data exactly as for inference")
        x = x.to(ex.dtype)
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise QuantizationError(f"calibration batch {index}, input {k} contains NaN or Inf")
        out.append(x)
    return tuple(out)


class _FiniteChecker(fx.Interpreter):
    """Runs the graph node by node and names the first node whose output is NaN/Inf."""

    batch = 0

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        for t in _tensors(out):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise QuantizationError(
                    f"calibration batch {self.batch}: the output of node {n.name!r} contains NaN "
                    "or Inf; the model overflows on this data (check the input preprocessing), "
                    "so no finite quantization range exists")
        return out


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _check_finite(gm: fx.GraphModule, batches, desc: str) -> None:
    """Run every batch through ``gm`` and fail on the first non-finite activation."""
    checker = _FiniteChecker(gm)
    with torch.no_grad():
        for i, inputs in enumerate(tqdm(batches, desc=desc, disable=not sys.stderr.isatty(),
                                        leave=False)):
            checker.batch = i
            checker.run(*inputs)
