"""``fold-bn``: fold inference-mode BatchNorm into the convolution or linear layer before it.

With running statistics μ, σ², affine γ, β and ε, BatchNorm computes ``γ·(y−μ)/√(σ²+ε) + β``
per channel. When ``y = W·x + b`` comes from a conv or linear layer that nothing else reads,
scaling the layer's output channels by ``s = γ/√(σ²+ε)`` and setting ``b' = (b−μ)·s + β``
gives the same result with one layer less — the first step of every int8 deployment flow.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import fx, nn

from mcc.graph import Graph, module_call_counts
from mcc.pass_manager import AnalysisManager, Pass, PassResult, register

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@register("fold-bn")
@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    """Fold BatchNorm into the preceding Conv1d/2d/3d, ConvTranspose or Linear layer.

    Uses the BatchNorm's running statistics, so it only applies to a graph in eval mode; a
    BatchNorm is left in place (and the report says why) when the layer's output has other
    users, the layer module is shared, the BN tracks no running statistics, or the graph is in
    training mode. Outputs are unchanged up to float rounding.
    """

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        gm = graph.module
        bns = list(graph.call_modules(*_BATCH_NORMS))
        if not bns:
            return PassResult(graph, False, {"folded": 0})
        if graph.training:
            reason = "graph is in training mode (call .eval() first: folding needs running statistics)"
            return PassResult(graph, False, {"folded": 0, "left": {n.name: reason for n, _ in bns}})
        calls = module_call_counts(gm)
        folded, left = 0, {}
        for bn_node, bn in bns:
            reason = _why_not_foldable(graph, bn_node, bn, calls)
            if reason:
                left[bn_node.name] = reason
                continue
            layer_node = bn_node.args[0]
            layer = graph.submodule(layer_node)
            _set_submodule(gm, layer_node.target, fold(layer, bn))
            bn_node.replace_all_uses_with(layer_node)
            gm.graph.erase_node(bn_node)
            folded += 1
        if folded:
            gm.delete_all_unused_submodules()
            graph.recompile()
        stats = {"folded": folded}
        if left:
            stats["left"] = left
        return PassResult(graph, folded > 0, stats)


def fold(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of ``layer`` with ``bn`` folded in: same type, bias always present."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
            1.0 / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
        weight = layer.weight.detach().clone()
        if isinstance(layer, _TRANSPOSED):
            # weight is [C_in, C_out/groups, *k]; output channel o = g·(C_out/groups) + j.
            g = layer.groups
            shape = weight.shape
            w = weight.reshape(g, shape[0] // g, shape[1], *shape[2:])
            w = w * scale.reshape(g, 1, shape[1], *([1] * (len(shape) - 2)))
            weight = w.reshape(shape)
        else:
            weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(scale)
        bias = bias * scale + shift
        fused = _clone_with_bias(layer)
        fused.weight = nn.Parameter(weight.to(layer.weight.dtype), layer.weight.requires_grad)
        fused.bias = nn.Parameter(bias.to(layer.weight.dtype), layer.weight.requires_grad)
    return fused


def _clone_with_bias(layer: nn.Module) -> nn.Module:
    fused = copy.deepcopy(layer)
    if fused.bias is None:
        fused.bias = nn.Parameter(torch.empty(_out_channels(layer)))
    return fused


def _out_channels(layer: nn.Module) -> int:
    if isinstance(layer, _TRANSPOSED):
        return layer.weight.shape[1] * layer.groups
    return layer.weight.shape[0]


def _why_not_foldable(graph: Graph, bn_node: fx.Node, bn, calls: dict[str, int]) -> str | None:
    if not bn.track_running_stats or bn.running_mean is None:
        return "BatchNorm tracks no running statistics"
    if bn.training:
        return "BatchNorm module is in training mode"
    if len(bn_node.args) != 1 or bn_node.kwargs:
        return "BatchNorm is called with extra arguments"
    if calls.get(bn_node.target, 0) > 1:
        return "BatchNorm module is called from several places"
    producer = bn_node.args[0]
    if not isinstance(producer, fx.Node) or producer.op != "call_module":
        return "input is not produced by a conv or linear layer"
    layer = graph.submodule(producer)
    if not isinstance(layer, _CONVS + _TRANSPOSED + (nn.Linear,)):
        return f"input comes from {type(layer).__name__}, not a conv or linear layer"
    if len(producer.users) != 1:
        others = sorted(u.name for u in producer.users if u is not bn_node)
        return f"output of {producer.name} has other users ({', '.join(others)})"
    if calls.get(producer.target, 0) > 1:
        return f"layer {producer.target} is shared by several call sites"
    channels = _out_channels(layer)
    if channels != bn.num_features:
        return f"{producer.name} has {channels} output channels but BatchNorm has {bn.num_features}"
    if isinstance(layer, nn.Linear):
        info = graph.info(producer)
        if info is None or len(info.shape) != 2:
            return "BatchNorm after Linear only folds on [batch, features] outputs"
    return None


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, module)
