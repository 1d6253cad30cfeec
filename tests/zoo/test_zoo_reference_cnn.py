"""The committed reference CNN: its structure, its size, torch.fx tracing, and its accuracy."""

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import fx, nn

import mcc
from mcc.zoo import FashionCNN, evaluate_fashion_mnist, reference_cnn

WEIGHTS = Path(mcc.__file__).parent / "data" / "fashion_cnn.pt"
# What docs/zoo.md and scripts/train_reference_cnn.py report for the committed weights.
DOCUMENTED_TOP1 = 91.74


def test_committed_weights_score_the_documented_accuracy():
    accuracy = evaluate_fashion_mnist(reference_cnn(), batch_size=1000)
    assert accuracy >= 90.0
    # Other CPUs may sum in another order; a handful of near-ties may flip, no more.
    assert accuracy == pytest.approx(DOCUMENTED_TOP1, abs=0.05)


def test_weights_file_is_small_and_matches_the_architecture():
    assert WEIGHTS.stat().st_size < 300_000
    state = torch.load(WEIGHTS, weights_only=True)
    assert set(state) == set(FashionCNN().state_dict())
    assert sum(p.numel() for p in reference_cnn().parameters()) == 54222


def test_has_the_layers_real_networks_have():
    model = reference_cnn()
    kinds = Counter(type(m).__name__ for m in model.modules())
    assert kinds["Conv2d"] == 10 and kinds["BatchNorm2d"] == 8 and kinds["Linear"] == 1
    depthwise = model.block2.depthwise
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == 24
    assert isinstance(model.block1.shortcut[0], nn.Conv2d)  # projection shortcut
    assert len(model.block3.shortcut) == 0  # identity shortcut


def test_traces_with_torch_fx_and_keeps_its_outputs():
    model = reference_cnn()
    assert not model.training
    x = torch.randn(4, 1, 28, 28)
    graph = mcc.trace(model, x)
    assert graph.source == "torch.fx"
    ops = Counter(n.op for n in graph.nodes)
    assert ops["call_module"] == 21  # 10 convs, 8 BNs, stem ReLU, pool, fc
    assert torch.allclose(graph(x), model(x), atol=1e-6)
    assert isinstance(fx.symbolic_trace(model), fx.GraphModule)


def test_untrained_model_is_fresh_and_differs():
    trained, fresh = reference_cnn(), reference_cnn(pretrained=False)
    x = torch.randn(2, 1, 28, 28)
    assert not torch.allclose(trained(x), fresh(x))
    assert torch.equal(fresh.stem[1].running_mean, torch.zeros(16))
