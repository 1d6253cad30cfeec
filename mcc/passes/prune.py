"""``prune-channels`` and ``prune-weights``: structured and unstructured pruning.

``prune-channels`` removes whole channels: the ``channel_groups`` analysis
(:mod:`mcc.analysis.dependency`) says which channels of which layers go together; this module
ranks each group's units, picks the weakest and slices every weight, bias, BatchNorm statistic,
reshape size and attention width that holds them. The result is a smaller dense model with the
same output shape, so it is faster on any hardware, not only on sparse kernels.

``prune-weights`` zeroes the smallest weights of every convolution and linear layer. The model
keeps its shapes; the gain is in the size of a sparse encoding (reported as CSR bytes) and in
sparse kernels, not in dense latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from mcc.analysis.dependency import (ArgCount, ArgSlice, AttentionScale, ChannelGroup,
                                     ChannelGroups, ModuleCount, SdpaScale, channel_groups)
from mcc.errors import PassError
from mcc.graph import Graph
from mcc.pass_manager import AnalysisManager, Pass, PassResult, option, register
from mcc.report import csr_bytes

CRITERIA = ("l1", "l2", "bn-gamma", "taylor", "random")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_MAX_GLOBAL_FRACTION = 0.9  # global scope never takes more than this share of one group


@register("prune-channels")
@dataclass(frozen=True)
class PruneChannels(Pass):
    """Remove the least important channels of every layer group, shrinking weights and MACs.

    Channels coupled through residual additions, concatenations, depthwise/grouped convolutions,
    normalisation layers, flatten, squeeze-and-excitation gates, channel shuffles and attention
    are removed together (see ``mcc.analysis.channel_groups``). The network's input channels and
    output features are never pruned; channels that reach an op the analysis does not understand
    are left alone and reported under ``left`` (an error with ``strict``).
    """

    ratio: float = option(0.3, "fraction of each group's channels to remove (global: of all)",
                          min=0.0, max=1.0, max_open=True)
    criterion: str = option("l1", "channel importance: l1/l2 weight norm, bn-gamma (network "
                            "slimming), taylor (|w·grad| on the example inputs), random",
                            choices=CRITERIA)
    scope: str = option("layer", "layer: every group loses `ratio`; global: rank all groups "
                        "together", choices=("layer", "global"))
    round_to: int = option(8, "keep channel counts multiples of this (kernel efficiency)", min=1)
    ignore: tuple[str, ...] = option((), "node or module names whose channels are never pruned")
    strict: bool = option(False, "fail instead of leaving channels alone that the analysis "
                          "cannot follow")

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        groups = analyses.get("channel_groups")
        return prune_channels(graph, ratio=self.ratio, criterion=self.criterion, scope=self.scope,
                              round_to=self.round_to, ignore=self.ignore, strict=self.strict,
                              groups=groups)


def prune_channels(graph: Graph, ratio: float = 0.3, *, criterion: str = "l1",
                   scope: str = "layer", round_to: int = 8, ignore: Iterable[str] = (),
                   strict: bool = False, data: Iterable | None = None,
                   loss: Callable | None = None, groups: ChannelGroups | None = None) -> PassResult:
    """Prune ``graph`` in place; what the ``prune-channels`` pass runs.

    From Python, ``criterion="taylor"`` can use a real objective: ``data`` yields
    ``(inputs, target)`` batches and ``loss(output, target)`` gives the loss whose gradients
    rank the channels. Without them the gradients come from the graph's example inputs and the
    surrogate loss ½·mean(output²), which ranks channels by how much the output depends on them.
    """
    _check_options(ratio, criterion, scope, round_to)
    groups = groups if groups is not None else channel_groups(graph)
    if strict and groups.left:
        node, why = next(iter(groups.left.items()))
        raise PassError("prune-channels", f"{why}; its channels cannot be pruned safely (run "
                        "without strict=true to leave them unpruned)", node)
    blocked = _ignored_groups(graph, groups, tuple(ignore))
    candidates = [g for g in groups.prunable if g.index not in blocked]
    stats = {"groups": len(candidates), "groups_pruned": 0,
             "channels": int(sum(g.width for g in candidates)), "channels_removed": 0}
    if groups.left:
        stats["left"] = dict(groups.left)
    if ratio == 0 or not candidates:
        return PassResult(graph, False, stats)
    grads = taylor_gradients(graph, data, loss) if criterion == "taylor" else None
    scores = importance(graph, groups, candidates, criterion, grads)
    removal = select(candidates, scores, ratio, scope, round_to)
    removed_units = [g.unit_ids[removal[g.index]] for g in candidates if len(removal[g.index])]
    if not removed_units:
        return PassResult(graph, False, stats)
    removed = np.concatenate(removed_units)
    apply_pruning(graph, groups, removed)
    stats["groups_pruned"] = len(removed_units)
    stats["channels_removed"] = int(sum(
        g.unit_sizes[removal[g.index]].sum() for g in candidates if len(removal[g.index])))
    return PassResult(graph, True, stats)


def _check_options(ratio, criterion, scope, round_to):
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise PassError("prune-channels", f"ratio must be in [0, 1), got {ratio!r}")
    if criterion not in CRITERIA:
        raise PassError("prune-channels", f"criterion must be one of {', '.join(CRITERIA)}, "
                        f"got {criterion!r}")
    if scope not in ("layer", "global"):
        raise PassError("prune-channels", f"scope must be layer or global, got {scope!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise PassError("prune-channels", f"round_to must be a positive integer, got {round_to!r}")


def _ignored_groups(graph: Graph, groups: ChannelGroups, ignore: tuple[str, ...]) -> set[int]:
    """Indices of groups touching an ignored node or module; unknown names are an error."""
    if not ignore:
        return set()
    nodes = {n.name: n for n in graph.nodes}
    modules = {name for name, _ in graph.module.named_modules() if name}

    def matches(name: str, node) -> bool:
        if node.name == name:
            return True
        if node.op in ("call_module", "get_attr"):
            target = node.target
            return target == name or target.startswith(name + ".")
        return False

    blocked = set()
    for name in ignore:
        if name not in nodes and name not in modules:
            raise PassError("prune-channels", f"ignore names {name!r}, which is neither a node "
                            "nor a module of the graph (node names are shown by "
                            "print(graph); module names are the model's attribute paths)", name)
        for g in groups.groups:
            if any(matches(name, nodes[n]) for n in g.nodes if n in nodes):
                blocked.add(g.index)
    return blocked


# ---- importance -------------------------------------------------------------------------------


def importance(graph: Graph, groups: ChannelGroups, candidates: list[ChannelGroup],
               criterion: str, grads: dict[int, torch.Tensor] | None = None) -> dict[int, np.ndarray]:
    """A score per unit of each candidate group (higher = more important).

    ``l1``/``l2``: the norm of every weight slice that holds the unit (output rows of the layers
    creating it, input columns of the layers reading it, normalisation scales), each layer's
    scores divided by their mean so that every layer has the same say, then averaged over the
    layers. ``bn-gamma``: the same over normalisation scales only (network slimming); groups
    without a normalisation layer fall back to ``l1``. ``taylor``: |Σ w·∂L/∂w| over every
    parameter slice of the unit, the first-order estimate of the loss change when it is removed.
    ``random``: uniform scores from a fixed seed.
    """
    if criterion == "random":
        rng = np.random.default_rng(0)
        return {g.index: rng.random(g.units) for g in candidates}
    n = int(max(int(g.unit_ids.max()) for g in candidates)) + 1
    group_of = np.full(n, -1, dtype=np.int64)
    unit_of = np.full(n, -1, dtype=np.int64)
    for g in candidates:
        group_of[g.unit_ids] = g.index
        unit_of[g.unit_ids] = np.arange(g.units)
    sums = {g.index: np.zeros(g.units) for g in candidates}
    counts = {g.index: 0 for g in candidates}
    norm_sums = {g.index: np.zeros(g.units) for g in candidates}
    norm_counts = {g.index: 0 for g in candidates}
    gm = graph.module
    with torch.no_grad():
        for slot in groups.slots:
            owner = gm.get_submodule(slot.module) if slot.module else gm
            tensor = getattr(owner, slot.attr, None)
            if not isinstance(tensor, nn.Parameter) or not tensor.is_floating_point():
                continue
            is_bias = slot.attr.endswith("bias")
            if criterion == "taylor":
                grad = grads.get(id(tensor)) if grads else None
                if grad is None:
                    continue
                values = _reduce_except(tensor.detach() * grad, slot.axis, signed=True)
            else:
                if is_bias:
                    continue
                values = _reduce_except(tensor.detach(), slot.axis, squared=criterion == "l2")
            roots = groups.roots(slot.ids)
            inside = roots < n
            gidx = np.full(len(roots), -1, dtype=np.int64)
            gidx[inside] = group_of[roots[inside]]
            is_norm = isinstance(owner, _NORMS) and slot.attr == "weight"
            for gi in np.unique(gidx[gidx >= 0]).tolist():
                sel = gidx == gi
                per_unit = np.bincount(unit_of[roots[sel]], weights=values[sel],
                                       minlength=len(sums[gi]))
                if criterion == "taylor":
                    sums[gi] += per_unit
                    continue
                if criterion == "l2":
                    per_unit = np.sqrt(per_unit)
                mean = per_unit.mean()
                if mean <= 0:
                    continue
                sums[gi] += per_unit / mean
                counts[gi] += 1
                if is_norm:
                    norm_sums[gi] += per_unit / mean
                    norm_counts[gi] += 1
    scores = {}
    for g in candidates:
        i = g.index
        if criterion == "taylor":
            scores[i] = np.abs(sums[i])
        elif criterion == "bn-gamma" and norm_counts[i]:
            scores[i] = norm_sums[i] / norm_counts[i]
        else:
            scores[i] = sums[i] / max(counts[i], 1)
    return scores


def _reduce_except(t: torch.Tensor, axis: int, *, squared: bool = False,
                   signed: bool = False) -> np.ndarray:
    """Sum of |t| (or t², or t) over every axis but ``axis``: one value per position."""
    t = t.float()
    t = t if signed else (t * t if squared else t.abs())
    dims = [d for d in range(t.dim()) if d != axis]
    return (t.sum(dim=dims) if dims else t).double().numpy()


def taylor_gradients(graph: Graph, data: Iterable | None = None,
                     loss: Callable | None = None) -> dict[int, torch.Tensor]:
    """Parameter gradients for the taylor criterion, keyed by ``id(parameter)``: of ``loss``
    summed over the ``(inputs, target)`` batches of ``data`` when given, else of ½·mean(output²)
    on the example inputs. The graph's mode and parameters' gradient flags are restored."""
    module = graph.module
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    was_training = module.training
    try:
        module.eval()
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            if data is None:
                out = module(*graph.example_inputs)
                total = sum(0.5 * o.float().pow(2).mean() for o in _tensors_in(out))
                total.backward()
            else:
                if loss is None:
                    raise PassError("prune-channels", "criterion=taylor with data needs a loss "
                                    "function loss(output, target)")
                for batch in data:
                    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                        raise PassError("prune-channels", "taylor data must yield (inputs, target)"
                                        f" pairs, got {type(batch).__name__}")
                    x, y = batch
                    out = module(*(x if isinstance(x, (list, tuple)) else (x,)))
                    loss(out, y).backward()
        return {id(p): p.grad.detach().clone() for p in params if p.grad is not None}
    finally:
        for p, flag in zip(params, flags):
            p.grad = None
            p.requires_grad_(flag)
        module.train(was_training)


def _tensors_in(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors_in(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors_in(o)]
    return []


# ---- selection ---------------------------------------------------------------------------------


def _step(g: ChannelGroup, round_to: int) -> tuple[int, bool]:
    """Units per rounding step, and whether the group's units all have the same width."""
    sizes = g.unit_sizes
    if (sizes == sizes[0]).all():
        return round_to // math.gcd(round_to, int(sizes[0])), True
    return 1, False


