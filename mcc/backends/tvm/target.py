"""Compilation targets: a name the user types -> the LLVM CPU TVM compiles for, plus the
instruction-set features the generated code needs at run time.

x86 names are either ``x86`` (the CPU this process runs on, read from ``/proc/cpuinfo``) or one
of the CPUs in :data:`TARGETS`; ``arm`` and ``arm:CPU`` are aarch64 targets
(:mod:`mcc.backends.tvm.arm`), always cross-compiled. Each target records its architecture and
the ``/proc/cpuinfo`` flags its code uses, so that an artifact built for one CPU is refused,
with a clear message, on a machine that lacks them (the alternative is an illegal-instruction
crash).

TVM 0.27 accepts targets only as dicts (``Target({"kind": "llvm", "mcpu": "znver4"})``); the
string form raises.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from mcc.backends.tvm.arm import ARM_NAMES, ArmTarget, is_arm_name, resolve_arm
from mcc.errors import TargetError


@dataclass(frozen=True)
class CpuTarget:
    """One x86 CPU to compile for.

    ``features`` are the ``/proc/cpuinfo`` flags the generated code may use; ``vnni`` says the
    int8 kernels use ``vpdpbusd`` (AVX-512 VNNI), otherwise ``vpmaddwd`` on 16-bit pairs
    (exact, unlike the saturating ``vpmaddubsw``); ``vector_bits`` is the SIMD width the schedules tile for.
    """

    name: str
    mcpu: str
    features: tuple[str, ...]
    vnni: bool
    vector_bits: int
    num_cores: int

    arch = "x86_64"
    kind = "llvm"  # TVM's target kind, what artifacts record

    @property
    def lanes32(self) -> int:
        """32-bit lanes in one vector register (16 with AVX-512, 8 with AVX2)."""
        return self.vector_bits // 32

    def tvm(self):
        """The ``tvm.target.Target`` for this CPU."""
        import tvm

        return tvm.target.Target({"kind": "llvm", "mcpu": self.mcpu, "num-cores": self.num_cores})

    def key(self) -> str:
        """What tuning records and artifacts are keyed by: the LLVM CPU name."""
        return self.mcpu

    def kernel_fields(self) -> dict:
        """How the kernels fit this CPU (see :func:`mcc.backends.tvm.kernels.target_fields`):
        ``vpdpbusd`` with VNNI, else ``vpmaddwd`` on zmm (AVX-512) or ymm (AVX2)."""
        return {"vnni": bool(self.vnni), "isa": "avx512" if self.vector_bits == 512 else "avx2"}

    def export_options(self) -> dict:
        """``export_library`` options: none, the host's C compiler links x86 code."""
        return {}

    def to_json(self) -> dict:
        return {"name": self.name, "arch": self.arch, "mcpu": self.mcpu,
                "features": list(self.features), "vnni": self.vnni,
                "vector_bits": self.vector_bits, "num_cores": self.num_cores}

    @classmethod
    def from_json(cls, data: dict) -> "CpuTarget":
        return cls(data["name"], data["mcpu"], tuple(data["features"]), bool(data["vnni"]),
                   int(data["vector_bits"]), int(data["num_cores"]))

    def missing_on_host(self, cpuinfo: str | None = None) -> list[str]:
        """The ``/proc/cpuinfo`` flags this target's code uses that this CPU lacks."""
        _, flags = cpu_flags(cpuinfo)
        return [f for f in self.features if f not in flags]


_AVX2 = ("avx2", "fma")
_AVX512 = _AVX2 + ("avx512f", "avx512bw", "avx512dq", "avx512vl")
_VNNI = _AVX512 + ("avx512_vnni",)

#: Named targets: LLVM CPU, the cpuinfo flags its code may use, VNNI, vector width.
TARGETS: dict[str, tuple[str, tuple[str, ...], bool, int]] = {
    "znver4": ("znver4", _VNNI, True, 512),
    "icelake-server": ("icelake-server", _VNNI, True, 512),
    "cascadelake": ("cascadelake", _VNNI, True, 512),
    "skylake-avx512": ("skylake-avx512", _AVX512, False, 512),
    "haswell": ("haswell", _AVX2, False, 256),
}

