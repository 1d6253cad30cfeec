"""The x86 kernels: int8 outputs equal numpy integer references exactly, on the VNNI path and on
the AVX-512/AVX2 fallbacks; float kernels match PyTorch; weights pack into the documented layout."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcc.backends.tvm import kernels as K
from mcc.backends.tvm.target import resolve
from tests.backends.tvm import int8_reference as ref

HOST = resolve("x86")
# The fallback paths this CPU can execute (an AVX2-only host cannot run AVX-512 code); what
# every target's code contains is checked on any host by test_int8_kernels_use_the_intended_instructions.
FALLBACKS = [(name, isa) for name, isa in (("skylake-avx512", "avx512"), ("haswell", "avx2"),
                                            ("haswell", None))
             if not resolve(name).missing_on_host()]


def _int8_conv_case(target, rng, *, ic, oc, hw, k, stride, pad, groups=1, epilogue, zp_in=9,
                    isa="target", narrow=False):
    """Build, run and reference one int8 convolution; returns (got, expected) as int64 NCHW.
    ``narrow``: weights within [-64, 63] (the vpmaddubsw path without VNNI)."""
    x = rng.integers(0, 256, (2, ic, hw, hw))
    w = rng.integers(-64, 64, (oc, ic // groups, k, k)) if narrow else \
        rng.integers(-127, 128, (oc, ic // groups, k, k))
    icg = ic // groups
    in_block = 16 if icg % 16 == 0 else 4
    icp = -(-ic // in_block) * in_block
    ocp = K.padded_channels(oc) if groups == 1 else oc
    fields = K.target_fields(target) if isa == "target" else {"vnni": False, "isa": isa}
    work = K.Conv2d(2, icp, hw, hw, ocp, (k, k), (stride, stride), (pad,) * 4, groups=groups,
                    in_block=in_block, dtype="int8", epilogue=epilogue, pad_value=zp_in,
                    narrow=narrow, **fields)
    bias = rng.integers(-5000, 5000, ocp).astype(np.int32)
    acc = ref.conv2d(x, w, (stride, stride), (pad,) * 4, groups=groups, pad_value=zp_in)
    acc = acc + bias[:oc, None, None]
    arrays = [K.pack_activation(x.astype(np.uint8), in_block, icp, fill=zp_in),
              K.pack_conv_weight(w.astype(np.int8), work), bias]
    if epilogue.kind == "fixed":
        mult, shift = K.fixed_point(rng.uniform(2e-5, 2e-3, ocp))
        arrays += [mult, shift]
        expected = ref.requantize_fixed(acc, mult[:oc], shift[:oc], epilogue.zero_point,
                                        epilogue.qmin, epilogue.qmax)
    elif epilogue.kind == "scale":
        scale = rng.uniform(2e-5, 2e-3, ocp).astype(np.float32)
        arrays.append(scale)
        expected = ref.requantize_scale(acc, scale[:oc], epilogue.zero_point, epilogue.qmin,
                                        epilogue.qmax)
    else:
        expected = acc
    got = K.Compiled(work, target)(*arrays)
    return K.unpack_activation(got, oc).astype(np.int64), expected


U8_RELU = K.Epilogue("fixed", out_dtype="uint8", zero_point=0, qmin=0, qmax=255)


@pytest.mark.parametrize("case", [
    dict(ic=64, oc=40, hw=10, k=3, stride=1, pad=1, epilogue=U8_RELU),
    dict(ic=3, oc=32, hw=15, k=3, stride=2, pad=1,
         epilogue=K.Epilogue("fixed", out_dtype="int8", zero_point=-3, qmin=-128, qmax=127)),
    dict(ic=32, oc=32, hw=9, k=1, stride=1, pad=0, epilogue=K.Epilogue("int32")),
    dict(ic=32, oc=48, hw=11, k=3, stride=1, pad=1,
         epilogue=K.Epilogue("scale", out_dtype="uint8", zero_point=100, qmin=100, qmax=255)),
    dict(ic=32, oc=64, hw=7, k=3, stride=1, pad=1, epilogue=U8_RELU),
], ids=["3x3-u8-padded-oc", "stem-c3-stride2-int8", "1x1-int32", "3x3-float-scale-relu",
        "7x7-tile-7x4"])
def test_int8_conv_is_exact_on_host(case):
    got, expected = _int8_conv_case(HOST, np.random.default_rng(0), **case)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name, isa", FALLBACKS)
def test_int8_conv_fallbacks_are_exact(name, isa):
    """Without VNNI: vpmaddwd on 16-bit pairs (isa avx512/avx2) or int32 multiply-adds that
    LLVM vectorises (no isa). Both exact, including the all-255 × −128 input that saturates
    pmaddubsw's 16-bit pair sums."""
    target = resolve(name)
    assert not target.vnni
    rng = np.random.default_rng(1)
    got, expected = _int8_conv_case(target, rng, ic=32, oc=32, hw=8, k=3, stride=1, pad=1,
                                    epilogue=K.Epilogue("int32"), zp_in=255, isa=isa)
    np.testing.assert_array_equal(got, expected)
    x = np.full((1, 16, 4, 4), 255)
    w = np.full((16, 16, 1, 1), -128)
    work = K.Conv2d(1, 16, 4, 4, 16, (1, 1), dtype="int8", epilogue=K.Epilogue("int32"), isa=isa)
    out = K.Compiled(work, target)(K.pack_activation(x.astype(np.uint8), 16),
                                   K.pack_conv_weight(w.astype(np.int8), work),
                                   np.zeros(16, np.int32))
    assert (K.unpack_activation(out, 16) == 255 * -128 * 16).all()


