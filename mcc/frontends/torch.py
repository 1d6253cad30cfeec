"""PyTorch frontend: capture an ``nn.Module`` as an :class:`mcc.Graph`.

``torch.fx`` symbolic tracing comes first: it keeps ``nn.Module`` calls as ``call_module``
nodes, which is the form every pass works on. Models it cannot trace (data-dependent Python
control flow, iteration over tensors) go through ``torch.export``; the exported ATen graph is
then canonicalised so that its convolutions, linear layers and batch norms become
``call_module`` nodes again.
"""

from __future__ import annotations

import copy
import traceback
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from mcc.errors import ModelError, TraceError
from mcc.graph import Graph


def trace(model: nn.Module, example_inputs, *, leaf_modules: Iterable[str | type] = ()) -> Graph:
    """Trace ``model`` on ``example_inputs`` (a tensor or a tuple of tensors) into a Graph.

    The model is deep-copied first: nothing mcc does later touches the caller's module.
    ``leaf_modules`` (qualified names or module classes) are kept as opaque ``call_module``
    nodes instead of being traced through; use it for submodules with Python control flow.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}; "
                         "pass the model object (for ONNX files use mcc.load)")
    inputs = normalize_inputs(example_inputs)
    model = copy.deepcopy(model)
    _check_runs(model, inputs)
    leaves = tuple(leaf_modules)
    try:
        gm = _lift_layers(_symbolic_trace(model, leaves))
        source = "torch.fx"
    except _TracingFailed as fx_failure:
        try:
            gm = _export(model, inputs)
            source = "torch.export"
        except Exception as export_exc:
            raise TraceError(_explain(fx_failure, export_exc)) from None
    gm.train(model.training)
    graph = Graph(gm, inputs, source=source)
    graph.propagate_shapes()
    return graph


def normalize_inputs(example_inputs) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
            isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise ModelError(
        "example inputs must be a tensor or a non-empty tuple of tensors shaped like the "
        f"model's inputs (for an image model, torch.randn(1, 3, 224, 224)); got "
        f"{_describe(example_inputs)}")


def _describe(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of ({', '.join(_describe(v) for v in value)})"
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)}"
    return type(value).__name__


def _check_runs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> None:
    """Run the model once so that wrong input shapes are reported as such, not as trace bugs."""
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:
        shapes = ", ".join(f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for t in inputs)
        raise ModelError(f"the model fails on the example inputs ({shapes}): "
                         f"{type(exc).__name__}: {_first_line(exc)}; give inputs of the shape "
                         "and dtype the model expects") from None


class _TracingFailed(Exception):
    def __init__(self, module_path: str, module_type: str, cause: BaseException, where: str):
        self.module_path, self.module_type, self.cause, self.where = (
            module_path, module_type, cause, where)


class _Tracer(fx.Tracer):
    """An FX tracer that remembers which module it was inside, to name it when tracing breaks."""

    def __init__(self, leaves: tuple):
        super().__init__()
        self.leaves = leaves
        self.stack: list[tuple[str, str]] = []
        self.failed_in: tuple[str, str] | None = None  # innermost module being traced at failure

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaves or any(isinstance(l, type) and isinstance(m, l) for l in self.leaves):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.stack.append((self.path_of_module(m), type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.stack[-1]
            raise
        finally:
            self.stack.pop()


def _symbolic_trace(model: nn.Module, leaves: tuple) -> fx.GraphModule:
    tracer = _Tracer(leaves)
    try:
        fx_graph = tracer.trace(model)
    except Exception as exc:
        path, kind = tracer.failed_in or ("", type(model).__name__)
        raise _TracingFailed(path, kind, exc, _user_frame(exc)) from exc
    return fx.GraphModule(model, fx_graph, class_name=type(model).__name__)


def _user_frame(exc: BaseException) -> str:
    """The last traceback frame outside torch: the line of model code that broke tracing."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/torch/" not in f.filename and "/mcc/" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _explain(fx_failure: _TracingFailed, export_exc: BaseException) -> str:
    where = f"module {fx_failure.module_path!r} ({fx_failure.module_type})" if fx_failure.module_path \
        else f"the top-level module ({fx_failure.module_type})"
    at = f" at {fx_failure.where}" if fx_failure.where else ""
    hint = (f"mcc.trace(model, inputs, leaf_modules=[{fx_failure.module_path!r}])"
            if fx_failure.module_path else "mcc.trace(model, inputs, leaf_modules=[...])")
    return (f"cannot trace {where}{at}: torch.fx failed with {_first_line(fx_failure.cause)!r} and "
            f"torch.export failed with {_first_line(export_exc)!r}. Mark the module as a leaf "
            f"so it is kept opaque ({hint}, or `--leaf {fx_failure.module_path or 'NAME'}` on "
            f"the CLI), or remove the data-dependent Python control flow from its forward()")


# ---- torch.export fallback ------------------------------------------------------------------
def _export(model: nn.Module, inputs: tuple) -> fx.GraphModule:
    exported = torch.export.export(model, inputs, strict=False)
    return _canonicalize_aten(exported.module())


