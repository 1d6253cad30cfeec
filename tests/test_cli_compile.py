"""mcc compile / run / tune: artifacts written by the command line compute what the model does,
and every user error is one line on stderr with exit status 2, leaving nothing behind."""

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import mcc
from mcc.backends.tvm import tuning
from mcc.cli import main
from mcc.runtime import load


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """A user module `cnnmodels:small` in a directory on sys.path, and calibration data."""
    (tmp_path / "cnnmodels.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def small():
            torch.manual_seed(0)
            m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                              nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                              nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
            with torch.no_grad():
                for bn in (m[1], m[4]):
                    bn.running_mean.uniform_(-0.2, 0.2)
                    bn.running_var.uniform_(0.5, 2.0)
            return m.eval(), torch.randn(2, 3, 16, 16)

        def evaluate(model):
            torch.manual_seed(1)
            with torch.no_grad():
                return float(model(torch.randn(5, 3, 16, 16)).sum())  # 5: not a multiple of 2
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.standard_normal((32, 3, 16, 16)).astype("float32"))
    np.save(tmp_path / "x.npy", rng.standard_normal((2, 3, 16, 16)).astype("float32"))
    return tmp_path


def small():
    from cnnmodels import small as build

    return build()


def test_compile_float_artifact_matches_the_model(factory, capsys):
    code = main(["compile", "cnnmodels:small", "-p", "fold-bn", "--target", "x86", "-o", "small.fp32",
                 "--json", "report.json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "pipeline: fold-bn" in out and "latency: " in out and "wrote small.fp32" in out
    assert "0 integer units, 0 float ops" in out
    model, _ = small()
    x = np.load(factory / "x.npy")
    (got,) = load(factory / "small.fp32")(x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    meta = json.loads((factory / "small.fp32" / "metadata.json").read_text())
    assert meta["pipeline"] == "fold-bn" and meta["name"] == "cnnmodels:small"
    assert meta["inputs"][0]["shape"] == [2, 3, 16, 16]
    report = json.loads((factory / "report.json").read_text())
    assert report["pipeline"] == "fold-bn" and report["compiled"]["latency_ms"] > 0
    assert report["compiled"]["artifact"] == "small.fp32"
    assert not [p.name for p in factory.iterdir() if p.name.startswith(".")]  # no temp files left


def test_compile_int8_matches_the_fake_quant_graph_and_run_prints_it(factory, capsys):
    code = main(["compile", "cnnmodels:small", "-p", "fold-bn,quantize", "-o", "small.int8",
                 "--calib", "calib.npy", "--eval", "cnnmodels:evaluate", "--no-latency"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "3 integer units, 0 float ops" in out
    # The compiled model's metric (on 5 images: a batch of 2, 2 and 1 padded) is printed.
    compiled_metric = float(out.split("  metric: ")[1].split()[0])

    # The same graph in Python: same pipeline, same calibration batches (the CLI's batches of 8).
    model, x = small()
    calib = torch.from_numpy(np.load(factory / "calib.npy"))
    graph, _ = mcc.compress(model, x, pipeline="fold-bn,quantize", calibration_data=calib.split(8),
                            latency=False)
    artifact = load(factory / "small.int8")
    scale = artifact.metadata["outputs"][0]["quant"]["scale"]
    xs = torch.from_numpy(np.load(factory / "calib.npy"))
    got = np.concatenate([artifact(xs[i:i + 2].numpy())[0] for i in range(0, 32, 2)])
    with torch.no_grad():
        fake = graph(xs).numpy()
    assert np.abs(got - fake).max() <= scale * 1.01  # at most one output code apart
    assert (np.abs(got - fake) > scale / 2).mean() <= 0.02
    assert (got.argmax(1) == fake.argmax(1)).mean() >= 0.9
    from cnnmodels import evaluate

    assert compiled_metric == pytest.approx(evaluate(graph), abs=5 * 10 * scale)  # 50 logits, <= 1 code each

    # mcc run: the same numbers from the command line, on a batch of 5 (chunks of 2).
    np.save(factory / "five.npy", xs[:5].numpy())
    assert main(["run", "small.int8", "--input", "five.npy", "--repeat", "3", "-o", "out.npz"]) == 0
    out = capsys.readouterr().out
    expected = np.concatenate([artifact(xs[i:i + 2].numpy())[0] for i in (0, 2)] +
                              [artifact(xs[[4, 4]].numpy())[0][:1]])
    saved = np.load(factory / "out.npz")
    assert saved.files == ["output"]
    np.testing.assert_array_equal(saved["output"], expected)
    assert "outputs:\n  output: float32[5, 10]\n" in out
    assert f"top-1: {' '.join(str(v) for v in expected.argmax(1))}" in out
    assert "latency: median " in out and "(3 runs of batch 2)" in out
    # Without --input: random inputs, said so.
    assert main(["run", "small.int8", "--repeat", "0"]) == 0
    out = capsys.readouterr().out
    assert "random normal" in out and "latency" not in out


def test_tune_writes_a_database_that_compile_reads(factory, capsys, monkeypatch):
    """The plumbing of mcc tune (meta_schedule itself takes minutes per kernel, so it is
    replaced here by a stand-in that records what it was asked to tune)."""
    seen = {}

    def fake_tune(workloads, target, database, *, trials, progress=None, farm=None):
        seen.update(workloads=list(workloads), target=target, trials=trials, farm=farm)
        tunable = [w for w in workloads if isinstance(w, tuning.TUNABLE)]
        tuning.Database(database, target).save(database)
        return {"tuned": len(tunable), "improved": 0, "already": 0, "database": str(database),
                "kernels": [{"kernel": repr(w), "default_seconds": 2e-5, "tuned_seconds": 3e-5,
                             "recorded": False}
                            for w in tunable]}

    monkeypatch.setattr(tuning, "tune", fake_tune)
    assert main(["tune", "cnnmodels:small", "-p", "fold-bn", "--trials", "3", "--db", "small.db"]) == 0
    out = capsys.readouterr().out
    assert seen["trials"] == 3 and seen["target"].name == mcc.backends.tvm.resolve("x86").name
    assert seen["farm"] is None  # measured here without --rpc
    kinds = sorted(type(w).__name__ for w in seen["workloads"] if isinstance(w, tuning.TUNABLE))
    assert kinds == ["Conv2d", "Conv2d", "Dense"]
    assert re.search(r"conv 16->16 16x16 k3x3 s2 float32 +20 us +30 us +default kept", out), out
    assert "tuned 3 kernel(s)" in out and "wrote small.db" in out
    assert (factory / "small.db").is_file()

    assert main(["compile", "cnnmodels:small", "-p", "fold-bn", "--tuning", "small.db",
                 "-o", "tuned", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "tuning: small.db: 0 kernel(s) from 0 record(s)" in out
    assert load(factory / "tuned").metadata["tuning"]["records"] == 0

    # Without --tuning the database mcc ships for this CPU applies (a TopHub of its own);
    # --tuning none keeps every hand-written schedule.
    shipped = tuning.shipped(mcc.backends.tvm.resolve("x86"))
    assert main(["compile", "cnnmodels:small", "-p", "fold-bn", "-o", "default", "--no-latency"]) == 0
    out = capsys.readouterr().out
    meta = load(factory / "default").metadata["tuning"]
    if shipped is None:
        assert meta is None and "tuning:" not in out
    else:
        assert meta["shipped"] and meta["database"] == str(shipped)
        assert f"tuning: mcc's {shipped.name}: " in out
    assert main(["compile", "cnnmodels:small", "-p", "fold-bn", "--tuning", "none", "-o", "plain",
                 "--no-latency"]) == 0
    assert "tuning:" not in capsys.readouterr().out
    assert load(factory / "plain").metadata["tuning"] is None


def test_allow_float_runs_weight_only_layers_in_float(factory, capsys):
    argv = ["compile", "cnnmodels:small", "-p", "quantize{activations=none}", "-o", "wq", "--no-latency"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot run as an integer kernel" in err and "--allow-float" in err
    assert not (factory / "wq").exists()
    assert main(argv + ["--allow-float"]) == 0
    assert "0 integer units, 3 float ops" in capsys.readouterr().out
    meta = load(factory / "wq").metadata
    assert len(meta["float_ops"]) == 3 and meta["integer_units"] == 0


def run(*argv, cwd):
    proc = subprocess.run([sys.executable, "-m", "mcc", *argv], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def test_unknown_target_is_one_line_exit_2(factory):
    code, out, err = run("compile", "cnnmodels:small", "-p", "fold-bn", "--target", "pentium4",
                         "-o", "out", cwd=factory)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("mcc: error: unknown target 'pentium4'"), err
    assert "haswell" in err and "Traceback" not in err
    assert not (factory / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["compile", "cnnmodels:small", "-p", "fold-bn", "--target", "i386", "-o", "out"],
     "unknown target 'i386'"),
    (["tune", "cnnmodels:small", "-p", "fold-bn", "--target", "i386", "-o", "t.db"],
     "unknown target 'i386'"),
    (["compile", "cnnmodels:small", "-p", "fold-bn", "-o", "missing/dir/out"],
     "directory 'missing/dir' does not exist"),
    (["compile", "cnnmodels:small", "-p", "fold-bn", "-o", "notes"], "is not an mcc artifact"),
    (["compile", "cnnmodels:small", "-p", "fold-bn", "-o", "out", "--tuning", "nope.db"],
     "tuning database 'nope.db' does not exist"),
    (["compile", "cnnmodels:small", "-p", "fold-bn,quantize", "-o", "out"],
     "needs calibration data: pass --calib"),
    (["compile", "cnnmodels:small", "-p", "fold-nb", "-o", "out"], "did you mean 'fold-bn'"),
    (["tune", "cnnmodels:small", "-p", "fold-bn", "--trials", "0", "-o", "t.db"],
     "--trials must be at least 1"),
    (["run", "notes"], "'notes' is not an mcc artifact"),
    (["run", "nowhere"], "'nowhere' is not an mcc artifact"),
])
def test_errors_are_one_line_with_exit_2(factory, capsys, argv, message):
    (factory / "notes").mkdir()
    (factory / "notes" / "todo.txt").write_text("keep me")
    before = sorted(p.name for p in factory.iterdir())
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("mcc: error: "), err
    assert message in err
    assert sorted(p.name for p in factory.iterdir()) == before  # nothing written
    assert (factory / "notes" / "todo.txt").read_text() == "keep me"


def test_run_input_errors(factory, capsys):
    assert main(["compile", "cnnmodels:small", "-p", "fold-bn", "-o", "small.fp32", "--no-latency"]) == 0
    capsys.readouterr()
    np.save(factory / "wrong.npy", np.zeros((2, 3, 8, 8), "float32"))
    np.savez(factory / "two.npz", a=np.zeros(1), b=np.zeros(1))
    cases = [
        (["--input", "wrong.npy"], "must have shape (2, 3, 16, 16)"),
        (["--input", "absent.npy"], "input file 'absent.npy' does not exist"),
        (["--input", "two.npz"], "lacks arrays for the inputs ['input_1'] (it holds ['a', 'b'])"),
        (["--input", "calib.npy", "-o", "out.txt"], "name the file OUT.npz"),
        (["--repeat", "-1"], "--repeat must be 0 or more"),
    ]
    for extra, message in cases:
        assert main(["run", "small.fp32", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
