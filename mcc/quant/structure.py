"""Reading a quantized graph: which ops an int8 engine fuses, which keep the integer grid, and
the per-unit view backends lower from.

A quantized graph is an ordinary FX graph in which

* each quantized Conv/Linear is a ``call_module`` node holding a
  :class:`~mcc.quant.layers.QuantizedLayer` (weight quantizer inside);
* each activation quantizer is a ``call_module`` node holding a
  :class:`~mcc.quant.fake_quant.FakeQuantize` (``role`` input/output/shared); the quantizers of
  a concatenation's inputs are calls of *one* shared module.

:func:`units` turns that into the list of integer kernels to emit, and :func:`quant_params`
into plain numbers.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from mcc.graph import Graph
from mcc.quant.fake_quant import FakeQuantize
from mcc.quant.layers import QuantizedLayer, float_layer

# ---- op tables ----------------------------------------------------------------------------
# Ops whose output lies on the same integer grid as their input: an int8 engine runs them on
# the codes directly, so they need no quantizer of their own.
_PASS_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten,
                 nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.ReLU)
_PASS_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                   F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.max_pool1d,
                   torch.max_pool2d, torch.max_pool3d, torch.flatten, torch.reshape,
                   torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, F.dropout,
                   F.relu, torch.relu, operator.getitem, torch.chunk, torch.split}
_PASS_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze",
                 "contiguous", "relu", "chunk", "split", "view_as", "reshape_as"}

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}


def module_of(gm: fx.GraphModule, node: fx.Node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def is_pass_through(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(gm, node), _PASS_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    return node.op == "call_method" and node.target in _PASS_METHODS


def activation_bounds(gm: fx.GraphModule, node: fx.Node, source: fx.Node) -> tuple[float, float] | None:
    """``(lo, hi)`` if ``node`` is a ReLU, ReLU6, Hardtanh or clamp with constant bounds applied
    to ``source`` — the activations an integer kernel fuses into its output — else None."""
    if not node.args or node.args[0] is not source:
        return None
    inf = math.inf
    if node.op == "call_module":
        m = module_of(gm, node)
        if type(m) is nn.ReLU:
            return (0.0, inf)
        if isinstance(m, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
            return (float(m.min_val), float(m.max_val))
        return None
    args = list(node.args[1:])
    kwargs = dict(node.kwargs)
    kwargs.pop("inplace", None)
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu, torch.relu_) and not args and not kwargs:
            return (0.0, inf)
        if node.target is F.relu6 and not args and not kwargs:
            return (0.0, 6.0)
        if node.target is F.hardtanh:
            return _bounds(args, kwargs, ("min_val", "max_val"), (-1.0, 1.0))
        if node.target in (torch.clamp, torch.clip, torch.clamp_min):
            return _bounds(args, kwargs, ("min", "max"), (-inf, inf))
        return None
    if node.op == "call_method":
        if node.target in ("relu", "relu_") and not args and not kwargs:
            return (0.0, inf)
        if node.target in ("clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"):
            return _bounds(args, kwargs, ("min", "max"), (-inf, inf))
    return None


def _bounds(args, kwargs, names, defaults):
    values = list(defaults)
    for i, v in enumerate(args[:2]):
        values[i] = v
    for i, name in enumerate(names):
        if name in kwargs:
            values[i] = kwargs[name]
    if len(args) > 2 or set(kwargs) - set(names):
        return None
    out = []
    for v, d in zip(values, defaults):
        if v is None:
            v = d
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        out.append(float(v))
    return (out[0], out[1])


def add_operands(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """The two tensor operands of a plain ``a + b`` (no ``alpha``), else None."""
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or \
             (node.op == "call_method" and node.target in ("add", "add_"))
    if not is_add or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    if isinstance(a, fx.Node) and isinstance(b, fx.Node) and is_float_tensor(a) and is_float_tensor(b):
        return a, b
    return None


def cat_operands(node: fx.Node) -> list[fx.Node] | None:
    """The tensors a ``torch.cat`` joins, else None."""
    if node.op != "call_function" or node.target not in _CAT_FUNCTIONS:
        return None
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    if not isinstance(tensors, (list, tuple)) or not all(
            isinstance(t, fx.Node) and is_float_tensor(t) for t in tensors):
        return None
    return list(tensors)


def is_float_tensor(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


# ---- the unit view ------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantUnit:
    """One integer kernel of a quantized graph.

    ``kind`` is ``conv``, ``linear``, ``add`` or ``cat``. ``node`` is the conv/linear/add/cat
    node and ``module`` the layer's module path (None for add/cat). ``activation`` is the node
    of the fused ReLU/ReLU6/clamp (None without one) and ``clamp`` its output bounds.
    ``inputs`` are the activation quantizer nodes whose parameters describe each input (found
    by walking back through ops that keep the grid, such as max-pooling and flatten; None for
    an input that stays float), ``output`` the quantizer node after the unit (None when the
    unit's output is not quantized).
    """

    kind: str
    node: str
    module: str | None
    activation: str | None
    clamp: tuple[float, float] | None
    inputs: tuple[str | None, ...]
    output: str | None


def units(graph: Graph) -> list[QuantUnit]:
    """The quantized units of ``graph`` in execution order."""
    gm = graph.module
    out = []
    for node in gm.graph.nodes:
        m = module_of(gm, node)
        if isinstance(m, QuantizedLayer):
            kind = "linear" if isinstance(m, nn.Linear) else "conv"
            sources = [node.args[0]]
        elif add_operands(node) is not None:
            sources = list(add_operands(node))
            kind = "add"
        elif cat_operands(node) is not None:
            sources = cat_operands(node)
            kind = "cat"
        else:
            continue
        inputs = tuple(_quantizer_above(gm, s) for s in sources)
        if kind in ("add", "cat") and all(i is None for i in inputs):
            continue  # a float add/concat
        end, act, bounds = node, None, None
        if len(node.users) == 1:
            user = next(iter(node.users))
            bounds = activation_bounds(gm, user, node)
            if bounds is not None:
                end, act = user, user.name
        q = _quantizer_after(gm, end)
        if kind == "cat":
            q = None  # a concatenation copies codes: its inputs' shared quantizer is its grid
        out.append(QuantUnit(kind, node.name, node.target if kind in ("conv", "linear") else None,
                             act, bounds, inputs, q))
    return out


def _quantizer_above(gm, node) -> str | None:
    found = _quantizer_node_above(gm, node)
    return found.name if found is not None else None


def _quantizer_node_above(gm, node) -> fx.Node | None:
    while isinstance(node, fx.Node):
        if isinstance(module_of(gm, node), FakeQuantize):
            return node
        joined = cat_operands(node)
        if joined is not None:  # a concatenation of calls of one shared quantizer keeps its grid
            found = [_quantizer_node_above(gm, x) for x in joined]
            if any(f is None for f in found) or len({f.target for f in found}) != 1:
                return None
            return found[0]
        if not is_pass_through(gm, node) or not node.args:
            return None
        node = node.args[0]
    return None


def _quantizer_after(gm, node) -> str | None:
    for user in node.users:
        if isinstance(module_of(gm, user), FakeQuantize):
            return user.name
    return None


# ---- inspection ---------------------------------------------------------------------------
def activation_quantizers(graph: Graph) -> list[tuple[fx.Node, FakeQuantize]]:
    return [(n, m) for n, m in graph.call_modules(FakeQuantize)]


def quantized_layers(graph: Graph) -> list[tuple[fx.Node, QuantizedLayer]]:
    return [(n, m) for n, m in graph.call_modules(QuantizedLayer)]


def biased_layers(graph: Graph) -> list[tuple[QuantizedLayer, FakeQuantize]]:
    """``(layer, input quantizer)`` for every Conv/Linear unit with a bias and a quantized input:
    the layers whose bias an integer engine adds to the int32 accumulator, on the grid of step
    ``S_in·S_w``."""
    out = []
    for unit in units(graph):
        if unit.kind not in ("conv", "linear") or not unit.inputs or unit.inputs[0] is None:
            continue
        layer = graph.module.get_submodule(unit.module)
        if getattr(layer, "bias", None) is not None:
            out.append((layer, graph.submodule(graph.node(unit.inputs[0]))))
    return out


def record_input_scales(graph: Graph) -> None:
    """Give every biased quantized layer its input quantizer's scale (``input_scale``), so that
    it adds its bias on the int32 grid an integer engine uses (see :mod:`mcc.quant.layers`).
    A per-channel input scale has no single grid: such a layer keeps a float bias (0)."""
    for layer, quantizer in biased_layers(graph):
        scale = quantizer.scale.detach()
        layer.input_scale.fill_(float(scale) if scale.numel() == 1 else 0.0)


def is_quantized(graph: Graph) -> bool:
    return any(isinstance(m, (FakeQuantize, QuantizedLayer)) for m in graph.module.modules())


def needs_calibration(graph: Graph) -> bool:
    """True while a quantizer lacks parameters or a layer waits for a data-driven step."""
    return any(not bool(m.calibrated) for _, m in activation_quantizers(graph)) or \
        any(m.pending for _, m in quantized_layers(graph))


def describe(fq: FakeQuantize) -> dict:
    """A quantizer's parameters as plain Python numbers (lists per channel)."""
    scale, zero_point = fq.scale.detach(), fq.zero_point
    per_channel = fq.axis is not None
    return {
        "scale": scale.tolist() if per_channel else float(scale),
        "zero_point": zero_point.tolist() if per_channel else int(zero_point),
        "bits": fq.bits, "signed": fq.signed, "symmetric": fq.symmetric, "axis": fq.axis,
        "quant_min": fq.quant_min, "quant_max": fq.quant_max, "scheme": fq.scheme,
        "role": fq.role, "observer": fq.observer_kind if fq.scheme == "linear" else None,
        "calibrated": bool(fq.calibrated),
    }


def quant_params(graph: Graph) -> dict[str, dict]:
    """``{node name: parameters}`` for every activation quantizer node, and
    ``{layer node name + ".weight": parameters}`` for every quantized layer's weight."""
    out = {}
    for node in graph.nodes:
        m = module_of(graph.module, node)
        if isinstance(m, FakeQuantize):
            out[node.name] = describe(m)
        elif isinstance(m, QuantizedLayer):
            out[f"{node.name}.weight"] = describe(m.weight_quant)
    return out


def strip(graph: Graph) -> Graph:
    """A float copy of a quantized graph: quantizer nodes removed, layers back to ``torch.nn``.

    Weights are the layers' current float weights (changed by AdaRound, bias correction or
    QAT if those ran).
    """
    out = graph.copy()
    gm = out.module
    for node in list(gm.graph.nodes):
        m = module_of(gm, node)
        if isinstance(m, FakeQuantize):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    for name, m in list(gm.named_modules()):
        if isinstance(m, QuantizedLayer):
            parent, _, attr = name.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, attr, float_layer(m))
    gm.delete_all_unused_submodules()
    gm.meta.pop(CONFIG_KEY, None)
    out.recompile()
    return out


