"""Cross-layer equalization: float outputs unchanged, ranges equalized, per-tensor error reduced."""

import pytest
import torch
from torch import nn

import mcc
import mcc.quant as Q
from mcc.pipeline import Pipeline


def imbalanced(model: nn.Module, pairs) -> nn.Module:
    """Scale output channel i of the first layer of each pair by 10^u (u uniform in ±1) and undo it
    on input channel i of the second: the function is unchanged, but channel ranges now differ
    by up to 100× within a layer, which per-tensor quantization handles badly."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for first, second in pairs:
            first, second = model.get_submodule(first), model.get_submodule(second)
            s = 10.0 ** (torch.rand(first.weight.shape[0], generator=gen) * 2 - 1)
            first.weight.mul_(s.reshape(-1, *([1] * (first.weight.dim() - 1))))
            first.bias.mul_(s)
            w = second.weight
            groups = getattr(second, "groups", 1)
            per_group = w.shape[1]
            w.view(groups, w.shape[0] // groups, per_group, *w.shape[2:]).div_(
                s.reshape(groups, 1, per_group, *([1] * (w.dim() - 2))))
    return model


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)   # depthwise
        self.c3 = nn.Conv2d(8, 16, 1)
        self.c4 = nn.Conv2d(16, 8, 3, padding=1, groups=2)  # grouped
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        x = self.c4(torch.relu(self.c3(x)))
        x = x.mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


PAIRS = [("c1", "c2"), ("c2", "c3"), ("c3", "c4"), ("fc1", "fc2")]


def test_outputs_are_unchanged_and_ranges_equalized():
    model = imbalanced(Chain(), PAIRS).eval()
    x = torch.randn(4, 3, 8, 8)
    graph = mcc.trace(model, x)
    out, records = Pipeline.parse("equalize").run(graph, verify=True)
    assert records[0].stats == {"pairs": 4, "equalized": 4} and records[0].modified
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)
    m = out.module
    # after equalization, output channel i of c1 and input channel i of c2 have the same range
    r1 = m.c1.weight.abs().amax(dim=(1, 2, 3))
    r2 = m.c2.weight.abs().amax(dim=(1, 2, 3))  # depthwise: input channel i is row i
    torch.testing.assert_close(r1, r2, rtol=2e-3, atol=0)
    r1 = m.fc1.weight.abs().amax(dim=1)
    r2 = m.fc2.weight.abs().amax(dim=0)
    torch.testing.assert_close(r1, r2, rtol=2e-3, atol=0)
    _, again = Pipeline.parse("equalize").run(out)
    assert again[0].modified is False


def test_equalization_reduces_per_tensor_quantization_error():
    model = imbalanced(Chain(), PAIRS).eval()
    x = torch.randn(16, 3, 8, 8)
    ref = model(x)
    errors = {}
    for spec in ("quantize{granularity=per-tensor,activations=none}",
                 "equalize,quantize{granularity=per-tensor,activations=none}"):
        graph, _ = Pipeline.parse(spec).run(mcc.trace(model, x))
        errors[spec.split(",")[0]] = (graph(x) - ref).pow(2).mean().item()
    assert errors["equalize"] < 0.2 * errors["quantize{granularity=per-tensor"]


def test_pairs_it_cannot_equalize():
    class Blocked(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn, self.c2 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)
            self.act, self.c3 = nn.ReLU6(), nn.Conv2d(4, 4, 1)
            self.c4 = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            x = self.c2(torch.relu(self.bn(self.c1(x))))
            y = self.c3(self.act(x))
            return self.c4(y) + y  # y has two users: scaling it would change the residual

    graph = mcc.trace(Blocked().eval(), torch.randn(1, 3, 4, 4))
    _, records = Pipeline.parse("equalize").run(graph)
    assert records[0].stats == {
        "pairs": 0, "equalized": 0,
        "left": {"c1": "not equalized: bn is a BatchNorm (run fold-bn first)",
                 "c2": "not equalized: act (ReLU6) clips at a fixed bound, so scaling changes it"}}
    assert records[0].modified is False


def test_equalize_then_quantize_on_a_folded_network():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.01, 100.0, generator=torch.Generator().manual_seed(0))
    x = torch.randn(8, 3, 10, 10)
    graph, records = Pipeline.parse("fold-bn,equalize,quantize").run(mcc.trace(model, x))
    assert records[1].stats["equalized"] == 1
    Q.calibrate(graph, [torch.randn(8, 3, 10, 10) for _ in range(4)] + [x])
    ref = model(x)
    assert (graph(x) - ref).abs().max().item() < 0.05 * ref.abs().max().item()


@pytest.mark.parametrize("iterations", [1, 20])
def test_iterations_bound_the_work(iterations):
    model = imbalanced(Chain(), PAIRS).eval()
    x = torch.randn(2, 3, 8, 8)
    out, records = Pipeline.parse(f"equalize{{iterations={iterations}}}").run(mcc.trace(model, x))
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)
    _, again = Pipeline.parse("equalize").run(out)
    # one round over a chain leaves the middle layers unsettled; twenty settle them
    assert again[0].modified is (iterations == 1)
