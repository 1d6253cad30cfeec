"""Reports: counts against closed forms, ratios, formatting, evaluation errors, JSON."""

import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import mcc
from mcc.compress import compress
from mcc.errors import ExportError, ModelError, ReportError
from mcc.pipeline import PassRecord
from mcc.report import (Comparison, ModelStats, Report, csr_bytes, human_bytes, human_count,
                        measure)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)             # 3·8·9 + 8 = 224 params
        self.fc = nn.Linear(8 * 6 * 6, 10)         # 288·10 + 10 = 2890 params
        self.register_buffer("table", torch.zeros(5, dtype=torch.float16))  # 10 bytes, unused

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def small_input(batch=1):
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_counts_match_closed_forms():
    torch.manual_seed(0)
    stats = measure(Small(), small_input(), latency=False)
    assert stats.params == 224 + 2890
    assert stats.size_by_dtype == {"float32": (224 + 2890) * 4, "float16": 10}
    assert stats.size_bytes == (224 + 2890) * 4 + 10
    conv_macs = 8 * 3 * 3 * 3 * 6 * 6            # Cout·Cin·k·k·Hout·Wout
    fc_macs = 288 * 10
    assert stats.macs == conv_macs + fc_macs
    assert stats.flops == 2 * stats.macs
    assert stats.sparsity == 0.0
    assert stats.latency_ms is None and stats.latency_p90_ms is None
    assert stats.metric is None and stats.metric_name is None


