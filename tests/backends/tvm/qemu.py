"""Run aarch64 artifacts on this x86 machine under qemu-user, to compare their outputs with x86's.

What it takes: ``qemu-aarch64-static`` (Debian ``qemu-user-static``), the aarch64 cross
compiler with its C library (``gcc-aarch64-linux-gnu``, ``libc6-dev-arm64-cross``), and the
aarch64 builds of ``libtvm_runtime.so`` and ``libtvm_ffi.so`` for this TVM release, which
``scripts/fetch_aarch64_runtime.py`` takes from the apache-tvm / apache-tvm-ffi aarch64 wheels
(``scripts/install-assets.sh`` runs it). :func:`unavailable` says which of them is missing.

``run_artifact.c`` (beside this file) is the program qemu runs: it loads ``lib.so`` with the
TVM runtime alone and calls the Relax VM's ``main``; tensors go in and out as TVM parameter
files. No Python runs on the aarch64 side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np

QEMU = "qemu-aarch64-static"
SYSROOT = Path("/usr/aarch64-linux-gnu")  # Debian's aarch64 C library, for qemu's loader
SOURCE = Path(__file__).with_name("aarch64") / "run_artifact.c"


def runtime_dir() -> Path:
    """Where the aarch64 TVM runtime libraries are (the same rule as the fetch script)."""
    import tvm

    default = Path.home() / ".cache" / "mcc" / f"aarch64-tvm-{tvm.__version__}"
    return Path(os.environ.get("MCC_AARCH64_TVM", default))


def unavailable() -> str | None:
    """Why aarch64 code cannot run here (None when it can)."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-user-static)"
    if shutil.which("aarch64-linux-gnu-gcc") is None or not (SYSROOT / "include" / "stdio.h").exists():
        return "the aarch64 C compiler and C library are not installed (gcc-aarch64-linux-gnu, " \
               "libc6-dev-arm64-cross)"
    libs = runtime_dir()
    if not all((libs / name).is_file() for name in ("libtvm_runtime.so", "libtvm_ffi.so")):
        return f"no aarch64 TVM runtime in {libs} (run python scripts/fetch_aarch64_runtime.py)"
    return None


def build_runner(directory: Path) -> Path:
    """``run_artifact.c`` compiled for aarch64 against the runtime libraries."""
    include = Path(sysconfig.get_paths()["purelib"]) / "tvm_ffi" / "include"
    exe = directory / "run_artifact"
    libs = runtime_dir()
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-std=c11", "-Wall", "-Werror", str(SOURCE),
                    "-o", str(exe), f"-I{include}", f"-L{libs}", "-Wl,--no-as-needed",
                    "-ltvm_runtime", "-ltvm_ffi"], check=True)
    return exe


def run(runner: Path, library: Path, inputs: list[np.ndarray], work: Path,
        constants: Path | None = None, n_constants: int = 0) -> list[np.ndarray]:
    """The outputs of ``main(*inputs, *constants)`` of the aarch64 ``library`` under qemu
    (``constants``: a parameter file holding ``c0 .. c{n_constants - 1}``)."""
    import tvm

    inputs_file, outputs_file = work / "inputs.params", work / "outputs.params"
    inputs_file.write_bytes(tvm.runtime.save_param_dict(
        {f"i{i}": tvm.runtime.tensor(np.ascontiguousarray(a)) for i, a in enumerate(inputs)}))
    env = dict(os.environ, QEMU_LD_PREFIX=str(SYSROOT), LD_LIBRARY_PATH=str(runtime_dir()))
    done = subprocess.run([QEMU, str(runner), str(library), str(constants or inputs_file),
                           str(n_constants), str(inputs_file), str(len(inputs)), str(outputs_file)],
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"run_artifact under qemu failed ({done.returncode}): {done.stderr}")
    outputs = tvm.runtime.load_param_dict(outputs_file.read_bytes())
    return [outputs[f"o{i}"].numpy() for i in range(len(outputs))]


def run_artifact(runner: Path, artifact: Path, inputs: list[np.ndarray], work: Path) -> list[np.ndarray]:
    """The outputs of a saved mcc artifact directory on ``inputs``, run under qemu."""
    import json

    names = json.loads((artifact / "metadata.json").read_text())["constants"]["names"]
    return run(runner, artifact / "lib.so", inputs, work, artifact / "constants.params", len(names))
