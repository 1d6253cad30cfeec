"""Build a lowered Relax module into a TVM executable, with a sane schedule for every function.

mcc's kernels arrive scheduled (by hand, or from a tuning record). Everything else the lowering
emitted (layout changes, the odd float op, dequantize chains) goes through Relax's legalization
and operator fusion, which produce unscheduled PrimFuncs: serial scalar loops. :func:`schedule_default`
gives those the schedule TOPI's injective/reduction schedules used to: producers inlined, the
outer spatial loops fused and run in parallel, the innermost spatial loop vectorized when it is
contiguous, reductions kept serial inside.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline

from mcc.backends.tvm.target import CpuTarget

#: Spatial iterations below which a function runs on one thread (thread start-up costs more).
_PARALLEL_MIN = 4096


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def schedule_default(func: tirx.PrimFunc, lanes: int) -> tirx.PrimFunc:
    """Parallel outer loops, vectorized inner loop, for an unscheduled PrimFunc; the function
    unchanged when its structure is not understood (it then runs serially, still correct)."""
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return func
    infos = try_inline(sch, infos)
    for info in infos:
        try:
            _schedule_block(sch, info, lanes)
        except s_tir.ScheduleError:
            continue  # what was applied so far is valid; the rest of this block stays serial
    return sch.mod["main"]


def _schedule_block(sch: s_tir.Schedule, info, lanes: int) -> None:
    block = info.block_rv
    loops = sch.get_loops(block)
    kinds = info.dom_kind()
    if len(loops) != len(kinds) or not loops:
        return
    spatial = [l for l, k in zip(loops, kinds) if k == "S"]
    reduce = [l for l, k in zip(loops, kinds) if k == "R"]
    if len(spatial) + len(reduce) != len(loops) or not spatial:
        return
    extents = [_extent(sch, l) for l in spatial]
    if any(e is None for e in extents):
        return
    inner = spatial[-1]
    vector = not reduce
    if reduce and kinds[-1] == "R" and extents[-1] in (4, 8, 16, 32, 64):
        # NCHWc: the contiguous channel loop goes inside the reduction and is vectorized
        sch.reorder(*spatial[:-1], *reduce, inner)
        vector = True
    total = math.prod(extents)
    outer = spatial[:-1]
    if outer and total >= _PARALLEL_MIN:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    elif not outer and not reduce and total >= _PARALLEL_MIN and total % lanes == 0:
        par, inner = sch.split(inner, [None, lanes])
        sch.parallel(par)
        extents[-1] = lanes
    if vector and extents[-1] > 1:
        if extents[-1] > 64 and extents[-1] % lanes == 0:
            _, inner = sch.split(inner, [None, lanes])
        sch.vectorize(inner)
        if reduce:
            init = sch.decompose_reduction(block, reduce[0])
            sch.vectorize(sch.get_loops(init)[-1])


@tvm.transform.module_pass(opt_level=0, name="mcc.ScheduleDefault")
class ScheduleDefault:
    """Apply :func:`schedule_default` to every PrimFunc not marked ``tir.is_scheduled``."""

    def __init__(self, lanes: int):
        self.lanes = lanes

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and not _scheduled(func):
                updates[gvar] = schedule_default(func, self.lanes).with_attr("tir.is_scheduled", True)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod


def _scheduled(func: tirx.PrimFunc) -> bool:
    attrs = func.attrs
    return attrs is not None and any(
        k in attrs and bool(attrs[k]) for k in ("tir.is_scheduled", "tirx.is_scheduled"))


def relax_pipeline(target: CpuTarget) -> tvm.transform.Pass:
    """Relax's CPU pipeline with :class:`ScheduleDefault` after operator fusion."""
    from tvm.relax.backend import cpu_generic

    tvm_target = target.tvm()

    @tvm.transform.module_pass(opt_level=0, name="mcc.RelaxPipeline")
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with tvm_target:
            passes = [
                relax.transform.DeadCodeElimination(),
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.DeadCodeElimination(),
                ScheduleDefault(target.lanes32),
                *cpu_generic.pipeline.dataflow_lower_passes(tvm_target),
                *cpu_generic.finalize_passes(tvm_target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def build(module: tvm.IRModule, target: CpuTarget):
    """Compile a lowered module: a ``tvm.runtime.Executable`` holding the Relax VM program."""
    return tvm.compile(module, target.tvm(), relax_pipeline=relax_pipeline(target))
