"""Trace and fold-bn cost, and latency before/after fold-bn, for ResNet-50 and MobileNetV2.

    python benchmarks/passes.py [--size 224] [--repeats 20]

Prints a table and writes benchmarks/results/passes.json. Target (issue 2): tracing + folding
ResNet-50 in under 5 s on the 2-core CI machine. Latency ratios are measured side by side in
one run, as the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torchvision

import mcc
from mcc.pipeline import Pipeline
from mcc.report import measure

MODELS = ["resnet50", "mobilenet_v2"]


def bench(name: str, size: int, repeats: int) -> dict:
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, size, size)
    start = time.perf_counter()
    graph = mcc.trace(model, x)
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    folded, records = Pipeline.parse("fold-bn").run(graph.copy())
    fold_s = time.perf_counter() - start
    before = measure(graph, latency=True, repeats=repeats)
    after = measure(folded, latency=True, repeats=repeats)
    with torch.no_grad():
        err = ((folded(x) - model(x)).abs().max() / model(x).abs().max()).item()
    return {"model": name, "input": [1, 3, size, size], "trace_s": trace_s, "fold_bn_s": fold_s,
            "trace_plus_fold_s": trace_s + fold_s, "folded": records[0].stats["folded"],
            "latency_before_ms": before.latency_ms, "latency_after_ms": after.latency_ms,
            "speedup": before.latency_ms / after.latency_ms, "relative_error": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rows = [bench(name, args.size, args.repeats) for name in MODELS]
    header = f"{'model':<14}{'trace s':>9}{'fold-bn s':>11}{'total s':>9}{'BNs':>5}" \
             f"{'before ms':>11}{'after ms':>10}{'speedup':>9}{'rel err':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<14}{r['trace_s']:>9.2f}{r['fold_bn_s']:>11.2f}{r['trace_plus_fold_s']:>9.2f}"
              f"{r['folded']:>5}{r['latency_before_ms']:>11.1f}{r['latency_after_ms']:>10.1f}"
              f"{r['speedup']:>8.2f}x{r['relative_error']:>10.1e}")
    resnet = next(r for r in rows if r["model"] == "resnet50")
    verdict = "met" if resnet["trace_plus_fold_s"] < 5 else "MISSED"
    print(f"\ntarget: trace + fold-bn ResNet-50 < 5 s: {resnet['trace_plus_fold_s']:.2f} s ({verdict})")
    out = Path(__file__).parent / "results" / "passes.json"
    out.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