@pytest.mark.parametrize("cin, cout, k, stride, padding, groups, size", [
    (3, 16, 3, 1, 0, 1, 9),
    (8, 16, 3, 1, 1, 4, 5),       # grouped
    (6, 6, 3, 2, 1, 6, 11),       # depthwise, strided
    (4, 10, 1, 1, 0, 1, 7),       # pointwise
    (2, 5, 5, 3, 2, 1, 13),
])
def test_conv_macs_closed_form(cin, cout, k, stride, padding, groups, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups)
    batch = 2
    out = (size + 2 * padding - k) // stride + 1
    stats = measure(conv, torch.randn(batch, cin, size, size), latency=False)
    assert stats.macs == batch * cout * (cin // groups) * k * k * out * out
    assert stats.params == cout * (cin // groups) * k * k + cout


def test_linear_macs_and_batch():
    torch.manual_seed(0)
    fc = nn.Linear(12, 7)
    assert measure(fc, torch.randn(3, 12), latency=False).macs == 3 * 12 * 7
    assert measure(fc, torch.randn(3, 5, 12), latency=False).macs == 15 * 12 * 7


def test_sparsity_and_sparse_size():
    fc = nn.Linear(10, 4, bias=True)
    with torch.no_grad():
        fc.weight[:, :6] = 0                      # 24 of 40 weights are zero
    stats = measure(fc, torch.randn(1, 10), latency=False)
    assert stats.sparsity == pytest.approx(24 / 40)
    # CSR of the weight: 16 values·(4 B + 4 B index) + 5 row pointers·4 B; the bias stays dense.
    assert csr_bytes(fc.weight) == 16 * 8 + 5 * 4
    assert stats.sparse_size_bytes == 16 * 8 + 5 * 4 + 4 * 4


def test_sparsity_counts_only_weights_of_two_or_more_dims():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[0].weight[:1] = 0                  # 18 of 72 conv weights
        model[0].bias.zero_()                    # 1-d: not counted as weights
        model[1].weight.zero_()
    stats = measure(model, torch.randn(1, 2, 5, 5), latency=False)
    assert stats.sparsity == pytest.approx(18 / 72)
    # conv weight in CSR (54 nonzeros, 4 rows), the rest dense: conv bias 4, BN γ β mean var
    # 4 floats each, num_batches_tracked one int64.
    dense = 4 * 4 + 4 * 4 * 4 + 8
    assert stats.sparse_size_bytes == 54 * 8 + 5 * 4 + dense
    assert stats.size_by_dtype == {"float32": (72 + 4 + 16) * 4, "int64": 8}


def test_tied_weights_count_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 6, bias=False)
            self.b = nn.Linear(6, 6, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    stats = measure(Tied(), torch.randn(1, 6), latency=False)
    assert stats.params == 36 and stats.size_bytes == 36 * 4
    assert stats.macs == 2 * 36


def test_graph_constants_are_counted():
    class WithConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.offset = torch.arange(4.0)      # a plain attribute: FX keeps it as a get_attr

        def forward(self, x):
            return self.fc(x) + self.offset

    model, x = WithConstant(), torch.randn(2, 4)
    graph = mcc.trace(model, x)
    assert measure(graph, latency=False).size_bytes == measure(model, x, latency=False).size_bytes + 16


def test_latency_is_measured():
    torch.manual_seed(0)
    stats = measure(Small(), small_input(), warmup=1, repeats=5)
    assert 0 < stats.latency_ms <= stats.latency_p90_ms


def test_graph_and_module_agree_and_modes_are_restored():
    torch.manual_seed(0)
    model = Small().train()
    model.conv.eval()                            # a mixed state must come back as it was
    x = small_input()
    graph = mcc.trace(model, x)
    a = measure(graph, latency=False)
    b = measure(model, x, latency=False)
    assert (a.params, a.macs, a.flops, a.sparsity) == (b.params, b.macs, b.flops, b.sparsity)
    assert b.size_bytes - a.size_bytes == 10     # tracing keeps only the buffers forward() reads
    assert model.training and not model.conv.training and model.fc.training
    assert graph.training
    # the Graph's own example inputs are the default; others may be given
    assert measure(graph, small_input(batch=3), latency=False).macs == 3 * a.macs


def test_bad_models_and_inputs():
    with pytest.raises(ModelError, match="needs example inputs"):
        measure(Small())
    with pytest.raises(ModelError, match="got str"):
        measure("resnet18", small_input())
    with pytest.raises(ModelError, match="example inputs must be a tensor"):
        measure(Small(), [1, 2, 3])
    with pytest.raises(ModelError, match=r"fails on the example inputs \(float32\[1, 3, 9, 9\]\)"):
        measure(Small(), torch.randn(1, 3, 9, 9), latency=False)
    with pytest.raises(ReportError, match="repeats >= 1"):
        measure(Small(), small_input(), repeats=0)


def accuracy(model):
    return 87.5


class Evaluator:
    def __call__(self, model):
        return "good"


def test_metric_and_evaluation_errors():
    torch.manual_seed(0)
    model, x = Small().train(), small_input()
    seen = []

    def records_mode(m):
        seen.append(m.training)
        return torch.tensor(0.5)

    stats = measure(model, x, latency=False, evaluate=accuracy, metric_name="top-1 %")
    assert stats.metric == 87.5 and stats.metric_name == "top-1 %"
    assert measure(model, x, latency=False, evaluate=records_mode).metric == 0.5
    assert seen == [False] and model.training  # evaluated in eval mode, mode restored
    assert measure(model, x, latency=False, evaluate=lambda m: np.float32(0.25)).metric == 0.25

    def broken(m):
        raise RuntimeError("no data")

    with pytest.raises(ReportError, match=r"test_report\.test_metric_and_evaluation_errors"
                                          r"\.<locals>\.broken raised RuntimeError: no data"):
        measure(model, x, latency=False, evaluate=broken)
    for bad, shown in (("90%", r"'90%' \(str\)"), (None, r"None \(NoneType\)"),
                       (True, r"True \(bool\)"), (math.nan, r"nan \(float\)"),
                       (torch.tensor([1.0, 2.0]), r"tensor\(\[1\., 2\.\]\) \(Tensor\)"),
                       (torch.zeros(1000), r"tensor\(\[0\., .*\.\.\. \(Tensor\)")):
        with pytest.raises(ReportError, match=rf"returned {shown}; it must return a finite number"):
            measure(model, x, latency=False, evaluate=lambda m, v=bad: v)
    with pytest.raises(ReportError, match=r"function tests\.test_report\.Evaluator object returned 'good'"):
        measure(model, x, latency=False, evaluate=Evaluator())
    assert model.training


def stats(**kw):
    base = dict(params=1000, size_bytes=4096, size_by_dtype={"float32": 4096}, macs=10_000,
                flops=20_000, sparsity=0.0, sparse_size_bytes=4000, latency_ms=10.0,
                latency_p90_ms=12.0, metric=90.0, metric_name="top-1 %")
    base.update(kw)
    return ModelStats(**base)


@pytest.mark.parametrize("n, text", [
    (0, "0"), (224, "224"), (999, "999"), (1000, "1.00 K"), (3114, "3.11 K"), (99_949, "99.9 K"),
    (11_689_512, "11.7 M"), (1_814_073_344, "1.81 G"), (999_999_999, "1.00 G")])
def test_human_count(n, text):
    assert human_count(n) == text


@pytest.mark.parametrize("n, text", [
    (10, "10 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (4000, "3.91 KiB"),
    (11_689_512 * 4, "44.6 MiB"), (1024 ** 2 - 10, "1.00 MiB"), (3 * 1024 ** 3, "3.00 GiB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_comparison_ratios_and_table():
    c = Comparison(stats(), stats(params=250, size_bytes=1024, macs=4000, latency_ms=4.0,
                                  latency_p90_ms=5.0, metric=89.25))
    assert c.compression_ratio == 4.0 and c.param_ratio == 4.0
    assert c.flop_ratio == 2.5 and c.speedup == 2.5
    assert c.metric_delta == pytest.approx(-0.75)
    lines = c.table().splitlines()
    assert lines[0].split() == ["before", "after", "change"]
    rows = {line.split("  ")[0].strip(): line.split("  ")[1:] for line in lines[1:]}
    cells = {k: [v.strip() for v in vs if v.strip()] for k, vs in rows.items()}
    assert cells == {
        "params": ["1.00 K", "250", "4.00x"],
        "size": ["4.00 KiB", "1.00 KiB", "4.00x"],
        "MACs": ["10.0 K", "4.00 K", "2.50x"],
        "sparsity": ["0.0%", "0.0%", "+0.0 pp"],
        "latency median": ["10.00 ms", "4.00 ms", "2.50x"],
        "latency p90": ["12.00 ms", "5.00 ms", "2.40x"],
        "top-1 %": ["90", "89.25", "-0.75"],
    }
    # columns line up: every row is as wide as the header
    assert len({len(line) for line in lines}) == 1


def test_comparison_without_latency_or_metric_and_with_sparsity():
    c = Comparison(stats(latency_ms=None, latency_p90_ms=None, metric=None),
                   stats(latency_ms=None, latency_p90_ms=None, metric=None, sparsity=0.5,
                         sparse_size_bytes=2500))
    assert c.speedup is None and c.metric_delta is None
    table = c.table()
    assert "latency" not in table and "top-1" not in table
    assert "+50.0 pp" in table
    sparse_row = next(line for line in table.splitlines() if line.startswith("size, sparse"))
    assert sparse_row.split()[3:] == ["3.91", "KiB", "2.44", "KiB", "1.60x"]
    assert Comparison(stats(), stats(size_bytes=0)).compression_ratio is None


def test_single_stats_table_lists_dtypes():
    text = stats(size_bytes=4106, size_by_dtype={"float32": 4096, "float16": 10}).table()
    assert "size            4.01 KiB (float32 4.00 KiB, float16 10 B)" in text
    assert "latency median  10.00 ms" in text and "top-1 %         90" in text


def left_bns(n):
    return {f"bn{i}": "graph is in training mode" for i in range(n)}


def test_report_table_renders_passes():
    report = Report("fold-bn,dce", [
        PassRecord("fold-bn", "fold-bn", True, 0.123,
                   {"folded": 20, "left": {"bn3": "output of conv3 has other users (add)"}}),
        PassRecord("dce", "dce", False, 0.004, {"removed": 0}),
        PassRecord("quantize", "quantize{bits=8}", True, 1.5,
                   {"ratio": 0.333333, "left": {**left_bns(5), "fc": "not a float tensor"}}),
    ], stats(), stats(params=900), ["fold-bn: left bn3 alone"])
    lines = report.table().splitlines()
    assert lines[0] == "pipeline: fold-bn,dce"
    assert lines[1] == "  fold-bn   0.12 s  folded=20, left=[bn3: output of conv3 has other users (add)]"
    assert lines[2] == "  dce       0.00 s  (no change) removed=0"
    assert lines[3] == ("  quantize  1.50 s  ratio=0.3333, "
                        "left=[bn0, bn1, bn2 +2 more: graph is in training mode; fc: not a float tensor]")
    assert lines[4:6] == ["notes:", "  - fold-bn: left bn3 alone"]
    assert lines[6] == ""
    assert lines[8].split() == ["params", "1.00", "K", "900", "1.11x"]


def test_report_json_round_trip(tmp_path):
    stats_with_odd_values = {"folded": 3, "left": {"bn": "why"}, "scale": torch.tensor([0.5, 2.0]),
                             "dtype": torch.int8, "mean": np.float64(1.5), "shape": torch.Size([2, 3]),
                             "error": math.inf}
    report = Report("fold-bn", [PassRecord("fold-bn", "fold-bn", True, 0.5, stats_with_odd_values)],
                    stats(), stats(params=900, latency_ms=math.nan), ["fold-bn: left bn alone: why"])
    path = tmp_path / "r.json"
    data = json.loads(report.to_json(path))
    assert data == json.loads(path.read_text())
    assert os.listdir(tmp_path) == ["r.json"]    # the temporary file was renamed, not left
    assert data["passes"][0] == {
        "name": "fold-bn", "spec": "fold-bn", "modified": True, "seconds": 0.5,
        "stats": {"folded": 3, "left": {"bn": "why"}, "scale": [0.5, 2.0], "dtype": "int8",
                  "mean": 1.5, "shape": [2, 3], "error": None}}
    assert data["before"] == stats().to_dict()
    assert data["after"]["params"] == 900 and data["after"]["latency_ms"] is None
    assert data["after"]["size_by_dtype"] == {"float32": 4096}
    assert data["comparison"]["param_ratio"] == pytest.approx(1000 / 900)
    assert data["comparison"]["speedup"] is None
    assert data["notes"] == ["fold-bn: left bn alone: why"]
    assert ModelStats(**json.loads(stats().to_json())) == stats()
    assert json.loads(Comparison(stats(), stats(macs=5000)).to_json())["flop_ratio"] == 2.0


def test_report_json_to_a_missing_directory(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        Report("dce").to_json(tmp_path / "missing" / "r.json")


def test_report_of_a_real_run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 2)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
    graph, report = compress(model, torch.randn(1, 3, 6, 6), pipeline="fold-bn", latency=False)
    assert report.before.params - report.after.params == 8           # BN γ and β
    # γ, β, running mean and variance (4 floats each) and the int64 num_batches_tracked
    assert report.before.size_bytes - report.after.size_bytes == 4 * 4 * 4 + 8
    assert report.comparison.flop_ratio == 1.0
    assert report.table().splitlines()[1].split()[:4] == ["fold-bn", f"{report.passes[0].seconds:.2f}",
                                                          "s", "folded=1"]
    assert json.loads(report.to_json())["passes"][0]["stats"] == {"folded": 1}


def test_quantized_weights_count_at_their_bit_width():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8)).eval()
    graph, report = compress(model, torch.randn(4, 16), pipeline="quantize{activations=none}",
                             latency=False)
    assert report.before.storage_bytes is None and report.before.stored_bytes == (128 + 8) * 4
    # int8 weights 128 B, a float32 scale and int32 zero point per output channel 8·8 B,
    # the float32 bias 8·4 B; in memory the fake-quantized layer still holds float weights,
    # scales, zero points, the calibrated flag and its input scale (a float32 0-d buffer).
    assert report.after.storage_bytes == 128 + 8 * 8 + 8 * 4
    assert report.after.size_bytes == (128 + 8) * 4 + 8 * 4 + 8 * 4 + 1 + 4
    assert report.comparison.compression_ratio == pytest.approx(544 / 224)
    row = next(line for line in report.table().splitlines() if line.startswith("size, quantized"))
    assert row.split()[2:] == ["544", "B", "224", "B", "2.43x"]
    assert json.loads(report.to_json())["after"]["storage_bytes"] == 224
