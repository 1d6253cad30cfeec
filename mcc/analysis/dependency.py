"""Channel dependency analysis: which channels of which layers must be removed together.

Removing output channel ``c`` of a convolution is only correct if every tensor that carries
``c`` loses it too: the BatchNorm after it, the layers that read it, the other branch of a
residual addition, the slice of a concatenation that holds it, the matching rows of a
squeeze-and-excitation gate. Torch-Pruning calls these sets *groups* and finds them by walking
autograd; here they are found on the FX graph with the shapes recorded on every node.

How it works
------------
Every channel that a layer creates (a conv's output channel, a linear layer's output feature)
gets a fresh integer id. Each tensor value in the graph carries at most one *tracked axis* with
the ids of its positions (``Track``). Ops move ids around (``cat`` concatenates them, ``chunk``
slices them, a permutation moves the axis, ``flatten`` repeats them), and ops that make two
positions inseparable *unite* their ids in a union-find: ``a + b`` unites position ``i`` of
``a`` with position ``i`` of ``b``. After one pass in topological order every union-find class
is an indivisible *unit*: a set of channel positions that are kept or removed together.

Constraints that only need equal *counts* are expressed by uniting positions too, which is
stronger than necessary but always valid: the ``g`` blocks of a grouped convolution, of a
GroupNorm, of ``chunk`` outputs and of attention heads must keep the same width, so position
``j`` of every block is united (every block loses the same positions). A reshape that splits a
channel axis into ``(g, c/g)`` (channel shuffle, attention heads) is handled the same way.

Units that touch the same set of layers form a *group* (one residual stream, one branch of a
concatenation): pruning ranks a group's units and removes the weakest. Units are *pinned* (never
removed) when they reach the network output, meet a tensor whose channels are fixed (the
network input), or pass through an op the analysis does not understand; the last kind is
reported by node name as ``left``.

Every place a channel lives is recorded so that the pruning pass can act on it without
re-deriving anything: parameter slices (``ParamSlot``: a module attribute, an axis and the ids
along it) and graph arguments whose value is a channel count (``reshape(x, n, 768, -1)``,
``split`` sizes, ``layer_norm``'s shape).
"""

from __future__ import annotations

import builtins
import inspect
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F

from mcc.graph import Graph, TensorInfo
from mcc.pass_manager import analysis

# ---- union-find over channel ids -------------------------------------------------------------


