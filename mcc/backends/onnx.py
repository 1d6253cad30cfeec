"""ONNX export: write an mcc graph as a standard ONNX model that ONNX Runtime runs.

The graph is exported with PyTorch's TorchScript-based exporter (``dynamo=False``) at opset 17
by default, in eval mode, with constant folding (BatchNorm is folded into the convolution
before it). Three steps keep the file useful for people and for :func:`mcc.load`:

* the graph is exported from a copy whose called modules sit directly on the root under
  temporary names. The TorchScript exporter names nodes after the innermost module's own
  attribute name (``/conv1_1/Conv`` for ``layer1.0.conv1`` in a GraphModule, whose code calls
  every module from the root); after export those temporary scopes are replaced by the
  modules' qualified names (``/layer1.0.conv1/Conv``, parameters ``layer1.0.conv1.weight``), so
  a model that goes through ONNX and back keeps its layer names;
* inputs are named like the graph's placeholders, the output ``output`` (``output_0`` ... or the
  returning nodes' names when there are several);
* the file is written to a temporary name beside the target and moved into place in one step.

Quantized graphs need nothing special here: their ``FakeQuantize`` modules write themselves as
QuantizeLinear/DequantizeLinear pairs when ``torch.onnx.is_in_onnx_export()`` (see
:mod:`mcc.quant.fake_quant`). Other graph-level rewrites for export belong in
:func:`_export_module`, which works on a copy.
"""

from __future__ import annotations

import copy
import os
import re
import warnings

import torch
from torch import fx, nn

from mcc.errors import ExportError, MccError
from mcc.io import atomic_path, check_output_path

_ALIAS = "_mcc_export_"
_ALIAS_SCOPE = re.compile(rf"^/{_ALIAS}(\d+)(_\d+)?(?=/)")
_ALIAS_VALUE = re.compile(rf"^{_ALIAS}(\d+)\.")


def export(graph, path: str | os.PathLike, *, opset: int = 17) -> None:
    """Write ``graph`` to ``path`` as ONNX (atomically); the graph itself is not modified.

    Raises :class:`~mcc.errors.ExportError` when the directory is missing or the exporter
    cannot express an operation of the graph at this opset.
    """
    check_output_path(path)
    module, targets = _export_module(graph)
    inputs = tuple(graph.example_inputs)
    with atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about constant shapes
                torch.onnx.export(module, inputs, tmp, dynamo=False, opset_version=opset,
                                  input_names=graph.input_names,
                                  output_names=_output_names(module.graph, graph.input_names),
                                  do_constant_folding=True)
        except MccError:
            raise  # e.g. an uncalibrated quantizer: the graph's own message says what to do
        except Exception as exc:
            text = str(exc).strip()
            reason = text.splitlines()[0] if text else type(exc).__name__
            raise ExportError(f"cannot export the graph to ONNX at opset {opset}: {reason}. Try "
                              "another opset (opset=...), or export the graph before the pass "
                              "that introduced this operation") from exc
        _restore_names(tmp, targets)


def _export_module(graph) -> tuple[fx.GraphModule, list[str]]:
    """An eval-mode copy of ``graph.module`` whose call_module nodes call root attributes
    ``_mcc_export_<i>`` (what ``targets[i]`` names in the graph)."""
    gm = copy.deepcopy(graph.module).eval()
    targets: list[str] = []
    index: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            if node.target not in index:
                index[node.target] = len(targets)
                targets.append(node.target)
            node.target = f"{_ALIAS}{index[node.target]}"
    root = nn.Module()
    for i, target in enumerate(targets):
        root.add_module(f"{_ALIAS}{i}", gm.get_submodule(target))
    for name, child in gm.named_children():
        root.add_module(name, child)  # what get_attr nodes read keeps its place and name
    for name, param in gm.named_parameters(recurse=False):
        root.register_parameter(name, param)
    for name, buffer in gm.named_buffers(recurse=False):
        root.register_buffer(name, buffer)
    module = fx.GraphModule(root, gm.graph, class_name=type(graph.module).__name__)
    return module.eval(), targets


def _output_names(fx_graph: fx.Graph, input_names: list[str]) -> list[str]:
    """``output`` for one output; the returning nodes' names for several (``output_<i>`` where
    that name is taken or the value is not a node)."""
    result = next(n for n in fx_graph.nodes if n.op == "output").args[0]
    leaves = []

    def flatten(value):
        if isinstance(value, (tuple, list)):
            for v in value:
                flatten(v)
        elif isinstance(value, dict):
            for v in value.values():
                flatten(v)
        else:
            leaves.append(value)

    flatten(result)
    if len(leaves) == 1:
        return ["output"]
    names, taken = [], set(input_names)
    for i, leaf in enumerate(leaves):
        name = leaf.name if isinstance(leaf, fx.Node) else None
        if name is None or name in taken:
            name = f"output_{i}"
        taken.add(name)
        names.append(name)
    return names


def _restore_names(path: str, targets: list[str]) -> None:
    """Replace the temporary module names in node and value names with the qualified ones."""
    import onnx

    model = onnx.load(path)
    graph = model.graph

    def value(name: str) -> str:
        return _ALIAS_VALUE.sub(lambda m: targets[int(m.group(1))] + ".", name)

    for node in graph.node:
        node.name = _ALIAS_SCOPE.sub(
            lambda m: "/" + targets[int(m.group(1))] + (m.group(2) or ""), node.name)
        for i, name in enumerate(node.input):
            node.input[i] = value(name)
        for i, name in enumerate(node.output):
            node.output[i] = value(name)
    for tensors in (graph.initializer, graph.input, graph.output, graph.value_info):
        for tensor in tensors:
            tensor.name = value(tensor.name)
    onnx.save(model, path)
