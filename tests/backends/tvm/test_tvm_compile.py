"""The TVM backend end to end: compiled artifacts compute what the graph computes.

* float artifacts of ResNet-18, MobileNetV2 and the reference CNN match PyTorch;
* int8 artifacts match the fake-quant graph: every quantized tensor layer by layer, the labels
  end to end, and the accuracy on Fashion-MNIST of the reference CNN and of ResNet-18 and
  MobileNetV2 trained on it here (at 32x32);
* artifacts save, load back with :func:`mcc.runtime.load` and give identical outputs; what is
  not a loadable artifact is refused with a :class:`~mcc.errors.BackendError`.

torchvision models run at 64x64 with random weights and their BatchNorm statistics estimated
on random inputs (so folding is not the identity and activations stay O(1): with torchvision's
initial statistics they shrink layer after layer until the int8 codes are all zero, which would
make any int8 comparison vacuous).
"""

import functools
import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch
import torchvision
from torch import fx, nn
from torch.nn import functional as F

import mcc
from mcc.backends import tvm as mcc_tvm
from mcc.backends.tvm import kernels as K
from mcc.backends.tvm import lower, tuning
from mcc.errors import BackendError, ExportError, MccError, TargetError
from mcc.quant import structure as st
from mcc.runtime import load
from mcc.zoo import fashion_mnist, fashion_mnist_loader, reference_cnn, resolve_evaluator, sample_photos

SIZE = 64
FASHION_BATCH = 500   # the reference CNN is compiled for batches of 500 images
FASHION_IMAGES = 2000  # the first 2,000 test images (the full 10,000 take ~20 s more)


def rel_err(got, ref) -> float:
    """max |got - ref| / max |ref|."""
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())


