"""mcc tune --rpc on loopback: a TVM RPC tracker and two rpc_servers run as subprocesses on
127.0.0.1 (ports picked at run time), a small kernel is tuned through them, and the records must
carry times the servers measured. The failures a farm user meets (no tracker, a port that is not
a tracker, an unknown key, every device busy) must end within the timeout with a BackendError
and leave the database as it was. Every process the tests start is stopped, even when a test
fails, and the tests check that none is left.
"""

import contextlib
import shutil
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from mcc.backends.tvm import kernels as K
from mcc.backends.tvm import tuning
from mcc.backends.tvm.rpc import Farm
from mcc.backends.tvm.target import resolve
from mcc.cli import main
from mcc.errors import BackendError

HOST = resolve("x86")
KEY = "mcc-loopback"
#: A float dense layer, 8 rows of 64 -> 32: its candidates build in about a second each.
WORK = K.Dense(8, 32, 64, dtype="float32", **K.target_fields(HOST))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(groups) -> list[int]:
    """The processes, zombies aside, of these process groups."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) in groups and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


def stop(procs, grace: float = 5.0) -> None:
    """Stop every process of the groups these leaders started: SIGTERM, then SIGKILL for what is
    left after ``grace`` seconds (rpc_server forks a worker and one process per session)."""
    groups = {p.pid for p in procs}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        while alive(groups) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not alive(groups):
            return


@contextlib.contextmanager
def loopback_farm(logs, servers: int = 2, timeout: float = 5.0):
    """A tracker and ``servers`` rpc_servers on 127.0.0.1, each in its own process group with
    its output in ``logs``; yields the Farm and the processes, and stops them all on the way out,
    however the body ends."""
    procs = []

    def start(name, *args):
        with open(logs / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", *args], stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))

    try:
        port = free_port()
        start("tracker", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
              "--port-end", str(port + 1))
        farm = Farm("127.0.0.1", port, KEY, timeout)
        for i in range(servers):
            own = free_port()
            start(f"server{i}", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(own),
                  "--port-end", str(own + 1), "--tracker", f"127.0.0.1:{port}", "--key", KEY)
        wait_free(farm, servers, logs)
        yield farm, procs
    finally:
        stop(procs)


def wait_free(farm: Farm, count: int, logs, seconds: float = 60.0) -> None:
    """Wait until ``count`` devices of the farm are registered and free."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if free_devices(farm) == count:
                return
        except BackendError:
            pass  # the tracker is not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} free servers did not appear within {seconds} s: "
                                 + " | ".join(p.read_text() for p in logs.iterdir()))
        time.sleep(0.2)


def free_devices(farm: Farm) -> int:
    from tvm.rpc import base

    sock = farm._connect()
    try:
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        _, summary = base.recvjson(sock)
    finally:
        sock.close()
    return summary["queue_info"].get(farm.key, {}).get("free", 0)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("rpc-logs")


@pytest.fixture(scope="module")
def farm(logs):
    with loopback_farm(logs) as (farm, procs):
        yield farm
    assert not alive({p.pid for p in procs}), "a tracker or server process outlived the tests"


def loads(logs) -> list[int]:
    """How many libraries each server has loaded (one per measurement)."""
    return [(logs / f"server{i}.log").read_text().count("load_module") for i in range(2)]


# ---- tuning through the farm ---------------------------------------------------------------
def test_tune_measures_on_the_devices_and_records_their_times(farm, logs, tmp_path):
    """The default, every candidate and the tuned schedule run on the servers, and the database
    holds a record with their times: the searched schedule's trace when it beat the default,
    none when the hand-written schedule won (measured: it won, 7.9 against 17.6 µs). Slow: 157 s on
    the loaded 2-core machine, most of it meta_schedule importing every TVM tensor intrinsic
    (CUDA, ROCm...) as it starts a search, once per process."""
    db = tmp_path / "farm.jsonl"
    before = loads(logs)
    summary = tuning.tune([WORK], HOST, db, trials=4, farm=farm)
    (entry,) = summary["kernels"]
    assert entry["kernel"] == repr(WORK)
    assert entry["default_seconds"] > 0 and entry["tuned_seconds"] > 0
    # The 4 candidates, then the default and the tuned schedule twice each, taking turns, all
    # ran on the servers, both used.
    after = loads(logs)
    assert sum(after) - sum(before) == 4 + 2 * 2, (before, after)
    assert all(a > b for a, b in zip(after, before)), (before, after)
    (record,) = tuning.Database(db, HOST).records.values()
    assert record.workload == tuning.workload_key(WORK) and record.target == HOST.key()
    assert record.default_seconds == entry["default_seconds"]
    if entry["tuned_seconds"] < entry["default_seconds"] * (1 - tuning.MARGIN):
        assert entry["recorded"] and summary["improved"] == 1
        assert record.seconds == entry["tuned_seconds"]
        assert tuning.apply_trace(WORK, record.trace) is not None
    else:  # the hand-written schedule won: recorded as such, with the device's time
        assert not entry["recorded"] and summary["improved"] == 0 and record.trace is None
        assert record.seconds == entry["default_seconds"]
    # A second run finds the kernel tuned and measures nothing.
    again = tuning.tune([WORK], HOST, db, trials=4, farm=farm)
    assert again["tuned"] == 0 and again["already"] == 1 and loads(logs) == after


# ---- bounded failures ------------------------------------------------------------------------
def assert_fails_quickly(farm, match, db, seconds):
    start = time.monotonic()
    with pytest.raises(BackendError, match=match):
        tuning.tune([WORK], HOST, db, trials=2, farm=farm)
    took = time.monotonic() - start
    assert took < seconds, took
    return took


