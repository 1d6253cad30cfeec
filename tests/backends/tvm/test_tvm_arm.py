"""The ARM (aarch64 Linux) target: names and errors, int8 kernels on sdot or plain NEON, and
cross-compiled artifacts of the reference CNN and MobileNetV2.

Everything is cross-compiled with gcc-aarch64-linux-gnu. The libraries are checked to be aarch64
ELF shared objects whose disassembly has ``sdot`` exactly when the CPU has dotprod; where
qemu-user and the aarch64 TVM runtime are installed (see ``qemu.py``) they also run: kernels
must equal the numpy integer references bit for bit, artifacts must give x86's outputs.
"""

import functools
import shutil
import subprocess

import numpy as np
import pytest
import torch
from tvm import relax

import mcc
from mcc.backends import tvm as mcc_tvm
from mcc.backends.tvm import build
from mcc.backends.tvm import kernels as K
from mcc.backends.tvm.arm import ARM_CPUS
from mcc.errors import TargetError
from mcc.runtime import load
from mcc.zoo import fashion_mnist, reference_cnn
from tests.backends.tvm import int8_reference as ref
from tests.backends.tvm import qemu
from tests.backends.tvm.test_tvm_compile import SIZE, rel_err, run_pipeline, torchvision_model

DOTPROD, NEON = "arm:cortex-a76", "arm:cortex-a72"  # a Raspberry Pi 5 and a Raspberry Pi 4
NO_QEMU = qemu.unavailable()
needs_qemu = pytest.mark.skipif(NO_QEMU is not None, reason=f"cannot run aarch64 code: {NO_QEMU}")
needs_cc = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                              reason="gcc-aarch64-linux-gnu is not installed")
EM_AARCH64 = 183  # ELF e_machine


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return qemu.build_runner(tmp_path_factory.mktemp("runner"))


# ---- targets ----------------------------------------------------------------------------------
def test_arm_targets():
    generic = mcc_tvm.resolve("arm")
    assert generic.name == "arm" and generic.mcpu == "generic" and not generic.dotprod
    assert generic.kernel_fields() == {"vnni": False, "isa": "neon"}
    for cpu, (mcpu, features, _) in ARM_CPUS.items():
        if cpu == "generic":
            continue
        target = mcc_tvm.resolve(f"ARM:{cpu}")
        dotprod = target.dotprod
        assert target.name == f"arm:{cpu}" and target.mcpu == mcpu and target.features == features
        assert features[:2] == (("asimd", "asimddp") if dotprod else ("asimd",))
        assert type(target).from_json(target.to_json()) == target
        attrs = target.tvm().attrs
        assert attrs["mtriple"] == "aarch64-linux-gnu" and attrs["mcpu"] == mcpu
        assert ("+dotprod" in list(attrs["mattr"])) == dotprod
        assert mcc_tvm.resolve(target) is target
    assert {c for c, (_, f, _) in ARM_CPUS.items() if "asimddp" in f} == {
        "cortex-a55", "cortex-a76", "neoverse-n1", "neoverse-v1", "m1"}
    assert "sve" in mcc_tvm.resolve("arm:neoverse-v1").features  # measured: its code has SVE


def test_unknown_arm_cpu_lists_the_known_ones():
    with pytest.raises(TargetError) as err:
        mcc_tvm.resolve("arm:cortex-x9")
    for cpu in ARM_CPUS:
        if cpu != "generic":
            assert cpu in str(err.value)
    with pytest.raises(TargetError, match="arm:cortex-a76"):  # the x86 error lists ARM names too
        mcc_tvm.resolve("sparc")


def test_missing_cross_compiler_names_the_package(monkeypatch, tmp_path):
    graph = mcc.trace(torch.nn.Conv2d(3, 8, 3).eval(), torch.randn(1, 3, 8, 8))
    monkeypatch.setenv("PATH", str(tmp_path))  # no aarch64-linux-gnu-gcc on it
    with pytest.raises(TargetError, match="apt-get install gcc-aarch64-linux-gnu"):
        mcc_tvm.compile(graph, DOTPROD)


def test_aarch64_artifacts_are_checked_against_the_machine(monkeypatch):
    """On x86 an aarch64 artifact is refused; on an aarch64 board without dotprod (cpuinfo's
    ``asimddp``) a dotprod artifact is refused, with what to do."""
    from mcc.backends.tvm import target as target_module

    a72 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    a76 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics asimdrdm lrcpc dcpop asimddp\n"
    dotprod, neon = mcc_tvm.resolve(DOTPROD), mcc_tvm.resolve(NEON)
    with pytest.raises(TargetError, match="aarch64 code .* this machine is x86_64"):
        target_module.check_runnable(dotprod.features, dotprod.name, a76, arch="aarch64")
    monkeypatch.setattr(target_module, "host_arch", lambda: "aarch64")
    with pytest.raises(TargetError, match="asimddp"):
        target_module.check_runnable(dotprod.features, dotprod.name, a72, arch="aarch64")
    target_module.check_runnable(dotprod.features, dotprod.name, a76, arch="aarch64")
    target_module.check_runnable(neon.features, neon.name, a72, arch="aarch64")


