"""Channel groups on small hand-built graphs, one per coupling pattern.

Each test checks the group structure (which nodes' channels are coupled, at which positions,
how many independent units) and then removes some units after making them dead (their weights
zeroed): the pruned graph must compute exactly what the unpruned one computed, which proves
every place those channels lived was found and sliced consistently.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mcc
from mcc.analysis import channel_groups
from tests.analysis.prune_util import prune_dead


def groups_of(model, x):
    graph = mcc.trace(model, x)
    return graph, channel_groups(graph)


def first_units(group, k):
    return group.unit_ids[:k]


# ---- residual addition and multiplication -----------------------------------------------------


class Residual(nn.Module):
    def __init__(self, op="add"):
        super().__init__()
        self.op = op
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        z = self.branch(y)
        z = y + z if self.op == "add" else y * torch.sigmoid(z)
        return self.head(z)


@pytest.mark.parametrize("op", ["add", "mul"])
def test_residual_couples_both_operands(op):
    graph, cg = groups_of(Residual(op).eval(), torch.randn(1, 3, 6, 6))
    g = cg.group_of("stem")
    assert set(g.members) == {("stem", "out"), ("bn", "norm"), ("branch", "in"),
                              ("branch", "out"), ("head", "in")}
    assert g.width == g.units == 8 and g.prunable
    assert all(p == list(range(8)) for p in g.members.values())
    head = cg.group_of("head")
    assert not head.prunable and head.reason == "network output"
    assert len(cg.prunable) == 1  # the network input's 3 channels are in no group

    _, pruned, _ = prune_dead(Residual(op).eval(), torch.randn(2, 3, 6, 6),
                              lambda cg: first_units(cg.group_of("stem"), 3))
    m = pruned.module
    assert (m.stem.out_channels, m.bn.num_features, m.branch.in_channels,
            m.branch.out_channels, m.head.in_channels) == (5, 5, 5, 5, 5)
    assert m.stem.weight.shape == (5, 3, 3, 3) and m.bn.running_var.shape == (5,)


# ---- concatenation, split, chunk, slicing --------------------------------------------------------


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


def test_concat_maps_each_input_to_its_slice():
    _, cg = groups_of(Concat(), torch.randn(1, 3, 4, 4))
    ga, gb = cg.group_of("a"), cg.group_of("b")
    assert ga is not gb
    assert ga.members[("c", "in")] == [0, 1, 2, 3]
    assert gb.members[("c", "in")] == [4, 5, 6, 7, 8, 9]
    units = lambda cg: np.concatenate([cg.group_of("a").unit_ids[[1]],
                                       cg.group_of("b").unit_ids[[0, 5]]])
    _, pruned, _ = prune_dead(Concat(), torch.randn(2, 3, 4, 4), units)
    assert (pruned.module.a.out_channels, pruned.module.b.out_channels,
            pruned.module.c.in_channels) == (3, 4, 7)


class Chunked(nn.Module):
    """chunk(2) needs equal halves: position j of both halves is one unit."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.left, self.right = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        a, b = torch.chunk(self.conv(x), 2, dim=1)
        return self.left(a) + self.right(b)


def test_chunk_ties_the_halves():
    _, cg = groups_of(Chunked(), torch.randn(1, 3, 4, 4))
    g = cg.group_of("conv")
    assert g.width == 8 and g.units == 4 and set(g.unit_sizes) == {2}
    assert g.members[("left", "in")] == g.members[("right", "in")] == [0, 1, 2, 3]
    _, pruned, _ = prune_dead(Chunked(), torch.randn(2, 3, 4, 4),
                              lambda cg: cg.group_of("conv").unit_ids[[0, 3]])
    assert (pruned.module.conv.out_channels, pruned.module.left.in_channels) == (4, 2)


