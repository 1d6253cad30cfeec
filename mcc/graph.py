"""mcc's graph IR: a ``torch.fx.GraphModule`` with shapes and dtypes recorded on every node.

The IR stays an ordinary, trainable ``nn.Module`` so that QAT and distillation run on the
compressed graph itself. Parametric layers are ``call_module`` nodes holding standard
``torch.nn`` modules (``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.Linear`` ...), whichever frontend
produced the graph, so every pass is written once against that form.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of the value a node produces (one entry per tensor for tuple outputs)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{str(self.dtype).removeprefix('torch.')}[{', '.join(map(str, self.shape))}]"


class Graph:
    """A traced model: an FX ``GraphModule`` plus the example inputs its shapes were recorded with.

    Build one with :func:`mcc.trace` (PyTorch) or :func:`mcc.load` (ONNX). Shapes and dtypes are
    recorded in ``node.meta["tensor_meta"]`` (the ``ShapeProp`` convention) and read with
    :meth:`info`. Passes keep them current through the ``shapes`` analysis.
    """

    def __init__(self, module: fx.GraphModule, example_inputs: Sequence[torch.Tensor], *,
                 source: str = "torch"):
        self.module = module
        self.example_inputs = tuple(example_inputs)
        self.source = source

    # --- access -----------------------------------------------------------------------
    @property
    def fx_graph(self) -> fx.Graph:
        return self.module.graph

    @property
    def nodes(self) -> Iterator[fx.Node]:
        return iter(self.module.graph.nodes)

    def node(self, name: str) -> fx.Node:
        for n in self.module.graph.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def submodule(self, node: fx.Node) -> torch.nn.Module:
        """The module a ``call_module`` node calls."""
        return self.module.get_submodule(node.target)

    def call_modules(self, *types: type) -> Iterator[tuple[fx.Node, torch.nn.Module]]:
        """``(node, module)`` for every call_module node whose module is one of ``types``."""
        for n in list(self.module.graph.nodes):
            if n.op == "call_module":
                mod = self.module.get_submodule(n.target)
                if not types or isinstance(mod, types):
                    yield n, mod

    @property
    def input_names(self) -> list[str]:
        return [n.name for n in self.module.graph.nodes if n.op == "placeholder"]

    @property
    def training(self) -> bool:
        return self.module.training

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def parameters(self):
        return self.module.parameters()

    def eval(self) -> "Graph":
        self.module.eval()
        return self

    def train(self, mode: bool = True) -> "Graph":
        self.module.train(mode)
        return self

    # --- shapes -----------------------------------------------------------------------
    def propagate_shapes(self) -> None:
        """Run the example inputs through the graph and record each node's shape and dtype."""
        with torch.no_grad():
            ShapeProp(self.module).propagate(*self.example_inputs)

    @staticmethod
    def info(node: fx.Node) -> TensorInfo | tuple | None:
        """The recorded shape/dtype of ``node``'s value (a tuple for multi-output nodes)."""
        return _to_info(node.meta.get("tensor_meta"))

    # --- copies and export --------------------------------------------------------------
    def copy(self) -> "Graph":
        """A deep copy: parameters, buffers and node metadata are not shared."""
        return Graph(copy.deepcopy(self.module), self.example_inputs, source=self.source)

    def recompile(self) -> None:
        """Regenerate the module's code after the FX graph was edited, and lint it."""
        self.module.graph.lint()
        self.module.recompile()

    def to_torch(self) -> torch.nn.Module:
        """A plain ``nn.Module`` (the GraphModule's generated code) that needs nothing from mcc."""
        module = copy.deepcopy(self.module)
        for n in module.graph.nodes:
            n.meta.clear()
        return module

    def to_onnx(self, path, *, opset: int = 17) -> None:
        """Write the graph as an ONNX model that ONNX Runtime runs (see :mod:`mcc.backends.onnx`)."""
        from mcc.backends.onnx import export

        export(self, path, opset=opset)

    def __repr__(self) -> str:
        n_nodes = sum(1 for _ in self.nodes)
        return f"<mcc.Graph from {self.source}: {n_nodes} nodes, inputs {self.input_names}>"

    def __str__(self) -> str:
        rows = []
        for n in self.nodes:
            target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
            if n.op == "call_module":
                target = f"{n.target}: {type(self.submodule(n)).__name__}"
            args = ", ".join(a.name if isinstance(a, fx.Node) else repr(a) for a in n.args)
            info = self.info(n)
            rows.append(f"{n.name:<28} {n.op:<13} {str(target):<40} ({args}) -> {info if info else ''}")
        return "\n".join(rows)


def module_call_counts(gm: fx.GraphModule) -> dict[str, int]:
    """How many ``call_module`` nodes call each submodule: a module called from several places
    shares its weights between them, so a pass that rewrites it must rewrite all or none."""
    counts: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            counts[n.target] = counts.get(n.target, 0) + 1
    return counts


def _to_info(meta) -> TensorInfo | tuple | None:
    if meta is None:
        return None
    if hasattr(meta, "shape") and hasattr(meta, "dtype"):  # ShapeProp's TensorMetadata
        return TensorInfo(tuple(int(d) for d in meta.shape), meta.dtype)
    if isinstance(meta, (tuple, list)):
        return tuple(_to_info(m) for m in meta)
    if isinstance(meta, dict):
        return {k: _to_info(v) for k, v in meta.items()}
    return None
