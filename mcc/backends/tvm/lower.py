"""Lower an :class:`mcc.Graph` to a Relax module whose convolutions and linear layers call
mcc's own CPU kernels (:mod:`mcc.backends.tvm.kernels`), float or integer.

Relax has no quantized dialect and no pass that turns ``dequantize → conv → quantize`` into
integer code, and its default lowering of a convolution is an unscheduled scalar loop nest.
So the lowering walks the FX graph itself. It is built on TVM's FX importer
(``relax.frontend.torch.from_fx``'s ``TorchFXImporter``): every op mcc has no kernel for is
translated by TVM's own converter, in plain NCHW float; the ops below are mcc's:

* **Conv2d / Linear units** become calls of a kernel in the NCHW16c layout (channels in blocks
  of 16, padded), with the BatchNorm, ReLU/ReLU6/clamp and residual add that follow them fused
  into the kernel's epilogue (float graphs), or, in a quantized graph (see
  docs/passes/quantize.md, "The structure backends read"), as integer kernels: uint8 codes ×
  int8 weight codes accumulated in int32, the bias and the input zero point folded into one
  int32 bias, requantized (float scale, or fixed-point multiplier and shift) to the output
  quantizer's grid with the fused activation as a clamp of the codes. Weights are quantized,
  padded and packed at compile time.
* **Activation quantizers** become quantize kernels; **residual adds** of codes a requantizing
  integer add; **max-pooling**, zero padding, ReLU, flatten and dropout work on the codes; **average
  pooling** dequantizes and runs in float (a global mean is cheap next to the convs). Values stay uint8 NCHW16c between integer ops and are
  dequantized only where a float op reads them. Signed int8 activation grids are shifted by
  128 into uint8 (exact: ``q + 128`` with zero point ``Z + 128``), what ``vpdpbusd`` needs.
  (aarch64's ``sdot`` wants signed bytes: its kernels flip the sign bit back, and their biases
  gain ``128·Σw``, see :func:`~mcc.backends.tvm.kernels.activation_offset`.)

Every value the walk produces is a :class:`Value`: its Relax expression, its layout (``plain``
PyTorch layout, ``blocked`` NCHW{b}c with padded channels, or ``rows``: a 2-D ``[M, Np]`` with
padded columns) and, for codes, its :class:`QParams`. Conversions are inserted on demand, so a
value is re-laid out or dequantized once, where something needs it.

Constants (packed weights, biases, multipliers) become parameters of ``main`` after the graph
inputs, in the order of :attr:`Lowered.constants`, so the artifact stores them beside the
library instead of inside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from tvm import relax
from tvm.relax.frontend.torch.fx_translator import TorchFXImporter

from mcc.backends.tvm import kernels as K
from mcc.backends.tvm.target import CpuTarget
from mcc.errors import BackendError
from mcc.graph import Graph
from mcc.quant import structure as st
from mcc.quant.fake_quant import FakeQuantize
from mcc.quant.layers import QuantizedLayer

R = relax.op
BLOCK = K.BLOCK


# ---- values ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class QParams:
    """The uint8 grid of a tensor of codes: ``x ≈ scale·(q − zero_point)``, ``q ∈ [qmin, qmax]``.

    Signed (int8) quantizers are stored shifted by 128, which changes nothing in the values
    they represent and lets every integer kernel take unsigned activations."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @classmethod
    def of(cls, fq: FakeQuantize) -> "QParams":
        offset = 128 if fq.signed else 0
        return cls(float(fq.scale), int(fq.zero_point) + offset, int(fq.quant_min) + offset,
                   int(fq.quant_max) + offset)

    def clamp_codes(self, bounds: tuple[float, float] | None) -> tuple[int, int]:
        """The code range of ``clamp(y, lo, hi)`` quantized on this grid. Rounding is monotonic,
        so clamping the real value and clamping its code give the same code."""
        lo, hi = self.qmin, self.qmax
        if bounds is not None:
            if bounds[0] != -math.inf:
                lo = max(lo, int(np.rint(bounds[0] / self.scale)) + self.zero_point)
            if bounds[1] != math.inf:
                hi = min(hi, int(np.rint(bounds[1] / self.scale)) + self.zero_point)
        return lo, max(lo, hi)


@dataclass(frozen=True)
class Value:
    """A lowered tensor: ``expr`` in ``layout`` (``plain``, ``blocked``, ``rows``) with
    ``channels`` logical channels (``blocked``/``rows``) and, for uint8 codes, ``q``."""

    expr: relax.Expr
    layout: str = "plain"
    channels: int = 0
    q: QParams | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.expr.ty.shape)

    @property
    def block(self) -> int:
        return self.shape[-1] if self.layout == "blocked" else 0


@dataclass
class Lowered:
    """The result of :func:`lower`: the Relax module (``main(inputs..., constants...)``), the
    constants in parameter order, and what the metadata records."""

    module: object
    constants: list[np.ndarray]
    inputs: list[dict]
    outputs: list[dict]
    float_ops: list[str] = field(default_factory=list)
    integer_units: int = 0
    workloads: list = field(default_factory=list)


# ---- the walk ---------------------------------------------------------------------------------
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_MAXPOOL = (nn.MaxPool2d,)
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_IDENTITY_FUNCTIONS = {F.dropout}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_ELEMENTWISE_MODULES = {nn.Sigmoid: R.sigmoid, nn.SiLU: R.nn.silu, nn.Tanh: R.tanh,
                        nn.Hardswish: None, nn.Hardsigmoid: None, nn.GELU: R.nn.gelu}