#: ``graph.module.meta`` key holding the quantize pass (its options) that made the graph.
CONFIG_KEY = "mcc.quantize"


def storage_bytes(graph: Graph) -> int:
    """Bytes to store the graph's parameters with quantized weights at their bit width.

    Quantized weights count ``bits/8`` bytes per element plus 8 bytes per scale/zero-point
    pair; activation quantizers 8 bytes each; every other parameter and buffer its dtype's size.
    """
    total = 0.0
    counted = set()
    for module in graph.module.modules():
        if isinstance(module, QuantizedLayer):
            fq = module.weight_quant
            total += module.weight.numel() * fq.bits / 8 + 8 * fq.scale.numel()
            counted.add(id(module.weight))
            # input_scale repeats the input quantizer's scale, counted there
            counted.update(id(t) for t in (fq.scale, fq.zero_point, fq.calibrated, module.input_scale))
        elif isinstance(module, FakeQuantize) and id(module.scale) not in counted:
            total += 8 * module.scale.numel()
            counted.update(id(t) for t in (module.scale, module.zero_point, module.calibrated))
    for t in list(graph.module.parameters()) + list(graph.module.buffers()):
        if id(t) not in counted:
            counted.add(id(t))
            total += t.numel() * t.element_size()
    return int(math.ceil(total))


def float_reference(gm: fx.GraphModule) -> fx.GraphModule:
    """A deep copy of ``gm`` with every quantizer (weights and activations) switched off."""
    ref = copy.deepcopy(gm)
    for m in ref.modules():
        if isinstance(m, FakeQuantize):
            m.enabled = False
        if isinstance(m, QuantizedLayer):
            m.pending = ()
    return ref