class _UnionFind:
    """Union-find over channel ids, with "pinned" marks that survive unions."""

    def __init__(self):
        self.parent = np.zeros(1024, dtype=np.int64)
        self.n = 0
        self.pins: dict[int, tuple[str, str | None, bool]] = {}  # id -> (reason, node, unresolved)

    def new(self, count: int) -> np.ndarray:
        if self.n + count > len(self.parent):
            grown = np.zeros(max(2 * len(self.parent), self.n + count), dtype=np.int64)
            grown[: self.n] = self.parent[: self.n]
            self.parent = grown
        ids = np.arange(self.n, self.n + count, dtype=np.int64)
        self.parent[self.n: self.n + count] = ids
        self.n += count
        return ids

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = int(p[root])
        while p[x] != root:
            p[x], x = root, int(p[x])
        return root

    def roots(self, ids: np.ndarray) -> np.ndarray:
        r = self.parent[ids]
        while True:
            rr = self.parent[r]
            if np.array_equal(rr, r):
                return r
            r = rr

    def union(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Unite ``a[i]`` with ``b[i]`` for every ``i``; returns whether anything changed."""
        if a is b:
            return False
        ra, rb = self.roots(a), self.roots(b)
        differ = ra != rb
        if not differ.any():
            return False
        for x, y in zip(ra[differ].tolist(), rb[differ].tolist()):
            x, y = self.find(x), self.find(y)
            if x != y:
                self.parent[max(x, y)] = min(x, y)
        return True

    def pin(self, ids: np.ndarray, reason: str, node: str | None, unresolved: bool) -> None:
        for i in np.unique(ids).tolist():
            old = self.pins.get(i)
            if old is None or (unresolved and not old[2]):
                self.pins[i] = (reason, node, unresolved)


# ---- what a tensor carries ----------------------------------------------------------------------


@dataclass
class Track:
    """The tensor's channel axis and the channel id at every position along it."""

    axis: int
    ids: np.ndarray


@dataclass
class Lazy:
    """A tensor computed from one parameter or buffer (a ``get_attr``) by shape ops only: which
    parameter axis each of its axes is (``None`` for inserted or broadcast axes), so that the
    parameter can be sliced when the tensor meets a tracked one."""

    target: str
    axes: tuple


@dataclass
class ParamSlot:
    """Positions of ``module.attr`` along ``axis`` hold channels ``ids``."""

    module: str
    attr: str
    axis: int
    ids: np.ndarray


@dataclass
class Member:
    """How a node touches a group's channels: ``role`` is ``out`` (creates them), ``in``
    (reads them with weights), ``norm`` (normalises them with per-channel parameters),
    ``param`` (a parameter combined with them) or ``attention`` (query/key/value widths)."""

    node: str
    role: str
    ids: np.ndarray


@dataclass
class ArgCount:
    """``node``'s argument at ``loc`` is the number of kept positions among ``ids`` divided by
    ``divisor`` (a reshape size, a split size, a LayerNorm shape)."""

    node: fx.Node
    loc: tuple
    ids: np.ndarray
    divisor: int = 1


@dataclass
class ArgSlice:
    """``node``'s index at ``loc`` is ``slice(start, stop)`` over an axis whose positions hold
    ``ids``; the bounds become the number of kept positions before them."""

    node: fx.Node
    loc: tuple
    ids: np.ndarray
    start: int
    stop: int


@dataclass
class ModuleCount:
    """``module.attr`` (or its entry ``index``) is the number of kept positions among ``ids``
    divided by ``divisor``."""

    module: str
    attr: str
    index: int | None
    ids: np.ndarray
    divisor: int = 1


@dataclass
class AttentionScale:
    """Attention that computes its softmax scale from the head width: when the width shrinks,
    the query rows (``rows`` of ``module.attr`` for each attr) are scaled so that the softmax
    temperature is unchanged. ``ids`` are the query positions, ``heads`` the head count."""

    module: str
    attrs: tuple
    ids: np.ndarray
    heads: int


@dataclass
class SdpaScale:
    """``scaled_dot_product_attention`` without an explicit ``scale`` uses 1/sqrt(query width):
    when pruning narrows the query, the original scale is written into the call."""

    node: fx.Node
    width: int
    ids: np.ndarray


@dataclass
class CountConstraint:
    """A dynamic reshape size taken from another tensor: the kept count of ``a`` times
    ``factor`` must equal the kept count of ``b``."""

    a: np.ndarray
    b: np.ndarray
    factor: int
    node: str


# ---- the result --------------------------------------------------------------------------------


@dataclass
class ChannelGroup:
    """Channels that are pruned together, and how many independent units they hold.

    ``members`` maps ``(node name, role)`` to the channel positions of that node that belong to
    the group. ``root`` is the first layer that creates the group's channels; ``width`` is how
    many of its output channels the group has; ``units`` how many independently removable
    units those are (fewer than ``width`` when blocks are tied, e.g. across attention heads).
    A group that is not ``prunable`` says why in ``reason``.
    """

    index: int
    root: str | None
    width: int
    units: int
    members: dict[tuple[str, str], list[int]]
    prunable: bool
    reason: str | None = None
    unit_ids: np.ndarray = field(default=None, repr=False)  # union-find roots, in root order
    unit_sizes: np.ndarray = field(default=None, repr=False)  # root-layer channels per unit

    @property
    def nodes(self) -> list[str]:
        """Names of the nodes that touch the group, in graph order of first appearance."""
        seen = []
        for node, _ in self.members:
            if node not in seen:
                seen.append(node)
        return seen

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"fixed ({self.reason})"
        return (f"ChannelGroup({self.index}: root={self.root}, width={self.width}, "
                f"units={self.units}, {len(self.members)} members, {state})")


class ChannelGroups:
    """The result of the channel dependency analysis of one graph (see the module docstring).

    ``groups`` lists every group (prunable or not); ``left`` maps the node names of ops the
    analysis could not see through to the reason, which also pins the channels they touch.
    The remaining attributes are what the pruning pass acts on.
    """

    def __init__(self, graph: Graph, uf: _UnionFind, tracks: dict, slots: dict, members: list,
                 actions: list, left: dict[str, str]):
        self.graph = graph
        self._uf = uf
        self.tracks = tracks
        self.slots: list[ParamSlot] = list(slots.values())
        self._members = members
        self.actions = actions
        self.left = left
        self.groups = self._build_groups()

    # --- access -----------------------------------------------------------------------------
    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> ChannelGroup:
        return self.groups[index]

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def roots(self, ids: np.ndarray) -> np.ndarray:
        """The unit (union-find root) of every channel id."""
        return self._uf.roots(ids)

    @property
    def id_count(self) -> int:
        """How many channel ids exist (ids and roots are below this)."""
        return self._uf.n

    def group_of(self, node: str, role: str = "out") -> ChannelGroup | None:
        """The group holding channel 0 of ``node``'s ``role`` (``None`` if no group does)."""
        for g in self.groups:
            if (node, role) in g.members:
                return g
        return None

    def groups_of(self, node: str, role: str | None = None) -> list[ChannelGroup]:
        """Every group that ``node`` (in ``role``, if given) touches."""
        return [g for g in self.groups
                if any(n == node and (role is None or r == role) for n, r in g.members)]

    def table(self) -> str:
        """One line per group: index, root, width, units, state, and the nodes it touches."""
        rows = []
        for g in self.groups:
            state = "prunable" if g.prunable else f"fixed: {g.reason}"
            nodes = ", ".join(g.nodes[:6]) + (", ..." if len(g.nodes) > 6 else "")
            rows.append(f"{g.index:>4}  {str(g.root):<32} width {g.width:>5}  units {g.units:>5}  "
                        f"{state}  [{nodes}]")
        if self.left:
            rows.append("left (not understood):")
            rows += [f"  {node}: {why}" for node, why in self.left.items()]
        return "\n".join(rows)

    # --- grouping ---------------------------------------------------------------------------
    def _build_groups(self) -> list[ChannelGroup]:
        uf = self._uf
        # Roots of every member's positions; a unit's signature is the set of members it touches.
        member_roots = [(m, uf.roots(m.ids)) for m in self._members]
        signature: dict[int, tuple] = {}
        if member_roots:
            uniq = [np.unique(roots) for _, roots in member_roots]
            pair_r = np.concatenate(uniq)
            pair_k = np.concatenate([np.full(len(u), k) for k, u in enumerate(uniq)])
            order = np.lexsort((pair_k, pair_r))
            pair_r, pair_k = pair_r[order], pair_k[order]
            starts = np.concatenate([[0], np.flatnonzero(np.diff(pair_r)) + 1])
            ends = np.concatenate([starts[1:], [len(pair_r)]])
            for r, a, b in zip(pair_r[starts].tolist(), starts.tolist(), ends.tolist()):
                signature[r] = tuple(pair_k[a:b].tolist())
        pinned: dict[int, tuple[str, str | None, bool]] = {}
        if uf.pins:
            pin_ids = np.fromiter(uf.pins.keys(), dtype=np.int64)
            for i, r in zip(pin_ids.tolist(), uf.roots(pin_ids).tolist()):
                reason = uf.pins[i]
                if r not in pinned or (reason[2] and not pinned[r][2]):
                    pinned[r] = reason
        by_key: dict[tuple, list[int]] = {}
        for r, sig in signature.items():
            pin = pinned.get(r)
            key = (sig, pin[0] if pin else None)
            by_key.setdefault(key, []).append(r)
        groups = []
        owner = np.full(uf.n, -1, dtype=np.int64)  # root -> index of its group
        keys = list(by_key)
        for gi, key in enumerate(keys):
            owner[by_key[key]] = gi
        # positions of every member, split by group
        positions_of: dict[int, dict[int, np.ndarray]] = {}
        for k, (m, roots) in enumerate(member_roots):
            gidx = owner[roots]
            order = np.argsort(gidx, kind="stable")
            bounds = np.flatnonzero(np.diff(gidx[order])) + 1
            for chunk in np.split(order, bounds):
                if len(chunk):
                    positions_of.setdefault(int(gidx[chunk[0]]), {})[k] = np.sort(chunk)
        for gi, (sig, reason) in enumerate(keys):
            units = by_key[(sig, reason)]
            ordered = sig  # member indices in graph order
            unit_set = np.array(sorted(units), dtype=np.int64)
            members = {}
            root_member = None
            for k in ordered:
                m, roots = member_roots[k]
                positions = positions_of.get(gi, {}).get(k, np.zeros(0, dtype=np.int64))
                key = (m.node, m.role)
                members[key] = sorted(set(members.get(key, [])) | set(positions.tolist()))
                if root_member is None and m.role == "out":
                    root_member = (m, roots, positions)
            if root_member is not None:
                m, roots, inside = root_member
                width = len(inside)
                # units in order of their first position in the root layer
                uniq, first, counts = np.unique(roots[inside], return_index=True,
                                                return_counts=True)
                order = np.argsort(first)
                unit_ids, unit_sizes = uniq[order], counts[order]
                root = m.node
            else:
                width, unit_ids, root = 0, unit_set, None
                unit_sizes = np.ones(len(unit_ids), dtype=np.int64)
            prunable = reason is None and root is not None and len(unit_ids) > 1
            why = reason
            if reason is None and root is None:
                why = "no layer creates these channels"
            elif reason is None and len(unit_ids) <= 1:
                why = "a single unit: removing it would remove every channel"
            groups.append(ChannelGroup(0, root, width, len(unit_ids), members, prunable, why,
                                       unit_ids, unit_sizes))
        order = {n.name: i for i, n in enumerate(self.graph.nodes)}
        groups.sort(key=lambda g: (order.get(g.root, len(order)),
                                   min((order.get(n, 0) for n, _ in g.members), default=0)))
        for i, g in enumerate(groups):
            g.index = i
        return groups


# ---- op tables -------------------------------------------------------------------------------------

_UNARY = {
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "hardswish", "hardswish_", "hardsigmoid", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_",
    "elu", "elu_", "selu", "celu", "mish", "softplus", "softsign", "logsigmoid", "tanhshrink",
    "hardshrink", "softshrink", "threshold", "exp", "log", "log1p", "sqrt", "rsqrt", "abs", "neg",
    "pos", "square", "reciprocal", "sin", "cos", "erf", "sign", "floor", "ceil", "round", "trunc",
    "clamp", "clip", "clamp_min", "clamp_max", "clamp_", "dropout", "dropout1d", "dropout2d",
    "dropout3d", "alpha_dropout", "feature_alpha_dropout", "contiguous", "clone", "detach", "float",
    "half", "double", "bfloat16", "to", "type", "type_as", "softmax", "log_softmax", "softmin",
    "normalize", "nan_to_num", "stochastic_depth", "requires_grad_", "invert", "not_",
}
_BINARY = {
    "add", "sub", "mul", "truediv", "div", "floordiv", "floor_divide", "mod", "remainder", "pow",
    "maximum", "minimum", "fmax", "fmin", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
    "logical_or", "logical_xor", "and_", "or_", "xor", "rsub", "true_divide", "where",
    "masked_fill", "lerp", "addcmul", "addcdiv", "atan2", "hypot", "iadd", "isub", "imul",
    "itruediv", "add_", "sub_", "mul_", "div_", "masked_fill_",
}
_REDUCE = {"mean", "sum", "amax", "amin", "prod", "std", "var", "logsumexp", "max", "min",
           "argmax", "argmin", "any", "all", "median", "nanmean", "nansum", "count_nonzero", "norm"}
_POOL = {  # ops over the trailing spatial dims: name -> number of spatial dims
    "avg_pool1d": 1, "avg_pool2d": 2, "avg_pool3d": 3, "max_pool1d": 1, "max_pool2d": 2,
    "max_pool3d": 3, "max_pool1d_with_indices": 1, "max_pool2d_with_indices": 2,
    "max_pool3d_with_indices": 3, "adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2,
    "adaptive_avg_pool3d": 3, "adaptive_max_pool1d": 1, "adaptive_max_pool2d": 2,
    "adaptive_max_pool3d": 3, "lp_pool1d": 1, "lp_pool2d": 2, "lp_pool3d": 3,
}
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
            "reshape_as", "ravel"}
_NON_TENSOR = {"size", "dim", "numel", "ndimension", "nelement", "_assert", "getattr",
               "is_contiguous", "element_size", "stride", "data_ptr", "__len__", "len"}
_KNOWN = (_UNARY | _BINARY | _REDUCE | set(_POOL) | _RESHAPE | _NON_TENSOR | {
    "permute", "transpose", "swapaxes", "swapdims", "movedim", "t", "expand", "expand_as",
    "repeat", "getitem", "cat", "concat", "concatenate", "stack", "split", "chunk", "unbind",
    "matmul", "bmm", "mm", "einsum", "linear", "layer_norm", "group_norm",
    "scaled_dot_product_attention", "interpolate", "upsample", "pad", "roll", "flip",
    "cumsum", "channel_shuffle", "native_channel_shuffle", "adaptive_avg_pool2d"})


def _build_function_names() -> dict[int, str]:
    """id(callable) -> canonical op name, for the torch, functional and operator callables
    whose names appear in the tables above (so a user function named ``add`` is not taken for
    ``torch.add``)."""
    names: dict[int, str] = {}
    sources = [operator, torch, F, torch.Tensor, torch.functional]
    if hasattr(torch._C, "_nn"):
        sources.append(torch._C._nn)
    for name in _KNOWN:
        for src in sources:
            fn = getattr(src, name, None)
            if fn is not None and callable(fn):
                names.setdefault(id(fn), name)
    names[id(operator.matmul)] = "matmul"
    names[id(operator.getitem)] = "getitem"
    names[id(builtins.getattr)] = "getattr"
    return names


_FUNCTION_NAMES = _build_function_names()


def op_name(node: fx.Node) -> str | None:
    """The canonical name of a call_function/call_method node's op, or ``None`` if unknown."""
    if node.op == "call_method":
        return node.target if node.target in _KNOWN else None
    target = node.target
    name = _FUNCTION_NAMES.get(id(target))
    if name:
        return name
    packet = getattr(target, "overloadpacket", None)  # torch.ops.aten.* from torch.export
    if packet is not None:
        base = getattr(packet, "__name__", "")
        if base in _KNOWN:
            return base
        if base == "convolution" or base == "_to_copy":
            return None
    module = getattr(target, "__module__", "") or ""
    qualname = getattr(target, "__name__", "")
    if module.startswith("torchvision.ops.stochastic_depth") and qualname == "stochastic_depth":
        return "stochastic_depth"
    if module.startswith("torchvision.models.swin_transformer"):
        return {"shifted_window_attention": "swin_attention", "_patch_merging_pad":
                "swin_patch_merging", "_get_relative_position_bias": "swin_position_bias"
                }.get(qualname)
    return None


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
                nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.LogSigmoid,
                nn.Hardshrink, nn.Softshrink, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Softmax, nn.LogSoftmax,
                nn.Softmin)
