"""Tune the kernels of the demo and benchmark models into the database mcc ships for this CPU.

    python scripts/tune_shipped_databases.py [--trials 32] [--models demo,resnet18,...]
                                             [--kinds int8,int7,fp32] [--dry-run] [--drop-stale]

``compile`` applies ``mcc/data/tuning/<cpu>.jsonl`` when no database is given (see
:func:`mcc.backends.tvm.tuning.shipped`), so the demo, the benchmarks and CI reuse what this
script measured. Kernels are tuned in the order given (the demo's EfficientNet-Lite0 first,
then ``benchmarks/backend.py``'s models, each in every kind), each kernel once however many
models share it; the database is saved after every kernel, so an interrupted run keeps what it
finished and a second run goes on from there. A kernel whose search did not beat mcc's
hand-written schedule is recorded with ``"trace": null``: compile then keeps the hand-written
one, and the record says what both measured. Depthwise kernels are left out: meta_schedule has
no rule that vectorises them across channels, and its candidates lose to the hand-written
kernel every time (2 minutes per kernel for nothing).

The graphs are those of ``mcc demo`` and ``benchmarks/backend.py`` (the same seeds); record
keys ignore the calibration's zero points, so other calibrations of these models match too.
``--drop-stale`` first removes the records of kernels that no model has in any kind: when a
kernel's computation changes, its structural hash does too, and its old records match nothing.

Runs for about two minutes per kernel on a 2-core machine; nothing else should run meanwhile,
or the measurements that decide between tuned and hand-written are noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

MODELS = ("demo", "resnet18", "mobilenet_v2", "resnet50")
KINDS = {"int8": "fold-bn,quantize", "int7": "fold-bn,quantize{weights=int7}", "fp32": "fold-bn"}


def demo_graphs(kinds):
    import torch

    import mcc
    from mcc.compress import compress
    from mcc.demo import DEMO_PIPELINE
    from mcc.zoo import resolve_evaluator, sample_photos

    if "int8" not in kinds:
        return []
    evaluator = resolve_evaluator("efficientnet-lite0")
    photos = sample_photos().images
    graph = mcc.trace(evaluator.model(), evaluator.example_inputs())
    result = compress(graph, pipeline=DEMO_PIPELINE, calibration_data=list(torch.split(photos, 4)),
                      latency=False)
    return [("demo int8", result.graph)]


def benchmark_graphs(name, kinds):
    import torch
    import torchvision

    import mcc
    from backend import settle

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    settle(model)
    graph = mcc.trace(model, torch.randn(1, 3, 224, 224))
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(1, 3, 224, 224, generator=gen) for _ in range(16)]
    out = []
    for kind in kinds:
        compressed, _ = mcc.compress(graph, pipeline=KINDS[kind], calibration_data=calib,
                                     latency=False)
        out.append((f"{name} {kind}", compressed))
    return out


def kernels(models, kinds, target) -> tuple[list, set]:
    """The tunable kernels of each model and kind, each counted once across all of them
    (``tune`` skips repeats), and the set of their record keys."""
    from mcc.backends.tvm import kernels as K
    from mcc.backends.tvm import lower, tuning

    todo, keys = [], set()
    for name in models:
        graphs = demo_graphs(kinds) if name == "demo" else benchmark_graphs(name, kinds)
        for label, graph in graphs:
            lowered = lower.lower(graph, target, schedule=K.kernel)
            new = []
            for work in lowered.workloads:
                key = tuning.workload_key(work) if isinstance(work, (K.Conv2d, K.Dense)) else None
                if key is not None and key not in keys:
                    keys.add(key)
                    new.append(work)
            todo.append((label, new))
    return todo, keys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--target", default="x86")
    parser.add_argument("--dry-run", action="store_true", help="count the kernels, tune nothing")
    parser.add_argument("--drop-stale", action="store_true",
                        help="first remove the records of kernels that no model of any kind has")
    args = parser.parse_args(argv)

    from mcc.backends.tvm import tuning
    from mcc.backends.tvm.target import resolve

    target = resolve(args.target)
    database = tuning.SHIPPED / f"{target.key()}.jsonl"
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.drop_stale:
        _, current = kernels(MODELS, list(KINDS), target)
        db = tuning.Database(database, target)
        stale = [key for key in db.records if key[1] not in current]
        for key in stale:
            del db.records[key]
        print(f"{len(stale)} of {len(stale) + len(db.records)} records are stale: no kernel of "
              "the demo and benchmark models has their key", flush=True)
        if stale and not args.dry_run:
            db.save(database, merge=False)
    todo, _ = kernels(models, kinds, target)
    for label, works in todo:
        print(f"{label}: {len(works)} new kernels to tune", flush=True)
    if args.dry_run:
        return 0
    for label, works in todo:
        start = time.perf_counter()
        summary = tuning.tune(works, target, database, trials=args.trials)
        print(f"{label}: tuned {summary['tuned']}, improved {summary['improved']}, already "
              f"recorded {summary['already']}, {time.perf_counter() - start:.0f} s", flush=True)
        for entry in summary["kernels"]:
            tuned = entry["tuned_seconds"]
            print(f"  {entry['default_seconds'] * 1e6:9.1f} us hand-written, "
                  f"{tuned * 1e6 if tuned else float('nan'):9.1f} us tuned  {entry['kernel'][:90]}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
