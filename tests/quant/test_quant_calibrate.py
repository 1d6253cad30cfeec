"""Calibration: data handling, determinism, errors, and accuracy on a trained model."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mcc
import mcc.quant as Q
from mcc.errors import QuantizationError
from mcc.pipeline import Pipeline
from tests.quant.digits import accuracy, calibration_batches, digits_data, trained_digits


def quantized(model, x, spec="fold-bn,quantize"):
    graph = mcc.trace(model.eval(), x)
    return Pipeline.parse(spec).run(graph)[0]


@pytest.fixture(scope="module")
def digits():
    return trained_digits(), digits_data()


def test_int8_ptq_keeps_accuracy(digits):
    model, (x_train, _, x_test, y_test) = digits
    graph = quantized(model, x_test[:2])
    stats = Q.calibrate(graph, calibration_batches(x_train))
    # input, conv1+relu, conv2, add+relu, conv3+relu, fc1+relu, fc2
    assert stats == {"batches": 8, "activation_quantizers": 7}
    base, after = accuracy(model, x_test, y_test), accuracy(graph, x_test, y_test)
    assert base >= 97.0
    assert base - after <= 0.5


def test_calibration_is_deterministic(digits):
    model, (x_train, _, x_test, _) = digits
    a, b = quantized(model, x_test[:2]), quantized(model, x_test[:2])
    for kind in ("minmax", "entropy"):
        a = quantized(model, x_test[:2], f"fold-bn,quantize{{observer={kind}}}")
        b = quantized(model, x_test[:2], f"fold-bn,quantize{{observer={kind}}}")
        Q.calibrate(a, calibration_batches(x_train))
        Q.calibrate(b, calibration_batches(x_train))
        assert Q.quant_params(a) == Q.quant_params(b)
        assert torch.equal(a(x_test), b(x_test))


def test_loader_pairs_tensors_and_num_batches_are_equivalent(digits):
    model, (x_train, y_train, x_test, _) = digits
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=32, shuffle=False)
    from_loader, from_list = quantized(model, x_test[:2]), quantized(model, x_test[:2])
    Q.calibrate(from_loader, loader, num_batches=8)
    Q.calibrate(from_list, calibration_batches(x_train, 32, 8))
    assert Q.quant_params(from_loader) == Q.quant_params(from_list)
    # numpy batches are accepted as well
    from_numpy = quantized(model, x_test[:2])
    Q.calibrate(from_numpy, [b.numpy() for b in calibration_batches(x_train, 32, 8)])
    assert Q.quant_params(from_numpy) == Q.quant_params(from_list)


def test_num_batches_stops_reading():
    model = nn.Sequential(nn.Conv2d(1, 2, 1)).eval()
    graph = quantized(model, torch.zeros(1, 1, 2, 2), "quantize")
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
    small, huge = torch.full((1, 1, 2, 2), 1.0), torch.full((1, 1, 2, 2), 100.0)
    Q.calibrate(graph, iter([small, huge]), num_batches=1)
    # the input quantizer saw only [0, 1]: S = 1/255, the 100s were never read
    assert Q.quant_params(graph)["input_1_quant"]["scale"] == pytest.approx(1 / 255)


def test_a_single_tensor_is_one_batch(digits):
    model, (x_train, _, x_test, _) = digits
    a, b = quantized(model, x_test[:2]), quantized(model, x_test[:2])
    Q.calibrate(a, x_train[:64])
    Q.calibrate(b, [x_train[:64]])
    assert Q.quant_params(a) == Q.quant_params(b)


def test_wrong_shape_is_reported():
    graph = quantized(nn.Sequential(nn.Conv2d(1, 2, 3)), torch.zeros(1, 1, 8, 8), "quantize")
    with pytest.raises(QuantizationError, match=r"batch 1, input 0 has shape \[4, 3, 8, 8\] but the "
                                                 r"model's input is \[1, 1, 8, 8\]"):
        Q.calibrate(graph, [torch.zeros(4, 1, 8, 8), torch.zeros(4, 3, 8, 8)])


def test_integer_images_are_refused():
    graph = quantized(nn.Sequential(nn.Conv2d(1, 2, 3)), torch.zeros(1, 1, 8, 8), "quantize")
    with pytest.raises(QuantizationError, match="dtype uint8 but the model takes float32"):
        Q.calibrate(graph, [torch.zeros(4, 1, 8, 8, dtype=torch.uint8)])


def test_empty_data_and_bad_arguments():
    graph = quantized(nn.Sequential(nn.Conv2d(1, 2, 3)), torch.zeros(1, 1, 8, 8), "quantize")
    with pytest.raises(QuantizationError, match="yielded no batches"):
        Q.calibrate(graph, [])
    with pytest.raises(QuantizationError, match="iterable of input batches"):
        Q.calibrate(graph, 3)
    with pytest.raises(QuantizationError, match="batch 0 is a dict"):
        Q.calibrate(graph, [{"x": torch.zeros(1, 1, 8, 8)}])
    with pytest.raises(QuantizationError, match="num_batches must be a positive integer"):
        Q.calibrate(graph, [torch.zeros(1, 1, 8, 8)], num_batches=0)
    with pytest.raises(QuantizationError, match="has no quantizers: run the quantize pass"):
        Q.calibrate(mcc.trace(nn.Conv2d(1, 2, 3), torch.zeros(1, 1, 8, 8)), [torch.zeros(1, 1, 8, 8)])


def test_nan_in_the_data_is_reported():
    graph = quantized(nn.Sequential(nn.Conv2d(1, 2, 3)), torch.zeros(1, 1, 8, 8), "quantize")
    bad = torch.zeros(2, 1, 8, 8)
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(QuantizationError, match="batch 2, input 0 contains NaN or Inf"):
        Q.calibrate(graph, [torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8), bad])


class Overflows(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        y = torch.exp(self.conv(x) * 100.0)  # overflows to inf for inputs above ~0.9
        return self.fc(y.mean((2, 3)))


def test_non_finite_activation_names_the_node():
    model = Overflows().eval()
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.bias.zero_()
    graph = quantized(model, torch.zeros(1, 1, 4, 4), "quantize")
    with pytest.raises(QuantizationError, match="batch 1: the output of node 'exp' contains NaN or Inf"):
        Q.calibrate(graph, [torch.full((1, 1, 4, 4), 0.1), torch.full((1, 1, 4, 4), 10.0)])


def test_quant_params_before_and_after(digits):
    model, (x_train, _, x_test, _) = digits
    graph = quantized(model, x_test[:2])
    before = Q.quant_params(graph)
    assert before["x_quant"]["calibrated"] is False and before["conv1.weight"]["calibrated"] is True
    Q.calibrate(graph, calibration_batches(x_train))
    after = Q.quant_params(graph)
    assert set(after) == set(before)
    # the input quantizer saw the digits' real range [0, 1]: S = 1/255, Z = 0
    assert after["x_quant"]["scale"] == pytest.approx(1 / 255) and after["x_quant"]["zero_point"] == 0
    # a ReLU output has min 0: zero point 0 as well
    assert after["relu_quant"]["zero_point"] == 0 and after["relu_quant"]["calibrated"] is True
    assert len(after["fc1.weight"]["scale"]) == 64


def test_recalibration_replaces_the_ranges(digits):
    model, (x_train, _, x_test, _) = digits
    graph = quantized(model, x_test[:2])
    Q.calibrate(graph, [x_train[:32] * 0.5])
    assert Q.quant_params(graph)["x_quant"]["scale"] == pytest.approx(0.5 / 255)
    Q.calibrate(graph, [x_train[:32]])
    assert Q.quant_params(graph)["x_quant"]["scale"] == pytest.approx(1 / 255)


def test_low_bit_weights_with_learned_rounding(digits):
    model, (x_train, _, x_test, y_test) = digits
    base = accuracy(model, x_test, y_test)
    nearest = quantized(model, x_test[:2], "fold-bn,quantize{weights=int2}")
    Q.calibrate(nearest, calibration_batches(x_train))
    learned = quantized(model, x_test[:2], "fold-bn,quantize{weights=int2,rounding=adaround,adaround_steps=200}")
    weight_only = quantized(model, x_test[:2], "fold-bn,quantize{activations=none,rounding=adaround}")
    with pytest.raises(QuantizationError, match="layer 'conv1' still needs adaround.*mcc.calibrate"):
        weight_only(x_test[:2])
    stats = Q.calibrate(learned, calibration_batches(x_train))
    assert stats["adaround"] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    acc_nearest, acc_learned = accuracy(nearest, x_test, y_test), accuracy(learned, x_test, y_test)
    assert acc_nearest < base - 4            # ternary weights rounded to nearest lose points
    assert acc_learned >= base - 2.0         # learned rounding wins them back
    # AdaRound wrote ternary weights back: each is exactly −S, 0 or +S of its channel
    layer = learned.module.conv2
    codes = layer.weight.detach() / layer.weight_quant.scale.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-5)
    assert set(codes.round().unique().tolist()) <= {-1.0, 0.0, 1.0}
    # a second calibration does not round again
    weight = layer.weight.detach().clone()
    assert "adaround" not in Q.calibrate(learned, calibration_batches(x_train))
    assert torch.equal(layer.weight, weight)


def test_bias_correction_removes_the_mean_output_shift(digits):
    model, (x_train, _, x_test, _) = digits
    spec = "fold-bn,quantize{weights=int4,granularity=per-tensor,activations=none%s}"
    float_graph = Pipeline.parse("fold-bn").run(mcc.trace(model, x_test[:2]))[0]
    shifts = {}
    for name, extra in (("plain", ""), ("corrected", ",bias_correction=true")):
        graph = quantized(model, x_test[:2], spec % extra)
        stats = Q.calibrate(graph, calibration_batches(x_train, 64, 5)) if extra else {}
        if extra:
            assert stats["bias_corrected"] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
        with torch.no_grad():
            err = graph(x_train[:320]) - float_graph(x_train[:320])
        shifts[name] = err.mean(0).abs().mean().item()
    assert shifts["corrected"] < 0.5 * shifts["plain"]


def test_state_dict_carries_the_calibration(digits):
    model, (x_train, _, x_test, _) = digits
    calibrated, fresh = quantized(model, x_test[:2]), quantized(model, x_test[:2])
    Q.calibrate(calibrated, calibration_batches(x_train))
    assert Q.needs_calibration(fresh)
    fresh.module.load_state_dict(calibrated.module.state_dict())
    assert not Q.needs_calibration(fresh)
    assert torch.equal(fresh(x_test), calibrated(x_test))