_POOL_MODULES = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1,
                 nn.AvgPool2d: 2, nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1,
                 nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool1d: 1,
                 nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1, nn.LPPool2d: 2,
                 nn.Upsample: None, nn.UpsamplingNearest2d: 2, nn.UpsamplingBilinear2d: 2,
                 nn.ZeroPad2d: 2, nn.ConstantPad1d: 1, nn.ConstantPad2d: 2, nn.ConstantPad3d: 3,
                 nn.ReflectionPad1d: 1, nn.ReflectionPad2d: 2, nn.ReplicationPad1d: 1,
                 nn.ReplicationPad2d: 2, nn.ReplicationPad3d: 3}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _plain_forward(module: nn.Module, base: type) -> bool:
    """A module of a known type whose forward is the library's (a subclass may redefine it)."""
    return type(module).forward is base.forward


# ---- the analysis ------------------------------------------------------------------------------------


@analysis("channel_groups")
def channel_groups(graph: Graph) -> ChannelGroups:
    """Find the groups of coupled channels of ``graph`` (see the module docstring).

    Uses the shapes recorded on the nodes (``node.meta["tensor_meta"]``); they must be current.
    """
    return _Analyzer(graph).run()


class _Analyzer:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.gm = graph.module
        self.uf = _UnionFind()
        self.cmap: dict[fx.Node, Any] = {}
        self.slots: dict[tuple, ParamSlot] = {}
        self.members: list[Member] = []
        self.member_index: dict[tuple, int] = {}
        self.actions: list = []
        self.constraints: list[CountConstraint] = []
        self.left: dict[str, str] = {}

    # --- bookkeeping -------------------------------------------------------------------------
    def run(self) -> ChannelGroups:
        for node in self.graph.nodes:
            self.cmap[node] = self.visit(node)
        self._solve_constraints()
        tracks = {n: t for n, t in self.cmap.items() if isinstance(t, Track)}
        for n, value in self.cmap.items():
            if isinstance(value, (list, tuple)):
                for i, t in enumerate(value):
                    if isinstance(t, Track):
                        tracks[(n, i)] = t
        return ChannelGroups(self.graph, self.uf, tracks, self.slots, self.members, self.actions,
                             self.left)

    def fresh(self, n: int) -> np.ndarray:
        return self.uf.new(n)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        self.uf.union(a, b)

    def pin(self, ids, reason: str, node: fx.Node | None = None, unresolved: bool = False):
        if ids is None or len(ids) == 0:
            return
        self.uf.pin(ids, reason, node.name if node is not None else None, unresolved)
        if unresolved and node is not None:
            self.left.setdefault(node.name, reason)

    def unknown(self, node: fx.Node, what: str | None = None):
        """An op the analysis does not understand: pin every channel that reaches it."""
        reason = what or f"{_describe(node, self.gm)} is not understood by the channel analysis"
        for arg in _node_args(node):
            t = self.cmap.get(arg)
            for track in _tracks_in(t):
                self.pin(track.ids, reason, node, unresolved=True)
        return None

    def slot(self, module: str, attr: str, axis: int, ids: np.ndarray) -> None:
        key = (module, attr, axis)
        old = self.slots.get(key)
        if old is None:
            self.slots[key] = ParamSlot(module, attr, axis, ids)
        elif len(old.ids) == len(ids):
            self.union(old.ids, ids)
        else:  # the same tensor sliced two incompatible ways
            self.pin(old.ids, f"{module}.{attr} is used with two different channel layouts")
            self.pin(ids, f"{module}.{attr} is used with two different channel layouts")

    def member(self, node: fx.Node, role: str, ids: np.ndarray) -> None:
        key = (node.name, role)
        if key in self.member_index:
            old = self.members[self.member_index[key]]
            if len(old.ids) == len(ids):
                self.union(old.ids, ids)
            else:
                old.ids = np.concatenate([old.ids, ids])
            return
        self.member_index[key] = len(self.members)
        self.members.append(Member(node.name, role, ids))

    def param_slot(self, target: str, axis: int, ids: np.ndarray) -> None:
        module, _, attr = target.rpartition(".")
        self.slot(module, attr, axis, ids)

    # --- helpers -----------------------------------------------------------------------------
    def info(self, node) -> TensorInfo | tuple | None:
        return Graph.info(node) if isinstance(node, fx.Node) else None

    def shape(self, node) -> tuple | None:
        info = self.info(node)
        return info.shape if isinstance(info, TensorInfo) else None

    def track(self, arg) -> Track | None:
        t = self.cmap.get(arg) if isinstance(arg, fx.Node) else None
        return t if isinstance(t, Track) else None

    def lazy(self, arg) -> Lazy | None:
        t = self.cmap.get(arg) if isinstance(arg, fx.Node) else None
        return t if isinstance(t, Lazy) else None

    # --- dispatch ----------------------------------------------------------------------------
    def visit(self, node: fx.Node):
        if node.op == "placeholder":
            return None
        if node.op == "get_attr":
            shape = self.shape(node)
            return Lazy(node.target, tuple(range(len(shape)))) if shape is not None else None
        if node.op == "output":
            for arg in _node_args(node):
                for track in _tracks_in(self.cmap.get(arg)):
                    self.pin(track.ids, "network output")
            return None
        info = self.info(node)
        if node.op == "call_module":
            return self.visit_module(node, self.gm.get_submodule(node.target), info)
        name = op_name(node)
        tracked_input = any(self.track(a) for a in _node_args(node))
        if name is None:
            return self.unknown(node)
        if name in _NON_TENSOR:
            # sizes and ranks carry no channels; a tensor-valued attribute (x.T) would
            return self.unknown(node) if info is not None and tracked_input else None
        if info is None and name != "getitem":
            # a result that is not a tensor (shape arithmetic); an op on tracked tensors that
            # returned something unrecorded cannot be followed
            return self.unknown(node) if tracked_input else None
        handler = getattr(self, "op_" + name, None)
        if handler is not None:
            return handler(node, info)
        if name in _UNARY:
            return self.elementwise(node, info)
        if name in _BINARY:
            return self.elementwise(node, info)
        if name in _REDUCE:
            return self.reduce(node, info, name)
        if name in _POOL:
            return self.spatial(node, info, _POOL[name])
        if name in _RESHAPE:
            return self.reshape(node, info)
        return self.unknown(node)

    # --- elementwise ---------------------------------------------------------------------------
    def elementwise(self, node: fx.Node, info, operands=None):
        """Broadcasting elementwise op: every operand's channels at the output's tracked axis
        are the same channels."""
        if not isinstance(info, TensorInfo):
            return self.unknown(node) if any(self.track(a) for a in _node_args(node)) else None
        nd = len(info.shape)
        operands = operands if operands is not None else [a for a in _node_args(node)
                                                          if isinstance(a, fx.Node)]
        chosen = None
        for a in operands:
            t = self.track(a)
            if t is None:
                continue
            shape = self.shape(a)
            axis = t.axis + nd - len(shape)
            if shape[t.axis] == 1 and info.shape[axis] != 1:  # broadcast from one channel
                self.pin(t.ids, "a single channel broadcast over many")
                continue
            if chosen is None:
                chosen = Track(axis, t.ids)
            elif axis == chosen.axis:
                self.union(chosen.ids, t.ids)
            else:
                self.pin(t.ids, f"{node.name} combines channels along two different axes")
        if chosen is None:
            return None
        self.bind_operands(node, operands, chosen, nd)
        return chosen

    def bind_operands(self, node, operands, chosen: Track, nd: int):
        """Slice parameters combined with tracked channels; pin if an operand's channels are fixed."""
        for a in operands:
            if self.track(a) is not None:
                continue
            shape = self.shape(a)
            if shape is None:
                continue
            axis = chosen.axis - (nd - len(shape))
            if axis < 0 or shape[axis] == 1:
                continue
            lz = self.lazy(a)
            if lz is not None and lz.axes[axis] is not None and shape[axis] == len(chosen.ids):
                self.param_slot(lz.target, lz.axes[axis], chosen.ids)
                self.member(node, "param", chosen.ids)
                continue
            self.pin(chosen.ids, f"{node.name} combines the channels with {a.name}, whose channels "
                     "are fixed", node)

    def op_stochastic_depth(self, node, info):
        return self.elementwise(node, info, [node.args[0]])

    def op_type_as(self, node, info):
        return self.elementwise(node, info, [node.args[0]])

    def op_to(self, node, info):
        return self.elementwise(node, info, [node.args[0]])

    def op_masked_fill(self, node, info):
        return self.elementwise(node, info, [a for a in node.args[:2] if isinstance(a, fx.Node)])

    # --- reductions and spatial ops --------------------------------------------------------------
    def reduce(self, node, info, name):
        x = node.args[0] if node.args else None
        other = node.args[1] if len(node.args) > 1 else None
        if name in ("max", "min") and isinstance(self.info(other), TensorInfo):
            return self.elementwise(node, info)  # torch.max(a, b): elementwise
        t = self.track(x)
        if t is None:
            return None
        in_nd = len(self.shape(x))
        dim = _arg(node, 1, "dim", None)
        keepdim = _arg(node, 2, "keepdim", False)
        if name == "norm":
            dim = _arg(node, 2, "dim", None)
            keepdim = _arg(node, 3, "keepdim", False)
        if isinstance(dim, fx.Node):
            return self.unknown(node)
        if dim is None:  # everything reduced
            return None
        dims = [d % in_nd for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
        if t.axis in dims:
            return None  # channels reduced away (e.g. a spatial attention map)
        axis = t.axis if keepdim else t.axis - sum(1 for d in dims if d < t.axis)
        out = Track(axis, t.ids)
        if isinstance(info, tuple):  # max/min with a dim: (values, indices)
            return [out, Track(axis, t.ids)]
        return out

    def spatial(self, node, info, k):
        """Pooling, padding, resizing over the trailing ``k`` dims."""
        x = node.args[0] if node.args else None
        t = self.track(x)
        if t is None:
            return None
        nd = len(self.shape(x))
        k = k if k is not None else nd - 2
        if t.axis >= nd - k:
            return self.unknown(node, f"{_describe(node, self.gm)} works across the channel axis")
        if isinstance(info, tuple):
            return [Track(t.axis, t.ids), Track(t.axis, t.ids)]
        return Track(t.axis, t.ids)

    def op_interpolate(self, node, info):
        return self.spatial(node, info, None)

    op_upsample = op_interpolate

    def op_pad(self, node, info):
        x = node.args[0]
        t = self.track(x)
        if t is None:
            return None
        pad = _arg(node, 1, "pad", ())
        nd = len(self.shape(x))
        if not isinstance(pad, (list, tuple)) or any(isinstance(p, fx.Node) for p in pad):
            return self.unknown(node)
        k = t.axis - nd  # negative index of the tracked axis
        i = 2 * (-k - 1)
        if i < len(pad) and (pad[i] or pad[i + 1]):
            return self.unknown(node, f"{node.name} pads the channel axis")
        return Track(t.axis, t.ids)

    def op_roll(self, node, info):
        x = node.args[0]
        t = self.track(x)
        if t is None:
            return None
        dims = _arg(node, 2, "dims", None)
        nd = len(self.shape(x))
        dims = [] if dims is None else (list(dims) if isinstance(dims, (list, tuple)) else [dims])
        if not dims or any(not isinstance(d, int) for d in dims) or t.axis in [d % nd for d in dims]:
            return self.unknown(node, f"{node.name} rolls the channel axis")
        return Track(t.axis, t.ids)

    def op_flip(self, node, info):
        x = node.args[0]
        t = self.track(x)
        if t is None:
            return None
        dims = _arg(node, 1, "dims", ())
        nd = len(self.shape(x))
        dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
        if any(not isinstance(d, int) for d in dims):
            return self.unknown(node)
        return Track(t.axis, t.ids[::-1].copy() if t.axis in [d % nd for d in dims] else t.ids)

    def op_cumsum(self, node, info):
        x = node.args[0]
        t = self.track(x)
        if t is None:
            return None
        dim = _arg(node, 1, "dim", None)
        if not isinstance(dim, int) or dim % len(self.shape(x)) == t.axis:
            return self.unknown(node, f"{node.name} accumulates across channels")
        return Track(t.axis, t.ids)

    # --- axis permutations ------------------------------------------------------------------------
    def op_permute(self, node, info):
        x = node.args[0]
        dims = node.args[1:] if len(node.args) > 2 or not isinstance(
            _arg(node, 1, "dims", None), (list, tuple)) else _arg(node, 1, "dims", None)
        dims = list(dims)
        nd = len(info.shape)
        if any(not isinstance(d, int) for d in dims):
            return self.unknown(node)
        dims = [d % nd for d in dims]
        t, lz = self.track(x), self.lazy(x)
        if t is not None:
            return Track(dims.index(t.axis), t.ids)
        if lz is not None:
            return Lazy(lz.target, tuple(lz.axes[d] for d in dims))
        return None

    def _swap(self, node, info, a, b):
        x = node.args[0]
        nd = len(info.shape)
        if not isinstance(a, int) or not isinstance(b, int):
            return self.unknown(node)
        a, b = a % nd, b % nd
        t, lz = self.track(x), self.lazy(x)
        if t is not None:
            axis = b if t.axis == a else a if t.axis == b else t.axis
            return Track(axis, t.ids)
        if lz is not None:
            axes = list(lz.axes)
            axes[a], axes[b] = axes[b], axes[a]
            return Lazy(lz.target, tuple(axes))
        return None

    def op_transpose(self, node, info):
        return self._swap(node, info, _arg(node, 1, "dim0", None), _arg(node, 2, "dim1", None))

    op_swapaxes = op_transpose
    op_swapdims = op_transpose

    def op_t(self, node, info):
        return self._swap(node, info, 0, 1) if len(info.shape) == 2 else self.elementwise(node, info)

    def op_movedim(self, node, info):
        src, dst = _arg(node, 1, "source", None), _arg(node, 2, "destination", None)
        if not isinstance(src, int) or not isinstance(dst, int):
            return self.unknown(node)
        nd = len(info.shape)
        order = list(range(nd))
        order.insert(dst % nd, order.pop(src % nd))
        x = node.args[0]
        t, lz = self.track(x), self.lazy(x)
        if t is not None:
            return Track(order.index(t.axis), t.ids)
        if lz is not None:
            return Lazy(lz.target, tuple(lz.axes[d] for d in order))
        return None

    # --- expand / repeat ------------------------------------------------------------------------
    def op_expand(self, node, info):
        x = node.args[0]
        nd = len(info.shape)
        in_shape = self.shape(x)
        shift = nd - len(in_shape)
        t, lz = self.track(x), self.lazy(x)
        sizes = list(node.args[1:])
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes, base = list(sizes[0]), ("args", 1)
        else:
            base = None
        if t is not None:
            axis = t.axis + shift
            if axis < len(sizes):
                s = sizes[axis]
                loc = base + (axis,) if base else ("args", 1 + axis)
                if isinstance(s, int) and s != -1:
                    self.actions.append(ArgCount(node, loc, t.ids))
                elif isinstance(s, fx.Node):
                    self.size_arg(node, s, t.ids)
            return Track(axis, t.ids)
        if lz is not None:
            axes = (None,) * shift + tuple(
                a if in_shape[i] == info.shape[i + shift] else None for i, a in enumerate(lz.axes))
            return Lazy(lz.target, axes)
        return None

    def op_expand_as(self, node, info):
        x = node.args[0]
        shift = len(info.shape) - len(self.shape(x))
        t, lz = self.track(x), self.lazy(x)
        if t is not None:
            return Track(t.axis + shift, t.ids)
        if lz is not None:
            in_shape = self.shape(x)
            return Lazy(lz.target, (None,) * shift + tuple(
                a if in_shape[i] == info.shape[i + shift] else None for i, a in enumerate(lz.axes)))
        return None

    def op_repeat(self, node, info):
        x = node.args[0]
        t = self.track(x)
        if t is None:
            return None
        nd = len(info.shape)
        shift = nd - len(self.shape(x))
        if info.shape[t.axis + shift] != len(t.ids):
            return self.unknown(node, f"{node.name} repeats the channel axis")
        return Track(t.axis + shift, t.ids)

    # --- reshapes --------------------------------------------------------------------------------
    def reshape(self, node, info):
        x = node.args[0] if node.args else None
        if not isinstance(info, TensorInfo) or not isinstance(x, fx.Node):
            return None
        in_shape, out_shape = self.shape(x), info.shape
        t, lz = self.track(x), self.lazy(x)
        name = node.target if node.op == "call_method" else op_name(node)
        sizes = _reshape_sizes(node, name, len(out_shape))
        if t is None:
            self.check_untracked_sizes(node, sizes, None)
            if lz is not None:
                groups = _align(in_shape, out_shape)
                axes = [None] * len(out_shape)
                for gi, go in groups:
                    real_in = [i for i in gi if in_shape[i] != 1]
                    real_out = [o for o in go if out_shape[o] != 1]
                    if len(real_in) == 1 and len(real_out) == 1:
                        axes[real_out[0]] = lz.axes[real_in[0]]
                    elif real_in or real_out:
                        return None
                return Lazy(lz.target, tuple(axes))
            return None
        out = self.map_reshape(node, t, in_shape, out_shape)
        if out is None:
            return None
        self.check_untracked_sizes(node, sizes, out)
        if sizes is not None and out.axis < len(sizes):
            loc, s = sizes[out.axis]
            if isinstance(s, int) and s != -1:
                self.actions.append(ArgCount(node, loc, out.ids))
            elif isinstance(s, fx.Node):
                self.size_arg(node, s, out.ids)
            elif s is not None and s != -1:
                self.pin(out.ids, f"{node.name} has a size argument the analysis cannot follow",
                         node, unresolved=True)
        return out

    def map_reshape(self, node, t: Track, in_shape, out_shape) -> Track | None:
        groups = _align(in_shape, out_shape)
        for gi, go in groups:
            if t.axis in gi:
                break
        else:
            return self.unknown(node)
        gin = [in_shape[i] for i in gi]
        gout = [out_shape[o] for o in go]
        bshape = [1] * len(gi)
        bshape[gi.index(t.axis)] = len(t.ids)
        arr = np.broadcast_to(t.ids.reshape(bshape), gin).reshape(gout)
        candidates = [k for k, s in enumerate(gout) if s > 1]
        if not candidates:
            self.pin(t.ids, "reshaped away")
            return None
        roots = self.uf.roots(arr.reshape(-1)).reshape(gout)
        for k in candidates:
            moved = np.moveaxis(roots, k, 0).reshape(gout[k], -1)
            if (moved == moved[:, :1]).all():
                ids = np.moveaxis(arr, k, 0).reshape(gout[k], -1)[:, 0].copy()
                return Track(go[k], ids)
        # Split into blocks: keep the innermost axis as channels and make every block lose the
        # same positions (heads keep one width; shuffle groups stay equal).
        k = candidates[-1]
        moved = np.moveaxis(arr, k, -1).reshape(-1, gout[k])
        for row in moved[1:]:
            self.union(moved[0], row)
        return Track(go[k], moved[0].copy())

    def size_arg(self, node, s: fx.Node, ids: np.ndarray):
        """A dynamic size at the tracked output axis: it must follow the kept channel count."""
        ref = _size_expr(s)
        if ref is None:
            self.pin(ids, f"{node.name} takes the channel count from {s.name}, which the analysis "
                     "cannot follow", node, unresolved=True)
            return
        src, axis, factor, divisor = ref
        st = self.track(src)
        nd = len(self.shape(src) or ())
        if st is None or nd == 0 or axis % nd != st.axis:
            self.pin(ids, f"{node.name} takes its channel count from a fixed size ({s.name})", node)
            return
        # kept(ids) == kept(src) * factor / divisor
        if factor == 1 and divisor == 1:
            self.constraints.append(CountConstraint(ids, st.ids, 1, node.name))
        elif factor == 1:
            self.constraints.append(CountConstraint(ids, st.ids, divisor, node.name))
        elif divisor == 1:
            self.constraints.append(CountConstraint(st.ids, ids, factor, node.name))
        else:
            self.pin(ids, f"{node.name} computes its channel count as {s.name}", node,
                     unresolved=True)

    def check_untracked_sizes(self, node, sizes, out: Track | None):
        """Sizes of untracked output axes must not depend on a tracked channel count."""
        if sizes is None:
            return
        for k, (loc, s) in enumerate(sizes):
            if out is not None and k == out.axis or not isinstance(s, fx.Node):
                continue
            for src, axis in _size_refs(s):
                st = self.track(src)
                nd = len(self.shape(src) or ())
                if st is not None and nd and axis % nd == st.axis:
                    self.pin(st.ids, f"{node.name} moves a channel count to another axis", node,
                             unresolved=True)

    # --- indexing -----------------------------------------------------------------------------
    def op_getitem(self, node, info):
        base, index = node.args[0], node.args[1]
        value = self.cmap.get(base)
        if isinstance(value, (list, tuple)):  # an element of a multi-output op
            if isinstance(index, int) and -len(value) <= index < len(value):
                return value[index]
            return self.unknown(node) if any(_tracks_in(value)) else None
        if not isinstance(info, TensorInfo) or not isinstance(base, fx.Node):
            return None
        t, lz = self.track(base), self.lazy(base)
        if t is None and lz is None:
            return None
        items = list(index) if isinstance(index, tuple) else [index]
        in_nd = len(self.shape(base))
        if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in items):
            if t is not None:
                return self.unknown(node, f"{node.name} indexes a tensor with another tensor")
            return None
        n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
        expanded = []
        for i in items:
            if i is Ellipsis:
                expanded += [slice(None)] * (in_nd - n_real)
            else:
                expanded.append(i)
        expanded += [slice(None)] * (in_nd - sum(1 for i in expanded if i is not None))
        in_axis, out_axis = 0, 0
        mapping = {}
        for pos, i in enumerate(expanded):
            if i is None:
                out_axis += 1
                continue
            if isinstance(i, int):
                mapping[in_axis] = ("int", pos)
                in_axis += 1
                continue
            mapping[in_axis] = (out_axis, pos, i)
            in_axis += 1
            out_axis += 1
        if lz is not None:
            axes = [None] * len(info.shape)
            for a, m in mapping.items():
                if m[0] != "int" and m[2] == slice(None):
                    axes[m[0]] = lz.axes[a]
            return Lazy(lz.target, tuple(axes))
        m = mapping[t.axis]
        if m[0] == "int":
            return self.unknown(node, f"{node.name} selects a single channel")
        out_axis, pos, sl = m
        if sl == slice(None):
            return Track(out_axis, t.ids)
        if not all(isinstance(v, int) or v is None for v in (sl.start, sl.stop, sl.step)) or \
                sl.step not in (None, 1):
            return self.unknown(node, f"{node.name} slices the channel axis with a step")
        start, stop, _ = sl.indices(len(t.ids))
        loc = ("args", 1, pos) if isinstance(index, tuple) else ("args", 1)
        self.actions.append(ArgSlice(node, loc, t.ids, start, stop))
        return Track(out_axis, t.ids[start:stop])

    # --- concatenation and splitting ----------------------------------------------------------------
    def op_cat(self, node, info):
        tensors = _arg(node, 0, "tensors", None)
        if tensors is None:
            tensors = _arg(node, 0, "input", None)
        dim = _arg(node, 1, "dim", 0)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            return self.unknown(node)
        nd = len(info.shape)
        dim %= nd
        tracked = [self.track(a) for a in tensors]
        if any(t is not None and t.axis == dim for t in tracked):
            parts = []
            for a, t in zip(tensors, tracked):
                n = self.shape(a)[dim]
                if t is not None and t.axis == dim:
                    parts.append(t.ids)
                else:
                    if t is not None:
                        self.pin(t.ids, f"{node.name} concatenates it along another axis")
                    ids = self.fresh(n)
                    self.pin(ids, "concatenated channels that no layer of the graph creates")
                    parts.append(ids)
            return Track(dim, np.concatenate(parts))
        return self.elementwise(node, info, [a for a in tensors if isinstance(a, fx.Node)])

    op_concat = op_cat
    op_concatenate = op_cat

    def op_stack(self, node, info):
        tensors = _arg(node, 0, "tensors", None)
        dim = _arg(node, 1, "dim", 0)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            return self.unknown(node)
        nd = len(info.shape)
        dim %= nd
        chosen = None
        for a in tensors:
            t = self.track(a)
            if t is None:
                continue
            axis = t.axis + (1 if t.axis >= dim else 0)
            if chosen is None:
                chosen = Track(axis, t.ids)
            elif axis == chosen.axis:
                self.union(chosen.ids, t.ids)
            else:
                self.pin(t.ids, f"{node.name} stacks channels along different axes")
        if chosen is None:
            return None
        for a in tensors:
            if self.track(a) is None and isinstance(a, fx.Node) and self.shape(a) is not None:
                self.pin(chosen.ids, f"{node.name} stacks the channels with fixed ones", node)
        return chosen

    def _split_equal(self, node, t: Track, n_parts: int, axis: int):
        size = len(t.ids) // n_parts
        blocks = t.ids.reshape(n_parts, size)
        for b in blocks[1:]:
            self.union(blocks[0], b)
        return [Track(axis, b.copy()) for b in blocks]

    def op_chunk(self, node, info):
        x = node.args[0]
        t = self.track(x)
        if t is None:
            return None
        chunks = _arg(node, 1, "chunks", None)
        dim = _arg(node, 2, "dim", 0)
        nd = len(self.shape(x))
        n_out = len(info) if isinstance(info, tuple) else None
        if not isinstance(chunks, int) or not isinstance(dim, int) or n_out is None:
            return self.unknown(node)
        if dim % nd != t.axis:
            return [Track(t.axis, t.ids) for _ in range(n_out)]
        if len(t.ids) % chunks or n_out != chunks:
            return self.unknown(node, f"{node.name} splits the channels into unequal chunks")
        return self._split_equal(node, t, chunks, t.axis)

    def op_split(self, node, info):
        x = node.args[0]
        t = self.track(x)
        if t is None:
            return None
        sizes = _arg(node, 1, "split_size_or_sections", None)
        if sizes is None:
            sizes = _arg(node, 1, "split_size", None)
        dim = _arg(node, 2, "dim", 0)
        nd = len(self.shape(x))
        n_out = len(info) if isinstance(info, tuple) else None
        if not isinstance(dim, int) or n_out is None:
            return self.unknown(node)
        if dim % nd != t.axis:
            return [Track(t.axis, t.ids) for _ in range(n_out)]
        if isinstance(sizes, int):
            if len(t.ids) % sizes:
                return self.unknown(node, f"{node.name} splits the channels into unequal parts")
            parts = self._split_equal(node, t, len(t.ids) // sizes, t.axis)
            self.actions.append(ArgCount(node, ("args", 1) if len(node.args) > 1 else
                                         ("kwargs", "split_size_or_sections"), parts[0].ids))
            return parts
        if isinstance(sizes, (list, tuple)) and all(isinstance(s, int) for s in sizes):
            out, start = [], 0
            base = ("args", 1) if len(node.args) > 1 else ("kwargs", "split_size_or_sections")
            for k, s in enumerate(sizes):
                ids = t.ids[start:start + s]
                self.actions.append(ArgCount(node, base + (k,), ids))
                out.append(Track(t.axis, ids))
                start += s
            return out
        return self.unknown(node)

    def op_unbind(self, node, info):
        x = node.args[0]
        t = self.track(x)
        if t is None:
            return None
        dim = _arg(node, 1, "dim", 0) % len(self.shape(x))
        if dim == t.axis:
            return self.unknown(node, f"{node.name} separates single channels")
        n = len(info) if isinstance(info, tuple) else 0
        axis = t.axis - (1 if dim < t.axis else 0)
        return [Track(axis, t.ids) for _ in range(n)]

    def op_channel_shuffle(self, node, info):
        x = node.args[0]
        t = self.track(x)
        groups = _arg(node, 1, "groups", None)
        if t is None:
            return None
        if t.axis != 1 or not isinstance(groups, int):
            return self.unknown(node)
        return self._shuffle(t, groups)

    op_native_channel_shuffle = op_channel_shuffle

    def _shuffle(self, t: Track, groups: int) -> Track:
        blocks = t.ids.reshape(groups, -1)
        for b in blocks[1:]:
            self.union(blocks[0], b)
        return Track(t.axis, np.repeat(blocks[0], groups))

    # --- products -----------------------------------------------------------------------------
    def op_matmul(self, node, info):
        a, b = node.args[0], node.args[1]
        sa, sb = self.shape(a), self.shape(b)
        if sa is None or sb is None or len(sa) < 2 or len(sb) < 2:
            if any(self.track(x) for x in (a, b)):
                return self.unknown(node, f"{node.name} multiplies vectors")
            return None
        ta, tb = self.track(a), self.track(b)
        nd = len(info.shape)
        out = None
        # contracted axis: a's last with b's second-to-last
        ca = ta is not None and ta.axis == len(sa) - 1
        cb = tb is not None and tb.axis == len(sb) - 2
        if ca and cb:
            self.union(ta.ids, tb.ids)
        elif ca or cb:
            t, other, other_axis = (ta, b, len(sb) - 2) if ca else (tb, a, len(sa) - 1)
            lz = self.lazy(other)
            if lz is not None and lz.axes[other_axis] is not None:
                self.param_slot(lz.target, lz.axes[other_axis], t.ids)
                self.member(node, "param", t.ids)
            else:
                self.pin(t.ids, f"{node.name} contracts the channels with a fixed operand", node)
        if ta is not None and ta.axis == len(sa) - 2:
            out = Track(nd - 2, ta.ids)
        if tb is not None and tb.axis == len(sb) - 1:
            if out is not None:
                self.pin(ta.ids, f"{node.name} produces channels on two axes")
            out = Track(nd - 1, tb.ids)
        for t, s in ((ta, sa), (tb, sb)):
            if t is not None and t.axis < len(s) - 2:
                return self.unknown(node, f"{node.name} has channels on a batch axis")
        return out

    op_bmm = op_matmul
    op_mm = op_matmul

    def op_einsum(self, node, info):
        equation = node.args[0]
        operands = list(node.args[1:])
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        if not isinstance(equation, str):
            return self.unknown(node)
        parsed = _parse_einsum(equation, [len(self.shape(o) or ()) for o in operands])
        if parsed is None:
            return self.unknown(node)
        inputs, output = parsed
        by_letter: dict[str, list] = {}
        for o, letters in zip(operands, inputs):
            t = self.track(o)
            if t is not None:
                by_letter.setdefault(letters[t.axis], []).append(t)
        out = None
        for letter, ts in by_letter.items():
            for t in ts[1:]:
                self.union(ts[0].ids, t.ids)
            for o, letters in zip(operands, inputs):
                if letter in letters and self.track(o) is None:
                    axis = letters.index(letter)
                    if self.shape(o)[axis] == 1:
                        continue
                    lz = self.lazy(o)
                    if lz is not None and lz.axes[axis] is not None:
                        self.param_slot(lz.target, lz.axes[axis], ts[0].ids)
                        self.member(node, "param", ts[0].ids)
                    else:
                        self.pin(ts[0].ids, f"{node.name} combines the channels with fixed ones",
                                 node)
            if letter in output:
                if out is not None:
                    self.pin(ts[0].ids, f"{node.name} produces channels on two axes")
                else:
                    out = Track(output.index(letter), ts[0].ids)
        return out

    def op_scaled_dot_product_attention(self, node, info):
        q, k, v = (_arg(node, i, n, None) for i, n in enumerate(("query", "key", "value")))
        tq, tk, tv = self.track(q), self.track(k), self.track(v)
        nd = len(info.shape)
        for t, x in ((tq, q), (tk, k), (tv, v)):
            if t is not None and t.axis != len(self.shape(x)) - 1:
                return self.unknown(node, f"{node.name} has channels off the head-width axis")
        if tq is not None and tk is not None:
            self.union(tq.ids, tk.ids)
            self.member(node, "attention", tq.ids)
            if _arg(node, 6, "scale", None) is None:
                self.actions.append(SdpaScale(node, len(tq.ids), tq.ids))
        elif tq is not None or tk is not None:
            self.pin((tq or tk).ids, f"{node.name} pairs the query and key widths with fixed ones",
                     node)
        return Track(nd - 1, tv.ids) if tv is not None else None

    # --- functional layers --------------------------------------------------------------------------
    def op_linear(self, node, info):
        x, w, b = _arg(node, 0, "input", None), _arg(node, 1, "weight", None), _arg(node, 2, "bias", None)
        lw = self.lazy(w)
        if lw is None or lw.axes != (0, 1):
            return self.unknown(node, f"{node.name} is a linear op whose weight is computed")
        out_ids = self.fresh(info.shape[-1])
        self.linear_like(node, self.track(x), self.shape(x), out_ids, weight=lw.target,
                         bias=self.lazy(b).target if self.lazy(b) else None)
        return self.linear_out(node, self.track(x), self.shape(x), out_ids)

    def linear_like(self, node, t, in_shape, out_ids, weight: str, bias: str | None):
        if t is not None and t.axis == len(in_shape) - 1:
            self.param_slot(weight, 1, t.ids)
            self.member(node, "in", t.ids)
        self.param_slot(weight, 0, out_ids)
        if bias is not None:
            self.param_slot(bias, 0, out_ids)
        self.member(node, "out", out_ids)

    def linear_out(self, node, t, in_shape, out_ids):
        if t is not None and t.axis != len(in_shape) - 1:
            # channels on another axis pass through (token mixing); the layer's own outputs
            # cannot be tracked at the same time
            self.pin(out_ids, "features of a layer applied across another channel axis")
            return Track(t.axis, t.ids)
        return Track(len(in_shape) - 1, out_ids)

    def op_layer_norm(self, node, info):
        x = node.args[0]
        t = self.track(x)
        if t is None:
            return None
        shape = _arg(node, 1, "normalized_shape", None)
        if not isinstance(shape, (list, tuple)) or any(not isinstance(s, int) for s in shape):
            return self.unknown(node)
        nd = len(self.shape(x))
        k = len(shape)
        if t.axis < nd - k:
            return Track(t.axis, t.ids)
        pos = t.axis - (nd - k)
        loc = ("args", 1, pos) if len(node.args) > 1 else ("kwargs", "normalized_shape", pos)
        self.actions.append(ArgCount(node, loc, t.ids))
        for name, index in (("weight", 2), ("bias", 3)):
            lz = self.lazy(_arg(node, index, name, None))
            p = _arg(node, index, name, None)
            if lz is not None and lz.axes[pos] is not None:
                self.param_slot(lz.target, lz.axes[pos], t.ids)
            elif p is not None:
                return self.unknown(node, f"{node.name} has a computed {name}")
        self.member(node, "norm", t.ids)
        return Track(t.axis, t.ids)

    def op_group_norm(self, node, info):
        x = node.args[0]
        t = self.track(x)
        if t is None:
            return None
        groups = _arg(node, 1, "num_groups", None)
        if t.axis != 1 or not isinstance(groups, int):
            return self.unknown(node)
        self._split_equal(node, t, groups, 1)
        for name, index in (("weight", 2), ("bias", 3)):
            p = _arg(node, index, name, None)
            lz = self.lazy(p)
            if lz is not None:
                self.param_slot(lz.target, lz.axes[0], t.ids)
            elif p is not None:
                return self.unknown(node, f"{node.name} has a computed {name}")
        self.member(node, "norm", t.ids)
        return Track(1, t.ids)

    # --- torchvision's Swin functions --------------------------------------------------------------
    def op_swin_patch_merging(self, node, info):
        t = self.track(node.args[0])
        if t is None:
            return None
        if t.axis != len(info.shape) - 1:
            return self.unknown(node)
        return Track(t.axis, np.tile(t.ids, 4))  # cat of four strided views along channels

    def op_swin_position_bias(self, node, info):
        """``_get_relative_position_bias(table, index, window)``: the table's last axis (one
        entry per head; Swin V2 computes it with an MLP) becomes axis 1 of the bias."""
        t = self.track(node.args[0])
        if t is None:
            return None
        if t.axis != len(self.shape(node.args[0])) - 1 or not isinstance(info, TensorInfo) or \
                len(info.shape) < 2 or info.shape[1] != len(t.ids):
            return self.unknown(node)
        return Track(1, t.ids)

    def op_swin_attention(self, node, info):
        """``shifted_window_attention``: its head width is input width / heads, so the query,
        key, value and output widths all equal the input width (tied position by position)."""
        from torchvision.models.swin_transformer import shifted_window_attention

        try:
            bound = inspect.signature(shifted_window_attention).bind(*node.args, **node.kwargs)
        except TypeError:
            return self.unknown(node)
        a = bound.arguments
        x = a["input"]
        t = self.track(x)
        for name in ("relative_position_bias", "logit_scale"):
            tb = self.track(a.get(name))
            if tb is not None:
                self.pin(tb.ids, "attention heads are kept")
        if t is None:
            return None
        heads = a["num_heads"]
        nd = len(self.shape(x))
        lazies = {n: self.lazy(a.get(n)) for n in ("qkv_weight", "proj_weight", "qkv_bias",
                                                    "proj_bias")}
        if t.axis != nd - 1 or not isinstance(heads, int) or len(t.ids) % heads or \
                lazies["qkv_weight"] is None or lazies["proj_weight"] is None or \
                any(a.get(n) is not None and lazies[n] is None for n in ("qkv_bias", "proj_bias")):
            return self.unknown(node)
        self._split_equal(node, t, heads, t.axis)
        ids = t.ids
        qkv = np.concatenate([ids, ids, ids])
        self.param_slot(lazies["qkv_weight"].target, 1, ids)
        self.param_slot(lazies["qkv_weight"].target, 0, qkv)
        self.param_slot(lazies["proj_weight"].target, 0, ids)
        self.param_slot(lazies["proj_weight"].target, 1, ids)
        if lazies["qkv_bias"] is not None:
            self.param_slot(lazies["qkv_bias"].target, 0, qkv)
        if lazies["proj_bias"] is not None:
            self.param_slot(lazies["proj_bias"].target, 0, ids)
        self.member(node, "in", ids)
        self.member(node, "attention", ids)
        self.member(node, "out", ids)
        if a.get("logit_scale") is None:  # plain dot-product attention scaled by 1/sqrt(width)
            owner, _, attr = lazies["qkv_weight"].target.rpartition(".")
            attrs = (attr,)
            if lazies["qkv_bias"] is not None:
                bowner, _, battr = lazies["qkv_bias"].target.rpartition(".")
                if bowner == owner:
                    attrs = (attr, battr)
            self.actions.append(AttentionScale(owner, attrs, ids, heads))
        return Track(t.axis, ids)

    # --- modules -----------------------------------------------------------------------------------
    def visit_module(self, node: fx.Node, m: nn.Module, info):
        x = node.args[0] if node.args else None
        t = self.track(x)
        if isinstance(m, _ACTIVATIONS):
            return Track(t.axis, t.ids) if t is not None else None
        for kind, k in _POOL_MODULES.items():
            if type(m) is kind:
                return self.spatial(node, info, k)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self.module_reshape(node, m, info)
        if isinstance(m, _CONVS) and _plain_forward(m, type(m)):
            return self.conv(node, m, t, info, transposed=False)
        if isinstance(m, _CONV_T) and _plain_forward(m, type(m)):
            return self.conv(node, m, t, info, transposed=True)
        if isinstance(m, nn.Linear) and _plain_forward(m, nn.Linear):
            out_ids = self.fresh(m.out_features)
            self.linear_like(node, t, self.shape(x), out_ids, weight=f"{node.target}.weight",
                             bias=f"{node.target}.bias" if m.bias is not None else None)
            return self.linear_out(node, t, self.shape(x), out_ids)
        if isinstance(m, _BATCH_NORMS) and _plain_forward(m, type(m)):
            if t is None or t.axis != 1:
                return Track(t.axis, t.ids) if t is not None else None
            for attr in ("weight", "bias", "running_mean", "running_var"):
                if getattr(m, attr, None) is not None:
                    self.slot(node.target, attr, 0, t.ids)
            self.member(node, "norm", t.ids)
            return Track(1, t.ids)
        if isinstance(m, nn.LayerNorm) and _plain_forward(m, nn.LayerNorm):
            if t is None:
                return None
            nd = len(self.shape(x))
            k = len(m.normalized_shape)
            if t.axis < nd - k:
                return Track(t.axis, t.ids)
            pos = t.axis - (nd - k)
            for attr in ("weight", "bias"):
                if getattr(m, attr, None) is not None:
                    self.slot(node.target, attr, pos, t.ids)
            self.actions.append(ModuleCount(node.target, "normalized_shape", pos, t.ids))
            self.member(node, "norm", t.ids)
            return Track(t.axis, t.ids)
        if isinstance(m, nn.GroupNorm) and _plain_forward(m, nn.GroupNorm):
            if t is None:
                return None
            if t.axis != 1:
                return self.unknown(node)
            self._split_equal(node, t, m.num_groups, 1)
            for attr in ("weight", "bias"):
                if getattr(m, attr, None) is not None:
                    self.slot(node.target, attr, 0, t.ids)
            self.actions.append(ModuleCount(node.target, "num_channels", None, t.ids))
            self.member(node, "norm", t.ids)
            return Track(1, t.ids)
        if isinstance(m, nn.PReLU) and _plain_forward(m, nn.PReLU):
            if t is None:
                return None
            if m.num_parameters > 1:
                if t.axis != 1:
                    return self.unknown(node)
                self.slot(node.target, "weight", 0, t.ids)
                self.actions.append(ModuleCount(node.target, "num_parameters", None, t.ids))
            return Track(t.axis, t.ids)
        if isinstance(m, nn.Embedding) and _plain_forward(m, nn.Embedding):
            out_ids = self.fresh(m.embedding_dim)
            self.slot(node.target, "weight", 1, out_ids)
            self.member(node, "out", out_ids)
            return Track(len(info.shape) - 1, out_ids)
        if isinstance(m, nn.MultiheadAttention) and _plain_forward(m, nn.MultiheadAttention):
            return self.mha(node, m, info)
        if isinstance(m, nn.ChannelShuffle):
            if t is None:
                return None
            if t.axis != 1:
                return self.unknown(node)
            return self._shuffle(t, m.groups)
        # any other module: pin what reaches it, unless no channels do
        if any(self.track(a) for a in _node_args(node)):
            return self.unknown(node, f"module {node.target} ({type(m).__name__}) is not understood "
                                      "by the channel analysis")
        return None

    def module_reshape(self, node, m, info):
        x = node.args[0]
        t = self.track(x)
        if t is None:
            return None
        out = self.map_reshape(node, t, self.shape(x), info.shape)
        if out is not None and isinstance(m, nn.Unflatten):
            dim = m.dim % len(self.shape(x))
            if dim <= out.axis < dim + len(m.unflattened_size):
                k = out.axis - dim
                if m.unflattened_size[k] != -1:
                    self.actions.append(ModuleCount(node.target, "unflattened_size", k, out.ids))
        return out

    def conv(self, node, m, t: Track | None, info, transposed: bool):
        cin = m.in_channels
        cout = m.out_channels
        g = m.groups
        out_axis_w, in_axis_w = (1, 0) if transposed else (0, 1)
        if t is not None and t.axis != 1:
            self.pin(t.ids, f"{node.name} reads channels on axis 1, but they are on axis {t.axis}",
                     node, unresolved=True)
            t = None
        if g > 1 and cin == g:  # depthwise (optionally with a channel multiplier)
            mult = cout // g
            in_ids = t.ids if t is not None else self._fixed(cin)
            out_ids = np.repeat(in_ids, mult)
            if t is not None:
                self.member(node, "in", in_ids)
            if transposed:
                self.slot(node.target, "weight", 0, in_ids)
            else:
                self.slot(node.target, "weight", 0, out_ids)
        else:
            if t is not None:
                self._split_equal(node, t, g, 1)
                block = t.ids[: cin // g]
                if transposed:
                    self.slot(node.target, "weight", 0, t.ids)
                else:
                    self.slot(node.target, "weight", 1, block)
                self.member(node, "in", t.ids)
            out_ids = self.fresh(cout)
            if g > 1:
                self._split_equal(node, Track(1, out_ids), g, 1)
            if transposed:
                self.slot(node.target, "weight", 1, out_ids[: cout // g])
            else:
                self.slot(node.target, "weight", 0, out_ids)
        if m.bias is not None:
            self.slot(node.target, "bias", 0, out_ids)
        self.member(node, "out", out_ids)
        if t is not None:
            self.actions.append(ModuleCount(node.target, "in_channels", None, t.ids))
        self.actions.append(ModuleCount(node.target, "out_channels", None, out_ids))
        if g > 1 and cin == g:
            self.actions.append(ModuleCount(node.target, "groups", None, in_ids))
        return Track(1, out_ids)

    def _fixed(self, n: int) -> np.ndarray:
        ids = self.fresh(n)
        self.pin(ids, "channels tied to fixed ones (a depthwise layer on the network input)")
        return ids

    def mha(self, node, m: nn.MultiheadAttention, info):
        """nn.MultiheadAttention requires query width == embed_dim == output width, and every
        head the same width; its channels are tied position by position."""
        q = _arg(node, 0, "query", None)
        k = _arg(node, 1, "key", None)
        v = _arg(node, 2, "value", None)
        tq, tk, tv = self.track(q), self.track(k), self.track(v)
        for t, x in ((tq, q), (tk, k), (tv, v)):
            if t is not None and t.axis != len(self.shape(x)) - 1:
                return self.unknown(node, f"{node.name} has channels off the embedding axis")
        same = m._qkv_same_embed_dim
        if tq is None or (same and (tk is None or tv is None)) or m.bias_k is not None:
            for t in (tq, tk, tv):
                if t is not None:
                    self.pin(t.ids, f"{node.name} attends over inputs with fixed widths", node)
            return [None, None]
        ids = tq.ids
        self._split_equal(node, Track(0, ids), m.num_heads, 0)
        qkv = np.concatenate([ids, ids, ids])
        prefix = node.target
        if same:
            self.union(ids, tk.ids)
            self.union(ids, tv.ids)
            self.slot(prefix, "in_proj_weight", 1, ids)
            self.slot(prefix, "in_proj_weight", 0, qkv)
        else:
            self.slot(prefix, "q_proj_weight", 0, ids)
            self.slot(prefix, "q_proj_weight", 1, ids)
            self.slot(prefix, "k_proj_weight", 0, ids)
            self.slot(prefix, "v_proj_weight", 0, ids)
            for name, t, kind in (("k_proj_weight", tk, "kdim"), ("v_proj_weight", tv, "vdim")):
                if t is not None:
                    self.slot(prefix, name, 1, t.ids)
                    self.actions.append(ModuleCount(prefix, kind, None, t.ids))
        if m.in_proj_bias is not None:
            self.slot(prefix, "in_proj_bias", 0, qkv)
        self.slot(f"{prefix}.out_proj", "weight", 0, ids)
        self.slot(f"{prefix}.out_proj", "weight", 1, ids)
        if m.out_proj.bias is not None:
            self.slot(f"{prefix}.out_proj", "bias", 0, ids)
        self.member(node, "in", ids)
        self.member(node, "attention", ids)
        self.member(node, "out", ids)
        self.actions.append(ModuleCount(prefix, "embed_dim", None, ids))
        if same:
            self.actions.append(ModuleCount(prefix, "kdim", None, ids))
            self.actions.append(ModuleCount(prefix, "vdim", None, ids))
        self.actions.append(ModuleCount(prefix, "head_dim", None, ids, m.num_heads))
        attrs = ("in_proj_weight",) if same else ("q_proj_weight",)
        if m.in_proj_bias is not None:
            attrs += ("in_proj_bias",)
        self.actions.append(AttentionScale(prefix, attrs, ids, m.num_heads))
        out = info[0] if isinstance(info, tuple) else info
        return [Track(len(out.shape) - 1, ids), None]

    # --- constraints -------------------------------------------------------------------------------
    def _solve_constraints(self):
        """Dynamic sizes taken from another tensor: make the counts agree, uniting positions
        where they do not already (uniting keeps every satisfied constraint satisfied)."""
        uf = self.uf
        changed = True
        while changed:
            changed = False
            for c in self.constraints:
                ra, rb = Counter(uf.roots(c.a).tolist()), Counter(uf.roots(c.b).tolist())
                if {r: n * c.factor for r, n in ra.items()} == dict(rb):
                    continue
                if c.factor == 1 and len(c.a) == len(c.b):
                    changed |= uf.union(c.a, c.b)
                else:
                    self.pin(c.a, "channel counts tied through a computed size", None)
                    self.pin(c.b, "channel counts tied through a computed size", None)


# ---- helpers ---------------------------------------------------------------------------------------


def _node_args(node: fx.Node) -> list[fx.Node]:
    out = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n))
    return out


def _tracks_in(value) -> list[Track]:
    if isinstance(value, Track):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for t in value if isinstance(t, Track)]
    return []


def _arg(node: fx.Node, index: int, name: str, default):
    if name in node.kwargs:
        return node.kwargs[name]
    if node.op == "call_method":
        return node.args[index] if index < len(node.args) else default
    return node.args[index] if index < len(node.args) else default


def _describe(node: fx.Node, gm) -> str:
    if node.op == "call_module":
        return f"module {node.target} ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_method":
        return f"method .{node.target}() at {node.name}"
    target = getattr(node.target, "__qualname__", None) or getattr(node.target, "__name__", str(node.target))
    module = getattr(node.target, "__module__", None)
    return f"{module + '.' if module else ''}{target} at {node.name}"


def _align(in_shape, out_shape) -> list[tuple[list[int], list[int]]]:
    """Pair runs of input and output dims with equal products (how a reshape regroups axes)."""
    groups = []
    i = j = 0
    ni, no = len(in_shape), len(out_shape)
    while i < ni or j < no:
        gi, go = [], []
        pi = pj = 1
        if i < ni:
            gi.append(i)
            pi = in_shape[i]
            i += 1
        if j < no:
            go.append(j)
            pj = out_shape[j]
            j += 1
        while pi != pj:
            if pi < pj and i < ni:
                gi.append(i)
                pi *= in_shape[i]
                i += 1
            elif pj < pi and j < no:
                go.append(j)
                pj *= out_shape[j]
                j += 1
            else:
                break
        # absorb size-1 dims that follow
        while i < ni and in_shape[i] == 1 and (j >= no or out_shape[j] != 1):
            gi.append(i)
            i += 1
        while j < no and out_shape[j] == 1 and (i >= ni or in_shape[i] != 1):
            go.append(j)
            j += 1
        groups.append((gi, go))
    return groups


def _reshape_sizes(node: fx.Node, name: str | None, out_nd: int):
    """``[(loc, size)]`` for each output axis of a reshape whose sizes are arguments."""
    if name in ("view", "reshape"):
        args = node.args[1:]
        if node.op == "call_function":  # torch.reshape(x, shape)
            shape = _arg(node, 1, "shape", None)
            if isinstance(shape, (list, tuple)):
                return [(("args", 1, k), s) for k, s in enumerate(shape)] \
                    if "shape" not in node.kwargs else [(("kwargs", "shape", k), s)
                                                        for k, s in enumerate(shape)]
            return None
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            return [(("args", 1, k), s) for k, s in enumerate(args[0])]
        if len(args) == 1 and isinstance(args[0], torch.dtype):
            return None
        if len(args) == out_nd:
            return [(("args", 1 + k), s) for k, s in enumerate(args)]
        return None
    if name == "unflatten":
        dim = _arg(node, 1, "dim", None)
        sizes = _arg(node, 2, "sizes", None)
        if not isinstance(dim, int) or not isinstance(sizes, (list, tuple)):
            return None
        in_nd = out_nd - len(sizes) + 1
        dim %= in_nd
        out = [(None, None)] * out_nd
        for k, s in enumerate(sizes):
            out[dim + k] = (("args", 2, k) if len(node.args) > 2 else ("kwargs", "sizes", k), s)
        return out
    return None


def _size_refs(node: fx.Node) -> list[tuple[fx.Node, int]]:
    """Every ``(tensor, axis)`` whose size ``node``'s integer value is computed from."""
    out = []
    stack = [node]
    seen = set()
    while stack:
        n = stack.pop()
        if not isinstance(n, fx.Node) or n in seen:
            continue
        seen.add(n)
        ref = _size_ref(n)
        if ref is not None:
            out.append(ref)
            continue
        if n.op == "call_function" and n.target in (operator.mul, operator.floordiv, operator.add,
                                                    operator.sub, operator.truediv):
            stack.extend(a for a in n.args if isinstance(a, fx.Node))
    return out


def _size_ref(n: fx.Node) -> tuple[fx.Node, int] | None:
    """``x.size(i)`` / ``x.shape[i]`` / ``x.size()[i]`` -> ``(x, i)``."""
    if n.op == "call_method" and n.target == "size" and len(n.args) >= 2 and isinstance(n.args[1], int):
        return n.args[0], n.args[1]
    if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[1], int):
        base = n.args[0]
        if isinstance(base, fx.Node):
            if base.op == "call_function" and base.target is builtins.getattr and \
                    base.args[1] == "shape":
                return base.args[0], n.args[1]
            if base.op == "call_method" and base.target == "size" and len(base.args) == 1:
                return base.args[0], n.args[1]
    return None