class Split(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.left, self.right = nn.Conv2d(3, 2, 1), nn.Conv2d(5, 2, 1)

    def forward(self, x):
        a, b = torch.split(self.conv(x), [3, 5], dim=1)
        return self.left(a) + self.right(b)


def test_split_with_sizes_is_rewritten():
    _, cg = groups_of(Split(), torch.randn(1, 3, 4, 4))
    first, second = cg.groups_of("conv", "out")  # the two parts go to different layers
    assert first.members == {("conv", "out"): [0, 1, 2], ("left", "in"): [0, 1, 2]}
    assert second.members == {("conv", "out"): [3, 4, 5, 6, 7], ("right", "in"): [0, 1, 2, 3, 4]}
    units = lambda cg: np.concatenate([cg.groups_of("conv", "out")[0].unit_ids[[1]],
                                       cg.groups_of("conv", "out")[1].unit_ids[[1, 3]]])
    _, pruned, _ = prune_dead(Split(), torch.randn(2, 3, 4, 4), units)
    split = next(n for n in pruned.nodes if n.name == "split")
    assert list(split.args[1]) == [2, 3]
    assert (pruned.module.left.in_channels, pruned.module.right.in_channels) == (2, 3)


class Sliced(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        return self.head(self.conv(x)[:, 2:7])


def test_channel_slice_bounds_follow_the_kept_channels():
    _, cg = groups_of(Sliced(), torch.randn(1, 3, 4, 4))
    unread, read = cg.groups_of("conv", "out")  # channels 0, 1, 7 are read by nobody
    assert unread.members == {("conv", "out"): [0, 1, 7]} and unread.prunable
    assert read.members == {("conv", "out"): [2, 3, 4, 5, 6], ("head", "in"): [0, 1, 2, 3, 4]}
    units = lambda cg: np.concatenate([cg.groups_of("conv", "out")[0].unit_ids[[0, 2]],
                                       cg.groups_of("conv", "out")[1].unit_ids[[1]]])
    _, pruned, _ = prune_dead(Sliced(), torch.randn(1, 3, 4, 4), units)
    getitem = next(n for n in pruned.nodes if n.name == "getitem")
    assert getitem.args[1][1] == slice(1, 5, None)  # kept 1,2,4,5,6 -> 2..6 are 2,4,5,6
    assert pruned.module.head.in_channels == 4


# ---- depthwise and grouped convolutions -------------------------------------------------------------


class Separable(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        self.bn = nn.BatchNorm2d(8)
        self.project = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.project(self.bn(self.mid(self.expand(x))))


def test_depthwise_conv_passes_channels_through():
    _, cg = groups_of(Separable(8).eval(), torch.randn(1, 3, 5, 5))
    g = cg.group_of("expand")
    assert {("mid", "in"), ("mid", "out"), ("bn", "norm"), ("project", "in")} <= set(g.members)
    assert g.units == 8
    _, pruned, _ = prune_dead(Separable(8).eval(), torch.randn(2, 3, 5, 5),
                              lambda cg: cg.group_of("expand").unit_ids[[2, 5, 6]])
    mid = pruned.module.mid
    assert (mid.in_channels, mid.out_channels, mid.groups) == (5, 5, 5)


def test_grouped_conv_keeps_groups_equal():
    _, cg = groups_of(Separable(2).eval(), torch.randn(1, 3, 5, 5))
    g_in, g_out = cg.group_of("expand"), cg.group_of("mid")
    assert g_in is not g_out
    # every group of the grouped conv loses the same positions: units span both blocks
    assert g_in.units == 4 and list(g_in.unit_sizes) == [2] * 4
    assert g_out.units == 4 and ("project", "in") in g_out.members
    units = lambda cg: np.concatenate([cg.group_of("expand").unit_ids[[1]],
                                       cg.group_of("mid").unit_ids[[0, 2]]])
    _, pruned, _ = prune_dead(Separable(2).eval(), torch.randn(2, 3, 5, 5), units)
    mid = pruned.module.mid
    assert (mid.in_channels, mid.out_channels, mid.groups) == (6, 4, 2)
    assert mid.weight.shape == (4, 3, 3, 3)


# ---- normalisation ---------------------------------------------------------------------------------


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.gn = nn.GroupNorm(2, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.gn(self.conv(x)))


def test_groupnorm_ties_positions_across_its_groups():
    graph, cg = groups_of(Norms(), torch.randn(1, 3, 4, 4))
    g = cg.group_of("conv")
    assert ("gn", "norm") in g.members and g.units == 4 and g.width == 8
    from mcc.passes.prune import apply_pruning

    apply_pruning(graph, cg, g.unit_ids[[0]])
    gn = graph.module.gn
    assert (gn.num_groups, gn.num_channels, gn.weight.shape[0]) == (2, 6, 6)
    assert graph(torch.randn(1, 3, 4, 4)).shape == (1, 2, 4, 4)


class Tokens(nn.Module):
    """A token MLP with LayerNorm over the last axis and a residual stream."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.fc2(F.gelu(self.fc1(self.norm(h))))
        return self.head(h)


def test_layernorm_and_linear_on_tokens():
    graph, cg = groups_of(Tokens(), torch.randn(2, 5, 6))
    stream, hidden = cg.group_of("embed"), cg.group_of("fc1")
    assert {("norm", "norm"), ("fc1", "in"), ("fc2", "out"), ("head", "in")} <= set(stream.members)
    assert hidden.members == {("fc1", "out"): list(range(16)), ("fc2", "in"): list(range(16))}
    from mcc.passes.prune import apply_pruning

    apply_pruning(graph, cg, np.concatenate([stream.unit_ids[[0, 1]], hidden.unit_ids[:4]]))
    m = graph.module
    assert m.norm.normalized_shape == (6,) and m.norm.weight.shape == (6,)
    assert (m.fc1.in_features, m.fc1.out_features, m.head.in_features) == (6, 12, 6)
    assert graph(torch.randn(2, 5, 6)).shape == (2, 5, 3)


# ---- flatten -> Linear, squeeze-and-excitation ---------------------------------------------------------


class Flattened(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_flatten_to_linear_takes_every_spatial_position():
    _, cg = groups_of(Flattened(), torch.randn(1, 3, 5, 5))
    g = cg.group_of("conv")
    assert g.members[("fc", "in")] == list(range(36)) and g.units == 4
    graph, pruned, _ = prune_dead(Flattened(), torch.randn(2, 3, 5, 5),
                                  lambda cg: cg.group_of("conv").unit_ids[[1]])
    assert pruned.module.fc.in_features == 27
    w = graph.module.fc.weight  # channel 1 held features 9..17
    torch.testing.assert_close(pruned.module.fc.weight, torch.cat([w[:, :9], w[:, 18:]], 1))


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.reduce, self.expand = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(F.adaptive_avg_pool2d(y, 1)))))
        return self.head(y * gate)


def test_squeeze_excitation_gate_is_coupled_with_the_features():
    _, cg = groups_of(SE(), torch.randn(1, 3, 6, 6))
    g = cg.group_of("conv")
    assert {("conv", "out"), ("reduce", "in"), ("expand", "out"), ("head", "in")} <= set(g.members)
    assert cg.group_of("reduce").members == {("reduce", "out"): [0, 1], ("expand", "in"): [0, 1]}
    _, pruned, _ = prune_dead(SE(), torch.randn(2, 3, 6, 6),
                              lambda cg: cg.group_of("conv").unit_ids[[0, 4, 7]])
    m = pruned.module
    assert (m.conv.out_channels, m.reduce.in_channels, m.expand.out_channels,
            m.head.in_channels) == (5, 5, 5, 5)


# ---- channel shuffle -------------------------------------------------------------------------------------


class Shuffle(nn.Module):
    """ShuffleNet's shuffle written by hand (view/transpose/view) or as nn.ChannelShuffle."""

    def __init__(self, module: bool):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.shuffle = nn.ChannelShuffle(2) if module else None
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        if self.shuffle is not None:
            y = self.shuffle(y)
        else:
            n, c, h, w = y.size()
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.head(y)


@pytest.mark.parametrize("module", [False, True], ids=["view-transpose", "ChannelShuffle"])
def test_channel_shuffle_pairs_the_two_branches(module):
    _, cg = groups_of(Shuffle(module), torch.randn(1, 3, 4, 4))
    g = cg.group_of("a")
    assert cg.group_of("b") is g and g.units == 4
    # after the shuffle, channel j of a sits at 2j and channel j of b at 2j+1
    assert g.members[("head", "in")] == list(range(8))
    _, pruned, _ = prune_dead(Shuffle(module), torch.randn(2, 3, 4, 4),
                              lambda cg: cg.group_of("a").unit_ids[[1, 2]])
    assert (pruned.module.a.out_channels, pruned.module.b.out_channels,
            pruned.module.head.in_channels) == (2, 2, 4)


# ---- attention -------------------------------------------------------------------------------------------


class MHA(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(h + a)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_heads_keep_one_width(batch_first):
    _, cg = groups_of(MHA(batch_first).eval(), torch.randn(2, 5, 6))
    g = cg.group_of("embed")
    assert {("attn", "in"), ("attn", "attention"), ("attn", "out"), ("head", "in")} <= set(g.members)
    assert g.width == 8 and g.units == 4  # position j of head 0 and head 1 is one unit
    _, pruned, _ = prune_dead(MHA(batch_first).eval(), torch.randn(2, 5, 6),
                              lambda cg: cg.group_of("embed").unit_ids[[1]])
    attn = pruned.module.attn
    assert (attn.embed_dim, attn.head_dim, attn.num_heads) == (6, 3, 2)
    assert attn.in_proj_weight.shape == (18, 6) and attn.out_proj.weight.shape == (6, 6)


class HandAttention(nn.Module):
    """q/k/v projections, heads by reshape, scores by matmul or SDPA."""

    def __init__(self, sdpa: bool):
        super().__init__()
        self.sdpa = sdpa
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)
        self.heads = 2

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).reshape(b, n, self.heads, 4).transpose(1, 2)
        k = self.k(x).reshape(b, n, self.heads, 4).transpose(1, 2)
        v = self.v(x).reshape(b, n, self.heads, 4).transpose(1, 2)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = torch.softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1) @ v
        return self.out(o.transpose(1, 2).reshape(b, n, 8))


@pytest.mark.parametrize("sdpa", [False, True], ids=["matmul", "sdpa"])
def test_hand_written_attention(sdpa):
    _, cg = groups_of(HandAttention(sdpa), torch.randn(2, 5, 8))
    qk = cg.group_of("q")
    assert cg.group_of("k") is qk and qk.units == 4 and list(qk.unit_sizes) == [2] * 4
    v = cg.group_of("v")
    assert v is not qk and ("out", "in") in v.members and v.units == 4
    units = lambda cg: np.concatenate([cg.group_of("q").unit_ids[[0, 3]],
                                       cg.group_of("v").unit_ids[[2]]])
    _, pruned, _ = prune_dead(HandAttention(sdpa), torch.randn(2, 5, 8), units)
    m = pruned.module
    assert (m.q.out_features, m.k.out_features, m.v.out_features, m.out.in_features) == (4, 4, 6, 6)
    sizes = [n.args[-1] for n in pruned.nodes if n.op == "call_method" and n.target == "reshape"]
    assert sizes == [2, 2, 3, 6]  # head widths and the merged width were rewritten


# ---- what the analysis refuses -----------------------------------------------------------------------------


class Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)
        self.other = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return self.head(torch.cumsum(self.conv(x), dim=1)) + self.head(self.other(x))


