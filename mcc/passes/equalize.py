"""``equalize``: cross-layer equalization (Nagel et al., 2019, "Data-Free Quantization").

Per-tensor weight quantization of a layer whose output channels have very different ranges
wastes the grid on the widest channel. For two layers joined by a positively homogeneous
function — ReLU (``relu(x/s) = relu(x)/s`` for ``s > 0``), max or average pooling, identity —
dividing output channel ``i`` of the first layer (weights and bias) by ``s_i`` and multiplying
input channel ``i`` of the second by ``s_i`` leaves the network's function unchanged. With
``r1_i`` the range of the first layer's output channel ``i`` and ``r2_i`` the range of the second
layer's input channel ``i``, ``s_i = √(r1_i / r2_i)`` makes both equal to ``√(r1_i·r2_i)``.
Chains (conv→conv→conv) are repeated until the scales settle. Run it on a BN-folded float
graph, before ``quantize``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from mcc.graph import Graph
from mcc.pass_manager import AnalysisManager, Pass, PassResult, option, register

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# between the two layers: functions f with f(x/s) = f(x)/s per channel for s > 0
_HOMOGENEOUS_MODULES = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
                        nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                        nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                        nn.AdaptiveMaxPool3d, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_HOMOGENEOUS_FUNCTIONS = {torch.relu, nn.functional.relu, nn.functional.max_pool1d,
                          nn.functional.max_pool2d, nn.functional.max_pool3d,
                          nn.functional.avg_pool1d, nn.functional.avg_pool2d,
                          nn.functional.avg_pool3d, nn.functional.adaptive_avg_pool1d,
                          nn.functional.adaptive_avg_pool2d, nn.functional.adaptive_max_pool2d,
                          nn.functional.dropout}
_HOMOGENEOUS_METHODS = {"relu"}
#: scales within this factor of 1 count as settled (and a second run changes nothing)
TOLERANCE = 1e-3


@register("equalize")
@dataclass(frozen=True)
class Equalize(Pass):
    """Cross-layer equalization of Conv/Linear pairs joined by ReLU, before per-tensor quantize.

    Rescales the channels between the two layers so their weight ranges match; float outputs
    are unchanged.
    """

    iterations: int = option(20, "rounds over all pairs; chains converge in a few", min=1)

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        gm = graph.module
        pairs, left = _pairs(graph)
        changed = set()
        for _ in range(self.iterations):
            moved = False
            for first, second in pairs:
                if equalize_pair(gm.get_submodule(first.target), gm.get_submodule(second.target)):
                    moved = True
                    changed.add(first.name)
            if not moved:
                break
        stats = {"pairs": len(pairs), "equalized": len(changed)}
        if left:
            stats["left"] = left
        return PassResult(graph, bool(changed), stats)


def _pairs(graph: Graph) -> tuple[list[tuple[fx.Node, fx.Node]], dict[str, str]]:
    """Layer pairs joined only by homogeneous ops, and the actionable reasons others are not."""
    gm = graph.module
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    pairs, left = [], {}
    for node, layer in graph.call_modules(*_LAYERS):
        if type(layer) not in _LAYERS or calls[node.target] > 1:
            continue
        path = node
        while len(path.users) == 1:
            user = next(iter(path.users))
            if user.op == "call_module" and type(gm.get_submodule(user.target)) in _LAYERS:
                second = gm.get_submodule(user.target)
                if calls[user.target] == 1 and user.args[0] is path and _compatible(layer, second):
                    pairs.append((node, user))
                break
            if not _homogeneous(gm, user, path):
                blocker = _blocker(gm, user)
                if blocker:
                    left[node.name] = f"not equalized: {blocker}"
                break
            path = user
    return pairs, left


def _blocker(gm, node: fx.Node) -> str | None:
    """Why a common op stops equalization, when the user can do something about it."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return f"{node.name} is a BatchNorm (run fold-bn first)"
        if isinstance(m, nn.Hardtanh):
            return f"{node.name} ({type(m).__name__}) clips at a fixed bound, so scaling changes it"
    return None


def _homogeneous(gm, node: fx.Node, source: fx.Node) -> bool:
    if not node.args or node.args[0] is not source:
        return False
    if any(isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values())):
        return False
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)) in _HOMOGENEOUS_MODULES
    if node.op == "call_function":
        return node.target in _HOMOGENEOUS_FUNCTIONS
    return node.op == "call_method" and node.target in _HOMOGENEOUS_METHODS


def _out_channels(layer) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _in_channels(layer) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _compatible(first, second) -> bool:
    return _out_channels(first) == _in_channels(second) and \
        isinstance(first, nn.Linear) == isinstance(second, nn.Linear)


def _input_channel_view(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """Range per input channel of ``layer`` and, per input channel, the index of the weight
    column (in the ``[out, in/groups, …]`` layout) and rows it occupies."""
    groups = getattr(layer, "groups", 1)
    w = layer.weight.detach()
    out_c, in_per_group = w.shape[0], w.shape[1]
    out_per_group = out_c // groups
    flat = w.abs().reshape(groups, out_per_group, in_per_group, -1).amax(dim=(1, 3))  # [g, in/g]
    return flat.reshape(-1), torch.tensor([out_per_group, in_per_group, groups])


def equalize_pair(first: nn.Module, second: nn.Module) -> bool:
    """Equalize one pair in place; True when a scale moved by more than the tolerance."""
    with torch.no_grad():
        w1 = first.weight
        r1 = w1.abs().reshape(w1.shape[0], -1).amax(dim=1)
        r2, (out_per_group, in_per_group, groups) = _input_channel_view(second)
        usable = (r1 > 0) & (r2 > 0)
        s = torch.where(usable, torch.sqrt(r1 / torch.where(usable, r2, torch.ones_like(r2))),
                        torch.ones_like(r1))
        if bool(((s - 1).abs() <= TOLERANCE).all()):
            return False
        shape1 = (-1,) + (1,) * (w1.dim() - 1)
        w1.div_(s.reshape(shape1))
        if first.bias is not None:
            first.bias.div_(s)
        w2 = second.weight
        rest = w2.shape[2:]
        w2v = w2.view(int(groups), int(out_per_group), int(in_per_group), *rest)
        w2v.mul_(s.reshape(int(groups), 1, int(in_per_group), *([1] * len(rest))))
        return True
