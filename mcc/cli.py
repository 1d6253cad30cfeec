"""The ``mcc`` command line.

Every user-facing failure is an :class:`mcc.MccError`: it is printed as one line on stderr and
the command exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

import numpy as np

from mcc.errors import MccError

MODEL_HELP = ("the model: an .onnx file, a torch.export .pt2 file, a pickled .pt file "
              "(with --unsafe-load), package.module:function returning an nn.Module, or a "
              "torchvision model name such as resnet18 (random weights)")


def main(argv: typing.Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except MccError as exc:
        print(f"mcc: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mcc: interrupted; no output was written", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcc",
        description="mcc, the model compression compiler: trace a model into a graph, run "
                    "compression passes over it (a pipeline spec such as "
                    "'fold-bn,prune-channels{ratio=0.3},quantize'), and measure what changed.",
        epilog="Run 'mcc COMMAND --help' for a command's options; 'mcc passes' lists the passes.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("passes", help="list the passes with their options and docs",
                       description="List every registered pass: its name, one-line doc and options "
                                   "(type, default, allowed values).")
    p.add_argument("name", nargs="?", help="show only this pass, with its full doc")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=cmd_passes)

    p = sub.add_parser("compress", help="run a pipeline over a model and write the result",
                       description="Trace MODEL, run the pipeline, write OUT (.onnx, .pt2 or .pt) "
                                   "atomically, and print the before/after report.")
    _model_args(p)
    p.add_argument("--pipeline", "-p", required=True, metavar="SPEC",
                   help="the passes to run, e.g. 'fold-bn,prune-channels{ratio=0.3}'")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="where to write the compressed model: .onnx, .pt2 (torch.export) or .pt")
    _calibration_args(p)
    _report_args(p)
    p.set_defaults(run=cmd_compress)

    p = sub.add_parser("compile", help="compress a model and compile it for an x86 or ARM CPU with TVM",
                       description="Trace MODEL, run the pipeline (calibrating quantizers with "
                                   "--calib), compile the result with TVM for --target and write "
                                   "the artifact directory OUT (lib.so, constants.params, "
                                   "metadata.json) atomically; print the report and the compiled "
                                   "model's latency (and, with --eval, its metric).")
    _model_args(p)
    p.add_argument("--pipeline", "-p", required=True, metavar="SPEC",
                   help="the passes to run before compiling, e.g. 'fold-bn' (float kernels) or "
                        "'fold-bn,quantize' (int8 kernels; needs --calib)")
    _target_arg(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the artifact directory to write (an earlier artifact there is replaced)")
    _calibration_args(p)
    p.add_argument("--tuning", metavar="DB",
                   help="a tuning database (mcc tune) whose records for this target replace the "
                        "default kernel schedules (default: the database mcc ships for this CPU, "
                        "if any; 'none': mcc's hand-written schedules only)")
    _backend_args(p)
    _report_args(p)
    p.set_defaults(run=cmd_compile)

    p = sub.add_parser("run", help="load a compiled artifact, run it and time it",
                       description="Load the artifact directory DIR (mcc compile), run it on "
                                   "--input (random inputs without it), print each output's shape "
                                   "and top-1 labels, and the median latency of --repeat runs.")
    p.add_argument("artifact", metavar="DIR", help="an artifact directory written by mcc compile")
    p.add_argument("--input", metavar="FILE",
                   help="the inputs: a .npy array (a model with one input) or a .npz with one array "
                        "per input name; a batch that is a multiple of the compiled batch size runs "
                        "in chunks (default: random normal inputs, seed 0)")
    p.add_argument("--repeat", type=int, default=20, metavar="N",
                   help="timed runs for the latency (default 20; 0 skips timing)")
    p.add_argument("-o", "--output", metavar="OUT.npz",
                   help="also write the outputs, one array per output name")
    p.set_defaults(run=cmd_run)

    p = sub.add_parser("tune", help="search faster kernel schedules for a model (slow)",
                       description="Compress MODEL as mcc compile would, then tune each of its "
                                   "convolution and dense kernels with TVM's meta_schedule "
                                   "(--trials candidates each) and record the schedules that beat "
                                   "mcc's hand-written ones in the database DB (kernels already in "
                                   "it are skipped). Use it with mcc compile --tuning DB. Expect "
                                   "minutes per kernel.")
    _model_args(p)
    p.add_argument("--pipeline", "-p", required=True, metavar="SPEC",
                   help="the pipeline mcc compile will use (the kernels depend on it)")
    _target_arg(p)
    p.add_argument("--trials", type=int, default=32, metavar="N",
                   help="schedule candidates measured per kernel (default 32)")
    p.add_argument("-o", "--output", "--db", dest="output", required=True, metavar="DB",
                   help="the tuning database (JSON lines) to create or add to")
    p.add_argument("--rpc", metavar="HOST:PORT",
                   help="measure on the devices registered with this TVM RPC tracker (python -m "
                        "tvm.exec.rpc_tracker) instead of this machine; candidates are still "
                        "built here. Needs --key")
    p.add_argument("--key", metavar="KEY",
                   help="with --rpc: the devices to measure on, as their rpc_server --key names them")
    p.add_argument("--rpc-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="with --rpc: the longest wait for the tracker to answer and for a free "
                        "device (default 30)")
    _calibration_args(p)
    _backend_args(p)
    p.set_defaults(run=cmd_tune)

    p = sub.add_parser("report", help="print a model's size, MACs, sparsity and latency",
                       description="Measure MODEL: parameters, size by dtype, MACs/FLOPs, sparsity, "
                                   "CPU latency (median, p90) and, with --eval, its metric.")
    _model_args(p)
    _report_args(p)
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("analyze", help="analyses that guide compression choices",
                       description="Analyses that guide compression choices.")
    analyses = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    a = analyses.add_parser(
        "sensitivity", help="metric drop when compressing one layer at a time",
        description="Compress one layer (or channel group) at a time with the given pass and "
                    "report the metric drop per layer, most sensitive first: evidence for skip/"
                    "ignore lists and per-layer settings.")
    _model_args(a)
    a.add_argument("--pass", dest="pass_name", required=True, choices=["quantize", "prune-channels"],
                   help="the compression to apply to one layer at a time")
    a.add_argument("--options", default="", metavar="K=V,...",
                   help="options of that pass, in pipeline syntax, e.g. 'weights=int4'")
    a.add_argument("--ratios", default="0.1,0.3,0.5", metavar="R,R,...",
                   help="pruning ratios to try (prune-channels)")
    a.add_argument("--eval", required=True, metavar="EVAL",
                   help="the metric: fashion-mnist, efficientnet-lite0, minilm or package.module:function")
    _calibration_args(a)
    a.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    a.set_defaults(run=cmd_sensitivity)

    p = sub.add_parser("demo", help="compress a bundled model end to end and print the report",
                       description="Compress mcc's bundled reference model with the default "
                                   "pipeline and print the before/after table. Needs no flags.")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.set_defaults(run=cmd_demo)
    return parser


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--input-shape", metavar="N,C,H,W",
                   help="shape of the example input used to trace torch models (default 1,3,224,224)")
    p.add_argument("--unsafe-load", action="store_true",
                   help="allow unpickling a .pt model file (runs code from the file: trusted files only)")
    p.add_argument("--leaf", action="append", default=[], metavar="MODULE",
                   help="keep this submodule opaque while tracing (repeatable)")


def _calibration_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", metavar="DATA",
                   help="calibration inputs for quantized activations: a .npy/.npz array [N, C, H, W] "
                        "or a directory of images (required when the pipeline quantizes activations)")
    p.add_argument("--calib-batches", type=int, metavar="N", help="use at most N batches of 8")
    p.add_argument("--mean", metavar="M,M,M", help="per-channel mean subtracted from calibration images")
    p.add_argument("--std", metavar="S,S,S", help="per-channel std dividing calibration images")


def _target_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="x86", metavar="CPU",
                   help="the CPU to compile for: x86 (this machine), znver4, icelake-server, "
                        "cascadelake, skylake-avx512 or haswell (default x86); arm (any aarch64 "
                        "Linux CPU) or arm:CPU with CPU one of cortex-a53, cortex-a72, cortex-a55, "
                        "cortex-a76, neoverse-n1, neoverse-v1, m1 (cross-compiled; needs "
                        "gcc-aarch64-linux-gnu); or an NVIDIA GPU architecture, cuda:sm_XX "
                        "(mcc tune does not take it)")


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requantize", choices=["scale", "fixed"], default="scale",
                   help="int8 epilogue: scale (float multiply, rounds like the fake-quant graph; "
                        "default) or fixed (int32 multiplier and shift, integer only)")
    p.add_argument("--allow-float", action="store_true",
                   help="run quantized layers that have no integer kernel in float instead of "
                        "failing (the artifact's metadata lists them)")


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval", metavar="EVAL",
                   help="evaluate accuracy: fashion-mnist, efficientnet-lite0, minilm, or "
                        "package.module:function taking the model and returning a number")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")


# ---- commands ----------------------------------------------------------------------------
def cmd_passes(args) -> int:
    from mcc.pass_manager import get_pass, registry, type_hints, type_name

    classes = [get_pass(args.name)] if args.name else [registry()[n] for n in sorted(registry())]
    entries = []
    for cls in classes:
        hints = type_hints(cls)
        options = [{"name": f.name, "type": type_name(hints[f.name]), "default": f.default,
                    "doc": f.metadata.get("doc", ""), "choices": f.metadata.get("choices")}
                   for f in dataclasses.fields(cls)]
        entries.append({"name": cls.name, "doc": cls.doc(), "full_doc": (cls.__doc__ or "").strip(),
                        "options": options})
    if args.json:
        print(json.dumps(entries, indent=2, default=list))
        return 0
    from mcc.pipeline import format_value

    for e in entries:
        print(f"{e['name']}\n    {e['doc']}")
        if args.name:
            body = "\n".join(e["full_doc"].splitlines()[1:]).strip()
            if body:
                print("\n" + "\n".join("    " + line.strip() for line in body.splitlines()) + "\n")
        for o in e["options"]:
            choices = f" {{{', '.join(o['choices'])}}}" if o["choices"] else ""
            print(f"    {o['name']}: {o['type']}{choices} = {format_value(o['default'])}    {o['doc']}")
    if not args.name:
        print("\nSyntax: name{option=value,...} joined by commas, e.g. "
              "'fold-bn,prune-channels{ratio=0.3}'. 'mcc passes NAME' shows one pass in full.")
    return 0


def cmd_compress(args) -> int:
    from mcc.compress import as_pipeline
    from mcc.io import check_output_path
    from mcc.model_source import save_model

    pipeline = as_pipeline(args.pipeline)  # bad specs fail before any model is loaded
    check_output_path(args.output)
    _require_calibration(pipeline, args.calib)
    evaluator = _evaluator(args.eval)
    result = _compress_model(args, pipeline, evaluator)
    save_model(result.graph, args.output)
    print(result.report.table())
    print(f"\nwrote {args.output}")
    _write_json(result.report, args.json)
    return 0


def cmd_compile(args) -> int:
    from mcc.backends import tvm as mcc_tvm
    from mcc.backends.tvm.deployed import compiled_stats, compiled_table
    from mcc.compress import as_pipeline

    # Everything that can be checked without the model fails before any work is done.
    pipeline = as_pipeline(args.pipeline)
    target = mcc_tvm.resolve(args.target)
    target.export_options()  # an ARM target's cross compiler must be there
    output = _check_artifact_output(args.output)
    tuning = _tuning_database(args.tuning)
    _require_calibration(pipeline, args.calib)
    evaluator = _evaluator(args.eval)
    result = _compress_model(args, pipeline, evaluator)
    artifact = mcc_tvm.compile(result.graph, target, tuning=tuning,
                               requantize=args.requantize, allow_float=args.allow_float,
                               pipeline=str(pipeline), name=_model_name(args.model))
    compiled = compiled_stats(artifact, result.graph, evaluator, latency=not args.no_latency)
    artifact.save(output)
    print(result.report.table())
    print()
    print(compiled_table(artifact, compiled))
    print(f"\nwrote {output}")
    if args.json:
        data = json.loads(result.report.to_json())
        data["compiled"] = {**compiled, "target": artifact.metadata["target"],
                            "integer_units": artifact.metadata["integer_units"],
                            "float_ops": artifact.metadata["float_ops"],
                            "kernels": artifact.metadata["kernels"],
                            "tuning": artifact.metadata["tuning"], "artifact": str(output)}
        _write_json(data, args.json)
    return 0


def cmd_run(args) -> int:
    from mcc.backends.tvm.deployed import Batched
    from mcc.runtime import load

    if args.repeat < 0:
        raise MccError(f"--repeat must be 0 or more, got {args.repeat}")
    if args.output:
        from mcc.io import check_output_path

        check_output_path(args.output)
        if not args.output.endswith(".npz"):
            raise MccError(f"--output {args.output!r}: the outputs are written as .npz; name the "
                           "file OUT.npz")
    model = load(args.artifact)
    arrays, source = _run_inputs(model, args.input)
    outputs = Batched(model)(*arrays)
    meta = model.metadata
    target = meta.get("target", {})
    print(f"{args.artifact}: {meta.get('name') or 'model'} compiled for {target.get('name', '?')}"
          f" ({meta.get('integer_units', 0)} integer units, {len(meta.get('float_ops') or [])} "
          f"float ops), pipeline {meta.get('pipeline') or '-'}")
    print(f"inputs: {source}")
    print("outputs:")
    for spec, array in zip(model.outputs, outputs):
        print(f"  {spec['name']}: {array.dtype}{list(array.shape)}")
        if array.ndim == 2 and array.shape[1] > 1:
            labels = array.argmax(1)
            shown = " ".join(str(int(v)) for v in labels[:_SHOWN])
            more = f" ... ({len(labels)} rows)" if len(labels) > _SHOWN else ""
            print(f"    top-1: {shown}{more}")
    if args.output:
        from mcc.io import atomic_path

        with atomic_path(args.output) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{spec["name"]: a for spec, a in zip(model.outputs, outputs)})
        print(f"wrote {args.output}")
    if args.repeat:
        # Timed on one compiled batch: the first of the inputs (zeros if they are too few).
        first = [a[:s["shape"][0]] if a.ndim else a for a, s in zip(arrays, model.inputs)]
        if any(list(a.shape) != list(s["shape"]) for a, s in zip(first, model.inputs)):
            first = []
        stats = model.latency(*first, repeat=args.repeat)
        shape = model.inputs[0]["shape"]
        print(f"latency: median {stats['median'] * 1e3:.3f} ms, min {stats['min'] * 1e3:.3f} ms "
              f"({stats['runs']} runs{f' of batch {shape[0]}' if shape else ''})")
    return 0


def cmd_tune(args) -> int:
    from mcc.backends import tvm as mcc_tvm
    from mcc.backends.tvm import kernels, lower, tuning
    from mcc.compress import as_pipeline, compress
    from mcc.io import check_output_path

    pipeline = as_pipeline(args.pipeline)
    target = mcc_tvm.resolve(args.target)
    if target.kind == "cuda":
        raise MccError("mcc tune tunes x86 CPU kernels; CUDA kernels use mcc's GPU schedules: "
                       "compile for CUDA without tuning")
    if args.trials < 1:
        raise MccError(f"--trials must be at least 1, got {args.trials}")
    check_output_path(args.output)
    _require_calibration(pipeline, args.calib)
    farm = _farm(args)
    graph = _load(args)
    calibration = _calibration(args, graph)
    result = compress(graph, pipeline=pipeline, calibration_data=calibration,
                      num_batches=args.calib_batches, latency=False,
                      instruments=_progress(pipeline))
    lowered = lower.lower(result.graph, target, schedule=kernels.kernel,
                          requantize=args.requantize, allow_float=args.allow_float)
    summary = tuning.tune(lowered.workloads, target, args.output, trials=args.trials, farm=farm)
    labels = {repr(w): _kernel_label(w) for w in lowered.workloads}
    rows = [("kernel", "default", "tuned", "")]
    for entry in summary["kernels"]:
        default, tuned = entry["default_seconds"], entry["tuned_seconds"]
        verdict = "recorded" if entry["recorded"] else "default kept"
        rows.append((labels.get(entry["kernel"], entry["kernel"]), f"{default * 1e6:.3g} us",
                     "-" if tuned is None else f"{tuned * 1e6:.3g} us", verdict))
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    where = f" on the devices of {farm}" if farm else ""
    print(f"tuned {summary['tuned']} kernel(s) for {target.name}{where}, {summary['improved']} "
          f"faster than the default schedule; {summary['already']} already in the database")
    print(f"wrote {args.output}")
    return 0


def cmd_report(args) -> int:
    from mcc.report import measure

    graph = _load(args)
    evaluator = _evaluator(args.eval)
    stats = measure(graph, latency=not args.no_latency, evaluate=evaluator,
                    metric_name=getattr(evaluator, "metric_name", None))
    print(stats.table())
    _write_json(stats, args.json)
    return 0


def cmd_sensitivity(args) -> int:
    from mcc.pipeline import Pipeline

    spec = args.pass_name + (f"{{{args.options}}}" if args.options else "")
    (configured,) = Pipeline.parse(spec).passes
    evaluator = _evaluator(args.eval)
    graph = _load(args)
    if args.pass_name == "quantize":
        from mcc.quant import sensitivity

        if getattr(configured, "activations", None) not in (None, "none"):
            _require_calibration(Pipeline([configured]), args.calib)
        data = _calibration(args, graph) or [graph.example_inputs]
        rows = [{"layer": layer, "drop": drop} for layer, drop in
                sensitivity(graph, evaluator, data, num_batches=args.calib_batches,
                            **configured.non_default_options())]
        header = ("layer", "drop")
    else:
        from mcc.analysis import prune_sensitivity

        ratios = tuple(_floats(args.ratios, "--ratios"))
        rows = prune_sensitivity(graph, evaluator, ratios=ratios)
        header = tuple(rows[0].keys()) if rows else ("group",)
    table = [tuple(str(h) for h in header)] + [
        tuple(f"{r[h]:.4g}" if isinstance(r[h], float) else str(r[h]) for h in header) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if args.json:
        from mcc.io import atomic_path

        with atomic_path(args.json) as tmp, open(tmp, "w") as f:
            json.dump({"pass": spec, "eval": args.eval, "rows": rows}, f, indent=2, default=str)
        print(f"wrote {args.json}")
    return 0


def cmd_demo(args) -> int:
    from mcc.demo import run_demo

    report = run_demo()
    _write_json(report, args.json)
    return 0


# ---- helpers -----------------------------------------------------------------------------
def _compress_model(args, pipeline, evaluator):
    """Load MODEL and run ``pipeline`` on it, calibrating on --calib and evaluating with
    ``evaluator``: the shared first half of ``mcc compress`` and ``mcc compile``."""
    from mcc.compress import compress

    graph = _load(args)
    return compress(graph, pipeline=pipeline, calibration_data=_calibration(args, graph),
                    num_batches=args.calib_batches, evaluate=evaluator,
                    metric_name=getattr(evaluator, "metric_name", None),
                    latency=not args.no_latency, instruments=_progress(pipeline))


def _load(args):
    from mcc.model_source import load_model, parse_shape

    shape = parse_shape(args.input_shape) if args.input_shape else None
    return load_model(args.model, input_shape=shape, unsafe_load=args.unsafe_load,
                      leaf_modules=args.leaf)


def _require_calibration(pipeline, calib) -> None:
    """Refuse to quantize activations without data: calibrating on noise gives wrong scales."""
    quantizes = [p for p in pipeline.passes if p.name == "quantize"
                 and getattr(p, "activations", None) not in (None, "none")]
    if quantizes and not calib:
        raise MccError("the pipeline quantizes activations, which needs calibration data: pass "
                       "--calib DATA (a .npy/.npz of real inputs or a directory of images); "
                       "calibrating on random noise would give wrong scales. For weight-only "
                       "quantization use quantize{activations=none}")


def _calibration(args, graph):
    if not args.calib:
        return None
    from mcc.calibration_data import read_calibration_data

    return read_calibration_data(args.calib, tuple(graph.example_inputs[0].shape),
                                 mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std"))


def _floats(text: str | None, flag: str):
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise MccError(f"{flag} {text!r} is not a comma-separated list of numbers") from None


def _evaluator(spec: str | None):
    if not spec:
        return None
    if ":" in spec:  # the user's own package.module:function
        from mcc.model_source import load_callable

        return load_callable(spec)
    from mcc.zoo import resolve_evaluator

    return resolve_evaluator(spec)


_SHOWN = 16  # top-1 labels mcc run prints


def _check_artifact_output(path: str):
    """The artifact directory ``path``, checked before any work: its parent exists, and it is
    new, empty or an earlier artifact (anything else would be replaced)."""
    from pathlib import Path

    from mcc.errors import ExportError
    from mcc.runtime import METADATA

    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"cannot write {path!r}: directory {str(parent)!r} does not exist; "
                          "create it first or choose another output path")
    if out.exists() and not (out / METADATA).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"cannot write the artifact to {path!r}: it exists and is not an mcc "
                          "artifact; choose a new directory name")
    return out


def _farm(args):
    """The RPC farm of ``mcc tune --rpc HOST:PORT --key KEY``, checked before the model is
    compressed so that a wrong address or key fails in seconds; None without --rpc."""
    from mcc.backends.tvm.rpc import Farm
    from mcc.errors import BackendError

    if args.rpc is None and args.key is None:
        return None
    if args.rpc is None:
        raise BackendError("--key names devices registered with an RPC tracker; give the tracker "
                           "with --rpc HOST:PORT as well")
    farm = Farm.parse(args.rpc, args.key, args.rpc_timeout)
    farm.devices()
    return farm


def _tuning_database(path: str | None) -> str | None | bool:
    """--tuning as compile takes it: None (mcc's shipped database), False ('none') or a path
    that must exist."""
    from pathlib import Path

    from mcc.errors import BackendError

    if path == "none":
        return False
    if path is not None and not Path(path).is_file():
        raise BackendError(f"tuning database {path!r} does not exist; create one with mcc tune "
                           "MODEL -p PIPELINE -o PATH, or compile without --tuning")
    return path


def _model_name(spec: str) -> str:
    from pathlib import Path

    return Path(spec).stem if Path(spec).suffix in (".onnx", ".pt2", ".pt") else spec


def _run_inputs(runtime, path: str | None) -> tuple[list, str]:
    """The arrays ``mcc run`` feeds ``runtime``, and a description of where they came from."""
    from pathlib import Path

    from mcc.errors import BackendError

    specs = runtime.inputs
    names = ", ".join(s["name"] for s in specs)
    if path is None:
        rng = np.random.default_rng(0)
        arrays = [rng.standard_normal(s["shape"]).astype(s["dtype"])
                  if np.dtype(s["dtype"]).kind == "f" else np.zeros(s["shape"], s["dtype"])
                  for s in specs]
        return arrays, "random normal (seed 0); pass --input FILE for real data"
    file = Path(path)
    if not file.is_file():
        raise BackendError(f"input file {path!r} does not exist")
    try:
        if file.suffix == ".npy":
            if len(specs) != 1:
                raise BackendError(f"the model takes {len(specs)} inputs ({names}): give an .npz "
                                   "with one array per input name")
            arrays = [np.load(file, allow_pickle=False)]
        elif file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                if len(specs) == 1 and len(archive.files) == 1:
                    arrays = [archive[archive.files[0]]]
                else:
                    missing = [s["name"] for s in specs if s["name"] not in archive.files]
                    if missing:
                        raise BackendError(f"{path!r} lacks arrays for the inputs {missing} (it "
                                           f"holds {archive.files}); the model takes {names}")
                    arrays = [archive[s["name"]] for s in specs]
        else:
            raise BackendError(f"input file {path!r} must be .npy or .npz")
    except (OSError, ValueError) as exc:
        raise BackendError(f"cannot read {path!r}: {exc}") from None
    return arrays, f"{path} ({', '.join(f'{a.dtype}{list(a.shape)}' for a in arrays)})"


def _kernel_label(work) -> str:
    """A kernel workload in a few words (mcc tune's table)."""
    kind = type(work).__name__
    dtype = getattr(work, "dtype", "")
    if kind == "Dense":
        return f"dense {work.m}x{work.k} -> {work.n} {dtype}"
    if kind in ("Conv2d", "Depthwise2d"):
        channels = (f"{work.in_channels}->{work.out_channels}" if kind == "Conv2d"
                    else f"{work.channels} depthwise")
        return (f"conv {channels} {work.height}x{work.width} k{work.kernel[0]}x{work.kernel[1]} "
                f"s{work.stride[0]} {dtype}")
    return kind


def _progress(pipeline):
    """A tqdm bar over the pipeline's passes on a TTY; nothing otherwise."""
    if not sys.stderr.isatty():
        return ()
    from tqdm import tqdm

    bar = tqdm(total=len(pipeline), desc="passes", unit="pass", leave=False)

    def instrument(when, p, graph, record):
        if when == "before":
            bar.set_postfix_str(p.name)
        else:
            bar.update(1)
            if bar.n == bar.total:
                bar.close()

    return (instrument,)


def _write_json(obj, path: str | None) -> None:
    if not path:
        return
    from mcc.io import atomic_path

    text = json.dumps(obj, indent=2) if isinstance(obj, dict) else obj.to_json()
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
