"""The mcc command line: listings, compress/report end to end, and one-line errors with exit 2."""

import hashlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from mcc.cli import main


def run(*argv, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "mcc", *argv], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """A user module `usermodels:tiny` in a directory on sys.path."""
    (tmp_path / "usermodels.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def tiny():
            torch.manual_seed(0)
            m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
            with torch.no_grad():
                m[1].running_var.uniform_(0.5, 2.0)
            return m.eval(), torch.randn(1, 3, 16, 16)

        def not_a_model():
            return 42

        def evaluate(model):
            torch.manual_seed(1)
            with torch.no_grad():
                return float(model(torch.randn(4, 3, 16, 16)).sum())
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("passes", "compress", "report", "demo"):
        assert command in out


def test_passes_lists_options_and_docs(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "fold-bn\n    Fold BatchNorm into the preceding" in out
    assert main(["passes", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert {"fold-bn", "dce", "remove-identity", "fold-constants"} <= {e["name"] for e in entries}


def test_compress_writes_a_smaller_graph_and_report(factory, capsys):
    out, report = factory / "tiny.pt2", factory / "report.json"
    code = main(["compress", "usermodels:tiny", "-p", "fold-bn,dce", "-o", str(out),
                 "--json", str(report), "--no-latency", "--eval", "usermodels:evaluate"])
    assert code == 0, capsys.readouterr().err
    loaded = torch.export.load(str(out)).module()
    from usermodels import tiny

    model, x = tiny()
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    data = json.loads(report.read_text())
    assert data["pipeline"] == "fold-bn,dce"
    assert data["passes"][0]["stats"] == {"folded": 1}
    assert data["before"]["params"] - data["after"]["params"] == 16  # BN γ and β gone; conv had a bias
    assert abs(data["before"]["metric"] - data["after"]["metric"]) < 1e-3


def test_compress_to_onnx_and_report_it(factory, capsys):
    out = factory / "tiny.onnx"
    assert main(["compress", "usermodels:tiny", "-p", "fold-bn", "-o", str(out), "--no-latency"]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--no-latency"]) == 0
    assert "params" in capsys.readouterr().out


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("argv, message", [
    (["compress", "resnet18", "-p", "fold-nb", "-o", "x.onnx"], "did you mean 'fold-bn'"),
    (["compress", "resnet18", "-p", "fold-bn{", "-o", "x.onnx"], "pipeline syntax error at character 9"),
    (["compress", "resnet18", "-p", "fold-bn", "-o", "missing/dir/x.onnx"], "directory 'missing/dir' does not exist"),
    (["compress", "resnet1", "-p", "fold-bn", "-o", "x.onnx"], "did you mean 'resnet18'"),
    (["compress", "usermodels:not_a_model", "-p", "fold-bn", "-o", "x.onnx"], "returned int"),
    (["compress", "usermodels:nope", "-p", "fold-bn", "-o", "x.onnx"], "has no attribute 'nope'"),
    (["report", "nosuchfile.onnx"], "nosuchfile.onnx"),
    (["report", "model.pt"], "holds a pickled model"),
    (["report", "weights.pt"], "holds a state_dict"),
    (["report", "resnet18", "--input-shape", "1,3,x"], "input shape '1,3,x' is invalid"),
    (["report", "usermodels:tiny", "--input-shape", "1,5,16,16"], "fails on the example inputs"),
])
def test_errors_are_one_line_with_exit_2_and_touch_nothing(factory, argv, message):
    torch.save(nn.Linear(2, 2), factory / "model.pt")
    torch.save(nn.Linear(2, 2).state_dict(), factory / "weights.pt")
    before = {p.name: _digest(p) for p in factory.iterdir() if p.is_file()}
    code, out, err = run(*argv, cwd=factory)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("mcc: error: "), err
    assert message in err
    assert "Traceback" not in err
    after = {p.name: _digest(p) for p in factory.iterdir() if p.is_file()}
    assert after == before  # no input changed, no output (or temp file) left behind


def test_unsafe_load_allows_a_trusted_pickle(factory, capsys):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    torch.save(model, factory / "model.pt")
    assert main(["report", "model.pt", "--unsafe-load", "--input-shape", "1,3,2,2", "--no-latency"]) == 0
    assert "params" in capsys.readouterr().out


def test_quantizing_activations_needs_calibration_data(factory):
    code, _, err = run("compress", "usermodels:tiny", "-p", "fold-bn,quantize", "-o", "q.onnx", cwd=factory)
    assert code == 2 and "needs calibration data: pass --calib" in err
    assert not (factory / "q.onnx").exists()


def test_compress_with_calibration_file_writes_qdq(factory, capsys):
    import numpy as np
    import onnx

    np.save(factory / "calib.npy", np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype("float32"))
    assert main(["compress", "usermodels:tiny", "-p", "fold-bn,quantize", "-o", "q.onnx",
                 "--calib", "calib.npy", "--no-latency"]) == 0
    ops = {n.op_type for n in onnx.load(str(factory / "q.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    np.save(factory / "bad.npy", np.zeros((4, 3, 8, 8), dtype="float32"))
    code, _, err = run("compress", "usermodels:tiny", "-p", "quantize", "-o", "q2.onnx",
                       "--calib", "bad.npy", cwd=factory)
    assert code == 2 and "has shape [4, 3, 8, 8]; the model takes [N, 3, 16, 16]" in err


def test_quantize_sensitivity_ranks_every_layer(factory, capsys):
    import numpy as np

    np.save(factory / "calib.npy", np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype("float32"))
    assert main(["analyze", "sensitivity", "usermodels:tiny", "--pass", "quantize",
                 "--options", "weights=int4", "--eval", "usermodels:evaluate",
                 "--calib", "calib.npy", "--json", "sens.json"]) == 0
    rows = json.loads((factory / "sens.json").read_text())["rows"]
    assert sorted(r["layer"] for r in rows) == ["_0", "_5"]  # the conv and the linear layer
    assert all(isinstance(r["drop"], float) for r in rows)
    assert "layer" in capsys.readouterr().out