def _lift_layers(gm: fx.GraphModule) -> fx.GraphModule:
    """Rebuild functional conv/linear calls on a module's own weights as nn modules.

    Subclasses of ``nn.Conv2d`` with their own ``forward`` (TensorFlow-style "same" padding,
    for instance) are traced through to ``F.conv2d(x, self.weight, ...)``; lifting that call
    back to an ``nn.Conv2d`` lets fold-bn, pruning and quantization see the layer.
    """
    if not any(n.op == "call_function" and n.target in _FUNCTIONAL for n in gm.graph.nodes):
        return gm
    return _canonicalize_aten(gm)


_aten = torch.ops.aten
_FUNCTIONAL_CONVS = {torch.conv1d, torch.conv2d, torch.conv3d, F.conv1d, F.conv2d, F.conv3d}
_FUNCTIONAL = _FUNCTIONAL_CONVS | {F.linear}


def _canonicalize_aten(gm: fx.GraphModule) -> fx.GraphModule:
    """Turn ATen conv/linear/batch-norm calls on constant weights into nn modules.

    ``torch.export`` yields a graph whose layers are ``aten.conv2d(x, weight, ...)`` with
    ``get_attr`` weights; passes look for ``nn.Conv2d`` & co, so rebuild those modules. A
    rebuilt module takes the place of the container that held its weights (``layer1.0.conv1``
    stays ``layer1.0.conv1``) and keeps the same attribute names, so other readers of those
    weights are unaffected.
    """
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)  # export's input-shape guard; mcc keeps its own example inputs

    def attr(node):
        if isinstance(node, fx.Node) and node.op == "get_attr":
            return _fetch(gm, node.target)
        return None

    def install(module: nn.Module, weight: fx.Node, fallback: str) -> str:
        owner = weight.target.rpartition(".")[0]
        if not owner or not weight.target.endswith(".weight"):
            owner = _fresh_name(gm, fallback)
        else:
            _rehome_children(gm, owner)
        _set_submodule(gm, owner, module)
        return owner

    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in (_aten.conv1d.default, _aten.conv2d.default, _aten.conv3d.default) \
                or node.target in _FUNCTIONAL_CONVS:
            x, w, b, *rest = list(node.args) + [None] * (7 - len(node.args))
            weight, bias = attr(w), attr(b)
            if weight is None or (b is not None and bias is None):
                continue
            stride, padding, dilation, groups = (list(rest) + [None] * 4)[:4]
            cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[weight.dim() - 2]
            conv = cls(weight.shape[1] * (groups or 1), weight.shape[0], tuple(weight.shape[2:]),
                       stride=stride or 1, padding=padding if padding is not None else 0,
                       dilation=dilation or 1, groups=groups or 1, bias=bias is not None)
            conv.weight = nn.Parameter(weight.detach().clone())
            if bias is not None:
                conv.bias = nn.Parameter(bias.detach().clone())
            _replace(graph, node, install(conv, w, "conv"), x)
        elif node.target is _aten.linear.default or node.target is F.linear:
            x, w, b = (list(node.args) + [None])[:3]
            weight, bias = attr(w), attr(b)
            if weight is None or (b is not None and bias is None):
                continue
            lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            lin.weight = nn.Parameter(weight.detach().clone())
            if bias is not None:
                lin.bias = nn.Parameter(bias.detach().clone())
            _replace(graph, node, install(lin, w, "linear"), x)
        elif node.target is _aten.batch_norm.default:
            x, w, b, mean, var, training, _, eps, _ = node.args
            tensors = [attr(a) for a in (w, b, mean, var)]
            if training or any(t is None for t in tensors):
                continue
            _replace(graph, node, install(_batch_norm_module(x, *tensors, eps), w, "bn"), x)
    graph.eliminate_dead_code()
    # A plain GraphModule: export's module class forbids train()/eval(), which QAT needs.
    return fx.GraphModule(gm, graph, class_name="ExportedModel")


def _batch_norm_module(x: fx.Node, weight, bias, mean, var, eps) -> nn.Module:
    rank = len(x.meta["val"].shape) if "val" in x.meta else 4
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    bn = cls(weight.numel(), eps=eps)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return bn.eval()


def _replace(graph: fx.Graph, node: fx.Node, module_name: str, x: fx.Node) -> None:
    with graph.inserting_before(node):
        new = graph.call_module(module_name, (x,))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _rehome_children(gm: fx.GraphModule, owner: str) -> None:
    """Move the submodules called under ``owner`` (its padding layer, say) to flat names of
    their own, so a rebuilt layer can take ``owner``'s place."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target.startswith(owner + "."):
            name = _fresh_name(gm, node.target.replace(".", "_") + "_")
            gm.add_module(name, gm.get_submodule(node.target))
            node.target = name


def _fresh_name(gm: nn.Module, base: str) -> str:
    i = 0
    while hasattr(gm, f"{base}{i}"):
        i += 1
    return f"{base}{i}"


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _fetch(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
