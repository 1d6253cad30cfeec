"""QAT: the fake-quant graph trains (straight-through estimator, optionally LSQ scales) after BN
was folded, and recovers the accuracy post-training quantization lost."""

import pytest
import torch
from torch import nn

import mcc
import mcc.quant as Q
from mcc.pipeline import Pipeline
from tests.quant.digits import accuracy, calibration_batches, digits_data, trained_digits


def train(graph, x, y, epochs=2, lr=1e-3):
    """A minimal training loop: what mcc.finetune does, without distillation."""
    graph.train()
    opt = torch.optim.Adam(graph.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(graph(x[idx]), y[idx]).backward()
            opt.step()
    graph.eval()


@pytest.fixture(scope="module")
def digits():
    return trained_digits(), digits_data()


@pytest.mark.parametrize("learn_scales", [False, True])
def test_qat_recovers_ternary_weights(digits, learn_scales):
    model, (x_train, y_train, x_test, y_test) = digits
    spec = f"fold-bn,quantize{{weights=int2,learn_scales={str(learn_scales).lower()}}}"
    graph = Pipeline.parse(spec).run(mcc.trace(model, x_test[:2]))[0]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in graph.module.modules())  # folded first
    Q.calibrate(graph, calibration_batches(x_train))
    base, ptq = accuracy(model, x_test, y_test), accuracy(graph, x_test, y_test)
    assert ptq < base - 4
    scales = {n: p["scale"] for n, p in Q.quant_params(graph).items()}
    weight = graph.module.conv2.weight.detach().clone()
    train(graph, x_train, y_train, epochs=4, lr=5e-4)
    qat = accuracy(graph, x_test, y_test)
    assert qat >= base - 1.0
    assert not torch.equal(graph.module.conv2.weight, weight)  # gradients reached the weights
    after = {n: p["scale"] for n, p in Q.quant_params(graph).items()}
    # scales are trained only with LSQ; otherwise they stay as calibrated
    assert (after != scales) == learn_scales
    # still a ternary network
    wq = graph.module.conv2.weight_quant
    assert set(wq.codes(graph.module.conv2.weight).unique().tolist()) <= {-1, 0, 1}


def test_lsq_scales_are_parameters_and_ptq_is_unchanged_by_them(digits):
    model, (x_train, _, x_test, y_test) = digits
    plain = Pipeline.parse("fold-bn,quantize").run(mcc.trace(model, x_test[:2]))[0]
    lsq = Pipeline.parse("fold-bn,quantize{learn_scales=true}").run(mcc.trace(model, x_test[:2]))[0]
    names = {n for n, _ in lsq.module.named_parameters()}
    assert "x_quant.scale" in names and "conv1.weight_quant.scale" in names
    for g in (plain, lsq):
        Q.calibrate(g, calibration_batches(x_train))
    # before training, a learnable scale is just the calibrated one
    assert Q.quant_params(plain) == Q.quant_params(lsq)
    assert torch.equal(plain(x_test), lsq(x_test))
