"""CUDA targets: names and bad architectures, and CUDA artifacts of the reference CNN and
MobileNetV2, float and int8, built on this machine (which has no GPU).

No GPU means the artifacts cannot be run here, so the tests check what was built: the CUDA C
TVM generated (every kernel spread over thread blocks and threads, every int8 convolution and
linear layer reducing with ``dp4a``, operands staged in shared memory), that NVRTC compiles it
for the architecture asked for (``mcc_tvm.compile`` does that as part of the build), and
that running or loading the artifact without a GPU is refused with an :class:`MccError`. The
computations themselves are the ones ``test_tvm_compile`` checks numerically on x86: the GPU
schedules reorder and bind loops of the same TensorIR, which TVM's schedule primitives verify.

Building needs TVM's CUDA compiler (NVRTC from the ``cuda-bindings`` and ``nvidia-cuda-nvrtc``
packages, or nvcc); where neither is usable the build tests are skipped with the reason.
"""

import json
import re

import numpy as np
import pytest
import torch

import mcc
from mcc.backends import tvm as mcc_tvm
from mcc.backends.tvm import cuda
from mcc.backends.tvm.target import host_arch
from mcc.errors import BackendError, MccError, TargetError
from mcc.quant import structure as st
from mcc.runtime import load
from mcc.zoo import fashion_mnist, fashion_mnist_loader, reference_cnn


def _toolchain_problem() -> str | None:
    try:
        cuda.valid_archs()
    except TargetError as e:
        return str(e)
    return None


needs_compiler = pytest.mark.skipif(_toolchain_problem() is not None,
                                    reason=f"no CUDA compiler for TVM: {_toolchain_problem()}")
no_gpu = cuda.visible_gpu() is None


# ---- targets ---------------------------------------------------------------------------------
@needs_compiler
@pytest.mark.parametrize("spec", ["cuda:sm_80", "CUDA:sm_80", {"kind": "cuda", "arch": "sm_80"}])
def test_cuda_target_names(spec):
    target = mcc_tvm.resolve(spec)
    assert target == mcc_tvm.CudaTarget("sm_80") and target.kind == "cuda"
    assert target.name == "cuda:sm_80" and target.compute_capability == (8, 0)
    tvm_target = target.tvm()
    assert tvm_target.kind.name == "cuda" and str(tvm_target.attrs["arch"]) == "sm_80"
    assert tvm_target.host.kind.name == "llvm"
    assert mcc_tvm.CudaTarget.from_json(target.to_json()) == target
    assert mcc_tvm.resolve(target) is target


@needs_compiler
def test_valid_archs_are_the_compilers_from_sm_75():
    archs = cuda.valid_archs()
    assert {"sm_75", "sm_80", "sm_86", "sm_89", "sm_90"} <= set(archs)
    assert all(int(a[3:]) >= cuda.MIN_ARCH for a in archs)


@needs_compiler
@pytest.mark.parametrize("spec", ["cuda:sm_50", "cuda:sm_999", "cuda:volta",
                                  {"kind": "cuda", "arch": "sm_61"}])
def test_an_arch_the_compiler_cannot_build_lists_the_valid_ones(spec):
    with pytest.raises(TargetError) as err:
        mcc_tvm.resolve(spec)
    for arch in cuda.valid_archs():
        assert arch in str(err.value)


def test_unknown_keys_of_a_cuda_dict_are_refused():
    with pytest.raises(TargetError, match="mcpu"):
        mcc_tvm.resolve({"kind": "cuda", "arch": "sm_80", "mcpu": "x"})


@needs_compiler
@pytest.mark.skipif(not no_gpu, reason="this machine has a GPU: 'cuda' resolves to it")
def test_plain_cuda_without_a_gpu_asks_for_an_arch():
    with pytest.raises(TargetError, match="cuda:sm_80"):
        mcc_tvm.resolve("cuda")


def test_missing_nvcc_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvcc")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TargetError, match="nvcc is not on PATH.*CUDA toolkit"):
        mcc_tvm.resolve("cuda:sm_80")


def test_unknown_target_mentions_cuda():
    with pytest.raises(MccError, match=r"cuda:sm_XX"):
        mcc_tvm.resolve("gpu")


