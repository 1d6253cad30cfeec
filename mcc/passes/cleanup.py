"""Canonical clean-ups other passes rely on: dead code, constant weight subgraphs, no-op layers.

Frontends leave behind identity layers, dropout (a no-op in eval mode) and weight-only
arithmetic (``weight.t()``, reshapes of constants); pattern-matching passes such as
``fold-bn`` or the quantizer expect the layer → layer edges those hide to be direct.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn
import torch.nn.functional as F

from mcc.graph import Graph
from mcc.pass_manager import AnalysisManager, Pass, PassResult, register

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
             nn.FeatureAlphaDropout)
_DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                      F.feature_alpha_dropout, torch.dropout}


@register("dce")
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove nodes whose values nobody uses, and the submodules and attributes left unused.

    Nodes with side effects (in-place ops on inputs, RNG state) are kept, per torch.fx's
    ``Node.is_impure``.
    """

    preserves = frozenset({"shapes"})

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        gm = graph.module
        before = len(gm.graph.nodes)
        gm.graph.eliminate_dead_code()
        removed = before - len(gm.graph.nodes)
        modules_before = sum(1 for _ in gm.named_modules())
        gm.delete_all_unused_submodules()
        modules_removed = modules_before - sum(1 for _ in gm.named_modules())
        attrs_removed = _delete_unused_attributes(gm)
        modified = bool(removed or modules_removed or attrs_removed)
        if modified:
            graph.recompile()
        return PassResult(graph, modified, {"nodes_removed": removed,
                                            "modules_removed": modules_removed,
                                            "attributes_removed": attrs_removed})


@register("remove-identity")
@dataclass(frozen=True)
class RemoveIdentity(Pass):
    """Remove nn.Identity layers, and dropout layers and calls when the graph is in eval mode.

    In training mode dropout is real computation and stays.
    """

    preserves = frozenset({"shapes"})

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        gm = graph.module
        removed: dict[str, int] = {}
        for node in list(gm.graph.nodes):
            kind = self._no_op_kind(graph, node)
            if kind is None:
                continue
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed[kind] = removed.get(kind, 0) + 1
        if removed:
            gm.delete_all_unused_submodules()
            graph.recompile()
        return PassResult(graph, bool(removed), {"removed": sum(removed.values()), **removed})

    @staticmethod
    def _no_op_kind(graph: Graph, node: fx.Node) -> str | None:
        if not node.args or not isinstance(node.args[0], fx.Node):
            return None
        if node.op == "call_module":
            mod = graph.submodule(node)
            if type(mod) is nn.Identity:
                return "identity"
            if isinstance(mod, _DROPOUTS) and not mod.training:
                return "dropout"
        elif node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS:
            default = node.args[2] if len(node.args) > 2 else True
            if node.kwargs.get("training", node.kwargs.get("train", default)) is False:
                return "dropout"
        elif node.op == "call_method" and node.target == "contiguous" and len(node.args) == 1:
            return "contiguous"
        return None


@register("fold-constants")
@dataclass(frozen=True)
class FoldConstants(Pass):
    """Evaluate subgraphs that depend only on weights and constants, and store their results.

    A folded result that derives from a trainable parameter becomes a parameter itself, so the
    graph stays trainable; otherwise it becomes a buffer. Random and in-place ops are not folded.
    """

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        gm = graph.module
        constant: dict[fx.Node, bool] = {}  # node -> whether it derives from a trainable parameter
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                value = _fetch(gm, node.target)
                if isinstance(value, torch.Tensor):
                    constant[node] = isinstance(value, nn.Parameter) and value.requires_grad
            elif node.op in ("call_function", "call_method") and not node.is_impure() \
                    and not _is_random(node) and node.all_input_nodes \
                    and all(i in constant for i in node.all_input_nodes):
                constant[node] = any(constant[i] for i in node.all_input_nodes)
        frontier = [n for n in constant if n.op != "get_attr"
                    and any(u not in constant for u in n.users)]
        folded = 0
        for node in frontier:
            value = _evaluate(gm, node)
            if not isinstance(value, torch.Tensor):
                continue
            name = _fresh_attr(gm, f"_folded_{node.name}")
            if constant[node]:
                gm.register_parameter(name, nn.Parameter(value.detach().clone()))
            else:
                gm.register_buffer(name, value.detach().clone())
            with gm.graph.inserting_before(node):
                attr = gm.graph.get_attr(name)
            attr.meta = dict(node.meta)
            node.replace_all_uses_with(attr)
            folded += 1
        if folded:
            gm.graph.eliminate_dead_code()
            _delete_unused_attributes(gm)
            graph.recompile()
        return PassResult(graph, folded > 0, {"folded": folded})


def _is_random(node: fx.Node) -> bool:
    name = getattr(node.target, "__name__", str(node.target))
    return any(word in name for word in ("rand", "dropout", "bernoulli", "normal", "multinomial"))


def _evaluate(gm: fx.GraphModule, node: fx.Node):
    """Run the constant subgraph ending at ``node`` with the interpreter's semantics."""
    env: dict[fx.Node, object] = {}

    def value(n: fx.Node):
        if n not in env:
            if n.op == "get_attr":
                env[n] = _fetch(gm, n.target)
            else:
                args = fx.node.map_arg(n.args, value)
                kwargs = fx.node.map_arg(n.kwargs, value)
                if n.op == "call_function":
                    env[n] = n.target(*args, **kwargs)
                else:
                    self_obj, *rest = args
                    env[n] = getattr(self_obj, n.target)(*rest, **kwargs)
        return env[n]

    with torch.no_grad():
        return value(node)


def _fetch(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _fresh_attr(gm: nn.Module, base: str) -> str:
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    return name


def _delete_unused_attributes(gm: fx.GraphModule) -> int:
    """Drop top-level parameters and buffers that no get_attr node reads any more."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    removed = 0
    for name, _ in list(gm.named_parameters(recurse=False)) + list(gm.named_buffers(recurse=False)):
        if name not in used:
            delattr(gm, name)
            removed += 1
    return removed

