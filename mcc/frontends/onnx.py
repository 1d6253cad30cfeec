"""ONNX frontend: import an ONNX file into mcc's graph IR.

The file is read and validated with ``onnx`` (``onnx.checker``), shapes are inferred, and
onnx-graphsurgeon folds constant subgraphs and removes dead nodes. The graph is then rebuilt as
torch.fx in mcc's canonical form, so that every pass works on it unchanged:

* Conv, ConvTranspose, Gemm and MatMul with a constant weight (a MatMul's following bias Add is
  absorbed), BatchNormalization, LayerNormalization and GroupNormalization become
  ``call_module`` nodes holding ``nn.Conv2d``, ``nn.ConvTranspose2d``, ``nn.Linear``,
  ``nn.BatchNorm2d``, ``nn.LayerNorm``, ``nn.GroupNorm`` ... in eval mode;
* every other operator becomes a ``call_function`` node calling a plain torch function
  (``operator.add``, ``torch.cat``, ``F.max_pool2d`` ...), so the result runs without mcc and
  backends that translate torch functions (TVM's FX importer) understand it.

Modules are named after their weights (``layer1.0.conv1.weight`` gives ``layer1.0.conv1``) or
after the ONNX scope in the node name (``/layer1/layer1.0/conv1/Conv``); other nodes after
their ONNX node names (``/layer1/layer1.0/Add`` gives ``layer1_0_add``). These are the names
``skip=[...]`` options take.

Import runs the model once on example inputs while it builds the graph: every value is either a
constant, computed on the spot (shape arithmetic, folded initializers), or a graph node whose
value on the example inputs is known. Shapes are therefore static, fixed by the model's input
shapes; a symbolic batch dimension is taken as 1.
"""

from __future__ import annotations

import math
import operator
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from mcc.errors import OnnxImportError
from mcc.graph import Graph

# ONNX TensorProto element types mcc computes with.
_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
           7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}
_ONNX_DOMAINS = ("", "ai.onnx")
_LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization",
              "LayerNormalization", "GroupNormalization"}


def load(path: str | os.PathLike) -> Graph:
    """Import the ONNX model at ``path`` as an :class:`mcc.Graph` (see the module docstring).

    Raises :class:`~mcc.errors.OnnxImportError` when the file is missing, unreadable or invalid,
    has non-static input shapes, or uses operators mcc does not import (all of them are listed).
    """
    path = Path(path)
    model = _read(path)
    _check(model, path)
    weights = {t.name for t in model.graph.initializer}
    model = _simplify(model, path)
    _check_supported(model, path)
    return _Importer(model, weights).run()


# ---- reading and checking --------------------------------------------------------------------
def _read(path: Path):
    import onnx

    if not path.exists():
        raise OnnxImportError(f"ONNX file {str(path)!r} does not exist; check the path")
    if not path.is_file():
        raise OnnxImportError(f"{str(path)!r} is not a file; give the path of an .onnx file")
    if path.stat().st_size == 0:
        raise OnnxImportError(f"ONNX file {str(path)!r} is empty; export the model again")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors, missing external data files
        raise OnnxImportError(
            f"{str(path)!r} is not a readable ONNX model (truncated, corrupt, or not ONNX at "
            f"all): {_first_line(exc)}; export it again or check the copy") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise OnnxImportError(
            f"{str(path)!r} is not an ONNX model (it has no IR version, opset or graph); "
            "give a file written by an ONNX exporter such as torch.onnx.export")
    return model


