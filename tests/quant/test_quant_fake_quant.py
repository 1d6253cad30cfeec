"""FakeQuantize for every weight scheme and for activations: values, gradients, states."""

import pytest
import torch

from mcc.errors import QuantizationError
from mcc.quant import FakeQuantize


def weight_quantizer(w, **kw):
    fq = FakeQuantize(role="weight", signed=True, **kw)
    fq.set_from_weight(w)
    return fq


def test_int8_per_channel_scales_per_output_channel():
    w = torch.zeros(3, 2, 1, 1)
    w[0, 0], w[1, 1], w[2, 0] = 1.27, -2.54, 0.127
    w[0, 1], w[1, 0], w[2, 1] = 0.5, 1.0, -0.05
    fq = weight_quantizer(w, bits=8, symmetric=True, narrow=True, axis=0, channels=3)
    torch.testing.assert_close(fq.scale, torch.tensor([0.01, 0.02, 0.001]))
    assert fq.zero_point.tolist() == [0, 0, 0] and (fq.quant_min, fq.quant_max) == (-127, 127)
    assert fq.codes(w)[:, :, 0, 0].tolist() == [[127, 50], [50, -127], [127, -50]]
    torch.testing.assert_close(fq(w), w, rtol=0, atol=1e-7)  # every value is on its grid


def test_int8_per_tensor_weights():
    w = torch.tensor([[1.27, -0.5], [0.013, -0.006]])
    fq = weight_quantizer(w, bits=8, symmetric=True, narrow=True)
    assert fq.scale.shape == () and fq.scale.item() == pytest.approx(0.01)
    torch.testing.assert_close(fq(w), torch.tensor([[1.27, -0.5], [0.01, -0.01]]))


def test_int4_affine_weights_with_zero_point():
    # [−0.2, 1.3] on int4 (−8…7): S = 1.5/15 = 0.1, Z = −8 + round(2) = −6
    w = torch.tensor([-0.2, 0.0, 0.44, 1.3, 0.96])
    fq = weight_quantizer(w, bits=4, symmetric=False, observer="minmax")
    assert fq.scale.item() == pytest.approx(0.1) and fq.zero_point.item() == -6
    torch.testing.assert_close(fq(w), torch.tensor([-0.2, 0.0, 0.4, 1.3, 1.0]))


def test_int2_is_ternary():
    w = torch.tensor([1.0, 0.4, -0.6, 0.2, -1.0, 0.5])
    fq = weight_quantizer(w, bits=2, symmetric=True, narrow=True, observer="minmax")
    assert (fq.quant_min, fq.quant_max) == (-1, 1)
    # S = 1: codes round(w) with 0.5 → 0 (half to even)
    assert fq.codes(w).tolist() == [1, 0, -1, 0, -1, 0]
    torch.testing.assert_close(fq(w), torch.tensor([1.0, 0.0, -1.0, 0.0, -1.0, 0.0]))


def test_binary_uses_the_mean_magnitude_per_channel():
    w = torch.tensor([[0.5, -1.5], [3.0, -1.0], [0.0, 0.2]])
    fq = weight_quantizer(w, scheme="binary", axis=0, channels=3)
    assert fq.bits == 1 and fq.scale.tolist() == pytest.approx([1.0, 2.0, 0.1])
    torch.testing.assert_close(fq(w), torch.tensor([[1.0, -1.0], [2.0, -2.0], [0.1, 0.1]]))
    assert fq.codes(w).tolist() == [[1, -1], [1, -1], [1, 1]]


def test_log2_weights_by_hand():
    w = torch.tensor([[0.3, -0.7, 1.5], [0.05, 0.02, -0.1]])
    fq = weight_quantizer(w, bits=4, scheme="log2", axis=0, channels=2)
    # tops: 2^round(log2 1.5) = 2, 2^round(log2 0.1) = 2^−3; 7 levels each
    assert fq.scale.tolist() == [2.0, 0.125]
    torch.testing.assert_close(fq(w), torch.tensor([[0.25, -0.5, 2.0], [0.0625, 0.015625, -0.125]]))


def test_straight_through_gradient_inside_the_range_only():
    fq = FakeQuantize(bits=8, signed=False)
    fq.start_observing()
    fq(torch.tensor([0.0, 1.0]))
    fq.freeze()
    x = torch.tensor([0.5, 0.25, 3.0, -1.0], requires_grad=True)
    fq(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_binary_and_log2_pass_gradients_straight_through():
    w = torch.tensor([0.3, -0.7], requires_grad=True)
    for fq in (weight_quantizer(w, scheme="binary"), weight_quantizer(w, bits=4, scheme="log2")):
        w.grad = None
        (fq(w) * torch.tensor([2.0, 3.0])).sum().backward()
        assert w.grad.tolist() == [2.0, 3.0]


def test_lsq_scale_is_trained():
    fq = FakeQuantize(bits=8, signed=False, learn_scale=True)
    assert isinstance(fq.scale, torch.nn.Parameter)
    fq.start_observing()
    fq(torch.tensor([0.0, 1.0]))
    fq.freeze()
    before = fq.scale.item()
    x = torch.linspace(0, 2, 50)  # half the values clip: the loss wants a larger scale
    opt = torch.optim.SGD(fq.parameters(), lr=1e-3)
    for _ in range(20):
        opt.zero_grad()
        ((fq(x) - x) ** 2).sum().backward()
        opt.step()
    assert fq.scale.item() > before * 1.05
    fq.eval()  # evaluation uses the learned scale through the standard fake-quant op
    s = fq.scale.item()
    assert fq(torch.tensor([1.5])).item() == pytest.approx(round(1.5 / s) * s, rel=1e-5)


def test_uncalibrated_quantizer_refuses_to_run():
    fq = FakeQuantize(name="conv1_quant")
    with pytest.raises(QuantizationError, match="'conv1_quant' is not calibrated.*mcc.calibrate"):
        fq(torch.ones(2))
    fq.enabled = False
    assert fq(torch.tensor([0.123])).item() == pytest.approx(0.123)


def test_no_data_seen_is_an_error():
    fq = FakeQuantize(name="branch_quant")
    fq.start_observing()
    with pytest.raises(QuantizationError, match="'branch_quant' saw no data"):
        fq.freeze()


def test_observing_passes_values_through():
    fq = FakeQuantize()
    fq.start_observing()
    x = torch.tensor([0.1234567, 2.0])
    assert torch.equal(fq(x), x)
