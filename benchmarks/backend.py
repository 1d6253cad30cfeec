"""Batch-1 CPU latency of mcc's TVM backend against PyTorch and ONNX Runtime, float32 and int8.

    python benchmarks/backend.py [--models resnet18,resnet50,mobilenet_v2] [--threads N]
                                 [--repeat 20] [--json PATH] [--calib 16] [--agree 16] [--profile]

For each torchvision model (random weights, eval mode, one 1×3×224×224 image) five engines run
the same input. The BatchNorm statistics are first estimated on random images (:func:`settle`):
with torchvision's initial statistics the activations of a random MobileNetV2 shrink layer by
layer to logits of about 1e-9, which int8 rounds to zero, and the top-1 check below would
compare zeros. Latency does not depend on the values.

* ``torch``     PyTorch eager, float32;
* ``ort_fp32``  ONNX Runtime (CPU provider, all graph optimisations) on the model's ONNX export;
* ``ort_int8``  ONNX Runtime on ``onnxruntime.quantization.quantize_static`` of that export: QDQ,
  per-channel int8 weights, uint8 activations, min-max calibration;
* ``mcc_fp32``  ``mcc.compress(graph, pipeline="fold-bn")``, then
  ``mcc.backends.tvm.compile(graph, "x86")``;
* ``mcc_int8``  pipeline ``fold-bn,quantize`` calibrated (min-max) on the same ``--calib`` images
  ORT calibrates on, compiled the same way (with compile's default, the tuning database mcc
  ships for this CPU when there is one, else mcc's hand-written kernels; the JSON says how many
  kernels it gave);
* ``mcc_int8w7`` the same with ``quantize{weights=int7}``: on CPUs without VNNI the kernels
  then use ``vpmaddubsw``, exact for 7-bit weights (what ORT's ``reduce_range`` and oneDNN do
  there). The targets are checked on ``mcc_int8``; this column shows what 7-bit weights buy.

Every engine gets the same thread count (``--threads``, default all cores): ``TVM_NUM_THREADS``
is set before TVM is imported, ORT's ``intra_op_num_threads``, ``torch.set_num_threads``. The
machines are shared, so the measurement is interleaved: each of ``--repeat`` rounds runs every
engine three times untimed (that restores the engine's caches after the others ran, and the
cores' speed after the pause) and once timed, in an order that rotates from round to round, with
a 50 ms pause between engines so that the thread pool of the one before has stopped spinning.
Reported: the median over rounds. Only the ratios of one run mean anything; absolute
milliseconds depend on what else the machine was doing.

Targets (the backend issue): mcc int8 at least 2× faster than ORT float32 on ResNet-18;
MobileNetV2 int8 faster than ORT float32; mcc float32 within 1.2× of ORT float32.

With an NVIDIA GPU that both PyTorch and TVM see, three more engines run on it: ``torch_cuda``
(PyTorch eager, float32) and ``mcc_cuda_fp32`` / ``mcc_cuda_int8`` (the same two graphs
compiled for ``cuda``, this GPU's architecture); every GPU engine is timed from numpy input to
numpy output, copies included. Without one the run says why and leaves them out.

Also printed: the time ``compile`` takes per model, and how often the int8 artifact's top-1
class equals the fake-quant graph's on ``--agree`` fresh random images (the JSON adds the largest
logit difference relative to the largest logit, and the same agreements for ONNX Runtime's int8
and the float model). ``--untuned`` adds
``mcc_int8_hand`` and ``mcc_int8w7_hand``, the same int8 graphs compiled with ``tuning=False``
(mcc's hand-written schedules only), to show side by side what the shipped database buys.
``--profile`` adds, per model, the slowest kernels of both mcc artifacts (timed through the Relax VM's
instrument hook) next to ONNX Runtime's own per-operator profile. Writes
benchmarks/results/backend_<target>.json (``haswell``, ``cascadelake``: what ``x86`` resolved to).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODELS = ("resnet18", "resnet50", "mobilenet_v2")
ENGINES = ("torch", "ort_fp32", "ort_int8", "mcc_fp32", "mcc_int8", "mcc_int8w7")
#: With --untuned, also the two int8 artifacts compiled without any tuning database.
UNTUNED_ENGINES = ("mcc_int8_hand", "mcc_int8w7_hand")
#: On a machine with an NVIDIA GPU (seen by both PyTorch and TVM), also these.
CUDA_ENGINES = ("torch_cuda", "mcc_cuda_fp32", "mcc_cuda_int8")
LABELS = {"torch": "PyTorch", "ort_fp32": "ORT fp32", "ort_int8": "ORT int8",
          "mcc_fp32": "mcc fp32", "mcc_int8": "mcc int8", "mcc_int8w7": "mcc int8/w7",
          "mcc_int8_hand": "mcc int8 hand", "mcc_int8w7_hand": "mcc w7 hand",
          "torch_cuda": "PyTorch GPU", "mcc_cuda_fp32": "mcc GPU fp32",
          "mcc_cuda_int8": "mcc GPU int8"}
PAUSE_S = 0.05
#: Untimed calls after the pause: a single one left both ORT and mcc ~15% slower than back to
#: back on the Xeon (MobileNetV2: ORT 3.0 -> 3.4 ms, mcc 3.5 -> 4.0 ms), the cores still waking.
WARM_CALLS = 3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated torchvision model names (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for every engine (default: all cores, %(default)s)")
    parser.add_argument("--repeat", type=int, default=20,
                        help="interleaved rounds, each timing every engine once "
                             "(default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the results (default: results/backend_<target>.json)")
    parser.add_argument("--calib", type=int, default=16,
                        help="calibration images for mcc and ORT int8 (default: %(default)s)")
    parser.add_argument("--agree", type=int, default=16,
                        help="images for the int8 top-1 agreement check (default: %(default)s)")
    parser.add_argument("--untuned", action="store_true",
                        help="also time both int8 artifacts compiled with the hand-written "
                             "schedules only (tuning=False): what the shipped database buys")
    parser.add_argument("--profile", action="store_true",
                        help="also print the mcc artifacts' per-kernel times and ORT's "
                             "per-operator profile")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeat < 1 or args.calib < 1 or args.agree < 1:
        parser.error("--threads, --repeat, --calib and --agree must be positive")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- engines ------------------------------------------------------------------------------
def export_onnx(model, x, path: Path) -> None:
    """The TorchScript exporter at opset 17 (as mcc's Graph.to_onnx), static batch 1."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])


def ort_session(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_int8(float_path: Path, workdir: Path, calib) -> Path:
    """ONNX Runtime's static int8: QDQ, per-channel int8 weights, uint8 activations, min-max."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calib)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"x": batch.numpy()}

    pre, out = workdir / "pre.onnx", workdir / "int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(float_path), str(pre))
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    return out


def settle(model, batches: int = 4, size: int = 8) -> None:
    """Replace the BatchNorm running statistics with those of random images (cumulative
    average over ``batches`` of ``size``), so that every layer's activations have unit scale."""
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    gen = torch.Generator().manual_seed(3)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(size, 3, 224, 224, generator=gen))
    model.eval()


def prepare(name: str, args, workdir: Path) -> dict:
    """Build every engine for one model: ``{"run": {engine: fn(x_numpy)}, ...}``."""
    import numpy as np
    import torch
    import torchvision

    import mcc
    from mcc.backends import tvm as mcc_tvm

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    settle(model)
    x = torch.randn(1, 3, 224, 224)
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(1, 3, 224, 224, generator=gen) for _ in range(args.calib)]
    info: dict = {"model": name, "input": [1, 3, 224, 224]}

    log(f"{name}: ONNX export and ONNX Runtime int8 calibration ({args.calib} images)")
    float_path = workdir / f"{name}.onnx"
    export_onnx(model, x, float_path)
    start = time.perf_counter()
    int8_path = ort_int8(float_path, workdir, calib)
    info["ort_quantize_s"] = time.perf_counter() - start
    sessions = {"ort_fp32": ort_session(float_path, args.threads),
                "ort_int8": ort_session(int8_path, args.threads)}

    log(f"{name}: mcc trace, fold-bn, fold-bn,quantize (calibrated), compile x86")
    graph = mcc.trace(model, x)
    start = time.perf_counter()
    fp32_graph, _ = mcc.compress(graph, pipeline="fold-bn", latency=False)
    info["mcc_fp32_passes_s"] = time.perf_counter() - start
    start = time.perf_counter()
    int8_graph, _ = mcc.compress(graph, pipeline="fold-bn,quantize", calibration_data=calib,
                                 latency=False)
    info["mcc_int8_passes_s"] = time.perf_counter() - start
    w7_graph, _ = mcc.compress(graph, pipeline="fold-bn,quantize{weights=int7}",
                               calibration_data=calib, latency=False)
    start = time.perf_counter()
    fp32_art = mcc_tvm.compile(fp32_graph, "x86", pipeline="fold-bn", name=name)
    info["compile_fp32_s"] = time.perf_counter() - start
    start = time.perf_counter()
    int8_art = mcc_tvm.compile(int8_graph, "x86", pipeline="fold-bn,quantize", name=name)
    info["compile_int8_s"] = time.perf_counter() - start
    w7_art = mcc_tvm.compile(w7_graph, "x86", pipeline="fold-bn,quantize{weights=int7}", name=name)
    meta = int8_art.metadata
    # compile's default: the database mcc ships for this CPU, if any (kernels it applied)
    info["tuning"] = {engine: art.metadata["tuning"] for engine, art in
                      (("mcc_fp32", fp32_art), ("mcc_int8", int8_art), ("mcc_int8w7", w7_art))}
    info["int8_integer_units"] = meta["integer_units"]
    info["int8_float_ops"] = meta["float_ops"]
    info["target"] = meta["target"]

    def torch_run(a):
        with torch.inference_mode():
            return model(torch.from_numpy(a)).numpy()

    gpu = {}
    if args.cuda:
        log(f"{name}: compile cuda (this GPU), float32 and int8")
        for engine, g in (("mcc_cuda_fp32", fp32_graph), ("mcc_cuda_int8", int8_graph)):
            start = time.perf_counter()
            artifact = mcc_tvm.compile(g, "cuda", name=name)
            info[f"compile_{engine}_s"] = time.perf_counter() - start
            gpu[engine] = lambda a, artifact=artifact: artifact(a)[0]
        model_gpu = copy.deepcopy(model).cuda()

        def torch_cuda_run(a):
            with torch.inference_mode():
                return model_gpu(torch.from_numpy(a).cuda()).cpu().numpy()  # .cpu() synchronises

        gpu["torch_cuda"] = torch_cuda_run

    untuned = {}
    if args.untuned:
        for engine, g, spec in (("mcc_int8_hand", int8_graph, "fold-bn,quantize"),
                                ("mcc_int8w7_hand", w7_graph, "fold-bn,quantize{weights=int7}")):
            art = mcc_tvm.compile(g, "x86", tuning=False, pipeline=spec, name=name)
            untuned[engine] = lambda a, art=art: art(a)[0]
    run = {
        "torch": torch_run,
        "ort_fp32": lambda a: sessions["ort_fp32"].run(None, {"x": a})[0],
        "ort_int8": lambda a: sessions["ort_int8"].run(None, {"x": a})[0],
        "mcc_fp32": lambda a: fp32_art(a)[0],
        "mcc_int8": lambda a: int8_art(a)[0],
        "mcc_int8w7": lambda a: w7_art(a)[0],
        **untuned,
        **gpu,
    }

    # correctness: every engine against its reference, on the benchmark input and fresh images
    xn = x.numpy()
    with torch.no_grad():
        ref = model(x).numpy()
    scale = float(np.abs(ref).max())
    info["fp32_max_rel_err"] = {e: float(np.abs(run[e](xn) - ref).max() / scale)
                                for e in ("ort_fp32", "mcc_fp32", "torch_cuda", "mcc_cuda_fp32")
                                if e in run}
    if "mcc_cuda_int8" in run:
        info["cuda_int8_max_rel_diff_vs_x86_int8"] = float(
            np.abs(run["mcc_cuda_int8"](xn) - run["mcc_int8"](xn)).max() / scale)
    out_quant = meta["outputs"][0].get("quant")
    tie = 0.5 * out_quant["scale"] if out_quant else 0.0

    def same_top1(got, ref) -> bool:  # logits that are output codes can tie: a tie agrees
        return bool(ref.reshape(-1)[got.argmax()] >= ref.max() - tie)

    gen = torch.Generator().manual_seed(2)
    hits = hits_ort = hits_float = 0
    worst = 0.0
    for _ in range(args.agree):
        image = torch.randn(1, 3, 224, 224, generator=gen)
        with torch.no_grad():
            fq = int8_graph(image).numpy()
            label = int(model(image).argmax())
        ours = run["mcc_int8"](image.numpy())
        hits += same_top1(ours, fq)
        hits_ort += same_top1(run["ort_int8"](image.numpy()), fq)
        hits_float += int(fq.argmax() == label)
        worst = max(worst, float(np.abs(ours - fq).max() / max(float(np.abs(fq).max()), 1e-30)))
    info["int8_top1_agreement"] = hits / args.agree
    info["int8_max_rel_logit_diff"] = worst
    info["ort_int8_top1_agreement_with_mcc_fake_quant"] = hits_ort / args.agree
    info["fake_quant_top1_agreement_with_float"] = hits_float / args.agree
    info["agreement_images"] = args.agree
    return {"info": info, "run": run, "x": xn,
            "artifacts": {"mcc_fp32": fp32_art, "mcc_int8": int8_art, "mcc_int8w7": w7_art},
            "onnx": {"ort_fp32": float_path, "ort_int8": int8_path}}


