"""prune-channels: options, criteria, selection, bad input, and its contracts."""

import numpy as np
import pytest
import torch
from torch import nn

import mcc
from mcc.analysis import channel_groups
from mcc.errors import MccError, PassError, PipelineError
from mcc.pipeline import Pipeline
from mcc.passes.prune import PruneChannels, prune_channels
from tests.analysis.prune_util import kill_units


class Net(nn.Module):
    """Stem, a residual block, a squeeze-excitation gate and a linear head: four prunable
    groups of 16 channels each (stem/residual stream, block inner, SE squeeze is 4 wide)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.reduce, self.expand = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(y)))
        g = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.fc((x * g).mean((2, 3)))


def randomized(model):
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


X = torch.randn(2, 3, 8, 8)


def widths(graph):
    m = graph.module
    return (m.stem.out_channels, m.conv1.out_channels, m.reduce.out_channels)


def run(spec, model=None, x=X):
    graph = mcc.trace(model if model is not None else randomized(Net()), x)
    out, records = Pipeline.parse(spec).run(graph, verify=True)
    return out, records[0]


def test_half_of_every_group_goes_and_outputs_keep_their_shape():
    graph, record = run("prune-channels{ratio=0.5,round_to=1}")
    assert widths(graph) == (8, 8, 2)
    assert record.modified and record.stats == {"groups": 3, "groups_pruned": 3, "channels": 36,
                                                "channels_removed": 18}
    m = graph.module
    assert (m.conv1.in_channels, m.conv2.out_channels, m.expand.out_channels,
            m.fc.in_features, m.fc.out_features) == (8, 8, 8, 8, 10)
    assert graph(X).shape == (2, 10)
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in graph.parameters())


@pytest.mark.parametrize("ratio, round_to, kept", [(0.3, 1, 11), (0.3, 8, 8), (0.3, 4, 12),
                                                   (0.1, 8, 16), (0.9, 8, 8)])
def test_round_to_keeps_multiples(ratio, round_to, kept):
    graph, _ = run(f"prune-channels{{ratio={ratio},round_to={round_to}}}")
    assert graph.module.stem.out_channels == kept


def dead_half(graph):
    """Kill the first half of the units of every prunable group; return them."""
    cg = channel_groups(graph)
    units = np.concatenate([g.unit_ids[: g.units // 2] for g in cg.prunable])
    kill_units(graph, cg, units)
    return units


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn-gamma", "taylor"])
def test_dead_channels_rank_lowest_and_their_removal_changes_nothing(criterion):
    graph = mcc.trace(randomized(Net()), X)
    dead_half(graph)
    with torch.no_grad():
        expected = graph(X)
    result = PruneChannels(ratio=0.5, round_to=1, criterion=criterion).run(
        graph, mcc.pass_manager.AnalysisManager(graph))
    assert result.stats["channels_removed"] == 18
    with torch.no_grad():
        torch.testing.assert_close(graph(X), expected, rtol=1e-5, atol=1e-5)


def test_bn_gamma_ranks_by_batchnorm_scale_only():
    model = randomized(Net())
    with torch.no_grad():  # channels 0..3 of the stem group: tiny gammas, large conv weights
        model.bn0.weight[:4] = 1e-3
        model.bn2.weight[:4] = 1e-3
        model.stem.weight[:4] *= 100
    graph, _ = run("prune-channels{ratio=0.25,round_to=1,criterion=bn-gamma}", model)
    kept = graph.module.bn0.weight
    assert kept.shape == (12,) and bool((kept > 0.4).all())
    graph, _ = run("prune-channels{ratio=0.25,round_to=1,criterion=l1}", model)
    assert float(graph.module.bn0.weight.detach().min()) < 0.01  # l1 keeps them: the conv rows dominate


def test_taylor_with_a_loss_ignores_channels_the_output_does_not_use():
    """Channels whose readers ignore them have zero gradient: taylor removes them even though
    their weights are the largest."""
    model = randomized(Net())
    with torch.no_grad():
        model.conv1.weight[:8] *= 50  # block-inner channels 0..7: big weights ...
        model.conv2.weight[:, :8] = 0  # ... that conv2 never reads
    graph = mcc.trace(model, X)
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(2)]
    prune_channels(graph, 0.5, round_to=1, criterion="taylor", data=data,
                   loss=nn.functional.cross_entropy)
    torch.testing.assert_close(graph.module.conv2.weight.abs().sum((0, 2, 3)) > 0,
                               torch.ones(8, dtype=torch.bool))
    graph = mcc.trace(model, X)
    prune_channels(graph, 0.5, round_to=1, criterion="l1")
    # l1 sees only magnitudes and keeps some of the unread channels
    assert float(graph.module.conv1.weight.detach().abs().sum((1, 2, 3)).max()) > 50


def test_random_criterion_is_reproducible():
    model = randomized(Net())
    a, _ = run("prune-channels{ratio=0.5,round_to=1,criterion=random}", model)
    b, _ = run("prune-channels{ratio=0.5,round_to=1,criterion=random}", model)
    torch.testing.assert_close(a.module.stem.weight, b.module.stem.weight)


def test_global_scope_takes_more_from_weaker_groups():
    model = randomized(Net())
    with torch.no_grad():
        for k in range(16):  # block-inner group: a wide spread of channel norms
            model.conv1.weight[k] *= 0.05 * (k + 1)
    graph, record = run("prune-channels{ratio=0.3,round_to=1,scope=global}", model)
    removed = record.stats["channels_removed"]
    assert abs(removed - 0.3 * 36) <= 2
    assert graph.module.conv1.out_channels < graph.module.stem.out_channels


def test_ignore_keeps_a_layer_and_everything_coupled_to_it():
    graph, record = run("prune-channels{ratio=0.5,round_to=1,ignore=[conv2]}")
    # conv2 writes the residual stream and reads the block-inner channels: both groups stay
    assert widths(graph) == (16, 16, 2) and record.stats["groups"] == 1
    graph, _ = run("prune-channels{ratio=0.5,round_to=1,ignore=[reduce]}")
    assert widths(graph) == (16, 8, 4)  # reduce reads the stream and writes the squeeze


def test_ignore_name_that_matches_nothing_is_an_error():
    with pytest.raises(PassError, match="'layer9'.*neither a node nor a module"):
        run("prune-channels{ignore=[layer9]}")


@pytest.mark.parametrize("spec, message", [
    ("prune-channels{ratio=1.0}", "must be < 1"),
    ("prune-channels{ratio=-0.1}", "must be >= 0"),
    ("prune-channels{criterion=l3}", "not one of"),
    ("prune-channels{round_to=0}", "must be >= 1"),
])
def test_bad_options(spec, message):
    with pytest.raises(PipelineError, match=message):
        Pipeline.parse(spec)


class Opaque(nn.Module):
    """A conv whose output goes through cumsum over channels: the analysis cannot follow it."""

    def __init__(self):
        super().__init__()
        self.conv, self.free = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.free(torch.cumsum(self.conv(x), dim=1)))


def test_unresolvable_group_is_left_alone_and_reported():
    graph, record = run("prune-channels{ratio=0.5,round_to=1}", Opaque(), torch.randn(1, 3, 4, 4))
    assert graph.module.conv.out_channels == 8 and graph.module.free.out_channels == 4
    assert record.stats["left"] == {"cumsum": "cumsum accumulates across channels"}
    _, report = mcc.compress(Opaque(), torch.randn(1, 3, 4, 4), "prune-channels{round_to=1}",
                             latency=False)
    assert "left=[cumsum: cumsum accumulates across channels]" in report.table()


def test_strict_refuses_and_names_the_node():
    with pytest.raises(PassError, match="at node 'cumsum'.*accumulates across channels"):
        run("prune-channels{strict=true}", Opaque(), torch.randn(1, 3, 4, 4))


def test_ratio_zero_changes_nothing_and_a_second_run_prunes_further():
    graph, record = run("prune-channels{ratio=0}")
    assert not record.modified and widths(graph) == (16, 16, 4)
    graph, records = Pipeline.parse("prune-channels{ratio=0.5,round_to=1},"
                                    "prune-channels{ratio=0.5,round_to=1}").run(
        mcc.trace(randomized(Net()), X), verify=True)
    assert [r.modified for r in records] == [True, True] and widths(graph) == (4, 4, 1)


def test_compress_reports_fewer_params_and_macs_and_leaves_the_model_alone():
    model = randomized(Net())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph, report = mcc.compress(model, X, "prune-channels{ratio=0.5,round_to=1}", latency=False)
    c = report.comparison
    assert c.param_ratio > 2.5 and 3.0 < c.flop_ratio < 4.5
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert isinstance(PruneChannels(), PruneChannels) and isinstance(PassError("p", "m"), MccError)
