"""mcc.trace: FX first, torch.export as the fallback, clear errors when both fail."""

import pytest
import torch
from torch import nn

import mcc
from mcc.errors import ModelError, TraceError
from mcc.pipeline import Pipeline


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3)))


class ShapeBranch(Net):
    """Python control flow on a shape: FX cannot trace it, torch.export specialises it."""

    def forward(self, x):
        if x.shape[-1] > 4:
            x = x * 2
        return super().forward(x)


class DataDependent(nn.Module):
    """Control flow on tensor values: neither tracer can capture it."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 3, 1)
        self.gate = DataDependent()

    def forward(self, x):
        return self.gate(self.head(x))


def test_trace_records_shapes_and_dtypes_on_every_node():
    graph = mcc.trace(Net().eval(), torch.randn(2, 3, 8, 8))
    assert graph.source == "torch.fx"
    for node in graph.nodes:
        if node.op != "output":
            assert graph.info(node) is not None, node.name
    assert graph.info(graph.node("conv")).shape == (2, 8, 8, 8)
    assert graph.info(graph.node("fc")).dtype == torch.float32
    assert [type(m).__name__ for _, m in graph.call_modules()] == ["Conv2d", "BatchNorm2d", "Linear"]


def test_trace_copies_the_model():
    model = Net().eval()
    graph = mcc.trace(model, torch.randn(1, 3, 8, 8))
    with torch.no_grad():
        graph.module.conv.weight.zero_()
    assert model.conv.weight.abs().sum() > 0


def test_export_fallback_is_canonicalised_into_modules():
    model = ShapeBranch().eval()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.running_mean.normal_()
    x = torch.randn(2, 3, 8, 8)
    graph = mcc.trace(model, x)
    assert graph.source == "torch.export"
    kinds = sorted(type(m).__name__ for _, m in graph.call_modules())
    assert kinds == ["BatchNorm2d", "Conv2d", "Linear"]
    torch.testing.assert_close(graph(x), model(x))
    folded, records = Pipeline.parse("fold-bn").run(graph.copy())
    assert records[0].stats == {"folded": 1}
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_untraceable_module_is_named_with_the_leaf_hint():
    with pytest.raises(TraceError) as info:
        mcc.trace(Outer().eval(), torch.randn(1, 3, 4, 4))
    message = str(info.value)
    assert "module 'gate' (DataDependent)" in message
    assert "leaf_modules=['gate']" in message
    assert "if x.sum() > 0" in message


def test_leaf_modules_make_it_traceable():
    model = Outer().eval()
    x = torch.randn(1, 3, 4, 4)
    graph = mcc.trace(model, x, leaf_modules=["gate"])
    assert [n.target for n in graph.nodes if n.op == "call_module"] == ["head", "gate"]
    torch.testing.assert_close(graph(x), model(x))
    graph = mcc.trace(model, x, leaf_modules=[DataDependent])
    torch.testing.assert_close(graph(x), model(x))


@pytest.mark.parametrize("model", [object(), "resnet18", None])
def test_not_a_module(model):
    with pytest.raises(ModelError, match="expected a torch.nn.Module"):
        mcc.trace(model, torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("inputs, message", [
    ([1, 2], "example inputs must be a tensor"),
    ((), "example inputs must be a tensor"),
    (torch.randn(1, 5, 8, 8), r"fails on the example inputs \(float32\[1, 5, 8, 8\]\)"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.int64), r"fails on the example inputs \(int64"),
])
def test_bad_example_inputs(inputs, message):
    with pytest.raises(ModelError, match=message):
        mcc.trace(Net().eval(), inputs)


def test_to_torch_is_a_plain_module():
    model = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    plain = mcc.trace(model, x).to_torch()
    assert isinstance(plain, nn.Module)
    assert all(not n.meta for n in plain.graph.nodes)
    torch.testing.assert_close(plain(x), model(x))


class SamePaddingConv(nn.Conv2d):
    """A Conv2d subclass with its own forward, as TensorFlow ports write "same" padding."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.static_padding = nn.ZeroPad2d((0, 1, 0, 1))

    def forward(self, x):
        return nn.functional.conv2d(self.static_padding(x), self.weight, self.bias, self.stride)


def test_functional_convs_of_conv_subclasses_are_lifted_back_to_modules():
    model = nn.Sequential(SamePaddingConv(3, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 9, 9)
    graph = mcc.trace(model, x)
    modules = {n.target: type(graph.submodule(n)).__name__ for n in graph.nodes if n.op == "call_module"}
    assert modules == {"0_static_padding_0": "ZeroPad2d", "0": "Conv2d", "1": "BatchNorm2d"}
    folded, records = Pipeline.parse("fold-bn").run(graph.copy())
    assert records[0].stats == {"folded": 1}
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
