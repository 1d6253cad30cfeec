"""The affine arithmetic against hand-computed values, starting with the seeds' worked example."""

import pytest
import torch

from mcc.quant import FakeQuantize, dequantize, qparams, qrange, quantize
from mcc.quant.affine import EPS, log2_quantize, log2_top


def test_seed_worked_example():
    # min −0.8, max 1.2, 8 bits: S = 2/255 ≈ 0.0078, Z = round(0.8 / S) = round(102.0) = 102
    scale, zp = qparams(-0.8, 1.2, *qrange(8, signed=False), symmetric=False)
    assert scale.item() == pytest.approx(2 / 255, rel=1e-7)
    assert round(scale.item(), 4) == 0.0078
    assert zp.item() == 102
    # with S written as 0.0078, as the seed does: 0.6 → round(76.92) + 102 = 179 → 0.0078·77 = 0.6006
    q = quantize(0.6, 0.0078, 102, 0, 255)
    assert q.item() == 179
    assert dequantize(q, 0.0078, 102).item() == pytest.approx(0.6006, abs=1e-6)
    # with the exact S, 0.6/S = 76.5 exactly: a tie, which rounds half to even (ONNX, torch) → 178
    q = quantize(0.6, scale, zp, 0, 255)
    assert q.item() == 178
    assert dequantize(q, scale, zp).item() == pytest.approx(76 * 2 / 255, abs=1e-7)


def test_fake_quantize_reproduces_the_worked_example():
    fq = FakeQuantize(bits=8, signed=False, symmetric=False)
    fq.start_observing()
    fq(torch.tensor([-0.8, 0.1, 1.2]))
    fq.freeze()
    assert fq.zero_point.item() == 102
    out = fq(torch.tensor([0.6, -0.8, 1.2, 2.0, -1.0, 0.0]))
    s = 2 / 255
    expected = torch.tensor([76 * s, -102 * s, 153 * s, 153 * s, -102 * s, 0.0])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_ranges():
    assert qrange(8, signed=False) == (0, 255)
    assert qrange(8, signed=True) == (-128, 127)
    assert qrange(8, signed=True, narrow=True) == (-127, 127)
    assert qrange(4, signed=True, narrow=True) == (-7, 7)
    assert qrange(2, signed=True, narrow=True) == (-1, 1)  # ternary


def test_symmetric_signed():
    scale, zp = qparams(-0.5, 1.27, -127, 127, symmetric=True)
    assert scale.item() == pytest.approx(0.01) and zp.item() == 0
    q = quantize(torch.tensor([1.0, -0.5, 2.0, -2.0, 0.004]), scale, zp, -127, 127)
    assert q.tolist() == [100, -50, 127, -127, 0]


def test_asymmetric_signed_zero_point_is_shifted():
    # [−1, 3] on int8: S = 4/255, Z = −128 + round(63.75) = −64
    scale, zp = qparams(-1.0, 3.0, -128, 127, symmetric=False)
    assert scale.item() == pytest.approx(4 / 255) and zp.item() == -64
    assert quantize(-1.0, scale, zp, -128, 127).item() == -128
    assert quantize(3.0, scale, zp, -128, 127).item() == 127


def test_range_always_contains_zero():
    scale, zp = qparams(0.5, 2.0, 0, 255, symmetric=False)  # treated as [0, 2]
    assert scale.item() == pytest.approx(2 / 255) and zp.item() == 0
    scale, zp = qparams(-3.0, -1.0, 0, 255, symmetric=False)  # treated as [−3, 0]
    assert scale.item() == pytest.approx(3 / 255) and zp.item() == 255


def test_per_channel_parameters_are_elementwise():
    scale, zp = qparams(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 0.5]), -127, 127, True)
    torch.testing.assert_close(scale, torch.tensor([1 / 127, 2 / 127]))
    assert zp.dtype == torch.int32 and zp.tolist() == [0, 0]


def test_constant_zero_tensor_gets_a_valid_scale():
    scale, zp = qparams(0.0, 0.0, 0, 255, symmetric=False)
    assert scale.item() == pytest.approx(EPS) and zp.item() == 0
    assert dequantize(quantize(0.0, scale, zp, 0, 255), scale, zp).item() == 0.0


def test_log2_by_hand():
    w = torch.tensor([0.3, -0.7, 0.05, 0.0, 1.5, 0.01, -0.12])
    top = log2_top(w.abs().max())
    assert top.item() == 2.0  # log2(1.5) = 0.58 → 1
    # 4 bits: 7 levels 2, 1, …, 2^−5; log2|w| rounds to −2, −1, −4, (zero), 1, −7 (below 2^−5: 0), −3
    out = log2_quantize(w, top, levels=7)
    assert out.tolist() == [0.25, -0.5, 0.0625, 0.0, 2.0, 0.0, -0.125]