def measure(run: dict, x, rounds: int, desc: str) -> dict:
    """Interleaved timing: per round every engine runs once untimed and once timed; the order
    rotates each round. Returns per-engine median, min and max milliseconds."""
    from tqdm import tqdm

    engines = list(run)
    samples: dict[str, list[float]] = defaultdict(list)
    for engine in engines:  # first-call costs (allocations, thread start-up) out of the way
        run[engine](x)
        run[engine](x)
    for r in tqdm(range(rounds), desc=desc, unit="round", leave=False,
                  disable=not sys.stderr.isatty()):
        order = engines[r % len(engines):] + engines[:r % len(engines)]
        for engine in order:
            time.sleep(PAUSE_S)
            for _ in range(WARM_CALLS):
                run[engine](x)
            start = time.perf_counter()
            run[engine](x)
            samples[engine].append((time.perf_counter() - start) * 1e3)
    return {e: {"median_ms": statistics.median(s), "min_ms": min(s), "max_ms": max(s),
                "runs": len(s)} for e, s in samples.items()}


def cuda_unavailable() -> str | None:
    """Why the GPU engines cannot run here, or None when they can."""
    import torch

    from mcc.backends.tvm import cuda

    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU"
    if cuda.visible_gpu() is None:
        return "TVM sees no CUDA GPU"
    return None


