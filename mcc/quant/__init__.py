"""Quantization: fake-quant modules, observers, calibration, learned rounding, sensitivity.

The ``quantize`` pass (:mod:`mcc.passes.quantize`) rewrites a graph; this package holds what
it inserts and what runs afterwards::

    graph, _ = mcc.compress(model, x, pipeline="fold-bn,quantize")
    mcc.quant.calibrate(graph, loader, num_batches=32)   # observers -> frozen scales
    mcc.quant.quant_params(graph)                        # {node: {scale, zero_point, bits, …}}
    mcc.quant.units(graph)                               # the integer kernels to lower
    graph.to_onnx("model.onnx")                          # QuantizeLinear/DequantizeLinear

Structure of a quantized graph (the contract backends build on): quantized Conv/Linear layers
are :class:`QuantizedLayer` modules holding ``weight_quant``; activation quantizers are
``call_module`` nodes holding :class:`FakeQuantize` (attributes ``scale``, ``zero_point``,
``bits``, ``signed``, ``symmetric``, ``axis``, ``quant_min``, ``quant_max``, ``scheme``,
``role``); a concatenation's inputs share one quantizer module. :func:`units` lists each
integer kernel with its input, weight and output quantizers and fused activation.
"""

from mcc.quant.affine import dequantize, qparams, qrange, quantize
from mcc.quant.calibrate import calibrate
from mcc.quant.fake_quant import FakeQuantize, shapes_only
from mcc.quant.layers import QuantConv1d, QuantConv2d, QuantConv3d, QuantizedLayer, QuantLinear
from mcc.quant.observers import OBSERVERS, make_observer
from mcc.quant.sensitivity import sensitivity
from mcc.quant.structure import (QuantUnit, needs_calibration, quant_params, storage_bytes, strip,
                                 units)

__all__ = ["calibrate", "quant_params", "units", "QuantUnit", "sensitivity", "strip",
           "needs_calibration", "storage_bytes", "FakeQuantize", "QuantizedLayer", "QuantConv1d",
           "QuantConv2d", "QuantConv3d", "QuantLinear", "qparams", "qrange", "quantize",
           "dequantize", "OBSERVERS", "make_observer", "shapes_only"]
