"""prune-weights: target sparsity within 0.5%, the smallest weights go, stats and contracts."""

import pytest
import torch
from torch import nn

import mcc
from mcc.errors import PipelineError
from mcc.pipeline import Pipeline
from mcc.passes.prune import prunable_weights
from mcc.report import csr_bytes


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.dw(torch.relu(self.conv(x)))
        tokens = y.flatten(2).transpose(1, 2)
        a, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return self.fc((tokens + a).mean(1))


X = torch.randn(2, 3, 6, 6)
LAYERS = ["conv.weight", "dw.weight", "attn.in_proj_weight", "attn.out_proj.weight", "fc.weight"]


def prune(spec, model=None):
    model = model if model is not None else Net().eval()
    graph = mcc.trace(model, X)
    original = {n: w.detach().clone() for n, w in prunable_weights(graph.module)}
    pruned, records = Pipeline.parse(spec).run(graph, verify=True)
    return pruned, records[0], original


def test_prunable_weights_are_every_conv_linear_and_attention_projection():
    assert [n for n, _ in prunable_weights(Net())] == LAYERS


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_global_sparsity_hits_the_target_and_takes_the_smallest(sparsity):
    graph, record, original = prune(f"prune-weights{{sparsity={sparsity}}}")
    weights = dict(prunable_weights(graph.module))
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert abs(zeros / total - sparsity) <= 0.005
    assert record.stats["sparsity"] == pytest.approx(zeros / total)
    # every surviving weight is at least as large as every removed one, and unchanged
    kept = torch.cat([w.detach()[w != 0].abs() for w in weights.values()])
    removed = torch.cat([original[n][weights[n] == 0].abs() for n in weights])
    assert float(kept.min()) >= float(removed.max())
    for n, w in weights.items():
        torch.testing.assert_close(w[w != 0], original[n][w != 0], rtol=0, atol=0)


def test_layer_scope_gives_every_layer_the_target():
    graph, record, _ = prune("prune-weights{sparsity=0.6,scope=layer}")
    assert set(record.stats["layers"]) == set(LAYERS)
    for name, w in prunable_weights(graph.module):
        assert abs(float((w == 0).float().mean()) - 0.6) <= 0.005, name
        assert record.stats["layers"][name] == pytest.approx(float((w == 0).float().mean()))


def test_threshold_zeroes_exactly_the_weights_below_it():
    graph, record, original = prune("prune-weights{threshold=0.05}")
    for name, w in prunable_weights(graph.module):
        small = original[name].abs() < 0.05
        assert torch.equal(w == 0, small | (original[name] == 0)), name
    assert record.stats["zeroed"] == sum(int((o.abs() < 0.05).sum()) for o in original.values())


def test_stats_report_csr_size_and_the_model_keeps_its_shapes():
    graph, record, _ = prune("prune-weights{sparsity=0.8}")
    weights = prunable_weights(graph.module)
    assert record.stats["csr_bytes"] == sum(csr_bytes(w.detach()) for _, w in weights)
    assert record.stats["dense_bytes"] == sum(w.numel() * 4 for _, w in weights)
    assert record.stats["csr_bytes"] < 0.5 * record.stats["dense_bytes"]
    assert graph(X).shape == (2, 10)
    assert sum(p.numel() for p in graph.parameters()) == sum(p.numel() for p in Net().parameters())


def test_zeroed_parameters_are_recorded_for_finetuning():
    graph, _, _ = prune("prune-weights{sparsity=0.5}")
    assert graph.module.meta["mcc.sparse_weights"] == ["conv.weight", "dw.weight",
                                                       "attn.in_proj_weight",
                                                       "attn.out_proj.weight", "fc.weight"]


def test_second_run_changes_nothing_and_zeros_count_towards_the_target():
    graph, first, _ = prune("prune-weights{sparsity=0.5}")
    _, again = Pipeline.parse("prune-weights{sparsity=0.5}").run(graph)
    assert first.modified and not again[0].modified and again[0].stats["zeroed"] == 0
    _, more = Pipeline.parse("prune-weights{sparsity=0.7}").run(graph)
    assert more[0].modified and abs(more[0].stats["sparsity"] - 0.7) <= 0.005


def test_report_shows_the_sparse_size():
    _, report = mcc.compress(Net().eval(), X, "prune-weights{sparsity=0.9}", latency=False)
    assert report.after.sparsity > 0.85 and report.before.sparsity == 0
    assert report.after.sparse_size_bytes < 0.5 * report.before.sparse_size_bytes


@pytest.mark.parametrize("spec", ["prune-weights{sparsity=1.0}", "prune-weights{scope=row}",
                                  "prune-weights{threshold=-1}"])
def test_bad_options(spec):
    with pytest.raises(PipelineError):
        Pipeline.parse(spec)
