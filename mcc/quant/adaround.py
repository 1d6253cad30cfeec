"""Data-driven weight steps: AdaRound (learned rounding) and empirical bias correction.

Both walk the quantized layers in execution order. For each layer they capture, on the
calibration batches, its input ``x̃`` in the graph as quantized so far (earlier layers already
final, activation quantizers off) and its float output ``y`` in the float model. Using ``x̃``
rather than the float input lets each layer absorb the error its predecessors introduced.

**AdaRound** (Nagel et al., 2020). Rounding to nearest is not the best choice once the error
is measured on the layer's output rather than per weight. Each weight is rounded down or up,
``ŵ = S·(clamp(⌊w/S⌋ + h(V) + Z, qmin, qmax) − Z)``, with ``h(V) = clamp(σ(V)(ζ−γ)+γ, 0, 1)``
(ζ = 1.1, γ = −0.1) relaxed during optimisation; Adam minimises

    ‖f(x̃, ŵ) − y‖² + λ · Σ (1 − |2h(V) − 1|^β)

where the regulariser (λ = 0.01, β annealed 20 → 2 after a 20% warm-up) drives every h to 0
or 1. The result is written back into the layer's weight, which then lies exactly on the grid,
so quantize→dequantize reproduces it and the ONNX export stores those codes.

**Bias correction** (Nagel et al., 2019, empirical form). Quantized weights shift each output
channel's mean; adding ``E[y] − E[f(x̃, ŵ)]`` (averaged over the batch and spatial positions)
to the bias removes the shift.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import fx
from tqdm import tqdm

from mcc.graph import Graph
from mcc.quant import structure as st
from mcc.quant.fake_quant import FakeQuantize
from mcc.quant.layers import QuantizedLayer, layer_function

ZETA, GAMMA = 1.1, -0.1
LAMBDA = 0.01
WARMUP = 0.2
BETA = (20.0, 2.0)
MAX_SAMPLES = 1024     # calibration samples kept per layer
MINIBATCH = 32


class _Captured(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


def reconstruct(graph: Graph, batches: list[tuple[torch.Tensor, ...]],
                reference: fx.GraphModule) -> dict:
    """Run the pending AdaRound / bias-correction steps of every layer; returns statistics.
    ``reference`` is the float model (:func:`mcc.quant.structure.float_reference`)."""
    gm = graph.module
    quantizers = [m for m in gm.modules() if isinstance(m, FakeQuantize) and m.role != "weight"]
    saved = [m.enabled for m in quantizers]
    for m in quantizers:
        m.enabled = False  # activations are calibrated after the weights are final
    stats = {"adaround": [], "bias_corrected": []}
    layers = [(n, m) for n, m in st.quantized_layers(graph) if m.pending]
    seen = set()
    try:
        for node, layer in tqdm(layers, desc="adjusting weights", disable=not sys.stderr.isatty(),
                                leave=False):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            steps, layer.pending = layer.pending, ()
            x = _capture(gm, node.target, batches, "input")
            y = _capture(reference, node.target, batches, "output")
            if "adaround" in steps:
                adaround(layer, x, y, layer.adaround_steps)
                stats["adaround"].append(node.name)
            if "bias-correction" in steps:
                correct_bias(layer, x, y)
                stats["bias_corrected"].append(node.name)
    finally:
        for m, enabled in zip(quantizers, saved):
            m.enabled = enabled
    return stats


def _capture(gm: fx.GraphModule, target: str, batches, what: str) -> torch.Tensor:
    """The input or output of module ``target`` over the batches (at most MAX_SAMPLES rows)."""
    module = gm.get_submodule(target)
    chunks, kept = [], 0

    def hook(mod, args, output):
        chunks.append((args[0] if what == "input" else output).detach())
        raise _Captured

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for inputs in batches:
                if kept >= MAX_SAMPLES:
                    break
                try:
                    gm(*inputs)
                except _Captured:
                    pass
                kept += chunks[-1].shape[0] if chunks else 0
    finally:
        handle.remove()
    return torch.cat(chunks)[:MAX_SAMPLES]


def _soft(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def adaround(layer: QuantizedLayer, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """Learn the rounding of ``layer``'s weight from inputs ``x`` and float outputs ``y``."""
    fq = layer.weight_quant
    w = layer.weight.detach()
    scale = fq.scale_view(w).detach()
    zero_point = (fq.zero_point if fq.axis is None else fq.zero_point.reshape(scale.shape)).float()
    floor = torch.floor(w / scale)
    rest = (w / scale - floor).clamp(0.01, 0.99)
    # start where h(V) equals the fractional part, i.e. at round-to-nearest's relaxation
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)).requires_grad_(True)
    fn = layer_function(layer)
    channel = _channel_dim(layer)
    opt = torch.optim.Adam([v], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    n = x.shape[0]
    warmup = int(WARMUP * steps)
    with torch.enable_grad():
        for step in range(steps):
            idx = torch.randint(0, n, (min(MINIBATCH, n),), generator=gen)
            q = torch.clamp(floor + _soft(v) + zero_point, fq.quant_min, fq.quant_max)
            out = fn(x[idx], scale * (q - zero_point))
            loss = (out - y[idx]).pow(2).sum(dim=channel).mean()
            if step >= warmup:
                progress = (step - warmup) / max(1, steps - warmup)
                beta = BETA[1] + 0.5 * (BETA[0] - BETA[1]) * (1 + math.cos(progress * math.pi))
                h = _soft(v)
                loss = loss + LAMBDA * (1 - (2 * h - 1).abs().pow(beta)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        q = torch.clamp(floor + (v >= 0).float() + zero_point, fq.quant_min, fq.quant_max)
        layer.weight.copy_(scale * (q - zero_point))


def correct_bias(layer: QuantizedLayer, x: torch.Tensor, y: torch.Tensor) -> None:
    """Add the per-channel mean output shift of the quantized weight to the bias."""
    with torch.no_grad():
        out = layer_function(layer)(x, layer.weight_quant(layer.weight))
        channel = _channel_dim(layer) % out.dim()
        dims = [d for d in range(out.dim()) if d != channel]
        shift = (y - out).mean(dim=dims)
        if layer.bias is None:
            layer.bias = torch.nn.Parameter(shift.clone(), requires_grad=layer.weight.requires_grad)
        else:
            layer.bias.add_(shift)


def _channel_dim(layer) -> int:
    """Where output channels sit: last for Linear, dimension 1 for convolutions."""
    return -1 if isinstance(layer, torch.nn.Linear) else 1