@pytest.mark.parametrize("name, isa", [f for f in FALLBACKS if f[1] is not None])
def test_int8_conv_with_7_bit_weights_is_exact(name, isa):
    """Weights within [-64, 63] take vpmaddubsw (u8 × s8 pairs into 16 bits) + vpmaddwd by
    ones: exact, including the extremes 255 × -64 and 255 × 63, whose pair sums (-32640 and
    32130) come closest to the int16 limits."""
    target = resolve(name)
    rng = np.random.default_rng(3)
    got, expected = _int8_conv_case(target, rng, ic=32, oc=32, hw=8, k=3, stride=1, pad=1,
                                    epilogue=U8_RELU, zp_in=255, isa=isa, narrow=True)
    np.testing.assert_array_equal(got, expected)
    for value in (-64, 63):
        work = K.Conv2d(1, 16, 4, 4, 16, (1, 1), dtype="int8", epilogue=K.Epilogue("int32"),
                        isa=isa, narrow=True)
        assert work.reduce_group == 4
        out = K.Compiled(work, target)(K.pack_activation(np.full((1, 16, 4, 4), 255, np.uint8), 16),
                                       K.pack_conv_weight(np.full((16, 16, 1, 1), value, np.int8), work),
                                       np.zeros(16, np.int32))
        assert (K.unpack_activation(out, 16) == 255 * value * 16).all()


def test_grouped_conv_is_exact():
    got, expected = _int8_conv_case(HOST, np.random.default_rng(2), ic=64, oc=64, hw=7, k=3,
                                    stride=1, pad=1, groups=2, epilogue=U8_RELU)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_is_exact(stride):
    rng = np.random.default_rng(3)
    c, hw, zp = 40, 13, 17
    cp = K.padded_channels(c)
    x = rng.integers(0, 256, (1, c, hw, hw))
    w = rng.integers(-127, 128, (c, 1, 3, 3))
    epilogue = K.Epilogue("fixed", out_dtype="uint8", zero_point=4, qmin=4, qmax=200)
    work = K.Depthwise2d(1, cp, hw, hw, (3, 3), (stride, stride), (1, 1, 1, 1), dtype="int8",
                         epilogue=epilogue, pad_value=zp)
    bias = rng.integers(-3000, 3000, cp).astype(np.int32)
    mult, shift = K.fixed_point(rng.uniform(1e-3, 1e-2, cp))
    got = K.Compiled(work, HOST)(K.pack_activation(x.astype(np.uint8), 16, cp, fill=zp),
                                 K.pack_depthwise_weight(w.astype(np.int8), cp), bias, mult, shift)
    acc = ref.conv2d(x, w, (stride, stride), (1, 1, 1, 1), groups=c, pad_value=zp)
    expected = ref.requantize_fixed(acc + bias[:c, None, None], mult[:c], shift[:c], 4, 4, 200)
    np.testing.assert_array_equal(K.unpack_activation(got, c), expected)


