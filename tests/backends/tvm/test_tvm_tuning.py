"""Tuning databases: reading (bad lines skipped with a warning naming the line, records for other
targets counted), writing, merging (the fastest record wins), and compile() using a record.

Running meta_schedule itself is not tested here: tuning one 16-channel 3x3 convolution with 4
trials takes minutes on two cores (worker start-up, the evolutionary search's population, one
build per candidate), far over a unit test's budget. compile() applying a record is tested with
a schedule trace written by hand, which is what a tuned record holds.
"""

import json
import os
import stat
import warnings

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from torch import nn
from tvm import s_tir

import mcc
from mcc.backends import tvm as mcc_tvm
from mcc.backends.tvm import kernels as K
from mcc.backends.tvm import intrinsics, lower, tuning
from mcc.backends.tvm.target import resolve
from mcc.backends.tvm.tuning import Database, Record, TuningWarning, merge
from mcc.errors import BackendError

HOST = resolve("x86")
OTHER = resolve("znver4" if HOST.mcpu != "znver4" else "haswell")


def record(workload="w1", seconds=1e-4, target=HOST, trace=None, tvm_version=tvm.__version__):
    return Record(target.key(), workload, f"Kernel({workload})", trace if trace is not None else [],
                  seconds, 2e-4, tvm_version)


def write(path, *lines):
    path.write_text("".join((json.dumps(l.to_json()) if isinstance(l, Record) else l) + "\n"
                            for l in lines))
    return path


def messages(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TuningWarning)]