def test_sdot_bias_offset_and_its_overflow():
    """The lowering adds 128·Σw per output channel to the int32 bias of an sdot kernel, and
    refuses a bias that no longer fits int32."""
    from mcc.backends.tvm.lower import _offset_bias
    from mcc.errors import BackendError

    weight = np.array([[1, -2, 3, 4], [-128, -128, 0, 0]], np.int8).reshape(2, 4, 1, 1)
    bias, scale = np.array([10, -20], np.int32), np.array([0.5, 0.25], np.float32)
    shifted, same_scale = _offset_bias([bias, scale], weight, 128)
    np.testing.assert_array_equal(shifted, [10 + 128 * 6, -20 - 128 * 256])
    assert shifted.dtype == np.int32 and same_scale is scale
    assert _offset_bias([bias], weight, 0)[0] is bias
    with pytest.raises(BackendError, match="overflows"):
        _offset_bias([np.array([2 ** 31 - 100, 0], np.int32)], weight, 128)


def test_tuning_an_arm_target_here_is_refused(tmp_path):
    from mcc.backends.tvm import tuning

    with pytest.raises(TargetError, match="cannot run aarch64 code"):
        tuning.tune([], mcc_tvm.resolve(DOTPROD), tmp_path / "arm.db")
    assert not (tmp_path / "arm.db").exists()


# ---- kernels ----------------------------------------------------------------------------------
def _kernel_library(work, target, path):
    """One kernel as a Relax ``main(inputs...) -> output``, built and linked for ``target``."""
    func = K.kernel(work)
    args = [relax.Var(f"a{i}", relax.TensorType([int(d) for d in p.ty.shape], p.ty.dtype))
            for i, p in enumerate(func.params[:-1])]
    bb = relax.BlockBuilder()
    with bb.function("main", args):
        gvar = bb.add_func(func, "kernel")
        shape, dtype = K.output_shape(work)
        bb.emit_func_output(bb.emit(relax.call_tir(gvar, args, relax.TensorType(shape, dtype))))
    build.build(bb.get(), target).export_library(str(path), **target.export_options())
    return path


def _disassembly(library) -> str:
    return subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(library)], check=True,
                          capture_output=True, text=True).stdout


def _count(asm: str, mnemonic: str) -> int:
    return sum(1 for line in asm.splitlines() if f"\t{mnemonic}\t" in line)


