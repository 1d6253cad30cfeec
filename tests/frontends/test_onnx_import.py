"""mcc.load: ONNX files into the same IR as torch models, checked against ONNX Runtime."""

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import TensorProto, helper
from torch import nn

import mcc
from mcc.errors import OnnxImportError
from mcc.frontends.onnx import CONVERTERS


def ort_run(path, x):
    session = ort.InferenceSession(str(path))
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def relative_error(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def round_trip(model, x, tmp_path):
    model = model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    path = tmp_path / "m.onnx"
    mcc.trace(model, x).to_onnx(path)
    graph = mcc.load(path)
    graph.module.graph.lint()
    assert graph.source == "onnx"
    with torch.no_grad():
        ours = graph(x).numpy()
    return graph, ours, ort_run(path, x), expected


@pytest.mark.parametrize("name, size, kwargs", [
    ("resnet18", 64, {}),
    ("mobilenet_v2", 64, {}),
    ("efficientnet_b0", 64, {}),
    ("vit_b_16", 32, {"image_size": 32}),
])
def test_torchvision_round_trip(tmp_path, name, size, kwargs):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    for m in model.modules():  # ViT's zero-initialised head would make every output 0
        if isinstance(m, nn.Linear) and not m.weight.any():
            nn.init.normal_(m.weight, std=0.02)
    x = torch.randn(1, 3, size, size)
    graph, ours, theirs, expected = round_trip(model, x, tmp_path)
    assert relative_error(ours, expected) <= 1e-4
    assert relative_error(theirs, expected) <= 1e-4
    kinds = {type(m).__name__ for _, m in graph.call_modules()}
    assert {"Conv2d", "Linear"} <= kinds  # parametric layers come back as nn modules


class Patterns(nn.Module):
    """Asymmetric padding, grouped conv, split/concat, pooling, a Gemm with transB=0."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 0, 2, 0))
        self.conv = nn.Conv2d(4, 8, 3, stride=2)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.w = nn.Parameter(torch.randn(16, 5))

    def forward(self, x):
        y = self.conv(self.pad(x))
        a, b = torch.split(self.grouped(torch.relu(y)), 4, dim=1)
        y = torch.cat([b, torch.sigmoid(a)], 1)
        y = nn.functional.max_pool2d(y, 2, ceil_mode=True)
        y = nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
        return nn.functional.hardswish(y @ self.w[:8])


def test_hand_built_patterns(tmp_path):
    graph, ours, theirs, expected = round_trip(Patterns(), torch.randn(2, 4, 11, 11), tmp_path)
    assert relative_error(ours, expected) <= 1e-5
    assert relative_error(theirs, expected) <= 1e-5


def test_gemm_without_transpose_becomes_linear(tmp_path):
    rng = np.random.default_rng(0)
    w, c = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=2.0, transB=0)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                          [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(c, "c")])
    path = tmp_path / "gemm.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    graph = mcc.load(path)
    [(node, linear)] = list(graph.call_modules(nn.Linear))
    x = torch.randn(2, 6)
    expected = 0.5 * x.numpy() @ w + 2.0 * c
    np.testing.assert_allclose(graph(x).detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ort_run(path, x), expected, rtol=1e-5, atol=1e-5)


def write_model(path, nodes, opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def test_all_unsupported_operators_are_listed_at_once(tmp_path):
    path = write_model(tmp_path / "u.onnx", [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Hardmax", ["a"], ["b"], name="hm"),
        helper.make_node("Hardmax", ["b"], ["c"]),
        helper.make_node("LpNormalization", ["c"], ["y"], name="lp"),
    ])
    with pytest.raises(OnnxImportError) as info:
        mcc.load(path)
    message = str(info.value)
    assert "Hardmax (2 nodes, first 'hm')" in message
    assert "LpNormalization (1 node, first 'lp')" in message


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_files(tmp_path):
    with pytest.raises(OnnxImportError, match="does not exist"):
        mcc.load(tmp_path / "missing.onnx")
    good = write_model(tmp_path / "good.onnx", [helper.make_node("Relu", ["x"], ["y"])])
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n" * 10)
    invalid = write_model(tmp_path / "invalid.onnx", [helper.make_node("Relu", ["nothing"], ["y"])])
    before = {p: digest(p) for p in (truncated, text, invalid)}
    for path, message in ((truncated, "not a readable ONNX model|holds no graph"),
                          (text, "not a readable ONNX model|holds no graph"),
                          (invalid, "is not a valid ONNX model; the ONNX checker says")):
        with pytest.raises(OnnxImportError, match=message):
            mcc.load(path)
    assert {p: digest(p) for p in before} == before


def test_symbolic_non_batch_dimension_is_refused(tmp_path):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C"])])
    path = tmp_path / "sym.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(OnnxImportError, match="symbolic dimension 'C' at axis 1"):
        mcc.load(path)


def test_every_converter_is_callable():
    assert len(CONVERTERS) >= 80
    assert all(callable(fn) for fn in CONVERTERS.values())