class _Env(dict):
    """``node -> plain float Relax expression``, converted on first use from the node's
    :class:`Value` (TVM's converters read their arguments from here)."""

    def __init__(self, convert: Callable):
        super().__init__()
        self._convert = convert

    def __missing__(self, node):
        expr = self._convert(node)
        self[node] = expr
        return expr

    def get(self, node, default=None):
        try:
            return self[node]
        except KeyError:
            return default


class _Params(dict):
    """``parameter tensor -> Relax constant``, made on first use (TVM's converters read module
    weights from here; mcc's kernels pack their own)."""

    def __missing__(self, tensor):
        if not isinstance(tensor, torch.Tensor):
            raise KeyError(tensor)
        const = relax.const(tensor.detach().cpu().numpy())
        self[tensor] = const
        return const


@dataclass
class _Group:
    """Nodes lowered as one kernel call, emitted when the walk reaches ``end``."""

    kind: str  # int-conv | int-add | float-conv
    node: fx.Node
    members: list[fx.Node]
    unit: st.QuantUnit | None = None
    bn: fx.Node | None = None
    act: fx.Node | None = None
    add: fx.Node | None = None
    residual: fx.Node | None = None
    act2: fx.Node | None = None
    out_q: fx.Node | None = None

    @property
    def end(self) -> fx.Node:
        return self.members[-1]