def _check(model, path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        listing = _unsupported_listing(model)
        also = f" It also uses operators mcc cannot import: {listing}." if listing else ""
        raise OnnxImportError(
            f"{str(path)!r} is not a valid ONNX model; the ONNX checker says: "
            f"{_first_line(exc)}.{also} Fix the model or export it again") from None


def _simplify(model, path: Path):
    """Infer shapes, fold constant subgraphs, drop dead nodes and sort (onnx-graphsurgeon).

    Folding evaluates constant subgraphs with ONNX Runtime, so that shape computations and
    weight transformations the exporter left in the graph never become graph nodes (and
    constant-only operators mcc lacks stop mattering).
    """
    import onnx
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.logger import G_LOGGER

    try:
        model = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError as exc:
        raise OnnxImportError(f"ONNX shape inference fails on {str(path)!r}: {_first_line(exc)}; "
                              "fix the model or export it again") from None
    with G_LOGGER.suppress():  # graphsurgeon prints a warning for every subgraph it cannot fold
        graph = gs.import_onnx(model)
        graph.fold_constants(error_ok=True).cleanup().toposort()
        return gs.export_onnx(graph, do_type_check=False)


def _check_supported(model, path: Path) -> None:
    """Raise one error naming every operator type mcc cannot import, with counts."""
    listing = _unsupported_listing(model)
    if listing:
        raise OnnxImportError(
            f"{str(path)!r} uses operators mcc cannot import: {listing}. Export the model "
            "without them (torch.onnx.export(..., opset_version=17, dynamo=False) of the PyTorch "
            "model), or replace them with supported operators; docs/onnx.md lists those")


def _unsupported_listing(model) -> str | None:
    """``"Det (2 nodes, first 'det0'), NonZero (1 node, first 'nz')"``, or None."""
    unsupported: dict[str, list[str]] = defaultdict(list)
    for node in model.graph.node:
        if node.domain not in _ONNX_DOMAINS:
            unsupported[f"{node.domain}::{node.op_type}"].append(node.name)
        elif node.op_type not in CONVERTERS:
            unsupported[node.op_type].append(node.name)
    if not unsupported:
        return None
    return ", ".join(
        f"{op} ({len(names)} node{'s' if len(names) > 1 else ''}, first {names[0] or '<unnamed>'!r})"
        for op, names in sorted(unsupported.items()))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# ---- values ----------------------------------------------------------------------------------
class _Const:
    """A value known at import time: an initializer, a Constant, or arithmetic on those.

    ``name`` is the ONNX tensor name (it names the attribute if the value becomes a graph
    constant); ``weight`` marks initializers of the original file, which become parameters.
    """

    __slots__ = ("value", "name", "weight")

    def __init__(self, value, name: str | None = None, weight: bool = False):
        self.value, self.name, self.weight = value, name, weight


class _Dyn:
    """A value computed by the graph: its fx node and its value on the example inputs."""

    __slots__ = ("node", "example")

    def __init__(self, node: fx.Node, example):
        self.node, self.example = node, example


def _val(v):
    """The concrete value: a constant's value or a node's example value."""
    return v.value if isinstance(v, _Const) else v.example


class _Importer:
    def __init__(self, model, weights: set[str]):
        self.model = model
        self.weights = weights
        self.opset = next((o.version for o in model.opset_import if o.domain in _ONNX_DOMAINS), 1)
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[str, _Const | _Dyn] = {}
        self.attrs: dict[int, fx.Node] = {}  # id(_Const) -> its get_attr node
        self.consumers: dict[str, list] = defaultdict(list)
        for n in model.graph.node:
            for name in n.input:
                self.consumers[name].append(n)
        self.outputs = {o.name for o in model.graph.output}
        self.layers_in_scope: dict[str, int] = defaultdict(int)  # ops that may become modules
        for n in model.graph.node:
            if n.op_type in _LAYER_OPS and _scope(n.name):
                self.layers_in_scope[_scope(n.name)[0]] += 1
        self.absorbed: set[str] = set()  # first outputs of ONNX nodes folded into a module
        self.node = None  # the ONNX node being converted

    def run(self) -> Graph:
        from onnx import numpy_helper

        for init in self.model.graph.initializer:
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            self.env[init.name] = _Const(value, init.name, init.name in self.weights)
        inputs = []
        for inp in self.model.graph.input:
            if inp.name in self.env:
                continue
            example = _example_input(inp)
            self.env[inp.name] = _Dyn(self.graph.placeholder(_sanitize(inp.name)), example)
            inputs.append(example)
        if not inputs:
            raise OnnxImportError("the ONNX model has no inputs; mcc imports models that compute "
                                  "from at least one input tensor")
        with torch.no_grad():
            for onnx_node in self.model.graph.node:
                if onnx_node.output[0] not in self.absorbed:
                    self._convert(onnx_node)
        results = [self.as_arg(self.env[o.name]) for o in self.model.graph.output]
        self.graph.output(results[0] if len(results) == 1 else tuple(results))
        gm = fx.GraphModule(self.root, self.graph, class_name="OnnxModel")
        gm.graph.lint()
        gm.eval()
        graph = Graph(gm, inputs, source="onnx")
        graph.propagate_shapes()
        return graph

    def _convert(self, onnx_node) -> None:
        self.node = onnx_node
        args = [self.env[i] if i else None for i in onnx_node.input]
        attrs = _attributes(onnx_node)
        try:
            outs = CONVERTERS[onnx_node.op_type](self, args, attrs)
        except OnnxImportError:
            raise
        except Exception as exc:
            raise OnnxImportError(
                f"cannot import node {self.label()}: {type(exc).__name__}: {_first_line(exc)}. "
                "The model may rely on behaviour mcc does not reproduce; please report it "
                "with the model") from exc
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        for i, name in enumerate(onnx_node.output):
            if not name:
                continue
            if i >= len(outs):
                if self.consumers.get(name) or name in self.outputs:
                    raise self.unsupported(f"its output #{i} ({name!r}) is used")
                continue
            self.env[name] = outs[i]

    # --- naming ------------------------------------------------------------------------------
    def label(self) -> str:
        return f"{self.node.name or self.node.output[0]!r} ({self.node.op_type})"

    def unsupported(self, what: str) -> OnnxImportError:
        return OnnxImportError(f"cannot import node {self.label()}: {what}, which mcc does not "
                               "support; export the model without it")

    def node_name(self) -> str:
        """A readable fx node name from the ONNX node name: ``/layer1/layer1.0/Add`` gives
        ``layer1_0_add``; names without scopes are kept (sanitized)."""
        scoped = _scope(self.node.name)
        if scoped:
            path, op = scoped
            op_base, last = re.sub(r"_\d+$", "", op), path.rpartition(".")[2]
            if re.sub(r"_\d+$", "", last).lower() != op_base.lower():
                path = f"{path}.{_snake(op)}" if path else _snake(op)
            return _sanitize(path.replace(".", "_"))
        return _sanitize(self.node.name or (self.node.output[0] if self.node.output else "")
                         or _snake(self.node.op_type))

    def module_path(self, weight_name: str | None) -> str:
        """Where a new module goes: the weight's name minus ``.weight`` (``layer1.0.conv1``),
        else the ONNX scope (``/layer1/layer1.0/conv1/Conv``), else the node name.

        A scope holding several layer ops is a bigger module calling functions (attention's
        input projection), so its layers are named ``<scope>.<op>`` (``self_attention.matmul``).
        Taken names get a ``_1`` suffix; a path through an existing layer is flattened.
        """
        path = None
        scoped = _scope(self.node.name)
        if weight_name and re.fullmatch(r"[A-Za-z_][\w.]*\.weight", weight_name):
            path = weight_name[: -len(".weight")]
        elif scoped and scoped[0]:
            path = scoped[0]
            if self.layers_in_scope[path] > 1:
                path = f"{path}.{scoped[1].lower()}"
        if not path:
            path = self.node_name()
        parts = [p if p.isdigit() else _sanitize(p) for p in path.split(".") if p]
        # Stop at the first owner that is not a plain container: the rest becomes one name.
        obj = self.root
        for i, p in enumerate(parts[:-1]):
            obj = getattr(obj, p, None)
            if obj is None:
                break
            if type(obj) is not nn.Module:
                parts = parts[:i] + ["_".join(parts[i:])]
                break
        path = ".".join(parts)
        candidate, i = path, 1
        while not _free(self.root, candidate):
            candidate = f"{path}_{i}"
            i += 1
        return candidate

    # --- emitting ----------------------------------------------------------------------------
    def as_arg(self, v):
        """``v`` as an fx argument: a node, a Python scalar for 0-d constants, a get_attr node
        for tensor constants (one attribute per constant, however often it is used)."""
        if isinstance(v, _Dyn):
            return v.node
        if not isinstance(v, _Const):
            return v
        if not isinstance(v.value, torch.Tensor):
            return v.value
        if v.value.dim() == 0:
            return v.value.item()
        if id(v) not in self.attrs:
            self.attrs[id(v)] = self.graph.get_attr(self._register(v))
        return self.attrs[id(v)]

    def _register(self, v: _Const) -> str:
        """Store a constant on the root: float weights of the file as parameters (at their
        dotted name where the hierarchy allows, as ``encoder.pos_embedding``), everything else
        as buffers."""
        base = v.name or f"{self.node_name()}_const"
        dotted = ".".join(_sanitize(p) if not p.isdigit() else p for p in base.split(".") if p)
        is_param = v.weight and v.value.dtype.is_floating_point
        value = v.value.clone()
        for candidate in ([dotted] if is_param and dotted else []) + [_sanitize(base)]:
            owner_path, _, leaf = candidate.rpartition(".")
            if leaf.isdigit() or not _free(self.root, candidate):
                continue
            owner = _ensure_container(self.root, owner_path)
            if is_param:
                owner.register_parameter(leaf, nn.Parameter(value))
            else:
                owner.register_buffer(leaf, value)
            return candidate
        name, i = _sanitize(base), 1
        while not _free(self.root, f"{name}_{i}"):
            i += 1
        name = f"{name}_{i}"
        if is_param:
            self.root.register_parameter(name, nn.Parameter(value))
        else:
            self.root.register_buffer(name, value)
        return name

    def call(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)``: computed now if no input is a graph value, else a
        call_function node (one ``getitem`` node per element when ``fn`` returns a tuple)."""
        return self._emit("call_function", fn, fn, args, kwargs)

    def method(self, name: str, *args, **kwargs):
        """``args[0].name(*args[1:], **kwargs)`` as a call_method node (or computed now)."""
        return self._emit("call_method", name, lambda x, *a, **k: getattr(x, name)(*a, **k),
                          args, kwargs)

    def _emit(self, op: str, target, fn: Callable, args, kwargs):
        if not any(isinstance(a, _Dyn) for a in _leaves((args, kwargs))):
            value = fn(*_map(args, _val), **_map(kwargs, _val))
            if isinstance(value, (tuple, list)):
                return [_Const(v) for v in value]
            return _Const(value)
        example = fn(*_map(args, _val), **_map(kwargs, _val))
        node = self.graph.create_node(op, target, _map(args, self.as_arg),
                                      _map(kwargs, self.as_arg), name=self.node_name())
        if isinstance(example, (tuple, list)):
            return [_Dyn(self.graph.create_node("call_function", operator.getitem, (node, i),
                                                name=f"{node.name}_{i}"), e)
                    for i, e in enumerate(example)]
        return _Dyn(node, example)

    def module(self, module: nn.Module, x, weight_name: str | None = None):
        """Apply a new ``module`` to ``x``: a call_module node named by :meth:`module_path`."""
        module.eval()
        if isinstance(x, _Const):
            return _Const(module(x.value))
        path = self.module_path(weight_name)
        owner_path, _, leaf = path.rpartition(".")
        _ensure_container(self.root, owner_path).add_module(leaf, module)
        node = self.graph.create_node("call_module", path, (x.node,), name=_sanitize(path.replace(".", "_")))
        return _Dyn(node, module(x.example))

    def const(self, v, what: str):
        """The value of input ``v``, which must be known at import time."""
        if v is None:
            return None
        if not isinstance(v, _Const):
            raise OnnxImportError(f"cannot import node {self.label()}: {what} is computed by the "
                                  "graph, and mcc needs it to be a constant (an initializer); "
                                  "export the model with constant folding")
        return v.value

    def optional_const(self, args, i: int, what: str):
        return self.const(args[i], what) if len(args) > i and args[i] is not None else None


# ---- helpers ---------------------------------------------------------------------------------
def _example_input(inp) -> torch.Tensor:
    """A seeded random tensor of the input's shape (zeros for integer inputs)."""
    tensor_type = inp.type.tensor_type
    if not inp.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
        raise OnnxImportError(f"input {inp.name!r} has no tensor shape; mcc needs static input "
                              "shapes: export the model with example inputs of a fixed size")
    if tensor_type.elem_type not in _DTYPES:
        raise OnnxImportError(f"input {inp.name!r} has an element type mcc does not handle "
                              f"(ONNX type {tensor_type.elem_type}); use float, integer or bool inputs")
    shape = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(dim.dim_value)
        elif axis == 0:
            shape.append(1)  # a symbolic batch: examples use batch 1
        else:
            raise OnnxImportError(
                f"input {inp.name!r} has a symbolic dimension {dim.dim_param or '?'!r} at axis "
                f"{axis}; mcc needs static shapes except for the batch: export the model with a "
                "fixed input size, or fix it with onnx.tools.update_model_dims.update_inputs_outputs_dims")
    dtype = _DTYPES[tensor_type.elem_type]
    if dtype.is_floating_point:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    return torch.zeros(*shape, dtype=dtype)


def _scope(name: str) -> tuple[str, str] | None:
    """Module path and op of a scoped ONNX node name, as the TorchScript exporter writes them.

    ``/layer1/layer1.0/conv1/Conv`` gives ``("layer1.0.conv1", "Conv")``. A scope is either
    relative to its parent (``conv1``), continues the previous one (``features.1`` after
    ``features``, ``conv.0`` after ``conv``) or is fully qualified (``layer1.0.conv1``).
    """
    if not name.startswith("/"):
        return None
    *scopes, op = name[1:].split("/")
    path, last = "", ""
    for s in filter(None, scopes):
        if last and s.startswith(last + "."):
            path += s[len(last):]
        elif path and s.startswith(path + "."):
            path = s
        else:
            path = f"{path}.{s}" if path else s
        last = s
    return path, op


def _sanitize(name: str) -> str:
    name = re.sub(r"_+", "_", re.sub(r"\W", "_", name)).strip("_")
    if not name or name[0].isdigit():
        name = "v_" + name
    return name


def _snake(op: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", op).lower()


def _free(root: nn.Module, path: str) -> bool:
    """Whether ``path`` can hold a new attribute: its owners are plain containers (or missing)
    and the name is unused."""
    obj = root
    *owners, leaf = path.split(".")
    for p in owners:
        if not hasattr(obj, p):
            return True
        obj = getattr(obj, p)
        if type(obj) is not nn.Module:
            return False
    return not hasattr(obj, leaf)


def _ensure_container(root: nn.Module, path: str) -> nn.Module:
    obj = root
    for p in filter(None, path.split(".")):
        if not hasattr(obj, p):
            obj.add_module(p, nn.Module())
        obj = getattr(obj, p)
    return obj


def _leaves(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj


def _map(obj, fn):
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        return type(obj)(_map(v, fn) for v in obj)
    if isinstance(obj, (_Const, _Dyn)):
        return fn(obj)
    return obj


def _attributes(node) -> dict[str, Any]:
    from onnx import AttributeProto, helper, numpy_helper

    out = {}
    for a in node.attribute:
        if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            continue  # only control flow has subgraphs, and it is not supported
        value = helper.get_attribute_value(a)
        if a.type == AttributeProto.TENSOR:
            value = torch.from_numpy(numpy_helper.to_array(value).copy())
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[a.name] = value
    return out


def _ints(v) -> list[int]:
    return [int(x) for x in (v.reshape(-1).tolist() if isinstance(v, torch.Tensor) else v)]


def _rank(v) -> int:
    return _val(v).dim()


def _shape(v) -> tuple[int, ...]:
    return tuple(_val(v).shape)


# ---- converters ------------------------------------------------------------------------------
# op type -> converter(importer, inputs, attributes) returning the output value(s).
CONVERTERS: dict[str, Callable] = {}


def converter(*ops: str):
    def register(fn):
        for op in ops:
            CONVERTERS[op] = fn
        return fn

    return register


def _scalar_or(imp, v, other):
    """A one-element constant as a Python number where broadcasting allows it: ``x * 0.5``
    rather than ``x * tensor([0.5])``."""
    if isinstance(v, _Const) and isinstance(v.value, torch.Tensor) and v.value.numel() == 1 \
            and isinstance(other, _Dyn) and other.example.dim() >= v.value.dim() \
            and v.value.dtype == other.example.dtype:
        return _Const(v.value.reshape(()), v.name)
    return v


def _binary(fn: Callable):
    def convert(imp, args, attrs):
        a, b = args
        return imp.call(fn, _scalar_or(imp, a, b), _scalar_or(imp, b, a))

    return convert


for _op, _fn in {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul,
                 "Pow": operator.pow, "Equal": operator.eq, "Less": operator.lt,
                 "Greater": operator.gt, "LessOrEqual": operator.le,
                 "GreaterOrEqual": operator.ge, "And": torch.logical_and,
                 "Or": torch.logical_or, "Xor": torch.logical_xor}.items():
    CONVERTERS[_op] = _binary(_fn)


@converter("Div")
def _div(imp, args, attrs):
    a, b = args
    if _val(a).dtype.is_floating_point:
        return imp.call(operator.truediv, _scalar_or(imp, a, b), _scalar_or(imp, b, a))
    return imp.call(torch.div, a, _scalar_or(imp, b, a), rounding_mode="trunc")  # ONNX truncates


def _unary(fn: Callable):
    return lambda imp, args, attrs: imp.call(fn, args[0])


for _op, _fn in {"Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
                 "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Erf": torch.erf,
                 "Abs": torch.abs, "Neg": torch.neg, "Floor": torch.floor, "Ceil": torch.ceil,
                 "Reciprocal": torch.reciprocal, "Not": torch.logical_not, "Sin": torch.sin,
                 "Cos": torch.cos, "Round": torch.round, "Sign": torch.sign,
                 "Softplus": F.softplus, "Softsign": F.softsign, "HardSwish": F.hardswish,
                 "Mish": F.mish, "IsNaN": torch.isnan}.items():
    CONVERTERS[_op] = _unary(_fn)


@converter("Where")
def _where(imp, args, attrs):
    cond, a, b = args
    return imp.call(torch.where, cond, _scalar_or(imp, a, b), _scalar_or(imp, b, a))


@converter("Max", "Min")
def _max_min(imp, args, attrs):
    is_max = imp.node.op_type == "Max"
    out = args[0]
    for a in args[1:]:
        dyn, other = (out, a) if isinstance(out, _Dyn) else (a, out)
        bound = _scalar_or(imp, other, dyn)
        if isinstance(dyn, _Dyn) and isinstance(bound, _Const) and bound.value.dim() == 0:
            out = imp.call(torch.clamp, dyn, **{"min" if is_max else "max": bound})  # x vs a number
        else:
            out = imp.call(torch.maximum if is_max else torch.minimum, out, a)
    return out


@converter("Sum", "Mean")
def _sum_mean(imp, args, attrs):
    out = args[0]
    for a in args[1:]:
        out = imp.call(operator.add, out, a)
    if imp.node.op_type == "Mean":
        out = imp.call(operator.truediv, out, float(len(args)))
    return out


@converter("Mod")
def _mod(imp, args, attrs):
    a, b = args
    return imp.call(torch.fmod if attrs.get("fmod", 0) else torch.remainder, a, _scalar_or(imp, b, a))


@converter("Identity", "Dropout")
def _identity(imp, args, attrs):
    return args[0]


@converter("Constant")
def _constant(imp, args, attrs):
    name = imp.node.output[0]
    if "value" in attrs:
        return _Const(attrs["value"], name)
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64),
                       ("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in attrs:
            return _Const(torch.tensor(attrs[key], dtype=dtype), name)
    raise imp.unsupported(f"a Constant given as {sorted(attrs)}")


@converter("Cast", "CastLike")
def _cast(imp, args, attrs):
    x = args[0]
    if imp.node.op_type == "Cast":
        if attrs["to"] not in _DTYPES:
            raise imp.unsupported(f"a cast to ONNX element type {attrs['to']}")
        dtype = _DTYPES[attrs["to"]]
    else:
        dtype = _val(args[1]).dtype
    if _val(x).dtype == dtype:
        return x
    return imp.method("to", x, dtype)


@converter("Shape")
def _shape_op(imp, args, attrs):
    shape = torch.tensor(_shape(args[0]), dtype=torch.int64)
    return _Const(shape[attrs.get("start", 0):attrs.get("end", None)])


@converter("Size")
def _size(imp, args, attrs):
    return _Const(torch.tensor(_val(args[0]).numel(), dtype=torch.int64))


@converter("ConstantOfShape")
def _constant_of_shape(imp, args, attrs):
    value = attrs.get("value", torch.zeros(1))
    return _Const(torch.full(_ints(imp.const(args[0], "the shape")), value.item(), dtype=value.dtype))


@converter("Range")
def _range(imp, args, attrs):
    start, limit, delta = (imp.const(a, "the range bounds") for a in args)
    return _Const(torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype))


# --- parametric layers -------------------------------------------------------------------------
def _weight(imp, v, what: str) -> torch.Tensor | None:
    """A constant weight as a float32 copy (never shared with another module or constant)."""
    value = imp.const(v, what)
    return None if value is None else value.detach().clone().float()


def _padding(pads, dims: int, auto_pad: str, kernel, strides, dilations, in_shape):
    """Begin and end paddings per spatial dim from ONNX ``pads`` / ``auto_pad``."""
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(in_shape, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins, ends
    if auto_pad == "VALID" or not pads:
        return [0] * dims, [0] * dims
    return list(pads[:dims]), list(pads[dims:])


def _split_padding(imp, x, begins, ends, value=0.0):
    """Symmetric padding for the layer, plus an explicit ``F.pad`` of ``x`` for the rest
    (asymmetric pads, as TensorFlow-style SAME padding produces)."""
    if begins == ends:
        return x, tuple(begins)
    torch_pad = []
    for b, e in zip(reversed(begins), reversed(ends)):
        torch_pad += [b, e]
    return imp.call(F.pad, x, torch_pad, "constant", value), (0,) * len(begins)


def _conv_geometry(attrs, dims: int):
    return (tuple(attrs.get("strides", [1] * dims)), tuple(attrs.get("dilations", [1] * dims)))


@converter("Conv")
def _conv(imp, args, attrs):
    x, w, b = (args + [None])[:3]
    weight, bias = _weight(imp, w, "the weight"), _weight(imp, b, "the bias")
    dims = weight.dim() - 2
    if dims not in (1, 2, 3):
        raise imp.unsupported(f"a {dims}-d convolution")
    groups = attrs.get("group", 1)
    strides, dilations = _conv_geometry(attrs, dims)
    begins, ends = _padding(attrs.get("pads"), dims, attrs.get("auto_pad", "NOTSET"),
                            weight.shape[2:], strides, dilations, _shape(x)[2:])
    x, padding = _split_padding(imp, x, begins, ends)
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](
        weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=strides,
        padding=padding, dilation=dilations, groups=groups, bias=bias is not None)
    conv.weight = nn.Parameter(weight)
    if bias is not None:
        conv.bias = nn.Parameter(bias)
    return imp.module(conv, x, imp.node.input[1])


@converter("ConvTranspose")
def _conv_transpose(imp, args, attrs):
    x, w, b = (args + [None])[:3]
    weight, bias = _weight(imp, w, "the weight"), _weight(imp, b, "the bias")
    dims = weight.dim() - 2
    if dims not in (1, 2, 3):
        raise imp.unsupported(f"a {dims}-d transposed convolution")
    groups = attrs.get("group", 1)
    strides, dilations = _conv_geometry(attrs, dims)
    kernel = weight.shape[2:]
    out_pad = list(attrs.get("output_padding", [0] * dims))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        in_shape = _shape(x)[2:]
        targets = attrs.get("output_shape") or [n * s for n, s in zip(in_shape, strides)]
        begins, ends = [], []
        for i in range(dims):
            full = strides[i] * (in_shape[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
            total = full - targets[-dims:][i]
            if total < 0:
                raise imp.unsupported("an output_shape larger than the full transposed convolution")
            small, large = total // 2, total - total // 2
            begins.append(large if auto_pad == "SAME_LOWER" else small)
            ends.append(small if auto_pad == "SAME_LOWER" else large)
    else:
        begins, ends = _padding(attrs.get("pads"), dims, auto_pad, kernel, strides, dilations, ())
    padding = [min(p, q) for p, q in zip(begins, ends)]
    conv = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1](
        weight.shape[0], weight.shape[1] * groups, tuple(kernel), stride=strides,
        padding=tuple(padding), output_padding=tuple(out_pad), groups=groups,
        dilation=dilations, bias=bias is not None)
    conv.weight = nn.Parameter(weight)
    if bias is not None:
        conv.bias = nn.Parameter(bias)
    out = imp.module(conv, x, imp.node.input[1])
    if begins != ends:  # crop what the symmetric padding left: a negative F.pad
        crop = []
        for bgn, end, p in zip(reversed(begins), reversed(ends), reversed(padding)):
            crop += [p - bgn, p - end]
        out = imp.call(F.pad, out, crop)
    return out


def _linear(imp, x, weight: torch.Tensor, bias: torch.Tensor | None, weight_name: str | None):
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    lin.weight = nn.Parameter(weight.contiguous())
    if bias is not None:
        lin.bias = nn.Parameter(bias.contiguous())
    return imp.module(lin, x, weight_name)


def _row_bias(c: torch.Tensor, n: int) -> torch.Tensor | None:
    """``c`` as a per-output bias of length ``n`` if it broadcasts as one, else None."""
    if c.dim() <= 2 and all(d == 1 for d in c.shape[:-1]) and (c.dim() == 0 or c.shape[-1] in (1, n)):
        return c.reshape(-1).expand(n).clone().float()
    return None


@converter("Gemm")
def _gemm(imp, args, attrs):
    a, b, c = (args + [None])[:3]
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if attrs.get("transA", 0):
        a = imp.call(torch.transpose, a, 0, 1)
    if isinstance(a, _Dyn) and isinstance(b, _Const) and b.value.dtype.is_floating_point:
        weight = b.value if attrs.get("transB", 0) else b.value.t()
        bias = None
        if isinstance(c, _Const):
            bias = _row_bias(beta * c.value, weight.shape[0])
        if c is None or bias is not None:
            return _linear(imp, a, (alpha * weight).float().clone(), bias, imp.node.input[1])
    if attrs.get("transB", 0):
        b = imp.call(torch.transpose, b, 0, 1)
    out = imp.call(torch.matmul, a, b)
    if alpha != 1.0:
        out = imp.call(operator.mul, out, alpha)
    if c is not None:
        out = imp.call(operator.add, out, imp.call(operator.mul, c, beta) if beta != 1.0 else c)
    return out


@converter("MatMul")
def _matmul(imp, args, attrs):
    a, b = args
    if isinstance(a, _Dyn) and isinstance(b, _Const) and b.value.dim() == 2 \
            and b.value.dtype.is_floating_point and a.example.dim() >= 1:
        weight = b.value.t().float().clone()
        bias, add = _following_bias(imp, weight.shape[0])
        out = _linear(imp, a, weight, bias, imp.node.input[1])
        if add is not None:  # the Add was absorbed into the layer
            imp.absorbed.add(add.output[0])
            imp.env[add.output[0]] = out
        return out
    return imp.call(torch.matmul, a, b)


def _following_bias(imp, n: int):
    """The constant bias a MatMul's only consumer adds (how exporters write nn.Linear on
    3-d inputs), and that Add node; (None, None) if there is none."""
    out = imp.node.output[0]
    users = imp.consumers.get(out, [])
    if len(users) != 1 or out in imp.outputs or users[0].op_type != "Add" or users[0].domain not in _ONNX_DOMAINS:
        return None, None
    add = users[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    value = imp.env.get(other)
    if not isinstance(value, _Const) or not value.value.dtype.is_floating_point or value.value.dim() > 1:
        return None, None
    bias = _row_bias(value.value, n)
    return (bias, add) if bias is not None else (None, None)


@converter("BatchNormalization")
def _batch_norm(imp, args, attrs):
    x, scale, bias, mean, var = args[:5]
    if attrs.get("training_mode", 0):
        raise imp.unsupported("training_mode=1")
    tensors = [_weight(imp, v, "the BatchNormalization parameters") for v in (scale, bias, mean, var)]
    rank = _rank(x)
    if rank not in (2, 3, 4, 5):
        raise imp.unsupported(f"a rank-{rank} input")
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    bn = cls(tensors[0].numel(), eps=attrs.get("epsilon", 1e-5), momentum=1 - attrs.get("momentum", 0.9))
    with torch.no_grad():
        for target, value in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), tensors):
            target.copy_(value)
    return imp.module(bn, x, imp.node.input[1])


@converter("LayerNormalization")
def _layer_norm(imp, args, attrs):
    x, scale, bias = (args + [None])[:3]
    axis = attrs.get("axis", -1) % _rank(x)
    shape = _shape(x)[axis:]
    scale, bias = _weight(imp, scale, "the scale"), _weight(imp, bias, "the bias")
    ln = nn.LayerNorm(shape, eps=attrs.get("epsilon", 1e-5), bias=bias is not None)
    with torch.no_grad():
        ln.weight.copy_(scale.expand(shape))
        if bias is not None:
            ln.bias.copy_(bias.expand(shape))
    return imp.module(ln, x, imp.node.input[1])


@converter("GroupNormalization")
def _group_norm(imp, args, attrs):
    x, scale, bias = args
    groups, channels = attrs["num_groups"], _shape(x)[1]
    scale, bias = _weight(imp, scale, "the scale"), _weight(imp, bias, "the bias")
    if scale.numel() == groups and groups != channels:  # opset 18: one scale per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    gn = nn.GroupNorm(groups, channels, eps=attrs.get("epsilon", 1e-5))
    with torch.no_grad():
        gn.weight.copy_(scale)
        gn.bias.copy_(bias)
    return imp.module(gn, x, imp.node.input[1])


@converter("InstanceNormalization")
def _instance_norm(imp, args, attrs):
    x, scale, bias = args
    return imp.call(F.instance_norm, x, weight=scale, bias=bias, eps=attrs.get("epsilon", 1e-5))


# --- pooling ----------------------------------------------------------------------------------
def _pool_padding(imp, x, attrs, dims: int, value: float):
    kernel = attrs["kernel_shape"]
    strides = attrs.get("strides", [1] * dims)
    dilations = attrs.get("dilations", [1] * dims)
    begins, ends = _padding(attrs.get("pads"), dims, attrs.get("auto_pad", "NOTSET"), kernel,
                            strides, dilations, _shape(x)[2:])
    # torch pools pad at most half the kernel: pad larger amounts explicitly.
    if begins != ends or any(p > k // 2 for p, k in zip(begins, kernel)):
        if value == 0.0 and not attrs.get("count_include_pad", 0) and any(begins + ends):
            raise imp.unsupported("average pooling that excludes asymmetric or oversized padding")
        torch_pad = []
        for b, e in zip(reversed(begins), reversed(ends)):
            torch_pad += [b, e]
        return imp.call(F.pad, x, torch_pad, "constant", value), (0,) * dims
    return x, tuple(begins)


@converter("MaxPool")
def _max_pool(imp, args, attrs):
    x = args[0]
    if len(imp.node.output) > 1 and imp.node.output[1]:
        raise imp.unsupported("the indices output of MaxPool")
    dims = len(attrs["kernel_shape"])
    x, padding = _pool_padding(imp, x, attrs, dims, -math.inf)
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
    return imp.call(fn, x, tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", [1] * dims)),
                    padding, tuple(attrs.get("dilations", [1] * dims)), bool(attrs.get("ceil_mode", 0)))


@converter("AveragePool")
def _avg_pool(imp, args, attrs):
    x = args[0]
    dims = len(attrs["kernel_shape"])
    if any(d != 1 for d in attrs.get("dilations", [1] * dims)):
        raise imp.unsupported("dilated average pooling")
    x, padding = _pool_padding(imp, x, attrs, dims, 0.0)
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
    return imp.call(fn, x, tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", [1] * dims)),
                    padding, bool(attrs.get("ceil_mode", 0)), bool(attrs.get("count_include_pad", 0)))


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(imp, args, attrs):
    x = args[0]
    dims = _rank(x) - 2
    if dims not in (1, 2, 3):
        raise imp.unsupported(f"a rank-{dims + 2} input")
    if imp.node.op_type == "GlobalAveragePool":
        fn = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[dims - 1]
    else:
        fn = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[dims - 1]
    return imp.call(fn, x, 1)


# --- shapes and indexing -------------------------------------------------------------------------
@converter("Flatten")
def _flatten(imp, args, attrs):
    x = args[0]
    shape = _shape(x)
    axis = attrs.get("axis", 1) % (len(shape) + 1)
    if axis == 1 and len(shape) >= 2:
        return imp.call(torch.flatten, x, 1)
    return imp.call(torch.reshape, x, (math.prod(shape[:axis]), math.prod(shape[axis:])))


@converter("Reshape")
def _reshape(imp, args, attrs):
    x, shape = args
    target = _ints(imp.const(shape, "the target shape"))
    src = _shape(x)
    if not attrs.get("allowzero", 0):
        target = [src[i] if d == 0 else d for i, d in enumerate(target)]
    if tuple(target) == src:
        return x
    return imp.call(torch.reshape, x, tuple(target))


@converter("Transpose")
def _transpose(imp, args, attrs):
    x = args[0]
    perm = tuple(attrs.get("perm", reversed(range(_rank(x)))))
    if perm == tuple(range(len(perm))):
        return x
    return imp.call(torch.permute, x, perm)


def _axes(imp, args, attrs, i: int = 1):
    """Axes given as input ``i`` (newer opsets) or as the ``axes`` attribute."""
    if len(args) > i and args[i] is not None:
        return _ints(imp.const(args[i], "axes"))
    return list(attrs["axes"]) if "axes" in attrs else None


@converter("Squeeze")
def _squeeze(imp, args, attrs):
    axes = _axes(imp, args, attrs)
    if axes is None:
        return imp.call(torch.squeeze, args[0])
    return imp.call(torch.squeeze, args[0], tuple(a % _rank(args[0]) for a in axes))


@converter("Unsqueeze")
def _unsqueeze(imp, args, attrs):
    x = args[0]
    axes = _axes(imp, args, attrs)
    rank = _rank(x) + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = imp.call(torch.unsqueeze, x, axis)
    return x


@converter("Concat")
def _concat(imp, args, attrs):
    parts = [a for a in args if a is not None and _val(a).numel() > 0]
    if len(parts) == 1:
        return parts[0]
    return imp.call(torch.cat, parts, attrs["axis"])


@converter("Split")
def _split(imp, args, attrs):
    x = args[0]
    axis = attrs.get("axis", 0) % _rank(x)
    sizes = _axes(imp, args, {"axes": attrs["split"]} if "split" in attrs else {})
    if sizes is None:
        n = attrs.get("num_outputs", len(imp.node.output))
        size = _shape(x)[axis]
        chunk = math.ceil(size / n)
        sizes = [chunk] * (n - 1) + [size - chunk * (n - 1)]
    return imp.call(torch.split, x, sizes, axis)


@converter("Slice")
def _slice(imp, args, attrs):
    x = args[0]
    if imp.opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes"), None
    else:
        starts = _ints(imp.const(args[1], "starts"))
        ends = _ints(imp.const(args[2], "ends"))
        axes = _axes(imp, args, {}, 3)
        steps = _axes(imp, args, {}, 4)
    rank, shape = _rank(x), _shape(x)
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * rank
    flip = []
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= rank
        size = shape[a]
        s, e = s + size if s < 0 else s, e + size if e < 0 else e
        if st > 0:
            index[a] = slice(min(max(s, 0), size), min(max(e, 0), size), st)
        else:  # negative steps: slice the flipped axis forwards
            s, e = min(max(s, 0), size - 1), min(max(e, -1), size - 1)
            flip.append(a)
            index[a] = slice(size - 1 - s, size - 1 - e, -st)
    if flip:
        x = imp.call(torch.flip, x, tuple(flip))
    while index and index[-1] == slice(None):
        index.pop()
    if all(i == slice(None, None, None) or (i.start == 0 and i.stop == shape[d] and i.step == 1)
           for d, i in enumerate(index)):
        return x
    return imp.call(operator.getitem, x, tuple(index))


@converter("Gather")
def _gather(imp, args, attrs):
    x, idx = args
    axis = attrs.get("axis", 0) % _rank(x)
    size = _shape(x)[axis]
    if isinstance(idx, _Const):
        index = torch.where(idx.value < 0, idx.value + size, idx.value).long()
        if index.dim() == 0:
            return imp.call(torch.select, x, axis, int(index))
        flat = imp.call(torch.index_select, x, axis, _Const(index.reshape(-1)))
    else:
        index = imp.call(torch.remainder, idx, size)  # negative indices count from the end
        flat = imp.call(torch.index_select, x, axis, imp.call(torch.reshape, index, (-1,)))
    out_shape = _shape(x)[:axis] + tuple(_val(idx).shape) + _shape(x)[axis + 1:]
    if out_shape == _shape(flat):
        return flat
    return imp.call(torch.reshape, flat, out_shape)


@converter("GatherElements")
def _gather_elements(imp, args, attrs):
    x, idx = args
    axis = attrs.get("axis", 0) % _rank(x)
    if isinstance(idx, _Const):
        idx = _Const(torch.where(idx.value < 0, idx.value + _shape(x)[axis], idx.value).long())
    return imp.call(torch.gather, x, axis, idx)


@converter("Expand")
def _expand(imp, args, attrs):
    x, shape = args
    target = tuple(torch.broadcast_shapes(_shape(x), tuple(_ints(imp.const(shape, "the shape")))))
    if target == _shape(x):
        return x
    return imp.method("expand", x, target)


@converter("Tile")
def _tile(imp, args, attrs):
    return imp.call(torch.tile, args[0], tuple(_ints(imp.const(args[1], "repeats"))))


@converter("Pad")
def _pad(imp, args, attrs):
    x = args[0]
    rank = _rank(x)
    pads = _ints(imp.const(args[1], "pads")) if imp.opset >= 11 else list(attrs["pads"])
    value = imp.optional_const(args, 2, "the pad value")
    value = value.item() if value is not None else attrs.get("value", 0.0)
    axes = _axes(imp, args, {}, 3) or list(range(rank))
    n = len(axes)
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begins[a % rank], ends[a % rank] = pads[i], pads[i + n]
    torch_pad = []
    for b, e in zip(reversed(begins), reversed(ends)):
        torch_pad += [b, e]
    while len(torch_pad) > 2 and torch_pad[-2:] == [0, 0]:
        torch_pad = torch_pad[:-2]
    mode = attrs.get("mode", "constant")
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    if mode not in modes:
        raise imp.unsupported(f"Pad mode {mode!r}")
    if not any(torch_pad):
        return x
    if mode == "constant":
        return imp.call(F.pad, x, torch_pad, "constant", value)
    return imp.call(F.pad, x, torch_pad, modes[mode])


@converter("DepthToSpace")
def _depth_to_space(imp, args, attrs):
    x, b = args[0], attrs["blocksize"]
    if attrs.get("mode", "DCR") == "CRD":
        return imp.call(F.pixel_shuffle, x, b)
    n, c, h, w = _shape(x)
    x = imp.call(torch.reshape, x, (n, b, b, c // (b * b), h, w))
    x = imp.call(torch.permute, x, (0, 3, 4, 1, 5, 2))
    return imp.call(torch.reshape, x, (n, c // (b * b), h * b, w * b))


@converter("SpaceToDepth")
def _space_to_depth(imp, args, attrs):
    x, b = args[0], attrs["blocksize"]
    n, c, h, w = _shape(x)
    x = imp.call(torch.reshape, x, (n, c, h // b, b, w // b, b))
    x = imp.call(torch.permute, x, (0, 3, 5, 1, 2, 4))
    return imp.call(torch.reshape, x, (n, c * b * b, h // b, w // b))


@converter("ScatterND")
def _scatter_nd(imp, args, attrs):
    data, indices, updates = args
    if attrs.get("reduction", "none") != "none":
        raise imp.unsupported(f"ScatterND reduction {attrs['reduction']!r}")
    idx = imp.const(indices, "the indices")
    shape = _shape(data)
    idx = idx.reshape(-1, idx.shape[-1])
    idx = torch.where(idx < 0, idx + torch.tensor(shape[:idx.shape[-1]]), idx)
    columns = tuple(_Const(c.contiguous()) for c in idx.t())
    values = imp.call(torch.reshape, updates, (idx.shape[0],) + shape[idx.shape[1]:])
    return imp.call(torch.index_put, data, columns, values)


# --- activations and normalisation ---------------------------------------------------------------
@converter("Clip")
def _clip(imp, args, attrs):
    x = args[0]
    if imp.opset >= 11:
        lo, hi = imp.optional_const(args, 1, "min"), imp.optional_const(args, 2, "max")
        lo, hi = (None if v is None else v.item() for v in (lo, hi))
    else:
        lo, hi = attrs.get("min"), attrs.get("max")
    if lo == 0 and hi == 6:
        return imp.call(F.relu6, x)
    if lo is None and hi is None:
        return x
    return imp.call(torch.clamp, x, lo, hi)


@converter("LeakyRelu")
def _leaky_relu(imp, args, attrs):
    return imp.call(F.leaky_relu, args[0], attrs.get("alpha", 0.01))


@converter("Elu")
def _elu(imp, args, attrs):
    return imp.call(F.elu, args[0], attrs.get("alpha", 1.0))


@converter("Selu")
def _selu(imp, args, attrs):
    alpha, gamma = attrs.get("alpha", 1.67326319217681884765625), attrs.get("gamma", 1.05070102214813232421875)
    if abs(alpha - 1.6732632) > 1e-6 or abs(gamma - 1.0507010) > 1e-6:
        raise imp.unsupported("Selu with non-default alpha/gamma")
    return imp.call(F.selu, args[0])


@converter("HardSigmoid")
def _hard_sigmoid(imp, args, attrs):
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
        return imp.call(F.hardsigmoid, args[0])
    return imp.call(torch.clamp, imp.call(operator.add, imp.call(operator.mul, args[0], alpha), beta), 0.0, 1.0)


@converter("Gelu")
def _gelu(imp, args, attrs):
    return imp.call(F.gelu, args[0], approximate=attrs.get("approximate", "none"))


@converter("PRelu")
def _prelu(imp, args, attrs):
    x, slope = args
    if isinstance(slope, _Const) and _rank(x) >= 2:
        s = slope.value
        channels = _shape(x)[1]
        if s.numel() == 1 or (s.numel() == channels and s.dim() >= _rank(x) - 1
                              and s.shape[-(_rank(x) - 1)] == channels):
            return imp.call(F.prelu, x, _Const(s.reshape(-1).float().clone(), slope.name, slope.weight))
    negative = imp.call(operator.mul, imp.call(torch.clamp, x, None, 0.0), slope)
    return imp.call(operator.add, imp.call(F.relu, x), negative)


@converter("Softmax", "LogSoftmax")
def _softmax(imp, args, attrs):
    x = args[0]
    fn = F.softmax if imp.node.op_type == "Softmax" else F.log_softmax
    rank = _rank(x)
    axis = attrs.get("axis", -1 if imp.opset >= 13 else 1) % rank
    if imp.opset >= 13 or axis == rank - 1:
        return imp.call(fn, x, axis)
    # Before opset 13 the input is coerced to 2-d at ``axis`` and normalised over the rest.
    shape = _shape(x)
    flat = imp.call(torch.reshape, x, (math.prod(shape[:axis]), math.prod(shape[axis:])))
    return imp.call(torch.reshape, imp.call(fn, flat, 1), shape)


@converter("LRN")
def _lrn(imp, args, attrs):
    size = attrs["size"]
    if size % 2 == 0:
        raise imp.unsupported("LRN with an even size")
    return imp.call(F.local_response_norm, args[0], size, attrs.get("alpha", 1e-4),
                    attrs.get("beta", 0.75), attrs.get("bias", 1.0))


# --- reductions -----------------------------------------------------------------------------------
def _reduce(kind: str):
    def convert(imp, args, attrs):
        x = args[0]
        axes = _axes(imp, args, attrs)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(_rank(x)))
        dims = tuple(sorted(a % _rank(x) for a in axes))
        if kind == "prod":
            for d in reversed(dims):
                x = imp.call(torch.prod, x, d, keep)
            return x
        if kind in ("l2", "sum_square"):
            total = imp.call(torch.sum, imp.call(operator.mul, x, x), dims, keep)
            return imp.call(torch.sqrt, total) if kind == "l2" else total
        if kind == "l1":
            return imp.call(torch.sum, imp.call(torch.abs, x), dims, keep)
        fn = {"mean": torch.mean, "sum": torch.sum, "max": torch.amax, "min": torch.amin,
              "logsumexp": torch.logsumexp}[kind]
        return imp.call(fn, x, dims, keep)

    return convert


for _op, _kind in {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max",
                   "ReduceMin": "min", "ReduceProd": "prod", "ReduceL1": "l1", "ReduceL2": "l2",
                   "ReduceSumSquare": "sum_square", "ReduceLogSumExp": "logsumexp"}.items():
    CONVERTERS[_op] = _reduce(_kind)


@converter("ArgMax", "ArgMin")
def _argmax(imp, args, attrs):
    if attrs.get("select_last_index", 0):
        raise imp.unsupported("select_last_index=1")
    fn = torch.argmax if imp.node.op_type == "ArgMax" else torch.argmin
    return imp.call(fn, args[0], attrs.get("axis", 0), bool(attrs.get("keepdims", 1)))


@converter("TopK")
def _topk(imp, args, attrs):
    k = int(imp.const(args[1], "k").reshape(-1)[0])
    return imp.call(torch.topk, args[0], k, attrs.get("axis", -1), bool(attrs.get("largest", 1)),
                    bool(attrs.get("sorted", 1)))


@converter("CumSum")
def _cumsum(imp, args, attrs):
    x = args[0]
    axis = int(imp.const(args[1], "the axis").reshape(-1)[0]) % _rank(x)
    if attrs.get("reverse", 0):
        x = imp.call(torch.flip, x, (axis,))
    out = imp.call(torch.cumsum, x, axis)
    if attrs.get("exclusive", 0):
        out = imp.call(operator.sub, out, x)
    if attrs.get("reverse", 0):
        out = imp.call(torch.flip, out, (axis,))
    return out


# --- other tensor operations -----------------------------------------------------------------------
@converter("Einsum")
def _einsum(imp, args, attrs):
    return imp.call(torch.einsum, attrs["equation"], *args)


@converter("Trilu")
def _trilu(imp, args, attrs):
    k = imp.optional_const(args, 1, "k")
    return imp.call(torch.triu if attrs.get("upper", 1) else torch.tril, args[0],
                    0 if k is None else int(k))


@converter("Resize", "Upsample")
def _resize(imp, args, attrs):
    x = args[0]
    shape = _shape(x)
    if imp.node.op_type == "Upsample":
        scales, sizes = imp.const(args[1], "the scales"), None
    else:
        scales = imp.optional_const(args, 2, "the scales")
        sizes = imp.optional_const(args, 3, "the sizes")
        if attrs.get("axes") or attrs.get("antialias", 0) or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise imp.unsupported("Resize with axes, antialias or a keep_aspect_ratio_policy")
    if sizes is not None and sizes.numel():
        out, factors = _ints(sizes), None
    else:
        out = [int(math.floor(s * f)) for s, f in zip(shape, scales.tolist())]
        factors = tuple(float(f) for f in scales.tolist()[2:])
    if list(out[:2]) != list(shape[:2]):
        raise imp.unsupported("resizing the batch or channel axis")
    # Given scales, torch maps coordinates with them (as ONNX does), not with the size ratio.
    size = {"scale_factor": factors} if factors else {"size": tuple(out[2:])}
    mode = attrs.get("mode", "nearest")
    coord = attrs.get("coordinate_transformation_mode", "half_pixel" if imp.opset >= 11 else "asymmetric")
    dims = len(shape) - 2
    if mode == "nearest":
        # Upsample and opset-10 Resize index with floor(x / scale).
        rounding = attrs.get("nearest_mode", "round_prefer_floor" if imp.opset >= 11 else "floor")
        if coord == "asymmetric" and rounding == "floor":
            return imp.call(F.interpolate, x, mode="nearest", **size)
        # Integer upsampling never rounds a tie, so both round_prefer modes are torch's.
        if coord in ("half_pixel", "pytorch_half_pixel") and rounding.startswith("round_prefer") \
                and all(o % i == 0 for o, i in zip(out[2:], shape[2:])):
            return imp.call(F.interpolate, x, mode="nearest-exact", **size)
        raise imp.unsupported(f"nearest resizing with {coord} coordinates and {rounding} rounding")
    torch_mode = {"linear": {1: "linear", 2: "bilinear", 3: "trilinear"}.get(dims),
                  "cubic": "bicubic" if dims == 2 else None}.get(mode)
    if torch_mode is None or coord not in ("half_pixel", "pytorch_half_pixel", "align_corners") \
            or (mode == "cubic" and (attrs.get("cubic_coeff_a", -0.75) != -0.75
                                     or attrs.get("exclude_outside", 0))):
        raise imp.unsupported(f"{mode} resizing of {dims}-d data with {coord} coordinates")
    return imp.call(F.interpolate, x, mode=torch_mode, align_corners=coord == "align_corners", **size)


# --- quantization -----------------------------------------------------------------------------------
def _per_axis(imp, v, rank: int, axis: int):
    """A per-axis scale or zero point shaped to broadcast along ``axis`` (scalars as numbers)."""
    value = v.value
    if value.numel() == 1:
        return value.reshape(()).item()
    shape = [1] * rank
    shape[axis % rank] = -1
    return _Const(value.reshape(shape).clone())


@converter("QuantizeLinear")
def _quantize_linear(imp, args, attrs):
    x, scale, zero_point = (args + [None])[:3]
    if attrs.get("block_size", 0):
        raise imp.unsupported("blocked quantization")
    imp.const(scale, "the scale")
    if zero_point is None:
        zero_point = _Const(torch.zeros((), dtype=torch.uint8))
    imp.const(zero_point, "the zero point")
    dtype = zero_point.value.dtype
    info = torch.iinfo(dtype)
    rank, axis = _rank(x), attrs.get("axis", 1)
    q = imp.call(torch.round, imp.call(operator.truediv, x, _per_axis(imp, scale, rank, axis)))
    zp = _per_axis(imp, _Const(zero_point.value.float()), rank, axis)
    if not isinstance(zp, (int, float)) or zp != 0:
        q = imp.call(operator.add, q, zp)
    return imp.method("to", imp.call(torch.clamp, q, info.min, info.max), dtype)


@converter("DequantizeLinear")
def _dequantize_linear(imp, args, attrs):
    q, scale, zero_point = (args + [None])[:3]
    if attrs.get("block_size", 0):
        raise imp.unsupported("blocked quantization")
    imp.const(scale, "the scale")
    rank, axis = _rank(q), attrs.get("axis", 1)
    x = imp.method("to", q, torch.float32)
    if zero_point is not None:
        imp.const(zero_point, "the zero point")
        zp = _per_axis(imp, _Const(zero_point.value.float()), rank, axis)
        if not isinstance(zp, (int, float)) or zp != 0:
            x = imp.call(operator.sub, x, zp)
    return imp.call(operator.mul, x, _per_axis(imp, scale, rank, axis))


SUPPORTED_OPERATORS = tuple(sorted(CONVERTERS))
