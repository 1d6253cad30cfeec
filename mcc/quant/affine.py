"""The quantization arithmetic every other part of :mod:`mcc.quant` is built on.

Affine (linear) quantization as in the seeds: a real range ``[min, max]`` maps onto the integers
``[qmin, qmax]`` with

    S = (max − min) / (qmax − qmin)      Z = qmin + round(−min / S)
    q = clamp(round(x / S) + Z, qmin, qmax)      x̂ = S · (q − Z)

(for unsigned 8 bits ``qmin = 0`` and this is exactly ``S = (max − min)/(2^b − 1)``,
``Z = round(−min/S)``). The range is first widened to contain 0 so that zero — padding, ReLU
outputs — is represented exactly. Symmetric quantization fixes ``Z = 0`` and
``S = max(|min|, |max|) / qmax``. Rounding is half-to-even, as in ``torch.round`` and ONNX
``QuantizeLinear``, so the fake-quant graph and ONNX Runtime round alike.

Signed weights use the *narrow* range ``[−(2^(b−1) − 1), 2^(b−1) − 1]`` (int8: ±127, int4: ±7,
int2: ±1, which is ternary): it keeps the grid symmetric around zero and is what int8 kernels
that sum pairs of products in 16 bits need to avoid overflow.
"""

from __future__ import annotations

import torch

#: Smallest scale mcc produces: a constant-zero tensor still gets a valid (positive) scale.
EPS = float(torch.finfo(torch.float32).eps)


def qrange(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a ``bits``-bit code; ``narrow`` drops −2^(b−1)."""
    if signed:
        qmax = 2 ** (bits - 1) - 1
        return (-qmax if narrow else -qmax - 1), qmax
    return 0, 2 ** bits - 1


def qparams(min_val, max_val, qmin: int, qmax: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) for the range ``[min_val, max_val]``.

    Works elementwise, so per-channel ranges give per-channel parameters. ``symmetric`` needs
    a signed grid (``qmin < 0``); unsigned grids are always affine.
    """
    min_val = torch.clamp(torch.as_tensor(min_val, dtype=torch.float32), max=0.0)
    max_val = torch.clamp(torch.as_tensor(max_val, dtype=torch.float32), min=0.0)
    if symmetric:
        if qmin >= 0:
            raise ValueError("symmetric quantization needs a signed grid")
        scale = torch.maximum(-min_val, max_val) / qmax
        scale = torch.clamp(scale, min=EPS)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((max_val - min_val) / (qmax - qmin), min=EPS)
        zero_point = torch.clamp(qmin + torch.round(-min_val / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def quantize(x, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round(x / S) + Z, qmin, qmax)`` as float-valued integers."""
    x = torch.as_tensor(x, dtype=torch.float32)
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


def dequantize(q, scale, zero_point) -> torch.Tensor:
    """``S · (q − Z)``."""
    return scale * (torch.as_tensor(q, dtype=torch.float32) - zero_point)


def log2_quantize(w: torch.Tensor, top, levels: int) -> torch.Tensor:
    """Power-of-two quantization (the seeds' logarithmic scheme): ``sign(w)·2^round(log2|w|)``.

    Exponents are clipped to the ``levels`` values ``log2(top), log2(top) − 1, …``; magnitudes
    whose rounded exponent falls below the smallest level become 0. With ``b`` bits there is a
    sign bit, one code for zero and ``2^(b−1) − 1`` levels. ``top`` (a power of two) broadcasts
    against ``w`` for per-channel use.
    """
    top_exp = torch.log2(torch.as_tensor(top, dtype=torch.float32))
    magnitude = w.abs()
    exp = torch.round(torch.log2(torch.clamp(magnitude, min=torch.finfo(torch.float32).tiny)))
    underflow = (exp < top_exp - (levels - 1)) | (magnitude == 0)
    exp = torch.clamp(exp, max=top_exp)
    return torch.where(underflow, torch.zeros_like(w), torch.sign(w) * torch.exp2(exp))


def log2_top(max_abs) -> torch.Tensor:
    """The largest power-of-two level for a tensor whose largest magnitude is ``max_abs``."""
    max_abs = torch.clamp(torch.as_tensor(max_abs, dtype=torch.float32), min=torch.finfo(torch.float32).tiny)
    return torch.exp2(torch.round(torch.log2(max_abs)))
