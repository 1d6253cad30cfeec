"""Accuracy versus size: every reference model under each of mcc's compression pipelines.

    python benchmarks/accuracy.py [--models fashion-mnist,efficientnet-lite0,minilm]
                                  [--finetune-epochs 1]

For each reference model of :mod:`mcc.zoo` (the Fashion-MNIST CNN, EfficientNet-Lite0,
MiniLM) this traces the model once, runs every pipeline below with ``mcc.compress``
(calibrating quantizers on the evaluator's calibration data, which the evaluation never sees)
and measures the headline metric, the stored size and the MACs against the float model. A
pipeline whose passes do not exist yet is listed as skipped. Pruning is measured as it comes
out of the pass and, for the Fashion-MNIST CNN (the one model with training data here), again
after ``--finetune-epochs`` of distillation from the float model on the training split: the
trade-off users read before choosing a pipeline. Prints one table; writes
benchmarks/results/accuracy.json and benchmarks/results/accuracy.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import mcc
from mcc.report import measure
from mcc.errors import MccError
from mcc.zoo import fashion_mnist_loader, resolve_evaluator

RESULTS = Path(__file__).parent / "results"
MODELS = ("fashion-mnist", "efficientnet-lite0", "minilm")
# (label, pipeline); "float" is the traced model itself.
PIPELINES = (
    ("fold-bn", "fold-bn"),
    ("prune 30%", "fold-bn,prune-channels{ratio=0.3}"),
    ("prune 50%", "fold-bn,prune-channels{ratio=0.5}"),
    ("sparse 50%", "fold-bn,prune-weights{sparsity=0.5}"),
    ("int8 PTQ", "fold-bn,quantize"),
    ("int4 weights", "fold-bn,quantize{weights=int4,activations=none}"),
    ("factorize", "fold-bn,factorize"),
)
FINETUNED = ("prune 30%", "prune 50%", "sparse 50%")  # fine-tuned again where training data exists


def run_model(name: str, finetune_epochs: int) -> list[dict]:
    evaluator = resolve_evaluator(name)
    graph = mcc.trace(evaluator.model(), evaluator.example_inputs())
    calibration = evaluator.calibration_data()
    start = time.perf_counter()
    base = evaluator(graph)
    float_stats = measure(graph, latency=False)
    rows = [_row(name, evaluator, "float", "", base, base, 1.0, 1.0, time.perf_counter() - start)]
    _print(rows[-1])
    for label, text in PIPELINES:
        start = time.perf_counter()
        try:
            compressed, report = mcc.compress(graph, pipeline=text, calibration_data=calibration,
                                              latency=False)
        except MccError as exc:
            rows.append(_row(name, evaluator, label, text, None, base, None, None,
                             time.perf_counter() - start, note=f"skipped: {exc}"))
            _print(rows[-1])
            continue
        size = report.after.stored_bytes / float_stats.stored_bytes
        macs = report.after.macs / float_stats.macs
        rows.append(_row(name, evaluator, label, text, evaluator(compressed), base, size, macs,
                         time.perf_counter() - start, sparsity=report.after.sparsity))
        _print(rows[-1])
        if label in FINETUNED and name == "fashion-mnist" and finetune_epochs:
            from mcc.finetune import finetune

            start = time.perf_counter()
            loader = fashion_mnist_loader("train", batch_size=128, shuffle=True)
            finetune(compressed, loader, teacher=graph, epochs=finetune_epochs)
            rows.append(_row(name, evaluator, f"{label} + finetune", text, evaluator(compressed),
                             base, size, macs, time.perf_counter() - start,
                             sparsity=measure(compressed, latency=False).sparsity,
                             note=f"{finetune_epochs} epoch(s) of distillation from the float model"))
            _print(rows[-1])
    return rows


def _row(model, evaluator, label, text, metric, base, size, macs, seconds, *, sparsity=None,
         note="") -> dict:
    return {"model": model, "metric_name": evaluator.metric_name, "pipeline": label,
            "pipeline_text": text, "metric": metric,
            "delta": None if metric is None else metric - base, "size_ratio": size,
            "mac_ratio": macs, "sparsity": sparsity, "seconds": round(seconds, 1), "note": note}


HEADER = (f"{'model':<19}{'pipeline':<25}{'metric':>9}{'delta':>9}{'size':>8}{'MACs':>8}"
          f"{'sparse':>8}{'s':>7}  metric name / note")


def _print(r: dict) -> None:
    def num(value, fmt):
        return format(value, fmt) if value is not None else "-"

    print(f"{r['model']:<19}{r['pipeline']:<25}{num(r['metric'], '9.4g')}{num(r['delta'], '+9.3g')}"
          f"{num(r['size_ratio'], '7.3f')}x{num(r['mac_ratio'], '7.3f')}x"
          f"{num(r['sparsity'], '8.1%')}{r['seconds']:>7.1f}  {r['note'] or r['metric_name']}",
          flush=True)


def plot(rows: list[dict], path: Path) -> None:
    """One panel per model: metric against stored size relative to the float model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        points = [r for r in rows if r["model"] == model and r["metric"] is not None]
        base = next(r["metric"] for r in points if r["pipeline"] == "float")
        ax.axhline(base, color="grey", linestyle="--", linewidth=0.8)
        for r in points:
            tuned = r["pipeline"].endswith("finetune")
            ax.scatter(r["size_ratio"], r["metric"], marker="*" if r["pipeline"] == "float" else
                       ("s" if tuned else "o"), s=80 if r["pipeline"] == "float" else 36)
            ax.annotate(r["pipeline"], (r["size_ratio"], r["metric"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("stored size / float size (log)")
        ax.set_ylabel(points[0]["metric_name"])
        ax.set_title(model)
        ax.grid(True, which="both", linewidth=0.3)
    fig.suptitle("mcc: accuracy versus size (dashed: float model)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--finetune-epochs", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    print(HEADER)
    print("-" * len(HEADER))
    rows = [r for name in args.models.split(",") for r in run_model(name, args.finetune_epochs)]
    elapsed = time.perf_counter() - start
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "accuracy.json"
    out.write_text(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "load_average": os.getloadavg(),
        "seconds": round(elapsed, 1), "rows": rows}, indent=2))
    png = RESULTS / "accuracy.png"
    plot(rows, png)
    print(f"\nsize: stored bytes (quantized weights at their bit width) over the float model's; "
          f"MACs likewise.\n{elapsed:.0f} s; wrote {out} and {png}")


if __name__ == "__main__":
    main()
