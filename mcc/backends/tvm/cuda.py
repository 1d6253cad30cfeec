"""NVIDIA GPU targets: ``cuda:sm_80`` -> TVM's CUDA target, the compiler that builds it, and
the checks that keep a CUDA artifact from running where it cannot.

Names are ``cuda:sm_XX`` (any architecture from ``sm_75`` on that the installed CUDA compiler
knows), ``cuda`` (the GPU of this machine, when TVM sees one) or a TVM-style dict
``{"kind": "cuda", "arch": "sm_80"}``. CUDA artifacts build on machines without a GPU: TVM
generates CUDA C and compiles it with NVRTC (the ``cuda-bindings`` and ``nvidia-cuda-nvrtc``
packages, which PyTorch's CUDA wheels install) or, with ``TVM_CUDA_COMPILE_MODE=nvcc``, with
``nvcc``. The architectures a name may use are the ones that compiler lists, so an arch the
installation cannot build for fails at :func:`resolve`, not halfway through a build.

TVM 0.27 keeps the device code of an executable as CUDA C and its runtime compiles it (with
NVRTC) for the GPU it finds when the library is loaded; :func:`build` compiles it once more at
build time, for the target's architecture, so that code the CUDA compiler rejects fails here.
Code generated for ``sm_80`` may use what ``sm_80`` has, so :func:`check_device` refuses a
GPU of a lower compute capability, and a machine with no GPU, with a message instead of a
CUDA driver error.

The kernels' GPU schedules are in :mod:`mcc.backends.tvm.cuda_schedules`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import ClassVar

from mcc.errors import BackendError, TargetError

#: The oldest architecture mcc compiles for (Turing: dp4a and int8 tensor cores).
MIN_ARCH = 75


@dataclass(frozen=True)
class CudaTarget:
    """One NVIDIA GPU architecture to compile for, ``cuda_arch`` as ``sm_XX`` (what TVM's
    CUDA target calls ``arch``; ``arch`` is, as on every target, the CPU architecture of the
    library's host code: here the VM that launches the kernels, built for this machine)."""

    cuda_arch: str
    kind: ClassVar[str] = "cuda"

    @property
    def name(self) -> str:
        return f"cuda:{self.cuda_arch}"

    @property
    def arch(self) -> str:
        from mcc.backends.tvm.target import host_arch

        return host_arch()

    @property
    def compute_capability(self) -> tuple[int, int]:
        digits = self.cuda_arch.split("_")[1]
        return int(digits[:-1]), int(digits[-1])

    def tvm(self):
        """The ``tvm.target.Target``: CUDA device code, x86 host code (the VM's glue)."""
        import tvm

        return tvm.target.Target({"kind": "cuda", "arch": self.cuda_arch, "host": {"kind": "llvm"}})

    def key(self) -> str:
        return self.name

    def export_options(self) -> dict:
        """``export_library`` options: none, the host code is linked for this machine."""
        return {}

    def kernel_fields(self) -> dict:
        """Workload fields for mcc's kernels: int8 weights packed in groups of 4 input bytes,
        what one ``dp4a`` multiplies (the same packing as VNNI's)."""
        return {"vnni": False, "isa": "cuda"}

    def to_json(self) -> dict:
        return {"name": self.name, "arch": self.arch, "cuda_arch": self.cuda_arch}

    @classmethod
    def from_json(cls, data: dict) -> "CudaTarget":
        return cls(data["cuda_arch"])


def is_cuda(target) -> bool:
    """Whether ``target`` (a name, dict or target object) names a CUDA target."""
    if isinstance(target, CudaTarget):
        return True
    if isinstance(target, dict):
        return target.get("kind") == "cuda"
    return isinstance(target, str) and target.strip().lower().split(":")[0] == "cuda"


def resolve(target) -> CudaTarget:
    """The :class:`CudaTarget` for ``cuda``, ``cuda:sm_XX`` or ``{"kind": "cuda", "arch": ...}``."""
    if isinstance(target, CudaTarget):
        arch = target.cuda_arch
    elif isinstance(target, dict):
        extra = sorted(set(target) - {"kind", "arch"})
        if extra:
            raise TargetError(f"CUDA target {target!r}: unknown key(s) {', '.join(extra)}; a CUDA "
                              "target takes only kind and arch")
        arch = target.get("arch")
    else:
        _, _, arch = target.strip().lower().partition(":")
    if not arch:
        arch = _host_arch()
    if not isinstance(arch, str) or not re.fullmatch(r"sm_\d{2,3}", arch):
        raise TargetError(f"CUDA architecture {arch!r} is not of the form sm_XX (e.g. "
                          f"cuda:sm_80); valid here: {', '.join(valid_archs())}")
    if arch not in valid_archs():
        raise TargetError(f"cannot compile for CUDA {arch}: the installed compiler "
                          f"({compiler()}) with mcc's kernels supports {', '.join(valid_archs())}; "
                          "pick one of them (code built for an arch runs on GPUs of that or "
                          "higher compute capability)")
    return target if isinstance(target, CudaTarget) else CudaTarget(arch)


def _host_arch() -> str:
    gpu = visible_gpu()
    if gpu is None:
        raise TargetError("target 'cuda' means this machine's GPU, and TVM sees none here; name "
                          f"the architecture to compile for, e.g. cuda:sm_80 (valid: "
                          f"{', '.join(valid_archs())})")
    return "sm_" + gpu.replace(".", "")


def compiler() -> str:
    """The compiler TVM builds CUDA code with: ``nvrtc`` (its default) or ``nvcc``."""
    return os.environ.get("TVM_CUDA_COMPILE_MODE", "nvrtc").lower()


def cuda_root() -> str:
    """The CUDA toolkit whose headers (with CCCL) TVM's generated code includes.

    TVM looks for it at ``CUDA_PATH``, else two levels above ``nvcc`` on ``PATH``, which is
    wrong when that ``nvcc`` is a wrapper script (``/usr/local/bin/nvcc`` here): mcc finds the
    root itself and hands it to TVM while compiling."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda",
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None]
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    raise TargetError("TVM compiles CUDA code against the CUDA toolkit's headers and none were "
                      f"found (looked in {', '.join(c for c in candidates if c)}); install the "
                      "CUDA toolkit, or set CUDA_PATH to its root")


def valid_archs() -> tuple[str, ...]:
    """The architectures (``sm_XX``, from :data:`MIN_ARCH` on) the installed compiler builds."""
    cuda_root()
    mode = compiler()
    if mode == "nvrtc":
        numbers = _nvrtc_archs()
    elif mode == "nvcc":
        numbers = _nvcc_archs()
    else:
        raise TargetError(f"TVM_CUDA_COMPILE_MODE={mode!r}: TVM compiles CUDA with 'nvrtc' or "
                          "'nvcc'; unset the variable to use NVRTC")
    return tuple(f"sm_{n}" for n in sorted(set(numbers)) if n >= MIN_ARCH)


def _nvrtc_archs() -> list[int]:
    try:
        from cuda.bindings import nvrtc

        err, archs = nvrtc.nvrtcGetSupportedArchs()
    except Exception as e:  # the bindings or libnvrtc itself missing
        raise TargetError(f"TVM compiles CUDA with NVRTC here, which is not usable "
                          f"({type(e).__name__}: {e}); install it with pip install cuda-bindings nvidia-cuda-nvrtc "
                          "(PyTorch's CUDA wheels bring both), or set TVM_CUDA_COMPILE_MODE=nvcc "
                          "with the CUDA toolkit's nvcc on PATH") from None
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise TargetError(f"NVRTC cannot list its architectures ({err}); reinstall "
                          "nvidia-cuda-nvrtc")
    return [int(a) for a in archs]


def _nvcc_archs() -> list[int]:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise TargetError("TVM_CUDA_COMPILE_MODE=nvcc but nvcc is not on PATH; install the CUDA "
                          "toolkit, or unset the variable to compile with NVRTC")
    listing = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True).stdout
    return [int(n) for n in re.findall(r"\bsm_(\d+)\b", listing)]


def visible_gpu() -> str | None:
    """The compute capability (``"8.0"``) of the GPU TVM sees, or None (no GPU or driver)."""
    import tvm

    device = tvm.cuda(0)
    return str(device.compute_version) if device.exist else None


def check_device(meta_target: dict) -> None:
    """Refuse to run code built for ``meta_target`` (an artifact's ``metadata["target"]``)
    where there is no GPU, or one whose architecture the code was not built for."""
    arch = meta_target.get("cuda_arch")
    if not isinstance(arch, str) or not re.fullmatch(r"sm_\d{2,3}", arch):
        raise BackendError(f"this artifact's metadata names a CUDA target without a valid arch "
                           f"({arch!r}); compile the model again")
    target = CudaTarget(arch)
    gpu = visible_gpu()
    if gpu is None:
        raise BackendError(f"this artifact was compiled for an NVIDIA GPU ({target.name}) and TVM "
                           "sees no GPU on this machine (none, or no CUDA driver): run it on a "
                           "machine with one, or compile the model again with --target x86")
    major, minor = (int(v) for v in gpu.split(".")[:2])
    if (major, minor) < target.compute_capability:
        raise BackendError(f"this artifact was compiled for {target.cuda_arch} and this GPU is "
                           f"only sm_{major}{minor} (compute capability {gpu}); compile the model "
                           f"again with --target cuda:sm_{major}{minor} (or --target cuda on this "
                           "machine)")


def device():
    """The TVM device CUDA artifacts run on."""
    import tvm

    return tvm.cuda(0)


def build(module, target: CudaTarget):
    """Compile a lowered module for the GPU and check that its device code compiles.

    mcc's kernels arrive scheduled (marked so that dlight leaves them alone); TVM's CUDA
    pipeline legalizes and fuses the remaining Relax ops (layout changes, pads, the odd float
    op) and gives them dlight's default GPU schedules. TVM 0.27 keeps the device code as CUDA C
    in the executable and compiles it when the library is loaded on a GPU machine, so the
    source is compiled here once for ``target.cuda_arch`` (:func:`compile_source`): code that the
    CUDA compiler rejects fails now, with a :class:`BackendError`, not on the GPU machine."""
    import tvm

    executable = tvm.compile(module, target.tvm())
    compile_source(cuda_source(executable), target.cuda_arch)
    return executable


def compile_source(source: str, arch: str) -> bytes:
    """CUDA C compiled for ``arch`` with TVM's compiler (:func:`compiler`): a cubin from NVRTC,
    a fatbin from nvcc."""
    from tvm.support import nvcc

    mode = compiler()
    saved = os.environ.get("CUDA_PATH")
    os.environ["CUDA_PATH"] = cuda_root()
    try:
        fmt = "cubin" if mode == "nvrtc" else "fatbin"
        return bytes(nvcc.compile_cuda(source, target_format=fmt, arch=arch, compiler=mode))
    except Exception as e:  # compiler errors arrive as RuntimeError with the compiler's log
        raise BackendError(f"the CUDA code generated for {arch} does not compile with {mode}: "
                           f"{type(e).__name__}: {str(e)[-1500:]}") from None
    finally:
        if saved is None:
            del os.environ["CUDA_PATH"]
        else:
            os.environ["CUDA_PATH"] = saved


def cuda_source(executable) -> str:
    """The CUDA C that TVM generated for an executable (what the tests inspect)."""
    sources = [m.inspect_source() for m in _modules(executable.mod) if m.kind == "cuda"]
    return "\n".join(sources)


def _modules(module):
    yield module
    for imported in module.imports:
        yield from _modules(imported)
