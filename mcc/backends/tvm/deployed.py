"""The compiled model as users measure it: batched calls, evaluation, and a printed summary.

``mcc compile``, ``mcc run`` and ``mcc demo`` report the artifact itself (its latency, and its
accuracy computed from its own outputs), since that, not the fake-quant graph, is what ships.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Batched:
    """An artifact compiled for batch B, called on a batch of any size N: the inputs run in
    chunks of B (the last one padded with copies of its last sample) and the outputs are
    concatenated and cut to N rows. Artifacts whose inputs and outputs do not all lead with the
    same batch size take exactly their compiled shapes."""

    def __init__(self, runtime):
        self.runtime = runtime
        leading = {tuple(s["shape"][:1]) for s in runtime.inputs + runtime.outputs}
        self.batch = leading.pop()[0] if len(leading) == 1 and () not in leading else None

    def __call__(self, *arrays) -> tuple:
        arrays = [np.asarray(a) for a in arrays]
        b = self.batch
        n = len(arrays[0]) if arrays and arrays[0].ndim else None
        if b is None or n is None or n == b or any(a.ndim == 0 or len(a) != n for a in arrays):
            return self.runtime(*arrays)
        chunks = []
        for start in range(0, n, b):
            part = [a[start:start + b] for a in arrays]
            short = b - len(part[0])
            if short:
                part = [np.concatenate([p, np.repeat(p[-1:], short, axis=0)]) for p in part]
            chunks.append(self.runtime(*part))
        return tuple(np.concatenate([c[i] for c in chunks])[:n] for i in range(len(chunks[0])))


class ArtifactModel:
    """A compiled artifact as evaluators call a model: torch tensors in, a tensor out."""

    training = False

    def __init__(self, runtime):
        self.batched = Batched(runtime)

    def __call__(self, *inputs):
        import torch

        outputs = self.batched(*[t.detach().cpu().numpy() if hasattr(t, "detach") else t
                                 for t in inputs])
        tensors = tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in outputs)
        return tensors[0] if len(tensors) == 1 else tensors


def compiled_stats(artifact, graph, evaluator, *, latency: bool) -> dict:
    """The deployed model's own figures: the artifact's median latency on the graph's example
    inputs, and the evaluator's metric computed on the artifact's outputs (not the graph's).
    A cross-compiled artifact, or a CUDA one without its GPU, cannot run here: both stay None
    and ``not_run`` says why."""
    stats = {"latency_ms": None, "metric": None,
             "metric_name": getattr(evaluator, "metric_name", None) if evaluator else None}
    if not artifact.runs_here:
        target = artifact.metadata["target"]
        stats["not_run"] = (f"not run: {target['arch']} code for {target['name']}; copy the "
                            "artifact to the board and time it there with mcc run")
        return stats
    unavailable = artifact.unavailable()
    if unavailable is not None:  # a CUDA artifact compiled where its GPU is not
        stats["not_run"] = f"not run here: {unavailable}"
        return stats
    if latency:
        inputs = [t.detach().cpu().numpy() for t in graph.example_inputs]
        stats["latency_ms"] = artifact.latency(*inputs)["median"] * 1e3
    if evaluator is not None:
        stats["metric"] = evaluator(ArtifactModel(artifact))
    return stats


def compiled_table(artifact, stats: dict) -> str:
    """What was compiled (target, integer units, float fallbacks, tuning) and its figures."""
    meta = artifact.metadata
    target = meta["target"]
    from mcc.report import human_bytes

    extension = " (VNNI)" if target.get("vnni") else " (dotprod)" if target.get("dotprod") else ""
    lines = [f"compiled for {target['name']}{extension}: "
             f"{meta['integer_units']} integer units, {len(meta['float_ops'])} float ops, "
             f"{meta['kernels']} kernels, {human_bytes(meta['constants']['bytes'])} of constants"]
    if meta["float_ops"]:
        shown = ", ".join(meta["float_ops"][:4]) + (" ..." if len(meta["float_ops"]) > 4 else "")
        lines.append(f"  float ops: {shown}")
    if meta["tuning"]:
        t = meta["tuning"]
        source = f"mcc's {Path(t['database']).name}" if t.get("shipped") else t["database"]
        lines.append(f"  tuning: {source}: {t['applied']} kernel(s) from {t['records']} "
                     f"record(s) for this target, {t.get('searched', 0)} with a searched schedule"
                     + (f", {t['failed']} stale" if t["failed"] else ""))
    if stats.get("not_run"):
        lines.append(f"  {stats['not_run']}")
    if stats["latency_ms"] is not None:
        lines.append(f"  latency: {stats['latency_ms']:.3f} ms (median)")
    if stats["metric"] is not None:
        lines.append(f"  {stats['metric_name'] or 'metric'}: {stats['metric']:.4g}")
    return "\n".join(lines)