def _conv_case(target, rng, *, ic, oc, hw, k, stride, pad, zp, extreme=False):
    """An int8 conv for ``target`` with an int32 epilogue: (workload, arrays, expected NCHW)."""
    in_block = 16 if ic % 16 == 0 else 4
    icp = -(-ic // in_block) * in_block
    x = np.full((1, ic, hw, hw), 255) if extreme else rng.integers(0, 256, (1, ic, hw, hw))
    w = np.full((oc, ic, k, k), -128) if extreme else rng.integers(-128, 128, (oc, ic, k, k))
    work = K.Conv2d(1, icp, hw, hw, K.padded_channels(oc), (k, k), (stride, stride), (pad,) * 4,
                    in_block=in_block, dtype="int8", epilogue=K.Epilogue("int32"), pad_value=zp,
                    **K.target_fields(target))
    bias = rng.integers(-5000, 5000, work.out_channels).astype(np.int64)
    expected = ref.conv2d(x, w, (stride, stride), (pad,) * 4, pad_value=zp) + bias[:oc, None, None]
    # the lowering's bias: Σ (q − offset)·w + offset·Σw = Σ q·w
    full = np.zeros((work.out_channels, ic, k, k), np.int64)
    full[:oc] = w
    bias += K.activation_offset(work) * full.reshape(work.out_channels, -1).sum(1)
    arrays = [K.pack_activation(x.astype(np.uint8), in_block, icp, fill=zp),
              K.pack_conv_weight(full.astype(np.int8), work), bias.astype(np.int32)]
    return work, arrays, expected


def test_arm_kernels_are_not_run_on_x86():
    target = mcc_tvm.resolve(DOTPROD)
    work = K.Dense(1, 16, 16, dtype="int8", epilogue=K.Epilogue("int32"), **K.target_fields(target))
    with pytest.raises(TargetError, match="cannot run on this x86_64 machine"):
        K.Compiled(work, target)


@needs_cc
def test_int8_kernels_use_sdot_only_with_dotprod(tmp_path):
    """dotprod: the conv's register tile (6 pixels × 16 channels) is 6 × 4 sdot per 4 input
    channels, the dense layer's (1 row × 16) 4; LLVM unrolls the steps of one input block, so
    the counts are multiples of those. Without dotprod: no sdot; LLVM multiplies the widened
    bytes with smlal/smlal2 (16 × 16 -> 32 bits, exact)."""
    rng = np.random.default_rng(0)
    for name in (DOTPROD, NEON):
        target = mcc_tvm.resolve(name)
        conv, _, _ = _conv_case(target, rng, ic=32, oc=16, hw=12, k=1, stride=1, pad=0, zp=0)
        dense = K.Dense(1, 64, 64, dtype="int8", epilogue=K.Epilogue("int32"),
                        **K.target_fields(target))
        conv_asm = _disassembly(_kernel_library(conv, target, tmp_path / f"conv-{name[4:]}.so"))
        dense_asm = _disassembly(_kernel_library(dense, target, tmp_path / f"dense-{name[4:]}.so"))
        sdot = _count(conv_asm, "sdot"), _count(dense_asm, "sdot")
        print(f"{name}: sdot {sdot[0]} in the conv, {sdot[1]} in the dense kernel; smlal(2) "
              f"{_count(conv_asm, 'smlal') + _count(conv_asm, 'smlal2')} in the conv")
        if target.dotprod:
            assert conv.register_tile == (6, 1)
            assert sdot[0] >= 24 and sdot[0] % 24 == 0  # measured: 96, the 4 steps unrolled
            assert sdot[1] >= 4 and sdot[1] % 4 == 0    # measured: 64, all 16 steps unrolled
        else:
            assert sdot == (0, 0)
            assert _count(conv_asm, "smlal") + _count(conv_asm, "smlal2") > 0


@needs_qemu
@pytest.mark.parametrize("name", [DOTPROD, NEON])
def test_int8_kernels_are_exact_under_qemu(name, runner, tmp_path):
    """The aarch64 kernels' int32 outputs equal the numpy references: a padded 3×3 conv (zero
    point 9 in the padding), the 3-channel stem (input block 4), all-255 × −128 (the extreme
    products), and a dense layer."""
    target = mcc_tvm.resolve(name)
    rng = np.random.default_rng(1)
    cases = [dict(ic=32, oc=40, hw=9, k=3, stride=1, pad=1, zp=9),
             dict(ic=3, oc=16, hw=11, k=3, stride=2, pad=1, zp=200),
             dict(ic=16, oc=16, hw=4, k=1, stride=1, pad=0, zp=0, extreme=True)]
    for i, case in enumerate(cases):
        work, arrays, expected = _conv_case(target, rng, **case)
        library = _kernel_library(work, target, tmp_path / f"conv{i}.so")
        (got,) = qemu.run(runner, library, arrays, tmp_path)
        np.testing.assert_array_equal(K.unpack_activation(got, expected.shape[1]), expected)
    a, w = rng.integers(0, 256, (3, 64)), rng.integers(-128, 128, (40, 64))
    work = K.Dense(3, 48, 64, dtype="int8", epilogue=K.Epilogue("int32"), **K.target_fields(target))
    bias = rng.integers(-9000, 9000, 48)
    full = np.zeros((48, 64), np.int64)
    full[:40] = w
    shifted = bias + K.activation_offset(work) * full.sum(1)
    library = _kernel_library(work, target, tmp_path / "dense.so")
    (got,) = qemu.run(runner, library, [a.astype(np.uint8), K.pack_dense_weight(
        full.astype(np.int8), work), shifted.astype(np.int32)], tmp_path)
    np.testing.assert_array_equal(got[:, :40], ref.dense(a, w) + bias[:40])


# ---- artifacts ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _graph(model: str):
    """A calibrated int8 graph and the inputs it is compiled for: the reference CNN on 16
    Fashion-MNIST test images (calibrated on 256 others), MobileNetV2 (random weights, 64×64)
    on 2 random images."""
    if model == "reference-cnn":
        images = fashion_mnist("test").tensors[0][:272]
        graph = run_pipeline(reference_cnn(), images[:16], "fold-bn,quantize")
        mcc.calibrate(graph, list(images[16:].split(32)))
        return graph, images[:16].numpy()
    torch.manual_seed(2)
    x = torch.randn(2, 3, SIZE, SIZE)
    graph = run_pipeline(torchvision_model("mobilenet_v2"), x, "fold-bn,quantize")
    mcc.calibrate(graph, [torch.randn(8, 3, SIZE, SIZE) for _ in range(2)])
    return graph, x.numpy()


@pytest.fixture(scope="module", params=[(m, t) for m in ("reference-cnn", "mobilenet_v2")
                                        for t in (DOTPROD, NEON)], ids=lambda p: f"{p[0]}-{p[1]}")
def arm_artifact(request, tmp_path_factory):
    """(model, target name, graph, inputs, saved artifact directory), one per model and target."""
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("gcc-aarch64-linux-gnu is not installed")
    model, name = request.param
    graph, x = _graph(model)
    artifact = mcc_tvm.compile(graph, name)
    assert not artifact.runs_here and artifact.metadata["float_ops"] == []
    with pytest.raises(TargetError, match="aarch64 code"):
        artifact(x)
    path = artifact.save(tmp_path_factory.mktemp(model) / name.replace(":", "-"))
    return model, name, graph, x, path


def test_arm_artifact_is_aarch64_with_sdot_only_for_dotprod(arm_artifact):
    from mcc.backends.tvm import lower

    model, name, graph, _, path = arm_artifact
    header = (path / "lib.so").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[4] == 2  # ELF64
    assert int.from_bytes(header[16:18], "little") == 3  # ET_DYN: a shared object
    assert int.from_bytes(header[18:20], "little") == EM_AARCH64
    with pytest.raises(TargetError, match="aarch64 code"):
        load(path)
    sdot = _count(_disassembly(path / "lib.so"), "sdot")
    target = mcc_tvm.resolve(name)
    works = lower.lower(graph, target, schedule=K.kernel).workloads
    int8 = [w for w in works if isinstance(w, (K.Conv2d, K.Dense)) and w.dtype == "int8"]
    print(f"{model} {name}: {sdot} sdot, {len(int8)} int8 conv/dense kernels")
    if target.dotprod:  # every int8 conv and dense kernel: at least one group of 4 sdot
        assert all(K.activation_offset(w) == 128 for w in int8)
        assert sdot >= 4 * len(int8)
    else:
        assert int8 and not any(K.activation_offset(w) for w in int8)
        assert sdot == 0


_x86_outputs = {}


@needs_qemu
def test_arm_artifact_under_qemu_matches_x86(arm_artifact, runner, tmp_path):
    model, name, graph, x, path = arm_artifact
    if model not in _x86_outputs:
        _x86_outputs[model] = mcc_tvm.compile(graph, "x86")(x)[0]
    expected = _x86_outputs[model]
    (got,) = qemu.run_artifact(runner, path, [x], tmp_path)
    print(f"{model} {name}: max |arm - x86| {np.abs(got - expected).max():.3g}")
    np.testing.assert_array_equal(got, expected)


@needs_qemu
def test_float_reference_cnn_under_qemu_matches_pytorch(runner, tmp_path):
    """The float kernels on NEON (fmla, the same 6-pixel tiles) compute what PyTorch does."""
    model = reference_cnn()
    images = fashion_mnist("test").tensors[0][:16]
    artifact = mcc_tvm.compile(run_pipeline(model, images, "fold-bn"), DOTPROD)
    path = artifact.save(tmp_path / "fashion.fp32")
    (got,) = qemu.run_artifact(runner, path, [images.numpy()], tmp_path)
    with torch.no_grad():
        expected = model(images).numpy()
    print(f"float reference CNN on aarch64: rel. err. {rel_err(got, expected):.2e}")
    assert rel_err(got, expected) < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


@needs_cc
def test_cli_compiles_for_arm_and_reports_bad_targets(tmp_path, monkeypatch, capsys):
    """mcc compile --target arm:CPU writes the aarch64 artifact and says it was not run here; an
    unknown CPU and a missing cross compiler are one-line errors (status 2) before any work."""
    from mcc.cli import main

    (tmp_path / "armmodels.py").write_text(
        "import torch\nfrom torch import nn\n\ndef small():\n    torch.manual_seed(0)\n"
        "    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),\n"
        "                      nn.Linear(16 * 8 * 8, 10))\n"
        "    return m.eval(), torch.randn(1, 3, 8, 8)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype("float32"))
    args = ["compile", "armmodels:small", "-p", "quantize", "--calib", "calib.npy", "-o", "small.a55"]
    assert main(args + ["--target", "arm:cortex-a55"]) == 0
    out = capsys.readouterr().out
    assert "compiled for arm:cortex-a55 (dotprod): 2 integer units" in out
    assert "not run: aarch64 code for arm:cortex-a55" in out
    assert _count(_disassembly(tmp_path / "small.a55" / "lib.so"), "sdot") > 0
    assert main(args[:-1] + ["x9", "--target", "arm:cortex-x9"]) == 2
    assert "cortex-a53, cortex-a72, cortex-a55" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(args[:-1] + ["nocc", "--target", "arm"]) == 2
    err = capsys.readouterr().err
    assert "gcc-aarch64-linux-gnu" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x9").exists() and not (tmp_path / "nocc").exists()