@pytest.mark.parametrize("name, m", [("x86", 3), ("x86", 1)] + [(name, 3) for name, isa in FALLBACKS
                                                                 if isa])
def test_dense_is_exact(name, m):
    target = resolve(name)
    rng = np.random.default_rng(4)
    n, k = 40, 64
    a = rng.integers(0, 256, (m, k))
    w = rng.integers(-128, 128, (n, k))
    work = K.Dense(m, K.padded_channels(n), k, dtype="int8", **K.target_fields(target),
                   epilogue=K.Epilogue("scale", out_dtype="int8", zero_point=-7, qmin=-128, qmax=127))
    bias = rng.integers(-9000, 9000, work.n).astype(np.int32)
    scale = rng.uniform(1e-5, 1e-3, work.n).astype(np.float32)
    got = K.Compiled(work, target)(a.astype(np.uint8), K.pack_dense_weight(w.astype(np.int8), work),
                                   bias, scale)
    expected = ref.requantize_scale(ref.dense(a, w) + bias[:n], scale[:n], -7, -128, 127)
    np.testing.assert_array_equal(got[:, :n], expected)


def _asm(work, target_name):
    return K.Compiled(work, resolve(target_name)).module.inspect_source("asm")


@pytest.mark.parametrize("target, dtype, narrow, oc, size, tile", [
    ("cascadelake", "float32", False, 64, 56, (14, 2)),   # 3136 pixels: whole 14-pixel tiles
    ("cascadelake", "float32", False, 960, 7, (7, 3)),    # 49 pixels: 7 x 3 blocks, no waste
    ("cascadelake", "float32", False, 1280, 7, (7, 2)),   # 80 blocks: 3 does not divide them
    ("cascadelake", "int8", False, 512, 7, (7, 4)),
    ("cascadelake", "int8", False, 160, 7, (7, 2)),
    ("cascadelake", "float32", False, 16, 7, (14, 1)),    # one block: no 7-pixel tile fits
    ("skylake-avx512", "int8", True, 512, 7, (10, 2)),    # vpmaddubsw: two registers fewer
    ("haswell", "int8", False, 512, 7, (6, 1)),
])
def test_register_tiles(target, dtype, narrow, oc, size, tile):
    """The register tile of a CPU convolution: 14 pixels x 2 blocks on AVX-512 unless the
    pixel count is a multiple of 7 but not of 14 (7 x 7 outputs), where 7-pixel tiles with as
    many channel blocks as the registers allow compute no pixel twice."""
    work = K.Conv2d(1, 64, size, size, oc, (1, 1), dtype=dtype, narrow=narrow,
                    **K.target_fields(resolve(target)))
    assert work.register_tile == tile


def test_int8_kernels_use_the_intended_instructions():
    """VNNI: vpdpbusd; AVX-512 without VNNI: vpmaddwd on zmm; AVX2: vpmaddwd on ymm; the
    saturating vpmaddubsw only for 7-bit weights, where it cannot saturate."""
    def dense(target_name, narrow=False):
        return K.Dense(4, 32, 64, dtype="int8", epilogue=K.Epilogue("int32"), narrow=narrow,
                       **K.target_fields(resolve(target_name)))

    vnni, avx512, avx2 = _asm(dense("znver4"), "znver4"), _asm(dense("skylake-avx512"),
                                                               "skylake-avx512"), _asm(dense("haswell"), "haswell")
    assert vnni.count("vpdpbusd") >= 8  # the 4 × 2-block register tile, unrolled
    assert "vpmaddwd" not in vnni
    assert "vpdpbusd" not in avx512 and "%zmm" in avx512 and avx512.count("vpmaddwd") >= 8
    assert "vpdpbusd" not in avx2 and "%zmm" not in avx2 and avx2.count("vpmaddwd") >= 8
    assert not any("vpmaddubsw" in asm for asm in (vnni, avx512, avx2))
    # 7-bit weights: vpmaddubsw + vpmaddwd by ones without VNNI; VNNI keeps vpdpbusd
    for name, register in (("skylake-avx512", "%zmm"), ("haswell", "%ymm")):
        asm = _asm(dense(name, narrow=True), name)
        lines = [line for line in asm.splitlines() if "vpmaddubsw" in line]
        assert len(lines) >= 8 and all(register in line for line in lines)
        assert asm.count("vpmaddwd") >= len(lines)
    assert "vpmaddubsw" not in _asm(dense("znver4", narrow=True), "znver4")


