"""Per-layer sensitivity and ``quantize{auto_skip=…}`` on the trained digits model."""

import pytest

import mcc
import mcc.quant as Q
from mcc.errors import QuantizationError, ReportError
from mcc.pipeline import Pipeline
from tests.quant.digits import accuracy, calibration_batches, digits_data, trained_digits

LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]


@pytest.fixture(scope="module")
def digits():
    model, (x_train, _, x_test, y_test) = trained_digits(), digits_data()
    graph = Pipeline.parse("fold-bn").run(mcc.trace(model, x_test[:2]))[0]
    return graph, calibration_batches(x_train), lambda m: accuracy(m, x_test, y_test)


def test_sensitivity_ranks_every_layer(digits):
    graph, calib, evaluate = digits
    ranking = Q.sensitivity(graph, evaluate, calib, weights="binary")
    assert sorted(name for name, _ in ranking) == LAYERS
    drops = [drop for _, drop in ranking]
    assert drops == sorted(drops, reverse=True)
    # each drop is exactly what quantizing that one layer costs
    name, drop = ranking[0]
    only = Pipeline.parse(f"quantize{{weights=binary,skip=[{','.join(n for n in LAYERS if n != name)}]}}"
                          ).run(graph.copy())[0]
    Q.calibrate(only, calib)
    assert drop == pytest.approx(evaluate(graph.module) - evaluate(only.module))
    assert drop > 1.0  # binarising the most sensitive layer costs points


def test_sensitivity_of_a_quantized_graph_uses_its_options(digits):
    graph, calib, evaluate = digits
    quantized = Pipeline.parse("quantize{weights=binary}").run(graph.copy())[0]
    assert Q.sensitivity(quantized, evaluate, calib) == Q.sensitivity(graph, evaluate, calib,
                                                                      weights="binary")


def test_auto_skip_keeps_the_fewest_layers_in_float(digits):
    graph, calib, evaluate = digits
    base = evaluate(graph.module)
    quantized = Pipeline.parse("quantize{weights=binary,auto_skip=1.0}").run(graph.copy())[0]
    stats = Q.calibrate(quantized, calib, evaluate=evaluate)["auto_skip"]
    kept = stats["kept_float"]
    assert stats["float_metric"] == base and base - stats["all_quantized_metric"] > 1.0
    assert base - stats["metric"] <= 1.0
    assert stats["metric"] == evaluate(quantized.module)
    floats = {n.name for n, m in quantized.call_modules() if type(m).__name__ in ("Conv2d", "Linear")}
    assert floats == set(kept)
    # fewest: keeping one layer fewer in float (the most sensitive ones first) misses the budget
    ranking = [name for name, _ in stats["sensitivity"]]
    assert kept == ranking[:len(kept)]
    if len(kept) > 1:
        fewer = Pipeline.parse(f"quantize{{weights=binary,skip=[{','.join(kept[:-1])}]}}").run(graph.copy())[0]
        Q.calibrate(fewer, calib)
        assert base - evaluate(fewer.module) > 1.0


def test_auto_skip_within_budget_changes_nothing(digits):
    graph, calib, evaluate = digits
    quantized = Pipeline.parse("quantize{auto_skip=0.5}").run(graph.copy())[0]
    stats = Q.calibrate(quantized, calib, evaluate=evaluate)["auto_skip"]
    assert stats["kept_float"] == [] and "sensitivity" not in stats
    assert len(list(quantized.call_modules(Q.QuantizedLayer))) == 5


def test_auto_skip_needs_an_evaluation_function(digits):
    graph, calib, _ = digits
    quantized = Pipeline.parse("quantize{auto_skip=0.5}").run(graph.copy())[0]
    with pytest.raises(QuantizationError, match="evaluate=fn"):
        Q.calibrate(quantized, calib)


def test_bad_evaluation_function(digits):
    graph, calib, _ = digits
    with pytest.raises(ReportError, match="returned 'high', not a number"):
        Q.sensitivity(graph, lambda m: "high", calib)

    def broken(m):
        raise ValueError("no labels")

    with pytest.raises(ReportError, match="broken failed: ValueError: no labels"):
        Q.sensitivity(graph, broken, calib)
