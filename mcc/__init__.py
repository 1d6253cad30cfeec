"""mcc, the model compression compiler.

Trace a model into a graph, run compression passes over it, measure what changed::

    import mcc, torch, torchvision
    model = torchvision.models.resnet18().eval()
    graph, report = mcc.compress(model, torch.randn(1, 3, 224, 224), pipeline="fold-bn")
    print(report.table())
"""

from mcc.errors import MccError
from mcc.frontends.torch import trace
from mcc.graph import Graph
from mcc.pass_manager import AnalysisManager, Pass, PassResult, option, register
from mcc.pipeline import Pipeline
from mcc.compress import CompressResult, compress  # noqa: E402  (after the names it uses)
from mcc.quant import calibrate
from mcc.report import ModelStats, Report, measure

__version__ = "0.1.0"


def load(path) -> Graph:
    """Import an ONNX file into mcc's graph IR (see :mod:`mcc.frontends.onnx`)."""
    from mcc.frontends.onnx import load as _load

    return _load(path)


__all__ = ["MccError", "Graph", "Pipeline", "Pass", "PassResult", "AnalysisManager", "option",
           "register", "trace", "load", "compress", "CompressResult", "calibrate", "measure",
           "ModelStats", "Report", "__version__"]
