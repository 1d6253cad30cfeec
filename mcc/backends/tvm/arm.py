"""aarch64 Linux targets: ``arm`` (any 64-bit ARM CPU) or ``arm:CPU`` for a named core.

mcc cross-compiles for them on any host: TVM's LLVM emits the aarch64 code, and Debian's
``gcc-aarch64-linux-gnu`` links the artifact's ``lib.so`` (TVM 0.27 links with the C compiler
it is given, ``export_library(path, cc="aarch64-linux-gnu-gcc")``). The artifact runs on the
board, not in the compiling process.

Every ARMv8-A core has NEON (Advanced SIMD): float kernels use ``fmla`` on 4 float lanes, int8
kernels without the dot-product extension multiply-add on values widened to 32 bits. Cores with
``dotprod`` (ARMv8.2-A and later: Cortex-A55, A76, Neoverse N1/V1, Apple M1) run the int8
convolutions and dense layers on ``sdot``, 16 signed byte products added into 4 int32 lanes per
instruction (see :mod:`mcc.backends.tvm.intrinsics` for how uint8 activations get there).
Cortex-A53 and A72 (Raspberry Pi 3 and 4) have no ``dotprod`` and take the NEON path.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from mcc.errors import TargetError

#: The C compiler that links aarch64 shared objects, and the Debian/Ubuntu package that has it.
CROSS_CC = "aarch64-linux-gnu-gcc"
CROSS_PACKAGE = "gcc-aarch64-linux-gnu"

_NEON, _DOTPROD = ("asimd",), ("asimd", "asimddp")

#: ``arm:NAME`` -> (LLVM CPU, the ``/proc/cpuinfo`` Features its code needs, typical core
#: count). ``asimddp`` (dotprod) makes the int8 kernels use ``sdot``; LLVM also vectorises some
#: loops with SVE for Neoverse V1. The core count only steers how finely a tuning search splits
#: parallel loops; the runtime uses the board's own cores.
ARM_CPUS: dict[str, tuple[str, tuple[str, ...], int]] = {
    "generic": ("generic", _NEON, 4),            # any ARMv8-A: what bare ``arm`` means
    "cortex-a53": ("cortex-a53", _NEON, 4),      # Raspberry Pi 3
    "cortex-a72": ("cortex-a72", _NEON, 4),      # Raspberry Pi 4
    "cortex-a55": ("cortex-a55", _DOTPROD, 4),   # phones' little cores
    "cortex-a76": ("cortex-a76", _DOTPROD, 4),   # phones' big cores, Raspberry Pi 5
    "neoverse-n1": ("neoverse-n1", _DOTPROD, 64),  # AWS Graviton2, Ampere Altra
    "neoverse-v1": ("neoverse-v1", _DOTPROD + ("sve",), 64),  # AWS Graviton3
    "m1": ("apple-m1", _DOTPROD, 8),             # Apple M1 under aarch64 Linux (Asahi)
}

#: The names ``resolve`` accepts for ARM: ``arm`` and ``arm:CPU`` for every CPU above.
ARM_NAMES = ("arm",) + tuple(f"arm:{cpu}" for cpu in ARM_CPUS if cpu != "generic")


def is_arm_name(name) -> bool:
    return isinstance(name, str) and name.strip().lower().split(":")[0] == "arm"


@dataclass(frozen=True)
class ArmTarget:
    """One aarch64 CPU to compile for. ``features`` are the ``/proc/cpuinfo`` Features its code
    needs (``asimd`` = NEON, ``asimddp`` = dotprod, ``sve``); ``dotprod`` says the int8 kernels
    use ``sdot``."""

    name: str
    mcpu: str
    features: tuple[str, ...]
    dotprod: bool
    num_cores: int

    arch = "aarch64"
    kind = "llvm"  # TVM's target kind, what artifacts record
    mtriple = "aarch64-linux-gnu"
    vector_bits = 128
    lanes32 = 4

    def kernel_fields(self) -> dict:
        """How the kernels fit this CPU: ``sdot`` tensor intrinsics with dotprod, NEON
        multiply-adds LLVM vectorises without (see :func:`mcc.backends.tvm.kernels.target_fields`)."""
        return {"vnni": False, "isa": "dotprod" if self.dotprod else "neon"}

    def tvm(self):
        import tvm

        mattr = ["+neon", "+dotprod"] if self.dotprod else ["+neon"]
        return tvm.target.Target({"kind": "llvm", "mtriple": self.mtriple, "mcpu": self.mcpu,
                                  "mattr": mattr, "num-cores": self.num_cores})

    def key(self) -> str:
        """What tuning records are keyed by: the target's name (``arm:cortex-a76``)."""
        return self.name

    def export_options(self) -> dict:
        """``export_library`` options that link the artifact: the aarch64 cross compiler."""
        return {"cc": cross_compiler()}

    def to_json(self) -> dict:
        return {"name": self.name, "arch": self.arch, "mtriple": self.mtriple, "mcpu": self.mcpu,
                "features": list(self.features), "dotprod": self.dotprod,
                "vector_bits": self.vector_bits, "num_cores": self.num_cores}

    @classmethod
    def from_json(cls, data: dict) -> "ArmTarget":
        return cls(data["name"], data["mcpu"], tuple(data["features"]), bool(data["dotprod"]),
                   int(data["num_cores"]))


def resolve_arm(name: str) -> ArmTarget:
    """The :class:`ArmTarget` for ``arm`` or ``arm:CPU``."""
    _, _, cpu = name.strip().lower().partition(":")
    cpu = cpu or "generic"
    if cpu not in ARM_CPUS:
        known = ", ".join(c for c in ARM_CPUS if c != "generic")
        raise TargetError(f"unknown ARM CPU {cpu!r} in target {name!r}: the arm target knows "
                          f"{known} (arm:CPU), or plain 'arm' for any ARMv8-A core (NEON only)")
    mcpu, features, cores = ARM_CPUS[cpu]
    return ArmTarget("arm" if cpu == "generic" else f"arm:{cpu}", mcpu, features,
                     "asimddp" in features, cores)


def cross_compiler() -> str:
    """The path of the aarch64 C compiler that links artifacts; a :class:`TargetError` naming
    the package to install when it is missing."""
    path = shutil.which(CROSS_CC)
    if path is None:
        raise TargetError(f"compiling for an ARM target needs the aarch64 cross compiler "
                          f"{CROSS_CC}, which is not on PATH: install it with "
                          f"'sudo apt-get install {CROSS_PACKAGE}' (Debian/Ubuntu)")
    return path