@functools.lru_cache(maxsize=None)
def torchvision_model(name: str) -> nn.Module:
    """Random weights, BatchNorm statistics estimated on random inputs, eval mode."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, 3, SIZE, SIZE))
    return model.eval()


def run_pipeline(model: nn.Module, x: torch.Tensor, spec: str) -> mcc.Graph:
    graph, _ = mcc.Pipeline.parse(spec).run(mcc.trace(model, x))
    return graph


# ---- float ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_float_torchvision_artifact_matches_pytorch(name):
    model = torchvision_model(name)
    torch.manual_seed(1)
    x = torch.randn(2, 3, SIZE, SIZE)
    graph = run_pipeline(model, x, "fold-bn")
    artifact = mcc_tvm.compile(graph, "x86")
    assert artifact.metadata["float_ops"] == [] and artifact.metadata["integer_units"] == 0
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = artifact(x.numpy())
    assert got.shape == expected.shape == (2, 1000) and got.dtype == np.float32
    print(f"{name}: float rel. err. {rel_err(got, expected):.2e}")
    assert rel_err(got, expected) < 1e-4
    (again,) = artifact(torch.randn(2, 3, SIZE, SIZE))  # torch tensors are accepted too
    assert np.isfinite(again).all()


@functools.lru_cache(maxsize=None)
def fashion_test_split() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fashion_mnist("test").tensors
    return images[:FASHION_IMAGES], labels[:FASHION_IMAGES]


def batched(fn, images: torch.Tensor) -> np.ndarray:
    return np.concatenate([np.asarray(fn(images[i:i + FASHION_BATCH]))
                           for i in range(0, len(images), FASHION_BATCH)])


def test_float_reference_cnn_artifact_matches_pytorch():
    model = reference_cnn()
    images, labels = fashion_test_split()
    graph = run_pipeline(model, images[:FASHION_BATCH], "fold-bn")
    artifact = mcc_tvm.compile(graph, "x86")
    with torch.no_grad():
        expected = batched(lambda x: model(x).numpy(), images)
    got = batched(lambda x: artifact(x.numpy())[0], images)
    print(f"reference CNN: float rel. err. {rel_err(got, expected):.2e}")
    assert rel_err(got, expected) < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.999


# ---- int8: the reference CNN on Fashion-MNIST ---------------------------------------------------
@pytest.fixture(scope="module")
def fashion_int8():
    """The reference CNN through fold-bn,quantize, calibrated on 32 batches of 32 training
    images, and its artifact (batches of 500)."""
    images, _ = fashion_test_split()
    graph = run_pipeline(reference_cnn(), images[:FASHION_BATCH], "fold-bn,quantize")
    mcc.calibrate(graph, fashion_mnist_loader("train", batch_size=32, shuffle=True), num_batches=32)
    return graph, mcc_tvm.compile(graph, "x86", pipeline="fold-bn,quantize", name="fashion-cnn")


def test_int8_reference_cnn_agrees_with_the_fake_quant_graph(fashion_int8):
    graph, artifact = fashion_int8
    meta = artifact.metadata
    assert meta["float_ops"] == []
    assert meta["integer_units"] == sum(u.kind in ("conv", "linear", "add") for u in st.units(graph))
    assert meta["requantize"] == "scale" and meta["quantization"]
    images, labels = fashion_test_split()
    with torch.no_grad():
        fake = batched(lambda x: graph(x).numpy(), images)
    got = batched(lambda x: artifact(x.numpy())[0], images)
    agreement = (got.argmax(1) == fake.argmax(1)).mean()
    accuracy = 100 * (got.argmax(1) == labels.numpy()).mean()
    fake_accuracy = 100 * (fake.argmax(1) == labels.numpy()).mean()
    print(f"top-1 agreement {100 * agreement:.2f}%, accuracy {accuracy:.2f}% "
          f"(fake-quant {fake_accuracy:.2f}%) on {len(images)} test images")
    assert agreement >= 0.99  # measured: 99.95% (2,000 images), 99.88% (10,000)
    assert abs(accuracy - fake_accuracy) <= 0.2
    assert accuracy >= 90.0


def test_int7_weights_take_pmaddubsw_without_vnni_and_stay_exact():
    """quantize{weights=int7}: on a CPU without VNNI the kernels switch to vpmaddubsw, which
    is exact for 7-bit weights; the artifact still gives the fake-quant graph's labels."""
    images, labels = fashion_test_split()
    graph = run_pipeline(reference_cnn(), images[:FASHION_BATCH], "fold-bn,quantize{weights=int7}")
    mcc.calibrate(graph, fashion_mnist_loader("train", batch_size=32, shuffle=True), num_batches=32)
    artifact = mcc_tvm.compile(graph, "x86")
    asm = artifact.executable.mod.imports[0].inspect_source("asm")
    if artifact.metadata["target"]["vnni"]:
        assert "vpdpbusd" in asm and "vpmaddubsw" not in asm
    else:
        assert asm.count("vpmaddubsw") >= 100  # measured: 314 (every conv and dense unit)
    with torch.no_grad():
        fake = batched(lambda x: graph(x).numpy(), images)
    got = batched(lambda x: artifact(x.numpy())[0], images)
    accuracy, fake_accuracy = (100 * (v.argmax(1) == labels.numpy()).mean() for v in (got, fake))
    print(f"int7 weights: top-1 agreement {100 * (got.argmax(1) == fake.argmax(1)).mean():.2f}%, "
          f"accuracy {accuracy:.2f}% (fake-quant {fake_accuracy:.2f}%)")
    assert (got.argmax(1) == fake.argmax(1)).mean() >= 0.99  # measured: 100%
    assert abs(accuracy - fake_accuracy) <= 0.2  # measured: 92.35 both (int8: 92.50)