def test_float_conv_matches_torch_with_fused_residual():
    torch.manual_seed(0)
    x = torch.randn(1, 24, 12, 12)
    w = torch.randn(32, 24, 3, 3) * 0.1
    b = torch.randn(32)
    res = torch.randn(1, 32, 6, 6)
    work = K.Conv2d(1, 32, 12, 12, 32, (3, 3), (2, 2), (1, 1, 1, 1), in_block=16,
                    epilogue=K.Epilogue("float", clamp=(0.0, 6.0), residual=True,
                                        clamp2=(0.0, float("inf"))))
    got = K.Compiled(work, HOST)(K.pack_activation(x.numpy(), 16, 32),
                                 K.pack_conv_weight(np.concatenate([w.numpy(), np.zeros((32, 8, 3, 3), np.float32)], 1), work),
                                 b.numpy(), K.pack_activation(res.numpy(), 16))
    expected = torch.relu(F.conv2d(x, w, b, stride=2, padding=1).clamp(0, 6) + res)
    torch.testing.assert_close(torch.from_numpy(K.unpack_activation(got, 32)), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", ["avx2", None])  # 6 pixels x 1 block; AVX-512's 14 x 2 or 7 x 2
@pytest.mark.parametrize("batch,oc,h,w,stride,avx512_tile", [
    (2, 64, 7, 7, 1, 7), (1, 48, 5, 9, 1, 14), (1, 32, 2, 2, 1, 4), (1, 64, 4, 6, 1, 14),
    (2, 32, 13, 13, 2, 7), (1, 64, 14, 9, 2, 7)])
def test_float_pointwise_conv_tiles_across_rows(isa, batch, oc, h, w, stride, avx512_tile):
    """1x1 float convolutions tile the output pixels in memory order, across row ends (a
    strided one gathers every other input pixel); the tail tile reads the last pixel again,
    and only the real pixels are stored."""
    torch.manual_seed(0)
    x, weight, b = torch.randn(batch, 24, h, w), torch.randn(oc, 24, 1, 1), torch.randn(oc)
    expected = F.conv2d(x, weight, b, stride=stride).clamp(0, 6)
    res = torch.randn(expected.shape)
    work = K.Conv2d(batch, 32, h, w, oc, (1, 1), (stride, stride), in_block=16, isa=isa,
                    epilogue=K.Epilogue("float", clamp=(0.0, 6.0), residual=True))
    assert work.flat_pixels
    tile = work.register_tile[0]
    assert tile == (min(6, expected.shape[2] * expected.shape[3]) if isa else avx512_tile)
    padded = np.zeros((oc, 32, 1, 1), np.float32)
    padded[:, :24] = weight.numpy()
    got = K.Compiled(work, HOST)(K.pack_activation(x.numpy(), 16, 32),
                                 K.pack_conv_weight(padded, work), b.numpy(),
                                 K.pack_activation(res.numpy(), 16))
    torch.testing.assert_close(torch.from_numpy(K.unpack_activation(got, oc)), expected + res,
                               rtol=1e-5, atol=1e-5)


def test_float_depthwise_and_dense_match_torch():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 9)
    w = torch.randn(16, 1, 3, 3)
    b = torch.randn(16)
    work = K.Depthwise2d(2, 16, 9, 9, (3, 3), (1, 1), (1, 1, 1, 1))
    got = K.Compiled(work, HOST)(K.pack_activation(x.numpy(), 16),
                                 K.pack_depthwise_weight(w.numpy(), 16), b.numpy())
    torch.testing.assert_close(torch.from_numpy(K.unpack_activation(got, 16)),
                               F.conv2d(x, w, b, padding=1, groups=16), rtol=1e-5, atol=1e-5)
    a, wd, bd = torch.randn(3, 50), torch.randn(20, 50), torch.randn(20)
    work = K.Dense(3, 32, 50, epilogue=K.Epilogue("float", clamp=(0.0, float("inf"))))
    got = K.Compiled(work, HOST)(a.numpy(), K.pack_dense_weight(wd.numpy(), work),
                                 np.concatenate([bd.numpy(), np.zeros(12, np.float32)]))
    torch.testing.assert_close(torch.from_numpy(got[:, :20]), torch.relu(F.linear(a, wd, bd)),
                               rtol=1e-5, atol=1e-5)


