"""CPU kernels (x86 and aarch64), float32 and int8: conv2d (grouped), depthwise conv2d, dense,
and the elementwise and pooling steps of the integer path, each with a hand-written schedule.

Why hand-written: TVM's untuned CPU build of a convolution is a scalar loop nest (ResNet-18 at
about 2 s per image). These schedules are what TOPI's x86 ``conv2d_NCHWc`` schedules did, redone
in TensorIR: a register tile of output pixels × output channel blocks held in vector registers,
the pixels consecutive in memory order (across row ends, see ``Conv2d.flat_pixels``), the
reduction outside the tile, tiles in parallel, the epilogue fused per tile. On AVX-512 the
tile is 14 pixels × 2 blocks of 16 channels (28 zmm accumulators), on AVX2 6 pixels × 1 block
(12 ymm), on aarch64 6 pixels × 1 block (24 of NEON's 32 q registers). Measured on one Zen
core (benchmarks/tvm_kernels.py): ResNet-18's convolutions at ~480 GMAC/s in int8 (VNNI) and
~130 GMAC/s in float32, close to the core's peak; a meta_schedule record (see
:mod:`mcc.backends.tvm.tuning`) can still replace any of them.

Layouts (channel blocks of 16; ``Cp`` is the channel count padded up to a multiple of 16):

* activations ``NCHW16c`` ``[N, Cp/16, H, W, 16]``; a graph input with few channels (an image)
  keeps them in one block, ``[N, 1, H, W, C]`` (int8 pads C to a multiple of 4).
* float conv weights ``[OCp/16, ICp/ib, KH, KW, ib, 16]``.
* int8 conv weights ``[OCp/16, ICp/ib, KH, KW, ib/g, 16, g]``: 16 output channels × ``g`` input
  values contiguous, what one instruction consumes: ``g = 4`` bytes for VNNI ``vpdpbusd`` and
  for aarch64 ``sdot`` (``isa`` dotprod), ``g = 2`` for ``vpmaddwd`` (AVX-512 or AVX2 without
  VNNI), ``g = 1`` for int32 multiply-adds that LLVM vectorises (no ``isa``, or ``neon``). For
  ``vpmaddwd`` the weights are stored sign-extended to int16 and the padding pass widens the
  activations to int16: the multiply-add then reads both operands as they are, where widening
  them in the inner loop cost as many instructions as the multiply-adds (ResNet-18's 3×3 convolutions went from ~33 to ~65 GMAC/s on one AVX2 Zen 3
  core; the int16 weights double the constants of an AVX2 artifact).
* depthwise weights ``[Cp/16, KH, KW, 16]``; dense weights ``[Np/16, K/g, 16, g]``.

Every conv/dense kernel ends in an :class:`Epilogue` fused into its output loop: float kernels
add the bias, clamp (ReLU/ReLU6), add a residual and clamp again; int8 kernels add the int32
bias and requantize with a fixed-point multiplier and shift (``(acc·m + 2^(s−1)) >> s``, int64)
or a float32 scale (rounded half to even; faster), add the output zero point and clamp to the
activation's code range; or they return the int32 accumulators, or float values
(``acc·scale``) where float follows. All integer outputs are exact: the references in
``tests/backends/tvm`` compute them with numpy integers.

Workloads are frozen dataclasses (hashable: :func:`kernel` caches one PrimFunc per distinct
layer). Fit them to a target with ``**target_fields(target)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te, tirx
from tvm.s_tir import Schedule

from mcc.backends.tvm import intrinsics
from mcc.backends.tvm.target import host_arch
from mcc.errors import TargetError

BLOCK = 16  # output channels per block: one zmm of int32/float32, one vpdpbusd
#: Parallel tasks a kernel aims for (see :func:`_schedule_tile`).
PARALLEL_UNITS = 16


# ---- epilogues ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Epilogue:
    """What happens to the accumulators before they are stored.

    ``kind``:

    * ``float``: ``y = acc + bias``; then ``clamp`` (lo, hi) if given; then ``+ residual`` and
      ``clamp2`` if ``residual``. Output float32. Extra inputs: ``bias[OCp]`` (+ residual).
    * ``int32``: ``acc + bias`` as int32. Extra input: ``bias[OCp]`` int32.
    * ``fixed``: ``clamp(((acc + bias)·m + 2^(s−1)) >> s + zero_point, qmin, qmax)``, int64
      arithmetic, per-channel ``m`` (int32) and ``s`` (int32 ≥ 1). Output ``out_dtype``.
    * ``scale``: ``clamp(round_half_even(float(acc + bias)·scale) + zero_point, qmin, qmax)``
      with a per-channel float32 ``scale``. Output ``out_dtype``.
    * ``dequant``: ``float(acc + bias)·scale``, then ``clamp`` if given. Output float32.
    """

    kind: str = "float"
    clamp: tuple[float, float] | None = None
    residual: bool = False
    clamp2: tuple[float, float] | None = None
    out_dtype: str = "float32"
    zero_point: int = 0
    qmin: int = 0
    qmax: int = 255

    def inputs(self, channels: int) -> list[te.Tensor]:
        """Placeholders for the per-channel constants this epilogue reads."""
        if self.kind == "float":
            return [te.placeholder((channels,), "float32", name="bias")]
        bias = te.placeholder((channels,), "int32", name="bias")
        if self.kind == "int32":
            return [bias]
        if self.kind == "fixed":
            return [bias, te.placeholder((channels,), "int32", name="multiplier"),
                    te.placeholder((channels,), "int32", name="shift")]
        return [bias, te.placeholder((channels,), "float32", name="scale")]

    @property
    def dtype(self) -> str:
        if self.kind in ("float", "dequant"):
            return "float32"
        return "int32" if self.kind == "int32" else self.out_dtype

    def apply(self, acc, c, consts, residual_value=None):
        """The stored value for accumulator ``acc`` of output channel ``c``."""
        if self.kind == "float":
            y = acc + consts[0][c]
            y = _clamp_float(y, self.clamp)
            if self.residual:
                y = _clamp_float(y + residual_value, self.clamp2)
            return y
        total = acc + consts[0][c]
        if self.kind == "int32":
            return total
        if self.kind == "fixed":
            shift = consts[2][c].astype("int64")
            v = total.astype("int64") * consts[1][c].astype("int64")
            r = (v + (tirx.const(1, "int64") << (shift - 1))) >> shift
            q = r + tirx.const(self.zero_point, "int64")
            q = tirx.max(tirx.min(q, tirx.const(self.qmax, "int64")), tirx.const(self.qmin, "int64"))
            return q.astype(self.out_dtype)
        y = total.astype("float32") * consts[1][c]
        if self.kind == "dequant":
            return _clamp_float(y, self.clamp)
        # TVM lowers ``round`` to llvm.nearbyint (half to even, vectorised); its ``nearbyint``
        # op is not vectorised (gathers and scalar stores, 4× slower epilogues)
        q = tirx.round(y) + tirx.const(float(self.zero_point), "float32")
        q = tirx.max(tirx.min(q, tirx.const(float(self.qmax), "float32")),
                     tirx.const(float(self.qmin), "float32"))
        return q.astype("int32").astype(self.out_dtype)


def _clamp_float(y, bounds):
    if bounds is None:
        return y
    lo, hi = bounds
    if hi != float("inf"):
        y = tirx.min(y, tirx.const(hi, "float32"))
    if lo != float("-inf"):
        y = tirx.max(y, tirx.const(lo, "float32"))
    return y


# ---- workloads ------------------------------------------------------------------------------
def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _pixel_tile(width: int, at_most: int) -> int:
    """Pixels per register tile: between ``at_most/2`` and ``at_most``, the one that computes
    the fewest columns past the row's end (a row is computed in whole tiles; the extra columns
    go to accumulators that are never stored), the larger on ties."""
    if width <= at_most:
        return width
    return min(range(at_most, (at_most + 1) // 2 - 1, -1), key=lambda t: -(-width // t) * t)


def _register_tile(w, blocks: int) -> tuple[int, int]:
    """(pixels, channel blocks). A CPU (``flat_pixels``) convolution on AVX-512 keeps 14 × 2
    blocks of 16 = 28 of the 32 zmm registers as accumulators, the other four for two weight
    vectors and the broadcast input: 8 × 2 (16 accumulators) left the multiply-adds waiting
    on their latency (ResNet-18's convolutions on two cores of a VNNI Xeon: float32 11.0 →
    9.7 ms, int8 2.97 → 2.71 ms; as ``skylake-avx512``, int8 on ``vpmaddwd``, 9.14 → 8.71 ms;
    12 × 2 and 7 × 4 measured between 8 and 14, 6 × 4 and 16 × 2 slower). ``vpmaddubsw`` on
    7-bit weights without VNNI needs two more registers (its int16 products and the vector of
    ones) and takes 10 × 2 (8.4 → 6.5 ms; 14 × 2 spills, 8.7 ms). Where 14 leaves a partial
    tile but 7 divides the pixels (7 × 7 outputs: 49 = 3.5 tiles) the tile is 7 pixels × 4
    blocks for int8 (one core: ResNet-50's 512→2048 1×1 265 → 326 GMAC/s, ResNet-18's 3×3
    327 → 360-398, MobileNetV2's 160→960 196 → 260; as ``skylake-avx512`` 6-10% faster) and 7 × 3
    or 7 × 2 for float32 (7 × 4 measured 73 against 14 × 2's 84 GMAC/s; 7 × 3 where 3 divides
    the blocks, 88 → 98; 7 × 2, 84 → 86-91). AVX2 has 16 ymm registers:
    6 pixels × 1 block = 12 accumulators; NEON 24 of its 32 q registers. Depthwise and CUDA
    tiles stay within one output row and keep 8 pixels: a row whose width the tile does not
    divide computes extra columns, or takes a smaller tile."""
    wide = w.isa not in _NARROW
    tile_c = 2 if wide and blocks % 2 == 0 else 1
    if getattr(w, "flat_pixels", False):
        pixels = w.out_hw[0] * w.out_hw[1]
        maddubsw = w.dtype == "int8" and w.narrow and not w.vnni
        if wide and not maddubsw and pixels % 14 and pixels % 7 == 0:
            seven = [c for c in ((4, 2) if w.dtype == "int8" else (3, 2)) if blocks % c == 0]
            if seven:
                return 7, seven[0]
        return min((10 if maddubsw else 14) if wide else 6, pixels), tile_c
    return _pixel_tile(w.out_hw[1], 8 if wide else 6), tile_c


@dataclass(frozen=True)
class Conv2d:
    """A (grouped) NCHWc convolution. Channels are physical (padded to blocks); with
    ``groups > 1`` every group spans whole blocks (``in_channels/groups`` a multiple of
    ``in_block``, ``out_channels/groups`` of 16). ``pad_value`` fills the padding (the input
    zero point for int8). ``tile`` is (pixels, channel blocks) of the register tile; the
    default suits AVX-512 (16 of the 32 vector registers hold accumulators)."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    in_block: int = BLOCK
    dtype: str = "float32"  # float32 | int8 (uint8 activations × int8 weights)
    epilogue: Epilogue = Epilogue()
    vnni: bool = False
    pad_value: int = 0
    tile: tuple[int, int] | None = None
    isa: str | None = None
    narrow: bool = False  # int8 weights within [-64, 63]: vpmaddubsw is exact (no VNNI)

    @property
    def out_hw(self) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        pt, pl, pb, pr = self.padding
        return ((self.height + pt + pb - dh * (kh - 1) - 1) // sh + 1,
                (self.width + pl + pr - dw * (kw - 1) - 1) // sw + 1)

    @property
    def macs(self) -> int:
        oh, ow = self.out_hw
        return (self.batch * self.out_channels * oh * ow * self.kernel[0] * self.kernel[1]
                * self.in_channels // self.groups)

    @property
    def flat_pixels(self) -> bool:
        """CPU convolutions' register tiles run over the output pixels in memory order,
        across row ends (see :func:`conv2d_compute`), so that every tile has the full size.
        Row-sized tiles waste or shrink where the tile does not divide the width: ResNet-50's
        7-, 14-, 28- and 56-pixel rows took 4- or 5-pixel tiles, 8 or 10 accumulators, too
        few to hide the multiply-add latency (flat tiles: ResNet-18's int8 convolutions 1.33×
        faster, ResNet-50's float ones 1.1×, on one AVX2 core). CUDA kernels
        (:mod:`.cuda_schedules`) keep row tiles: a thread computes pixels of one row."""
        return self.isa != "cuda"

    @property
    def register_tile(self) -> tuple[int, int]:
        return self.tile or _register_tile(self, self.out_channels // self.groups // BLOCK)

    reduce_group = property(lambda self: _reduce_group(self))

    def weight_shape(self) -> tuple[int, ...]:
        kh, kw = self.kernel
        icb = self.in_channels // self.groups // self.in_block
        g = self.reduce_group
        if g > 1:
            return (self.out_channels // BLOCK, icb, kh, kw, self.in_block // g, BLOCK, g)
        return (self.out_channels // BLOCK, icb, kh, kw, self.in_block, BLOCK)


@dataclass(frozen=True)
class Depthwise2d:
    """A depthwise NCHW16c convolution (one filter per channel)."""

    batch: int
    channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    dtype: str = "float32"
    epilogue: Epilogue = Epilogue()
    pad_value: int = 0
    tile: tuple[int, int] | None = None
    isa: str | None = None
    vnni: bool = False  # accepted for target_fields(); depthwise has no channel reduction
    narrow: bool = False  # accepted like vnni

    out_hw = Conv2d.out_hw

    @property
    def macs(self) -> int:
        oh, ow = self.out_hw
        return self.batch * self.channels * oh * ow * self.kernel[0] * self.kernel[1]

    @property
    def register_tile(self) -> tuple[int, int]:
        return self.tile or (_register_tile(self, 1)[0], 1)


@dataclass(frozen=True)
class Dense:
    """``out[m, n] = Σ_k a[m, k]·w[n, k]`` with ``w`` packed in blocks of 16 rows."""

    m: int
    n: int  # padded to a multiple of 16
    k: int  # a multiple of 4 for int8
    dtype: str = "float32"
    epilogue: Epilogue = Epilogue()
    vnni: bool = False
    isa: str | None = None
    narrow: bool = False  # as in Conv2d

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k

    reduce_group = property(lambda self: _reduce_group(self))

    def weight_shape(self) -> tuple[int, ...]:
        g = self.reduce_group
        if g > 1:
            return (self.n // BLOCK, self.k // g, BLOCK, g)
        return (self.n // BLOCK, self.k, BLOCK)


def target_fields(target) -> dict:
    """The fields that fit a workload to a target (``target.kernel_fields()``):
    ``Conv2d(..., **target_fields(target))`` sizes the register tile for the vector width and
    picks the int8 instructions: ``vpdpbusd`` with VNNI, else ``vpmaddwd`` (``isa`` avx512 or
    avx2); on aarch64 ``sdot`` (``isa`` dotprod), else NEON multiply-adds (``isa`` neon); on
    CUDA ``dp4a`` (``isa`` cuda)."""
    return target.kernel_fields()


#: ISAs whose register file holds a 6-pixel × 1-block tile, not AVX-512's 14 × 2.
_NARROW = ("avx2", "neon", "dotprod")


def _reduce_group(w) -> int:
    """Input values one instruction sums per output lane: 4 (``vpdpbusd``, ``sdot``, CUDA's
    ``dp4a``; ``vpmaddubsw`` + ``vpmaddwd`` for ``narrow`` weights), 2 (``vpmaddwd`` with
    ``isa`` avx512/avx2) or 1 (int32 multiply-adds that LLVM vectorises; float)."""
    if w.dtype != "int8":
        return 1
    if w.vnni or w.isa in ("dotprod", "cuda"):
        return 4
    if w.isa in ("avx512", "avx2"):
        return 4 if w.narrow else 2
    return 1


def activation_offset(w) -> int:
    """What the kernel subtracts from every uint8 activation code before multiplying: 128 on
    the ``sdot`` path, which multiplies signed bytes (``q − 128`` is ``q`` with its top bit
    flipped, an exact int8), 0 elsewhere. The kernel then sums ``(q − 128)·w``; adding
    ``128·Σw`` to a channel's int32 bias restores ``Σ q·w`` (padding included, as long as the
    padded input channels have zero weights, which packing guarantees)."""
    if isinstance(w, (Conv2d, Dense)) and w.isa == "dotprod" and w.reduce_group == 4:
        return 128
    return 0


def _intrinsic(w, scope: str = "local") -> str | None:
    """The tensor intrinsic a workload's inner 16 lanes × reduce_group bytes map to, with the
    accumulators in registers (``local``, the hand-written schedules) or in memory
    (``global``, what meta_schedule's search tiles around)."""
    g = w.reduce_group
    local = scope == "local"
    if g == 4:
        if w.isa == "dotprod":
            return intrinsics.SDOT_16X4_LOCAL if local else intrinsics.SDOT_16X4
        if w.vnni:
            return intrinsics.VNNI_16X4_LOCAL if local else intrinsics.VNNI_16X4
        return intrinsics.MADDUBSW_16X4[(w.isa, scope)]
    if g == 2:
        return intrinsics.PMADDWD_16X2[(w.isa, scope)]
    return None


def search_intrinsic(w) -> str | None:
    """The intrinsic meta_schedule may tensorize a kernel with (see :mod:`.tuning`): the
    hand-written kernel's, for CPU int8 conv and dense; None for the others."""
    if not isinstance(w, (Conv2d, Dense)) or w.isa == "cuda":
        return None
    return _intrinsic(w, "global")


# ---- compute definitions -----------------------------------------------------------------
def _acc_type(dtype: str) -> str:
    return "int32" if dtype == "int8" else "float32"


def _in_type(dtype: str) -> str:
    return "uint8" if dtype == "int8" else "float32"


def _shifted(code, w):
    """An int8 workload's activation term: the code widened to int32, less
    :func:`activation_offset` where the instruction multiplies signed bytes."""
    value = code.astype("int32")
    offset = activation_offset(w)
    return value - tirx.const(offset, "int32") if offset else value


def _padded(data: te.Tensor, padding, pad_value, dtype: str | None = None) -> te.Tensor:
    """``data`` padded (a stage named ``pad``), and cast to ``dtype`` on the way if given."""
    pt, pl, pb, pr = padding
    dtype = dtype or data.dtype
    if not any(padding) and dtype == data.dtype:
        return data
    n, c, h, w, b = data.shape
    fill = tirx.const(pad_value, dtype) if isinstance(pad_value, (int, float)) else pad_value

    def value(i, j, y, x, k):
        inside = tirx.all(y >= pt, y < h + pt, x >= pl, x < w + pl)
        return tirx.if_then_else(inside, data[i, j, y - pt, x - pl, k].astype(dtype), fill)

    return te.compute((n, c, h + pt + pb, w + pl + pr, b), value, name="pad")


def _weight_type(w) -> str:
    """How conv/dense weights are stored: int16 for ``vpmaddwd`` (sign-extended once, at
    packing time, rather than per multiply-add), int8 for VNNI and the plain int8 path."""
    if w.dtype != "int8":
        return "float32"
    return "int16" if w.reduce_group == 2 else "int8"


def _reduce_type(w) -> str:
    """What the convolution reads its activations as: int16 for ``vpmaddwd`` (widened once,
    in the padding pass, rather than per multiply-add; see :mod:`.intrinsics`)."""
    return "int16" if w.reduce_group == 2 else _in_type(w.dtype)


def _tile_width(w) -> tuple[int, tuple[int, int, int, int]]:
    """The output width rounded up to whole register tiles, and the input padding that gives
    the extra columns something to read."""
    sw = w.stride[1]
    ow = w.out_hw[1]
    reg_n = w.register_tile[0]
    owp = -(-ow // reg_n) * reg_n
    pt, pl, pb, pr = w.padding
    return owp, (pt, pl, pb, pr + (owp - ow) * sw)


def conv2d_compute(w: Conv2d):
    """Placeholders and output of ``w``. The accumulators ``conv`` are, on CPUs
    (``flat_pixels``), ``[N, OCp/16, P, 16]`` over the ``OH·OW`` output pixels in memory order,
    rounded up to ``P``, a multiple of the register tile, the extra pixels reading the last
    one's window again; for CUDA ``[N, OCp/16, OH, OWp, 16]``, each output row rounded up to
    whole tiles (the extra columns read padding). Extra sums are never stored."""
    acc_t, in_t = _acc_type(w.dtype), _in_type(w.dtype)
    ib = w.in_block
    data = te.placeholder((w.batch, w.in_channels // ib, w.height, w.width, ib), in_t, name="data")
    weight = te.placeholder(w.weight_shape(), _weight_type(w), name="weight")
    consts = w.epilogue.inputs(w.out_channels)
    oh, ow = w.out_hw
    (kh, kw), (sh, sw), (dh, dw) = w.kernel, w.stride, w.dilation
    if w.flat_pixels:
        pixels = oh * ow
        tile = w.register_tile[0]
        padded = -(-pixels // tile) * tile
        padding = w.padding
    else:
        owp, padding = _tile_width(w)
    pad = _padded(data, padding, w.pad_value, _reduce_type(w))
    icb_group = w.in_channels // w.groups // ib  # input blocks per group
    ocb_group = w.out_channels // w.groups // BLOCK
    ric = te.reduce_axis((0, icb_group), name="ic_outer")
    rkh = te.reduce_axis((0, kh), name="kh")
    rkw = te.reduce_axis((0, kw), name="kw")

    def in_block(oc):
        return ric if w.groups == 1 else (oc // ocb_group) * icb_group + ric

    g = w.reduce_group
    if g > 1:
        rf = te.reduce_axis((0, ib // g), name="ic_f")
        rs = te.reduce_axis((0, g), name="ic_s")

        def window(n, oc, y0, x0, ob):  # the sum over the window whose corner is (y0, x0)
            return te.sum(
                _shifted(pad[n, in_block(oc), y0 + rkh * dh, x0 + rkw * dw, rf * g + rs], w)
                * weight[oc, ric, rkh, rkw, rf, ob, rs].astype(acc_t),
                axis=[ric, rkh, rkw, rf, rs])
    else:
        ri = te.reduce_axis((0, ib), name="ic_inner")

        def window(n, oc, y0, x0, ob):
            return te.sum(
                pad[n, in_block(oc), y0 + rkh * dh, x0 + rkw * dw, ri].astype(acc_t)
                * weight[oc, ric, rkh, rkw, ri, ob].astype(acc_t),
                axis=[ric, rkh, rkw, ri])

    if w.flat_pixels:
        def flat_window(n, oc, p, ob):
            q = tirx.min(p, pixels - 1) if padded > pixels else p
            return window(n, oc, q // ow * sh, q % ow * sw, ob)

        acc = te.compute((w.batch, w.out_channels // BLOCK, padded, BLOCK), flat_window, name="conv")
        at = lambda n, oc, y, x, ob: acc[n, oc, y * ow + x, ob]  # noqa: E731
    else:
        acc = te.compute((w.batch, w.out_channels // BLOCK, oh, owp, BLOCK),
                         lambda n, oc, y, x, ob: window(n, oc, y * sh, x * sw, ob), name="conv")
        at = lambda n, oc, y, x, ob: acc[n, oc, y, x, ob]  # noqa: E731
    return _conv2d_output(w, [data, weight, *consts], consts, at)


def _conv2d_output(w: Conv2d, args: list, consts: list, acc) -> list:
    """``args`` (data, weight, constants), the residual input if the epilogue adds one, and the
    output stage ``out``, which applies the epilogue to ``acc(n, oc, y, x, ob)``."""
    oh, ow = w.out_hw
    out_shape = (w.batch, w.out_channels // BLOCK, oh, ow, BLOCK)
    residual = None
    if w.epilogue.residual:
        residual = te.placeholder(out_shape, "float32", name="residual")
        args = [*args, residual]
    out = te.compute(
        out_shape,
        lambda n, oc, y, x, ob: w.epilogue.apply(
            acc(n, oc, y, x, ob), oc * BLOCK + ob, consts,
            residual[n, oc, y, x, ob] if residual is not None else None),
        name="out")
    return args + [out]


def depthwise_compute(w: Depthwise2d):
    pad_value = w.pad_value
    acc_t, in_t = _acc_type(w.dtype), _in_type(w.dtype)
    data = te.placeholder((w.batch, w.channels // BLOCK, w.height, w.width, BLOCK), in_t, name="data")
    kh, kw = w.kernel
    weight = te.placeholder((w.channels // BLOCK, kh, kw, BLOCK),
                            "int8" if w.dtype == "int8" else "float32", name="weight")
    consts = w.epilogue.inputs(w.channels)
    oh, ow = w.out_hw
    owp, padding = _tile_width(w)
    pad = _padded(data, padding, pad_value)
    (sh, sw), (dh, dw) = w.stride, w.dilation
    rkh = te.reduce_axis((0, kh), name="kh")
    rkw = te.reduce_axis((0, kw), name="kw")
    acc = te.compute(
        (w.batch, w.channels // BLOCK, oh, owp, BLOCK),
        lambda n, c, y, x, b: te.sum(
            pad[n, c, y * sh + rkh * dh, x * sw + rkw * dw, b].astype(acc_t)
            * weight[c, rkh, rkw, b].astype(acc_t), axis=[rkh, rkw]), name="conv")
    out_shape = (w.batch, w.channels // BLOCK, oh, ow, BLOCK)
    args = [data, weight, *consts]
    residual = None
    if w.epilogue.residual:
        residual = te.placeholder(out_shape, "float32", name="residual")
        args.append(residual)
    out = te.compute(
        out_shape,
        lambda n, c, y, x, b: w.epilogue.apply(
            acc[n, c, y, x, b], c * BLOCK + b, consts,
            residual[n, c, y, x, b] if residual is not None else None),
        name="out")
    return args + [out]


def dense_compute(w: Dense):
    acc_t, in_t = _acc_type(w.dtype), _in_type(w.dtype)
    data = te.placeholder((w.m, w.k), in_t, name="data")
    weight = te.placeholder(w.weight_shape(), _weight_type(w), name="weight")
    consts = w.epilogue.inputs(w.n)
    g = w.reduce_group
    if g > 1:
        rf = te.reduce_axis((0, w.k // g), name="k_f")
        rs = te.reduce_axis((0, g), name="k_s")
        a = data
        if _reduce_type(w) != in_t:
            a = te.compute((w.m, w.k), lambda i, k: data[i, k].astype(_reduce_type(w)), name="pad")
        acc = te.compute(
            (w.m, w.n // BLOCK, BLOCK),
            lambda i, j, b: te.sum(_shifted(a[i, rf * g + rs], w)
                                   * weight[j, rf, b, rs].astype(acc_t), axis=[rf, rs]),
            name="conv")
    else:
        rk = te.reduce_axis((0, w.k), name="k")
        acc = te.compute(
            (w.m, w.n // BLOCK, BLOCK),
            lambda i, j, b: te.sum(data[i, rk].astype(acc_t) * weight[j, rk, b].astype(acc_t),
                                   axis=rk),
            name="conv")
    args = [data, weight, *consts]
    residual = None
    if w.epilogue.residual:
        residual = te.placeholder((w.m, w.n), "float32", name="residual")
        args.append(residual)
    out = te.compute(
        (w.m, w.n),
        lambda i, j: w.epilogue.apply(acc[i, j // BLOCK, j % BLOCK], j, consts,
                                      residual[i, j] if residual is not None else None),
        name="out")
    return args + [out]


# ---- schedules --------------------------------------------------------------------------
def _schedule_pad(sch: Schedule) -> None:
    """Padding (and widening) runs as its own parallel, vectorised pass over the input."""
    try:
        pad = sch.get_sblock("pad")
    except Exception:  # no padding in this workload
        return
    loops = sch.get_loops(pad)
    if len(loops) == 2:  # dense: [m, k], k split into vectors of 16
        sch.vectorize(sch.split(loops[1], [None, BLOCK])[1])
        return
    n, c, h, w, b = loops
    sch.parallel(sch.fuse(n, c, h))
    sch.vectorize(b)


def _schedule_tile(sch: Schedule, pixels, channels, reduction, tile_n: int, intrin: str | None,
                   blocks=None, tile_c: int = 1, pixels_first: bool = False) -> None:
    """Shared by every kernel: the accumulator block ``conv`` is tiled as ``tile_n`` pixels (or
    rows) × ``tile_c`` blocks of 16 channels, kept in registers (a ``local`` buffer, fully
    unrolled); the reduction loops run outside the tile, and the epilogue ``out`` is computed
    per tile. ``pixels`` are the accumulator's spatial loops, the tiled one last; ``blocks`` the
    loop over channel blocks (tiled by ``tile_c``, which must not be among ``pixels``);
    ``reduction`` the reduction loops, outermost first (with a tensor intrinsic ``intrin``, the
    last is the bytes one instruction sums per lane).

    Parallel tasks: the outer loops, times as many runs of consecutive tiles as it takes to
    reach :data:`PARALLEL_UNITS`, the runs of tiles outermost if ``pixels_first`` (after the
    batch): a thread then reads part of the input and all the weights rather than all the
    input and part of the weights, the better split where the input is the larger. The outer
    loops alone left MobileNetV2's narrow layers on one thread (a 32-channel output is one pair
    of blocks; 144 channels, 9 blocks, split 5:4); one task per tile made TVM allocate the
    tile's workspace per tile, which cost more than the tile (a 32→144 int8 1×1 convolution
    2.6× slower). Both cores of the VNNI Xeon:
    MobileNetV2 float32 3.88 → 3.37 ms, int8 2.14 → 1.92 ms; ResNet-18/50 unchanged."""
    conv, out = sch.get_sblock("conv"), sch.get_sblock("out")
    *outer, tiled = pixels
    tile_o, tile_i = sch.split(tiled, [None, tile_n])
    block_tile = []
    if blocks is not None:
        block_o, block_i = sch.split(blocks, [None, tile_c])
        outer = [block_o if l == blocks else l for l in outer] if blocks in outer else [*outer, block_o]
        block_tile = [block_i]
    units = math.prod(int(sch.get(l).extent) for l in outer)
    tiles = int(sch.get(tile_o).extent)
    tile_p, tile_s = sch.split(tile_o, [_largest_divisor(tiles, -(-PARALLEL_UNITS // units)), None])
    inner = [reduction[-1]] if intrin else []
    tasks = [outer[0], tile_p, *outer[1:]] if pixels_first else [*outer, tile_p]
    sch.reorder(*tasks, tile_s, *reduction[:len(reduction) - len(inner)], tile_i,
                *block_tile, channels, *inner)
    sch.set_scope(conv, 0, "local")
    sch.reverse_compute_at(out, tile_s)
    sch.parallel(sch.fuse(*tasks))
    sch.vectorize(sch.get_loops(out)[-1])
    for loop in [*block_tile, tile_i]:
        sch.unroll(loop)
    if not intrin:
        sch.vectorize(channels)
    init = sch.decompose_reduction(conv, reduction[0])
    sch.vectorize(sch.get_loops(init)[-1])
    if intrin:
        sch.tensorize(channels, intrin)


def schedule_conv2d(w: Conv2d, func: tvm.tirx.PrimFunc) -> Schedule:
    """Register tile: ``tile`` consecutive output pixels (``flat_pixels``, across row ends) ×
    ``tile_c`` blocks of 16 channels. The threads split the pixels where the input is larger
    than the weights, else the channels (ResNet-18's float 3×3 convolutions on 56×56 inputs,
    two Xeon cores: 175 → 190 GMAC/s split by pixels; on 28×28 and 14×14, 193 → 181 and 201 →
    187, the weights being the larger there)."""
    sch = Schedule(func)
    reg_n, tile_c = w.register_tile
    _schedule_pad(sch)
    # The epilogue iterates over the flat pixel index too, so that it can run per tile.
    sch.transform_block_layout(sch.get_sblock("out"),
                               lambda n, c, y, x, b: (n, c, y * w.out_hw[1] + x, b))
    n, c, p, b, *reduction = sch.get_loops(sch.get_sblock("conv"))
    weights = w.out_channels * w.in_channels // w.groups * w.kernel[0] * w.kernel[1]
    _schedule_tile(sch, [n, c, p] if tile_c == 1 else [n, p], b, reduction, reg_n, _intrinsic(w),
                   blocks=c if tile_c > 1 else None, tile_c=tile_c,
                   pixels_first=w.in_channels * w.height * w.width > weights)
    return sch


def schedule_depthwise(w: Depthwise2d, func: tvm.tirx.PrimFunc) -> Schedule:
    """Depthwise convolutions are memory-bound: the padding is read in place (a bounds check
    per tap) rather than copied first, which a separate pass would double the traffic of
    (1.5-2× faster). Convolutions keep the copy: their inner loop is a tensor intrinsic."""
    sch = Schedule(func)
    if any(w.padding):
        sch.compute_inline(sch.get_sblock("pad"))
    n, c, y, x, b, rkh, rkw = sch.get_loops(sch.get_sblock("conv"))
    _schedule_tile(sch, [n, c, y, x], b, [rkh, rkw], w.register_tile[0], None)
    sch.unroll(rkw)
    return sch


def schedule_dense(w: Dense, func: tvm.tirx.PrimFunc) -> Schedule:
    """Register tile: rows × blocks of 16 columns; a single row (batch-1 classifier) takes up
    to 8 blocks so that enough independent accumulators hide the multiply-add latency."""
    sch = Schedule(func)
    _schedule_pad(sch)
    i, j, b, *reduction = sch.get_loops(sch.get_sblock("conv"))
    blocks = w.n // BLOCK
    if w.isa in _NARROW:
        rows, tile_c = _largest_divisor(w.m, 6), 1
    elif w.m == 1:
        rows, tile_c = 1, _largest_divisor(blocks, 8)
    else:
        rows, tile_c = _largest_divisor(w.m, 8), 2 if blocks % 2 == 0 else 1
    _schedule_tile(sch, [i], b, reduction, rows, _intrinsic(w), blocks=j, tile_c=tile_c)
    return sch


# ---- elementwise and pooling kernels of the integer path ---------------------------------
@dataclass(frozen=True)
class Requant:
    """Codes of one tensor re-expressed on another grid:
    ``clamp(((q − in_zero)·m + 2^(s−1)) >> s + out_zero, qmin, qmax)`` in int64.
    Build one with :meth:`between`."""

    multiplier: int
    shift: int
    in_zero: int
    out_zero: int
    qmin: int
    qmax: int
    out_dtype: str

    @classmethod
    def between(cls, in_scale: float, in_zero: int, out_scale: float, out_zero: int, qmin: int,
                qmax: int, out_dtype: str, divisor: int = 1) -> "Requant":
        """The requantization from ``(in_scale, in_zero)`` codes, summed over ``divisor``
        values and averaged, to ``(out_scale, out_zero)`` codes within ``[qmin, qmax]``."""
        m, s = fixed_point(np.array([in_scale / (out_scale * divisor)]))
        return cls(int(m[0]), int(s[0]), int(in_zero), int(out_zero), int(qmin), int(qmax),
                   out_dtype)

    def apply(self, total):
        """``total`` (int32) is a sum of codes minus ``in_zero`` per term."""
        v = total.astype("int64") * tirx.const(self.multiplier, "int64")
        r = (v + tirx.const(1 << (self.shift - 1), "int64")) >> tirx.const(self.shift, "int64")
        q = r + tirx.const(self.out_zero, "int64")
        q = tirx.max(tirx.min(q, tirx.const(self.qmax, "int64")), tirx.const(self.qmin, "int64"))
        return q.astype(self.out_dtype)


@dataclass(frozen=True)
class Quantize:
    """Float NCHW -> codes NCHW{block}c, ``clamp(nearbyint(x·(1/scale)) + zero_point)`` in
    float32 — the arithmetic of ``torch.fake_quantize_per_tensor_affine``, so the codes equal
    the fake-quant graph's. Channels ``channels..padded`` hold ``zero_point``."""

    shape: tuple[int, int, int, int]
    padded: int
    block: int
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    out_dtype: str = "uint8"


@dataclass(frozen=True)
class Dequantize:
    """Codes NCHW{block}c (channels padded) -> float NCHW ``(q − zero_point)·scale``."""

    shape: tuple[int, int, int, int]  # logical NCHW
    padded: int
    block: int
    scale: float
    zero_point: int
    in_dtype: str = "uint8"


@dataclass(frozen=True)
class AddRequant:
    """The int8 residual add: ``a`` and ``b`` codes (same NCHWc shape, own grids) ->
    ``clamp(((a − za)·ma + (b − zb)·mb + 2^(s−1)) >> s + zo, qmin, qmax)``; ``qmin`` carries a
    fused ReLU. Build with :meth:`between`."""

    shape: tuple[int, ...]
    a_multiplier: int
    b_multiplier: int
    shift: int
    a_zero: int
    b_zero: int
    out_zero: int
    qmin: int
    qmax: int
    a_dtype: str = "uint8"
    b_dtype: str = "uint8"
    out_dtype: str = "uint8"

    @classmethod
    def between(cls, shape, a: tuple[float, int], b: tuple[float, int], out: tuple[float, int],
                qmin: int, qmax: int, a_dtype="uint8", b_dtype="uint8", out_dtype="uint8"):
        """``a``, ``b``, ``out`` are (scale, zero point): both input multipliers share one shift,
        the largest that keeps them below 2^31."""
        ra, rb = a[0] / out[0], b[0] / out[0]
        shift = 31 - int(np.frexp(max(ra, rb))[1])
        shift = min(shift, 62)
        ma, mb = int(round(ra * 2.0 ** shift)), int(round(rb * 2.0 ** shift))
        if max(ma, mb) >= 1 << 31:
            ma, mb, shift = ma >> 1, mb >> 1, shift - 1
        return cls(tuple(shape), ma, mb, shift, int(a[1]), int(b[1]), int(out[1]), int(qmin),
                   int(qmax), a_dtype, b_dtype, out_dtype)


@dataclass(frozen=True)
class Pool2d:
    """Max or average pooling over NCHW{16}c. ``dtype`` float32 or the codes' uint8/int8. Max
    pooling of codes is exact (padding never wins: it holds the smallest code). Average pooling
    of codes sums ``q − zero`` (padding contributes 0, PyTorch's ``count_include_pad``) and
    requantizes the mean with ``requant`` (its divisor is the window size)."""

    kind: str  # max | avg
    batch: int
    channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dtype: str = "float32"
    requant: Requant | None = None
    dilation: tuple[int, int] = (1, 1)

    out_hw = Conv2d.out_hw


def quantize_compute(w: Quantize):
    n, c, h, wd = w.shape
    x = te.placeholder(w.shape, "float32", name="x")
    inv = tirx.const(np.float32(1.0) / np.float32(w.scale), "float32")

    def code(i, cb, y, xx, b):
        ch = cb * w.block + b
        q = tirx.round(x[i, tirx.min(ch, c - 1), y, xx] * inv) + tirx.const(float(w.zero_point), "float32")
        q = tirx.max(tirx.min(q, tirx.const(float(w.qmax), "float32")), tirx.const(float(w.qmin), "float32"))
        return tirx.if_then_else(ch < c, q.astype(w.out_dtype), tirx.const(w.zero_point, w.out_dtype))

    out = te.compute((n, w.padded // w.block, h, wd, w.block), code, name="out")
    return [x, out]


def dequantize_compute(w: Dequantize):
    n, c, h, wd = w.shape
    q = te.placeholder((n, w.padded // w.block, h, wd, w.block), w.in_dtype, name="q")
    out = te.compute(w.shape, lambda i, ch, y, x: (
        q[i, ch // w.block, y, x, ch % w.block].astype("float32")
        - tirx.const(float(w.zero_point), "float32")) * tirx.const(float(w.scale), "float32"),
        name="out")
    return [q, out]


def add_requant_compute(w: AddRequant):
    a = te.placeholder(w.shape, w.a_dtype, name="a")
    b = te.placeholder(w.shape, w.b_dtype, name="b")

    def value(*i):
        va = (a[i].astype("int64") - tirx.const(w.a_zero, "int64")) * tirx.const(w.a_multiplier, "int64")
        vb = (b[i].astype("int64") - tirx.const(w.b_zero, "int64")) * tirx.const(w.b_multiplier, "int64")
        r = (va + vb + tirx.const(1 << (w.shift - 1), "int64")) >> tirx.const(w.shift, "int64")
        q = r + tirx.const(w.out_zero, "int64")
        return tirx.max(tirx.min(q, tirx.const(w.qmax, "int64")),
                        tirx.const(w.qmin, "int64")).astype(w.out_dtype)

    return [a, b, te.compute(w.shape, value, name="out")]


def pool_compute(w: Pool2d):
    data = te.placeholder((w.batch, w.channels // BLOCK, w.height, w.width, BLOCK), w.dtype, name="data")
    oh, ow = w.out_hw
    (kh, kw), (sh, sw), (dh, dw) = w.kernel, w.stride, w.dilation
    rkh = te.reduce_axis((0, kh), name="kh")
    rkw = te.reduce_axis((0, kw), name="kw")
    shape = (w.batch, w.channels // BLOCK, oh, ow, BLOCK)
    if w.kind == "max":
        lowest = tirx.min_value(w.dtype)
        pad = _padded(data, w.padding, lowest)
        acc = te.compute(shape, lambda n, c, y, x, b: te.max(
            pad[n, c, y * sh + rkh * dh, x * sw + rkw * dw, b], axis=[rkh, rkw]), name="conv")
        return [data, te.compute(shape, lambda *i: acc[i], name="out")]
    if w.dtype == "float32":
        pad = _padded(data, w.padding, tirx.const(0.0, "float32"))
        acc = te.compute(shape, lambda n, c, y, x, b: te.sum(
            pad[n, c, y * sh + rkh * dh, x * sw + rkw * dw, b], axis=[rkh, rkw]), name="conv")
        inv = tirx.const(1.0 / (kh * kw), "float32")
        return [data, te.compute(shape, lambda *i: acc[i] * inv, name="out")]
    zero = w.requant.in_zero
    pad = _padded(data, w.padding, tirx.const(zero, w.dtype))
    acc = te.compute(shape, lambda n, c, y, x, b: te.sum(
        pad[n, c, y * sh + rkh * dh, x * sw + rkw * dw, b].astype("int32")
        - tirx.const(zero, "int32"), axis=[rkh, rkw]), name="conv")
    return [data, te.compute(shape, lambda *i: w.requant.apply(acc[i]), name="out")]


def _schedule_elementwise(w, func: tvm.tirx.PrimFunc) -> Schedule:
    """All loops fused, cut into vectors of 16 elements: the vectors run in parallel. Packing an
    image into a narrow block (NCHW4c) instead vectorises whole rows, rows in sequence, which
    LLVM turns into interleaving shuffles (1.4× faster than 16-lane gathers, and than the same
    rows as parallel iterations)."""
    sch = Schedule(func)
    loops = sch.get_loops(sch.get_sblock("out"))
    if isinstance(w, Quantize) and w.block < BLOCK:
        n, c, y, x, b = loops
        sch.parallel(sch.fuse(n, c))
        sch.vectorize(sch.fuse(x, b))
        return sch
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    total = int(sch.get(fused).extent)
    lanes = 16 if total % 16 == 0 else 1
    outer, inner = sch.split(fused, [None, lanes])
    sch.parallel(outer)
    if lanes > 1:
        sch.vectorize(inner)
    return sch


def schedule_pool(w: Pool2d, func: tvm.tirx.PrimFunc) -> Schedule:
    """A tile of up to 8 output pixels of a row × 16 channels per step, the windows reduced in
    registers, the padding read in place (a bounds check per tap) as in depthwise kernels.
    One pixel per step with a padded copy first ran ResNet-18's float 3×3 max pool at 0.36 ms
    on one Xeon core: a chain of dependent maxima per pixel, and the copy's extra traffic."""
    sch = Schedule(func)
    if any(w.padding):
        sch.compute_inline(sch.get_sblock("pad"))
    acc = sch.get_sblock("conv")
    n, c, y, x, b, rkh, rkw = sch.get_loops(acc)
    x_o, x_i = sch.split(x, [None, _largest_divisor(w.out_hw[1], 8)])
    sch.reorder(n, c, y, x_o, rkh, rkw, x_i, b)
    sch.parallel(sch.fuse(n, c, y))
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(sch.get_sblock("out"), x_o)
    sch.vectorize(sch.get_loops(sch.get_sblock("out"))[-1])
    sch.unroll(x_i)
    sch.vectorize(b)
    init = sch.decompose_reduction(acc, rkh)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch


# ---- entry points -------------------------------------------------------------------------
_COMPUTE = {Conv2d: conv2d_compute, Depthwise2d: depthwise_compute, Dense: dense_compute,
            Quantize: quantize_compute, Dequantize: dequantize_compute,
            AddRequant: add_requant_compute, Pool2d: pool_compute}
_SCHEDULE = {Conv2d: schedule_conv2d, Depthwise2d: schedule_depthwise, Dense: schedule_dense,
             Quantize: _schedule_elementwise, Dequantize: _schedule_elementwise,
             AddRequant: _schedule_elementwise, Pool2d: schedule_pool}


def workload_func(w) -> tvm.tirx.PrimFunc:
    """The unscheduled PrimFunc of a workload (what meta_schedule tunes). For int8 workloads
    the tensor intrinsics are registered first: schedules and recorded traces name them."""
    if getattr(w, "dtype", None) == "int8":
        intrinsics.register_all()
    return te.create_prim_func(_COMPUTE[type(w)](w)).with_attr("tir.noalias", True)


@functools.lru_cache(maxsize=None)
def kernel(w) -> tvm.tirx.PrimFunc:
    """The scheduled PrimFunc of a workload (cached: models repeat their layers)."""
    sch = _SCHEDULE[type(w)](w, workload_func(w))
    return sch.mod["main"].with_attr({"tir.noalias": True, "tir.is_scheduled": True})


# ---- packing (numpy, at compile time) -------------------------------------------------------
def padded_channels(channels: int) -> int:
    return -(-channels // BLOCK) * BLOCK


def pack_activation(x: np.ndarray, block: int, channels: int | None = None, fill=0) -> np.ndarray:
    """NCHW -> NCHW{block}c with the channels padded to ``channels`` (default: a multiple of
    ``block``) with ``fill``."""
    n, c, h, w = x.shape
    cp = channels or -(-c // block) * block
    if cp != c:
        x = np.concatenate([x, np.full((n, cp - c, h, w), fill, x.dtype)], axis=1)
    return np.ascontiguousarray(x.reshape(n, cp // block, block, h, w).transpose(0, 1, 3, 4, 2))


def unpack_activation(x: np.ndarray, channels: int) -> np.ndarray:
    n, cb, h, w, b = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, cb * b, h, w)[:, :channels])


def pack_conv_weight(weight: np.ndarray, w: Conv2d) -> np.ndarray:
    """``[OC, IC/groups, KH, KW]`` -> the layout of :meth:`Conv2d.weight_shape`, zero-filled in
    the padded output channels and in the padded input channels of every group."""
    oc, icg, kh, kw = weight.shape
    ocg_p, icg_p = w.out_channels // w.groups, w.in_channels // w.groups
    ocg = oc // w.groups
    full = np.zeros((w.groups, ocg_p, icg_p, kh, kw), weight.dtype)
    full[:, :ocg, :icg] = weight.reshape(w.groups, ocg, icg, kh, kw)
    full = full.reshape(w.out_channels, icg_p, kh, kw)
    ib = w.in_block
    # [OCb, 16, ICb, ib, KH, KW] -> [OCb, ICb, KH, KW, ib, 16]
    t = full.reshape(w.out_channels // BLOCK, BLOCK, icg_p // ib, ib, kh, kw).transpose(0, 2, 4, 5, 3, 1)
    g = w.reduce_group
    if g > 1:  # ib -> (ib/g, g), then [.., ib/g, 16, g]
        t = t.reshape(*t.shape[:4], ib // g, g, BLOCK).transpose(0, 1, 2, 3, 4, 6, 5)
    return np.ascontiguousarray(t.astype(np.int16) if _weight_type(w) == "int16" else t)


def pack_depthwise_weight(weight: np.ndarray, channels: int) -> np.ndarray:
    """``[C, 1, KH, KW]`` -> ``[Cp/16, KH, KW, 16]``."""
    c, _, kh, kw = weight.shape
    full = np.zeros((channels, kh, kw), weight.dtype)
    full[:c] = weight[:, 0]
    return np.ascontiguousarray(full.reshape(channels // BLOCK, BLOCK, kh, kw).transpose(0, 2, 3, 1))


def pack_dense_weight(weight: np.ndarray, w: Dense) -> np.ndarray:
    """``[N, K]`` -> ``[Np/16, K, 16]`` or, for VNNI, ``[Np/16, K/4, 16, 4]``."""
    n, k = weight.shape
    full = np.zeros((w.n, w.k), weight.dtype)
    full[:n, :k] = weight
    t = full.reshape(w.n // BLOCK, BLOCK, w.k)
    g = w.reduce_group
    if g > 1:
        t = t.reshape(w.n // BLOCK, BLOCK, w.k // g, g).transpose(0, 2, 1, 3)
        return np.ascontiguousarray(t.astype(np.int16) if _weight_type(w) == "int16" else t)
    return np.ascontiguousarray(t.transpose(0, 2, 1))


def fixed_point(multiplier: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real multipliers -> int32 ``m`` in [2^30, 2^31) and shifts ``s`` with
    ``multiplier ≈ m·2^-s`` (relative error ≤ 2^-31). Multipliers below 2^-31 become 0."""
    real = np.asarray(multiplier, np.float64)
    if np.any(real <= 0) or np.any(~np.isfinite(real)):
        raise ValueError("requantization multipliers must be positive and finite")
    mantissa, exponent = np.frexp(real)  # real = mantissa·2^exponent, mantissa in [0.5, 1)
    m = np.round(mantissa * (1 << 31)).astype(np.int64)
    shift = 31 - exponent.astype(np.int64)
    carry = m == (1 << 31)  # mantissa rounded up to 1.0
    m[carry] >>= 1
    shift[carry] -= 1
    too_small = shift > 62
    m[too_small], shift[too_small] = 0, 62
    if np.any(shift < 1):
        raise ValueError("requantization multipliers must be below 2^30")
    return m.astype(np.int32), shift.astype(np.int32)


def output_shape(w) -> tuple[tuple[int, ...], str]:
    """Shape and dtype of a workload's output."""
    if isinstance(w, Dense):
        return (w.m, w.n), w.epilogue.dtype
    if isinstance(w, Quantize):
        n, _, h, wd = w.shape
        return (n, w.padded // w.block, h, wd, w.block), w.out_dtype
    if isinstance(w, Dequantize):
        return w.shape, "float32"
    if isinstance(w, AddRequant):
        return w.shape, w.out_dtype
    if isinstance(w, Pool2d):
        oh, ow = w.out_hw
        dtype = w.requant.out_dtype if w.requant is not None else w.dtype
        return (w.batch, w.channels // BLOCK, oh, ow, BLOCK), dtype
    oh, ow = w.out_hw
    channels = w.out_channels if isinstance(w, Conv2d) else w.channels
    return (w.batch, channels // BLOCK, oh, ow, BLOCK), w.epilogue.dtype


class Compiled:
    """One kernel compiled on its own, called with numpy arrays (tests and benchmarks). Only for
    a target of this machine's architecture: TVM would load an ARM kernel here without
    complaint and crash when it is called."""

    def __init__(self, w, target):
        if target.arch != host_arch():
            raise TargetError(f"a kernel for {target.name} ({target.arch}) cannot run on this "
                              f"{host_arch()} machine; time it on the device itself")
        self.workload = w
        self.module = tvm.compile(tvm.IRModule({"main": kernel(w)}), target.tvm()).jit()

    def _args(self, arrays):
        shape, dtype = output_shape(self.workload)
        return [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays] + [
            tvm.runtime.tensor(np.zeros(shape, dtype))]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        args = self._args(arrays)
        self.module(*args)
        return args[-1].numpy()

    def seconds(self, *arrays: np.ndarray, repeat: int = 30) -> float:
        """The fastest of ``repeat`` single runs (the least disturbed by other processes)."""
        timer = self.module.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat)
        return float(min(timer(*self._args(arrays)).results))