def test_requantize_fixed_agrees_with_scale(fashion_int8):
    """The integer-only epilogue (int32 multiplier and shift) gives the same labels."""
    graph, artifact = fashion_int8
    fixed = mcc_tvm.compile(graph, "x86", requantize="fixed")
    assert fixed.metadata["requantize"] == "fixed"
    x = fashion_test_split()[0][:FASHION_BATCH].numpy()
    (a,), (b,) = artifact(x), fixed(x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99
    scale = artifact.metadata["outputs"][0]["quant"]["scale"]
    assert np.abs(a - b).max() <= 2 * scale + 1e-6  # at most a code or two apart


# ---- int8: torchvision models ------------------------------------------------------------------
class _Forced(fx.Interpreter):
    """Runs the fake-quant graph with every activation quantizer's output replaced by the
    artifact's, recording what the graph itself computed there: each layer's reference given
    exactly the inputs the compiled layer saw."""

    def __init__(self, module, forced: dict[str, torch.Tensor]):
        super().__init__(module)
        self.forced, self.reference = forced, {}

    def run_node(self, n):
        value = super().run_node(n)
        if n.name in self.forced:
            self.reference[n.name] = value
            return self.forced[n.name]
        return value


def _agreement(got: np.ndarray, ref: np.ndarray, scale: float) -> float:
    """Share of rows whose top-1 in ``got`` is a top-1 of ``ref`` (``ref``'s logits are codes
    of the output quantizer, so ties happen; a tie counts as agreement)."""
    rows = np.arange(len(got))
    return float((ref[rows, got.argmax(1)] >= ref.max(1) - 0.5 * scale).mean())


PLAIN_AGREEMENT = {"resnet18": 0.8, "mobilenet_v2": 0.5}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_int8_torchvision_artifact_matches_the_fake_quant_graph(name):
    model = torchvision_model(name)
    torch.manual_seed(2)
    n = 32
    graph = run_pipeline(model, torch.randn(n, 3, SIZE, SIZE), "fold-bn,quantize")
    mcc.calibrate(graph, [torch.randn(8, 3, SIZE, SIZE) for _ in range(2)])
    # Compile a copy that also returns every activation quantizer's output (dequantized).
    quantizers = [node.name for node, _ in st.activation_quantizers(graph)]
    probed = graph.copy()
    output = next(node for node in probed.nodes if node.op == "output")
    output.args = ((output.args[0], *[probed.node(q) for q in quantizers]),)
    probed.recompile()
    artifact = mcc_tvm.compile(probed, "x86")
    meta = artifact.metadata
    assert meta["float_ops"] == []
    assert meta["integer_units"] == sum(u.kind in ("conv", "linear", "add") for u in st.units(graph))
    assert len(meta["outputs"]) == 1 + len(quantizers)

    x = torch.randn(n, 3, SIZE, SIZE)
    logits, *probes = artifact(x.numpy())
    forced = _Forced(graph.module, {q: torch.from_numpy(p) for q, p in zip(quantizers, probes)})
    with torch.no_grad():
        forced.run(x)
    # Layer by layer: each quantized tensor is within one code of what the fake-quant graph
    # computes from the same input codes; codes differ only where the exact value lies within
    # rounding error of a rounding boundary (the int32 bias, float32 summation order).
    for q in quantizers:
        scale = float(graph.module.get_submodule(q).scale)
        codes = ((forced.forced[q] - forced.reference[q]).abs() / scale).round()
        assert codes.max() <= 1, q
        assert (codes > 0).float().mean() <= 0.0005, q  # measured: at most 0.009%

    # End to end. Random-weight networks are chaotic: the fake-quant graph agrees with its own
    # float model on only 75% (ResNet-18) and 25% (MobileNetV2) of these inputs, and the rare
    # one-code differences above grow through the blocks into different labels. Measured:
    # ResNet-18 90.6%, MobileNetV2 68.8% (28-50% before biases were quantized on the int32
    # grid). The same architectures trained on Fashion-MNIST (below) are the end-to-end check
    # that means something: 99.95% and 99.83%.
    with torch.no_grad():
        fake = graph(x).numpy()
        float_ = model(x).numpy()
    scale = meta["outputs"][0]["quant"]["scale"]
    agreement = _agreement(logits, fake, scale)
    print(f"{name}: top-1 agreement with fake-quant {100 * agreement:.1f}% (fake-quant vs float "
          f"{100 * (fake.argmax(1) == float_.argmax(1)).mean():.1f}%); logits rel. err. "
          f"{rel_err(logits, fake):.4f} (fake-quant vs float {rel_err(fake, float_):.3f})")
    assert agreement >= PLAIN_AGREEMENT[name]


# ---- int8: ResNet-18 and MobileNetV2 trained on Fashion-MNIST -----------------------------------
FASHION_RGB = 32  # Fashion-MNIST upsampled to 32x32 and repeated into 3 channels
TRAIN_STEPS, TRAIN_BATCH = 200, 64


def fashion_rgb(images: torch.Tensor) -> torch.Tensor:
    x = F.interpolate(images, size=FASHION_RGB, mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


@functools.lru_cache(maxsize=None)
def fashion_trained(name: str) -> nn.Module:
    """torchvision's ``name`` with 10 classes, trained on Fashion-MNIST for 200 steps of 64
    images (AdamW, one-cycle; 1-2 min on 2 cores; 80-90% test accuracy). No ImageNet weights
    for these install offline, and random weights decide labels by margins far below a code:
    a trained network is where top-1 agreement measures the artifact."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    images, labels = fashion_mnist("train").tensors
    optimizer = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 4e-3, total_steps=TRAIN_STEPS)
    model.train()
    for _ in range(TRAIN_STEPS):
        batch = torch.randint(0, len(images), (TRAIN_BATCH,))
        loss = F.cross_entropy(model(fashion_rgb(images[batch])), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_int8_trained_torchvision_artifact_agrees_on_fashion_mnist(name):
    """The issue's end-to-end bar on trained ResNet-18 and MobileNetV2: the int8 artifact gives
    the fake-quant graph's label on >= 99% of the 10,000 test images, and its accuracy is within
    0.2 points of the fake-quant graph's (on 2,000 images a 0.2-point gap is 4 of them)."""
    model = fashion_trained(name)
    images, labels = fashion_mnist("test").tensors
    images = fashion_rgb(images)
    graph = run_pipeline(model, images[:FASHION_BATCH], "fold-bn,quantize")
    train = fashion_rgb(fashion_mnist("train").tensors[0][:1024])
    mcc.calibrate(graph, list(torch.split(train, 32)))
    artifact = mcc_tvm.compile(graph, "x86")
    assert artifact.metadata["float_ops"] == []
    with torch.no_grad():
        fake = batched(lambda x: graph(x).numpy(), images)
        float_ = batched(lambda x: model(x).numpy(), images)
    got = batched(lambda x: artifact(x.numpy())[0], images)
    agreement = (got.argmax(1) == fake.argmax(1)).mean()
    accuracy, fake_accuracy, float_accuracy = (100 * (y.argmax(1) == labels.numpy()).mean()
                                               for y in (got, fake, float_))
    print(f"{name}: top-1 agreement with fake-quant {100 * agreement:.2f}%, accuracy "
          f"{accuracy:.2f}% (fake-quant {fake_accuracy:.2f}%, float {float_accuracy:.2f}%)")
    assert agreement >= 0.99
    assert abs(accuracy - fake_accuracy) <= 0.2
    assert float_accuracy >= 75.0  # trained: labels decided by margins


def test_int8_efficientnet_lite0_agrees_with_the_fake_quant_graph():
    """A trained ImageNet network (inverted residuals, depthwise convolutions, ReLU6): the int8
    artifact gives the fake-quant graph's label (up to ties between output codes) and the same
    agreement with the float model's labels."""
    evaluator = resolve_evaluator("efficientnet-lite0")
    photos = sample_photos().images
    zoomed = F.interpolate(photos[..., 28:196, 28:196], size=224, mode="bilinear", antialias=True)
    images = torch.cat([photos, zoomed])
    model = evaluator.model()
    graph = run_pipeline(model, photos[:1], "fold-bn,quantize")
    mcc.calibrate(graph, list(torch.split(photos, 4)))
    artifact = mcc_tvm.compile(graph, "x86")
    got = np.concatenate([artifact(x[None].numpy())[0] for x in images])
    with torch.no_grad():
        fake, float_labels = graph(images).numpy(), model(images).argmax(1).numpy()
    # The logits are output codes, so two classes can tie; a label tied for the fake-quant
    # graph's maximum agrees (see _agreement).
    scale = artifact.metadata["outputs"][0]["quant"]["scale"]
    agreement = _agreement(got, fake, scale)
    ours, theirs = (100 * (v.argmax(1) == float_labels).mean() for v in (got, fake))
    print(f"EfficientNet-Lite0 int8 artifact: top-1 agreement with fake-quant {100 * agreement:.1f}% "
          f"on {len(images)} photos; agreement with float {ours:.2f}% (fake-quant {theirs:.2f}%)")
    # Measured: 98.7% (75 of 76; on the other photo the artifact's top logit is one output code
    # below the fake-quant graph's: a one-code difference upstream, where an exact value lay
    # within float32 rounding of a rounding boundary). Agreement with float: equal (82.89%).
    assert agreement >= 0.97
    assert abs(ours - theirs) <= 0.2


# ---- save / load ------------------------------------------------------------------------------
def test_save_load_round_trip_and_metadata(fashion_int8, tmp_path):
    graph, artifact = fashion_int8
    path = artifact.save(tmp_path / "fashion.int8")
    assert sorted(p.name for p in path.iterdir()) == ["constants.params", "lib.so", "metadata.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's private 0700

    loaded = load(path)
    x = fashion_test_split()[0][:FASHION_BATCH].numpy()
    (a,), (b,) = artifact(x), loaded(x)
    np.testing.assert_array_equal(a, b)

    meta = json.loads((path / "metadata.json").read_text())
    assert meta == loaded.metadata
    assert meta["format"] == "mcc-artifact" and meta["format_version"] == 1
    target = mcc_tvm.resolve("x86")
    assert meta["target"]["kind"] == "llvm" and meta["target"]["mcpu"] == target.mcpu
    assert meta["target"]["features"] == list(target.features)
    assert meta["inputs"] == [{"name": "x", "shape": [FASHION_BATCH, 1, 28, 28], "dtype": "float32",
                               "quant": meta["inputs"][0]["quant"]}]
    assert set(meta["inputs"][0]["quant"]) == {"scale", "zero_point", "dtype", "signed_shift"}
    (out,) = meta["outputs"]
    assert out["name"] == "output" and out["shape"] == [FASHION_BATCH, 10] and out["dtype"] == "float32"
    assert out["quant"]["dtype"] == "uint8"
    import tvm

    assert meta["versions"]["mcc"] == mcc.__version__ and meta["versions"]["tvm"] == tvm.__version__
    assert meta["versions"]["tvm_ffi"]
    assert meta["pipeline"] == "fold-bn,quantize" and meta["name"] == "fashion-cnn"
    shipped = tuning.shipped(target)  # compile's default: mcc's database for this CPU, if any
    if shipped is None:
        assert meta["tuning"] is None
    else:
        assert meta["tuning"]["shipped"] and meta["tuning"]["database"] == str(shipped)
        assert meta["tuning"]["hash"] == tuning.Database(shipped, target).digest()
    assert len(meta["constants"]["names"]) == len(artifact.constant_arrays)
    assert set(meta["files"]) == {"lib.so", "constants.params"}

    # Saving again over an artifact replaces it; over anything else is refused.
    artifact.save(path)
    assert load(path)(x)[0].shape == (FASHION_BATCH, 10)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an mcc artifact"):
        artifact.save(tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"

    # Wrong inputs are refused with the shape the artifact was compiled for.
    with pytest.raises(BackendError, match=r"\(500, 1, 28, 28\)"):
        loaded(x[:10])
    with pytest.raises(BackendError, match="input"):
        loaded(x, x)


def _broken(tmp_path, artifact_dir, name, edit):
    broken = tmp_path / name
    shutil.copytree(artifact_dir, broken)
    edit(broken)
    return broken


def test_loading_what_is_not_a_loadable_artifact_raises_backend_error(fashion_int8, tmp_path):
    _, artifact = fashion_int8
    good = artifact.save(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("hello")

    def meta_edit(change):
        def edit(d):
            meta = json.loads((d / "metadata.json").read_text())
            change(meta)
            (d / "metadata.json").write_text(json.dumps(meta))
        return edit

    cases = {
        tmp_path / "empty": "is not an mcc artifact",
        tmp_path / "missing": "is not an mcc artifact",
        tmp_path / "file.txt": "is not an mcc artifact",
        _broken(tmp_path, good, "garbled", lambda d: (d / "metadata.json").write_text("{nope")):
            "unreadable",
        _broken(tmp_path, good, "foreign", lambda d: (d / "metadata.json").write_text('{"a": 1}')):
            "does not describe an mcc artifact",
        _broken(tmp_path, good, "newer", meta_edit(lambda m: m.update(format_version=99))):
            "newer than this mcc reads",
        _broken(tmp_path, good, "oldtvm", meta_edit(lambda m: m["versions"].update(tvm="0.11.0"))):
            "built with TVM 0.11.0",
        _broken(tmp_path, good, "opencl", meta_edit(lambda m: m["target"].update(kind="opencl"))):
            "compiled for a opencl device",
        _broken(tmp_path, good, "gpu", meta_edit(lambda m: m["target"].update(kind="cuda"))):
            "CUDA target without a valid arch",
        _broken(tmp_path, good, "nolib", lambda d: (d / "lib.so").unlink()): "cannot load",
        _broken(tmp_path, good, "truncated", lambda d: (d / "lib.so").write_bytes(b"\x7fELF")):
            "cannot load",
        _broken(tmp_path, good, "noparams", lambda d: (d / "constants.params").write_bytes(b"")):
            "cannot read",
        _broken(tmp_path, good, "fewer", meta_edit(
            lambda m: m["constants"].update(names=m["constants"]["names"] + ["c999"]))):
            "lacks constants",
    }
    for path, message in cases.items():
        with pytest.raises(BackendError, match=message) as err:
            load(path)
        assert isinstance(err.value, MccError)
    # An artifact for a CPU with instructions this one lacks (AVX-512 VNNI on an AVX2 host,
    # AVX-512 nowhere to be missed on a VNNI host: then the check passes and the load works).
    vnni = _broken(tmp_path, good, "vnni", meta_edit(
        lambda m: m["target"].update(name="znver4", features=list(mcc_tvm.resolve("znver4").features))))
    if mcc_tvm.resolve("znver4").missing_on_host():
        with pytest.raises(TargetError, match="compile it again with --target x86"):
            load(vnni)
    assert load(good).metadata["format"] == "mcc-artifact"


def test_compile_errors_are_backend_errors():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    graph = mcc.trace(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(BackendError, match="takes an mcc.Graph"):
        mcc_tvm.compile(model, "x86")
    with pytest.raises(TargetError, match="valid targets are"):
        mcc_tvm.compile(graph, "pentium4")
    with pytest.raises(BackendError, match="does not exist"):
        mcc_tvm.compile(graph, "x86", tuning="no-such.db")
    quantized = run_pipeline(model, torch.randn(1, 3, 8, 8), "quantize")
    with pytest.raises(BackendError, match="not calibrated"):
        mcc_tvm.compile(quantized, "x86")


class _SamePadded(nn.Module):
    """TensorFlow-style "same" padding before stride-2 convs, as EfficientNet-Lite has it:
    asymmetric zero padding as a module and as ``F.pad``."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv1 = nn.Conv2d(16, 32, 3, 2)
        self.conv2 = nn.Conv2d(32, 32, 3, 2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(self.pad(x)))
        x = torch.relu(self.conv2(nn.functional.pad(x, (1, 0, 1, 0))))
        return self.fc(x.mean((2, 3)))


def test_zero_padding_lowers_in_float_and_on_codes():
    torch.manual_seed(0)
    model = _SamePadded().eval()
    x = torch.randn(1, 16, 17, 17)
    graph = mcc.trace(model, x)
    assert rel_err(mcc_tvm.compile(graph, "x86")(x.numpy())[0], model(x).detach()) <= 1e-5
    quantized, _ = mcc.compress(graph, pipeline="quantize", latency=False,
                                calibration_data=[torch.randn(1, 16, 17, 17) for _ in range(8)])
    artifact = mcc_tvm.compile(quantized, "x86")
    assert artifact.metadata["float_ops"] == [] and artifact.metadata["integer_units"] == 3
    fake_quant = quantized(x).detach().numpy()
    # padded with the zero point, the codes are the fake-quant graph's up to bias rounding
    out_scale = st.quant_params(quantized)["fc_quant"]["scale"]
    assert np.abs(artifact(x.numpy())[0] - fake_quant).max() <= 1.01 * out_scale


def test_a_dead_channel_with_a_large_bias_compiles_exactly():
    """A folded BatchNorm can leave an output channel with ~0 weights and a large bias: its
    weight scale is so small that b / (S_in·S_w) overflows int32. Calibration widens that
    channel's scale, so the artifact can hold the bias and still equals the fake-quant graph."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1)).eval()
    with torch.no_grad():
        model[0].weight[5].mul_(1e-9)
        model[0].bias[5] = 3.0
    x = torch.randn(1, 3, 8, 8)
    quantized, report = mcc.compress(model, x, pipeline="quantize", latency=False,
                                     calibration_data=[torch.randn(1, 3, 8, 8) for _ in range(4)])
    params = st.quant_params(quantized)
    s_in = params[st.units(quantized)[0].inputs[0]]["scale"]
    s_w = np.asarray(params["_0.weight"]["scale"]).reshape(-1)
    assert abs(3.0 / (s_in * s_w[5])) <= 2 ** 30 + 1
    assert 3.0 / (s_in * s_w[4]) < 2 ** 30  # other channels keep their own scales
    artifact = mcc_tvm.compile(quantized, "x86")
    fake_quant = quantized(x).detach().numpy()
    out_scale = params[st.units(quantized)[-1].output]["scale"]
    assert np.abs(artifact(x.numpy())[0] - fake_quant).max() <= 1.01 * out_scale


@pytest.mark.parametrize("pool", ["module", "mean"])
def test_global_average_pooling_runs_on_codes(pool):
    """A classifier head (global average pooling, flatten, Linear): the pooling sums codes in
    int32 and requantizes straight to the Linear's input codes, no float in between; the logits
    equal the fake-quant graph's. The pooled convolution has no ReLU, so its zero point is not
    0 and the sum must subtract it."""

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 40, 3, padding=1), nn.Conv2d(40, 40, 3, stride=2)
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(40, 10)

        def forward(self, x):
            y = self.conv2(torch.relu(self.conv1(x)))
            y = self.pool(y) if pool == "module" else y.mean((2, 3), keepdim=True)
            return self.fc(torch.flatten(y, 1))

    torch.manual_seed(0)
    graph, _ = mcc.compress(Head().eval(), torch.randn(8, 3, 16, 16), pipeline="quantize",
                            latency=False,
                            calibration_data=[torch.randn(8, 3, 16, 16) for _ in range(4)])
    lowered = lower.lower(graph, mcc_tvm.resolve("x86"), schedule=K.kernel)
    pools = [w for w in lowered.workloads if isinstance(w, K.Pool2d)]
    assert [(p.kind, p.dtype, p.kernel) for p in pools] == [("avg", "uint8", (7, 7))]
    assert pools[0].requant.in_zero != 0
    assert not [w for w in lowered.workloads if isinstance(w, K.Dequantize)]
    artifact = mcc_tvm.compile(graph, "x86")
    assert artifact.metadata["float_ops"] == [] and artifact.metadata["integer_units"] == 3
    x = torch.randn(8, 3, 16, 16)
    np.testing.assert_array_equal(artifact(x.numpy())[0], graph(x).detach().numpy())