VALID = ("x86",) + tuple(TARGETS) + ARM_NAMES


def cpu_flags(cpuinfo: str | None = None) -> tuple[str, set[str]]:
    """``(vendor, flags)`` of this machine's first CPU from ``/proc/cpuinfo`` (or the given text):
    x86's ``flags``, aarch64's ``Features``."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError as e:
            raise TargetError(f"cannot read /proc/cpuinfo to detect the host CPU ({e}); name the "
                              f"target instead: one of {', '.join(TARGETS)}") from None
    vendor, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return vendor, flags


def host_name(cpuinfo: str | None = None) -> str:
    """The named target that best matches this CPU's flags (AMD with VNNI -> znver4...)."""
    vendor, flags = cpu_flags(cpuinfo)
    if set(_VNNI) <= flags:
        return "znver4" if vendor == "AuthenticAMD" else "cascadelake"
    if set(_AVX512) <= flags:
        return "skylake-avx512"
    if set(_AVX2) <= flags:
        return "haswell"
    raise TargetError("this CPU has neither AVX-512 nor AVX2+FMA (flags checked: "
                      f"{', '.join(_AVX2)}); mcc's x86 kernels need at least AVX2. Name a "
                      f"target to cross-compile: one of {', '.join(TARGETS)}")


def resolve(target: "str | dict | CpuTarget | ArmTarget", cpuinfo: str | None = None):
    """The target for a name: ``x86`` (this CPU), one of :data:`TARGETS`, ``arm`` or ``arm:CPU``;
    ``cuda``, ``cuda:sm_XX`` or a CUDA dict (:mod:`mcc.backends.tvm.cuda`)."""
    if isinstance(target, (CpuTarget, ArmTarget)):
        return target
    from mcc.backends.tvm import cuda

    if cuda.is_cuda(target):
        return cuda.resolve(target)
    if is_arm_name(target):
        return resolve_arm(target)
    if not isinstance(target, str) or target.strip().lower() not in VALID:
        raise TargetError(f"unknown target {target!r}: valid targets are {', '.join(VALID)} "
                          "(x86 = this machine's CPU) and cuda:sm_XX (an NVIDIA GPU, e.g. "
                          "cuda:sm_80)")
    name = target.strip().lower()
    cores = os.cpu_count() or 1
    if name == "x86":
        name = host_name(cpuinfo)
    mcpu, features, vnni, bits = TARGETS[name]
    return CpuTarget(name, mcpu, features, vnni, bits, cores)


def host_arch() -> str:
    """This machine's architecture as targets name it (``x86_64``, ``aarch64``)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def check_runnable(features, name: str, cpuinfo: str | None = None, arch: str = "x86_64") -> None:
    """Refuse to run code built for ``name`` on another architecture, or on a CPU that lacks
    one of its ``features``."""
    if arch != host_arch():
        raise TargetError(f"this artifact is {arch} code (compiled for {name}) and this machine is "
                          f"{host_arch()}: copy the artifact directory to an {arch} machine and "
                          "load it there")
    _, flags = cpu_flags(cpuinfo)
    missing = [f for f in features if f not in flags]
    if missing and arch == "aarch64":
        raise TargetError(f"this artifact was compiled for {name} and uses {', '.join(missing)}, "
                          "which this CPU lacks (asimddp = dotprod); compile it again with "
                          "--target arm (NEON only) or the arm:CPU of this board")
    if missing:
        raise TargetError(f"this artifact was compiled for {name} and uses {', '.join(missing)}, "
                          f"which this CPU lacks; compile it again with --target x86 (this "
                          f"machine: {host_name(cpuinfo) if set(_AVX2) <= flags else 'no AVX2'})")
