"""mcc's tensor intrinsics: the int8 dot products its kernels' inner loops are tensorized to.

x86: the VNNI intrinsic, corrected (16 int32 lanes += 4 uint8 × (16 × 4) int8), and without
VNNI ``vpmaddwd`` pairs or ``vpmaddubsw`` for 7-bit weights. aarch64: ``sdot`` (dotprod), 16 lanes += 4 (uint8 − 128) ×
(16 × 4) int8.

TVM's own ``dot_16x4_vnni`` passes ``<16 x i32>`` operands to ``llvm.x86.avx512.vpdpbusd.512``,
which the LLVM bundled with TVM 0.27 declares with ``<64 x i8>`` operands: every module using
it fails LLVM verification (and meta_schedule, which picks it for u8×s8→s32 reductions, builds
no candidate at all). Here the same description is paired with an implementation that
reinterprets the broadcast activation bytes as ``uint8x64`` and the weights as ``int8x64``.
It is registered under mcc's own name, leaving TVM's registry entry untouched, by
:func:`register_all` (called before any int8 kernel is built), together with the exact
intrinsics the int8 kernels use without VNNI: ``vpmaddwd`` on 16-bit pairs for any int8
weights, ``vpmaddubsw`` for weights within 7 bits.

``vpdpbusd`` multiplies unsigned by signed bytes into 16-bit products and adds groups of four
into the int32 lane without saturation, so the result is exact for every uint8/int8 input,
which ``pmaddubsw`` (TVM's AVX-512 fallback, saturating 16-bit pair sums) is not.

``sdot`` multiplies signed bytes by signed bytes (``udot`` unsigned by unsigned); mcc's
activations are uint8 and its weights int8. Flipping an activation byte's top bit gives the
int8 ``q − 128`` exactly, so the aarch64 intrinsic is *described* as ``Σ (q − 128)·w`` (the
kernels' compute says the same, see :func:`mcc.backends.tvm.kernels.activation_offset`) and
implemented as one XOR and four ``sdot`` (4 int32 lanes each); the lowering adds ``128·Σw`` to
the int32 bias. Products of two int8 never overflow the int32 lanes' 4-term sums.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import TensorIntrin

#: The names mcc registers it under: accumulators in memory (what meta_schedule tiles) or in
#: registers (``local``, mcc's hand-written schedules).
VNNI_16X4 = "mcc.x86.vnni_u8s8s32_16x4"
VNNI_16X4_LOCAL = "mcc.x86.vnni_u8s8s32_16x4.local"

# The functions are parsed from TVMScript text: the ``@T.prim_func`` decorator inspects the
# caller's stack, which costs seconds per function once torch's thousands of modules are loaded.
_SIGNATURE = """
@T.prim_func(s_tir=True)
def {name}(A: T.Buffer(({k},), "{a_dtype}", offset_factor=1),
           B: T.Buffer((16, {k}), "{b_dtype}", offset_factor=1),
           C: T.Buffer((16,), "int32", offset_factor=1, scope="{scope}")) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:{k}], B[0:16, 0:{k}])
        T.writes(C[0:16])
"""

_DESC = """        for i in T.serial(0, 16):
            for k in T.serial(0, {k}):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")
"""

_VNNI = """        a_word = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a_bytes = T.reinterpret(T.broadcast(a_word, 16), dtype="uint8x64")
        b_bytes = B.vload([0, 0], dtype="int8x64")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"), a_bytes, b_bytes, dtype="int32x16")
"""

# vpmaddwd multiplies 16-bit lanes and adds adjacent pairs into 32 bits exactly: uint8
# activations zero-extended and int8 weights sign-extended to 16 bits never saturate
# (|255·−128·2| < 2^31), unlike vpmaddubsw's 16-bit pair sums. The activations arrive already
# widened to int16 (the kernels' padding pass writes them so): a pair is one 32-bit word that
# a single vpbroadcastd from memory spreads over the lanes, where widening two bytes here took
# four instructions per pixel and step, as many as the multiply-adds themselves.
_PMADDWD_AVX512 = """        pair = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
        a16 = T.reinterpret(T.broadcast(pair, 16), dtype="int16x32")
        b16 = B.vload([0, 0], dtype="int16x32")
        C[T.ramp(T.int32(0), 1, 16)] = C.vload([0], dtype="int32x16") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddw.d.512"), a16, b16, dtype="int32x16")
"""

_PMADDWD_AVX2 = """        pair = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
        a16 = T.reinterpret(T.broadcast(pair, 8), dtype="int16x16")
        lo = B.vload([0, 0], dtype="int16x16")
        hi = B.vload([8, 0], dtype="int16x16")
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a16, lo, dtype="int32x8")
        C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a16, hi, dtype="int32x8")
