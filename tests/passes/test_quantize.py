"""The quantize pass: where quantizers go, what each option does, and the errors it raises."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mcc
import mcc.quant as Q
from mcc.errors import MccError, PassError, PipelineError, QuantizationError
from mcc.pipeline import Pipeline
from mcc.quant import FakeQuantize, QuantizedLayer


class Block(nn.Module):
    """conv-bn-relu, a residual add, a concatenation, max-pool, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.c2(x)) + x
        x = torch.cat([y, self.c3(y)], 1)
        x = F.max_pool2d(x, 2)
        return self.fc(x.flatten(1))


def quantize(model, x, spec="fold-bn,quantize"):
    graph = mcc.trace(model.eval(), x)
    out, records = Pipeline.parse(spec).run(graph)
    return out, records[-1]


def layout(graph):
    """``[(node, target or op)]``: the graph's structure in one comparable list."""
    rows = []
    for n in graph.nodes:
        if n.op == "call_module":
            rows.append((n.name, f"{n.target}:{type(graph.submodule(n)).__name__}"))
        elif n.op in ("call_function", "call_method"):
            rows.append((n.name, getattr(n.target, "__name__", n.target)))
    return rows


def test_quantizers_sit_where_an_int8_engine_quantizes():
    graph, record = quantize(Block(), torch.randn(2, 3, 8, 8))
    assert record.stats["quantized_layers"] == 4 and record.stats["activation_quantizers"] == 6
    assert layout(graph) == [
        ("x_quant", "x_quant:FakeQuantize"),            # graph input
        ("c1", "c1:QuantConv2d"),                       # BN folded in
        ("relu", "relu"),                               # fused: no quantizer between conv and ReLU
        ("relu_quant", "relu_quant:FakeQuantize"),
        ("c2", "c2:QuantConv2d"),
        ("relu_1", "relu"),
        ("relu_1_quant", "relu_1_quant:FakeQuantize"),
        ("add", "add"),                                 # residual add in int8 ...
        ("add_quant", "cat_quant:FakeQuantize"),        # ... its output feeds the concat: shared scale
        ("c3", "c3:QuantConv2d"),
        ("c3_quant", "cat_quant:FakeQuantize"),         # c3 writes at the concat's scale too
        ("cat", "cat"),                                 # concat, max-pool, flatten keep the grid
        ("max_pool2d", "max_pool2d"),
        ("flatten", "flatten"),
        ("fc", "fc:QuantLinear"),
        ("fc_quant", "fc_quant:FakeQuantize"),
    ]
    assert [(u.kind, u.node, u.activation, u.inputs, u.output) for u in Q.units(graph)] == [
        ("conv", "c1", "relu", ("x_quant",), "relu_quant"),
        ("conv", "c2", "relu_1", ("relu_quant",), "relu_1_quant"),
        ("add", "add", None, ("relu_1_quant", "relu_quant"), "add_quant"),
        ("conv", "c3", None, ("add_quant",), "c3_quant"),
        ("cat", "cat", None, ("add_quant", "c3_quant"), None),
        ("linear", "fc", None, ("add_quant",), "fc_quant"),
    ]


def test_unit_inputs_are_found_through_grid_keeping_ops():
    graph, _ = quantize(Block(), torch.randn(2, 3, 8, 8))
    fc = Q.units(graph)[-1]
    # fc reads flatten(max_pool(cat)): the concat's codes, on the grid of its shared quantizer
    assert fc.kind == "linear" and fc.inputs == ("add_quant",)
    assert graph.node("add_quant").target == "cat_quant"


def test_per_channel_weight_scales_are_the_folded_weights_absmax_over_127():
    model = Block().eval()
    graph, _ = quantize(model, torch.randn(2, 3, 8, 8))
    c1 = graph.module.c1
    bn = model.b1
    folded = model.c1.weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps))[:, None, None, None]
    expected = folded.detach().abs().amax(dim=(1, 2, 3)) / 127
    torch.testing.assert_close(c1.weight_quant.scale, expected)
    params = Q.quant_params(graph)["c1.weight"]
    assert params["axis"] == 0 and len(params["scale"]) == 8
    assert (params["quant_min"], params["quant_max"], params["bits"]) == (-127, 127, 8)


