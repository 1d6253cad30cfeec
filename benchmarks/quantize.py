"""Quantization accuracy on the reference model: float, int8 PTQ, int4 + AdaRound, QAT int4, and
ONNX Runtime's own ``quantize_static`` on the same model and calibration data.

    python benchmarks/quantize.py [--model reference|digits] [--weights PATH] [--calib-batches 32]
                                  [--qat-epochs 1]

``reference`` is mcc.zoo's Fashion-MNIST CNN on the 10k test images; ``digits`` the small
scikit-learn digits CNN of the test suite (seconds, for a quick look). Every mcc int8 number is
also measured on the exported QDQ ONNX file in ONNX Runtime, the deployed accuracy.

Targets (issue 4): int8 per-channel PTQ with 32 calibration batches loses ≤ 0.5 points top-1;
int4 weights with learned rounding ≤ 2 points; QAT brings int4 within 1 point of float; mcc's
int8 at least as good as ONNX Runtime's. Writes benchmarks/results/quantize.json
(quantize_digits.json for ``--model digits``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnxruntime as ort
import torch
from torch import nn

import mcc
import mcc.quant as Q
from mcc.pipeline import Pipeline

RESULTS = Path(__file__).parent / "results" / "quantize.json"


@dataclass
class Task:
    name: str
    model: nn.Module
    calib: list[torch.Tensor]                # calibration batches
    train: Callable[[], list]                # (x, y) batches for QAT, freshly shuffled
    x_test: torch.Tensor
    y_test: torch.Tensor


def reference_task(calib_batches: int, weights: Path | None = None) -> Task:
    from mcc import zoo

    model = zoo.reference_cnn(pretrained=weights is None)
    if weights is not None:  # e.g. fresh ones from scripts/train_reference_cnn.py --output
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))

    def batches(split, shuffle, limit=None):
        return list(zoo.fashion_mnist_loader(split, batch_size=64, shuffle=shuffle, limit=limit))

    calib = [x for x, _ in batches("train", False, 64 * calib_batches)]
    test = batches("test", False)
    return Task("reference CNN (Fashion-MNIST)", model.eval(), calib,
                lambda: batches("train", True), torch.cat([x for x, _ in test]),
                torch.cat([y for _, y in test]))


def digits_task(calib_batches: int) -> Task:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test suite's model
    from tests.quant.digits import digits_data, trained_digits

    x, y, x_test, y_test = digits_data()
    calib = [x[i * 32:(i + 1) * 32] for i in range(min(calib_batches, len(x) // 32))]

    def train():
        perm = torch.randperm(len(y))
        return [(x[i], y[i]) for i in perm.split(64)]

    return Task("digits CNN (scikit-learn)", trained_digits(), calib, train, x_test, y_test)


def accuracy(module, x, y) -> float:
    module.eval()
    with torch.no_grad():
        hits = sum((module(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(1000), y.split(1000)))
    return 100.0 * hits / len(y)


def onnx_accuracy(path: Path, x, y) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    hits = 0
    for xb, yb in zip(x.split(1000), y.split(1000)):
        hits += int((session.run(None, {name: xb.numpy()})[0].argmax(1) == yb.numpy()).sum())
    return 100.0 * hits / len(y)


def export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The TorchScript exporter at opset 17, as Graph.to_onnx, with a dynamic batch."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def mcc_ptq(task: Task, spec: str) -> tuple[mcc.Graph, float]:
    graph = Pipeline.parse(spec).run(mcc.trace(task.model, task.calib[0][:1]))[0]
    start = time.perf_counter()
    Q.calibrate(graph, task.calib)
    return graph, time.perf_counter() - start


def qat(graph: mcc.Graph, task: Task, epochs: int, lr: float) -> float:
    """Fine-tune the fake-quant graph (straight-through estimator) with distillation from the
    float model: cross-entropy on labels plus KL to the teacher's softened outputs."""
    teacher = task.model.eval()
    opt = torch.optim.Adam(graph.parameters(), lr=lr)
    start = time.perf_counter()
    graph.train()
    for _ in range(epochs):
        for x, y in task.train():
            with torch.no_grad():
                soft = torch.log_softmax(teacher(x) / 4.0, dim=1)
            out = graph(x)
            kd = nn.functional.kl_div(torch.log_softmax(out / 4.0, dim=1), soft, log_target=True,
                                      reduction="batchmean") * 16.0
            loss = 0.5 * nn.functional.cross_entropy(out, y) + 0.5 * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
    graph.eval()
    return time.perf_counter() - start


