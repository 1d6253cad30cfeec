"""fold-bn on every layer kind it supports, the cases it must refuse, and its contracts."""

import pytest
import torch
from torch import nn

import mcc
from mcc.pipeline import Pipeline


def randomize_bn(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics so that folding is really tested."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            with torch.no_grad():
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=gen))
                    m.bias.copy_(torch.randn(n, generator=gen))
    return model


def fold(model, x):
    graph = mcc.trace(model, x)
    folded, records = Pipeline.parse("fold-bn").run(graph.copy(), verify=True)
    return graph, folded, records[0]


def count_bn(graph):
    return sum(1 for _ in graph.call_modules(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))


CASES = [
    ("conv1d", lambda: nn.Sequential(nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6)), (2, 3, 10)),
    ("conv2d-nobias", lambda: nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6)), (2, 3, 9, 9)),
    ("conv2d-grouped", lambda: nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.BatchNorm2d(8)), (2, 4, 9, 9)),
    ("conv2d-depthwise", lambda: nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4)), (2, 4, 9, 9)),
    ("conv3d", lambda: nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4)), (1, 2, 6, 6, 6)),
    ("convT2d", lambda: nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2), nn.BatchNorm2d(6)), (2, 4, 5, 5)),
    ("convT2d-grouped", lambda: nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2, bias=False),
                                              nn.BatchNorm2d(6)), (2, 4, 5, 5)),
    ("convT1d", lambda: nn.Sequential(nn.ConvTranspose1d(3, 5, 4), nn.BatchNorm1d(5)), (2, 3, 7)),
    ("linear", lambda: nn.Sequential(nn.Linear(10, 7), nn.BatchNorm1d(7)), (4, 10)),
    ("linear-nobias", lambda: nn.Sequential(nn.Linear(10, 7, bias=False), nn.BatchNorm1d(7)), (4, 10)),
    ("bn-no-affine", lambda: nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6, affine=False)), (2, 3, 4, 4)),
]


@pytest.mark.parametrize("name, make, shape", CASES, ids=[c[0] for c in CASES])
def test_folds_and_keeps_outputs(name, make, shape):
    model = randomize_bn(make()).eval()
    x = torch.randn(*shape)
    expected = model(x)
    graph, folded, record = fold(model, x)
    assert record.stats == {"folded": 1} and record.modified
    assert count_bn(folded) == 0 and count_bn(graph) == 1  # the input graph is untouched
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)
    # contract: a second run finds nothing to do
    _, again = Pipeline.parse("fold-bn").run(folded)
    assert again[0].modified is False


def test_folded_weights_match_the_formula():
    conv, bn = nn.Conv2d(2, 3, 1, bias=True), nn.BatchNorm2d(3)
    randomize_bn(bn)
    model = nn.Sequential(conv, bn).eval()
    _, folded, _ = fold(model, torch.randn(1, 2, 3, 3))
    fused = folded.module.get_submodule("0")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(fused.weight, conv.weight * scale[:, None, None, None])
    torch.testing.assert_close(fused.bias, (conv.bias - bn.running_mean) * scale + bn.bias)


class Branchy(nn.Module):
    """The conv's output feeds the BN and a second branch: folding would change the branch."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class Shared(nn.Module):
    """One conv module called twice, once followed by BN: folding would change the other call."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


class AfterPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool, self.bn = nn.MaxPool2d(2), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.pool(x))


@pytest.mark.parametrize("model, reason", [
    (Branchy(), "output of conv has other users (add)"),
    (Shared(), "layer conv is shared by several call sites"),
    (AfterPool(), "input comes from MaxPool2d, not a conv or linear layer"),
])
def test_leaves_unfoldable_bn_alone_and_says_why(model, reason):
    model = randomize_bn(model).eval()
    x = torch.randn(2, 3, 6, 6)
    _, folded, record = fold(model, x)
    assert record.modified is False and record.stats["folded"] == 0
    assert list(record.stats["left"].values()) == [reason]
    torch.testing.assert_close(folded(x), model(x))


def test_training_mode_is_left_alone():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).train()
    graph = mcc.trace(model, torch.randn(2, 3, 6, 6))
    _, records = Pipeline.parse("fold-bn").run(graph)
    assert records[0].modified is False
    assert "training mode" in records[0].stats["left"]["_1"]


def test_user_model_is_never_mutated():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    graph, report = mcc.compress(model, torch.randn(1, 3, 6, 6), pipeline="fold-bn", latency=False)
    assert isinstance(model[1], nn.BatchNorm2d)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert report.passes[0].stats == {"folded": 1}
