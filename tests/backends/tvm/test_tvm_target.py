"""x86 targets: names, host detection from /proc/cpuinfo text, feature checks, errors."""

import pytest

from mcc.backends.tvm.target import (TARGETS, VALID, CpuTarget, check_runnable, host_name,
                                     resolve)
from mcc.errors import MccError, TargetError

_BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx"
ZEN4 = f"vendor_id\t: AuthenticAMD\nflags\t\t: {_BASE} avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni\n"
XEON_VNNI = ZEN4.replace("AuthenticAMD", "GenuineIntel")
SKYLAKE = f"vendor_id\t: GenuineIntel\nflags\t\t: {_BASE} avx2 fma avx512f avx512dq avx512bw avx512vl\n"
HASWELL = f"vendor_id\t: GenuineIntel\nflags\t\t: {_BASE} avx2 fma\n"
OLD = f"vendor_id\t: GenuineIntel\nflags\t\t: {_BASE}\n"


@pytest.mark.parametrize("cpuinfo, expected", [
    (ZEN4, "znver4"), (XEON_VNNI, "cascadelake"), (SKYLAKE, "skylake-avx512"), (HASWELL, "haswell")])
def test_host_detection_from_cpuinfo_flags(cpuinfo, expected):
    assert host_name(cpuinfo) == expected
    target = resolve("x86", cpuinfo)
    assert target.mcpu == expected
    assert target.vnni == (expected in ("znver4", "cascadelake"))
    assert target.vector_bits == (256 if expected == "haswell" else 512)


def test_cpu_without_avx2_is_refused_with_the_named_alternatives():
    with pytest.raises(TargetError, match="AVX2") as err:
        resolve("x86", OLD)
    assert "skylake-avx512" in str(err.value)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_named_targets(name):
    target = resolve(name)
    assert isinstance(target, CpuTarget) and target.name == name == target.mcpu
    assert target.tvm().attrs["mcpu"] == name
    assert ("avx512_vnni" in target.features) == target.vnni
    assert CpuTarget.from_json(target.to_json()) == target
    assert resolve(target) is target


def test_unknown_target_lists_the_valid_ones():
    with pytest.raises(MccError) as err:
        resolve("pentium4")
    for name in VALID:
        assert name in str(err.value)
    with pytest.raises(TargetError):
        resolve(42)


def test_code_for_a_richer_cpu_is_refused():
    znver4 = resolve("znver4")
    assert znver4.missing_on_host(HASWELL) == ["avx512f", "avx512bw", "avx512dq", "avx512vl",
                                               "avx512_vnni"]
    assert resolve("haswell").missing_on_host(ZEN4) == []
    with pytest.raises(TargetError, match="avx512_vnni"):
        check_runnable(znver4.features, "znver4", HASWELL)
    check_runnable(resolve("haswell").features, "haswell", ZEN4)