def _keep_units(g: ChannelGroup, keep_fraction: float, round_to: int) -> int:
    """How many units to keep so that about ``keep_fraction`` of the group's channels stay and
    the kept channel count is a multiple of ``round_to`` (never fewer than one step)."""
    step, uniform = _step(g, round_to)
    if uniform:
        k = math.floor(keep_fraction * g.units / step + 0.5) * step
        return min(g.units, max(step, k))
    target = max(round_to, math.floor(keep_fraction * g.width / round_to + 0.5) * round_to)
    order = np.argsort(g.unit_sizes)
    kept_width, k = g.width, g.units
    for size in g.unit_sizes[order]:  # fewest units that still reach the target width
        if k <= 1 or kept_width - size < target:
            break
        kept_width -= size
        k -= 1
    return k


def select(candidates: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float,
           scope: str, round_to: int) -> dict[int, np.ndarray]:
    """Unit indices to remove from each group: its lowest-scored units."""
    removal = {}
    if scope == "layer":
        for g in candidates:
            keep = _keep_units(g, 1 - ratio, round_to)
            removal[g.index] = np.sort(np.argsort(scores[g.index], kind="stable")[: g.units - keep])
        return removal
    # global: lowest scores first until `ratio` of all channels are gone, then round per group
    entries = [(s, g.index, k) for g in candidates for k, s in enumerate(scores[g.index])]
    entries.sort(key=lambda e: e[0])
    by_index = {g.index: g for g in candidates}
    budget = ratio * sum(g.width for g in candidates)
    taken = {g.index: 0 for g in candidates}
    width_taken = {g.index: 0 for g in candidates}
    removed = 0
    for _, gi, k in entries:
        if removed >= budget:
            break
        g = by_index[gi]
        size = int(g.unit_sizes[k])
        if width_taken[gi] + size > _MAX_GLOBAL_FRACTION * g.width:
            continue
        taken[gi] += 1
        width_taken[gi] += size
        removed += size
    for g in candidates:
        keep = _keep_units(g, 1 - width_taken[g.index] / g.width, round_to) \
            if taken[g.index] else g.units
        removal[g.index] = np.sort(np.argsort(scores[g.index], kind="stable")[: g.units - keep])
    return removal