# ---- reading ---------------------------------------------------------------------------------
def test_bad_lines_are_skipped_with_a_warning_naming_the_line(tmp_path):
    path = write(tmp_path / "db.jsonl",
                 record("w1"),
                 "not json at all",
                 "",                                          # blank lines are not records
                 json.dumps({"mcc_tuning": 1, "target": HOST.key()}),         # fields missing
                 json.dumps([1, 2, 3]),                                      # not an object
                 json.dumps({**record("w9").to_json(), "seconds": "fast"}),  # not a number
                 record("w2", tvm_version="0.11.0"),                         # another TVM release
                 record("w3"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        db = Database(path, HOST)
    assert sorted(w for _, w in db.records) == ["w1", "w3"]
    assert db.skipped == 5
    text = messages(caught)
    assert len(text) == 5
    for number in (2, 4, 5, 6):
        assert any(f"line {number} is corrupt" in m and str(path) in m for m in text), number
    assert any("line 7 was tuned with TVM 0.11.0" in m for m in text)
    named = {int(m.split("': line ")[1].split()[0]) for m in text}
    assert named == {2, 4, 5, 6, 7}  # not the good lines 1 and 8, nor the blank line 3


def test_records_for_other_targets_are_counted_not_used(tmp_path):
    path = write(tmp_path / "db.jsonl", record("w1"), record("w2", target=OTHER),
                 record("w3", target=OTHER), record("w4"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        db = Database(path, HOST)
    assert sorted(w for _, w in db.records) == ["w1", "w4"]
    assert db.foreign == {OTHER.key(): 2} and db.skipped == 0
    (text,) = messages(caught)  # one warning per foreign target
    assert f"skipped 2 record(s) tuned for {OTHER.key()}" in text and HOST.key() in text
    # Without a target every record is read.
    assert len(Database(path).records) == 4


def test_missing_database_is_empty_and_a_directory_is_refused(tmp_path):
    assert Database(tmp_path / "new.jsonl", HOST).records == {}
    with pytest.raises(BackendError, match="is not a file"):
        Database(tmp_path, HOST)
    with pytest.raises(BackendError, match="does not exist"):
        tuning.Scheduler(HOST, tmp_path / "new.jsonl")


def test_within_one_file_the_fastest_record_wins(tmp_path):
    path = write(tmp_path / "db.jsonl", record("w1", 3e-4), record("w1", 1e-4), record("w1", 2e-4))
    db = Database(path, HOST)
    assert [r.seconds for r in db.records.values()] == [1e-4]


# ---- writing and merging -----------------------------------------------------------------------
def test_save_round_trips_and_keeps_other_targets_records(tmp_path):
    path = write(tmp_path / "db.jsonl", record("w1", 5e-4), record("w9", target=OTHER))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)
        db = Database(path, HOST)
    db.add(record("w1", 1e-4))   # faster: replaces
    db.add(record("w2", 2e-4))
    db.add(record("w2", 9e-4))   # slower: ignored
    db.save()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic, no temp left
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
    everything = Database(path)
    assert {(r.target, r.workload): r.seconds for r in everything.records.values()} == {
        (HOST.key(), "w1"): 1e-4, (HOST.key(), "w2"): 2e-4, (OTHER.key(), "w9"): 1e-4}
    with pytest.warns(TuningWarning, match=f"skipped 1 record\\(s\\) tuned for {OTHER.key()}"):
        again = Database(path, HOST)
    assert again.records == db.records
    assert again.digest() == db.digest()
    lines = path.read_text().splitlines()
    assert all(json.loads(line)["mcc_tuning"] == 1 for line in lines)



def test_save_without_merge_writes_exactly_the_records_held(tmp_path):
    """How records are removed (scripts/tune_shipped_databases.py --drop-stale): a merging save
    would put a dropped record back from the file."""
    path = write(tmp_path / "db.jsonl", record("w1", 5e-4), record("w2", 2e-4))
    db = Database(path, HOST)
    del db.records[(HOST.key(), "w1")]
    db.save()
    assert {r.workload for r in Database(path, HOST).records.values()} == {"w1", "w2"}
    db.save(merge=False)
    assert {r.workload for r in Database(path, HOST).records.values()} == {"w2"}

def test_digest_ignores_record_order(tmp_path):
    a = write(tmp_path / "a.jsonl", record("w1"), record("w2", 3e-4))
    b = write(tmp_path / "b.jsonl", record("w2", 3e-4), record("w1"))
    assert Database(a, HOST).digest() == Database(b, HOST).digest()
    c = write(tmp_path / "c.jsonl", record("w2", 4e-4), record("w1"))
    assert Database(c, HOST).digest() != Database(a, HOST).digest()


def test_merge_keeps_the_fastest_record_per_target_and_workload(tmp_path):
    a = write(tmp_path / "a.jsonl", record("w1", 3e-4, trace=["a"]), record("w2", 1e-4, trace=["a"]),
              record("w1", 2e-4, target=OTHER, trace=["a"]))
    b = write(tmp_path / "b.jsonl", record("w1", 1e-4, trace=["b"]), record("w2", 5e-4, trace=["b"]),
              record("w3", 1e-4, trace=["b"]), "garbage")
    out = tmp_path / "merged.jsonl"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert merge([a, b], out) == 4
    assert any("line 4 is corrupt" in m for m in messages(caught))
    merged = {(r.target, r.workload): (r.seconds, r.trace) for r in Database(out).records.values()}
    assert merged == {(HOST.key(), "w1"): (1e-4, ["b"]), (HOST.key(), "w2"): (1e-4, ["a"]),
                      (HOST.key(), "w3"): (1e-4, ["b"]), (OTHER.key(), "w1"): (2e-4, ["a"])}
    # Merging into an existing database keeps its faster records.
    c = write(tmp_path / "c.jsonl", record("w3", 5e-5, trace=["c"]), record("w1", 9e-4, trace=["c"]))
    assert merge([c], out) == 4
    merged = {(r.target, r.workload): (r.seconds, r.trace) for r in Database(out).records.values()}
    assert merged[(HOST.key(), "w3")] == (5e-5, ["c"]) and merged[(HOST.key(), "w1")] == (1e-4, ["b"])
    with pytest.raises(BackendError, match="does not exist"):
        merge([tmp_path / "nope.jsonl"], out)


def test_trace_json_keeps_integer_and_float_immediates():
    from tvm.tirx import FloatImm, IntImm

    obj = [IntImm("int64", 7), {"k": FloatImm("float32", 0.5)}, "name", 3]
    encoded = tuning._encode(obj)
    assert json.loads(json.dumps(encoded)) == encoded
    decoded = tuning._decode(encoded)
    assert isinstance(decoded[0], IntImm) and decoded[0].value == 7 and str(decoded[0].ty) == "int64"
    assert isinstance(decoded[1]["k"], FloatImm) and decoded[1]["k"].value == 0.5
    assert decoded[2:] == ["name", 3]


# ---- compile() with a record ---------------------------------------------------------------------
def int8_conv(calibration):
    """A 16->32 3x3 convolution + ReLU quantized and calibrated on ``calibration``, and its one
    tunable kernel."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()).eval()
    graph, _ = mcc.Pipeline.parse("quantize").run(mcc.trace(model, torch.randn(2, 16, 8, 8)))
    mcc.calibrate(graph, calibration)
    lowered = lower.lower(graph, HOST, schedule=K.kernel)
    (work,) = [w for w in lowered.workloads if isinstance(w, tuning.TUNABLE)]
    return graph, work


@pytest.fixture(scope="module")
def small_int8_conv():
    """A calibrated int8 convolution, its one tunable kernel, and its untuned artifact's
    outputs."""
    torch.manual_seed(0)
    graph, work = int8_conv([torch.randn(4, 16, 8, 8) for _ in range(2)])
    x = torch.randn(2, 16, 8, 8).numpy()
    (untuned,) = mcc_tvm.compile(graph, "x86", tuning=False)(x)
    return graph, work, x, untuned


def hand_tuned_trace(work):
    """A schedule of the unscheduled kernel (padding inlined, output rows in parallel), as the
    JSON a tuning record stores."""
    sch = s_tir.Schedule(K.workload_func(work))
    sch.compute_inline(sch.get_sblock("pad"))
    n, c, y, *_ = sch.get_loops(sch.get_sblock("conv"))
    sch.parallel(sch.fuse(n, c, y))
    return tuning._encode(sch.trace.as_json())


def test_compile_applies_a_record_and_outputs_are_unchanged(small_int8_conv, tmp_path):
    graph, work, x, untuned = small_int8_conv
    path = tmp_path / "tuned.jsonl"
    db = Database(path, HOST)
    db.add(Record(HOST.key(), tuning.workload_key(work), repr(work), hand_tuned_trace(work),
                  1e-5, 2e-5, tvm.__version__))
    db.save()
    assert tuning.apply_trace(work, Database(path, HOST).get(work, HOST).trace) is not None

    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningWarning)
        tuned = mcc_tvm.compile(graph, "x86", tuning=path)
    summary = tuned.metadata["tuning"]
    assert summary == {"database": str(path), "shipped": False,
                       "hash": Database(path, HOST).digest(), "records": 1, "applied": 1,
                       "searched": 1, "failed": 0}
    np.testing.assert_array_equal(tuned(x)[0], untuned)  # integer kernels: bit for bit


def test_a_record_without_trace_keeps_the_hand_written_schedule(small_int8_conv, tmp_path):
    """What tune writes when no candidate beat mcc's own schedule: the kernel counts as tuned
    and compiles with the hand-written schedule."""
    graph, work, x, untuned = small_int8_conv
    path = write(tmp_path / "db.jsonl", Record(HOST.key(), tuning.workload_key(work), repr(work),
                                               None, 2e-5, 2e-5, tvm.__version__))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningWarning)
        artifact = mcc_tvm.compile(graph, "x86", tuning=path)
    summary = artifact.metadata["tuning"]
    assert (summary["applied"], summary["searched"], summary["failed"]) == (1, 0, 0)
    np.testing.assert_array_equal(artifact(x)[0], untuned)


def test_a_record_for_another_kernel_or_target_is_not_used(small_int8_conv, tmp_path):
    graph, work, x, untuned = small_int8_conv
    other = K.Conv2d(1, 16, 4, 4, 16, (1, 1), dtype="float32", **K.target_fields(HOST))
    path = write(tmp_path / "db.jsonl",
                 Record(HOST.key(), tuning.workload_key(other), repr(other), [], 1e-5, 2e-5,
                        tvm.__version__),
                 Record(OTHER.key(), tuning.workload_key(work), repr(work), hand_tuned_trace(work),
                        1e-5, 2e-5, tvm.__version__))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        artifact = mcc_tvm.compile(graph, "x86", tuning=path)
    assert any(f"tuned for {OTHER.key()}" in m for m in messages(caught))
    assert artifact.metadata["tuning"]["applied"] == 0 and artifact.metadata["tuning"]["records"] == 1
    np.testing.assert_array_equal(artifact(x)[0], untuned)


def test_a_stale_record_falls_back_to_the_default_schedule(small_int8_conv, tmp_path):
    graph, work, x, untuned = small_int8_conv
    stale = [[["GetSBlock", [], [{"int": 0, "dtype": "int32"}], ["no_such_block", "main"], ["b0"]]]]
    path = write(tmp_path / "db.jsonl", Record(HOST.key(), tuning.workload_key(work), repr(work),
                                                stale, 1e-5, 2e-5, tvm.__version__))
    assert tuning.apply_trace(work, stale) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        artifact = mcc_tvm.compile(graph, "x86", tuning=path)
    assert any("no longer applies" in m for m in messages(caught))
    assert artifact.metadata["tuning"]["applied"] == 0 and artifact.metadata["tuning"]["failed"] == 1
    np.testing.assert_array_equal(artifact(x)[0], untuned)


def test_a_record_serves_every_calibration_of_the_layer(small_int8_conv, tmp_path):
    """Record keys leave out the constants calibration picks (zero points, code ranges): data
    with another mean gives the input another zero point, hence another padding value and
    another PrimFunc, but the same loops, which the recorded schedule still fits."""
    graph, work, x, _ = small_int8_conv
    torch.manual_seed(1)
    other_graph, other = int8_conv([torch.randn(4, 16, 8, 8) * 2 + 1 for _ in range(2)])
    assert other.pad_value != work.pad_value
    assert tuning.workload_key(other) == tuning.workload_key(work)
    assert not tvm_ffi.structural_equal(K.workload_func(other), K.workload_func(work))
    path = write(tmp_path / "db.jsonl", Record(HOST.key(), tuning.workload_key(work), repr(work),
                                               hand_tuned_trace(work), 1e-5, 2e-5, tvm.__version__))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningWarning)
        tuned = mcc_tvm.compile(other_graph, "x86", tuning=path)
    assert tuned.metadata["tuning"]["applied"] == 1
    np.testing.assert_array_equal(tuned(x)[0], mcc_tvm.compile(other_graph, "x86", tuning=False)(x)[0])


def test_compile_applies_the_shipped_database_unless_told_not_to(small_int8_conv, tmp_path,
                                                                 monkeypatch):
    graph, work, x, untuned = small_int8_conv
    monkeypatch.setattr(tuning, "SHIPPED", tmp_path)
    assert mcc_tvm.compile(graph, "x86").metadata["tuning"] is None  # none shipped for this CPU
    shipped = write(tmp_path / f"{HOST.key()}.jsonl",
                    Record(HOST.key(), tuning.workload_key(work), repr(work), hand_tuned_trace(work),
                           1e-5, 2e-5, tvm.__version__))
    artifact = mcc_tvm.compile(graph, "x86")
    assert artifact.metadata["tuning"] == {"database": str(shipped), "shipped": True,
                                           "hash": Database(shipped, HOST).digest(), "records": 1,
                                           "applied": 1, "searched": 1, "failed": 0}
    np.testing.assert_array_equal(artifact(x)[0], untuned)
    assert mcc_tvm.compile(graph, "x86", tuning=False).metadata["tuning"] is None


def test_shipped_databases_read_cleanly_and_cover_the_demo_and_benchmark_kernels():
    """Every database mcc ships parses without a skipped line, for a CPU mcc knows, with this
    TVM; its records name the kernel, and a record with a trace beat the hand-written time."""
    files = sorted(tuning.SHIPPED.glob("*.jsonl"))
    assert files, "mcc ships tuning databases (scripts/tune_shipped_databases.py)"
    for path in files:
        target = resolve(path.stem)
        with warnings.catch_warnings():
            warnings.simplefilter("error", TuningWarning)
            db = Database(path, target)
        assert len(db.records) >= 10
        for r in db.records.values():
            assert r.kernel.startswith(("Conv2d(", "Dense(")) and r.seconds > 0
            if r.trace is not None:
                assert r.seconds < r.default_seconds
            else:
                assert r.seconds == r.default_seconds


@pytest.mark.parametrize("target,kind,intrinsic", [
    ("haswell", "int8", intrinsics.PMADDWD_16X2[("avx2", "global")]),
    ("haswell", "int7", intrinsics.MADDUBSW_16X4[("avx2", "global")]),
    ("znver4", "int8", intrinsics.VNNI_16X4),
    ("arm:cortex-a76", "int8", intrinsics.SDOT_16X4),
    ("haswell", "float32", None),
])
def test_the_search_space_tensorizes_int8_kernels_with_their_instruction(target, kind, intrinsic):
    """meta_schedule's candidates for an int8 kernel use the instruction mcc's hand-written
    kernel uses (without it the search only finds LLVM's int32 multiply-adds): every design
    of the space carries the intrinsic to tensorize with."""
    from tvm.s_tir import meta_schedule as ms

    resolved = resolve(target)
    work = K.Conv2d(1, 32, 8, 8, 32, (3, 3), (1, 1), (1, 1, 1, 1), in_block=16,
                    dtype="float32" if kind == "float32" else "int8", narrow=kind == "int7",
                    epilogue=K.Epilogue("float") if kind == "float32" else
                    K.Epilogue("scale", out_dtype="uint8"), **K.target_fields(resolved))
    assert K.search_intrinsic(work) == intrinsic
    context = ms.TuneContext(mod=tvm.IRModule({"main": K.workload_func(work)}),
                             target=resolved.tvm(), space_generator=tuning._space(work),
                             task_name="conv")
    designs = context.generate_design_space()
    assert designs
    scripts = [design.mod.script() for design in designs]
    if intrinsic is None:
        assert not any("auto_tensorize" in text for text in scripts)
    else:
        assert all(f'"meta_schedule.auto_tensorize": "{intrinsic}"' in text for text in scripts)


def test_cost_model_does_not_need_xgboost():
    """meta_schedule defaults to XGBoost, which mcc does not depend on."""
    import importlib.util

    expected = "xgb" if importlib.util.find_spec("xgboost") else "random"
    assert tuning._cost_model() == expected
