"""GPU schedules for mcc's kernels: the computations of :mod:`mcc.backends.tvm.kernels`
(same layouts, same packed weights, same epilogues) mapped onto CUDA thread blocks.

* **Conv2d / Dense** (float32 and int8): a thread block computes 16 output channels (one
  channel block, ``threadIdx.x``) × a few output pixels or rows (``threadIdx.y``), one output
  per thread, accumulated in a register. The reduction walks one input-channel block at a
  time (Dense: a chunk of the features); for each step the block's threads load the input
  window and the weights it needs into shared memory together, then every thread reduces from
  there. int8 reduces groups of 4 bytes with the ``dp4a.u32.s32`` instruction (uint8
  activations × int8 weights, summed into int32) through a tensor intrinsic (:data:`DP4A`)
  that reads its operands from shared memory: the weights are already packed with 4 input bytes
  contiguous (:meth:`~mcc.backends.tvm.cuda.CudaTarget.kernel_fields` selects that packing).
  The epilogue (bias, requantization, clamp, residual) runs in the same thread.
* **Depthwise conv and pooling**: one thread per output element, the window reduced in a
  register and the padding read in place (these kernels are memory-bound; there is no channel
  reduction for ``dp4a``).
* **Quantize, dequantize, requantizing add**: one thread per element, consecutive threads on
  consecutive elements (coalesced).

The Relax ops around the kernels get dlight's default GPU schedules in
:func:`mcc.backends.tvm.cuda.build`.
"""

from __future__ import annotations

import functools

import tvm
from tvm.s_tir import Schedule

from mcc.backends.tvm import kernels as K

#: Threads per block of the one-thread-per-element kernels.
THREADS = 128
#: The tensor intrinsic for one ``dp4a``: 4 uint8 × 4 int8 summed into an int32 register.
DP4A = "mcc.cuda.dp4a_u8s8s32"

# TVM's own ``dp4a_u8s8s32`` (tvm/s_tir/tensor_intrin/dot_product_common.py) has the right
# description but not a usable implementation: it calls ``__dp4a(unsigned, int, int)``, an
# overload TVM's CUDA header defines only outside NVRTC, and NVRTC is what compiles CUDA code
# (at build time here, and when the library is loaded on the GPU), so ptxas fails with an
# unresolved ``__dp4a``. This one emits the PTX instruction ``dp4a.u32.s32`` itself through
# TVM's ``T.ptx`` dialect. (It is parsed from text, and TVM's module is not imported: that
# imports the whole tensor_intrin package, minutes of ``@T.prim_func`` registrations here.)
_DP4A = """
@T.prim_func(s_tir=True)
def f(A: T.Buffer((4,), "uint8", offset_factor=1, align=4, scope="shared"),
      B: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
      C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
    with T.sblock("root"):
        T.reads(C[0], A[0:4], B[0:4])
        T.writes(C[0])
{body}"""

_DP4A_DESC = """        for i in range(0, 4):
            with T.sblock("update"):
                vi = T.axis.remap("R", [i])
                C[0] = C[0] + T.cast(A[vi], "int32") * T.cast(B[vi], "int32")
"""

_DP4A_IMPL = """        T.ptx.dp4a.u32.s32(C[0],
                           T.reinterpret(A.vload([0], "uint8x4"), dtype="uint32"),
                           T.reinterpret(B.vload([0], "int8x4"), dtype="int32"), C[0])
"""


@functools.lru_cache(maxsize=None)
def _register_dp4a() -> None:
    from tvm.s_tir import TensorIntrin

    desc, impl = (tvm.script.from_source(_DP4A.format(body=b)) for b in (_DP4A_DESC, _DP4A_IMPL))
    TensorIntrin.register(DP4A, desc, impl, override=True)


