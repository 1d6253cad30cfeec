"""fold-bn on every torchvision classification model: outputs kept, every foldable BN gone."""

import time

import pytest
import torch
from torch import nn

import mcc
from mcc.pipeline import Pipeline
from tests.torchvision_zoo import MODELS, build, randomize_batchnorm

# Models with BatchNorms that cannot fold, and the reason every such BN must give.
# densenet: each dense layer starts with BN-ReLU-conv on the concatenated features.
# maxvit_t: an MBConv's pre-norm reads a tensor that also feeds its residual projection.
NOT_AFTER_LAYER = ("input is not produced by a conv or linear layer",
                   "not a conv or linear layer")
UNFOLDABLE = {name: NOT_AFTER_LAYER for name in MODELS if name.startswith("densenet")}
UNFOLDABLE["maxvit_t"] = NOT_AFTER_LAYER + ("has other users",)


@pytest.mark.zoo
@pytest.mark.parametrize("name", MODELS)
def test_fold_bn(name):
    model, x = build(name)
    randomize_batchnorm(model)
    with torch.no_grad():
        expected = model(x)
    start = time.perf_counter()
    graph = mcc.trace(model, x)
    folded, records = Pipeline.parse("fold-bn").run(graph)
    elapsed = time.perf_counter() - start
    stats = records[0].stats
    left = stats.get("left", {})
    for node, why in left.items():
        assert any(reason in why for reason in UNFOLDABLE.get(name, ())), f"{node}: {why}"
    remaining = sum(1 for _ in folded.call_modules(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
    assert remaining == len(left)
    with torch.no_grad():
        got = folded(x)
    error = (got - expected).abs().max() / expected.abs().max()
    assert error <= 1e-4, f"relative error {error:.2e}"
    print(f"{name}: folded {stats['folded']}, left {len(left)}, rel err {error:.1e}, {elapsed:.2f}s")