# ---- artifacts --------------------------------------------------------------------------------
def kernels(source: str) -> dict[str, str]:
    """``name -> body`` of every ``__global__`` function in CUDA C ``source``."""
    parts = re.split(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(', source)
    return dict(zip(parts[1::2], parts[2::2]))


DP4A_CALL = "tvm_builtin_ptx_dp4a_u32_s32("  # TVM's wrapper of the PTX instruction


def check_gpu_code(artifact, arch: str, *, int8: bool) -> dict[str, str]:
    """What every CUDA artifact must be, returning its kernels: built for ``arch``, every
    kernel running on many threads, mcc's conv/dense kernels staging operands in shared memory
    and (int8) reducing with ``dp4a.u32.s32``, the other kernels without it."""
    meta = artifact.metadata
    assert meta["target"] == {"kind": "cuda", "name": f"cuda:{arch}", "arch": host_arch(),
                              "cuda_arch": arch}
    assert meta["float_ops"] == []
    source = cuda.cuda_source(artifact.executable)
    found = kernels(source)
    # one CUDA kernel per distinct mcc kernel (workloads that schedule alike share one)
    assert 0 < sum(n.startswith("mcc_") for n in found) <= meta["kernels"]
    for name, body in found.items():
        assert "threadIdx.x" in body, name  # no kernel runs on a single thread
        if name.startswith("mcc_"):
            assert "blockIdx.x" in body, name  # mcc's kernels spread over thread blocks
    reducing = {n: b for n, b in found.items() if re.match(r"mcc_(conv2d|dense)_\d+", n)}
    assert reducing
    for name, body in reducing.items():
        assert "__shared__" in body and "__syncthreads()" in body, name
        assert (DP4A_CALL in body) == int8, name
    for name, body in found.items():
        if name not in reducing:
            assert DP4A_CALL not in body, name
    assert ('asm volatile("dp4a.u32.s32' in source) == int8
    return found


def check_refused_without_gpu(artifact, x: np.ndarray, tmp_path) -> None:
    """Calling the artifact, or loading it, where no GPU is: a BackendError saying so."""
    path = artifact.save(tmp_path / "model.cuda")
    assert (path / "lib.so").stat().st_size > 0
    if no_gpu:
        with pytest.raises(BackendError, match="no GPU on this machine"):
            artifact(x)
        with pytest.raises(BackendError, match="no GPU on this machine"):
            load(path)


@pytest.fixture(scope="module")
def fashion():
    images, _ = fashion_mnist("test").tensors
    return reference_cnn(), images[:64]


@needs_compiler
def test_float_reference_cnn_builds_for_cuda(fashion, tmp_path):
    model, images = fashion
    graph, _ = mcc.compress(model, images, pipeline="fold-bn")
    artifact = mcc_tvm.compile(graph, "cuda:sm_75")
    found = check_gpu_code(artifact, "sm_75", int8=False)
    assert artifact.metadata["integer_units"] == 0
    assert any(n.startswith("mcc_conv2d") for n in found)
    assert any(n.startswith("mcc_dense") for n in found)
    check_refused_without_gpu(artifact, images.numpy(), tmp_path)


@needs_compiler
def test_int8_reference_cnn_builds_for_cuda_with_dp4a(fashion, tmp_path):
    model, images = fashion
    graph, _ = mcc.compress(model, images, pipeline="fold-bn,quantize")
    mcc.calibrate(graph, fashion_mnist_loader("train", batch_size=32, shuffle=True), num_batches=4)
    artifact = mcc_tvm.compile(graph, "cuda:sm_80", pipeline="fold-bn,quantize")
    check_gpu_code(artifact, "sm_80", int8=True)
    meta = artifact.metadata
    assert meta["integer_units"] == sum(u.kind in ("conv", "linear", "add") for u in st.units(graph))
    check_refused_without_gpu(artifact, images.numpy(), tmp_path)
    # the code NVRTC makes of it is a CUDA ELF (e_machine 190) for sm_80 (e_flags bits 8-15)
    cubin = cuda.compile_source(cuda.cuda_source(artifact.executable), "sm_80")
    assert cubin[:4] == b"\x7fELF" and int.from_bytes(cubin[18:20], "little") == 190
    assert (int.from_bytes(cubin[48:52], "little") >> 8) & 0xFF == 80


@pytest.fixture(scope="module")
def mobilenet():
    import torchvision
    from torch import nn

    model = torchvision.models.mobilenet_v2(weights=None)
    for m in model.modules():  # BatchNorm statistics of random inputs, so folding is not trivial
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    return model.eval(), torch.randn(1, 3, 64, 64)


@needs_compiler
@pytest.mark.parametrize("pipeline", ["fold-bn", "fold-bn,quantize"])
def test_mobilenet_v2_builds_for_cuda(mobilenet, pipeline, tmp_path):
    model, x = mobilenet
    graph, _ = mcc.compress(model, x, pipeline=pipeline)
    int8 = "quantize" in pipeline
    if int8:
        mcc.calibrate(graph, [torch.randn(4, 3, 64, 64) for _ in range(2)])
    artifact = mcc_tvm.compile(graph, "cuda:sm_90")
    found = check_gpu_code(artifact, "sm_90", int8=int8)
    assert any(n.startswith("mcc_depthwise2d") for n in found)  # MobileNetV2's 17 depthwise convs
    if int8:
        assert any(n.startswith("mcc_addrequant") for n in found)  # residual adds on codes
    check_refused_without_gpu(artifact, x.numpy(), tmp_path)


@needs_compiler
def test_cuda_takes_no_tuning_database(tmp_path):
    graph = mcc.trace(torch.nn.Linear(4, 2).eval(), torch.randn(1, 4))
    db = tmp_path / "x86.db"
    db.write_text("")
    with pytest.raises(BackendError, match="tuning database"):
        mcc_tvm.compile(graph, "cuda:sm_80", tuning=db)


@needs_compiler
@pytest.mark.skipif(not no_gpu, reason="with a GPU here, mcc compile also runs the artifact")
def test_cli_compile_for_cuda_saves_the_artifact_and_says_why_it_did_not_run(tmp_path, monkeypatch,
                                                                            capsys):
    from mcc.cli import main

    (tmp_path / "tinycnn.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def tiny():\n"
        "    torch.manual_seed(0)\n"
        "    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),\n"
        "                      nn.Linear(16 * 8 * 8, 10))\n"
        "    return m.eval(), torch.randn(1, 3, 8, 8)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code = main(["compile", "tinycnn:tiny", "-p", "fold-bn", "--target", "cuda:sm_86",
                 "-o", "tiny.cuda"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "compiled for cuda:sm_86" in out and "not run here: " in out and "no GPU" in out
    meta = json.loads((tmp_path / "tiny.cuda" / "metadata.json").read_text())
    assert meta["target"]["cuda_arch"] == "sm_86"
    assert main(["tune", "tinycnn:tiny", "-p", "fold-bn", "--target", "cuda:sm_86",
                 "-o", "t.db"]) == 2
    assert "CUDA kernels use mcc's GPU schedules" in capsys.readouterr().err
    assert not (tmp_path / "t.db").exists()
