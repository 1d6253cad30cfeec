"""Tuning databases: meta_schedule searches a kernel's schedule once, mcc reuses it ever after.

A database is one JSON-lines file; each line is a record::

    {"mcc_tuning": 1, "target": "znver4", "workload": "<structural hash>", "kernel": "Conv2d(...)",
     "trace": <meta_schedule trace JSON>, "seconds": 1.2e-4, "default_seconds": 1.5e-4,
     "tvm": "0.27.0.post1"}

keyed by ``(target, workload)``: the target's LLVM CPU and the structural hash of the kernel's
unscheduled PrimFunc (:func:`mcc.backends.tvm.kernels.workload_func`), so a record applies only
to the exact computation it was tuned on, on the CPU it was tuned for. Every tuned kernel gets
a record: the searched schedule's trace when it beat mcc's hand-written one
(``default_seconds``), or ``"trace": null`` when the hand-written schedule measured fastest, so
that the kernel is not searched again and the database says what the device measured. A kernel
without a record, or with a null trace, keeps the hand-written schedule.

Reading never fails on a bad line: a line that is not JSON, lacks a field, comes from another
TVM release or whose trace no longer applies is skipped with a warning naming the file and the
line; records for other targets are counted as foreign and skipped (one warning per target).
:func:`merge` combines databases (the fastest record per key wins); :func:`tune` adds records.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mcc.backends.tvm import kernels as K
from mcc.backends.tvm.rpc import Farm, export
from mcc.backends.tvm.target import CpuTarget, host_arch
from mcc.errors import BackendError, TargetError
from mcc.io import default_mode

VERSION = 1
#: How much faster than the hand-written schedule a searched one must measure to replace it:
#: two timings of one kernel a minute apart differ by a few percent on a shared machine, and a
#: "win" within that is a coin toss that would swap a known schedule for an unknown one.
MARGIN = 0.05
#: Where mcc's own databases live, one per CPU (``<target.key()>.jsonl``): tuned by
#: scripts/tune_shipped_databases.py for the demo and benchmark models, applied by compile when
#: no database is given.
SHIPPED = Path(__file__).resolve().parent.parent.parent / "data" / "tuning"
#: Kernels worth tuning: the ones with a reduction (elementwise kernels are memory-bound).
TUNABLE = (K.Conv2d, K.Depthwise2d, K.Dense)


class TuningWarning(UserWarning):
    """A record of a tuning database was skipped."""


def workload_key(work) -> str:
    """The structural hash of a kernel's unscheduled PrimFunc, as text, with the quantization
    constants that are only immediates in it (output zero point and code range, the padding's
    fill value) set to fixed values: they depend on the calibration data, not on the loops a
    schedule transforms, so one record serves every calibration of a model (and every model
    sharing the layer shape)."""
    import tvm_ffi

    return str(tvm_ffi.structural_hash(K.workload_func(_canonical(work))))


def _canonical(work):
    changes = {}
    if work.epilogue.kind in ("fixed", "scale"):
        changes["epilogue"] = replace(work.epilogue, zero_point=0, qmin=0, qmax=255)
    if isinstance(getattr(work, "pad_value", None), (int, float)):
        changes["pad_value"] = type(work.pad_value)(0)
    return replace(work, **changes)


@dataclass(frozen=True)
class Record:
    target: str
    workload: str
    kernel: str
    trace: object
    seconds: float
    default_seconds: float
    tvm: str

    def to_json(self) -> dict:
        return {"mcc_tuning": VERSION, "target": self.target, "workload": self.workload,
                "kernel": self.kernel, "trace": self.trace, "seconds": self.seconds,
                "default_seconds": self.default_seconds, "tvm": self.tvm}


def _parse(line: str) -> Record:
    obj = json.loads(line)
    if not isinstance(obj, dict) or obj.get("mcc_tuning") != VERSION:
        raise ValueError("not an mcc tuning record")
    return Record(str(obj["target"]), str(obj["workload"]), str(obj["kernel"]), obj["trace"],
                  float(obj["seconds"]), float(obj["default_seconds"]), str(obj["tvm"]))


class Database:
    """The records of one file for one target (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, target: CpuTarget | None = None):
        import tvm

        self.path = Path(path)
        self.target = target
        self.records: dict[tuple[str, str], Record] = {}
        self.skipped = 0
        self.foreign: dict[str, int] = {}
        if not self.path.exists():
            return
        if not self.path.is_file():
            raise BackendError(f"tuning database {str(self.path)!r} is not a file")
        release = tvm.__version__.split(".")[:2]
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = _parse(line)
            except (ValueError, KeyError, TypeError) as e:
                self._skip(f"line {number} is corrupt ({type(e).__name__}: {e})")
                continue
            if record.tvm.split(".")[:2] != release:
                self._skip(f"line {number} was tuned with TVM {record.tvm}, this is {tvm.__version__}")
                continue
            if target is not None and record.target != target.key():
                self.foreign[record.target] = self.foreign.get(record.target, 0) + 1
                continue
            self._keep(record)
        for other, count in self.foreign.items():
            warnings.warn(f"tuning database {str(self.path)!r}: skipped {count} record(s) tuned for "
                          f"{other}, not {target.key()} (tune for this target with mcc tune --target "
                          f"{target.name})", TuningWarning, stacklevel=3)

    def _skip(self, why: str) -> None:
        self.skipped += 1
        warnings.warn(f"tuning database {str(self.path)!r}: {why}; skipped", TuningWarning, stacklevel=4)

    def _keep(self, record: Record) -> None:
        key = (record.target, record.workload)
        old = self.records.get(key)
        if old is None or record.seconds < old.seconds:
            self.records[key] = record

    def get(self, work, target: CpuTarget) -> Record | None:
        return self.records.get((target.key(), workload_key(work)))

    def add(self, record: Record) -> None:
        self._keep(record)

    def digest(self) -> str:
        """A hash of the records (order-independent): what an artifact records."""
        lines = sorted(json.dumps(r.to_json(), sort_keys=True) for r in self.records.values())
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def save(self, path: str | os.PathLike | None = None, *, merge: bool = True) -> Path:
        """Write all records (atomically), keeping the records already in the file (other
        targets', another process's) unless ``merge`` is False: then the file holds exactly
        these records (how records are removed)."""
        path = Path(path or self.path)
        keep = {}
        if merge and path.exists():
            for record in Database(path).records.values():
                keep[(record.target, record.workload)] = record
        for key, record in self.records.items():
            if key not in keep or record.seconds < keep[key].seconds:
                keep[key] = record
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
        os.fchmod(fd, default_mode())  # mkstemp's 0600 would hide the database from other users
        try:
            with os.fdopen(fd, "w") as f:
                for key in sorted(keep):
                    f.write(json.dumps(keep[key].to_json(), sort_keys=True) + "\n")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path