def test_fixed_point_multipliers():
    real = np.array([1e-6, 0.0123, 0.5, 0.999999999, 3.75])
    m, s = K.fixed_point(real)
    assert ((m >= 1 << 30) & (m < 1 << 31)).all()
    np.testing.assert_allclose(m.astype(np.float64) * 2.0 ** -s.astype(np.float64), real, rtol=2 ** -30)
    with pytest.raises(ValueError):
        K.fixed_point(np.array([0.0]))


def test_vnni_weight_layout_is_16_channels_by_4_bytes():
    work = K.Conv2d(1, 16, 4, 4, 32, (1, 1), dtype="int8", vnni=True, epilogue=K.Epilogue("int32"))
    w = np.arange(32 * 16).reshape(32, 16, 1, 1)
    packed = K.pack_conv_weight(w, work)
    assert packed.shape == (2, 1, 1, 1, 4, 16, 4)
    # [oc block, ic block, kh, kw, ic/4, oc in block, ic in group of 4]
    assert packed[1, 0, 0, 0, 2, 5, 3] == w[16 + 5, 2 * 4 + 3, 0, 0]


def test_quantize_and_dequantize_match_torch_fake_quant():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 3, 9, 10)) * 3).astype(np.float32)
    codes = K.Compiled(K.Quantize((2, 3, 9, 10), 4, 4, 0.023, 17, 0, 255), HOST)(x)
    fake = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), 0.023, 17, 0, 255).numpy()
    assert codes.shape == (2, 1, 9, 10, 4) and (codes[..., 3] == 17).all()  # padded channel
    back = K.Compiled(K.Dequantize((2, 3, 9, 10), 4, 4, 0.023, 17), HOST)(codes)
    np.testing.assert_array_equal(back, fake)  # bit-identical to the fake-quant graph


def test_requantizing_add_is_exact():
    rng = np.random.default_rng(6)
    shape = (1, 2, 6, 6, 16)
    a, b = (rng.integers(0, 256, shape).astype(np.uint8) for _ in range(2))
    work = K.AddRequant.between(shape, (0.021, 3), (0.047, 128), (0.061, 5), 5, 255)
    got = K.Compiled(work, HOST)(a, b)
    total = (a.astype(np.int64) - 3) * work.a_multiplier + (b.astype(np.int64) - 128) * work.b_multiplier
    np.testing.assert_array_equal(got, np.clip(((total + (1 << (work.shift - 1))) >> work.shift) + 5, 5, 255))
    real = np.clip(np.rint(((a - 3.0) * 0.021 + (b - 128.0) * 0.047) / 0.061) + 5, 5, 255)
    assert np.abs(got - real).max() <= 1 and (got != real).mean() < 0.01


def test_pooling_codes_is_exact():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (1, 32, 11, 11)).astype(np.uint8)
    work = K.Pool2d("max", 1, 32, 11, 11, (3, 3), (2, 2), (1, 1, 1, 1), dtype="uint8")
    got = K.unpack_activation(K.Compiled(work, HOST)(K.pack_activation(x, 16)), 32)
    np.testing.assert_array_equal(got, F.max_pool2d(torch.from_numpy(x).float(), 3, 2, 1).numpy())
    x = rng.integers(0, 256, (2, 32, 7, 7)).astype(np.uint8)
    requant = K.Requant.between(0.05, 9, 0.04, 2, 0, 255, "uint8", divisor=49)
    work = K.Pool2d("avg", 2, 32, 7, 7, (7, 7), (1, 1), dtype="uint8", requant=requant)
    got = K.unpack_activation(K.Compiled(work, HOST)(K.pack_activation(x, 16)), 32)
    total = (x.astype(np.int64) - 9).sum(axis=(2, 3), keepdims=True)
    expected = ref.requantize_fixed(total, [requant.multiplier], [requant.shift], 2, 0, 255, axis=0)
    np.testing.assert_array_equal(got, expected)
    assert np.abs(got - np.rint((x - 9.0).mean(axis=(2, 3), keepdims=True) * 0.05 / 0.04 + 2)).max() <= 1


