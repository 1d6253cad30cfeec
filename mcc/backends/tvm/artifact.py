"""The compiled form of a model: a runnable :class:`Artifact` that saves as a directory.

The directory layout and calling convention are :mod:`mcc.runtime`'s (which loads it back
without compiling anything). :func:`metadata` assembles ``metadata.json``: everything needed to
call the library (input/output names, shapes, dtypes), to interpret it (the quantization
parameters of every quantizer, the inputs' and outputs' among them), and to reproduce it
(target, mcc/TVM versions, pipeline spec, tuning database hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mcc.backends.tvm.target import check_runnable, host_arch
from mcc.errors import ExportError
from mcc.io import default_mode
from mcc.runtime import CONSTANTS, FORMAT, FORMAT_VERSION, LIBRARY, METADATA, Runtime


class Artifact(Runtime):
    """A model compiled by :func:`mcc.backends.tvm.compile`, runnable in this process when it
    was compiled for this machine's architecture.

    ``artifact(x)`` returns the outputs as numpy arrays; ``artifact.save(path)`` writes the
    directory :func:`mcc.runtime.load` reads; ``artifact.metadata`` is ``metadata.json``.
    ``export_options`` go to TVM's ``export_library`` (an ARM target's cross compiler).
    A cross-compiled artifact (``runs_here`` false) only saves: calling it raises a
    :class:`~mcc.errors.TargetError` before its code is loaded (that would JIT another
    architecture's instructions); a CUDA artifact where TVM sees no GPU raises a
    :class:`~mcc.errors.BackendError` (see :class:`mcc.runtime.Runtime`).
    """

    def __init__(self, executable, constants: list[np.ndarray], metadata: dict,
                 export_options: dict | None = None):
        import tvm

        self.executable = executable
        self.constant_arrays = constants
        self.export_options = dict(export_options or {})
        self.runs_here = metadata["target"].get("arch", "x86_64") == host_arch()
        super().__init__(executable, [tvm.runtime.tensor(c) for c in constants], metadata)

    def _session(self) -> None:
        if not self.runs_here:
            check_runnable([], self.metadata["target"]["name"], arch=self.metadata["target"]["arch"])
        super()._session()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact directory at ``path`` (replacing an earlier artifact there)."""
        import tvm

        path = Path(path)
        if path.exists() and not (path / METADATA).exists() and (not path.is_dir() or any(path.iterdir())):
            raise ExportError(f"cannot write the artifact to {str(path)!r}: it exists and is not an "
                              "mcc artifact; choose a new directory name")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise ExportError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
        try:
            os.chmod(tmp, default_mode(0o777))  # mkdtemp's 0700 would hide it from other users
            self.executable.export_library(str(tmp / LIBRARY), **self.export_options)
            names = self.metadata["constants"]["names"]
            params = {n: tvm.runtime.tensor(c) for n, c in zip(names, self.constant_arrays)}
            (tmp / CONSTANTS).write_bytes(tvm.runtime.save_param_dict(params))
            meta = dict(self.metadata)
            meta["files"] = {name: _sha256(tmp / name) for name in (LIBRARY, CONSTANTS)}
            (tmp / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.metadata = meta
        return path


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def metadata(lowered, target, *, quantization: dict | None, pipeline: str | None,
             tuning: dict | None, name: str | None) -> dict:
    """``metadata.json`` for a lowered graph (see the module docstring)."""
    import tvm
    import tvm_ffi

    import mcc

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "target": {"kind": target.kind, **target.to_json()},
        "inputs": lowered.inputs,
        "outputs": lowered.outputs,
        "entry": "main",
        "calling_convention": "main(*inputs, *constants) -> output or tuple of outputs",
        "constants": {"file": CONSTANTS, "names": [f"c{i}" for i in range(len(lowered.constants))],
                      "bytes": int(sum(c.nbytes for c in lowered.constants))},
        "integer_units": lowered.integer_units,
        "float_ops": lowered.float_ops,
        "kernels": len(lowered.workloads),
        "quantization": quantization,
        "pipeline": pipeline,
        "tuning": tuning,
        "versions": {"mcc": mcc.__version__, "tvm": tvm.__version__,
                     "tvm_ffi": getattr(tvm_ffi, "__version__", "unknown")},
    }
