"""GMAC/s of mcc's x86 kernels (no tuning database: the hand-written schedules).

    python benchmarks/tvm_kernels.py [--target x86] [--threads N] [--json PATH]

Measures a 128×512×512 GEMM and the distinct convolutions of ResNet-18 (batch 1, 224×224) in
int8 (uint8 × int8 → int32, requantized to uint8 with a float scale, as ``compile`` does by
default), int7 (the same with 7-bit weights, ``quantize{weights=int7}``) and float32 (with a
ReLU), and MobileNetV2's depthwise layers in int8 and float32, and sums the convolutions into
ResNet-18's compute time. Each figure is the fastest of many single runs: on a machine shared
with other jobs that is the undisturbed speed, which the median of a busy machine is not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcc.backends.tvm import kernels as K  # noqa: E402
from mcc.backends.tvm.target import resolve  # noqa: E402

# ResNet-18 convolutions at 224×224: (in, out, size, kernel, stride, how many in the network)
RESNET18 = [(3, 64, 224, 7, 2, 1), (64, 64, 56, 3, 1, 4), (64, 128, 56, 3, 2, 1),
            (128, 128, 28, 3, 1, 3), (64, 128, 56, 1, 2, 1), (128, 256, 28, 3, 2, 1),
            (256, 256, 14, 3, 1, 3), (128, 256, 28, 1, 2, 1), (256, 512, 14, 3, 2, 1),
            (512, 512, 7, 3, 1, 3), (256, 512, 14, 1, 2, 1)]
# MobileNetV2 depthwise 3×3 layers: (channels, size, stride)
MOBILENET_DW = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1),
                (384, 14, 1), (576, 14, 1), (960, 7, 1)]


#: The kinds of kernel timed: float32, int8 (uint8 × int8) and int7 (uint8 × 7-bit weights,
#: ``quantize{weights=int7}``: ``vpmaddubsw`` on AVX2/AVX-512 without VNNI).
KINDS = ("int8", "int7", "float32")


def _random(shape, kind, rng):
    if kind == "uint8":
        return rng.integers(0, 256, shape).astype(np.uint8)
    if kind == "int8":
        return rng.integers(-127, 128, shape).astype(np.int8)
    if kind == "int7":
        return rng.integers(-64, 64, shape).astype(np.int8)
    return rng.standard_normal(shape).astype(np.float32)


def _fields(kind, target):
    """Workload fields: the dtype, the epilogue compile gives it (int8 requantized to uint8
    with a float scale, mcc's default ``requantize="scale"``; float32 with a ReLU), and the
    target's."""
    if kind == "float32":
        return {"dtype": "float32", "epilogue": K.Epilogue("float", clamp=(0.0, float("inf"))),
                **K.target_fields(target)}
    return {"dtype": "int8", "epilogue": K.Epilogue("scale", out_dtype="uint8", qmin=0, qmax=255),
            "narrow": kind == "int7", **K.target_fields(target)}


def _consts(w, channels, rng):
    if w.epilogue.kind == "float":
        return [rng.standard_normal(channels).astype(np.float32)]
    return [rng.integers(-1000, 1000, channels).astype(np.int32),
            rng.uniform(1e-4, 1e-3, channels).astype(np.float32)]


def _input(kind):
    return "float32" if kind == "float32" else "uint8"


def time_conv(ic, oc, size, k, stride, kind, target, rng, repeat):
    fields = _fields(kind, target)
    in_block = 16 if ic % 16 == 0 else (4 if fields["dtype"] == "int8" else ic)
    icp = -(-ic // in_block) * in_block
    w = K.Conv2d(1, icp, size, size, oc, (k, k), (stride, stride), (k // 2,) * 4,
                 in_block=in_block, **fields)
    data = K.pack_activation(_random((1, ic, size, size), _input(kind), rng), in_block, icp)
    weight = K.pack_conv_weight(_random((oc, ic, k, k), kind, rng), w)
    return w.macs, K.Compiled(w, target).seconds(data, weight, *_consts(w, oc, rng), repeat=repeat)


def time_depthwise(c, size, stride, kind, target, rng, repeat):
    w = K.Depthwise2d(1, c, size, size, (3, 3), (stride, stride), (1, 1, 1, 1),
                      **_fields(kind, target))
    data = K.pack_activation(_random((1, c, size, size), _input(kind), rng), 16)
    weight = K.pack_depthwise_weight(_random((c, 1, 3, 3), kind, rng), c)
    return w.macs, K.Compiled(w, target).seconds(data, weight, *_consts(w, c, rng), repeat=repeat)


def time_gemm(m, n, k, kind, target, rng, repeat):
    w = K.Dense(m, n, k, **_fields(kind, target))
    a = _random((m, k), _input(kind), rng)
    weight = K.pack_dense_weight(_random((n, k), kind, rng), w)
    return w.macs, K.Compiled(w, target).seconds(a, weight, *_consts(w, n, rng), repeat=repeat)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86")
    parser.add_argument("--threads", type=int, default=None, help="TVM threads (default: all)")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    target = resolve(args.target)
    rng = np.random.default_rng(0)
    kernel = "VNNI vpdpbusd" if target.vnni else f"vpmaddwd, {target.vector_bits}-bit"
    print(f"target {target.name} (mcpu {target.mcpu}; int8: {kernel}), "
          f"threads {os.environ.get('TVM_NUM_THREADS', 'all')}")
    results = {"target": target.to_json(), "threads": args.threads, "gemm": {}, "resnet18": {},
               "mobilenet_v2_depthwise": {}}
    for kind in KINDS:
        macs, sec = time_gemm(128, 512, 512, kind, target, rng, args.repeat)
        results["gemm"][kind] = {"ms": sec * 1e3, "gmacs": macs / sec / 1e9}
        print(f"GEMM 128x512x512 {kind:8s} {sec * 1e3:8.3f} ms {macs / sec / 1e9:7.1f} GMAC/s")
    for kind in KINDS:
        total_macs = total_sec = 0.0
        rows = []
        for ic, oc, size, k, stride, count in RESNET18:
            macs, sec = time_conv(ic, oc, size, k, stride, kind, target, rng, args.repeat)
            total_macs += macs * count
            total_sec += sec * count
            rows.append({"layer": f"{ic}->{oc} {size}x{size} k{k} s{stride}", "count": count,
                         "ms": sec * 1e3, "gmacs": macs / sec / 1e9})
            print(f"ResNet-18 conv {rows[-1]['layer']:24s} {kind:8s} {sec * 1e3:8.3f} ms "
                  f"{macs / sec / 1e9:7.1f} GMAC/s")
        results["resnet18"][kind] = {"layers": rows, "conv_ms": total_sec * 1e3,
                                      "gmacs": total_macs / total_sec / 1e9}
        print(f"ResNet-18 all convolutions {kind}: {total_sec * 1e3:.2f} ms "
              f"({total_macs / 1e9:.2f} GMAC, {total_macs / total_sec / 1e9:.1f} GMAC/s)")
    for kind in ("int8", "float32"):  # depthwise kernels multiply int32s: int7 changes nothing
        rows = []
        for c, size, stride in MOBILENET_DW:
            macs, sec = time_depthwise(c, size, stride, kind, target, rng, args.repeat)
            rows.append({"layer": f"dw {c} {size}x{size} s{stride}", "ms": sec * 1e3,
                         "gmacs": macs / sec / 1e9})
            print(f"MobileNetV2 {rows[-1]['layer']:22s} {kind:8s} {sec * 1e3:8.3f} ms "
                  f"{macs / sec / 1e9:7.1f} GMAC/s")
        results["mobilenet_v2_depthwise"][kind] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