def merge(paths: list[str | os.PathLike], output: str | os.PathLike) -> int:
    """Merge databases into ``output`` (the fastest record per target and workload wins);
    returns the number of records written."""
    merged = Database(output) if Path(output).exists() else None
    records = dict(merged.records) if merged else {}
    for path in paths:
        if not Path(path).is_file():
            raise BackendError(f"tuning database {str(path)!r} does not exist")
        for key, record in Database(path).records.items():
            if key not in records or record.seconds < records[key].seconds:
                records[key] = record
    out = Database(output)
    out.records = records
    out.save(output)
    return len(records)


def shipped(target: CpuTarget) -> Path | None:
    """mcc's own database for ``target``'s CPU (:data:`SHIPPED`), if it ships one."""
    path = SHIPPED / f"{target.key()}.jsonl"
    return path if path.is_file() else None


class Scheduler:
    """Gives the lowering each kernel's schedule: the database's record for this target when
    there is one, mcc's hand-written schedule otherwise. ``database``: a path; None for the
    database mcc ships for this CPU (when it has one, as TVM's TopHub served pre-tuned
    schedules); False for the hand-written schedules only."""

    def __init__(self, target: CpuTarget, database: str | os.PathLike | None | bool):
        self.target = target
        self.shipped = database is None
        if database is None:
            database = shipped(target)
        elif database is False:
            database = None
        self.path = database
        self.db = None
        if database is not None:
            if not Path(database).is_file():
                raise BackendError(f"tuning database {str(database)!r} does not exist; create one "
                                   "with mcc tune MODEL -p PIPELINE -o PATH, or compile without "
                                   "--tuning")
            self.db = Database(database, target)
        self.applied = 0  # kernels with a record: a searched schedule or the hand-written one
        self.searched = 0  # kernels whose schedule came from a record's trace
        self.failed = 0

    def schedule(self, work):
        if self.db is not None and isinstance(work, TUNABLE):
            record = self.db.get(work, self.target)
            if record is not None and record.trace is None:  # tuning kept the hand-written one
                self.applied += 1
                return K.kernel(work)
            if record is not None:
                func = apply_trace(work, record.trace)
                if func is not None:
                    self.applied += 1
                    self.searched += 1
                    return func
                self.failed += 1
                warnings.warn(f"tuning database {str(self.path)!r}: the record for {record.kernel} "
                              "no longer applies; using the default schedule", TuningWarning,
                              stacklevel=2)
        return K.kernel(work)

    def summary(self) -> dict | None:
        if self.db is None:
            return None
        return {"database": str(self.path), "shipped": self.shipped, "hash": self.db.digest(),
                "records": len(self.db.records), "applied": self.applied,
                "searched": self.searched, "failed": self.failed}


