"""Graph.to_onnx: ONNX Runtime reproduces the graph; writes are atomic and never mutate the graph."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import mcc
from mcc.errors import ExportError


def model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        m[1].running_var.uniform_(0.5, 2)
        m[1].running_mean.normal_()
    return m.eval()


def test_onnx_runtime_matches_the_graph(tmp_path):
    x = torch.randn(2, 3, 16, 16)
    graph = mcc.trace(model(), x)
    graph.to_onnx(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    assert [i.name for i in session.get_inputs()] == graph.input_names
    out = session.run(None, {"input_1": x.numpy()})[0]
    expected = graph(x).detach().numpy()
    assert np.abs(out - expected).max() <= 1e-4 * np.abs(expected).max()


def test_export_does_not_mutate_the_graph_and_writes_atomically(tmp_path):
    graph = mcc.trace(model().train(), torch.randn(2, 3, 16, 16))
    state = {k: v.clone() for k, v in graph.module.state_dict().items()}
    graph.to_onnx(tmp_path / "m.onnx")
    assert graph.training
    for k, v in graph.module.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left


def test_missing_directory(tmp_path):
    graph = mcc.trace(model(), torch.randn(1, 3, 16, 16))
    with pytest.raises(ExportError, match="does not exist"):
        graph.to_onnx(tmp_path / "nope" / "m.onnx")
