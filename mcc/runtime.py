"""Run a compiled mcc artifact from Python: numpy arrays in, numpy arrays out.

An artifact (written by :func:`mcc.backends.tvm.compile` / ``mcc compile``) is a directory::

    lib.so            the compiled Relax VM program and its kernels (TVM runtime library)
    constants.params  the packed weights and per-channel constants, TVM's parameter format
    metadata.json     inputs/outputs, target, quantization, versions, pipeline, tuning hash

``main`` takes the inputs followed by the constants in the order ``metadata["constants"]
["names"]`` lists; :func:`load` binds the constants once, so a :class:`Runtime` is called with
the inputs only::

    model = mcc.runtime.load("resnet18.int8")
    (logits,) = model(x)                      # x: float32 numpy array [1, 3, 224, 224]

Loading refuses, with a message saying what to do, an artifact whose target uses instructions
this CPU lacks, a CUDA artifact on a machine without its GPU, one built by another TVM release,
and a directory that is not an artifact.
Nothing here compiles: loading needs the TVM runtime and numpy only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mcc.errors import BackendError


def _use_every_core() -> None:
    """Give TVM's thread pool one thread per core this process may run on, unless the user
    chose (``TVM_NUM_THREADS``). Left alone, TVM 0.27 counts two hyper-threads per core on x86
    and starts half as many threads as there are CPUs: one on a 2-vCPU machine without
    hyper-threads, where ResNet-18 then ran 2× slower (fp32 64 against 31 ms). The pool reads
    the variable when it starts, at the first kernel call."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ.setdefault("TVM_NUM_THREADS", str(cores or 1))


_use_every_core()

FORMAT = "mcc-artifact"
FORMAT_VERSION = 1
LIBRARY, CONSTANTS, METADATA = "lib.so", "constants.params", "metadata.json"


def read_metadata(path: str | os.PathLike) -> dict:
    """``metadata.json`` of the artifact at ``path``, checked to be one mcc can read."""
    path = Path(path)
    file = path / METADATA
    if not path.is_dir() or not file.is_file():
        raise BackendError(f"{str(path)!r} is not an mcc artifact (no {METADATA} in it); "
                           "create one with mcc compile MODEL --target x86 -o DIR")
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BackendError(f"{str(file)!r} is unreadable ({e}); compile the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BackendError(f"{str(file)!r} does not describe an mcc artifact")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise BackendError(f"{str(path)!r} uses artifact format {meta.get('format_version')}, newer "
                           f"than this mcc reads ({FORMAT_VERSION}); upgrade mcc")
    return meta


def check_loadable(meta: dict) -> None:
    """Refuse an artifact this machine or this TVM cannot run."""
    import tvm

    target = meta.get("target", {})
    kind = target.get("kind", "llvm")
    if kind not in ("llvm", "cuda"):
        raise BackendError(f"this artifact was compiled for a {kind} device; this runtime runs "
                           "CPU and CUDA artifacts: compile again with --target x86, arm or "
                           "cuda:sm_XX")
    from mcc.backends.tvm.target import check_runnable

    # a CUDA artifact's host code (the VM that launches its kernels) is CPU code too
    check_runnable(target.get("features", []), target.get("name", "?"),
                   arch=target.get("arch", "x86_64"))
    if kind == "cuda":
        from mcc.backends.tvm.cuda import check_device

        check_device(target)
    built = str(meta.get("versions", {}).get("tvm", ""))
    if _release(built) != _release(tvm.__version__):
        raise BackendError(f"this artifact was built with TVM {built or 'unknown'} and this runtime "
                           f"has TVM {tvm.__version__}: TVM libraries do not load across "
                           "releases; compile the model again with this installation")


