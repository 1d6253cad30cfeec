"""prune-channels{ratio=0.3} on every torchvision classification model.

Each pruned model must run, keep its output shape, lose at least 30% of its MACs, and need no
``left`` note (the analysis understands every op of every model). None is skipped. With the
default round_to=8 the measured MAC reductions are 36% (ShuffleNetV2: chunk + channel shuffle
tie the two halves of its trunk, so most trunk channels form one unit) to 56%; a pruned
network is about half the cost because both the input and the output channels of most layers
shrink by 30%.
"""

import time

import pytest
import torch

import mcc
from mcc.pipeline import Pipeline
from mcc.report import count_flops
from tests.torchvision_zoo import MODELS, build


@pytest.mark.zoo
@pytest.mark.parametrize("name", MODELS)
def test_prune_channels(name):
    model, x = build(name)
    graph = mcc.trace(model, x)
    macs_before = count_flops(graph.module, (x,)) // 2
    start = time.perf_counter()
    pruned, records = Pipeline.parse("prune-channels{ratio=0.3}").run(graph, verify=True)
    elapsed = time.perf_counter() - start
    stats = records[0].stats
    assert records[0].modified and "left" not in stats, stats.get("left")
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == model(x).shape and bool(torch.isfinite(out).all())
    macs_after = count_flops(pruned.module, (x,)) // 2
    cut = 1 - macs_after / macs_before
    assert cut >= 0.30, f"MACs only {100 * cut:.1f}% lower"
    print(f"{name}: MACs -{100 * cut:.1f}%, {stats['groups_pruned']}/{stats['groups']} groups, "
          f"{stats['channels_removed']}/{stats['channels']} channels, {elapsed:.2f}s")
