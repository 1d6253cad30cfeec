"""Turn what a user names on the command line into a Graph.

A MODEL argument is one of:

* ``path/to/model.onnx``: imported with :func:`mcc.load`;
* ``path/to/model.pt2``: a ``torch.export`` program (``torch.export.save``), loaded without
  running code from the file;
* ``path/to/model.pt`` / ``.pth``: a pickled ``nn.Module``. Unpickling runs code from the
  file, so it is refused unless the user passes ``unsafe_load`` (``--unsafe-load``);
* ``package.module:function``: a callable returning an ``nn.Module`` or ``(module, example_inputs)``;
* a torchvision classification model name (``resnet18``), built with random weights.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from mcc.errors import ModelError
from mcc.frontends.torch import _canonicalize_aten, trace
from mcc.graph import Graph

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)


def load_model(spec: str, *, input_shape: Sequence[int] | None = None, unsafe_load: bool = False,
               leaf_modules: Sequence[str] = ()) -> Graph:
    """Load the model ``spec`` names (see the module docstring) as a traced Graph."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from mcc.frontends.onnx import load

        return load(path)
    if suffix in (".pt2", ".pt", ".pth"):
        if not path.is_file():
            raise ModelError(f"model file {spec!r} does not exist")
        if suffix == ".pt2":
            return _load_exported(path)
        return _trace(_load_pickled(path, unsafe_load), None, input_shape, leaf_modules)
    if ":" in spec and not os.path.exists(spec):
        model, inputs = _call_factory(spec)
        return _trace(model, inputs, input_shape, leaf_modules)
    return _trace(_torchvision(spec), None, input_shape, leaf_modules)


def example_input(input_shape: Sequence[int] | None) -> torch.Tensor:
    shape = tuple(input_shape or DEFAULT_INPUT_SHAPE)
    if not shape or any(int(d) <= 0 for d in shape):
        raise ModelError(f"input shape {shape} is invalid: give positive sizes like 1,3,224,224")
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) → ``(1, 3, 224, 224)``."""
    parts = [p.strip() for p in text.strip().replace("x", ",").split(",")]
    shape = tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()
    if not shape or any(d <= 0 for d in shape):
        raise ModelError(f"input shape {text!r} is invalid: give positive sizes like 1,3,224,224")
    return shape


def _trace(model: nn.Module, inputs, input_shape, leaf_modules) -> Graph:
    model = model.eval()
    if inputs is None or input_shape is not None:
        inputs = example_input(input_shape)
    return trace(model, inputs, leaf_modules=leaf_modules)


def _load_exported(path: Path) -> Graph:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelError(f"{str(path)!r} is not a readable torch.export program (.pt2): "
                         f"{type(exc).__name__}: {exc}") from None
    inputs = tuple(torch.randn(*n.meta["val"].shape, generator=torch.Generator().manual_seed(0))
                   .to(n.meta["val"].dtype) for n in program.graph.nodes
                   if n.op == "placeholder" and n.name in program.graph_signature.user_inputs)
    gm = _canonicalize_aten(program.module())
    graph = Graph(gm, inputs, source="torch.export")
    graph.eval()
    graph.propagate_shapes()
    return graph


def _load_pickled(path: Path, unsafe_load: bool) -> nn.Module:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not unsafe_load)
    except Exception as exc:
        if not unsafe_load and "weights_only" in str(exc):
            raise ModelError(
                f"{str(path)!r} holds a pickled model; unpickling runs code from the file, so it is "
                "refused by default. If you trust the file, pass --unsafe-load (Python: "
                "unsafe_load=True); better, save models with torch.export.save as .pt2") from None
        raise ModelError(f"cannot read {str(path)!r} as a torch file: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        raise ModelError(f"{str(path)!r} holds a state_dict (weights without the model's code); "
                         "give a module:function that builds the model and loads these weights")
    raise ModelError(f"{str(path)!r} holds a {type(obj).__name__}, not an nn.Module")


def load_callable(spec: str):
    """Import ``package.module:function`` (the current directory is searchable, as with
    ``python -m``) and return the function."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"{spec!r}: write a function as package.module:function")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for {spec!r}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"{spec!r} is not callable")
    return obj


def _call_factory(spec: str):
    factory = load_callable(spec)
    try:
        result = factory()
    except Exception as exc:
        raise ModelError(f"{spec}() raised {type(exc).__name__}: {exc}") from None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module):
        return result
    if isinstance(result, nn.Module):
        return result, None
    raise ModelError(f"{spec}() returned {type(result).__name__}; it must return an nn.Module "
                     "or (module, example_inputs)")


def _torchvision(name: str) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise ModelError(f"{name!r} is not a file or module:function, and torchvision (which "
                         "would provide it as a model name) is not installed: "
                         "pip install torchvision") from None
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        from mcc.pass_manager import did_you_mean

        raise ModelError(f"{name!r} is not a model file (.onnx, .pt2, .pt), a module:function, or a "
                         f"torchvision classification model{did_you_mean(name, names)}")
    return torchvision.models.get_model(name, weights=None)


def save_model(graph: Graph, path: str | os.PathLike) -> None:
    """Write ``graph`` by the output's suffix: ``.onnx``, ``.pt2`` (torch.export) or ``.pt``.

    Writes are atomic. ``.pt`` pickles the GraphModule (loading it back needs trust, see
    :func:`load_model`); ``.pt2`` is the safe torch format.
    """
    from mcc.io import atomic_path, check_output_path

    suffix = Path(path).suffix.lower()
    check_output_path(path)
    if suffix == ".onnx":
        graph.to_onnx(path)
    elif suffix == ".pt2":
        program = torch.export.export(graph.to_torch().eval(), graph.example_inputs, strict=False)
        with atomic_path(path) as tmp:
            torch.export.save(program, tmp)
    elif suffix in (".pt", ".pth"):
        with atomic_path(path) as tmp:
            torch.save(graph.to_torch(), tmp)
    else:
        from mcc.errors import ExportError

        raise ExportError(f"cannot write {str(path)!r}: the output must end in .onnx, .pt2 or .pt")