def _size_expr(n: fx.Node):
    """``(tensor, axis, factor, divisor)`` for sizes of the form ``size``, ``size * k``,
    ``size // k``; ``None`` for anything else."""
    ref = _size_ref(n)
    if ref is not None:
        return ref[0], ref[1], 1, 1
    if n.op == "call_function" and n.target in (operator.mul, operator.floordiv) and len(n.args) == 2:
        a, b = n.args
        if n.target is operator.mul and isinstance(a, int):
            a, b = b, a
        if isinstance(a, fx.Node) and isinstance(b, int) and b > 0:
            ref = _size_ref(a)
            if ref is not None:
                return (ref[0], ref[1], b, 1) if n.target is operator.mul else (ref[0], ref[1], 1, b)
    return None


def _parse_einsum(equation: str, ndims: list[int]):
    """Letters of every operand's axes and of the output; ``...`` becomes private letters,
    aligned from the right as broadcasting does."""
    eq = equation.replace(" ", "")
    if "->" not in eq:
        return None
    lhs, rhs = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != len(ndims):
        return None
    spans = [nd - (len(term) - 3) if "..." in term else 0 for term, nd in zip(terms, ndims)]
    longest = max(spans, default=0)

    def expand(term: str, k: int) -> str:
        return term.replace("...", "".join(chr(0x100 + longest - k + i) for i in range(k)))

    inputs = []
    for term, nd, k in zip(terms, ndims, spans):
        term = expand(term, k)
        if len(term) != nd:
            return None
        inputs.append(list(term))
    return inputs, list(expand(rhs, longest))