# ---- profiles ---------------------------------------------------------------------------------
def profile_mcc(artifact, x, runs: int = 10) -> list[dict]:
    """Mean milliseconds per call of every function the Relax VM calls (the VM's instrument
    hook around each call), slowest first."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(artifact.executable, tvm.cpu())
    main = vm["main"]
    args = [tvm.runtime.tensor(x), *(tvm.runtime.tensor(c) for c in artifact.constant_arrays)]
    for _ in range(3):
        main(*args)
    totals: dict[str, list[float]] = defaultdict(list)
    started: list[float] = []

    def instrument(func, symbol, before, ret, *rest):
        if before:
            started.append(time.perf_counter())
        else:
            totals[str(symbol)].append(time.perf_counter() - started.pop())
        return 0

    vm.set_instrument(instrument)
    for _ in range(runs):
        main(*args)
    rows = [{"kernel": k, "calls": len(v) // runs, "ms": sum(v) / runs * 1e3}
            for k, v in totals.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def profile_ort(path: Path, threads: int, x, workdir: Path, runs: int = 10) -> list[dict]:
    """ONNX Runtime's own profile: mean milliseconds per run of each node, slowest first."""
    session = ort_session(path, threads, profile_prefix=str(workdir / f"ort_{path.stem}"))
    for _ in range(3 + runs):
        session.run(None, {"x": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][:-len("_kernel_time")]
            per_node.setdefault(node, [e["args"].get("op_name", "?"), []])[1].append(e["dur"])
    rows = []
    for node, (op, durs) in per_node.items():
        durs = durs[3:]  # the warm-up runs
        rows.append({"node": node, "op": op, "ms": sum(durs) / max(1, runs) / 1e3})
    return sorted(rows, key=lambda r: -r["ms"])


def print_profile(name: str, prepared: dict, threads: int, workdir: Path) -> dict:
    out = {}
    for engine in ("mcc_fp32", "mcc_int8", "mcc_int8w7"):
        rows = profile_mcc(prepared["artifacts"][engine], prepared["x"])
        out[engine] = rows
        total = sum(r["ms"] for r in rows)
        print(f"\n{name} {LABELS[engine]}: {total:.1f} ms in {len(rows)} functions (VM instrument)")
        kinds = defaultdict(float)
        for r in rows:
            kinds[r["kernel"].rstrip("0123456789").rstrip("_")] += r["ms"]
        print("  by kind: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                        sorted(kinds.items(), key=lambda kv: -kv[1])[:6]))
        for r in rows[:12]:
            print(f"  {r['kernel']:<32}{r['calls']:>3}x {r['ms']:8.2f} ms")
    for engine in ("ort_fp32", "ort_int8"):
        rows = profile_ort(prepared["onnx"][engine], threads, prepared["x"], workdir)
        out[engine] = rows
        kinds = defaultdict(float)
        for r in rows:
            kinds[r["op"]] += r["ms"]
        total = sum(kinds.values())
        top = sorted(kinds.items(), key=lambda kv: -kv[1])[:6]
        print(f"{name} {LABELS[engine]}: {total:.1f} ms in {len(rows)} nodes (ORT profiler); "
              "by op: " + ", ".join(f"{k} {v:.1f}" for k, v in top))
    return out


# ---- report -----------------------------------------------------------------------------------
def machine() -> dict:
    model, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "?":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni")
           if f in flags]
    return {"cpu": model, "cores": os.cpu_count(), "isa": isa, "python": platform.python_version()}


def _count(row: dict, key: str) -> str:
    return f"{round(row[key] * row['agreement_images'])}/{row['agreement_images']}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    import onnxruntime
    import torch
    import tvm

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows, profiles = [], {}
    no_gpu = cuda_unavailable()
    args.cuda = no_gpu is None
    engines = ENGINES + (UNTUNED_ENGINES if args.untuned else ()) + (CUDA_ENGINES if args.cuda else ())
    if no_gpu:
        log(f"GPU engines ({', '.join(CUDA_ENGINES)}) left out: {no_gpu}")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in models:
            prepared = prepare(name, args, workdir)
            info = prepared["info"]
            info["latency"] = measure(prepared["run"], prepared["x"], args.repeat, name)
            lat = {e: v["median_ms"] for e, v in info["latency"].items()}
            info["int8_speedup_vs_ort_fp32"] = lat["ort_fp32"] / lat["mcc_int8"]
            info["int8_speedup_vs_ort_int8"] = lat["ort_int8"] / lat["mcc_int8"]
            info["fp32_time_ratio_vs_ort_fp32"] = lat["mcc_fp32"] / lat["ort_fp32"]
            info["int8_speedup_vs_mcc_fp32"] = lat["mcc_fp32"] / lat["mcc_int8"]
            info["int8w7_speedup_vs_ort_fp32"] = lat["ort_fp32"] / lat["mcc_int8w7"]
            log(f"{name}: " + ", ".join(f"{LABELS[e]} {lat[e]:.1f} ms" for e in engines))
            if args.profile:
                profiles[name] = print_profile(name, prepared, args.threads, workdir)
            rows.append(info)
    load_after = os.getloadavg()

    target = rows[0]["target"]
    mach = machine()
    print(f"\nbatch 1, 1x3x224x224, {args.threads} thread(s) per engine, median of {args.repeat} "
          f"interleaved rounds; {mach['cpu']} ({mach['cores']} cores, {', '.join(mach['isa'])}); "
          f"mcc target {target['name']} (int8: "
          f"{'vpdpbusd' if target['vnni'] else 'vpmaddwd'}, {target['vector_bits']}-bit); "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    header = (f"{'model':<13}" + "".join(f"{LABELS[e] + ' ms':>15}" for e in engines)
              + f"{'int8 vs ORT32':>15}{'w7 vs ORT32':>13}{'fp32/ORT32':>12}{'compile s':>13}"
              + f"{'top-1 fq':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        lat = {e: v["median_ms"] for e, v in r["latency"].items()}
        print(f"{r['model']:<13}" + "".join(f"{lat[e]:>15.1f}" for e in engines)
              + f"{r['int8_speedup_vs_ort_fp32']:>14.2f}x{r['int8w7_speedup_vs_ort_fp32']:>12.2f}x"
              + f"{r['fp32_time_ratio_vs_ort_fp32']:>11.2f}x"
              + f"{r['compile_fp32_s']:>6.0f} /{r['compile_int8_s']:>4.0f}"
              + f"{_count(r, 'int8_top1_agreement'):>10}")
    print("int8 vs ORT32 = ORT fp32 time / mcc int8 time (>1: mcc faster); w7 vs ORT32 = the "
          "same for int8/w7 (7-bit weights); fp32/ORT32 = mcc fp32 "
          "time / ORT fp32 time; compile = seconds in mcc.backends.tvm.compile, fp32 / int8; "
          "top-1 fq = images where the int8 artifact's top-1 class is the fake-quant graph's")

    by = {r["model"]: r for r in rows}
    targets = {}
    if "resnet18" in by:
        v = by["resnet18"]["int8_speedup_vs_ort_fp32"]
        targets["resnet18_int8_2x_faster_than_ort_fp32"] = {"value": v, "met": v >= 2.0}
    if "mobilenet_v2" in by:
        v = by["mobilenet_v2"]["int8_speedup_vs_ort_fp32"]
        targets["mobilenet_v2_int8_faster_than_ort_fp32"] = {"value": v, "met": v > 1.0}
    for r in rows:
        v = r["fp32_time_ratio_vs_ort_fp32"]
        targets[f"{r['model']}_fp32_within_1.2x_of_ort_fp32"] = {"value": v, "met": v <= 1.2}
    print("targets: " + "; ".join(f"{k} {t['value']:.2f} {'met' if t['met'] else 'MISSED'}"
                                  for k, t in targets.items()))
    for r in rows:
        used = {e: t for e, t in r["tuning"].items() if t}
        if used:
            print(f"tuning {r['model']}: " + ", ".join(
                f"{LABELS[e]} {t['applied']} kernel(s) from {Path(t['database']).name} "
                f"({t['searched']} searched)"
                for e, t in used.items()))

    results = {"machine": mach, "threads": args.threads, "rounds": args.repeat,
               "gpu": torch.cuda.get_device_name() if args.cuda else f"none: {no_gpu}",
               "calibration_images": args.calib, "load_average": [load_before[0], load_after[0]],
               "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                            "tvm": tvm.__version__},
               "rows": rows, "targets": targets}
    if profiles:
        results["profiles"] = profiles
    if args.json is None:
        from mcc.backends.tvm.target import resolve

        args.json = RESULTS / f"backend_{resolve('x86').name}.json"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
