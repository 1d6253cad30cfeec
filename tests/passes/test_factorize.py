"""factorize: exact factors at full rank, the energy rule, the MAC budget, recovery by
distillation, bad input, and the pass's contracts."""

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mcc
from mcc.errors import MccError, PassError, PipelineError
from mcc.finetune import distillation_loss, finetune
from mcc.passes.factorize import FACTORIZED_KEY, Factorize, decompose, factorize_layer
from mcc.pipeline import Pipeline
from mcc.report import count_flops


def rel(a, b):
    return float((a - b).norm() / b.norm())


def macs(graph):
    return count_flops(graph.module, graph.example_inputs) // 2


class SmallCNN(nn.Module):
    """3×3 convs, a 1×1 conv, a depthwise (grouped) conv and two linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.pw = nn.Conv2d(64, 96, 1)
        self.dw = nn.Conv2d(96, 96, 3, padding=1, groups=96)
        self.fc1 = nn.Linear(96, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x)) + x
        x = torch.relu(self.dw(torch.relu(self.pw(x))))
        return self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))


X = torch.randn(2, 3, 16, 16)


def run(spec, model=None, x=X):
    graph = mcc.trace((model if model is not None else SmallCNN()).eval(), x)
    out, records = Pipeline.parse(spec).run(graph.copy(), verify=True)
    return graph, out, records[0]


# ---- the factors --------------------------------------------------------------------------
FULL_RANK = [
    ("linear", lambda: nn.Linear(24, 16), "svd", (5, 24)),
    ("linear-tall-3d-nobias", lambda: nn.Linear(16, 40, bias=False), "svd", (2, 7, 16)),
    ("conv1x1-stride-pad", lambda: nn.Conv2d(12, 20, 1, stride=2, padding=1), "svd", (2, 12, 9, 9)),
    ("conv1d-1", lambda: nn.Conv1d(12, 20, 1), "svd", (2, 12, 9)),
    ("spatial-3x3-stride", lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1), "spatial-svd",
     (2, 6, 11, 11)),
    ("spatial-3x5-dilated", lambda: nn.Conv2d(6, 10, (3, 5), stride=(1, 2), padding=(1, 2),
                                              dilation=(2, 1)), "spatial-svd", (2, 6, 13, 13)),
    ("spatial-same-reflect", lambda: nn.Conv2d(6, 10, 3, padding="same", padding_mode="reflect"),
     "spatial-svd", (2, 6, 8, 8)),
    ("tucker2-3x3-stride", lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1), "tucker2",
     (2, 6, 11, 11)),
    ("tucker2-stem", lambda: nn.Conv2d(1, 16, 3, padding=1), "tucker2", (2, 1, 8, 8)),
    ("tucker2-conv1d-circular", lambda: nn.Conv1d(5, 7, 4, padding=2, padding_mode="circular"),
     "tucker2", (2, 5, 12)),
]


@pytest.mark.parametrize("name, make, method, shape", FULL_RANK, ids=[c[0] for c in FULL_RANK])
def test_full_rank_factors_reproduce_the_layer(name, make, method, shape):
    layer = make()
    x = torch.randn(*shape)
    seq = factorize_layer(layer, method)
    assert isinstance(seq, nn.Sequential) and len(seq) == (3 if method == "tucker2" else 2)
    with torch.no_grad():
        assert rel(seq(x), layer(x)) < 1e-5
    # the bias lives on the last factor only
    assert all(m.bias is None for m in seq[:-1])
    assert (seq[-1].bias is None) == (layer.bias is None)


def test_svd_split_is_u_sqrt_sigma_times_sqrt_sigma_v():
    layer = nn.Linear(20, 12)
    first, second = factorize_layer(layer, "svd")
    sigma = torch.linalg.svdvals(layer.weight.detach().double())
    # (U·√Σ)(√Σ·Vᵀ): row i of the first factor and column i of the second have norm √σᵢ
    torch.testing.assert_close(first.weight.detach().double().norm(dim=1), sigma.sqrt(),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second.weight.detach().double().norm(dim=0), sigma.sqrt(),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second.weight @ first.weight, layer.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second.bias, layer.bias)
    assert first.weight.requires_grad and second.bias.requires_grad


def composed_weight(seq, method):
    """The weight the factors compute, rebuilt from the factor weights."""
    w = [m.weight.detach().double() for m in seq]
    if method == "svd":
        return (w[1].flatten(1) @ w[0].flatten(1))
    if method == "spatial-svd":
        return torch.einsum("rci,orj->ocij", w[0][..., 0], w[1][:, :, 0, :])
    return torch.einsum("op,pqij,qc->ocij", w[2][:, :, 0, 0], w[1], w[0][:, :, 0, 0])


@pytest.mark.parametrize("method, layer", [
    ("svd", nn.Linear(24, 16)),
    ("spatial-svd", nn.Conv2d(4, 6, 3)),
    ("tucker2", nn.Conv2d(6, 8, 3)),
])
def test_reconstruction_error_falls_with_rank(method, layer):
    weight = layer.weight.detach().double()
    target = weight.flatten(1) if method == "svd" else weight
    d = decompose(layer, method)
    errors = []
    if method == "tucker2":
        ranks = [(r, r) for r in range(1, max(d.full) + 1)]
    else:
        ranks = [(r,) for r in range(1, d.full[0] + 1)]
    for r in ranks:
        r = tuple(min(a, f) for a, f in zip(r, d.full))
        err = rel(composed_weight(factorize_layer(layer, method, r), method), target)
        errors.append(err)
        if method == "tucker2":  # 1 − kept energy is the squared error; HOSVD bounds it
            assert err ** 2 == pytest.approx(1 - d.kept_energy(r), abs=1e-6)
            assert err ** 2 <= d.discarded(r) + 1e-6
        else:  # Eckart–Young: the squared error is the discarded energy, exactly
            assert err ** 2 == pytest.approx(1 - d.spectra[0][: r[0]].sum(), abs=1e-6)
    assert all(b < a for a, b in zip(errors, errors[1:-1])), errors
    assert errors[0] > 0.3 and errors[-1] < 1e-5


# ---- the energy rule ------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, width=64, sigma=None):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, 10)
        if sigma is not None:  # fc1 = U·diag(sigma)·Vᵀ with random orthonormal U, V
            g = torch.Generator().manual_seed(5)
            u, _ = torch.linalg.qr(torch.randn(width, width, generator=g))
            v, _ = torch.linalg.qr(torch.randn(width, width, generator=g))
            with torch.no_grad():
                self.fc1.weight.copy_(u @ torch.diag(sigma) @ v.T)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


SIGMA = 0.5 ** torch.arange(64.0)  # squared spectrum 4^-k: 75%, 93.75%, 98.4% ...


@pytest.mark.parametrize("energy, round_to, rank", [(0.9, 1, 2), (0.95, 1, 3), (0.7, 1, 1),
                                                    (0.9, 8, 8), (0.999, 4, 8)])
def test_energy_keeps_the_smallest_rank_that_holds_it(energy, round_to, rank):
    x = torch.randn(4, 64)
    _, out, record = run(f"factorize{{energy={energy},round_to={round_to},layers=[fc1]}}",
                         MLP(sigma=SIGMA), x)
    assert record.stats["layers"]["fc1"]["rank"] == rank
    kept = float((SIGMA[:rank] ** 2).sum() / (SIGMA ** 2).sum())
    assert record.stats["layers"]["fc1"]["energy"] == pytest.approx(kept, abs=1e-6)
    assert record.stats["layers"]["fc1"]["mac_saving"] == pytest.approx(1 - rank * 128 / 4096)
    assert out.module.fc1[0].out_features == rank


# ---- what is left alone -------------------------------------------------------------------
def test_grouped_conv_is_skipped_with_a_note_and_refused_when_named():
    graph, out, record = run("factorize{method=tucker2,rank=0.5}")
    assert record.stats["left"] == {
        "dw": "grouped convolution (groups=96); no factorize method supports grouped or "
              "depthwise convolutions",
        "conv1": "rank 3×16 would cost 1.10× the layer's MACs"}  # 3 input channels: no gain
    assert isinstance(out.module.dw, nn.Conv2d) and isinstance(out.module.conv1, nn.Conv2d)
    assert set(record.stats["layers"]) == {"conv2", "conv3"}
    with pytest.raises(PassError, match=r"at node 'dw'.*grouped convolution \(groups=96\)"):
        run("factorize{method=tucker2,rank=0.5,layers=[dw]}")


def test_rank_one_point_zero_never_makes_a_layer_more_expensive():
    graph, out, record = run("factorize{method=tucker2,rank=1.0}")
    assert not record.modified and macs(out) == macs(graph)
    assert record.stats["left"]["conv3"] == "rank 64×64 would cost 1.22× the layer's MACs"


@settings(max_examples=15, deadline=None)
@given(width_in=st.integers(4, 48), width_out=st.integers(4, 48),
       fraction=st.floats(0.05, 1.0), min_reduction=st.sampled_from([0.0, 0.2, 0.5]))
def test_min_reduction_never_lets_macs_grow(width_in, width_out, fraction, min_reduction):
    model = nn.Sequential(nn.Linear(width_in, width_out)).eval()
    graph = mcc.trace(model, torch.randn(3, width_in))
    before = macs(graph)
    out, (record,) = Pipeline.parse(f"factorize{{rank={fraction},round_to=1,"
                                    f"min_reduction={min_reduction}}}").run(graph.copy())
    after = macs(out)
    assert after <= before
    rank = math.ceil(fraction * min(width_in, width_out) - 1e-9)
    cost = rank * (width_in + width_out) * 3
    assert record.modified == (cost < before and cost <= (1 - min_reduction) * before)
    if record.modified:
        assert after == cost <= (1 - min_reduction) * before
        assert record.stats["model_macs"] == pytest.approx(after / before)
    else:
        assert after == before
        assert record.stats["left"]["_0"].startswith(f"rank {rank} ")


def test_shared_module_is_left_alone():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 64)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    _, _, record = run("factorize{rank=8}", Twice(), torch.randn(2, 64))
    assert not record.modified
    assert set(record.stats["left"]) == {"fc", "fc_1"}
    assert "called from several places" in record.stats["left"]["fc"]


# ---- the MAC budget -----------------------------------------------------------------------
@pytest.mark.parametrize("method, target, round_to", [
    ("tucker2", 0.3, 8), ("tucker2", 0.5, 8), ("tucker2", 0.8, 8),
    ("spatial-svd", 0.4, 8), ("spatial-svd", 0.6, 1), ("svd", 0.93, 1)])
def test_target_macs_lands_within_two_percent_on_a_small_cnn(method, target, round_to):
    graph, out, record = run(f"factorize{{method={method},target_macs={target},"
                             f"round_to={round_to}}}")
    ratio = macs(out) / macs(graph)
    assert 0.98 * target <= ratio <= target
    assert record.stats["model_macs"] == pytest.approx(ratio)  # its MAC formulas are exact
    assert "target_missed" not in record.stats
    for stats in record.stats["layers"].values():
        assert 0 < stats["mac_saving"] < 1 and 0 < stats["energy"] < 1


def test_a_grid_too_coarse_for_the_target_lands_below_it_and_says_so():
    """spatial-svd with ranks in steps of 8 on this small CNN moves 4.7% of its MACs per step of
    conv2 or conv3: nothing lands in [0.588, 0.6]."""
    graph, out, record = run("factorize{method=spatial-svd,target_macs=0.6}")
    ratio = macs(out) / macs(graph)
    assert 0.55 < ratio < 0.588
    assert "lands within 2% below target_macs=0.6" in record.stats["target_missed"]


def test_target_macs_on_resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    graph, out, record = run("factorize{method=tucker2,target_macs=0.5}", model, x)
    ratio = macs(out) / macs(graph)
    assert abs(ratio - 0.5) <= 0.01
    assert record.stats["factorized"] >= 10
    assert out(x).shape == (1, 1000)


def test_budget_takes_more_rank_from_the_layer_that_needs_less():
    """fc1 has a fast-decaying spectrum, fc2 (same size) a flat random one. At half the MACs
    (r₁ + r₂ ≤ 32), the budget discards the least energy any split of the ranks can."""
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = MLP(sigma=0.9 ** torch.arange(64.0)).fc1
            self.fc2 = nn.Linear(64, 64)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    model = Two().eval()
    _, out, record = run("factorize{target_macs=0.5,round_to=1}", model, torch.randn(4, 64))
    layers = record.stats["layers"]
    assert layers["fc1"]["rank"] + layers["fc2"]["rank"] == 32
    assert layers["fc1"]["rank"] < 0.6 * layers["fc2"]["rank"]
    lost = sum(1 - s["energy"] for s in layers.values())
    d1, d2 = decompose(model.fc1, "svd"), decompose(model.fc2, "svd")
    optimum = min(2 - d1.kept_energy((r,)) - d2.kept_energy((32 - r,)) for r in range(1, 32))
    assert lost == pytest.approx(optimum, abs=1e-9)
    uniform = 2 - d1.kept_energy((16,)) - d2.kept_energy((16,))
    assert lost < 0.95 * uniform


def test_unreachable_target_is_an_error():
    with pytest.raises(PassError, match=r"target_macs=0.05 cannot be reached.*leaves 0\.\d+"):
        run("factorize{method=tucker2,target_macs=0.05}")


# ---- the graph stays a working model ------------------------------------------------------
def test_factorized_graph_trains_exports_and_is_not_factorized_twice(tmp_path):
    graph, out, record = run("factorize{method=tucker2,rank=0.5}")
    assert record.modified and record.stats["factorized"] == 2
    assert isinstance(out.module.conv2, nn.Sequential) and len(out.module.conv2) == 3
    called = [n.target for n in out.nodes if n.op == "call_module"]
    assert ["conv2.0", "conv2.1", "conv2.2"] == [t for t in called if t.startswith("conv2")]
    assert set(out.module.meta[FACTORIZED_KEY]) == {"conv2", "conv3"}
    # a second run, of either method, finds nothing new to factorize in the factors
    again, records = Pipeline.parse("factorize{method=tucker2,rank=0.5},"
                                    "factorize{method=svd,rank=0.5,layers=[conv2]}").run(out)
    assert [r.modified for r in records] == [False, False]
    # trainable, and ONNX Runtime computes the same thing
    assert all(p.requires_grad for p in out.parameters())
    out.module(X).sum().backward()
    assert out.module.conv2[1].weight.grad is not None
    path = tmp_path / "factorized.onnx"
    out.to_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: X.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, out(X).numpy(), rtol=1e-4, atol=1e-5)


def test_finetune_with_distillation_recovers_the_factorized_graph():
    torch.manual_seed(1)
    teacher = SmallCNN().eval()
    x = torch.randn(32, 3, 6, 6)
    student, _ = Pipeline.parse("factorize{method=tucker2,rank=0.25},factorize{rank=0.25}").run(
        mcc.trace(teacher, x[:2]))
    with torch.no_grad():
        t_out = teacher(x)
        before = distillation_loss(student(x), t_out, 4.0).item()
    loader = [x[i:i + 16] for i in range(0, 32, 16)]
    history = finetune(student, loader, teacher=teacher, epochs=10, lr=2e-3)
    with torch.no_grad():
        after = distillation_loss(student(x), t_out, 4.0).item()
    assert history["steps"] == 20 and "hard" not in history
    assert after < 0.5 * before, (before, after)


def test_compress_reports_ranks_energy_and_savings():
    model = SmallCNN().eval()
    graph, report = mcc.compress(model, X, "factorize{method=tucker2,target_macs=0.6}",
                                 latency=False)
    line = report.table().splitlines()[1]
    assert "factorize" in line and "layers=[conv2: [rank: [" in line and "left=[dw: grouped" in line
    assert report.comparison.flop_ratio == pytest.approx(
        1 / report.passes[0].stats["model_macs"], rel=1e-9)


# ---- pipeline text and bad input ------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "factorize",
    "factorize{method=spatial-svd,rank=0.5,round_to=4,min_reduction=0.2,layers=[\"conv*\"],"
    "skip=[fc2]}",
    "factorize{method=tucker2,target_macs=0.5}",
    "factorize{rank=64,layers=[layer4.1.conv2,\"layer3.*\"]}",
    "factorize{method=svd,energy=0.9}",
])
def test_pipeline_text_round_trips(text):
    pipeline = Pipeline.parse(text)
    assert str(pipeline) == text
    assert Pipeline.parse(str(pipeline)) == pipeline
    built = Pipeline([Factorize(method="tucker2", rank=0.25, skip=("conv1",))])
    assert str(built) == "factorize{method=tucker2,rank=0.25,skip=[conv1]}"
    assert Pipeline.parse(str(built)) == built


@pytest.mark.parametrize("spec, message", [
    ("factorize{rank=0}", "'rank': 0 is out of range: must be > 0"),
    ("factorize{rank=-3}", "must be > 0"),
    ("factorize{rank=1.5}", "fraction above 1"),
    ("factorize{energy=0}", r"'energy': 0.0 is out of range: must be in \(0, 1\]"),
    ("factorize{energy=1.01}", r"must be in \(0, 1\]"),
    ("factorize{target_macs=1.0}", r"must be in \(0, 1\)"),
    ("factorize{rank=8,energy=0.9}",
     "give one of rank, energy and target_macs, not rank and energy"),
    ("factorize{method=cp}", "not one of svd, spatial-svd, tucker2"),
    ("factorize{min_reduction=1}", "must be < 1"),
])
def test_bad_options(spec, message):
    with pytest.raises(PipelineError, match=message):
        Pipeline.parse(spec)


class WithTranspose(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)

    def forward(self, x):
        return self.up(self.conv(x))


@pytest.mark.parametrize("spec, model, node, message", [
    ("factorize{rank=80,layers=[\"fc*\"]}", None, "fc1",
     r"rank 80 is larger than the full rank 64 of fc1 \(Linear 96→64, method svd\)"),
    ("factorize{method=tucker2,rank=80,layers=[conv2]}", None, "conv2",
     r"rank 80 is larger than the full rank 64 of conv2"),
    ("factorize{layers=[conv9]}", None, "conv9", "'conv9', which matches no node or module"),
    ("factorize{skip=[\"head*\"]}", None, "head*", "'head\\*', which matches no node or module"),
    ("factorize{layers=[relu]}", None, "relu", "matches no linear or convolution layer"),
    ("factorize{layers=[conv2]}", None, "conv2",
     r"3×3 Conv2d 32→64\): method svd supports Linear and 1×1 convolutions .*; use method "
     r"spatial-svd or tucker2"),
    ("factorize{method=tucker2,layers=[fc1]}", None, "fc1",
     r"Linear 96→64\): method tucker2 supports .*; use method svd"),
    ("factorize{method=spatial-svd,layers=[\"conv*\",pw]}", None, "pw",
     r"1×1 Conv2d 64→96\): method spatial-svd .*; use method svd"),
    ("factorize{method=tucker2,layers=[up]}", WithTranspose(), "up",
     r"ConvTranspose2d\): method tucker2 .*; no factorize method supports it"),
])
def test_bad_layers_name_the_layer(spec, model, node, message):
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(PassError, match=message) as info:
        run(spec, model, x)
    assert info.value.node == node and f"at node {node!r}" in str(info.value)
    assert isinstance(info.value, MccError)
