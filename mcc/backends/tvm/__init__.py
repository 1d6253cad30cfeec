"""The TVM backend: compile an :class:`mcc.Graph` into x86, aarch64 or CUDA code, float or
integer.

::

    import mcc, mcc.quant
    from mcc.backends import tvm as mcc_tvm

    graph, _ = mcc.compress(model, x, pipeline="fold-bn,quantize")
    mcc.quant.calibrate(graph, loader, num_batches=32)
    artifact = mcc_tvm.compile(graph, "x86", tuning="resnet18.db")   # uint8 × int8 kernels
    artifact.save("resnet18.int8")
    (logits,) = mcc.runtime.load("resnet18.int8")(x.numpy())

Targets are in :mod:`~mcc.backends.tvm.target` (ARM: :mod:`~mcc.backends.tvm.arm`), kernels
in :mod:`~mcc.backends.tvm.kernels`, the graph walk in :mod:`~mcc.backends.tvm.lower`, tuning
databases in :mod:`~mcc.backends.tvm.tuning`, the artifact format in :mod:`mcc.runtime`.
docs/backend.md explains all of it, docs/targets.md the targets.
"""

from __future__ import annotations

import os

from mcc.backends.tvm.arm import ARM_CPUS, ArmTarget
from mcc.backends.tvm.artifact import Artifact, metadata
from mcc.backends.tvm.cuda import CudaTarget
from mcc.backends.tvm.target import TARGETS, VALID, CpuTarget, resolve
from mcc.errors import BackendError
from mcc.graph import Graph

__all__ = ["compile", "Artifact", "resolve", "CpuTarget", "ArmTarget", "CudaTarget", "TARGETS",
           "ARM_CPUS", "VALID"]


def compile(graph: Graph, target: str | dict | CpuTarget | ArmTarget | CudaTarget = "x86", *,
            tuning: str | os.PathLike | None | bool = None, requantize: str = "scale",
            allow_float: bool = False, pipeline: str | None = None,
            name: str | None = None) -> Artifact:
    """Compile ``graph`` for ``target`` and return the runnable :class:`Artifact`.

    A float graph runs mcc's float kernels; a quantized graph (``quantize`` pass, calibrated)
    runs its Conv/Linear units, residual adds and pooling as integer kernels. ``tuning`` is a
    tuning database (see :mod:`~mcc.backends.tvm.tuning`): its records for this target replace
    the default schedules, nothing is tuned here. Without one, the database mcc ships for this
    CPU applies (``mcc/data/tuning``: the demo's and benchmarks' kernels), if it ships one;
    ``tuning=False`` keeps every hand-written schedule. ``requantize`` chooses the integer epilogue:
    ``scale`` (float multiply, round half to even like the fake-quant graph) or ``fixed``
    (int32 multiplier and shift, integer only). ``allow_float`` lets a quantized layer that has
    no integer kernel (log2 or asymmetric weights, Conv1d) run in float instead of failing; the
    artifact's ``metadata["float_ops"]`` lists them. ``pipeline`` is recorded in the metadata.
    An ARM target's artifact is cross-compiled: it saves, but runs only on an aarch64 machine.
    A CUDA target (``cuda:sm_80``, see :mod:`~mcc.backends.tvm.cuda`) takes no tuning database
    and builds without a GPU; the artifact runs only where its GPU is.
    """
    from mcc.backends.tvm import build, lower, tuning as tuning_db
    from mcc.quant import structure as st

    if not isinstance(graph, Graph):
        raise BackendError(f"compile takes an mcc.Graph (from mcc.trace or mcc.compress), got "
                           f"{type(graph).__name__}")
    resolved = resolve(target)
    export_options = resolved.export_options()  # a missing cross compiler fails before any work
    if resolved.kind == "cuda":
        from mcc.backends.tvm import cuda, cuda_schedules

        if tuning not in (None, False):
            raise BackendError("tuning databases hold CPU schedules; CUDA kernels use mcc's GPU "
                               "schedules: compile for CUDA without a tuning database")
        schedule, summary, builder = cuda_schedules.kernel, None, cuda.build
    else:
        scheduler = tuning_db.Scheduler(resolved, tuning)
        schedule, summary, builder = scheduler.schedule, scheduler.summary, build.build
    lowered = lower.lower(graph, resolved, schedule=schedule, requantize=requantize,
                          allow_float=allow_float)
    executable = builder(lowered.module, resolved)
    quantization = st.quant_params(graph) if st.is_quantized(graph) else None
    meta = metadata(lowered, resolved, quantization=quantization, pipeline=pipeline,
                    tuning=summary() if summary else None, name=name)
    meta["requantize"] = requantize if quantization else None
    return Artifact(executable, lowered.constants, meta, export_options)
