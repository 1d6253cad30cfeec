"""Every observer on tensors whose right range is known by hand."""

import pytest
import torch

from mcc.quant import FakeQuantize, make_observer, qparams


def rng(*batches, kind, axis=None, **kw):
    obs = make_observer(kind, axis, **kw)
    for b in batches:
        obs.observe(torch.as_tensor(b, dtype=torch.float32))
    return obs


def test_minmax_over_batches():
    lo, hi = rng([-1.0, 2.0, 0.5], [-3.0, 1.0], kind="minmax").range(0, 255, False)
    assert (lo.item(), hi.item()) == (-3.0, 2.0)


def test_minmax_per_channel():
    w = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.1, -4.0]])
    lo, hi = rng(w, kind="minmax", axis=0).range(-127, 127, True)
    assert lo.tolist() == [-1.0, -4.0] and hi.tolist() == [0.5, 2.0]
    scale, _ = qparams(lo, hi, -127, 127, True)
    torch.testing.assert_close(scale, torch.tensor([1 / 127, 4 / 127]))


def test_moving_minmax_averages_with_constant_0_01():
    lo, hi = rng([0.0, 1.0], [0.0, 3.0], [-1.0, 3.0], kind="moving-minmax").range(0, 255, False)
    # hi: 1 → 1 + 0.01·(3 − 1) = 1.02 → 1.02 + 0.01·(3 − 1.02) = 1.0398; lo: 0 → 0 → −0.01
    assert hi.item() == pytest.approx(1.0398) and lo.item() == pytest.approx(-0.01)


def test_percentile_of_a_uniform_ramp():
    x = torch.arange(10001, dtype=torch.float32) / 10000  # 0, 0.0001, …, 1
    lo, hi = rng(x, kind="percentile", percentile=99.0).range(0, 255, False)
    bin_width = 1 / 2048
    assert hi.item() == pytest.approx(0.99, abs=bin_width)
    assert lo.item() == pytest.approx(0.01, abs=bin_width)


def test_percentile_ignores_a_rare_outlier():
    x = torch.cat([torch.linspace(-1, 1, 100000), torch.tensor([50.0])])
    lo, hi = rng(x, kind="percentile", percentile=99.9).range(0, 255, False)
    # 99.9% of 100001 values lie below 0.998; bins are 51/2048 ≈ 0.025 wide
    assert hi.item() == pytest.approx(0.998, abs=0.025)
    assert lo.item() == pytest.approx(-0.998, abs=0.025)


def test_histogram_widens_and_keeps_counts():
    obs = rng(torch.linspace(0, 1, 1000), torch.linspace(1, 4, 3000), kind="percentile", percentile=75.0)
    assert obs.counts.sum().item() == 4000
    assert (obs.lo.item(), obs.hi.item()) == (0.0, 4.0)
    # median of the union: 2000 values below 1.667 (all of [0, 1] and a third of [1, 4])
    assert obs._quantile(0.5).item() == pytest.approx(1.0 + 3.0 / 3, abs=4 / 2048 * 2)


def test_mse_clips_an_outlier_where_the_maths_says():
    # 1000 values at ±1 and one at 10 on a 4-bit symmetric grid (qmax 7). For a range a near 7 the
    # ±1 values round to one step a/7 and the outlier clips to a: error 1000(1 − a/7)² + (10 − a)²,
    # smallest at a = 305.7/42.8 ≈ 7.14. Min-max (a = 10) costs 1000(1 − 10/7)² ≈ 184.
    x = torch.cat([torch.ones(500), -torch.ones(500), torch.tensor([10.0])])
    lo, hi = rng(x, kind="mse").range(-7, 7, True)
    assert -lo.item() == pytest.approx(hi.item())
    assert 7.0 <= hi.item() <= 7.3

    def error(a):
        scale, zp = qparams(-a, a, -7, 7, True)
        q = torch.fake_quantize_per_tensor_affine(x, scale, zp, -7, 7)
        return ((q - x) ** 2).sum().item()

    assert error(hi.item()) < 10 < 180 < error(10.0)


def test_mse_per_channel_for_weights():
    w = torch.stack([torch.linspace(-1, 1, 64), torch.linspace(-8, 8, 64)])
    lo, hi = rng(w, kind="mse", axis=0).range(-127, 127, True)
    # 8 bits and no outliers: the full range is best on both channels
    assert hi.tolist() == pytest.approx([1.0, 8.0], rel=0.02)


def test_entropy_threshold_at_the_end_of_the_bulk():
    # 10000 values uniform on [0, 1] and one at 4: KL picks ≈ 1 (the outlier's bin is clipped)
    x = torch.cat([torch.rand(10000, generator=torch.Generator().manual_seed(0)), torch.tensor([4.0])])
    lo, hi = rng(x, kind="entropy").range(0, 255, False)
    assert lo.item() == pytest.approx(0.0, abs=1e-4)
    assert 0.95 <= hi.item() <= 1.05


def test_entropy_symmetric_for_signed_data():
    x = torch.cat([torch.rand(20000, generator=torch.Generator().manual_seed(1)) * 2 - 1,
                   torch.tensor([-4.0, 4.0])])
    lo, hi = rng(x, kind="entropy").range(-128, 127, True)
    # a little above 1: the candidates step by 7 histogram bins (0.014) and the abs-histogram
    # folding smears the edge by a bin
    assert 0.95 <= hi.item() <= 1.1 and lo.item() == -hi.item()


@pytest.mark.parametrize("kind", ["minmax", "moving-minmax", "percentile", "mse", "entropy"])
def test_every_observer_quantizes_a_simple_ramp_exactly(kind):
    # 0, 1/255, …, 1 is the uint8 grid of [0, 1]: every observer keeps the full range (to within
    # one histogram bin), so quantize→dequantize returns the ramp up to that bin
    x = torch.arange(256, dtype=torch.float32) / 255
    fq = FakeQuantize(bits=8, signed=False, observer=kind, percentile=100.0)
    fq.start_observing()
    fq(x)
    fq.freeze()
    assert fq.scale.item() == pytest.approx(1 / 255, rel=0.02)
    assert fq.zero_point.item() == 0
    torch.testing.assert_close(fq(x), x, rtol=0, atol=0.02)


def test_unknown_observer():
    with pytest.raises(ValueError, match="unknown observer"):
        make_observer("kmeans")