"""

# vpmaddubsw multiplies unsigned by signed bytes and adds adjacent pairs into 16 bits, with
# saturation: exact only while |2·255·w| ≤ 32767, i.e. for weights within [−64, 63] (7 bits,
# what oneDNN and ONNX Runtime's reduce_range also use on CPUs without VNNI). A vpmaddwd by ones
# then adds the pairs of pairs into int32: four products per lane, like vpdpbusd, from uint8
# activations and int8 weights as they are (no widening pass), in three instructions per 32
# multiply-adds against vpmaddwd's two per 16.
_MADDUBSW_AVX512 = """        a_word = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a_bytes = T.reinterpret(T.broadcast(a_word, 16), dtype="uint8x64")
        pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddubs.w.512"),
            a_bytes, B.vload([0, 0], dtype="int8x64"), dtype="int16x32")
        C[T.ramp(T.int32(0), 1, 16)] = C.vload([0], dtype="int32x16") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddw.d.512"), pairs,
            T.broadcast(T.int16(1), 32), dtype="int32x16")
"""

_MADDUBSW_AVX2 = """        a_word = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a_bytes = T.reinterpret(T.broadcast(a_word, 8), dtype="uint8x32")
        lo = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
            a_bytes, B.vload([0, 0], dtype="int8x32"), dtype="int16x16")
        hi = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
            a_bytes, B.vload([8, 0], dtype="int8x32"), dtype="int16x16")
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), lo, T.broadcast(T.int16(1), 16),
            dtype="int32x8")
        C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), hi, T.broadcast(T.int16(1), 16),
            dtype="int32x8")
"""

#: 16 int32 lanes += 4 uint8 × (16 × 4) int8 within [−64, 63], without VNNI.
MADDUBSW_16X4 = {("avx512", "global"): "mcc.x86.avx512_pmaddubsw_u8s7s32_16x4",
                 ("avx512", "local"): "mcc.x86.avx512_pmaddubsw_u8s7s32_16x4.local",
                 ("avx2", "global"): "mcc.x86.avx2_pmaddubsw_u8s7s32_16x4",
                 ("avx2", "local"): "mcc.x86.avx2_pmaddubsw_u8s7s32_16x4.local"}

#: 16 int32 lanes += 2 int16 (widened uint8) × (16 × 2) int8 without VNNI: AVX-512 (one zmm)
#: or AVX2 (two ymm).
PMADDWD_16X2 = {("avx512", "global"): "mcc.x86.avx512_pmaddwd_s16s8s32_16x2",
                ("avx512", "local"): "mcc.x86.avx512_pmaddwd_s16s8s32_16x2.local",
                ("avx2", "global"): "mcc.x86.avx2_pmaddwd_s16s8s32_16x2",
                ("avx2", "local"): "mcc.x86.avx2_pmaddwd_s16s8s32_16x2.local"}

#: 16 int32 lanes += 4 (uint8 − 128) × (16 × 4) int8 with aarch64 dotprod.
SDOT_16X4 = "mcc.arm.sdot_u8s8s32_16x4"
SDOT_16X4_LOCAL = "mcc.arm.sdot_u8s8s32_16x4.local"

_DESC_SHIFTED = """        for i in T.serial(0, 16):
            for k in T.serial(0, {k}):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + (T.cast(A[vk], "int32") - 128) * T.cast(B[vi, vk], "int32")
"""

# The 4 activation bytes repeated in every 32-bit lane (one ld1r), top bits flipped (one eor:
# q − 128 as int8); sdot lane j of register r adds B[4r + j, 0:4] · those bytes.
_SDOT = """        a_word = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a_bytes = T.reinterpret(T.reinterpret(T.broadcast(a_word, 4), dtype="uint8x16")
                                ^ T.broadcast(T.uint8(128), 16), dtype="int8x16")
""" + "".join(f"""        C[T.ramp(T.int32({4 * r}), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
            C.vload([{4 * r}], dtype="int32x4"), B.vload([{4 * r}, 0], dtype="int8x16"), a_bytes,
            dtype="int32x4")
""" for r in range(4))


def _parse(body: str, k: int, scope: str, a_dtype: str):
    return tvm.script.from_source(
        _SIGNATURE.format(name="f", k=k, scope=scope, a_dtype=a_dtype,
                          b_dtype="int16" if a_dtype == "int16" else "int8") + body)


def _register(name: str, k: int, scope: str, impl: str, a_dtype: str, desc: str = _DESC) -> None:
    TensorIntrin.register(name, _parse(desc.format(k=k), k, scope, a_dtype),
                          _parse(impl, k, scope, a_dtype), override=True)


_registered = False


def register_all() -> None:
    """Register every intrinsic above (once per process). Parsing them takes a second or two,
    so it happens when an int8 kernel is first built (:func:`mcc.backends.tvm.kernels.
    workload_func` calls this), not on import: float-only processes never pay it."""
    global _registered
    if _registered:
        return
    for scope, name in (("global", VNNI_16X4), ("local", VNNI_16X4_LOCAL)):
        _register(name, 4, scope, _VNNI, "uint8")
    for (isa, scope), name in PMADDWD_16X2.items():
        _register(name, 2, scope, _PMADDWD_AVX512 if isa == "avx512" else _PMADDWD_AVX2, "int16")
    for (isa, scope), name in MADDUBSW_16X4.items():
        _register(name, 4, scope, _MADDUBSW_AVX512 if isa == "avx512" else _MADDUBSW_AVX2, "uint8")
    for scope, name in (("global", SDOT_16X4), ("local", SDOT_16X4_LOCAL)):
        _register(name, 4, scope, _SDOT, "uint8", _DESC_SHIFTED)
    _registered = True