def test_quantized_graph_needs_calibration_then_matches_float_closely():
    model = Block().eval()
    x = torch.randn(4, 3, 8, 8)
    graph, _ = quantize(model, x)
    assert Q.needs_calibration(graph)
    with pytest.raises(QuantizationError, match="not calibrated"):
        graph(x)
    Q.calibrate(graph, [torch.randn(4, 3, 8, 8) for _ in range(4)] + [x])
    assert not Q.needs_calibration(graph)
    ref = model(x)
    err = (graph(x) - ref).abs().max().item()
    assert 0 < err < 0.05 * ref.abs().max().item()
    # the concat's quantizer is one module called twice: its inputs share scale and zero point
    p = Q.quant_params(graph)
    assert p["add_quant"]["scale"] == p["c3_quant"]["scale"] and p["add_quant"]["role"] == "shared"


def test_second_run_changes_nothing():
    graph, _ = quantize(Block(), torch.randn(2, 3, 8, 8))
    again, records = Pipeline.parse("quantize").run(graph)
    assert records[0].modified is False and records[0].stats["quantized_layers"] == 0


def test_weight_only_runs_without_calibration():
    model = Block().eval()
    x = torch.randn(2, 3, 8, 8)
    graph, record = quantize(model, x, "fold-bn,quantize{activations=none,weights=int4}")
    assert record.stats["activation_quantizers"] == 0
    assert not any(isinstance(m, FakeQuantize) for _, m in graph.call_modules())
    assert not Q.needs_calibration(graph)
    wq = graph.module.c2.weight_quant
    assert (wq.quant_min, wq.quant_max, wq.bits) == (-7, 7, 4)
    assert set(wq.codes(graph.module.c2.weight).unique().tolist()) <= set(range(-7, 8))
    assert (graph(x) - model(x)).abs().max().item() < 0.5


def test_int8_activations_are_symmetric_signed():
    graph, _ = quantize(Block(), torch.randn(2, 3, 8, 8), "fold-bn,quantize{activations=int8}")
    fq = graph.module.x_quant
    assert (fq.signed, fq.symmetric, fq.quant_min, fq.quant_max) == (True, True, -128, 127)
    graph, _ = quantize(Block(), torch.randn(2, 3, 8, 8),
                        "fold-bn,quantize{activations=int8,symmetric=false}")
    assert graph.module.x_quant.symmetric is False
    assert graph.module.c1.weight_quant.symmetric is False
    assert graph.module.c1.weight_quant.quant_min == -128  # affine weights use the full range


def test_skip_patterns_first_and_last():
    x = torch.randn(2, 3, 8, 8)
    graph, record = quantize(Block(), x, "fold-bn,quantize{skip=[c2, 'c3']}")
    quantized = {n.name for n, _ in graph.call_modules(QuantizedLayer)}
    assert quantized == {"c1", "fc"}
    assert record.stats["left"]["c2"] == "skipped (skip=c2)"
    graph, record = quantize(Block(), x, "fold-bn,quantize{skip=['c*']}")
    assert {n.name for n, _ in graph.call_modules(QuantizedLayer)} == {"fc"}
    graph, record = quantize(Block(), x, "fold-bn,quantize{skip_first=true,skip_last=true}")
    assert {n.name for n, _ in graph.call_modules(QuantizedLayer)} == {"c2", "c3"}
    assert record.stats["left"] == {"c1": "first layer (skip_first)", "fc": "last layer (skip_last)"}
    # the float first layer reads the raw input: no input quantizer is needed
    assert "x_quant" not in {n.name for n in graph.nodes}
    assert isinstance(graph.module.c1, nn.Conv2d) and not isinstance(graph.module.c1, QuantizedLayer)


def test_skip_name_that_matches_nothing():
    with pytest.raises(PassError, match=r"skip name conv9 matches no Conv/Linear layer.*c1, c2, c3, fc"):
        quantize(Block(), torch.randn(2, 3, 8, 8), "fold-bn,quantize{skip=[conv9]}")