def apply_trace(work, trace_json):
    """The kernel scheduled by a recorded trace, or None when the trace does not apply."""
    from tvm import s_tir

    from mcc.backends.tvm import intrinsics  # noqa: F401  (registers the intrinsics traces name)

    sch = s_tir.Schedule(K.workload_func(work))
    try:
        s_tir.Trace.apply_json_to_schedule(_decode(trace_json), sch)
    except Exception:  # noqa: BLE001  (any TVM failure means: the record is stale)
        return None
    return sch.mod["main"].with_attr({"tir.noalias": True, "tir.is_scheduled": True})


def _encode(obj):
    """A trace's JSON-style object as plain JSON: TVM integer and float immediates become
    ``{"int": value, "dtype": ...}`` / ``{"float": ...}`` so they come back with their dtype."""
    from tvm.tirx import FloatImm, IntImm

    if isinstance(obj, IntImm):
        return {"int": int(obj.value), "dtype": str(obj.ty)}
    if isinstance(obj, FloatImm):
        return {"float": float(obj.value), "dtype": str(obj.ty)}
    if isinstance(obj, (list, tuple)):
        return [_encode(o) for o in obj]
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    return obj


def _decode(obj):
    from tvm.tirx import FloatImm, IntImm

    if isinstance(obj, dict) and set(obj) == {"int", "dtype"}:
        return IntImm(obj["dtype"], obj["int"])
    if isinstance(obj, dict) and set(obj) == {"float", "dtype"}:
        return FloatImm(obj["dtype"], obj["float"])
    if isinstance(obj, list):
        return [_decode(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _decode(v) for k, v in obj.items()}
    return obj


# ---- tuning ---------------------------------------------------------------------------------
def _space(work):
    """meta_schedule's search space for one kernel: its LLVM rules, plus multi-level tiling
    around the tensor intrinsic the hand-written kernel uses (its accumulators in memory rather
    than registers) for int8 kernels that have one: ``vpdpbusd`` (VNNI), ``vpmaddwd`` or
    ``vpmaddubsw`` (AVX2/AVX-512 without VNNI), ``sdot`` (aarch64 dotprod). Without it the
    search only finds LLVM-vectorised int32 multiply-adds, several times slower than any of
    these, and never beats the hand-written kernel."""
    from tvm.s_tir import meta_schedule as ms

    intrin = K.search_intrinsic(work)
    if intrin is None:  # float kernels, depthwise, plain NEON int8
        return ms.space_generator.PostOrderApply(sch_rules="llvm", postprocs="llvm",
                                                 mutator_probs="llvm")
    reuse = ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global")
    rules = [
        ms.schedule_rule.ApplyCustomRule(),
        ms.schedule_rule.InlineConstantScalars(),
        ms.schedule_rule.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True,
                                    disallow_if_then_else=True, require_injective=True,
                                    require_ordered=True, disallow_op=["tirx.exp"]),
        ms.schedule_rule.AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
        ms.schedule_rule.MultiLevelTilingWithIntrin(intrin, structure="SSRSRS",
                                                    max_innermost_factor=64, reuse_write=reuse),
        ms.schedule_rule.MultiLevelTiling(structure="SSRSRS", max_innermost_factor=64,
                                          reuse_write=reuse),
        ms.schedule_rule.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64,
                                                    unroll_max_steps=[0, 16, 64, 512],
                                                    unroll_explicit=True),
        ms.schedule_rule.RandomComputeLocation(),
    ]
    postprocs = [
        ms.postproc.DisallowDynamicLoop(),
        ms.postproc.RewriteParallelVectorizeUnroll(),
        ms.postproc.RewriteReductionBlock(),
        ms.postproc.RewriteTensorize(vectorize_init_loop=True),
    ]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs,
                                             mutator_probs="llvm")