def _release(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


class Runtime:
    """A loaded program: call it with the inputs (numpy arrays) to get the outputs (a tuple).

    The device is set up on the first call, not here: a CUDA artifact compiled on a machine
    without a GPU is still an object that saves, and calling it raises a :class:`BackendError`
    saying why it cannot run here."""

    def __init__(self, executable, constants: list, metadata: dict):
        self.metadata = metadata
        self._executable = executable
        self._host_constants = constants
        self._vm = None

    def _session(self) -> None:
        """The VM on its device (the CPU, or the GPU of a CUDA artifact), with the constants
        copied there."""
        if self._vm is not None:
            return
        import tvm
        from tvm import relax

        target = self.metadata.get("target", {})
        if target.get("kind") == "cuda":
            from mcc.backends.tvm import cuda

            cuda.check_device(target)
            self.device = cuda.device()
            self._constants = [tvm.runtime.tensor(c.numpy(), self.device)
                               for c in self._host_constants]
        else:
            self.device = tvm.cpu()
            self._constants = self._host_constants
        self._vm = relax.VirtualMachine(self._executable, self.device)
        self._main = self._vm["main"]

    def unavailable(self) -> str | None:
        """Why this program cannot run on this machine (a CUDA artifact without its GPU, a
        cross-compiled one), or None when it can."""
        try:
            self._session()
        except BackendError as e:
            return str(e)
        return None

    @property
    def inputs(self) -> list[dict]:
        return self.metadata["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.metadata["outputs"]

    def _tensors(self, arrays) -> list:
        import tvm

        self._session()
        if len(arrays) != len(self.inputs):
            raise BackendError(f"the model takes {len(self.inputs)} input(s) "
                               f"({', '.join(i['name'] for i in self.inputs)}), got {len(arrays)}")
        out = []
        for array, spec in zip(arrays, self.inputs):
            array = np.asarray(array.detach().cpu().numpy() if hasattr(array, "detach") else array)
            if list(array.shape) != list(spec["shape"]):
                raise BackendError(f"input {spec['name']!r} must have shape {tuple(spec['shape'])} "
                                   f"(the shape it was compiled for), got {array.shape}")
            if array.dtype != np.dtype(spec["dtype"]):
                if array.dtype.kind != np.dtype(spec["dtype"]).kind:
                    raise BackendError(f"input {spec['name']!r} must be {spec['dtype']}, got "
                                       f"{array.dtype}")
                array = array.astype(spec["dtype"])
            out.append(tvm.runtime.tensor(np.ascontiguousarray(array), self.device))
        return out

    def __call__(self, *arrays) -> tuple[np.ndarray, ...]:
        inputs = self._tensors(arrays)  # sets up the device on the first call
        result = self._main(*inputs, *self._constants)
        if hasattr(result, "numpy"):
            return (result.numpy(),)
        return tuple(r.numpy() for r in result)

    def latency(self, *arrays, repeat: int = 20, warmup: int = 3) -> dict:
        """Median and minimum seconds of one call on ``arrays`` (zeros when none are given)."""
        if not arrays:
            arrays = [np.zeros(i["shape"], i["dtype"]) for i in self.inputs]
        args = [*self._tensors(arrays), *self._constants]
        self._vm.save_function("main", "mcc_timed", *args)
        timer = self._vm.time_evaluator("mcc_timed", self.device, number=1, repeat=repeat,
                                        min_repeat_ms=0, cooldown_interval_ms=0)
        for _ in range(warmup):
            self._main(*args)
        results = list(timer().results)
        return {"median": float(np.median(results)), "min": float(min(results)), "runs": repeat}


def load(path: str | os.PathLike) -> Runtime:
    """Load the artifact directory at ``path`` for this machine (see the module docstring)."""
    import tvm

    path = Path(path)
    meta = read_metadata(path)
    check_loadable(meta)
    try:
        lib = tvm.runtime.load_module(str(path / LIBRARY))
    except Exception as e:  # a truncated or foreign library
        raise BackendError(f"cannot load {str(path / LIBRARY)!r}: {type(e).__name__}: {e}; "
                           "compile the model again") from None
    try:
        params = tvm.runtime.load_param_dict((path / CONSTANTS).read_bytes())
    except Exception as e:
        raise BackendError(f"cannot read {str(path / CONSTANTS)!r}: {type(e).__name__}: {e}; "
                           "compile the model again") from None
    names = meta["constants"]["names"]
    missing = [n for n in names if n not in params]
    if missing:
        raise BackendError(f"{str(path / CONSTANTS)!r} lacks constants {missing[:5]}; the "
                           "artifact is incomplete: compile the model again")
    return Runtime(lib, [params[n] for n in names], meta)
