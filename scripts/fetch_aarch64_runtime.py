"""Put the aarch64 TVM runtime (libtvm_runtime.so, libtvm_ffi.so) of this TVM release in
~/.cache/mcc/aarch64-tvm-VERSION (or $MCC_AARCH64_TVM), for running ARM artifacts under
qemu-user in the tests (tests/backends/tvm/qemu.py reads the same place).

They come from the apache-tvm and apache-tvm-ffi wheels for manylinux aarch64, the same
releases as the installed ones; nothing else of the wheels is kept.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

LIBRARIES = {"apache_tvm-": "tvm/lib/libtvm_runtime.so", "apache_tvm_ffi-": "tvm_ffi/lib/libtvm_ffi.so"}


def main() -> int:
    tvm_version = version("apache-tvm")
    default = Path.home() / ".cache" / "mcc" / f"aarch64-tvm-{tvm_version}"
    target = Path(os.environ.get("MCC_AARCH64_TVM", default))
    if all((target / Path(member).name).is_file() for member in LIBRARIES.values()):
        print(f"aarch64 TVM runtime already in {target}")
        return 0
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--platform", "manylinux_2_28_aarch64",
                        "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
                        "-d", tmp, f"apache-tvm=={tvm_version}",
                        f"apache-tvm-ffi=={version('apache-tvm-ffi')}"], check=True)
        for wheel in Path(tmp).glob("*.whl"):
            member = LIBRARIES[wheel.name.split("-")[0] + "-"]
            with zipfile.ZipFile(wheel) as z:
                (target / Path(member).name).write_bytes(z.read(member))
    print(f"aarch64 TVM runtime written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