def _inputs(work) -> list[np.ndarray]:
    """Random arguments for a kernel: floats in [-1, 1], integers in [-100, 100)."""
    rng = np.random.default_rng(0)
    args = []
    for param in K.workload_func(work).params:
        shape = [int(d) for d in param.ty.shape]
        dtype = str(param.ty.dtype)
        if dtype.startswith("float"):
            data = rng.uniform(-1, 1, shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            data = rng.integers(max(info.min, -100), min(info.max, 100), shape).astype(dtype)
        args.append(data)
    return args


def _seconds(funcs, work, target: CpuTarget, farm: Farm | None = None, repeat: int = 10,
             rounds: int = 2) -> list[float]:
    """The fastest run of each scheduled kernel of ``funcs`` on random data, here or, with a
    ``farm``, on one of its devices: ``rounds`` times ``repeat`` runs each, the kernels taking
    turns, so that a change in the machine's load between them (the search took minutes)
    does not decide which one is faster."""
    import tvm

    libs = [tvm.compile(tvm.IRModule({"main": f}), target.tvm()) for f in funcs]
    inputs = _inputs(work)
    if farm is None:
        args = [tvm.runtime.tensor(a) for a in inputs]
        timers = [lib.jit().time_evaluator("main", tvm.cpu(), number=1, repeat=repeat)
                  for lib in libs]
        measure = [lambda timer=timer: float(min(timer(*args).results)) for timer in timers]
    else:
        measure = [lambda lib=lib: farm.seconds(lib, inputs, target.export_options(), repeat)
                   for lib in libs]
    best = [float("inf")] * len(funcs)
    for _ in range(rounds):
        for i, run in enumerate(measure):
            best[i] = min(best[i], run())
    return best


def build_candidate(mod, target, _params=None):
    """meta_schedule's default build of a candidate, without its ``import
    tvm.s_tir.tensor_intrin``: that registers every tensor intrinsic TVM has (CUDA, ROCm,
    Hexagon...) and took 120 s on a loaded 2-core machine, in every build worker, for every batch
    of candidates. A candidate arrives tensorized (the intrinsics' bodies inlined), so its build
    needs none of them."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _cost_model() -> str:
    """meta_schedule's default cost model is XGBoost, which is not a dependency of mcc (nor of
    TVM's wheel): without it the search fails after its first batch of measurements. Use it
    when it is installed; otherwise rank candidates at random (with the few dozen trials per
    kernel mcc tunes with, the search is close to random sampling either way)."""
    import importlib.util

    return "xgb" if importlib.util.find_spec("xgboost") is not None else "random"


def tune(workloads, target: CpuTarget, database: str | os.PathLike, *, trials: int = 32,
         progress: bool | None = None, farm: Farm | None = None) -> dict:
    """Tune each tunable kernel of ``workloads`` with meta_schedule (``trials`` candidates
    each) and record the result in ``database``: the searched schedule when it beats the
    hand-written one by :data:`MARGIN`, else a record that keeps the hand-written one.
    Kernels that already have a record are skipped. Returns counts and timings per kernel.

    Candidates are built here and measured on this machine or, with a ``farm``, on its devices
    (as many candidates at a time as it has devices); the hand-written and the tuned schedule
    are then timed where the candidates were, taking turns. The database is saved after each kernel, only with
    records whose measurements all succeeded: a failure (an unreachable tracker, no free
    device) raises and leaves the records of the kernels finished before it."""
    import tvm
    from tqdm import tqdm
    from tvm.s_tir import meta_schedule as ms

    if target.arch != host_arch() and farm is None:
        raise TargetError(f"tuning measures every candidate on this machine ({host_arch()}), "
                          f"which cannot run {target.arch} code for {target.name}: tune on an "
                          f"{target.arch} machine, or on a farm of them with --rpc")
    devices = 0
    if farm is not None:  # fail before anything is built: no device registered, or none free
        devices = farm.devices()
        farm.wait_for_a_device()
    db = Database(database, target)
    todo, seen = [], set()
    for work in workloads:  # once per record key: layers differing only in zero points share one
        if not isinstance(work, TUNABLE):
            continue
        key = workload_key(work)
        if key in seen:
            continue
        seen.add(key)
        if (target.key(), key) not in db.records:
            todo.append((key, work))
    results = []
    show = sys.stderr.isatty() if progress is None else progress
    for key, work in tqdm(todo, desc="tuning kernels", unit="kernel", disable=not show):
        with tempfile.TemporaryDirectory() as tmp:
            # Generous timeouts: on a loaded 2-core machine a build worker's start-up alone can
            # exceed meta_schedule's default 30 s, and every candidate then "fails to build".
            evaluator = ms.runner.EvaluatorConfig(number=5, repeat=1, min_repeat_ms=10)
            # For a farm, a shared library linked here: the devices need no compiler.
            linked = functools.partial(export, **target.export_options())
            builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=600, f_build=build_candidate,
                                              f_export=None if farm is None else linked)
            runner = (ms.runner.LocalRunner(timeout_sec=120, evaluator_config=evaluator)
                      if farm is None else farm.runner(evaluator, devices))
            ms_db = ms.tune_tir(K.workload_func(work), target.tvm(), tmp, max_trials_global=trials,
                                num_trials_per_iter=min(trials, 16), space=_space(work),
                                builder=builder, runner=runner, cost_model=_cost_model(),
                                num_tuning_cores=target.num_cores)
            sch = ms.tir_integration.compile_tir(ms_db, K.workload_func(work), target.tvm())
        if sch is None:  # no candidate built and ran
            (default,), tuned = _seconds([K.kernel(work)], work, target, farm), None
        else:
            func = sch.mod["main"].with_attr({"tir.noalias": True, "tir.is_scheduled": True})
            default, tuned = _seconds([K.kernel(work), func], work, target, farm)
        entry = {"kernel": repr(work), "default_seconds": default, "tuned_seconds": tuned}
        trace, seconds = None, default  # unless the search beats the hand-written schedule
        if tuned is not None and tuned < default * (1 - MARGIN):
            trace, seconds = _encode(sch.trace.as_json()), tuned
        entry["recorded"] = trace is not None
        db.add(Record(target.key(), key, repr(work), trace, seconds, default, tvm.__version__))
        results.append(entry)
        db.save(database)
    db.save(database)
    improved = sum(1 for r in results if r["recorded"])
    return {"tuned": len(results), "improved": improved, "already": len(seen) - len(todo),
            "kernels": results, "database": str(database)}
