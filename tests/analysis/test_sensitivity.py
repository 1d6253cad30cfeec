"""prune_sensitivity: one row per channel group, drops and MAC savings against closed forms."""

import pytest
import torch
from torch import nn

import mcc
from mcc.analysis import prune_sensitivity
from mcc.errors import MccError, ReportError


class TwoConvs(nn.Module):
    """conv1 (3→16) - BN - ReLU - conv2 (16→16) - ReLU - mean - fc (16→4): two prunable groups.
    conv1's channels 8..15 are dead (zero weights, zero BN shift), so removing them is free."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)
        with torch.no_grad():
            self.conv1.weight[8:] = 0
            self.conv1.bias[8:] = 0
            self.bn1.bias[8:] = 0

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


# MACs per image at 8×8: conv1 16·3·9·64, conv2 16·16·9·64, fc 16·4
MACS = 16 * 3 * 9 * 64 + 16 * 16 * 9 * 64 + 16 * 4


@pytest.fixture
def setup():
    model = TwoConvs().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        reference = model(x)

    def evaluate(module):  # 0 for the unpruned model, negative MSE otherwise
        return -float((module(x) - reference).pow(2).mean())

    return mcc.trace(model, x), evaluate


def test_rows_rank_groups_with_exact_mac_savings(setup):
    graph, evaluate = setup
    before = {k: v.clone() for k, v in graph.module.state_dict().items()}
    rows = prune_sensitivity(graph, evaluate, ratios=(0.1, 0.5))
    assert [r["group"] for r in rows] == ["conv2", "conv1"]  # dead channels cost nothing
    conv2, conv1 = rows
    assert conv1["channels"] == conv2["channels"] == 16
    # 0.1 of 16 channels rounds back to 16 (round_to=8): nothing pruned, nothing lost
    for row in rows:
        assert row["kept@0.1"] == 16 and row["macs@0.1"] == 0.0 and row["drop@0.1"] == 0.0
        assert row["kept@0.5"] == 8
    # conv1 → 8 channels halves conv1 and conv2's inputs; conv2 → 8 halves conv2 and fc's inputs
    assert conv1["macs@0.5"] == pytest.approx((8 * 3 * 9 * 64 + 8 * 16 * 9 * 64) / MACS, rel=1e-12)
    assert conv2["macs@0.5"] == pytest.approx((8 * 16 * 9 * 64 + 8 * 4) / MACS, rel=1e-12)
    assert abs(conv1["drop@0.5"]) < 1e-10  # the dead half went
    assert conv2["drop@0.5"] > 1e-4
    for k, v in graph.module.state_dict().items():  # the graph itself is untouched
        assert torch.equal(v, before[k]), k


def test_options_change_what_is_pruned(setup):
    graph, evaluate = setup
    (row,) = [r for r in prune_sensitivity(graph, evaluate, ratios=(0.3,), round_to=1)
              if r["group"] == "conv1"]
    assert row["kept@0.3"] == 11  # 16 - round(0.3·16)
    assert list(row) == ["group", "channels", "kept@0.3", "macs@0.3", "drop@0.3"]


@pytest.mark.parametrize("ratios, match", [((), "empty"), ((0.5, 1.0), r"\[0, 1\)"),
                                           ((-0.1,), r"\[0, 1\)"), (0.3, "sequence")])
def test_bad_ratios(setup, ratios, match):
    graph, evaluate = setup
    with pytest.raises(MccError, match=match):
        prune_sensitivity(graph, evaluate, ratios=ratios)


def test_bad_criterion_and_evaluation(setup):
    graph, evaluate = setup
    with pytest.raises(MccError, match="taylor"):
        prune_sensitivity(graph, evaluate, criterion="taylor")
    with pytest.raises(ReportError, match="finite number"):
        prune_sensitivity(graph, lambda m: float("nan"))
    with pytest.raises(MccError, match="mcc.Graph"):
        prune_sensitivity(TwoConvs(), evaluate)