def test_unknown_channel_op_pins_its_group_and_is_reported():
    _, cg = groups_of(Cumulative(), torch.randn(1, 3, 4, 4))
    g = cg.group_of("conv")
    assert not g.prunable and "accumulates across channels" in g.reason
    assert list(cg.left) == ["cumsum"]
    assert cg.group_of("other").prunable


def test_network_input_channels_are_never_grouped():
    class AddInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.head = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.head(self.conv(x) + x)

    _, cg = groups_of(AddInput(), torch.randn(1, 3, 4, 4))
    g = cg.group_of("conv")
    assert not g.prunable and "whose channels are fixed" in g.reason
    assert cg.prunable == []


def test_cached_analysis_is_invalidated_by_pruning():
    from mcc.pass_manager import AnalysisManager
    from mcc.passes.prune import PruneChannels

    graph = mcc.trace(Residual().eval(), torch.randn(1, 3, 6, 6))
    analyses = AnalysisManager(graph)
    first = analyses.get("channel_groups")
    assert analyses.get("channel_groups") is first
    result = PruneChannels(ratio=0.5, round_to=1).run(graph, analyses)
    assert result.modified
    analyses.invalidate(PruneChannels.preserves)
    again = analyses.get("channel_groups")
    assert again is not first and again.group_of("stem").width == 4