# ---- slicing -----------------------------------------------------------------------------------


def apply_pruning(graph: Graph, groups: ChannelGroups, removed: np.ndarray) -> None:
    """Remove the channels of the units ``removed`` (union-find roots) everywhere they live:
    parameter and buffer slices, module attributes, graph arguments. Checks the new shapes."""
    gm = graph.module
    gone = np.zeros(groups.id_count, dtype=bool)
    gone[groups.roots(np.asarray(removed, dtype=np.int64))] = True

    def keep(ids: np.ndarray) -> np.ndarray:
        return ~gone[groups.roots(ids)]

    touched = {}
    with torch.no_grad():
        for slot in groups.slots:
            mask = keep(slot.ids)
            if mask.all():
                continue
            name = f"{slot.module}.{slot.attr}" if slot.module else slot.attr
            if not mask.any():
                raise PassError("prune-channels", f"pruning would remove every channel of {name}",
                                slot.module or slot.attr)
            owner = gm.get_submodule(slot.module) if slot.module else gm
            tensor = getattr(owner, slot.attr)
            index = torch.from_numpy(np.flatnonzero(mask))
            sliced = tensor.detach().index_select(slot.axis, index).clone()
            if isinstance(tensor, nn.Parameter):
                sliced = nn.Parameter(sliced, requires_grad=tensor.requires_grad)
            setattr(owner, slot.attr, sliced)
            touched[slot.module] = owner
    for action in groups.actions:
        _apply_action(gm, action, keep)
    for owner in touched.values():
        _sync_attributes(owner)
    graph.recompile()
    _verify(graph, groups, keep)


