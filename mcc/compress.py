"""``mcc.compress``: one call from a model and a pipeline spec to a compressed graph and a report."""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Sequence

from torch import nn

from mcc.errors import ModelError
from mcc.frontends.torch import normalize_inputs, trace
from mcc.graph import Graph
from mcc.pass_manager import Pass
from mcc.pipeline import Instrument, Pipeline
from mcc.quant import calibrate, needs_calibration
from mcc.report import Report, measure


class CompressResult(NamedTuple):
    graph: Graph
    report: Report


def compress(model: nn.Module | Graph, example_inputs=None,
             pipeline: str | Pipeline | Sequence[Pass] = "fold-bn", *,
             calibration_data: Iterable | None = None, num_batches: int | None = None,
             evaluate: Callable[[nn.Module], float] | None = None, metric_name: str | None = None,
             latency: bool = True, verify: bool = False,
             instruments: Sequence[Instrument] = ()) -> CompressResult:
    """Compress ``model`` with ``pipeline`` and measure before and after.

    ``model`` is an ``nn.Module`` (traced on ``example_inputs``) or an :class:`mcc.Graph`
    (``example_inputs`` defaults to its own). Neither the model nor the graph is modified: the
    pipeline runs on a single copy. ``evaluate(model) -> float`` adds the metric and its delta
    to the report; ``latency`` measures CPU latency; ``verify`` checks the graph after every pass.
    A pipeline that quantizes activations needs ``calibration_data`` (any iterable of input
    batches, see :func:`mcc.calibrate`); without it the graph is returned uncalibrated, the
    "after" column is left out, and the report says so. Returns ``(graph, report)``.
    """
    pipeline = as_pipeline(pipeline)
    if isinstance(model, Graph):
        inputs = normalize_inputs(example_inputs) if example_inputs is not None else model.example_inputs
        graph = model.copy()
        graph.example_inputs = inputs
    elif isinstance(model, nn.Module):
        if example_inputs is None:
            raise ModelError("compressing an nn.Module needs example inputs to trace it with, "
                             "e.g. mcc.compress(model, torch.randn(1, 3, 224, 224), pipeline=...)")
        graph = trace(model, example_inputs)  # trace copies the model
    else:
        raise ModelError(f"expected a torch.nn.Module or an mcc.Graph, got {type(model).__name__}")
    before = measure(graph, latency=latency, evaluate=evaluate, metric_name=metric_name)
    graph, records = pipeline.run(graph, verify=verify, instruments=instruments)
    notes = []
    if needs_calibration(graph):
        if calibration_data is not None:
            calibrate(graph, calibration_data, num_batches=num_batches)
        else:
            notes.append("activation quantizers are not calibrated: pass calibration data "
                         "(mcc.calibrate(graph, batches)) before measuring or exporting")
    after = None if notes else measure(graph, latency=latency, evaluate=evaluate,
                                       metric_name=metric_name)
    return CompressResult(graph, Report(pipeline=str(pipeline), passes=records, before=before,
                                        after=after, notes=notes))


def as_pipeline(pipeline: str | Pipeline | Sequence[Pass]) -> Pipeline:
    if isinstance(pipeline, Pipeline):
        return pipeline
    if isinstance(pipeline, str):
        return Pipeline.parse(pipeline)
    if isinstance(pipeline, Sequence) and all(isinstance(p, Pass) for p in pipeline):
        return Pipeline(pipeline)
    return Pipeline.parse(pipeline)  # raises a PipelineError that names the type


__all__ = ["compress", "CompressResult", "as_pipeline"]
