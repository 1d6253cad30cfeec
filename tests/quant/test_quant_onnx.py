"""ONNX QDQ export of quantized graphs: structure of the file and agreement in ONNX Runtime.

The export is the TorchScript exporter at opset 17, which is what ``Graph.to_onnx`` uses.
"""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import mcc
import mcc.quant as Q
from mcc.errors import MccError
from mcc.pipeline import Pipeline
from tests.quant.digits import calibration_batches, digits_data, trained_digits


def export(graph, path):
    graph.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph.module, graph.example_inputs, str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return onnx.load(str(path))


def run(path, x, fused=True):
    """ONNX Runtime's output; ``fused=False`` runs the QDQ ops as written instead of ORT's
    integer kernels (which requantize with their own rounding)."""
    options = ort.SessionOptions()
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


@pytest.fixture(scope="module")
def digits():
    return trained_digits(), digits_data()


def calibrated(model, x, spec):
    graph = Pipeline.parse(spec).run(mcc.trace(model, x[:2]))[0]
    if Q.needs_calibration(graph):
        Q.calibrate(graph, calibration_batches(x))
    return graph


def constants(model):
    """Every Constant node's and initializer's value, by output name."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


@pytest.mark.parametrize("spec", ["fold-bn,quantize", "fold-bn,quantize{observer=entropy,activations=int8}",
                                  "fold-bn,quantize{weights=int4,granularity=per-tensor}",
                                  "fold-bn,quantize{symmetric=false}",  # per-channel zero points
                                  "fold-bn,quantize{learn_scales=true}"])
def test_onnx_runtime_agrees_with_the_fake_quant_graph(digits, tmp_path, spec):
    model, (x_train, _, x_test, _) = digits
    graph = calibrated(model, x_train, spec)
    export(graph, tmp_path / "q.onnx")
    ours = graph(x_test).detach().numpy()
    # The QDQ ops as written: both round x/S the same way, so a logit moves by at most a
    # rare tie's step.
    exact = run(tmp_path / "q.onnx", x_test, fused=False)
    assert (ours.argmax(1) == exact.argmax(1)).mean() >= 0.995
    out_scale = Q.quant_params(graph)["fc2_quant"]["scale"]
    assert np.abs(ours - exact).max() <= 2 * out_scale + 1e-5
    # ORT's fused integer kernels: exact int32 sums with VNNI; without it (AVX2) ORT multiplies
    # u8 x s8 with vpmaddubsw, whose int16 pair sums saturate, so a few labels move.
    fused = run(tmp_path / "q.onnx", x_test)
    floor = 0.995 if _host_has_vnni() else 0.98
    assert (ours.argmax(1) == fused.argmax(1)).mean() >= floor


def _host_has_vnni() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def test_qdq_structure_and_integer_weights(digits, tmp_path):
    model, (x_train, _, _, _) = digits
    graph = calibrated(model, x_train, "fold-bn,quantize")
    exported = export(graph, tmp_path / "q.onnx")
    ops = [n.op_type for n in exported.graph.node]
    # 7 activation quantizers → 7 QuantizeLinear; 7 + 5 weights → 12 DequantizeLinear
    assert ops.count("QuantizeLinear") == 7 and ops.count("DequantizeLinear") == 12
    values = constants(exported)
    producers = {o: n for n in exported.graph.node for o in n.output}
    convs = [n for n in exported.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(convs) == 5
    layers = [graph.module.conv1, graph.module.conv2, graph.module.conv3, graph.module.fc1,
              graph.module.fc2]
    for node, layer in zip(convs, layers):
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear"
        codes, scale = values[dq.input[0]], values[dq.input[1]]
        assert codes.dtype == np.int8  # the file stores the weights as integers
        np.testing.assert_array_equal(codes, layer.weight_quant.codes(layer.weight).numpy())
        np.testing.assert_allclose(scale, layer.weight_quant.scale.numpy())  # per output channel
        assert scale.shape == (layer.weight.shape[0],)
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
    # activations: uint8 zero points
    q = next(n for n in exported.graph.node if n.op_type == "QuantizeLinear")
    assert values[q.input[2]].dtype == np.uint8


def test_low_bit_binary_and_log2_weights_export(digits, tmp_path):
    model, (x_train, _, x_test, _) = digits
    # ternary and binary models lose accuracy without QAT, so their logits are close together;
    # compared with the QDQ ops as written the two agree to one output step
    for spec, allowed in (("fold-bn,quantize{weights=int2}", {-1, 0, 1}),
                          ("fold-bn,quantize{weights=binary}", {-1, 1})):
        graph = calibrated(model, x_train, spec)
        exported = export(graph, tmp_path / "w.onnx")
        codes = [v for v in constants(exported).values() if v.dtype == np.int8 and v.ndim >= 2]
        assert len(codes) == 5 and all(set(np.unique(c).tolist()) <= allowed for c in codes)
        ours = graph(x_test).detach().numpy()
        theirs = run(tmp_path / "w.onnx", x_test, fused=False)
        assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.995
        assert np.abs(ours - theirs).max() <= Q.quant_params(graph)["fc2_quant"]["scale"] + 1e-5
    graph = calibrated(model, x_train, "fold-bn,quantize{scheme=log2,weights=int4}")
    exported = export(graph, tmp_path / "log2.onnx")
    weight = constants(exported)[[n for n in exported.graph.node if n.op_type == "Conv"][0].input[1]]
    magnitudes = np.unique(np.abs(weight[weight != 0]))
    np.testing.assert_array_equal(magnitudes, 2.0 ** np.round(np.log2(magnitudes)))  # powers of two
    ours = graph(x_test).detach().numpy()
    assert (ours.argmax(1) == run(tmp_path / "log2.onnx", x_test).argmax(1)).mean() >= 0.995


def test_uncalibrated_graph_does_not_export(digits, tmp_path):
    model, (_, _, x_test, _) = digits
    graph = Pipeline.parse("fold-bn,quantize").run(mcc.trace(model, x_test[:2]))[0]
    with pytest.raises(MccError, match="not calibrated"):
        export(graph, tmp_path / "q.onnx")


def test_graph_to_onnx(digits, tmp_path):
    pytest.importorskip("mcc.backends.onnx")
    model, (x_train, _, x_test, _) = digits
    graph = calibrated(model, x_train, "fold-bn,quantize")
    graph.to_onnx(tmp_path / "q.onnx")
    session = ort.InferenceSession(str(tmp_path / "q.onnx"))
    x = x_test[:2]
    theirs = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert (theirs.argmax(1) == graph(x).detach().numpy().argmax(1)).all()
