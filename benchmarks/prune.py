"""prune-channels on ResNet-50, MobileNetV2 and ViT-B/16: parameters, MACs and CPU latency.

For each model (random weights: pruning cost and speed do not depend on training) this traces
the model at 224×224, runs ``prune-channels{ratio=0.5}``, and measures with
:func:`mcc.report.measure` before and after: parameters, MACs (``torch.utils.flop_counter``),
and PyTorch eager CPU latency at batch 1, plus the
time the pass took. Latency is the median of ``--repeats`` runs after warm-up, the original
and the pruned model taking turns, so that a machine whose speed drifts (shared, throttled)
slows both alike and the ratio stays honest. The target: at 50% of the MACs gone, ResNet-50 runs at least 1.6× faster;
``ratio=0.5`` removes about 74% of ResNet-50's MACs, so the target is checked on its own row,
ResNet-50 at ``--target-pipeline`` (``ratio=0.3``: −50.1% MACs).

    python benchmarks/prune.py [--models resnet50,mobilenet_v2,vit_b_16] [--repeats 20]

Writes benchmarks/results/prune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision

import mcc
from mcc.pipeline import Pipeline
from mcc.report import measure

MODELS = ("resnet50", "mobilenet_v2", "vit_b_16")
RESULTS = Path(__file__).parent / "results" / "prune.json"


def side_by_side(before, after, x, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median batch-1 latency (ms) of two models timed in alternation."""
    times = ([], [])
    with torch.inference_mode():
        for _ in range(warmup):
            before(x), after(x)
        for _ in range(repeats):
            for model, out in zip((before, after), times):
                start = time.perf_counter()
                model(x)
                out.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def bench(name: str, spec: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    graph = mcc.trace(model, x)
    before = measure(graph, latency=False)
    start = time.perf_counter()
    pruned, records = Pipeline.parse(spec).run(graph.copy())
    seconds = time.perf_counter() - start
    after = measure(pruned, latency=False)
    ms_before, ms_after = side_by_side(graph.module.eval(), pruned.module.eval(), x, repeats)
    with torch.no_grad():
        shape_kept = tuple(pruned(x).shape) == tuple(model(x).shape)
    row = {
        "model": name, "pipeline": spec, "pass_seconds": round(seconds, 2),
        "params_before": before.params, "params_after": after.params,
        "macs_before": before.macs, "macs_after": after.macs,
        "mac_reduction": 1 - after.macs / before.macs,
        "latency_ms_before": ms_before, "latency_ms_after": ms_after,
        "speedup": ms_before / ms_after,
        "output_shape_kept": shape_kept, "stats": records[0].stats,
    }
    print(f"{name:<14} params {before.params / 1e6:7.2f}M -> {after.params / 1e6:6.2f}M  "
          f"MACs {before.macs / 1e9:6.2f}G -> {after.macs / 1e9:5.2f}G (-{row['mac_reduction']:.1%})  "
          f"latency {ms_before:7.1f} -> {ms_after:6.1f} ms ({row['speedup']:.2f}x)  "
          f"pass {seconds:.1f} s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--pipeline", default="prune-channels{ratio=0.5}")
    parser.add_argument("--target-pipeline", default="prune-channels{ratio=0.3}",
                        help="the pipeline that cuts about 50%% of ResNet-50's MACs")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = [bench(name, args.pipeline, args.repeats) for name in args.models.split(",")]
    check = bench("resnet50", args.target_pipeline, args.repeats)
    met = check["mac_reduction"] >= 0.5 and check["speedup"] >= 1.6
    print(f"target (ResNet-50, >= 50% of MACs cut, >= 1.6x faster): -{check['mac_reduction']:.1%} "
          f"MACs, {check['speedup']:.2f}x -> {'met' if met else 'MISSED'}")
    # latency means little on a machine busy with other work: record how busy it was
    result = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__,
                          "load_average_1min": [load_before, os.getloadavg()[0]]},
              "rows": rows, "target_check": dict(check, met=met)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
