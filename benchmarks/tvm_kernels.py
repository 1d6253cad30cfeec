"""GMAC/s of mcc's x86 kernels (no tuning database: the hand-written schedules).

    python benchmarks/tvm_kernels.py [--target x86] [--threads N] [--json PATH]

Measures a 128×512×512 GEMM and the distinct convolutions of ResNet-18 (batch 1, 224×224) in
int8 (uint8 × int8 → int32, requantized to uint8) and float32, and MobileNetV2's depthwise
layers, and sums the convolutions into ResNet-18's compute time. Each figure is the fastest of
many single runs: on a machine shared with other jobs that is the undisturbed speed, which the
median of a busy machine is not.
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


def _random(shape, dtype, rng):
    if dtype == "uint8":
        return rng.integers(0, 256, shape).astype(np.uint8)
    if dtype == "int8":
        return rng.integers(-127, 128, shape).astype(np.int8)
    return rng.standard_normal(shape).astype(np.float32)


def _epilogue(dtype):
    if dtype == "int8":
        return K.Epilogue("fixed", out_dtype="uint8", qmin=0, qmax=255)
    return K.Epilogue("float", clamp=(0.0, float("inf")))


def _consts(w, channels, rng):
    if w.epilogue.kind == "float":
        return [rng.standard_normal(channels).astype(np.float32)]
    m, s = K.fixed_point(rng.uniform(1e-4, 1e-3, channels))
    return [rng.integers(-1000, 1000, channels).astype(np.int32), m, s]


def time_conv(ic, oc, size, k, stride, dtype, target, rng, repeat):
    in_block = 16 if ic % 16 == 0 else (4 if dtype == "int8" else ic)
    icp = -(-ic // in_block) * in_block
    w = K.Conv2d(1, icp, size, size, oc, (k, k), (stride, stride), (k // 2,) * 4,
                 in_block=in_block, dtype=dtype, epilogue=_epilogue(dtype), **K.target_fields(target))
    data = K.pack_activation(_random((1, ic, size, size), "uint8" if dtype == "int8" else dtype, rng),
                             in_block, icp)
    weight = K.pack_conv_weight(_random((oc, ic, k, k), dtype, rng), w)
    return w.macs, K.Compiled(w, target).seconds(data, weight, *_consts(w, oc, rng), repeat=repeat)


def time_depthwise(c, size, stride, dtype, target, rng, repeat):
    w = K.Depthwise2d(1, c, size, size, (3, 3), (stride, stride), (1, 1, 1, 1), dtype=dtype,
                      epilogue=_epilogue(dtype), **K.target_fields(target))
    data = K.pack_activation(_random((1, c, size, size), "uint8" if dtype == "int8" else dtype, rng), 16)
    weight = K.pack_depthwise_weight(_random((c, 1, 3, 3), dtype, rng), c)
    return w.macs, K.Compiled(w, target).seconds(data, weight, *_consts(w, c, rng), repeat=repeat)


def time_gemm(m, n, k, dtype, target, rng, repeat):
    w = K.Dense(m, n, k, dtype=dtype, epilogue=_epilogue(dtype), **K.target_fields(target))
    a = _random((m, k), "uint8" if dtype == "int8" else dtype, rng)
    weight = K.pack_dense_weight(_random((n, k), dtype, rng), w)
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
    for dtype in ("int8", "float32"):
        macs, sec = time_gemm(128, 512, 512, dtype, target, rng, args.repeat)
        results["gemm"][dtype] = {"ms": sec * 1e3, "gmacs": macs / sec / 1e9}
        print(f"GEMM 128x512x512 {dtype:8s} {sec * 1e3:8.3f} ms {macs / sec / 1e9:7.1f} GMAC/s")
    for dtype in ("int8", "float32"):
        total_macs = total_sec = 0.0
        rows = []
        for ic, oc, size, k, stride, count in RESNET18:
            macs, sec = time_conv(ic, oc, size, k, stride, dtype, target, rng, args.repeat)
            total_macs += macs * count
            total_sec += sec * count
            rows.append({"layer": f"{ic}->{oc} {size}x{size} k{k} s{stride}", "count": count,
                         "ms": sec * 1e3, "gmacs": macs / sec / 1e9})
            print(f"ResNet-18 conv {rows[-1]['layer']:24s} {dtype:8s} {sec * 1e3:8.3f} ms "
                  f"{macs / sec / 1e9:7.1f} GMAC/s")
        results["resnet18"][dtype] = {"layers": rows, "conv_ms": total_sec * 1e3,
                                      "gmacs": total_macs / total_sec / 1e9}
        print(f"ResNet-18 all convolutions {dtype}: {total_sec * 1e3:.2f} ms "
              f"({total_macs / 1e9:.2f} GMAC, {total_macs / total_sec / 1e9:.1f} GMAC/s)")
    for dtype in ("int8", "float32"):
        rows = []
        for c, size, stride in MOBILENET_DW:
            macs, sec = time_depthwise(c, size, stride, dtype, target, rng, args.repeat)
            rows.append({"layer": f"dw {c} {size}x{size} s{stride}", "ms": sec * 1e3,
                         "gmacs": macs / sec / 1e9})
            print(f"MobileNetV2 {rows[-1]['layer']:22s} {dtype:8s} {sec * 1e3:8.3f} ms "
                  f"{macs / sec / 1e9:7.1f} GMAC/s")
        results["mobilenet_v2_depthwise"][dtype] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
