"""``factorize``: replace linear and convolution layers by products of low-rank factors.

A trained weight rarely uses all of its rank: most of its energy (the sum of its squared
singular values) lies in a few directions. Keeping those directions turns one layer into two
or three thinner ones whose MACs add up to less:

* ``svd`` (Linear, 1×1 convolution): ``W = U·Σ·Vᵀ ≈ (U_r·√Σ_r)(√Σ_r·V_rᵀ)``, a layer
  ``in → r`` (carrying the stride and padding) then ``r → out`` (carrying the bias).
* ``spatial-svd`` (k_h×k_w Conv2d, Jaderberg et al. 2014): the SVD of the weight arranged as
  the matrix ``M[(c, i), (o, j)] = W[o, c, i, j]`` gives a k_h×1 convolution ``C_in → r``
  followed by a 1×k_w convolution ``r → C_out``.
* ``tucker2`` (k×k convolution, Kim et al. 2016): the higher-order SVD of the weight along its
  output- and input-channel modes, ``W ≈ G ×₀ U_out ×₁ U_in``, gives a 1×1 convolution
  ``C_in → r_in`` (``U_inᵀ``), a k×k core ``r_in → r_out`` (``G``) with the original stride,
  padding and dilation, and a 1×1 convolution ``r_out → C_out`` (``U_out``, with the bias).

Ranks come from an absolute or relative ``rank``, an ``energy`` fraction of the squared
spectrum, or a model-wide MAC budget ``target_macs``, met by the rank choice that discards
the least normalised energy (a knapsack solved by dynamic programming, :func:`allocate`).
The factors are ordinary ``nn.Linear`` / ``nn.Conv*d`` modules, held by an ``nn.Sequential``
in the original layer's place and called one by one from the graph, so the result trains,
fine-tunes, quantizes and exports to ONNX like any other graph. See docs/passes/factorize.md
for the maths.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import fx, nn

from mcc.errors import PassError, PipelineError
from mcc.graph import Graph, module_call_counts
from mcc.pass_manager import AnalysisManager, Pass, PassResult, option, register

METHODS = ("svd", "spatial-svd", "tucker2")
DEFAULT_ENERGY = 0.9  # used when none of rank, energy and target_macs is given
FACTORIZED_KEY = "mcc.factorized"  # GraphModule.meta: module name -> how it was factorized

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_WEIGHTED = (nn.Linear, nn.Bilinear) + _CONVS + _TRANSPOSED
_SUPPORT = {"svd": "Linear and 1×1 convolutions (Conv1d/2d/3d)",
            "spatial-svd": "Conv2d with a kernel larger than 1×1",
            "tucker2": "Conv1d/2d/3d with a kernel larger than 1"}


@register("factorize")
@dataclass(frozen=True)
class Factorize(Pass):
    """Replace linear and conv layers by low-rank factors (SVD, spatial SVD, Tucker-2).

    ``svd`` splits Linear and 1×1 convolutions in two (``in → r → out``); ``spatial-svd`` splits
    a k×k Conv2d into k×1 then 1×k; ``tucker2`` turns a k×k convolution into 1×1 → k×k core →
    1×1. Ranks come from ``rank`` (an integer, or a fraction of full rank), ``energy`` (the
    smallest rank keeping that fraction of the squared singular values; 0.9 when nothing else
    is given) or ``target_macs`` (per-layer ranks chosen so the model keeps that fraction of its
    MACs, discarding as little energy as possible). A layer is left alone, and the report says
    why, unless its MACs fall by at least ``min_reduction``; grouped convolutions are left
    alone too, or refused when named in ``layers``. Statistics list each layer's rank, kept
    energy and MAC saving.
    """

    method: str = option("svd", "svd: Linear and 1×1 conv; spatial-svd: k×k conv → k×1, 1×k; "
                         "tucker2: k×k conv → 1×1, k×k core, 1×1", choices=METHODS)
    rank: int | float | None = option(None, "rank of every layer: an integer, or a fraction of "
                                      "its full rank in (0, 1]")
    energy: float | None = option(None, "keep the smallest rank whose singular values hold this "
                                  "fraction of the squared spectrum (the default, 0.9, when "
                                  "neither rank nor target_macs is given), in (0, 1]")
    target_macs: float | None = option(None, "choose per-layer ranks so that the model keeps "
                                       "this fraction of its MACs, in (0, 1)")
    round_to: int = option(8, "make ranks chosen from a fraction, energy or budget multiples of "
                           "this (rounding up; an integer rank is used as given)", min=1)
    min_reduction: float = option(0.0, "leave a layer alone unless its MACs fall by at least this "
                                  "fraction (a layer never gets more expensive)",
                                  min=0.0, max=1.0, max_open=True)
    layers: tuple[str, ...] = option((), "only these layers: node or module names, shell "
                                     "patterns (a module name covers its submodules); "
                                     "empty: every layer the method supports")
    skip: tuple[str, ...] = option((), "never these layers (names or patterns, as layers)")

    def validate(self) -> None:
        # Range checks here rather than in option(): the pass manager reports a value out of
        # range of an optional option as a type mismatch ("expected float or none").
        def bad(name, why):
            return PipelineError(f"pass 'factorize' option {name!r}: {getattr(self, name)!r} "
                                 f"is out of range: {why}")

        if self.rank is not None and self.rank <= 0:
            raise bad("rank", "must be > 0 (an integer rank, or a fraction of full rank in "
                      "(0, 1])")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise bad("energy", "must be in (0, 1], the fraction of the squared singular values "
                      "to keep")
        if self.target_macs is not None and not 0 < self.target_macs < 1:
            raise bad("target_macs", "must be in (0, 1), the fraction of the model's MACs to keep")
        given = [k for k in ("rank", "energy", "target_macs") if getattr(self, k) is not None]
        if len(given) > 1:
            raise PipelineError(f"pass 'factorize': give one of rank, energy and target_macs, "
                                f"not {' and '.join(given)}")
        if isinstance(self.rank, float) and self.rank > 1:
            raise PipelineError(f"pass 'factorize' option 'rank': {self.rank!r} is a fraction "
                                "above 1; a fraction of full rank is in (0, 1], an absolute "
                                "rank is an integer (rank=64)")

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        analyses.get("shapes")
        gm = graph.module
        done: dict = gm.meta.get(FACTORIZED_KEY, {})
        explicit = bool(self.layers)
        left: dict[str, str] = {}
        candidates = []
        calls = module_call_counts(gm)
        for node, layer in self._select(graph):
            if node.target.rpartition(".")[0] in done:
                continue  # a factor of an earlier factorization
            reason = unsupported(layer, self.method)
            if reason is None:
                reason = _unusable_call(graph, node, calls)
            if reason is not None:
                if explicit:
                    raise self.error(f"cannot factorize {node.target} "
                                     f"({_describe(layer)}): {reason}", node.name)
                if not reason.startswith("method "):  # layers of other types are no candidates
                    left[node.name] = reason
                continue
            x_info, y_info = graph.info(node.args[0]), graph.info(node)
            candidates.append(_Candidate(node, layer, decompose(
                layer, self.method, x_info.shape, y_info.shape)))
        model_macs = _model_macs(graph)
        stats: dict = {"method": self.method, "candidates": len(candidates), "factorized": 0}
        hit = True
        if self.target_macs is not None:
            ranks, hit = allocate(candidates, model_macs, self.target_macs, self.round_to,
                                  self.min_reduction, self)
        else:
            ranks = [self._rank(c) for c in candidates]
        layers_stats, saved = {}, 0
        for cand, rank in zip(candidates, ranks):
            if rank is None:
                continue
            d = cand.decomposition
            cost = d.cost(rank)
            if cost >= cand.macs or cost > (1 - self.min_reduction) * cand.macs:
                left[cand.node.name] = _too_expensive(rank, cost, cand.macs, self.min_reduction)
                continue
            layers_stats[cand.node.target] = {"rank": _plain_rank(rank),
                                              "energy": d.kept_energy(rank),
                                              "mac_saving": 1 - cost / cand.macs}
            done[cand.node.target] = {"method": self.method, "rank": _plain_rank(rank)}
            _install(gm, cand.node, d.factors(rank))
            saved += cand.macs - cost
        stats["factorized"] = len(layers_stats)
        stats["model_macs"] = 1 - saved / model_macs if model_macs else 1.0
        if not hit:
            stats["target_missed"] = (
                f"no choice of ranks on the grid of multiples of round_to={self.round_to} lands "
                f"within {TARGET_TOLERANCE:.0%} below target_macs={self.target_macs}; the "
                f"least-loss one below it keeps {stats['model_macs']:.3f} (a smaller round_to "
                "gives a finer grid)")
        if layers_stats:
            stats["layers"] = layers_stats
            gm.meta[FACTORIZED_KEY] = done
            graph.recompile()
            graph.propagate_shapes()
        if left:
            stats["left"] = left
        return PassResult(graph, bool(layers_stats), stats)

    # ---- which layers -------------------------------------------------------------------
    def _select(self, graph: Graph) -> list[tuple[fx.Node, nn.Module]]:
        """The weighted call_module nodes in scope: every one, or those ``layers`` names; minus
        those ``skip`` names. A name or pattern that matches nothing is an error."""
        weighted = [(n, m) for n, m in graph.call_modules(*_WEIGHTED)]
        everything = [n.name for n in graph.nodes] + \
            [name for name, _ in graph.module.named_modules() if name]
        for option_name, patterns in (("layers", self.layers), ("skip", self.skip)):
            for pattern in patterns:
                if not any(fnmatch.fnmatchcase(name, pattern) for name in everything):
                    raise self.error(f"{option_name} names {pattern!r}, which matches no node or "
                                     "module of the graph (node names are shown by "
                                     "print(graph); module names are the model's attribute "
                                     "paths)", pattern)
        if self.layers:
            for pattern in self.layers:
                if not any(_matches(n, pattern) for n, _ in weighted):
                    raise self.error(f"layers names {pattern!r}, which matches no linear or "
                                     "convolution layer", pattern)
            weighted = [(n, m) for n, m in weighted if any(_matches(n, p) for p in self.layers)]
        return [(n, m) for n, m in weighted if not any(_matches(n, p) for p in self.skip)]

    # ---- ranks --------------------------------------------------------------------------
    def _rank(self, cand: "_Candidate"):
        d, name = cand.decomposition, cand.node
        if isinstance(self.rank, int):
            limit = max(d.full)
            if self.rank > limit:
                raise self.error(f"rank {self.rank} is larger than the full rank {limit} of "
                                 f"{name.target} ({_describe(cand.layer)}, method "
                                 f"{self.method})", name.name)
            return tuple(min(self.rank, f) for f in d.full)
        if isinstance(self.rank, float):
            return tuple(round_rank(math.ceil(self.rank * f - 1e-9), self.round_to, f)
                         for f in d.full)
        energy = DEFAULT_ENERGY if self.energy is None else self.energy
        return tuple(round_rank(energy_rank(s, energy), self.round_to, f)
                     for s, f in zip(d.spectra, d.full))


# ---- support -------------------------------------------------------------------------------
def _is_conv(layer: nn.Module) -> bool:
    return isinstance(layer, _CONVS)


def _describe(layer: nn.Module) -> str:
    if _is_conv(layer):
        kernel = "×".join(map(str, layer.kernel_size))
        groups = f", groups={layer.groups}" if layer.groups > 1 else ""
        return f"{kernel} {type(layer).__name__} {layer.in_channels}→{layer.out_channels}{groups}"
    if isinstance(layer, nn.Linear):
        return f"Linear {layer.in_features}→{layer.out_features}"
    return type(layer).__name__


def _standard(layer: nn.Module) -> bool:
    """Whether the layer computes what its base class does (a subclass overriding forward,
    such as a quantized layer, would lose its behaviour once split into plain layers)."""
    base = next(b for b in (nn.Linear,) + _CONVS if isinstance(layer, b))
    return type(layer).forward is base.forward


def supported_methods(layer: nn.Module) -> list[str]:
    """The methods that can factorize ``layer``."""
    return [m for m in METHODS if unsupported(layer, m) is None]


def unsupported(layer: nn.Module, method: str) -> str | None:
    """Why ``method`` cannot factorize ``layer``, or None if it can."""
    if isinstance(layer, (nn.Linear,) + _CONVS) and not _standard(layer):
        return (f"{type(layer).__name__} overrides forward (a quantized layer?); factorize "
                "float layers, before quantize")
    if _is_conv(layer) and layer.groups > 1:
        return (f"grouped convolution (groups={layer.groups}); no factorize method supports "
                "grouped or depthwise convolutions")
    if _fits(layer, method):
        return None
    others = [m for m in METHODS if m != method and _fits(layer, m)]
    alternative = (f"use method {' or '.join(others)}" if others
                   else "no factorize method supports it")
    return f"method {method} supports {_SUPPORT[method]}; {alternative}"


def _fits(layer: nn.Module, method: str) -> bool:
    pointwise = _is_conv(layer) and all(k == 1 for k in layer.kernel_size)
    return {"svd": isinstance(layer, nn.Linear) or pointwise,
            "spatial-svd": isinstance(layer, nn.Conv2d) and not pointwise,
            "tucker2": _is_conv(layer) and not pointwise}[method]


def _unusable_call(graph: Graph, node: fx.Node, calls: dict[str, int]) -> str | None:
    if calls.get(node.target, 0) > 1:
        return "module is called from several places (factorizing it would change all of them)"
    if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
        return "module is called with more than one input"
    if any(n.op == "get_attr" and str(n.target).startswith(node.target + ".")
           for n in graph.nodes):
        return "module's parameters are also read elsewhere in the graph (tied weights?)"
    x_info, y_info = graph.info(node.args[0]), graph.info(node)
    if not hasattr(x_info, "shape") or not hasattr(y_info, "shape"):
        return "module has no recorded input and output shapes"
    return None


def _matches(node: fx.Node, pattern: str) -> bool:
    """A node matches a name or shell pattern by its node name, its module name, or the name of
    a module containing it (``layer4`` covers ``layer4.1.conv2``)."""
    if fnmatch.fnmatchcase(node.name, pattern):
        return True
    parts = str(node.target).split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


# ---- spectra and ranks ------------------------------------------------------------------------
def _normalised(singular_values: torch.Tensor) -> np.ndarray:
    """Squared singular values as fractions of their sum (all zero for a zero weight)."""
    energy = singular_values.double().pow(2).cpu().numpy()
    total = energy.sum()
    return energy / total if total > 0 else np.zeros_like(energy)


def _kept(spectrum: np.ndarray, rank: int) -> float:
    """Fraction of the energy the first ``rank`` singular values hold (1 for a zero weight)."""
    return float(spectrum[:rank].sum()) if spectrum.sum() > 0 else 1.0


def energy_rank(spectrum: np.ndarray, energy: float) -> int:
    """The smallest rank whose singular values hold ``energy`` of the squared spectrum."""
    if spectrum.sum() <= 0:
        return 1
    cumulative = np.cumsum(spectrum)
    return int(min(len(spectrum), np.searchsorted(cumulative, energy - 1e-12) + 1))


def svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``matrix = U·diag(S)·Vh`` (singular values descending) through the symmetric
    eigendecomposition of the smaller Gram matrix, in float64.

    LAPACK's SVD of a wide weight matrix takes seconds on a CPU (14 s for a 512×4608 ResNet
    unfolding here) where ``eigh`` of its 512×512 Gram matrix takes 0.1 s. The eigenvectors are
    orthonormal to machine precision, so ``U·Uᵀ·A`` reproduces ``A`` exactly at full rank, and
    the leading singular vectors, the ones a truncation keeps, are accurate; singular values
    below 1e-10 of the largest (energy below 1e-20 of it) are treated as zero."""
    a = matrix.double()
    wide = a.shape[0] <= a.shape[1]
    gram = a @ a.T if wide else a.T @ a
    eigenvalues, vectors = _eigh(gram)
    eigenvalues, vectors = eigenvalues.flip(0), vectors.flip(1)
    s = eigenvalues.clamp(min=0).sqrt()
    keep = s > 1e-10 * s[0] if len(s) and s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
    s = torch.where(keep, s, torch.zeros_like(s))
    inverse = torch.where(keep, 1 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    if wide:  # vectors are U; Vᵀ = Σ⁻¹·Uᵀ·A
        return vectors, s, inverse[:, None] * (vectors.T @ a)
    return (a @ vectors) * inverse[None, :], s, vectors.T


def _eigh(symmetric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` on one thread. These matrices are small (at most a few thousand
    rows), and MKL's threaded solver on a busy machine spends its time waiting for cores:
    a 1536×1536 eigendecomposition took 1.8 s on one thread and 14-41 s on two, on a
    two-core machine shared with other jobs. The thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(symmetric)
    finally:
        torch.set_num_threads(threads)


def round_rank(rank: int, step: int, full: int) -> int:
    """``rank`` rounded up to a multiple of ``step``, at least 1 and at most ``full``."""
    return max(1, min(full, -(-max(rank, 1) // step) * step))


def _grid(full: int, step: int) -> list[int]:
    """The ranks a budget may choose, largest first: ``full`` and the multiples of ``step``
    below it."""
    return [full] + list(range((full - 1) // step * step, 0, -step))


# ---- decompositions ---------------------------------------------------------------------------
class Decomposition:
    """One layer's factorization under one method: its full rank and normalised squared spectrum
    per mode (one mode for the SVDs; input and output channels for Tucker-2), the MACs of the
    factors at given ranks, the energy they keep, and the factor layers themselves."""

    method = ""

    def __init__(self, layer: nn.Module, x_shape: Sequence[int] | None,
                 y_shape: Sequence[int] | None):
        self.layer = layer
        self.weight = layer.weight.detach().double()
        self.total = float(self.weight.pow(2).sum())
        self.x_shape, self.y_shape = x_shape, y_shape
        self.full: tuple[int, ...] = ()
        self.spectra: tuple[np.ndarray, ...] = ()

    def cost(self, ranks: tuple[int, ...]) -> int:
        raise NotImplementedError

    def kept_energy(self, ranks: tuple[int, ...]) -> float:
        raise NotImplementedError

    def discarded(self, ranks: tuple[int, ...]) -> float:
        """The normalised energy a rank choice loses: exact for the SVDs, the HOSVD bound (the
        sum of both modes' tails) for Tucker-2, which is what the budget allocation uses."""
        return sum(1 - _kept(s, r) for s, r in zip(self.spectra, ranks))

    def factors(self, ranks: tuple[int, ...]) -> list[nn.Module]:
        raise NotImplementedError

    def _positions(self, shape) -> int:
        """Output positions per channel: rows of a Linear's input, N·H·W of a convolution."""
        channels = shape[-1] if isinstance(self.layer, nn.Linear) else shape[1]
        return math.prod(shape) // channels

    def _param(self, value: torch.Tensor) -> nn.Parameter:
        w = self.layer.weight
        return nn.Parameter(value.to(device=w.device, dtype=w.dtype).contiguous(),
                            requires_grad=w.requires_grad)

    def _bias(self, module: nn.Module) -> None:
        if self.layer.bias is not None:
            module.bias = nn.Parameter(self.layer.bias.detach().clone(),
                                       requires_grad=self.layer.bias.requires_grad)


class SVD(Decomposition):
    """Linear or 1×1 convolution: ``W[out, in] = U·Σ·Vᵀ``; factors ``√Σ_r·V_rᵀ`` (in → r),
    then ``U_r·√Σ_r`` (r → out)."""

    method = "svd"

    def __init__(self, layer, x_shape=None, y_shape=None):
        super().__init__(layer, x_shape, y_shape)
        matrix = self.weight.reshape(self.weight.shape[0], -1)
        self.out_dim, self.in_dim = matrix.shape
        self.u, self.s, self.vh = svd(matrix)
        self.full = (len(self.s),)
        self.spectra = (_normalised(self.s),)

    def cost(self, ranks):
        (r,) = ranks
        return self._positions(self.y_shape) * r * (self.in_dim + self.out_dim)

    def kept_energy(self, ranks):
        return _kept(self.spectra[0], ranks[0])

    def factors(self, ranks):
        (r,) = ranks
        root = self.s[:r].sqrt()
        first_w = root[:, None] * self.vh[:r]          # √Σ·Vᵀ  [r, in]
        second_w = self.u[:, :r] * root[None, :]       # U·√Σ   [out, r]
        layer = self.layer
        if isinstance(layer, nn.Linear):
            first = nn.Linear(self.in_dim, r, bias=False, device="meta")
            second = nn.Linear(r, self.out_dim, bias=layer.bias is not None, device="meta")
            first.weight, second.weight = self._param(first_w), self._param(second_w)
        else:
            cls, ones = type_of(layer), (1,) * len(layer.kernel_size)
            first = cls(self.in_dim, r, layer.kernel_size, stride=layer.stride,
                        padding=layer.padding, dilation=layer.dilation,
                        padding_mode=layer.padding_mode, bias=False, device="meta")
            second = cls(r, self.out_dim, ones, bias=layer.bias is not None, device="meta")
            first.weight = self._param(first_w.reshape(r, self.in_dim, *ones))
            second.weight = self._param(second_w.reshape(self.out_dim, r, *ones))
        self._bias(second)
        return [first, second]


class SpatialSVD(Decomposition):
    """k_h×k_w Conv2d: SVD of ``M[(c, i), (o, j)] = W[o, c, i, j]``; a k_h×1 convolution
    ``C_in → r`` (weights ``U_r·√Σ_r``) then a 1×k_w convolution ``r → C_out`` (``√Σ_r·V_rᵀ``)."""

    method = "spatial-svd"

    def __init__(self, layer, x_shape=None, y_shape=None):
        super().__init__(layer, x_shape, y_shape)
        o, c, kh, kw = self.weight.shape
        matrix = self.weight.permute(1, 2, 0, 3).reshape(c * kh, o * kw)
        self.u, self.s, self.vh = svd(matrix)
        self.full = (len(self.s),)
        self.spectra = (_normalised(self.s),)

    def cost(self, ranks):
        (r,) = ranks
        o, c, kh, kw = self.weight.shape
        n, _, _, w_in = self.x_shape
        _, _, h_out, w_out = self.y_shape
        return n * h_out * w_in * r * c * kh + n * h_out * w_out * r * o * kw

    def kept_energy(self, ranks):
        return _kept(self.spectra[0], ranks[0])

    def factors(self, ranks):
        (r,) = ranks
        layer = self.layer
        o, c, kh, kw = self.weight.shape
        root = self.s[:r].sqrt()
        vertical = (self.u[:, :r] * root[None, :]).T.reshape(r, c, kh, 1)
        horizontal = (root[:, None] * self.vh[:r]).reshape(r, o, kw).permute(1, 0, 2) \
            .reshape(o, r, 1, kw)
        (sh, sw), (dh, dw) = layer.stride, layer.dilation
        if isinstance(layer.padding, str):  # "same" / "valid" work per axis
            pad_v = pad_h = layer.padding
        else:
            pad_v, pad_h = (layer.padding[0], 0), (0, layer.padding[1])
        first = nn.Conv2d(c, r, (kh, 1), stride=(sh, 1), padding=pad_v, dilation=(dh, 1),
                          padding_mode=layer.padding_mode, bias=False, device="meta")
        second = nn.Conv2d(r, o, (1, kw), stride=(1, sw), padding=pad_h, dilation=(1, dw),
                           padding_mode=layer.padding_mode, bias=layer.bias is not None,
                           device="meta")
        first.weight, second.weight = self._param(vertical), self._param(horizontal)
        self._bias(second)
        return [first, second]


class Tucker2(Decomposition):
    """k×k convolution: HOSVD along the output (mode 0) and input (mode 1) channels,
    ``W ≈ G ×₀ U_out ×₁ U_in`` with ``G = W ×₀ U_outᵀ ×₁ U_inᵀ``; factors 1×1 ``U_inᵀ``,
    the core ``G`` (original stride, padding, dilation), 1×1 ``U_out`` with the bias. Ranks
    are ``(r_in, r_out)``."""

    method = "tucker2"

    def __init__(self, layer, x_shape=None, y_shape=None):
        super().__init__(layer, x_shape, y_shape)
        w = self.weight
        o, c = w.shape[:2]
        self.u_out, s_out = _left_singular(w.reshape(o, -1))
        self.u_in, s_in = _left_singular(w.transpose(0, 1).reshape(c, -1))
        self._cores: dict = {}
        self.full = (len(s_in), len(s_out))
        self.spectra = (_normalised(s_in), _normalised(s_out))

    def core(self, ranks) -> torch.Tensor:
        if ranks not in self._cores:
            self._cores = {ranks: self._core(ranks)}
        return self._cores[ranks]

    def _core(self, ranks) -> torch.Tensor:
        r_in, r_out = ranks
        w = self.weight
        core = torch.tensordot(self.u_out[:, :r_out].T, w, dims=([1], [0]))     # [r_out, C, k]
        core = torch.tensordot(self.u_in[:, :r_in].T, core, dims=([1], [1]))    # [r_in, r_out, k]
        return core.transpose(0, 1)

    def cost(self, ranks):
        r_in, r_out = ranks
        o, c = self.weight.shape[:2]
        k = math.prod(self.weight.shape[2:])
        x_positions = math.prod(self.x_shape) // self.x_shape[1]
        y_positions = self._positions(self.y_shape)
        return x_positions * c * r_in + y_positions * (r_in * r_out * k + r_out * o)

    def kept_energy(self, ranks):
        if self.total <= 0:
            return 1.0
        return float(self.core(ranks).pow(2).sum()) / self.total

    def factors(self, ranks):
        r_in, r_out = ranks
        layer = self.layer
        o, c = self.weight.shape[:2]
        cls, ones = type_of(layer), (1,) * len(layer.kernel_size)
        first = cls(c, r_in, ones, bias=False, device="meta")
        core = cls(r_in, r_out, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                   dilation=layer.dilation, padding_mode=layer.padding_mode, bias=False,
                   device="meta")
        last = cls(r_out, o, ones, bias=layer.bias is not None, device="meta")
        first.weight = self._param(self.u_in[:, :r_in].T.reshape(r_in, c, *ones))
        core.weight = self._param(self.core(ranks))
        last.weight = self._param(self.u_out[:, :r_out].reshape(o, r_out, *ones))
        self._bias(last)
        return [first, core, last]


def _left_singular(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors ``[m, min(m, n)]`` and singular values of ``matrix``, from the
    eigendecomposition of ``matrix·matrixᵀ`` (HOSVD needs nothing else)."""
    eigenvalues, vectors = _eigh(matrix @ matrix.T)
    k = min(matrix.shape)
    return vectors.flip(1)[:, :k], eigenvalues.flip(0)[:k].clamp(min=0).sqrt()


_DECOMPOSITIONS = {"svd": SVD, "spatial-svd": SpatialSVD, "tucker2": Tucker2}


def type_of(layer: nn.Module) -> type:
    return next(cls for cls in _CONVS if isinstance(layer, cls))


def decompose(layer: nn.Module, method: str, x_shape: Sequence[int] | None = None,
              y_shape: Sequence[int] | None = None) -> Decomposition:
    """``layer``'s :class:`Decomposition` under ``method``; the input and output shapes are
    needed for MAC counts only. Raises PassError if the method does not support the layer."""
    if method not in _DECOMPOSITIONS:
        raise PassError("factorize", f"method must be one of {', '.join(METHODS)}, got {method!r}")
    reason = unsupported(layer, method) if isinstance(layer, _WEIGHTED) else \
        f"{type(layer).__name__} is not a linear or convolution layer"
    if reason is not None:
        raise PassError("factorize", f"cannot factorize {_describe(layer)}: {reason}")
    return _DECOMPOSITIONS[method](layer, x_shape, y_shape)


def factorize_layer(layer: nn.Module, method: str = "svd",
                    rank: int | Sequence[int] | None = None) -> nn.Sequential:
    """``layer`` as an ``nn.Sequential`` of its factors at ``rank`` (full rank by default; a
    pair ``(r_in, r_out)`` or one number for both modes with Tucker-2). ``layer`` is not
    modified."""
    d = decompose(layer, method)
    if rank is None:
        ranks = d.full
    elif isinstance(rank, int):
        ranks = tuple(min(rank, f) for f in d.full)
    else:
        ranks = tuple(int(r) for r in rank)
    if len(ranks) != len(d.full) or any(not 0 < r <= f for r, f in zip(ranks, d.full)):
        raise PassError("factorize", f"rank {rank!r} is not in 1..{'×'.join(map(str, d.full))}, "
                        f"the full rank of {_describe(layer)} under {method}")
    return nn.Sequential(*d.factors(ranks))


# ---- the MAC budget ---------------------------------------------------------------------------
BUDGET_BINS = 20_000  # resolution of the budget allocation: 1/20000 of the MACs it may spend
TARGET_TOLERANCE = 0.02  # target_macs is met when the model lands within 2% below it


@dataclass
class _Candidate:
    node: fx.Node
    layer: nn.Module
    decomposition: Decomposition
    macs: int = 0

    def __post_init__(self):
        self.macs = _layer_macs(self.layer, self.decomposition)


def _layer_macs(layer: nn.Module, d: Decomposition) -> int:
    positions = d._positions(d.y_shape)
    return positions * math.prod(layer.weight.shape[1:]) * layer.weight.shape[0]


def rank_choices(d: Decomposition, step: int, limit: float) -> list[tuple[tuple, int, float]]:
    """The ``(ranks, MACs, discarded energy)`` a budget may choose for one layer: every rank
    (pair, for Tucker-2) on the grid of multiples of ``step`` plus full rank, costing at most
    ``limit`` MACs, without the dominated ones (another choice is as cheap and loses less)."""
    grids = [_grid(f, step) for f in d.full]
    choices = []
    for ranks in np.array(np.meshgrid(*grids, indexing="ij")).reshape(len(grids), -1).T:
        ranks = tuple(int(r) for r in ranks)
        cost = d.cost(ranks)
        if cost <= limit:
            choices.append((ranks, cost, d.discarded(ranks)))
    choices.sort(key=lambda c: (c[1], c[2]))
    frontier, best = [], math.inf
    for choice in choices:
        if choice[2] < best - 1e-15:
            frontier.append(choice)
            best = choice[2]
    return frontier


def allocate(candidates: list[_Candidate], model_macs: int, target: float, step: int,
             min_reduction: float, owner: Pass | None = None) -> tuple[list, bool]:
    """Per-layer ranks (None: leave the layer alone) that bring the model's MACs to its
    target, ``target``·``model_macs``, with the least total discarded normalised energy; and
    whether the result lands within :data:`TARGET_TOLERANCE` of the target.

    Each layer either stays as it is (its MACs, nothing lost) or takes one of its
    :func:`rank_choices` cheaper than it by at least ``min_reduction``. Choosing one option per
    layer is a multiple-choice knapsack; dynamic programming over the MACs in
    :data:`BUDGET_BINS` steps (each option's MACs rounded up to a step, so the result never
    exceeds the target) finds, among the combinations landing within :data:`TARGET_TOLERANCE`
    below the target, the one that discards the least energy. When no combination lands that
    close (coarse rank steps on a small model), it takes the least-loss one below the target."""
    fixed = model_macs - sum(c.macs for c in candidates)
    budget = target * model_macs
    options = []
    for c in candidates:
        limit = min(c.macs - 1, (1 - min_reduction) * c.macs)
        options.append([(None, c.macs, 0.0)] + rank_choices(c.decomposition, step, limit))
    lowest = fixed + sum(min(o[1] for o in opts) for opts in options)
    if lowest > budget:
        error = owner.error if owner is not None else (lambda m: PassError("factorize", m))
        raise error(f"target_macs={target} cannot be reached: factorizing every candidate layer "
                    f"at its smallest rank leaves {lowest / model_macs:.3f} of the model's MACs "
                    "(the rest is in layers factorize does not change); lower min_reduction or "
                    "round_to, or choose another method")
    if model_macs <= budget:
        return [None] * len(candidates), True
    unit = (budget - fixed) / BUDGET_BINS
    best = np.full(BUDGET_BINS + 1, np.inf)  # least loss of the layers so far, by bins used
    best[0] = 0.0
    picks = []
    for opts in options:
        new = np.full(BUDGET_BINS + 1, np.inf)
        pick = np.zeros(BUDGET_BINS + 1, dtype=np.int32)
        for k, (_, cost, loss) in enumerate(opts):
            w = math.ceil(cost / unit - 1e-9)
            if w > BUDGET_BINS:
                continue
            trial = np.full(BUDGET_BINS + 1, np.inf)
            trial[w:] = best[:BUDGET_BINS + 1 - w] + loss
            better = trial < new
            new[better], pick[better] = trial[better], k
        best = new
        picks.append(pick)
    low = max(0, math.floor(((1 - TARGET_TOLERANCE) * budget - fixed) / unit))
    window = best[low:]
    hit = bool(np.isfinite(window).any())
    b = low + int(np.argmin(window)) if hit else int(np.argmin(best))
    chosen = []
    for opts, pick in zip(reversed(options), reversed(picks)):
        k = int(pick[b])
        chosen.append(opts[k][0])
        b -= math.ceil(opts[k][1] / unit - 1e-9)
    return chosen[::-1], hit


# ---- graph surgery ----------------------------------------------------------------------------
def _install(gm: fx.GraphModule, node: fx.Node, factors: list[nn.Module]) -> None:
    """Put an ``nn.Sequential`` of ``factors`` where ``node``'s module was, and call the factors
    one after another from the graph (so that later passes see each one)."""
    target = node.target
    parent_name, _, name = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, name, nn.Sequential(*factors))
    x = node.args[0]
    with gm.graph.inserting_before(node):
        for i in range(len(factors)):
            x = gm.graph.call_module(f"{target}.{i}", (x,))
    x.meta = dict(node.meta)
    node.replace_all_uses_with(x)
    gm.graph.erase_node(node)


def _model_macs(graph: Graph) -> int:
    """The model's MACs on its example inputs, counted as :mod:`mcc.report` does, in eval mode
    (train-mode BatchNorm would update its statistics)."""
    from mcc.report import count_flops

    modes = [(m, m.training) for m in graph.module.modules()]
    try:
        graph.module.eval()
        return count_flops(graph.module, graph.example_inputs) // 2
    finally:
        for m, training in modes:
            m.training = training


def _plain_rank(ranks: tuple[int, ...]):
    return ranks[0] if len(ranks) == 1 else list(ranks)


def _too_expensive(ranks, cost: int, macs: int, min_reduction: float) -> str:
    shown = "×".join(map(str, ranks))
    if cost >= macs:
        return f"rank {shown} would cost {cost / macs:.2f}× the layer's MACs"
    return (f"rank {shown} saves {1 - cost / macs:.1%} of the layer's MACs, less than "
            f"min_reduction={min_reduction}")