def test_no_tracker_at_the_address(tmp_path):
    db = tmp_path / "db.jsonl"
    assert_fails_quickly(Farm("127.0.0.1", free_port(), KEY, 2.0), "cannot reach the RPC tracker",
                         db, 10)
    assert not db.exists()


def test_a_port_that_does_not_answer_as_a_tracker_times_out(tmp_path):
    db = tmp_path / "db.jsonl"
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        took = assert_fails_quickly(Farm("127.0.0.1", silent.getsockname()[1], KEY, 1.0),
                                    "did not answer as an RPC tracker within 1 s", db, 10)
    assert took >= 1.0
    assert not db.exists()


def test_a_key_no_device_serves_lists_the_keys(farm, tmp_path):
    db = tmp_path / "db.jsonl"
    other = Farm(farm.host, farm.port, "no-such-board", 2.0)
    assert_fails_quickly(other, f"no device is registered under key 'no-such-board'.*keys "
                                f"registered: {KEY}", db, 10)
    assert not db.exists()


def test_every_device_busy_fails_after_the_timeout_and_keeps_the_database(farm, logs, tmp_path):
    """With both servers held, tune waits the farm's 2 s for a device and fails before it builds
    any candidate (which took 30 s on the loaded CI machine), leaving the database as it was."""
    import tvm

    wait_free(farm, 2, logs)
    db = tmp_path / "db.jsonl"
    other = K.Dense(1, 16, 16, dtype="float32", **K.target_fields(HOST))
    kept = tuning.Database(db, HOST)
    kept.add(tuning.Record(HOST.key(), tuning.workload_key(other), repr(other), [], 1e-6, 2e-6,
                           tvm.__version__))
    kept.save()
    text = db.read_text()
    tracker = tvm.rpc.connect_tracker(farm.host, farm.port)
    held = [tracker.request(KEY, session_timeout=60) for _ in range(2)]
    try:
        took = assert_fails_quickly(Farm(farm.host, farm.port, KEY, 2.0),
                                    "no free device for key 'mcc-loopback'.*within 2 s", db, 10)
    finally:
        del held
        tracker.close()
    assert took >= 2.0
    assert db.read_text() == text


def test_arm_candidates_are_built_for_aarch64_and_sent_to_the_farm(tmp_path):
    """A farm of ARM boards: meta_schedule's candidates for an ARM int8 kernel are compiled and
    linked here as aarch64 shared objects (what the boards load), and tune goes to the farm
    rather than refusing the target (here the tracker is absent, so it fails on reaching it)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from mcc.backends.tvm.arm import CROSS_CC
    from mcc.backends.tvm.rpc import export

    if shutil.which(CROSS_CC) is None:
        pytest.skip(f"{CROSS_CC} is not installed (scripts/install-assets.sh installs it)")
    target = resolve("arm:cortex-a76")
    work = K.Conv2d(1, 16, 6, 6, 16, (3, 3), padding=(1, 1, 1, 1), dtype="int8",
                    epilogue=K.Epilogue("int32"), pad_value=3, **target.kernel_fields())
    context = ms.TuneContext(tvm.IRModule({"main": K.workload_func(work)}), target=target.tvm(),
                             space_generator=tuning._space(target), num_threads=1)
    spaces = context.generate_design_space()
    assert spaces
    library = export(tuning.build_candidate(spaces[0].mod, target.tvm()), str(tmp_path),
                     **target.export_options())
    header = open(library, "rb").read(20)
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # aarch64
    db = tmp_path / "arm.db"
    with pytest.raises(BackendError, match="cannot reach the RPC tracker"):
        tuning.tune([work], target, db, farm=Farm("127.0.0.1", free_port(), KEY, 2.0))
    assert not db.exists()


# ---- the command line -------------------------------------------------------------------------
@pytest.mark.parametrize("argv, match", [
    (["--rpc", "127.0.0.1"], "--rpc must be HOST:PORT"),
    (["--rpc", "127.0.0.1:99999", "--key", "k"], "--rpc must be HOST:PORT"),
    (["--rpc", "127.0.0.1:9190"], "--key must name the devices"),
    (["--key", "k"], "give the tracker with --rpc HOST:PORT"),
    (["--rpc", "127.0.0.1:9190", "--key", "k", "--rpc-timeout", "0"], "positive number of seconds"),
])
def test_cli_rejects_bad_rpc_options(argv, match, tmp_path, capsys):
    db = tmp_path / "db.jsonl"
    assert main(["tune", "resnet18", "-p", "fold-bn", "-o", str(db), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mcc: error: ") and "\n" not in err and match in err, err
    assert not db.exists()


def test_cli_fails_in_seconds_on_an_unreachable_tracker(tmp_path, capsys):
    db = tmp_path / "db.jsonl"
    start = time.monotonic()
    argv = ["tune", "resnet18", "-p", "fold-bn", "-o", str(db), "--rpc", f"127.0.0.1:{free_port()}",
            "--key", KEY, "--rpc-timeout", "2"]
    assert main(argv) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip()
    assert "cannot reach the RPC tracker" in err and "python -m tvm.exec.rpc_tracker" in err, err
    assert not db.exists()


def test_the_farm_stops_every_process_when_the_body_fails(tmp_path):
    """Processes are gone after the context manager, however the test using it ends."""
    with pytest.raises(RuntimeError, match="a failing test"):
        with loopback_farm(tmp_path, servers=1) as (farm, procs):
            groups = {p.pid for p in procs}
            assert len(alive(groups)) >= 2 + 1  # tracker, server and the server's worker
            raise RuntimeError("a failing test")
    assert alive(groups) == []
    assert all(p.poll() is not None for p in procs)