def test_unfolded_batchnorm_is_reported():
    _, record = quantize(Block(), torch.randn(2, 3, 8, 8), "quantize")
    assert "run fold-bn before quantize" in record.stats["left"]["b1"]


@pytest.mark.parametrize("spec, message", [
    ("quantize{weights=int3}", "'int3' is not one of int8, int7, int4, int2, binary"),
    ("quantize{activations=fp8}", "option 'activations'.*'fp8'"),
    ("quantize{scheme=log2,weights=binary}", "log2 needs a bit width"),
    ("quantize{weights=binary,rounding=adaround}", "adaround learns rounding on a linear grid"),
    ("quantize{scheme=log2,learn_scales=true}", "LSQ"),
    ("quantize{observer=kmeans}", "not one of minmax"),
    ("quantize{percentile=20}", "out of range"),
])
def test_bad_options(spec, message):
    with pytest.raises(PipelineError, match=message):
        Pipeline.parse(spec)


def test_pipeline_text_round_trips():
    text = "fold-bn,quantize{weights=int4,granularity=per-tensor,skip=[layer1.0.conv1,fc],rounding=adaround}"
    assert str(Pipeline.parse(text)) == text


class Activations(nn.Module):
    """Each Conv/Linear followed by a different activation an integer kernel fuses."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU6()
        self.l1, self.l2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        x = self.act(self.c1(x))
        x = torch.clamp(self.c2(x), -1.0, 2.5)
        x = F.hardtanh(self.c3(x), min_val=-0.5, max_val=0.5)
        x = x.mean((2, 3))
        x = self.l1(x).clamp(min=0)
        return torch.sigmoid(self.l2(x))


def test_fused_activations_and_their_bounds():
    graph, _ = quantize(Activations(), torch.randn(2, 3, 4, 4), "quantize")
    got = [(u.node, u.activation, u.clamp) for u in Q.units(graph)]
    assert got == [("c1", "act", (0.0, 6.0)), ("c2", "clamp", (-1.0, 2.5)),
                   ("c3", "hardtanh", (-0.5, 0.5)), ("l1", "clamp_1", (0.0, float("inf"))),
                   ("l2", None, None)]
    # the mean is a float op: its output gets its own quantizer before l1
    assert Q.units(graph)[3].inputs == ("mean_quant",)


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.fc1, self.fc2 = nn.Linear(4, 2), nn.Linear(2, 4)
        self.out = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return self.out(x * s[:, :, None, None])


def test_float_ops_get_a_quantizer_before_the_next_quantized_unit():
    graph, _ = quantize(SqueezeExcite(), torch.randn(2, 4, 5, 5), "quantize")
    names = [n.name for n in graph.nodes]
    assert "mean_quant" in names and "mul_quant" in names and "sigmoid_quant" not in names
    assert Q.units(graph)[-1].inputs == ("mul_quant",)


def test_already_quantized_graph_is_left_alone_by_a_second_quantize():
    graph, _ = quantize(Block(), torch.randn(2, 3, 8, 8))
    n_before = len(list(graph.nodes))
    _, records = Pipeline.parse("quantize{weights=int4}").run(graph)
    assert records[0].stats["note"] == "graph is already quantized"
    assert len(list(graph.nodes)) == n_before


def test_errors_are_mcc_errors():
    assert issubclass(QuantizationError, MccError)


def test_storage_shrinks_with_bit_width():
    model = Block().eval()
    x = torch.randn(2, 3, 8, 8)
    folded, _ = quantize(model, x, "fold-bn")
    float_bytes = Q.storage_bytes(folded)
    weights = sum(m.weight.numel() for _, m in folded.call_modules(nn.Conv2d, nn.Linear))
    int8, _ = quantize(model, x, "fold-bn,quantize{activations=none}")
    int4, _ = quantize(model, x, "fold-bn,quantize{activations=none,weights=int4}")
    assert float_bytes - Q.storage_bytes(int8) == weights * 3 - 8 * (8 + 8 + 4 + 10)
    assert Q.storage_bytes(int8) - Q.storage_bytes(int4) == weights // 2
