"""Measuring kernels on devices registered with TVM's RPC tracker (``mcc tune --rpc``).

A farm is a tracker (``python -m tvm.exec.rpc_tracker``) and the boards that registered with it
under a key (``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY``). mcc builds every
candidate here and exports it as a shared library with the target's compiler, so a board needs
the TVM runtime only, no compiler; a free board of the key loads the library and times it.

TVM's own client can wait without limit: it retries a refused connection for 60 s, and asking
for a key whose boards are all busy, or that no board serves, blocks until one comes. mcc talks
the tracker's protocol itself instead, on sockets with a timeout, so every wait ends after
``Farm.timeout`` seconds with a :class:`BackendError` that says what to check.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
import tempfile
from dataclasses import dataclass

from mcc.errors import BackendError

#: Longest a board serves one session before it drops it: bounds how long a client that hangs
#: or dies holds a board that others are waiting for.
SESSION_SECONDS = 120
#: The library file name a candidate is exported to and uploaded as.
LIBRARY = "mcc_kernel.so"


def export(lib, directory: str | None = None, **options) -> str:
    """Export a built kernel as a shared library into ``directory`` (a new temporary one when
    None) with ``export_library``'s ``options`` (a target's ``export_options()``: an ARM target
    names its cross compiler); returns its path."""
    directory = directory or tempfile.mkdtemp(prefix="mcc-rpc-")
    path = os.path.join(directory, LIBRARY)
    lib.export_library(path, **options)
    return path


@dataclass(frozen=True)
class Farm:
    """The devices registered with the tracker at ``host:port`` under ``key``; ``timeout`` bounds,
    in seconds, each wait: for the tracker to answer and for a device of the key to be free."""

    host: str
    port: int
    key: str
    timeout: float = 30.0

    @classmethod
    def parse(cls, address: str, key: str | None, timeout: float = 30.0) -> "Farm":
        """The farm for ``--rpc HOST:PORT --key KEY``."""
        host, _, port = (address or "").strip().rpartition(":")
        host = host.strip("[]")  # [::1]:9190
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BackendError(f"--rpc must be HOST:PORT of an RPC tracker, e.g. 127.0.0.1:9190; "
                               f"got {address!r}")
        if not key or not key.strip() or any(c.isspace() or c == ":" for c in key.strip()):
            raise BackendError(f"--key must name the devices to measure on, as their rpc_server "
                               f"--key says (no spaces or colons); got {key!r}")
        if not timeout > 0:
            raise BackendError(f"the RPC timeout must be a positive number of seconds, got {timeout}")
        return cls(host, int(port), key.strip(), float(timeout))

    def __str__(self) -> str:
        return f"key {self.key!r} at the RPC tracker {self.host}:{self.port}"

    def _query(self) -> str:
        return f"python -m tvm.exec.query_rpc_tracker --host {self.host} --port {self.port}"

    # ---- the tracker's protocol, on a socket with a timeout --------------------------------
    def _connect(self) -> socket.socket:
        from tvm.rpc import base

        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise BackendError(f"cannot reach the RPC tracker at {self.host}:{self.port} ({e}); "
                               "start it with python -m tvm.exec.rpc_tracker --host 0.0.0.0 "
                               f"--port {self.port}, or correct --rpc") from None
        try:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        except OSError as e:
            sock.close()
            raise BackendError(f"{self.host}:{self.port} did not answer as an RPC tracker within "
                               f"{self.timeout:g} s ({e or 'timed out'}); check --rpc names the "
                               f"tracker's port ({self._query()})") from None
        if magic != base.RPC_TRACKER_MAGIC:
            sock.close()
            raise BackendError(f"{self.host}:{self.port} is not an RPC tracker; check --rpc "
                               f"({self._query()})")
        return sock

    def devices(self) -> int:
        """How many devices are registered under the key (at least one, else a BackendError)."""
        from tvm.rpc import base

        sock = self._connect()
        try:
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            status, summary = base.recvjson(sock)
            if status != base.TrackerCode.SUCCESS:
                raise ValueError(f"answer {status}")
        except (OSError, ValueError) as e:
            raise BackendError(f"the RPC tracker at {self.host}:{self.port} did not send its "
                               f"summary within {self.timeout:g} s ({e or 'timed out'})") from None
        finally:
            sock.close()
        keys = [item["key"].partition(":")[2] for item in summary["server_info"]
                if item["key"].startswith("server:")]
        if self.key not in keys:
            known = ", ".join(sorted(set(keys))) or "none"
            raise BackendError(f"no device is registered under {self} (keys registered: {known}); "
                               "on each board run python -m tvm.exec.rpc_server --tracker "
                               f"{self.host}:{self.port} --key {self.key}, then check with "
                               f"{self._query()}")
        return keys.count(self.key)

    def session(self):
        """A session on a free device of the key, once the tracker hands one out; a BackendError
        when none is free within the timeout."""
        from tvm import rpc
        from tvm.rpc import base

        sock = self._connect()
        try:
            base.sendjson(sock, [base.TrackerCode.REQUEST, self.key, "", 1])
            status, answer = base.recvjson(sock)
            if status != base.TrackerCode.SUCCESS:
                raise ValueError(f"answer {status}")
            url, port, matchkey = answer
        except TimeoutError:
            raise BackendError(f"no free device for {self} within {self.timeout:g} s: they are all "
                               "busy or gone; wait, add devices, or allow longer with "
                               f"--rpc-timeout (see {self._query()})") from None
        except (OSError, ValueError) as e:
            raise BackendError(f"the RPC tracker at {self.host}:{self.port} failed while handing "
                               f"out a device for key {self.key!r} ({e})") from None
        finally:
            sock.close()  # the tracker gives a device to a closed request to the next one
        try:
            return rpc.connect(url, port, matchkey, session_timeout=SESSION_SECONDS)
        except (RuntimeError, OSError) as e:
            raise BackendError(f"the tracker gave device {url}:{port} for key {self.key!r}, but it "
                               f"cannot be reached from here ({e}); start its rpc_server with "
                               "--custom-addr set to an address this machine reaches") from None

    def wait_for_a_device(self) -> None:
        """Return once the tracker hands out a device of the key, without keeping it; a
        BackendError when none is free within the timeout. Tuning asks before it builds
        anything, so a farm whose devices are all busy fails in seconds, not after a search."""
        self.session()  # dropped at once: its server registers as free again

    # ---- measuring -------------------------------------------------------------------------
    def seconds(self, lib, arrays, options: dict, repeat: int = 10) -> float:
        """The fastest of ``repeat`` runs of the built kernel ``lib`` ("main") on ``arrays``,
        on one free device; ``options`` link it (see :func:`export`)."""
        import tvm

        with tempfile.TemporaryDirectory(prefix="mcc-rpc-") as tmp:
            path = export(lib, tmp, **options)
            remote = self.session()
            try:
                remote.upload(path)
                mod = remote.load_module(LIBRARY)
                device = remote.cpu(0)
                args = [tvm.runtime.tensor(a, device=device) for a in arrays]
                timer = mod.time_evaluator("main", device, number=1, repeat=repeat)
                return float(min(timer(*args).results))
            except (RuntimeError, OSError) as e:
                raise BackendError(f"measuring a kernel on a device of {self} failed ({e}); check "
                                   "that the board's TVM runtime matches this TVM "
                                   f"({tvm.__version__}) and that the target fits the board") from None

    def runner(self, evaluator_config, workers: int):
        """meta_schedule's RPC runner on this farm, ``workers`` candidates at a time, with mcc's
        bounded wait for a device."""
        from tvm.s_tir import meta_schedule as ms

        config = ms.runner.RPCConfig(self.host, self.port, self.key, session_priority=1,
                                     session_timeout_sec=SESSION_SECONDS)
        return ms.runner.RPCRunner(config, evaluator_config, max_workers=workers,
                                   f_create_session=functools.partial(_runner_session, self))


def _runner_session(farm: Farm, _config):
    """meta_schedule's session factory (it runs in the runner's worker processes)."""
    return farm.session()
