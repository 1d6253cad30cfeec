"""``FakeQuantize``: the module that holds one tensor's quantization parameters and simulates it.

One class serves activations (inserted as ``call_module`` nodes) and weights (held by the
quantized Conv/Linear layer as ``weight_quant``). Its public attributes are the contract the
backends read:

==============  ===========================================================================
``scale``        float32 buffer: 0-d per tensor, ``[C]`` per channel (a Parameter with LSQ)
``zero_point``   int32 buffer of the same shape
``bits``         code width: 8, 4, 2 (ternary) or 1 (binary)
``signed``       int8-style (True) or uint8-style (False) codes
``symmetric``    zero point fixed at 0
``axis``         the channel dimension for per-channel parameters, else ``None``
``quant_min``    smallest code (weights use the narrow range, int8 weights −127)
``quant_max``    largest code
``scheme``       ``linear`` (affine), ``binary`` (±scale) or ``log2`` (signed powers of two)
``role``         ``weight``, ``input`` (a graph input), ``output`` (after a layer, add or other
                 op) or ``shared`` (one scale for all inputs of a concatenation)
``calibrated``   bool buffer: the parameters are final
==============  ===========================================================================

Forward computes ``S·(clamp(round(x/S) + Z, qmin, qmax) − Z)`` with
``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine``, whose backward is the
straight-through estimator (gradient 1 inside the range, 0 where clipped), so the graph trains
(QAT). With ``learn_scale`` the scale is a Parameter trained by LSQ (Esser et al. 2020).

ONNX export (TorchScript exporter, opset ≥ 13): activations become QuantizeLinear →
DequantizeLinear; linear and binary weights become an int8 constant holding the integer codes
→ DequantizeLinear (per-axis scales on ``axis``), so the file stores the weights as integers;
log2 weights become a float constant holding the exact powers of two.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import torch
from torch import nn

from mcc.errors import QuantizationError
from mcc.quant import affine
from mcc.quant.observers import make_observer

SCHEMES = ("linear", "binary", "log2")
ROLES = ("weight", "input", "output", "shared")


class FakeQuantize(nn.Module):
    """Simulated quantization of one tensor (see the module docstring for the attributes)."""

    def __init__(self, *, bits: int = 8, signed: bool = False, symmetric: bool = False,
                 narrow: bool = False, axis: int | None = None, channels: int = 1,
                 scheme: str = "linear", observer: str = "minmax", percentile: float = 99.99,
                 learn_scale: bool = False, role: str = "output", name: str = ""):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if scheme == "binary":
            bits, signed, symmetric = 1, True, True
            qmin, qmax = -1, 1
        else:
            qmin, qmax = affine.qrange(bits, signed, narrow)
        self.bits, self.signed, self.symmetric, self.axis = bits, signed, symmetric, axis
        self.quant_min, self.quant_max = qmin, qmax
        self.scheme, self.role, self.name = scheme, role, name
        self.observer_kind, self.learn_scale = observer, learn_scale
        shape = (channels,) if axis is not None else ()
        scale = torch.ones(shape)
        if learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        self.register_buffer("calibrated", torch.tensor(False))
        self.observer = make_observer(observer, axis, percentile)
        self.enabled = True     # False: pass values through (float reference, sensitivity)
        self.observing = False  # True during calibration: record statistics, pass through

    # ---- calibration ---------------------------------------------------------------------
    def start_observing(self) -> None:
        self.observer.reset()
        self.observing = True

    def freeze(self) -> None:
        """Turn what the observer saw into the final scale and zero point."""
        if self.observer.empty:
            raise QuantizationError(
                f"quantizer {self.name!r} saw no data during calibration (its branch never ran "
                "on the calibration batches); calibrate with data that reaches it")
        lo, hi = self.observer.range(self.quant_min, self.quant_max, self.symmetric)
        scale, zero_point = affine.qparams(lo, hi, self.quant_min, self.quant_max, self.symmetric)
        self._set(scale, zero_point)
        self.observing = False

    def set_from_weight(self, weight: torch.Tensor) -> None:
        """Choose the parameters for a weight tensor, which is fully known: no data needed."""
        w = weight.detach().float()
        if self.scheme == "linear":
            self.observer.reset()
            self.observer.observe(w)
            self.freeze()
            return
        reduce = tuple(d for d in range(w.dim()) if d != self.axis) if self.axis is not None else None
        magnitude = w.abs()
        if self.scheme == "binary":  # α = mean|w| minimises ‖w − α·sign(w)‖²
            scale = magnitude.mean(dim=reduce) if reduce is not None else magnitude.mean()
        else:  # log2: the top level is the power of two nearest the largest magnitude
            top = magnitude.amax(dim=reduce) if reduce is not None else magnitude.max()
            scale = affine.log2_top(top)
        self._set(torch.clamp(scale, min=affine.EPS), torch.zeros_like(self.zero_point))

    def _set(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        with torch.no_grad():
            self.scale.copy_(scale.reshape(self.scale.shape))
            self.zero_point.copy_(zero_point.reshape(self.zero_point.shape))
            self.calibrated.fill_(True)

    # ---- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.observing:
            self.observer.observe(x)
            return x
        if not bool(self.calibrated):
            if shape_run():
                return x
            raise QuantizationError(
                f"quantizer {self.name!r} is not calibrated: run mcc.calibrate(graph, data) with "
                "a few batches of real inputs before running or exporting the graph (or quantize "
                "with activations=none for weight-only quantization)")
        if torch.onnx.is_in_onnx_export():
            return self._export(x)
        if self.scheme == "binary":
            return _ste(x, self.scale_view(x) * torch.where(x >= 0, 1.0, -1.0))
        if self.scheme == "log2":
            return _ste(x, affine.log2_quantize(x, self.scale_view(x), self.levels))
        if self.learn_scale and self.training:
            return self._learned(x)
        scale = self.scale.detach() if self.learn_scale else self.scale
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale, self.zero_point,
                                                         self.quant_min, self.quant_max)
        return torch.fake_quantize_per_channel_affine(x, scale, self.zero_point, self.axis,
                                                      self.quant_min, self.quant_max)

    @property
    def levels(self) -> int:
        """Number of power-of-two magnitudes of the log2 scheme (one code is zero)."""
        return 2 ** (self.bits - 1) - 1

    def scale_view(self, x: torch.Tensor) -> torch.Tensor:
        """``scale`` shaped to broadcast against ``x``."""
        if self.axis is None:
            return self.scale
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return self.scale.reshape(shape)

    def _learned(self, x: torch.Tensor) -> torch.Tensor:
        """LSQ: the scale gets the gradient of the quantization error, scaled by
        1/√(N·qmax) as the paper prescribes so that its step size matches the weights'."""
        per_channel = x.numel() // self.scale.numel()
        grad_factor = 1.0 / math.sqrt(per_channel * max(self.quant_max, 1))
        scale = torch.clamp(self.scale, min=affine.EPS)
        zero_point = self.zero_point.float()
        if self.axis is None:
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, scale.reshape(1), zero_point.reshape(1), self.quant_min, self.quant_max, grad_factor)
        return torch._fake_quantize_learnable_per_channel_affine(
            x, scale, zero_point, self.axis, self.quant_min, self.quant_max, grad_factor)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The integer codes of ``x`` (for weights: what an integer kernel multiplies)."""
        x = x.detach().float()
        if self.scheme == "binary":
            return torch.where(x >= 0, 1, -1).to(torch.int32)
        if self.scheme == "log2":
            raise ValueError("log2 weights have no affine integer codes")
        scale = self.scale_view(x).detach()
        zero_point = self.zero_point if self.axis is None else self.zero_point.reshape(scale.shape)
        return affine.quantize(x, scale, zero_point, self.quant_min, self.quant_max).to(torch.int32)

    def _export(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale.detach()
        if self.role != "weight":
            return torch.fake_quantize_per_tensor_affine(x, scale, self.zero_point,
                                                         self.quant_min, self.quant_max)
        # Weights are constants: compute their codes outside the trace so the file holds the
        # integers themselves (an int8 initializer), not the float weights and the ops.
        with _untraced():
            if self.scheme == "log2":
                return affine.log2_quantize(x.detach().float(), self.scale_view(x).detach(), self.levels)
            codes = self.codes(x).to(torch.int8)
            zero_point = self.zero_point.to(torch.int8)
        return _DequantizeLinear.apply(codes, scale, zero_point, 0 if self.axis is None else self.axis)

    def extra_repr(self) -> str:
        parts = [f"role={self.role}", f"scheme={self.scheme}", f"bits={self.bits}",
                 f"signed={self.signed}", f"symmetric={self.symmetric}",
                 f"quant_min={self.quant_min}", f"quant_max={self.quant_max}"]
        if self.axis is not None:
            parts.append(f"axis={self.axis}")
        if self.role != "weight" or self.scheme == "linear":
            parts.append(f"observer={self.observer_kind}")
        if self.learn_scale:
            parts.append("learn_scale=True")
        if not bool(self.calibrated):
            parts.append("uncalibrated")
        return ", ".join(parts)


_SHAPES_ONLY = contextvars.ContextVar("mcc_quant_shapes_only", default=False)


def shape_run() -> bool:
    """True inside :func:`shapes_only`."""
    return _SHAPES_ONLY.get()


@contextlib.contextmanager
def shapes_only():
    """Let uncalibrated quantizers (and layers awaiting AdaRound) pass values through here.

    Only for runs that record shapes (shape propagation, structural checks): their values are
    never used, and a graph must be shape-propagated before it can be calibrated.
    """
    token = _SHAPES_ONLY.set(True)
    try:
        yield
    finally:
        _SHAPES_ONLY.reset(token)


def _ste(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Forward ``quantized``, backward identity: the straight-through estimator."""
    return x + (quantized - x).detach()


@contextlib.contextmanager
def _untraced():
    """Compute without recording into a running TorchScript trace (ONNX export): tensors made
    here enter the trace as constants. torch has no public switch for this."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


class _DequantizeLinear(torch.autograd.Function):
    """``S·(q − Z)`` that exports as ONNX DequantizeLinear (per-axis when ``scale`` is 1-D)."""

    @staticmethod
    def forward(ctx, codes, scale, zero_point, axis):
        if scale.dim() == 0:
            return (codes.float() - zero_point.float()) * scale
        shape = [1] * codes.dim()
        shape[axis] = -1
        return (codes.float() - zero_point.float().reshape(shape)) * scale.reshape(shape)

    @staticmethod
    def symbolic(g, codes, scale, zero_point, axis):
        return g.op("DequantizeLinear", codes, scale, zero_point, axis_i=axis)