def test_float_pooling_matches_torch():
    x = torch.randn(1, 16, 8, 8)
    packed = K.pack_activation(x.numpy(), 16)
    got = K.Compiled(K.Pool2d("max", 1, 16, 8, 8, (3, 3), (2, 2), (1, 1, 1, 1)), HOST)(packed)
    np.testing.assert_array_equal(K.unpack_activation(got, 16), F.max_pool2d(x, 3, 2, 1).numpy())
    # rows of several 8- and 5-pixel tiles, the padding read in place at both ends of a row
    for size, stride in ((32, 2), (20, 1)):
        rows = torch.randn(2, 32, size, size) - 3  # mostly negative: padding must not win
        work = K.Pool2d("max", 2, 32, size, size, (3, 3), (stride, stride), (1, 1, 1, 1))
        got = K.Compiled(work, HOST)(K.pack_activation(rows.numpy(), 16))
        np.testing.assert_array_equal(K.unpack_activation(got, 32),
                                      F.max_pool2d(rows, 3, stride, 1).numpy())
    got = K.Compiled(K.Pool2d("avg", 1, 16, 8, 8, (8, 8), (1, 1)), HOST)(packed)
    torch.testing.assert_close(torch.from_numpy(K.unpack_activation(got, 16)),
                               x.mean(dim=(2, 3), keepdim=True), rtol=1e-5, atol=1e-6)


def test_float_scale_requantization_rounds_ties_to_even():
    """acc·0.5 lands on .5 for every odd accumulator: the kernel must round those like np.rint
    (and torch), not away from zero."""
    k = 4
    a = np.arange(16, dtype=np.int64).reshape(4, 4) % 3
    w = np.ones((16, k), np.int64)
    work = K.Dense(4, 16, k, dtype="int8", vnni=HOST.vnni,
                   epilogue=K.Epilogue("scale", out_dtype="int8", zero_point=0, qmin=-128, qmax=127))
    bias = np.arange(-8, 8, dtype=np.int32)
    scale = np.full(16, 0.5, np.float32)
    got = K.Compiled(work, HOST)(a.astype(np.uint8), K.pack_dense_weight(w.astype(np.int8), work),
                                 bias, scale)
    acc = ref.dense(a, w) + bias
    assert (acc % 2 == 1).any()
    np.testing.assert_array_equal(got, np.rint(acc * 0.5))


@pytest.mark.parametrize("ic, oc, h, w, k, stride, pad, dil, groups, batch", [
    (16, 16, 7, 7, (7, 7), (1, 1), (0, 0, 0, 0), (1, 1), 1, 1),     # window = image: 1×1 out
    (32, 16, 11, 13, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1, 1),  # dilation, odd width
    (16, 48, 6, 6, (1, 3), (1, 2), (0, 1, 0, 1), (1, 1), 1, 2),    # 1×3, asymmetric stride
    (64, 64, 5, 5, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 4, 1),    # 4 groups of one block
    (8, 16, 10, 10, (5, 5), (1, 1), (2, 1, 2, 1), (1, 1), 1, 1),   # in_block 8, uneven pads
])
def test_int8_conv_geometry_is_exact(ic, oc, h, w, k, stride, pad, dil, groups, batch):
    rng = np.random.default_rng(8)
    in_block = 16 if (ic // groups) % 16 == 0 else 8
    x = rng.integers(0, 256, (batch, ic, h, w))
    wt = rng.integers(-127, 128, (oc, ic // groups) + k)
    work = K.Conv2d(batch, ic, h, w, oc, k, stride, pad, dil, groups, in_block, "int8",
                    K.Epilogue("int32"), pad_value=7, **K.target_fields(HOST))
    got = K.Compiled(work, HOST)(K.pack_activation(x.astype(np.uint8), in_block, fill=7),
                                 K.pack_conv_weight(wt.astype(np.int8), work), np.zeros(oc, np.int32))
    np.testing.assert_array_equal(K.unpack_activation(got, oc),
                                  ref.conv2d(x, wt, stride, pad, dil, groups, pad_value=7))