def ort_static(task: Task, workdir: Path) -> tuple[Path, float]:
    """ONNX Runtime's own post-training int8: QDQ, per-channel int8 weights, uint8 activations,
    min-max calibration on the same batches."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(task.calib)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"x": batch.numpy()}

    float_path, pre_path, out_path = workdir / "float.onnx", workdir / "pre.onnx", workdir / "ort_int8.onnx"
    export(task.model, task.calib[0][:1], float_path)
    quant_pre_process(str(float_path), str(pre_path))
    start = time.perf_counter()
    quantize_static(str(pre_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out_path, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["reference", "digits"], default="reference")
    parser.add_argument("--weights", type=Path, help="reference CNN weights other than mcc's own")
    parser.add_argument("--calib-batches", type=int, default=32)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-lr", type=float, default=1e-4)
    args = parser.parse_args()
    torch.manual_seed(0)
    task = reference_task(args.calib_batches, args.weights) if args.model == "reference" \
        else digits_task(args.calib_batches)
    x, y = task.x_test, task.y_test
    rows = []
    base = accuracy(task.model, x, y)
    rows.append({"key": "float", "method": "float", "accuracy": base})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for key, label, spec in (
                ("int8", "mcc int8 PTQ (per-channel)", "fold-bn,quantize"),
                ("int4", "mcc int4 weights, nearest", "fold-bn,quantize{weights=int4}"),
                ("int4_adaround", "mcc int4 weights, AdaRound",
                 "fold-bn,quantize{weights=int4,rounding=adaround}")):
            graph, seconds = mcc_ptq(task, spec)
            row = {"key": key, "method": label, "pipeline": spec, "accuracy": accuracy(graph, x, y),
                   "calibration_s": seconds}
            path = tmp / "mcc.onnx"
            export(graph.module, task.calib[0][:1], path)
            row["onnxruntime_accuracy"] = onnx_accuracy(path, x, y)
            rows.append(row)
            if key == "int4":
                seconds = qat(graph, task, args.qat_epochs, args.qat_lr)
                rows.append({"key": "int4_qat", "method": f"mcc int4 weights, QAT ({args.qat_epochs} epoch, distilled)",
                             "pipeline": spec, "accuracy": accuracy(graph, x, y), "train_s": seconds})
        path, seconds = ort_static(task, tmp)
        rows.append({"key": "onnxruntime_int8", "method": "ONNX Runtime quantize_static int8 (QDQ, per-channel)",
                     "onnxruntime_accuracy": onnx_accuracy(path, x, y), "calibration_s": seconds})
    for r in rows:
        r["loss_points"] = base - r.get("accuracy", r.get("onnxruntime_accuracy"))
    print(f"{task.name}: {len(y)} test images, {len(task.calib)} calibration batches")
    print(f"{'method':<58}{'top-1 %':>9}{'in ORT %':>10}{'loss pts':>10}")
    for r in rows:
        acc = f"{r['accuracy']:.2f}" if "accuracy" in r else "-"
        in_ort = f"{r['onnxruntime_accuracy']:.2f}" if "onnxruntime_accuracy" in r else "-"
        print(f"{r['method']:<58}{acc:>9}{in_ort:>10}{r['loss_points']:>10.2f}")
    by = {r["key"]: r for r in rows}
    int8, ada, qat_row, ort_row = by["int8"], by["int4_adaround"], by["int4_qat"], by["onnxruntime_int8"]
    targets = {
        "int8_loss_le_0.5": base - int8["accuracy"] <= 0.5,
        "int4_adaround_loss_le_2": base - ada["accuracy"] <= 2.0,
        "qat_int4_within_1": base - qat_row["accuracy"] <= 1.0,
        "mcc_int8_ge_onnxruntime": int8["onnxruntime_accuracy"] >= ort_row["onnxruntime_accuracy"],
    }
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    results = RESULTS if args.model == "reference" else RESULTS.with_name(f"quantize_{args.model}.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"model": task.name, "test_images": len(y),
                                   "calibration_batches": len(task.calib), "rows": rows,
                                   "targets": targets, "torch": torch.__version__,
                                   "onnxruntime": ort.__version__}, indent=2) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