class Lowering(TorchFXImporter):
    """One graph's walk; use :func:`lower`."""

    def __init__(self, graph: Graph, target: CpuTarget, *, schedule: Callable,
                 requantize: str = "scale", allow_float: bool = False):
        super().__init__()
        if requantize not in ("scale", "fixed"):
            raise BackendError(f"requantize must be 'scale' or 'fixed', not {requantize!r}")
        self.graph, self.gm, self.target = graph, graph.module, target
        self.schedule, self.requantize, self.allow_float = schedule, requantize, allow_float
        self.named_modules = dict(self.gm.named_modules())
        self.block_builder = relax.BlockBuilder()
        self.env = _Env(self._env_value)
        self.params = _Params()
        self.values: dict[fx.Node, Value] = {}
        self.const_vars: list[relax.Var] = []
        self.constants: list[np.ndarray] = []
        self.kernels: dict = {}
        self.float_ops: list[str] = []
        self.integer_units = 0
        self.output_q: list[QParams | None] = []
        self.order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        self.quantized = st.is_quantized(graph)
        if self.quantized and st.needs_calibration(graph):
            raise BackendError("the graph's quantizers are not calibrated: run "
                               "mcc.calibrate(graph, data) with a few batches of real inputs "
                               "before compiling (mcc compile: --calib data.npz)")
        self.groups: dict[fx.Node, _Group] = {}
        self.skip: set[fx.Node] = set()
        self._plan()

    # ---- planning: which nodes become one kernel ----------------------------------------
    def _plan(self) -> None:
        if self.quantized:
            for unit in st.units(self.graph):
                node = self.graph.node(unit.node)
                if unit.kind in ("conv", "linear"):
                    reason = self._integer_blocker(unit)
                    if reason is None:
                        self._add_group(self._int_conv_group(unit, node))
                        continue
                    if not self.allow_float:
                        raise BackendError(
                            f"node {node.name!r} ({type(self.named_modules[node.target]).__name__}, "
                            f"made by the quantize pass) cannot run as an integer kernel: "
                            f"{reason}. Compile with allow_float=True (mcc compile --allow-float) to "
                            f"run it in float, or quantize it differently")
                    self.float_ops.append(f"{node.name} ({reason})")
                elif unit.kind == "add" and all(unit.inputs) and unit.output is not None:
                    self._add_group(self._int_add_group(unit, node))
        for node in self.gm.graph.nodes:
            if node in self.skip or node.op != "call_module":
                continue
            module = self.named_modules[node.target]
            if type(module) in (nn.Conv2d, nn.Linear) or (
                    isinstance(module, QuantizedLayer) and isinstance(module, (nn.Conv2d, nn.Linear))):
                self._add_group(self._float_group(node, module))

    def _add_group(self, group: _Group) -> None:
        group.members.sort(key=self.order.__getitem__)
        self.groups[group.end] = group
        self.skip.update(m for m in group.members if m is not group.end)

    def _integer_blocker(self, unit: st.QuantUnit) -> str | None:
        """Why a conv/linear unit cannot be an integer kernel (None when it can)."""
        module = self.named_modules[unit.module]
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            return f"{type(module).__name__} has no integer kernel (Conv2d and Linear have)"
        if unit.inputs[0] is None:
            return "its input is not quantized"
        fq = module.weight_quant
        if fq.scheme == "log2":
            return "log2 weights are powers of two, not integer codes"
        if bool(torch.any(fq.zero_point != 0)):
            return "its weights have zero points (quantize with symmetric=true)"
        if fq.bits > 8:
            return f"{fq.bits}-bit weights do not fit int8"
        if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros"
                                              or isinstance(module.padding, str)):
            return f"padding {module.padding!r}/{module.padding_mode} (only explicit zero padding)"
        return None

    def _single_user(self, node: fx.Node) -> fx.Node | None:
        return next(iter(node.users)) if len(node.users) == 1 else None

    def _int_conv_group(self, unit: st.QuantUnit, node: fx.Node) -> _Group:
        members = [node]
        act = self.graph.node(unit.activation) if unit.activation else None
        end = act or node
        if act is not None:
            members.append(act)
        out_q = self.graph.node(unit.output) if unit.output else None
        if out_q is not None and len(end.users) == 1:
            members.append(out_q)
        else:
            out_q = None
        return _Group("int-conv", node, members, unit=unit, act=act, out_q=out_q)

    def _int_add_group(self, unit: st.QuantUnit, node: fx.Node) -> _Group:
        members = [node]
        act = self.graph.node(unit.activation) if unit.activation else None
        end = act or node
        if act is not None:
            members.append(act)
        out_q = self.graph.node(unit.output)
        if len(end.users) != 1:
            return _Group("int-add", node, members, unit=unit, act=act)
        members.append(out_q)
        return _Group("int-add", node, members, unit=unit, act=act, out_q=out_q)

    def _float_group(self, node: fx.Node, module: nn.Module) -> _Group:
        """A float conv/linear and what its epilogue absorbs: BatchNorm (folded into the
        weights), an activation, a residual add and a second activation, each the only user
        of the one before."""
        group = _Group("float-conv", node, [node])
        cur = node
        user = self._single_user(cur)
        if isinstance(module, nn.Conv2d) and user is not None and user.op == "call_module" and \
                isinstance(self.named_modules[user.target], nn.BatchNorm2d) and \
                self.named_modules[user.target].running_mean is not None and user not in self.skip:
            group.bn = cur = user
            group.members.append(user)
            user = self._single_user(cur)
        if user is not None and user not in self.skip and st.activation_bounds(self.gm, user, cur):
            group.act = cur = user
            group.members.append(user)
            user = self._single_user(cur)
        if user is not None and user not in self.skip and isinstance(module, nn.Conv2d):
            operands = st.add_operands(user)
            if operands is not None and operands[0] is not operands[1] and cur in operands:
                other = operands[1] if operands[0] is cur else operands[0]
                if self.order[other] < self.order[user]:
                    group.add, group.residual = user, other
                    group.members.append(user)
                    cur = user
                    nxt = self._single_user(cur)
                    if nxt is not None and nxt not in self.skip and \
                            st.activation_bounds(self.gm, nxt, cur):
                        group.act2 = nxt
                        group.members.append(nxt)
        return group

    # ---- the walk --------------------------------------------------------------------------
    def run(self) -> Lowered:
        bb = self.block_builder
        inputs, in_meta = [], []
        for node, example in zip([n for n in self.gm.graph.nodes if n.op == "placeholder"],
                                 self.graph.example_inputs):
            dtype = self._convert_data_type(str(example.dtype))
            var = relax.Var(node.name, relax.TensorType(tuple(example.shape), dtype))
            inputs.append(var)
            in_meta.append({"name": node.name, "shape": list(example.shape), "dtype": dtype,
                            "quant": self._input_quant(node)})
        out_meta = []
        with bb.function("main"):
            with bb.dataflow():
                placeholders = iter(inputs)
                for node in self.gm.graph.nodes:
                    if node.op == "placeholder":
                        self._set(node, Value(next(placeholders)))
                    elif node.op == "output":
                        outputs = self._outputs(node.args[0])
                        result = bb.emit_output(outputs[0] if len(outputs) == 1 else relax.Tuple(outputs))
                    elif node in self.skip:
                        continue
                    elif node in self.groups:
                        self._emit_group(self.groups[node])
                    else:
                        self._node(node)
            for expr, q in zip(outputs, self.output_q):
                out_meta.append({"shape": [int(d) for d in expr.ty.shape], "dtype": str(expr.ty.dtype),
                                 "quant": None if q is None else
                                 {"scale": q.scale, "zero_point": q.zero_point, "dtype": "uint8"}})
            bb.emit_func_output(result, params=inputs + self.const_vars)
        names = _output_names(self.gm)
        for meta, name in zip(out_meta, names):
            meta["name"] = name
        mod = bb.get()
        return Lowered(mod, self.constants, in_meta, out_meta, self.float_ops, self.integer_units,
                       list(self.kernels))

    def _input_quant(self, node: fx.Node) -> dict | None:
        """The parameters of the quantizer that reads a graph input (None if none does)."""
        for user in node.users:
            module = self.named_modules.get(user.target) if user.op == "call_module" else None
            if isinstance(module, FakeQuantize):
                q = QParams.of(module)
                return {"scale": q.scale, "zero_point": q.zero_point, "dtype": "uint8",
                        "signed_shift": 128 if module.signed else 0}
        return None

    def _outputs(self, arg) -> list:
        if isinstance(arg, fx.Node):
            value = self.values[arg]
            self.output_q.append(value.q)
            return [self._plain(value)]
        if isinstance(arg, (tuple, list)):
            return [e for a in arg for e in self._outputs(a)]
        raise BackendError(f"graph output {arg!r} is not a tensor; mcc artifacts return tensors")

    def _set(self, node: fx.Node, value: Value) -> None:
        self.values[node] = value
        self.env.pop(node, None)
        if value.layout == "plain" and value.q is None:
            self.env[node] = value.expr

    def _env_value(self, node: fx.Node):
        if node not in self.values:
            raise KeyError(node)
        return self._plain(self.values[node])

    def _emit(self, expr) -> relax.Expr:
        return self.block_builder.emit(expr)

    def _const(self, array: np.ndarray) -> relax.Var:
        """A constant that becomes a parameter of ``main`` (stored beside the library)."""
        array = np.ascontiguousarray(array)
        var = relax.Var(f"c{len(self.constants)}", relax.TensorType(array.shape, str(array.dtype)))
        self.const_vars.append(var)
        self.constants.append(array)
        return var

    # ---- generic nodes ---------------------------------------------------------------------
    def _node(self, node: fx.Node) -> None:
        module = self.named_modules.get(node.target) if node.op == "call_module" else None
        args = [a for a in node.args if isinstance(a, fx.Node)]
        first = self.values.get(args[0]) if args else None
        if isinstance(module, FakeQuantize):
            return self._set(node, self._fake_quant(node, module))
        if first is not None and first.q is not None:
            handled = self._codes_op(node, module, first)
            if handled is not None:
                return self._set(node, handled)
            if first.layout != "plain":
                first = self._dequantize(first)
        if first is not None and first.layout != "plain":
            handled = self._layout_op(node, module, first)
            if handled is not None:
                return self._set(node, handled)
        if first is not None and first.q is None:
            padded = self._zero_pad(node, module, first)  # TVM's converter lacks ZeroPad2d
            if padded is not None:
                return self._set(node, padded)
        self._set(node, Value(self._convert(node, module)))

    def _convert(self, node: fx.Node, module) -> relax.Expr:
        """TVM's own converter, on plain float arguments."""
        if node.op == "get_attr":
            return self._fetch_attr(self.gm, node.target)
        if node.op == "call_module":
            if type(module) is nn.BatchNorm2d:  # TVM's handler computes training-mode statistics
                return self._batch_norm(node, module)
            key = type(module)
        elif node.op == "call_function":
            key = getattr(node.target, "__name__", None)
        else:
            key = node.target
        if key not in self.convert_map:
            what = type(module).__name__ if module is not None else str(key)
            raise BackendError(
                f"node {node.name!r} ({node.op} {what}) has no TVM lowering; it comes from the "
                f"model itself ({self.graph.source} trace), not from an mcc pass. Replace the op "
                "in the model or leave it out of the compiled part")
        try:
            return self.convert_map[key](node)
        except BackendError:
            raise
        except Exception as e:  # TVM converters assert on what they do not support
            raise BackendError(f"node {node.name!r} ({key}) could not be lowered by TVM's "
                               f"converter: {type(e).__name__}: {e}") from None

    def _batch_norm(self, node: fx.Node, bn: nn.BatchNorm2d) -> relax.Expr:
        x = self.env[node.args[0]]
        scale, shift = _bn_affine(bn)
        shape = (1, -1, 1, 1)
        return self._emit(R.add(R.multiply(x, relax.const(scale.reshape(shape))),
                                relax.const(shift.reshape(shape))))

    # ---- layout conversions ------------------------------------------------------------------
    def _plain(self, value: Value) -> relax.Expr:
        """Float, PyTorch layout."""
        if value.q is not None:
            if value.layout == "blocked" and value.shape[-1] == BLOCK and value.expr.ty.dtype == "uint8":
                n, cb, h, w, _ = value.shape
                work = K.Dequantize((n, value.channels, h, w), cb * BLOCK, BLOCK, value.q.scale,
                                    value.q.zero_point)
                return self._call(work, [value.expr])
            value = self._dequantize(value)
        return self._unblock(value).expr

    def _unblock(self, value: Value) -> Value:
        """The same values (float or codes) in PyTorch layout."""
        expr = value.expr
        if value.layout == "blocked":
            b = value.block
            expr = self._emit(R.layout_transform(
                expr, index_map=lambda n, cb, h, w, c: (n, cb * b + c, h, w)))
            if value.shape[1] * b != value.channels:
                expr = self._emit(R.strided_slice(expr, axes=[1], begin=[0], end=[value.channels]))
        elif value.layout == "rows" and value.shape[1] != value.channels:
            expr = self._emit(R.strided_slice(expr, axes=[1], begin=[0], end=[value.channels]))
        return Value(expr, "plain", q=value.q)

    def _blocked(self, value: Value, block: int = BLOCK) -> Value:
        """The same values in NCHW{block}c, channels padded with zeros (codes: the zero point)."""
        if value.layout == "blocked" and value.block == block:
            return value
        if value.layout != "plain":
            value = self._unblock(value)
        if len(value.shape) != 4:
            raise BackendError(f"expected an NCHW image tensor, got shape {value.shape}")
        c = value.shape[1]
        fill = value.q.zero_point if value.q is not None else 0.0
        expr = self._emit(R.layout_transform(
            value.expr, index_map=lambda n, ch, h, w: (n, ch // block, h, w, ch % block),
            pad_value=fill))
        return Value(expr, "blocked", c, value.q)

    def _dequantize(self, value: Value) -> Value:
        """Float values of codes, same layout."""
        q = value.q
        x = R.astype(value.expr, "float32")
        x = R.multiply(R.subtract(x, relax.const(float(q.zero_point))), relax.const(np.float32(q.scale)))
        return Value(self._emit(x), value.layout, value.channels)

    def _quantize(self, value: Value, q: QParams) -> Value:
        """Codes of float values (torch's fake-quant arithmetic: ``nearbyint(x·(1/S)) + Z``)."""
        if value.layout == "plain" and len(value.shape) == 4 and value.expr.ty.dtype == "float32":
            n, c, h, w = value.shape
            block = BLOCK if c > BLOCK else -(-c // 4) * 4
            padded = -(-c // block) * block
            work = K.Quantize((n, c, h, w), padded, block, q.scale, q.zero_point, q.qmin, q.qmax)
            return Value(self._call(work, [value.expr]), "blocked", c, q)
        inv = np.float32(1.0) / np.float32(q.scale)
        x = R.round(R.multiply(value.expr, relax.const(inv)))
        x = R.clip(R.add(x, relax.const(np.float32(q.zero_point))), q.qmin, q.qmax)
        return Value(self._emit(R.astype(x, "uint8")), value.layout, value.channels, q)

    # ---- quantizers and ops on codes ---------------------------------------------------------
    def _fake_quant(self, node: fx.Node, fq: FakeQuantize) -> Value:
        if not _is_activation_quantizer(fq):
            raise BackendError(f"quantizer {node.name!r} ({fq.extra_repr()}) is not an 8-bit "
                               "per-tensor activation quantizer; the integer path needs one")
        q = QParams.of(fq)
        value = self.values[node.args[0]]
        if value.q == q:
            return value
        if value.q is not None:
            value = self._dequantize(value)
        return self._quantize(value, q)

    def _codes_op(self, node: fx.Node, module, value: Value) -> Value | None:
        """Ops that keep the integer grid, run on the codes; None for any other op."""
        q = value.q
        if _is_identity(node, module):
            return value
        if st.activation_bounds(self.gm, node, node.args[0]) == (0.0, math.inf):
            zero = relax.const(np.uint8(q.zero_point))
            return Value(self._emit(R.maximum(value.expr, zero)), value.layout, value.channels, q)
        pool = self._max_pool_args(node, module)
        if pool is not None:
            return self._max_pool(value, *pool)
        if value.layout == "blocked" and value.block == BLOCK and _is_global_avg_pool(node, module):
            out_q = self._quantizer_after(node)
            if out_q is not None:
                return self._avg_pool_codes(value, out_q)
        padded = self._zero_pad(node, module, value)
        if padded is not None:
            return padded
        flat = self._flatten_value(node, value)
        if flat is not None:
            return flat
        cat = st.cat_operands(node)
        if cat is not None:
            return self._cat_codes(node, cat)
        return None

    def _quantizer_after(self, node: fx.Node) -> QParams | None:
        """The activation quantizer that ``node``'s float result reaches through
        flatten and identity ops only (a classifier's input quantizer after global pooling),
        or None."""
        cur = node
        while (user := self._single_user(cur)) is not None:
            module = self.named_modules.get(user.target) if user.op == "call_module" else None
            if isinstance(module, FakeQuantize):
                return QParams.of(module) if _is_activation_quantizer(module) else None
            if not (_is_identity(user, module) or _is_flatten(user, module)):
                return None
            cur = user
        return None

    def _avg_pool_codes(self, value: Value, out_q: QParams) -> Value:
        """Global average pooling on codes: ``Σ(q − Z_in)`` in int32, requantized straight to
        the codes of the quantizer that follows (``out_q``), whose fake-quant op then has
        nothing left to do; the float path would dequantize, average and quantize again."""
        n, cb, h, w, _ = value.shape
        requant = K.Requant.between(value.q.scale, value.q.zero_point, out_q.scale,
                                    out_q.zero_point, out_q.qmin, out_q.qmax, "uint8",
                                    divisor=h * w)
        work = K.Pool2d("avg", n, cb * BLOCK, h, w, (h, w), (1, 1),
                        dtype=str(value.expr.ty.dtype), requant=requant)
        return Value(self._call(work, [value.expr]), "blocked", value.channels, out_q)

    def _cat_codes(self, node: fx.Node, operands: list[fx.Node]) -> Value | None:
        values = [self.values[o] for o in operands]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if any(v.q != values[0].q for v in values) or dim not in (1, -3):
            return None
        if all(v.layout == "blocked" and v.block == BLOCK and v.channels % BLOCK == 0 for v in values):
            expr = self._emit(R.concat([v.expr for v in values], axis=1))
            return Value(expr, "blocked", sum(v.channels for v in values), values[0].q)
        plain = [self._unblock(v).expr for v in values]
        return Value(self._emit(R.concat(plain, axis=1)), "plain", q=values[0].q)

    def _flatten_value(self, node: fx.Node, value: Value) -> Value | None:
        """flatten/view/reshape to ``[N, features]``: free for ``[N, C, 1, 1]`` blocked values
        (the padded channels become padded columns)."""
        module = self.named_modules[node.target] if node.op == "call_module" else None
        info = self.graph.info(node)
        if not _is_flatten(node, module) or info is None or not hasattr(info, "shape") or \
                len(info.shape) != 2:
            return None
        if value.layout == "blocked" and value.block == BLOCK and value.shape[2:4] == (1, 1):
            n, cb = value.shape[:2]
            expr = self._emit(R.reshape(value.expr, (n, cb * BLOCK)))
            return Value(expr, "rows", value.channels, value.q)
        if value.q is None:
            return None
        plain = self._unblock(value)
        return Value(self._emit(R.reshape(plain.expr, tuple(info.shape))), "plain", q=value.q)

    def _max_pool_args(self, node: fx.Node, module):
        """``(kernel, stride, padding, dilation)`` of a 2-D max-pool without ceil mode."""
        if isinstance(module, _MAXPOOL):
            k, s, p, d, ceil = module.kernel_size, module.stride, module.padding, module.dilation, \
                module.ceil_mode
        elif node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
            names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
            got = dict(zip(names, node.args[1:]))
            got.update({k: v for k, v in node.kwargs.items() if k in names})
            k, s, p, d, ceil = (got.get("kernel_size"), got.get("stride"), got.get("padding", 0),
                                got.get("dilation", 1), got.get("ceil_mode", False))
            if s in (None, [], ()):
                s = k
        else:
            return None
        if ceil or (node.op == "call_module" and getattr(module, "return_indices", False)):
            return None
        return _pair(k), _pair(s), _pair(p), _pair(d)

    def _max_pool(self, value: Value, kernel, stride, padding, dilation) -> Value:
        if value.layout != "blocked" or value.block != BLOCK:
            if value.layout == "rows" or len(value.shape) != 4:
                raise BackendError("max pooling needs an NCHW tensor")
            value = self._blocked(value)
        n, cb, h, w, _ = value.shape
        dtype = str(value.expr.ty.dtype)
        work = K.Pool2d("max", n, cb * BLOCK, h, w, kernel, stride,
                        (padding[0], padding[1], padding[0], padding[1]), dtype, dilation=dilation)
        return Value(self._call(work, [value.expr]), "blocked", value.channels, value.q)

    # ---- float ops that keep the blocked layout ---------------------------------------------
    def _layout_op(self, node: fx.Node, module, value: Value) -> Value | None:
        if _is_identity(node, module):
            return value
        bounds = st.activation_bounds(self.gm, node, node.args[0])
        if bounds is not None:
            return Value(self._emit(_clamp(value.expr, bounds)), value.layout, value.channels)
        if node.op == "call_module" and type(module) in _ELEMENTWISE_MODULES and \
                _ELEMENTWISE_MODULES[type(module)] is not None:
            expr = self._emit(_ELEMENTWISE_MODULES[type(module)](value.expr))
            return Value(expr, value.layout, value.channels)
        pool = self._max_pool_args(node, module)
        if pool is not None:
            return self._max_pool(value, *pool)
        padded = self._zero_pad(node, module, value)
        if padded is not None:
            return padded
        if value.layout == "blocked" and value.block == BLOCK and _is_global_avg_pool(node, module):
            expr = self._emit(R.mean(value.expr, axis=[2, 3], keepdims=True))
            return Value(expr, "blocked", value.channels)
        flat = self._flatten_value(node, value)
        if flat is not None:
            return flat
        operands = st.add_operands(node)
        if operands is not None:
            other = self.values.get(operands[1] if operands[0] is node.args[0] else operands[0])
            if other is not None and other.q is None and other.layout == value.layout and \
                    other.shape == value.shape and other.channels == value.channels:
                return Value(self._emit(R.add(value.expr, other.expr)), value.layout, value.channels)
        return None

    def _zero_pad(self, node: fx.Node, module, value: Value) -> Value | None:
        """``nn.ZeroPad2d`` / ``F.pad(x, (l, r, t, b))`` with zeros on H and W (TensorFlow-style
        "same" padding, as EfficientNet-Lite's stride-2 convs have): a pad of the spatial axes
        in any layout; on codes the pad value is the zero point, which is what 0.0 quantizes to."""
        if isinstance(module, nn.ZeroPad2d):
            left, right, top, bottom = module.padding
        elif node.op == "call_function" and node.target is F.pad:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
            fill = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
            if mode != "constant" or fill not in (None, 0, 0.0) or not isinstance(pad, (tuple, list)) \
                    or len(pad) != 4 or not all(isinstance(p, int) and p >= 0 for p in pad):
                return None
            left, right, top, bottom = pad
        else:
            return None
        if value.layout not in ("plain", "blocked") or len(value.shape) not in (4, 5):
            return None
        width = [0, 0] * len(value.shape)
        width[4:8] = [top, bottom, left, right]  # axes 2 (H) and 3 (W) in both layouts
        fill = float(value.q.zero_point) if value.q is not None else 0.0
        expr = self._emit(R.nn.pad(value.expr, width, pad_value=fill))
        return Value(expr, value.layout, value.channels, value.q)

    # ---- kernel calls ---------------------------------------------------------------------------
    def _call(self, work, args: list) -> relax.Expr:
        gvar = self.kernels.get(work)
        if gvar is None:
            func = self.schedule(work).with_attr("op_pattern", 8)  # opaque: FuseOps leaves it
            kind = type(work).__name__.lower()
            gvar = self.block_builder.add_func(func, f"mcc_{kind}_{len(self.kernels)}")
            self.kernels[work] = gvar
        shape, dtype = K.output_shape(work)
        return self._emit(relax.call_tir(gvar, args, relax.TensorType(shape, dtype)))

    def _emit_group(self, group: _Group) -> None:
        if group.kind == "float-conv":
            value = self._float_conv(group)
        elif group.kind == "int-conv":
            value = self._int_conv(group)
        else:
            value = self._int_add(group)
        self._set(group.end, value)

    # ---- float conv / linear ---------------------------------------------------------------------
    def _float_conv(self, g: _Group) -> Value:
        module = self.named_modules[g.node.target]
        x = self.values[g.node.args[0]]
        if isinstance(module, QuantizedLayer):
            weight = module.quantized_weight().detach().numpy().astype(np.float32)
            if x.q is not None:
                self.float_ops.append(g.node.name)
        else:
            weight = module.weight.detach().numpy().astype(np.float32)
        bias = module.bias.detach().numpy().astype(np.float32) if module.bias is not None else \
            np.zeros(weight.shape[0], np.float32)
        if g.bn is not None:
            scale, shift = _bn_affine(self.named_modules[g.bn.target])
            weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
            bias = bias * scale + shift
        clamp = st.activation_bounds(self.gm, g.act, g.act.args[0]) if g.act is not None else None
        clamp2 = st.activation_bounds(self.gm, g.act2, g.act2.args[0]) if g.act2 is not None else None
        epilogue = K.Epilogue("float", clamp=clamp, residual=g.add is not None, clamp2=clamp2)
        if x.q is not None:
            x = self._dequantize(x)
        if isinstance(module, nn.Linear):
            return self._dense(module, x, weight, [bias], epilogue, "float32")
        residual = self.values[g.residual] if g.residual is not None else None
        return self._conv(module, x, weight, [bias], epilogue, "float32", residual=residual)

    def _conv(self, module: nn.Conv2d, x: Value, weight: np.ndarray, consts: list[np.ndarray],
              epilogue: K.Epilogue, dtype: str, residual: Value | None = None,
              pad_value: int = 0, narrow: bool = False) -> Value:
        """Conv2d on ``x`` with the (unpacked, OIHW) ``weight``; per-channel ``consts`` (length
        OC) are padded to the kernel's channels. ``narrow``: int8 weights within 7 bits."""
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise BackendError(f"conv padding {module.padding!r}/{module.padding_mode} is not "
                               "supported by mcc's kernels; use explicit zero padding")
        oc, icg, kh, kw = weight.shape
        groups = module.groups
        ic = icg * groups
        x = self._conv_input(x, ic, groups, dtype)
        n, cb, h, w, b = x.shape
        ph, pw = _pair(module.padding)
        padding = (ph, pw, ph, pw)
        common = dict(kernel=(kh, kw), stride=_pair(module.stride), padding=padding,
                      dilation=_pair(module.dilation), dtype=dtype, epilogue=epilogue,
                      pad_value=pad_value, narrow=narrow, **K.target_fields(self.target))
        if groups > 1 and groups == ic == oc and b == BLOCK:
            work = K.Depthwise2d(n, cb * BLOCK, h, w, **common)
            packed = K.pack_depthwise_weight(weight, cb * BLOCK)
            channels = cb * BLOCK
        else:
            if groups > 1 and not (icg % b == 0 and (oc // groups) % BLOCK == 0):
                weight = _block_diagonal(weight, groups)
                groups = 1
            ocp = K.padded_channels(oc) if groups == 1 else oc
            work = K.Conv2d(n, cb * b, h, w, ocp, groups=groups, in_block=b, **common)
            packed = K.pack_conv_weight(weight, work)
            channels = ocp
        consts = _offset_bias(consts, weight, K.activation_offset(work))
        args = [x.expr, self._const(packed)]
        args += [self._const(_pad(c, channels)) for c in consts]
        if residual is not None:
            r = self._blocked(residual if residual.q is None else self._dequantize(residual))
            args.append(r.expr)
        return Value(self._call(work, args), "blocked", oc)

    def _conv_input(self, x: Value, ic: int, groups: int, dtype: str) -> Value:
        """``x`` blocked as the kernel needs it: 16 channels per block, or for a small image
        (one group, at most 16 channels) all channels in one block (int8: padded to 4)."""
        if x.layout == "rows":
            raise BackendError("a convolution cannot read a flattened tensor")
        if x.layout == "blocked":
            if groups == 1 or x.block == BLOCK:
                return x
            return self._blocked(x)
        c = x.shape[1]
        if c != ic:
            raise BackendError(f"conv expects {ic} input channels, got a tensor of shape {x.shape}")
        if groups == 1 and c <= BLOCK:
            return self._blocked(x, c if dtype == "float32" else -(-c // 4) * 4)
        return self._blocked(x)

    def _dense(self, module: nn.Linear, x: Value, weight: np.ndarray, consts: list[np.ndarray],
               epilogue: K.Epilogue, dtype: str, narrow: bool = False) -> Value:
        """Linear on a 2-D ``x`` (``rows`` with padded columns, or plain)."""
        if x.layout == "blocked":
            x = self._unblock(x)
        if len(x.shape) != 2:
            raise BackendError(f"node input of shape {x.shape}: mcc's dense kernel takes "
                               "[batch, features]; flatten first")
        m, k = x.shape
        expr = x.expr
        if dtype == "int8" and k % 4:
            pad = -(-k // 4) * 4 - k
            expr = self._emit(R.nn.pad(expr, [0, 0, 0, pad], pad_value=float(x.q.zero_point)))
            k += pad
        n = K.padded_channels(weight.shape[0])
        full = np.zeros((weight.shape[0], k), weight.dtype)
        full[:, :weight.shape[1]] = weight
        work = K.Dense(m, n, k, dtype=dtype, epilogue=epilogue, narrow=narrow,
                       **K.target_fields(self.target))
        consts = _offset_bias(consts, weight, K.activation_offset(work))
        args = [expr, self._const(K.pack_dense_weight(full, work))]
        args += [self._const(_pad(c, n)) for c in consts]
        return Value(self._call(work, args), "rows", weight.shape[0])

    # ---- integer conv / linear / add -----------------------------------------------------------
    def _int_conv(self, g: _Group) -> Value:
        module = self.named_modules[g.node.target]
        unit = g.unit
        x = self.values[g.node.args[0]]
        q_in = QParams.of(self.named_modules[self.graph.node(unit.inputs[0]).target])
        if x.q is None or x.q != q_in:  # the walk reached the layer with float or other codes
            x = self._quantize(x if x.q is None else self._dequantize(x), q_in)
        fq = module.weight_quant
        codes = fq.codes(module.weight).numpy()
        oc = codes.shape[0]
        s_acc = np.broadcast_to(module.accumulator_scale(q_in.scale).numpy(), (oc,))
        bias = module.bias_codes(q_in.scale).numpy().astype(np.int64) if module.bias is not None else 0
        # Σ(q − Z)·w = Σ q·w − Z·Σw: the zero point's share is a constant per output channel.
        sum_w = codes.reshape(oc, -1).astype(np.int64).sum(axis=1)
        bias_q = bias - q_in.zero_point * sum_w
        if np.any(np.abs(bias_q) >= 2 ** 31):
            raise BackendError(f"node {g.node.name!r}: its int32 bias overflows (bias too large "
                               "for the input and weight scales); recalibrate or skip the layer")
        bias_q = bias_q.astype(np.int32)
        weight = codes.astype(np.int8)
        # 7-bit weights (quantize{weights=int7}, int4...) let CPUs without VNNI use vpmaddubsw
        narrow = bool(codes.min() >= -64 and codes.max() <= 63)
        self.integer_units += 1
        if g.out_q is not None:
            q_out = QParams.of(self.named_modules[g.out_q.target])
            lo, hi = q_out.clamp_codes(g.unit.clamp)
            real = s_acc / q_out.scale
            if self.requantize == "fixed":
                mult, shift = K.fixed_point(real)
                consts = [bias_q, mult, shift]
            else:
                consts = [bias_q, real.astype(np.float32)]
            epilogue = K.Epilogue(self.requantize, out_dtype="uint8", zero_point=q_out.zero_point,
                                  qmin=lo, qmax=hi)
        else:
            q_out = None
            consts = [bias_q, s_acc.astype(np.float32)]
            epilogue = K.Epilogue("dequant", clamp=g.unit.clamp)
        if isinstance(module, nn.Linear):
            value = self._dense(module, x, weight, consts, epilogue, "int8", narrow=narrow)
        else:
            value = self._conv(module, x, weight, consts, epilogue, "int8", pad_value=q_in.zero_point,
                               narrow=narrow)
        return Value(value.expr, value.layout, value.channels, q_out)

    def _int_add(self, g: _Group) -> Value:
        unit = g.unit
        a, b = (self.values[o] for o in st.add_operands(g.node))
        qa, qb = (QParams.of(self.named_modules[self.graph.node(n).target]) for n in unit.inputs)
        a, b = (v if v.q == q else self._quantize(v if v.q is None else self._dequantize(v), q)
                for v, q in ((a, qa), (b, qb)))
        if a.layout != b.layout or a.shape != b.shape:
            a, b = self._unblock(a), self._unblock(b)
            if a.shape != b.shape:
                a, b = self._blocked(a), self._blocked(b)
        self.integer_units += 1
        if g.out_q is None:  # the sum is read as float by something else
            fa, fb = self._dequantize(a), self._dequantize(b)
            expr = self._emit(_clamp(R.add(fa.expr, fb.expr), g.unit.clamp))
            return Value(expr, a.layout, a.channels)
        q_out = QParams.of(self.named_modules[g.out_q.target])
        lo, hi = q_out.clamp_codes(g.unit.clamp)
        work = K.AddRequant.between(a.shape, (qa.scale, qa.zero_point), (qb.scale, qb.zero_point),
                                    (q_out.scale, q_out.zero_point), lo, hi)
        return Value(self._call(work, [a.expr, b.expr]), a.layout, a.channels, q_out)


# ---- helpers ------------------------------------------------------------------------------
def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _pad(values: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length, values.dtype)
    out[:len(values)] = values
    return out


def _offset_bias(consts: list[np.ndarray], weight: np.ndarray, offset: int) -> list[np.ndarray]:
    """An int8 kernel that sums ``(q − offset)·w`` gets ``offset·Σw`` added to its int32 bias
    (``consts[0]``, one per output channel), so that it still computes ``Σ q·w + bias``."""
    if not offset:
        return consts
    sum_w = weight.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1)
    bias = consts[0].astype(np.int64) + offset * sum_w
    if np.any(np.abs(bias) >= 2 ** 31):
        raise BackendError(f"an int32 bias overflows once the signed-dot-product offset "
                           f"({offset}·Σw) is added; recalibrate, or compile for a CPU without "
                           "dotprod (--target arm)")
    return [bias.astype(np.int32), *consts[1:]]


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNorm as ``x·scale + shift`` per channel (float64 for folding)."""
    mean = bn.running_mean.detach().double().numpy()
    var = bn.running_var.detach().double().numpy()
    gamma = bn.weight.detach().double().numpy() if bn.weight is not None else np.ones_like(mean)
    beta = bn.bias.detach().double().numpy() if bn.bias is not None else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.eps)
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _block_diagonal(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv's weight as the equivalent dense one (zeros between groups)."""
    oc, icg, kh, kw = weight.shape
    ocg = oc // groups
    full = np.zeros((oc, icg * groups, kh, kw), weight.dtype)
    for g in range(groups):
        full[g * ocg:(g + 1) * ocg, g * icg:(g + 1) * icg] = weight[g * ocg:(g + 1) * ocg]
    return full


def _clamp(expr, bounds):
    if bounds is None:
        return expr
    lo, hi = bounds
    if lo != -math.inf:
        expr = R.maximum(expr, relax.const(np.float32(lo)))
    if hi != math.inf:
        expr = R.minimum(expr, relax.const(np.float32(hi)))
    return expr


def _is_identity(node: fx.Node, module) -> bool:
    """Ops that pass their input through unchanged at inference: dropout, identity, contiguous."""
    return isinstance(module, _IDENTITY_MODULES) or node.target in _IDENTITY_FUNCTIONS or \
        (node.op == "call_method" and node.target == "contiguous")


def _is_flatten(node: fx.Node, module) -> bool:
    """flatten/view/reshape, as a function, a module or a method (whatever the target shape)."""
    return (node.op == "call_function" and node.target is torch.flatten) or \
        isinstance(module, nn.Flatten) or \
        (node.op == "call_method" and node.target in _FLATTEN_METHODS)


def _is_activation_quantizer(fq: FakeQuantize) -> bool:
    """8-bit, per-tensor, linear: the quantizers whose codes the integer kernels pass along."""
    return fq.scheme == "linear" and fq.axis is None and fq.bits == 8


def _is_global_avg_pool(node: fx.Node, module) -> bool:
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return _pair(module.output_size) == (1, 1)
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size is not None and _pair(size) == (1, 1)
    if (node.op == "call_function" and node.target is torch.mean) or \
            (node.op == "call_method" and node.target == "mean"):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        return keep and isinstance(dims, (tuple, list)) and sorted(d % 4 for d in dims) == [2, 3]
    return False


def _output_names(gm: fx.GraphModule) -> list[str]:
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    items = out if isinstance(out, (tuple, list)) else [out]
    names = []
    for i, item in enumerate(items):
        names.append(item.name if isinstance(item, fx.Node) else f"output{i}")
    return names if len(names) > 1 else ["output"]


def lower(graph: Graph, target: CpuTarget, *, schedule: Callable, requantize: str = "scale",
          allow_float: bool = False) -> Lowered:
    """Lower ``graph`` (float or quantized and calibrated) for ``target``. ``schedule(workload)``
    returns the scheduled PrimFunc of a kernel (a tuning record, or the hand-written default)."""
    graph = graph.copy().eval()
    with torch.no_grad():
        return Lowering(graph, target, schedule=schedule, requantize=requantize,
                        allow_float=allow_float).run()