def _apply_action(gm, action, keep) -> None:
    if isinstance(action, ModuleCount):
        kept = int(keep(action.ids).sum())
        if kept == len(action.ids):
            return
        module = gm.get_submodule(action.module)
        value = kept // action.divisor
        if action.index is None:
            setattr(module, action.attr, value)
        else:
            old = list(getattr(module, action.attr))
            old[action.index] = value
            setattr(module, action.attr, type(getattr(module, action.attr))(old)
                    if isinstance(getattr(module, action.attr), tuple) else old)
    elif isinstance(action, ArgCount):
        kept = int(keep(action.ids).sum())
        if kept != len(action.ids):
            _set_arg(action.node, action.loc, kept // action.divisor)
    elif isinstance(action, ArgSlice):
        mask = keep(action.ids)
        if not mask.all():
            start, stop = int(mask[: action.start].sum()), int(mask[: action.stop].sum())
            _set_arg(action.node, action.loc, slice(start, stop, None))
    elif isinstance(action, AttentionScale):
        kept = int(keep(action.ids).sum())
        if kept != len(action.ids):
            module = gm.get_submodule(action.module)
            factor = math.sqrt(kept / len(action.ids))
            with torch.no_grad():
                for attr in action.attrs:
                    getattr(module, attr)[:kept].mul_(factor)
    elif isinstance(action, SdpaScale):
        kept = int(keep(action.ids).sum())
        if kept != len(action.ids):
            action.node.update_kwarg("scale", 1.0 / math.sqrt(action.width))


def _set_arg(node, loc: tuple, value) -> None:
    """Replace ``node``'s argument at ``loc`` (``("args", i, ...)`` or ``("kwargs", k, ...)``)."""
    kind, key, *rest = loc
    container = list(node.args) if kind == "args" else dict(node.kwargs)

    def replace(obj, path):
        if not path:
            return value
        items = list(obj)
        items[path[0]] = replace(items[path[0]], path[1:])
        return type(obj)(items) if isinstance(obj, tuple) else items

    container[key] = replace(container[key], rest)
    if kind == "args":
        node.args = tuple(container)
    else:
        node.kwargs = container


def _sync_attributes(module: nn.Module) -> None:
    """Make a module's size attributes agree with its sliced parameters."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        ref = module.running_mean if module.running_mean is not None else module.weight
        if ref is not None:
            module.num_features = ref.shape[0]
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = module.weight.shape[1]
    elif isinstance(module, nn.MultiheadAttention):
        module.out_proj.out_features, module.out_proj.in_features = module.out_proj.weight.shape


def _verify(graph: Graph, groups: ChannelGroups, keep) -> None:
    """Run the example inputs and check every tracked tensor has the predicted channel count."""
    try:
        graph.propagate_shapes()
    except Exception as exc:
        raise PassError("prune-channels", f"the pruned graph no longer runs ({type(exc).__name__}:"
                        f" {exc}); this is a bug in mcc, please report it") from exc
    for key, track in groups.tracks.items():
        node, index = key if isinstance(key, tuple) else (key, None)
        info = Graph.info(node)
        if index is not None:
            info = info[index] if isinstance(info, tuple) and index < len(info) else None
        if info is None or not hasattr(info, "shape"):
            continue
        expected = int(keep(track.ids).sum())
        if info.shape[track.axis] != expected:
            raise PassError("prune-channels", f"{node.name} has {info.shape[track.axis]} channels "
                            f"on axis {track.axis} after pruning, expected {expected}; this is a "
                            "bug in mcc, please report it", node.name)


# ---- prune-weights ----------------------------------------------------------------------------

SPARSE_WEIGHTS_KEY = "mcc.sparse_weights"  # GraphModule.meta: names of parameters holding zeros
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d, nn.Linear, nn.Bilinear)
_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


@register("prune-weights")
@dataclass(frozen=True)
class PruneWeights(Pass):
    """Zero the smallest-magnitude weights of every conv and linear layer (unstructured).

    Shapes do not change, so dense latency does not either: the gain is the size of a sparse
    encoding (CSR, reported) and sparse kernels. Weights already zero count towards the target.
    """

    sparsity: float = option(0.5, "fraction of weights to zero", min=0.0, max=1.0, max_open=True)
    scope: str = option("global", "global: one magnitude threshold for all layers; layer: each "
                        "layer reaches `sparsity`", choices=("global", "layer"))
    threshold: float | None = option(None, "zero every weight with |w| below this instead "
                                     "(sparsity and scope are then ignored)", min=0.0)

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        weights = prunable_weights(graph.module)
        if not weights:
            return PassResult(graph, False, {"layers": {}, "sparsity": 0.0, "zeroed": 0})
        zeroed = 0
        with torch.no_grad():
            if self.threshold is not None:
                for _, w in weights:
                    mask = (w.abs() < self.threshold) & (w != 0)
                    zeroed += int(mask.sum())
                    w[mask] = 0
            elif self.scope == "layer":
                for _, w in weights:
                    zeroed += _zero_smallest([w], self.sparsity)
            else:
                zeroed += _zero_smallest([w for _, w in weights], self.sparsity)
        stats = sparsity_stats(weights)
        stats["zeroed"] = zeroed
        if zeroed:  # fine-tuning keeps these zeros (mcc.finetune reads the list)
            names = {id(p): n for n, p in graph.module.named_parameters()}
            sparse = graph.module.meta.setdefault(SPARSE_WEIGHTS_KEY, [])
            sparse.extend(names[id(w)] for _, w in weights
                          if id(w) in names and names[id(w)] not in sparse and bool((w == 0).any()))
        return PassResult(graph, zeroed > 0, stats)


def prunable_weights(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, weight)`` of every conv, linear and attention projection weight."""
    out, seen = [], set()
    for name, m in module.named_modules():
        if isinstance(m, _WEIGHTED):
            params = [("weight", m.weight)]
        elif isinstance(m, nn.MultiheadAttention):
            params = [(a, getattr(m, a)) for a in _MHA_WEIGHTS if getattr(m, a, None) is not None]
        else:
            continue
        for attr, p in params:
            if isinstance(p, nn.Parameter) and id(p) not in seen:
                seen.add(id(p))
                out.append((f"{name}.{attr}" if name else attr, p))
    return out


def _zero_smallest(weights: list[torch.Tensor], sparsity: float) -> int:
    """Zero the ``sparsity`` fraction of smallest |w| across ``weights`` (exactly, ties broken
    in order); returns how many weights were newly zeroed."""
    total = sum(w.numel() for w in weights)
    target = int(round(sparsity * total))
    zeros = sum(int((w == 0).sum()) for w in weights)
    if target <= zeros:
        return 0
    flat = torch.cat([w.detach().abs().reshape(-1).float() for w in weights])
    threshold = torch.kthvalue(flat, target).values.item()
    below = int((flat < threshold).sum())
    ties_left = target - below  # how many weights equal to the threshold must go too
    newly = 0
    for w in weights:
        a = w.abs()
        mask = a < threshold
        if ties_left > 0:
            tie = (a == threshold).reshape(-1)
            idx = torch.nonzero(tie).reshape(-1)[:ties_left]
            flat_mask = mask.reshape(-1).clone()
            flat_mask[idx] = True
            ties_left -= len(idx)
            mask = flat_mask.reshape(w.shape)
        newly += int((mask & (w != 0)).sum())
        w[mask] = 0
    return newly


def sparsity_stats(weights: list[tuple[str, torch.Tensor]]) -> dict:
    """Per-layer and overall fraction of zero weights, dense and CSR bytes of those weights."""
    layers, zeros, total, dense, sparse = {}, 0, 0, 0, 0
    for name, w in weights:
        z = int((w == 0).sum())
        layers[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
        dense += w.numel() * w.element_size()
        sparse += csr_bytes(w.detach())
    return {"layers": layers, "sparsity": zeros / total if total else 0.0,
            "dense_bytes": dense, "csr_bytes": sparse}