def _has(sch: Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # noqa: BLE001  (TVM raises a generic error for a missing block)
        return False
    return True


def _read_index(sch: Schedule, block, buffer: str) -> int:
    """The position of ``buffer`` among the reads of ``block`` (what cache_read takes)."""
    names = [r.source.name for r in sch.get(block).reads]
    return names.index(buffer)


def _stage_shared(sch: Schedule, block, buffer: str, at, threads: tuple[int, int]) -> None:
    """Copy the part of ``buffer`` that ``block`` reads under loop ``at`` into shared memory,
    each thread of the block loading every (ty·tx)-th element."""
    cache = sch.cache_read(block, _read_index(sch, block, buffer), "shared")
    sch.compute_at(cache, at)
    loops = sch.get_loops(cache)
    below = [sch.get(l).same_as(sch.get(at)) for l in loops].index(True) + 1
    loops = loops[below:]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    _, ty, tx = sch.split(fused, [None, *threads])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")


def _one_thread_per_element(sch: Schedule, block) -> object:
    """All loops of ``block`` fused and cut into blocks of :data:`THREADS` threads; returns the
    thread loop."""
    loops = sch.get_loops(block)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    bx, tx = sch.split(fused, [None, THREADS])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return tx


def schedule_conv2d(w: K.Conv2d, func: tvm.tirx.PrimFunc) -> Schedule:
    """Block: one output row's ``px`` pixels × 16 channels; reduction per input block."""
    sch = Schedule(func)
    conv, out = sch.get_sblock("conv"), sch.get_sblock("out")
    n, c, y, x, b, *reduction = sch.get_loops(conv)
    px = w.register_tile[0]  # divides the computed width (kernels._tile_width)
    xo, xi = sch.split(x, [None, px])
    sch.reorder(n, c, y, xo, xi, b, *reduction)
    sch.bind(sch.fuse(n, c, y, xo), "blockIdx.x")
    return _finish(sch, w, conv, out, xi, b, reduction, px)


def schedule_dense(w: K.Dense, func: tvm.tirx.PrimFunc) -> Schedule:
    """Block: ``rows`` × ``tile`` blocks of 16 columns; reduction in chunks of the features."""
    sch = Schedule(func)
    conv, out = sch.get_sblock("conv"), sch.get_sblock("out")
    i, j, b, first, *rest = sch.get_loops(conv)
    rows = K._largest_divisor(w.m, 8)
    tile = K._largest_divisor(w.n // K.BLOCK, max(1, 8 // rows))
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, tile])
    chunk = K._largest_divisor(int(sch.get(first).extent), 16 if rest else 64)
    ko, ki = sch.split(first, [None, chunk])
    sch.reorder(io, jo, ii, ji, b, ko, ki, *rest)
    sch.bind(sch.fuse(io, jo), "blockIdx.x")
    return _finish(sch, w, conv, out, sch.fuse(ii, ji), b, [ko, ki, *rest], rows * tile)


def _finish(sch: Schedule, w, conv, out, ty, tx, reduction, ty_extent: int) -> Schedule:
    """What conv and dense share below the block: thread bindings, operands staged in shared
    memory per step of the outermost reduction loop, the accumulator in a register, dp4a."""
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    step = reduction[0]
    reads = [r.source.name for r in sch.get(conv).reads]
    for buffer in reads:
        _stage_shared(sch, conv, buffer, step, (ty_extent, K.BLOCK))
    if _has(sch, "pad"):
        sch.compute_inline(sch.get_sblock("pad"))  # padding is applied while staging
    sch.set_scope(conv, 0, "local")
    sch.reverse_compute_at(out, tx)
    sch.decompose_reduction(conv, step)
    if w.dtype == "int8":
        sch.tensorize(reduction[-1], DP4A)
    return sch


def schedule_window(w, func: tvm.tirx.PrimFunc) -> Schedule:
    """Depthwise conv and pooling: one thread per output, the window reduced in a register,
    the padding read in place."""
    sch = Schedule(func)
    if _has(sch, "pad"):
        sch.compute_inline(sch.get_sblock("pad"))
    conv = sch.get_sblock("conv")
    tx = _one_thread_per_element(sch, sch.get_sblock("out"))
    sch.compute_at(conv, tx)
    sch.set_scope(conv, 0, "local")
    return sch


def schedule_elementwise(w, func: tvm.tirx.PrimFunc) -> Schedule:
    sch = Schedule(func)
    _one_thread_per_element(sch, sch.get_sblock("out"))
    return sch


_SCHEDULE = {K.Conv2d: schedule_conv2d, K.Dense: schedule_dense,
             K.Depthwise2d: schedule_window, K.Pool2d: schedule_window,
             K.Quantize: schedule_elementwise, K.Dequantize: schedule_elementwise,
             K.AddRequant: schedule_elementwise}


@functools.lru_cache(maxsize=None)
def kernel(w) -> tvm.tirx.PrimFunc:
    """The GPU-scheduled PrimFunc of a workload (fitted with ``CudaTarget.kernel_fields``).

    Marked scheduled under both attribute names: mcc's build reads ``tir.is_scheduled``, the
    dlight pass in TVM's CUDA pipeline ``tirx.is_scheduled`` (unmarked, it would reschedule).
    The symbol ``main`` that ``te.create_prim_func`` gives every kernel is dropped: the CUDA
    pipeline refuses a module whose functions share a symbol (the lowering names them)."""
    _register_dp4a()
    sch = _SCHEDULE[type(w)](w, K.workload_func(w))
    func = sch.mod["main"].without_attr("global_symbol")
    return func.with_attr({"tir.noalias": True, "tir.is_scheduled": True,
                           "tirx.is_scheduled": True})
