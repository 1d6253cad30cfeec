"""Conv/Linear layers whose weight is fake-quantized: the weight half of a quantized unit.

``QuantConv1d/2d/3d`` and ``QuantLinear`` subclass the ``torch.nn`` layer they replace (so the
graph keeps ``call_module`` nodes holding Conv/Linear modules, and ``isinstance(m, nn.Conv2d)``
still holds) and add ``weight_quant``, a :class:`~mcc.quant.fake_quant.FakeQuantize` with
``role="weight"`` and ``axis=0`` when per channel. ``isinstance(m, QuantizedLayer)`` identifies
them. The float weight stays in ``weight`` (QAT trains it); ``quantized_weight()`` is what the
layer computes with and ``weight_quant.codes(weight)`` the integers an int8 kernel uses.

Biases are quantized too, as an integer engine adds them: to the int32 grid of the accumulator,
step ``S_in·S_w`` (input scale times the channel's weight scale). ``input_scale`` (a 0-d buffer,
0 until calibration) holds ``S_in``: the input quantizer is another node of the graph, so
:func:`mcc.quant.calibrate` copies its scale here (and :func:`mcc.finetune` again after QAT,
which may train it). Without it the fake-quant graph adds a float bias, and the engine's
rounding of it — up to half an accumulator step — shifts outputs by a fraction of a code that
decides labels in deep networks.

``pending`` lists data-driven steps still owed before the layer is final (``adaround``,
``bias-correction``); :func:`mcc.quant.calibrate` performs them, and the layer refuses to run
until then.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mcc.errors import QuantizationError
from mcc.quant.fake_quant import FakeQuantize, shape_run


class QuantizedLayer:
    """Mixin of the quantized layers; see the module docstring."""

    weight_quant: FakeQuantize
    pending: tuple[str, ...] = ()
    adaround_steps: int = 0

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight)

    def quantized_bias(self) -> torch.Tensor | None:
        """The bias on the accumulator's int32 grid (see the module docstring), with a
        straight-through gradient; the float bias while the input scale is unknown or the
        weight quantizer is off."""
        bias, s_in = self.bias, self.input_scale
        if bias is None or not self.weight_quant.enabled or self.weight_quant.scheme != "linear" \
                or not bool(s_in > 0):
            return bias
        codes = self.bias_codes(s_in).clamp(-2 ** 31, 2 ** 31 - 1)
        return bias + (codes * self.accumulator_scale(s_in)).to(bias.dtype) - bias.detach()

    def accumulator_scale(self, input_scale) -> torch.Tensor:
        """``S_in·S_w`` (float64, per output channel or one value): the step of the int32
        accumulator, and of the grid its bias lies on."""
        s_in = torch.as_tensor(input_scale).detach().double()
        return s_in * self.weight_quant.scale.detach().double().reshape(-1)

    def bias_codes(self, input_scale) -> torch.Tensor:
        """``round(b / (S_in·S_w))`` (float64): the integers an int8 engine adds to its
        accumulator. The one definition both the fake-quant graph (:meth:`quantized_bias`) and
        mcc's integer kernels use, so that they add the same bias."""
        return torch.round(self.bias.detach().double() / self.accumulator_scale(input_scale))

    def _check_ready(self) -> None:
        if self.pending and not shape_run():
            raise QuantizationError(
                f"layer {self.weight_quant.name!r} still needs {' and '.join(self.pending)}, which "
                "use calibration data: run mcc.calibrate(graph, data) first")


class QuantConv1d(QuantizedLayer, nn.Conv1d):
    def forward(self, x):
        self._check_ready()
        return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())


class QuantConv2d(QuantizedLayer, nn.Conv2d):
    def forward(self, x):
        self._check_ready()
        return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())


class QuantConv3d(QuantizedLayer, nn.Conv3d):
    def forward(self, x):
        self._check_ready()
        return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())


class QuantLinear(QuantizedLayer, nn.Linear):
    def forward(self, x):
        self._check_ready()
        return F.linear(x, self.quantized_weight(), self.quantized_bias())


#: float layer type -> its quantized counterpart. Exact types only: a subclass may override
#: ``forward`` and would silently lose its behaviour.
QUANTIZED = {nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Conv3d: QuantConv3d,
             nn.Linear: QuantLinear}
FLOAT = {v: k for k, v in QUANTIZED.items()}


def quantize_layer(layer: nn.Module, weight_quant: FakeQuantize) -> QuantizedLayer:
    """The quantized counterpart of ``layer``, sharing its Parameter objects."""
    new = _rebuild(QUANTIZED[type(layer)], layer)
    new.weight_quant = weight_quant
    new.register_buffer("input_scale", torch.zeros((), device=layer.weight.device))
    return new


def float_layer(layer: QuantizedLayer) -> nn.Module:
    """The plain ``torch.nn`` layer with the same (float) parameters."""
    return _rebuild(FLOAT[type(layer)], layer)


def _rebuild(cls, layer: nn.Module) -> nn.Module:
    # Built on the meta device so that no throw-away weight is allocated and initialised.
    if issubclass(cls, nn.Linear):
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    else:
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                  padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                  bias=layer.bias is not None, padding_mode=layer.padding_mode, device="meta")
    new.weight = layer.weight
    new.bias = layer.bias
    new.train(layer.training)
    return new


def layer_function(layer: nn.Module):
    """``fn(x, weight) -> output`` with the layer's own hyper-parameters and bias."""
    if isinstance(layer, nn.Linear):
        return lambda x, w: F.linear(x, w, layer.bias)
    return lambda x, w: layer._conv_forward(x, w, layer.bias)
