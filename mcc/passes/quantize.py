"""``quantize``: insert fake quantization where an int8 inference engine quantizes.

The quantization points follow the integer execution pattern, so that the accuracy measured on
the fake-quant graph is the accuracy the deployed model has:

* **Units.** A Conv1d/2d/3d or Linear (with BatchNorm already folded by ``fold-bn``), plus a
  ReLU/ReLU6/Hardtanh/clamp that is its only user, is one integer kernel: its weight is
  quantized inside the layer (the ``call_module`` node now holds a
  :class:`~mcc.quant.layers.QuantizedLayer`) and one output quantizer follows the activation —
  none between the layer and its ReLU.
* **Inputs.** Every input of a quantized unit must be quantized: a graph input or the output of
  a float op (average pooling, a sigmoid gate, a mean) gets a quantizer the first time a
  quantized op reads it. Ops that keep the integer grid (max-pooling, flatten, reshape,
  ReLU, dropout…) pass their input's quantization through.
* **Residual adds** of two tensors, at least one of them quantized, run in int8: both inputs
  are quantized and one quantizer follows the add (or its ReLU). Engines add inputs of
  different scales, so each keeps its own.
* **Concatenations** copy codes, which is only exact when all inputs share one scale: every
  input is quantized by calls of one shared quantizer module (the producer of an input then
  writes its codes directly at the shared scale), and the output needs no quantizer.

The quantizers of activations need data: run :func:`mcc.quant.calibrate` (``mcc.calibrate``)
afterwards; until then the graph refuses to run. Weight quantizers are set from the weights at
once. See docs/passes/quantize.md for every option and the exported ONNX format.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import fx, nn

from mcc.graph import Graph
from mcc.pass_manager import AnalysisManager, Pass, PassResult, option, register
from mcc.pipeline import format_value
from mcc.quant import structure as st
from mcc.quant.fake_quant import FakeQuantize, shapes_only
from mcc.quant.layers import QUANTIZED, quantize_layer
from mcc.quant.observers import OBSERVERS

_BITS = {"int8": 8, "int7": 7, "int4": 4, "int2": 2, "binary": 1}
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@register("quantize")
@dataclass(frozen=True)
class Quantize(Pass):
    """Insert fake quantization for weights and activations at the points an int8 engine quantizes.

    Conv/Linear (+ReLU/ReLU6/clamp) units get quantized weights and one output quantizer;
    graph inputs, residual adds and concatenations (with a shared scale) are quantized too.
    Activation quantizers are calibrated afterwards with ``mcc.calibrate(graph, data)``.
    """

    weights: str = option("int8", "weight format: int8, int7 (exact and faster on x86 CPUs "
                          "without VNNI), int4, int2 (ternary) or binary",
                          choices=tuple(_BITS))
    activations: str | None = option("uint8", "activation format; none quantizes weights only",
                                     choices=("uint8", "int8", "none"))
    granularity: str = option("per-channel", "weight scales per output channel or per tensor",
                              choices=("per-channel", "per-tensor"))
    symmetric: bool = option(True, "weights (and int8 activations) with zero point 0; "
                             "false uses the affine scheme with a zero point")
    scheme: str = option("linear", "weight grid: linear (affine) or log2 (signed powers of two)",
                         choices=("linear", "log2"))
    observer: str = option("minmax", "how activation ranges are chosen during calibration",
                           choices=OBSERVERS)
    percentile: float = option(99.99, "percentile kept by observer=percentile", min=50.0,
                               max=100.0, min_open=True)
    weight_observer: str = option("auto", "how weight ranges are chosen; auto: minmax for int8, "
                                  "mse below 8 bits", choices=("auto", "minmax", "mse", "percentile"))
    skip: tuple[str, ...] = option((), "layers left in float: node or module names, "
                                   "quoted shell patterns allowed ('layer1.*')")
    skip_first: bool = option(False, "leave the first Conv/Linear layer in float")
    skip_last: bool = option(False, "leave the last Conv/Linear layer in float")
    rounding: str = option("nearest", "weight rounding; adaround learns it from calibration data",
                           choices=("nearest", "adaround"))
    adaround_steps: int = option(1000, "optimisation steps per layer for rounding=adaround", min=1)
    bias_correction: bool = option(False, "correct each layer's mean output shift caused by "
                                   "weight quantization (uses calibration data)")
    learn_scales: bool = option(False, "make scales trainable parameters (LSQ) for QAT")
    auto_skip: float | None = option(None, "accuracy budget in metric points: calibration keeps "
                                     "in float the fewest layers needed to stay within it", min=0.0)

    preserves = frozenset({"shapes"})  # quantizers keep shapes; new nodes copy their input's

    def validate(self) -> None:
        from mcc.errors import PipelineError

        if self.activations == "none":  # the Python spelling of pipeline text's `none`
            object.__setattr__(self, "activations", None)

        if self.scheme == "log2" and self.weights == "binary":
            raise PipelineError("pass 'quantize': scheme=log2 needs a bit width (int8, int4, int2), "
                                "not binary")
        nonlinear = self.scheme == "log2" or self.weights == "binary"
        if nonlinear and self.rounding == "adaround":
            raise PipelineError("pass 'quantize': rounding=adaround learns rounding on a linear grid; "
                                "it does not apply to log2 or binary weights")
        if nonlinear and self.learn_scales:
            raise PipelineError("pass 'quantize': learn_scales (LSQ) needs linear weights")

    # ---- the pass --------------------------------------------------------------------------
    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        # Shapes are recorded now, and preserved: the quantizers inserted below copy their
        # input's, and until calibration the graph cannot run to recompute them.
        with shapes_only():
            analyses.get("shapes")
        if st.is_quantized(graph):
            return PassResult(graph, False, {"quantized_layers": 0,
                                             "note": "graph is already quantized"})
        gm = graph.module
        candidates, left = self._candidates(graph)
        chosen = self._apply_skips(candidates, left)
        self._quantize_weights(graph, chosen)
        quantized = chosen
        n_quantizers = 0
        if self.activations is not None and quantized:
            n_quantizers = _Placement(self, gm, quantized).run()
        for n, m in graph.call_modules(*_BATCH_NORMS):
            left[n.name] = ("BatchNorm stays in float: run fold-bn before quantize so that the "
                            "folded weights are quantized, as an int8 engine does")
        if quantized:
            gm.meta[st.CONFIG_KEY] = self
            graph.recompile()
        stats = {"quantized_layers": len(quantized), "activation_quantizers": n_quantizers,
                 "weights": self.weights, "activations": self.activations}
        if left:
            stats["left"] = left
        return PassResult(graph, bool(quantized), stats)

    def _candidates(self, graph: Graph) -> tuple[list[fx.Node], dict[str, str]]:
        """Conv/Linear nodes that can be quantized, and why the others cannot."""
        out, left = [], {}
        for node, m in graph.call_modules():
            if type(m) in QUANTIZED:
                if len(node.args) != 1 or node.kwargs:
                    left[node.name] = "layer is called with extra arguments"
                elif not (isinstance(node.args[0], fx.Node) and st.is_float_tensor(node.args[0])):
                    left[node.name] = "input is not a float tensor"
                else:
                    out.append(node)
            elif isinstance(m, _TRANSPOSED):
                left[node.name] = "transposed convolutions are not quantized (they stay float)"
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                left[node.name] = (f"{type(m).__name__} subclasses Conv/Linear with its own "
                                   "forward; it stays float")
        return out, left

    def _apply_skips(self, candidates: list[fx.Node], left: dict[str, str]) -> list[fx.Node]:
        skipped: dict[str, str] = {}
        for pattern in self.skip:
            hits = [n for n in candidates if fnmatch.fnmatchcase(n.name, pattern)
                    or fnmatch.fnmatchcase(str(n.target), pattern)]
            if not hits:
                names = ", ".join(n.name for n in candidates[:12]) + (", …" if len(candidates) > 12 else "")
                raise self.error(f"skip name {format_value(pattern)} matches no Conv/Linear layer; "
                                 f"the quantizable layers are: {names or 'none'}")
            for n in hits:
                skipped[n.name] = f"skipped (skip={pattern})"
        if candidates and self.skip_first:
            skipped.setdefault(candidates[0].name, "first layer (skip_first)")
        if candidates and self.skip_last:
            skipped.setdefault(candidates[-1].name, "last layer (skip_last)")
        left.update(skipped)
        return [n for n in candidates if n.name not in skipped]

    def _quantize_weights(self, graph: Graph, nodes: list[fx.Node]) -> None:
        gm = graph.module
        done: set[str] = set()
        for node in nodes:
            if node.target in done:  # a layer module called from several places
                continue
            layer = gm.get_submodule(node.target)
            fq = self.weight_quantizer(layer.weight.shape[0] if self.granularity == "per-channel" else 1)
            fq.name = node.name
            fq.set_from_weight(layer.weight)
            new = quantize_layer(layer, fq)
            pending = []
            if self.rounding == "adaround":
                pending.append("adaround")
            if self.bias_correction:
                pending.append("bias-correction")
            new.pending = tuple(pending)
            new.adaround_steps = self.adaround_steps
            _set_submodule(gm, node.target, new)
            done.add(node.target)

    # ---- quantizer factories ------------------------------------------------------------
    def weight_quantizer(self, channels: int) -> FakeQuantize:
        bits = _BITS[self.weights]
        scheme = "binary" if self.weights == "binary" else self.scheme
        observer = self.weight_observer
        if observer == "auto":
            observer = "minmax" if bits >= 8 else "mse"
        per_channel = self.granularity == "per-channel"
        return FakeQuantize(bits=bits, signed=True, symmetric=self.symmetric, narrow=self.symmetric,
                            axis=0 if per_channel else None, channels=channels, scheme=scheme,
                            observer=observer, percentile=self.percentile,
                            learn_scale=self.learn_scales, role="weight")

    def activation_quantizer(self, role: str) -> FakeQuantize:
        signed = self.activations == "int8"
        return FakeQuantize(bits=8, signed=signed, symmetric=signed and self.symmetric,
                            observer=self.observer, percentile=self.percentile,
                            learn_scale=self.learn_scales, role=role)


class _Placement:
    """Walks the graph once in execution order and inserts the activation quantizers."""

    def __init__(self, config: Quantize, gm: fx.GraphModule, layers: list[fx.Node]):
        self.config, self.gm, self.graph = config, gm, gm.graph
        self.layers = set(layers)
        self.on_grid: set[fx.Node] = set()  # nodes whose value lies on an integer grid
        self.created: set[fx.Node] = set()
        self.visited: set[fx.Node] = set()
        self.shared_targets: set[str] = set()

    def run(self) -> int:
        for node in list(self.graph.nodes):
            if node in self.created:
                continue
            self.visited.add(node)
            if node in self.layers:
                self.require(node.args[0])
                self.quantize_output(node)
            elif (ops := st.add_operands(node)) is not None:
                if any(o in self.on_grid for o in ops):
                    for o in ops:
                        self.require(o)
                    self.quantize_output(node)
            elif (ops := st.cat_operands(node)) is not None:
                if any(o in self.on_grid for o in ops):
                    self.share(node, ops)
            elif st.is_pass_through(self.gm, node) and node.args and node.args[0] in self.on_grid:
                self.on_grid.add(node)
        return len(self.created)

    def quantize_output(self, node: fx.Node) -> None:
        """One quantizer after ``node`` or after the activation it fuses."""
        end = node
        if len(node.users) == 1:
            user = next(iter(node.users))
            if st.activation_bounds(self.gm, user, node) is not None:
                end = user
                self.visited.add(user)
        self.insert_after(end, "output")

    def require(self, value) -> None:
        """Make sure ``value`` reaches its quantized consumer quantized."""
        if not isinstance(value, fx.Node) or value in self.on_grid:
            return
        self.insert_after(value, "input" if value.op == "placeholder" else "output")

    def insert_after(self, value: fx.Node, role: str) -> fx.Node:
        target = self.new_module(f"{value.name}_quant", self.config.activation_quantizer(role))
        with self.graph.inserting_after(value):
            q = self.graph.call_module(target, (value,))
        value.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
        q.meta["tensor_meta"] = value.meta.get("tensor_meta")
        self.gm.get_submodule(target).name = q.name
        self.created.add(q)
        self.mark(q)
        return q

    def mark(self, node: fx.Node) -> None:
        """``node`` is on the grid, and so are the grid-keeping ops already visited after it."""
        self.on_grid.add(node)
        for user in node.users:
            if user in self.visited and user not in self.on_grid and st.is_pass_through(self.gm, user) \
                    and user.args and user.args[0] is node:
                self.mark(user)

    def share(self, cat: fx.Node, inputs: list[fx.Node]) -> None:
        target = self.new_module(f"{cat.name}_quant", self.config.activation_quantizer("shared"))
        self.gm.get_submodule(target).name = target
        self.shared_targets.add(target)
        new_inputs = []
        for x in inputs:
            if x in self.created and x.target not in self.shared_targets:
                # the producer's own output quantizer becomes a call of the shared module
                old = x.target
                x.target = target
                self.gm.delete_submodule(old)
                new_inputs.append(x)
            else:  # requantize this input to the shared scale
                with self.graph.inserting_before(cat):
                    q = self.graph.call_module(target, (x,))
                q.meta["tensor_meta"] = x.meta.get("tensor_meta")
                self.created.add(q)
                self.on_grid.add(q)
                new_inputs.append(q)
        if cat.args:
            cat.args = (new_inputs,) + tuple(cat.args[1:])
        else:
            cat.kwargs = {**cat.kwargs, "tensors": new_inputs}
        self.on_grid.add(cat)

    def new_module(self, base: str, module: FakeQuantize) -> str:
        name, i = base, 1
        while hasattr(self.gm, name):
            name, i = f"{base}_{i}", i + 1
        self.gm.add_submodule(name, module)
        return name


def _set_submodule(root, target: str, module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)
