"""factorize on real trained weights: MiniLM's linear layers, the Fashion-MNIST CNN's convolutions.

    python benchmarks/factorize.py [--models minilm,fashion-mnist] [--recover-seconds 120]

MiniLM (all-MiniLM-L6-v2, mcc.zoo): ``factorize{method=svd,...}`` on its 36 Linear layers at
energies 0.9, 0.95 and 0.99 and at ``target_macs`` 0.82 (about the MACs energy 0.9 spends)
and 0.7; for each, parameters and MACs against
the float model, the mean cosine similarity of the 50 Lee documents' embeddings to the float
embeddings, and the Lee Pearson r the evaluator computes (float model: 0.656).

Reference CNN (Fashion-MNIST, if the Debian data set is installed): ``fold-bn`` then
``tucker2`` and ``spatial-svd`` at energy 0.9 and at ``target_macs=0.7``, top-1 % on the 10,000
test images; then the Tucker-2 ``target_macs=0.5`` graph fine-tuned with distillation from the
float model for ``--recover-seconds`` on the training split, to show what recovery buys back.

Prints one table and writes benchmarks/results/factorize.json (with each run's per-layer ranks,
kept energy and MAC savings). A progress bar shows only on a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import mcc
from mcc.errors import AssetError
from mcc.pipeline import Pipeline
from mcc.report import measure

RESULTS = Path(__file__).parent / "results" / "factorize.json"
MODELS = ("minilm", "fashion-mnist")
# target_macs=0.82 spends about the MACs energy=0.9 does: uniform energy against the budget
MINILM = ("factorize{method=svd,energy=0.9}", "factorize{method=svd,energy=0.95}",
          "factorize{method=svd,energy=0.99}", "factorize{method=svd,target_macs=0.82}",
          "factorize{method=svd,target_macs=0.7}")
CNN = ("fold-bn", "fold-bn,factorize{method=tucker2,energy=0.9}",
       "fold-bn,factorize{method=spatial-svd,energy=0.9}",
       "fold-bn,factorize{method=tucker2,target_macs=0.7}",
       "fold-bn,factorize{method=spatial-svd,target_macs=0.7}",
       "fold-bn,factorize{method=tucker2,target_macs=0.5}")
RECOVER = "fold-bn,factorize{method=tucker2,target_macs=0.5}"


def _row(model: str, spec: str, base, after, seconds: float, stats: dict | None) -> dict:
    return {"model": model, "pipeline": spec,
            "params_before": base.params, "params_after": after.params,
            "param_reduction": 1 - after.params / base.params,
            "macs_before": base.macs, "macs_after": after.macs,
            "mac_reduction": 1 - after.macs / base.macs,
            "factorized": (stats or {}).get("factorized", 0),
            "candidates": (stats or {}).get("candidates", 0),
            "pass_seconds": round(seconds, 2), "stats": stats or {}}


def _factorize_stats(records) -> dict | None:
    found = [r.stats for r in records if r.name == "factorize"]
    return found[-1] if found else None


def _compress(model: str, spec: str, graph, base) -> tuple:
    """``spec`` run on a copy of ``graph``, timed: the compressed graph and its row."""
    start = time.perf_counter()
    out, records = Pipeline.parse(spec).run(graph.copy())
    seconds = time.perf_counter() - start
    return out, _row(model, spec, base, measure(out, latency=False), seconds,
                     _factorize_stats(records))


def bench_minilm(bar) -> list[dict]:
    from mcc.zoo import evaluate_minilm, resolve_evaluator

    evaluator = resolve_evaluator("minilm")
    model = evaluator.model()
    graph = mcc.trace(model, evaluator.example_inputs())
    base = measure(graph, latency=False)
    rows = []
    float_scores = evaluate_minilm(graph)
    row = _row("MiniLM-L6", "float", base, base, 0.0, None)
    row.update(cosine=float_scores["cosine"], pearson=float_scores["pearson"])
    rows.append(row)
    bar.update(1)
    _print(row)
    for spec in MINILM:
        out, row = _compress("MiniLM-L6", spec, graph, base)
        scores = evaluate_minilm(out)
        row.update(cosine=scores["cosine"], pearson=scores["pearson"])
        rows.append(row)
        bar.update(1)
        _print(row)
    return rows


def bench_cnn(bar, recover_seconds: float) -> list[dict]:
    from mcc.finetune import finetune
    from mcc.zoo import evaluate_fashion_mnist, fashion_mnist, fashion_mnist_loader, reference_cnn

    model = reference_cnn()
    graph = mcc.trace(model, fashion_mnist("test").tensors[0][:1])
    base = measure(graph, latency=False)
    float_top1 = evaluate_fashion_mnist(graph)
    row = _row("Fashion-MNIST CNN", "float", base, base, 0.0, None)
    row["top1"] = float_top1
    rows = [row]
    bar.update(1)
    _print(row)
    for spec in CNN:
        out, row = _compress("Fashion-MNIST CNN", spec, graph, base)
        row["top1"] = evaluate_fashion_mnist(out)
        rows.append(row)
        bar.update(1)
        _print(row)
        if spec == RECOVER and recover_seconds > 0:
            torch.manual_seed(0)
            loader = fashion_mnist_loader("train", batch_size=128, shuffle=True)
            history = finetune(out, loader, teacher=graph, epochs=1, lr=1e-3,
                               max_seconds=recover_seconds)
            recovered = dict(row, pipeline=f"{spec} + distillation",
                             top1=evaluate_fashion_mnist(out),
                             finetune_steps=history["steps"],
                             finetune_seconds=round(history["seconds"], 1))
            rows.append(recovered)
            _print(recovered)
    bar.update(1)
    return rows


def _print(row: dict) -> None:
    if "top1" in row:
        metric = f"top-1 {row['top1']:6.2f}%"
        if "finetune_steps" in row:
            metric += f"  ({row['finetune_steps']} steps, {row['finetune_seconds']:.0f} s)"
    else:
        metric = f"cosine {row['cosine']:.4f}  Lee Pearson {row['pearson']:.4f}"
    layers = f"{row['factorized']}/{row['candidates']}" if row["candidates"] else "-"
    tqdm.write(f"{row['model']:<18} {row['pipeline']:<58} params {row['params_after'] / 1e6:6.3f}M "
               f"(-{row['param_reduction']:5.1%})  MACs {row['macs_after'] / 1e6:7.2f}M "
               f"(-{row['mac_reduction']:5.1%})  layers {layers:>5}  {metric}", file=sys.stdout)
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--recover-seconds", type=float, default=120.0,
                        help="distillation time for the Tucker-2 50%% CNN (0: skip)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    models = args.models.split(",")
    load_before = os.getloadavg()[0]
    total = (len(MINILM) + 1 if "minilm" in models else 0) + \
        (len(CNN) + 2 if "fashion-mnist" in models else 0)
    rows, skipped = [], {}
    with tqdm(total=total, desc="factorize", leave=False, disable=not sys.stderr.isatty()) as bar:
        if "minilm" in models:
            try:
                rows += bench_minilm(bar)
            except AssetError as exc:
                skipped["minilm"] = str(exc)
        if "fashion-mnist" in models:
            try:
                rows += bench_cnn(bar, args.recover_seconds)
            except AssetError as exc:
                skipped["fashion-mnist"] = str(exc)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    result = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__,
                          "load_average_1min": [load_before, os.getloadavg()[0]]},
              "rows": rows, "skipped": skipped}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
