"""Observers: collect statistics of a tensor over calibration batches and choose its range.

Every observer answers one question — which real range ``[lo, hi]`` should the integer grid
cover — and :func:`mcc.quant.affine.qparams` turns that range into a scale and zero point.
They differ in how they trade clipping error (values outside the range) against rounding
error (a wider range means a coarser grid):

``minmax``
    The exact extremes seen. No clipping, so one outlier coarsens the whole grid. Right for
    weights (every value is known) and for well-behaved activations after BN and ReLU.
``moving-minmax``
    Extremes averaged across batches (``r ← r + 0.01·(batch_r − r)``, as PyTorch's
    ``MovingAverageMinMaxObserver``): one batch with an outlier no longer sets the range.
``percentile``
    The ``p``-th and ``(100−p)``-th percentiles of the values (default ``p = 99.99``): clips the
    rare tail. Good for activations with long tails (no ReLU, GELU, attention).
``mse``
    Searches 100 clipping ratios and keeps the range whose quantize→dequantize error
    (squared, summed over a histogram of the data) is smallest. The best choice for low-bit
    weights and a safe default for activations.
``entropy``
    TensorRT's calibration: the threshold whose quantized distribution is closest (in KL
    divergence) to the observed one. Good for int8 activations of classification networks.

Observers with ``axis`` keep per-channel statistics (channel = that dimension); the
histogram-based ones (percentile, mse, entropy) hold a 2048-bin histogram per channel that
widens, re-binning what it holds, when a later batch exceeds its range.
"""

from __future__ import annotations

import math

import torch

OBSERVERS = ("minmax", "moving-minmax", "percentile", "mse", "entropy")


class Observer:
    """Base class: ``observe(x)`` for every batch, then ``range(grid)`` gives ``(lo, hi)``."""

    def __init__(self, axis: int | None = None):
        self.axis = axis
        self.reset()

    def reset(self) -> None:
        self.batches = 0

    @property
    def empty(self) -> bool:
        return self.batches == 0

    def observe(self, x: torch.Tensor) -> None:
        self._observe(_rows(x.detach().float(), self.axis))
        self.batches += 1

    def _observe(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self, qmin: int, qmax: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)``: 0-d tensors per tensor, ``[C]`` tensors per channel."""
        lo, hi = self._range(qmin, qmax, symmetric)
        if self.axis is None:
            return lo.reshape(()), hi.reshape(())
        return lo, hi

    def _range(self, qmin, qmax, symmetric):
        raise NotImplementedError


def _rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as ``[channels, values]`` (one row when per tensor)."""
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


class MinMaxObserver(Observer):
    """Running minimum and maximum."""

    def reset(self):
        super().reset()
        self.lo = self.hi = None

    def _observe(self, rows):
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def _range(self, qmin, qmax, symmetric):
        return self.lo, self.hi


class MovingMinMaxObserver(MinMaxObserver):
    """Minimum and maximum as exponential moving averages (the first batch sets them)."""

    def __init__(self, axis: int | None = None, averaging_constant: float = 0.01):
        self.averaging_constant = averaging_constant
        super().__init__(axis)

    def _observe(self, rows):
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            c = self.averaging_constant
            self.lo, self.hi = self.lo + c * (lo - self.lo), self.hi + c * (hi - self.hi)


class HistogramObserver(Observer):
    """Per-row histograms over ``[lo, hi]`` that widen (re-binning by bin centre) as needed."""

    bins = 2048

    def reset(self):
        super().reset()
        self.lo = self.hi = self.counts = None

    def _observe(self, rows):
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        if self.counts is None:
            self.lo, self.hi = lo, _widen(lo, hi)
            self.counts = torch.zeros(rows.shape[0], self.bins, dtype=torch.float64)
        elif bool((lo < self.lo).any() or (hi > self.hi).any()):
            new_lo, new_hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
            new_hi = _widen(new_lo, new_hi)
            centres = self.centres()
            old = self.counts
            self.lo, self.hi = new_lo, new_hi
            self.counts = torch.zeros_like(old)
            self.counts.scatter_add_(1, self._bin(centres), old)
        self.counts.scatter_add_(1, self._bin(rows), torch.ones_like(rows, dtype=torch.float64))

    def _bin(self, values: torch.Tensor) -> torch.Tensor:
        width = (self.hi - self.lo)[:, None]
        idx = torch.floor((values - self.lo[:, None]) / width * self.bins)
        return idx.clamp(0, self.bins - 1).long()

    def width(self) -> torch.Tensor:
        return (self.hi - self.lo) / self.bins

    def centres(self) -> torch.Tensor:
        """``[C, bins]`` bin centres."""
        steps = torch.arange(self.bins, dtype=torch.float32) + 0.5
        return self.lo[:, None] + self.width()[:, None] * steps


def _widen(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """A strictly positive histogram width even for constant data."""
    return torch.where(hi > lo, hi, lo + torch.clamp(lo.abs(), min=1.0) * 1e-6)


class PercentileObserver(HistogramObserver):
    """The ``(100 − p)``-th and ``p``-th percentiles, interpolated within a bin."""

    def __init__(self, axis: int | None = None, percentile: float = 99.99):
        if not 50.0 < percentile <= 100.0:
            raise ValueError("percentile must be in (50, 100]")
        self.percentile = percentile
        super().__init__(axis)

    def _range(self, qmin, qmax, symmetric):
        return (self._quantile(1.0 - self.percentile / 100.0),
                self._quantile(self.percentile / 100.0))

    def _quantile(self, fraction: float) -> torch.Tensor:
        counts = self.counts
        total = counts.sum(dim=1, keepdim=True)
        cdf = torch.cumsum(counts, dim=1)
        target = fraction * total
        # first bin whose cumulative count reaches the target; interpolate inside it
        k = torch.searchsorted(cdf, target).clamp(max=self.bins - 1)
        before = torch.where(k > 0, cdf.gather(1, (k - 1).clamp(min=0)), torch.zeros_like(target))
        inside = counts.gather(1, k).clamp(min=1e-12)
        frac = ((target - before) / inside).clamp(0.0, 1.0)
        value = self.lo[:, None] + self.width()[:, None] * (k.double() + frac).float()
        return value[:, 0]


class MSEObserver(HistogramObserver):
    """The clipping range (a fraction 0.01…1.00 of the observed one) with the least squared
    quantize→dequantize error over the histogram."""

    candidates = 100

    def _range(self, qmin, qmax, symmetric):
        from mcc.quant.affine import qparams

        centres = self.centres()
        counts = self.counts.float()
        best_err = torch.full((centres.shape[0],), math.inf)
        best_lo, best_hi = self.lo.clone(), self.hi.clone()
        lo0, hi0 = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)
        if symmetric:
            m = torch.maximum(-lo0, hi0)
            lo0, hi0 = -m, m
        for j in range(1, self.candidates + 1):
            ratio = j / self.candidates
            lo, hi = lo0 * ratio, hi0 * ratio
            scale, zp = qparams(lo, hi, qmin, qmax, symmetric)
            s, z = scale[:, None], zp[:, None].float()
            recon = s * (torch.clamp(torch.round(centres / s) + z, qmin, qmax) - z)
            err = (counts * (centres - recon) ** 2).sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return best_lo, best_hi


class EntropyObserver(HistogramObserver):
    """TensorRT's KL-divergence calibration on the histogram of ``|x|``.

    For each candidate threshold ``t`` (at least as many histogram bins as grid levels), the
    histogram clipped at ``t`` (outliers added to the last bin) is compared with its
    ``levels``-level quantized version; the ``t`` with the smallest KL divergence wins. The range
    is then ``[max(lo, −t), min(hi, t)]``.
    """

    max_candidates = 256

    def _range(self, qmin, qmax, symmetric):
        los, his = [], []
        for c in range(self.counts.shape[0]):
            lo, hi = float(self.lo[c]), float(self.hi[c])
            both_signs = lo < 0 < hi
            levels = (qmax - qmin + 1) // 2 if (qmin < 0 or both_signs) else qmax - qmin + 1
            abs_max, hist = self._abs_histogram(c)
            t = _kl_threshold(hist, levels, self.max_candidates) * abs_max
            los.append(max(lo, -t))
            his.append(min(hi, t))
        return torch.tensor(los), torch.tensor(his)

    def _abs_histogram(self, c: int) -> tuple[float, torch.Tensor]:
        """The histogram of ``|x|`` over ``[0, max|x|]`` with as many bins, and ``max|x|``."""
        centres = self.centres()[c].abs()
        abs_max = float(max(abs(float(self.lo[c])), abs(float(self.hi[c]))))
        idx = torch.floor(centres / abs_max * self.bins).clamp(0, self.bins - 1).long()
        hist = torch.zeros(self.bins, dtype=torch.float64)
        hist.scatter_add_(0, idx, self.counts[c])
        return abs_max, hist


def _kl_threshold(hist: torch.Tensor, levels: int, max_candidates: int) -> float:
    """The clipping threshold, as a fraction of the histogram's range, with least KL divergence."""
    hist = hist.double()
    bins = hist.numel()
    if levels >= bins:
        return 1.0
    stride = max(1, (bins - levels) // max_candidates)
    best, best_i = math.inf, bins
    for i in list(range(levels, bins, stride)) + [bins]:
        p = hist[:i].clone()
        p[i - 1] += hist[i:].sum()
        # merge the i bins into `levels` groups, then spread each group's mass evenly over its
        # non-empty bins: the distribution the quantized tensor would have
        group = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")
        src = hist[:i]
        nonzero = (src > 0).double()
        mass = torch.zeros(levels, dtype=torch.float64).scatter_add_(0, group, src)
        support = torch.zeros(levels, dtype=torch.float64).scatter_add_(0, group, nonzero)
        q = torch.where(nonzero > 0, mass[group] / support[group].clamp(min=1), torch.zeros_like(src))
        p_sum, q_sum = p.sum(), q.sum()
        if p_sum <= 0 or q_sum <= 0:
            continue
        p, q = p / p_sum, q / q_sum
        mask = p > 0
        # bins p has but q lacks (the clipped mass in the last bin) get a tiny q, as TensorRT does
        kl = float((p[mask] * torch.log(p[mask] / q[mask].clamp(min=1e-10))).sum())
        if kl < best:
            best, best_i = kl, i
    return best_i / bins


def make_observer(kind: str, axis: int | None = None, percentile: float = 99.99) -> Observer:
    """The observer called ``kind`` (one of :data:`OBSERVERS`)."""
    if kind == "minmax":
        return MinMaxObserver(axis)
    if kind == "moving-minmax":
        return MovingMinMaxObserver(axis)
    if kind == "percentile":
        return PercentileObserver(axis, percentile)
    if kind == "mse":
        return MSEObserver(axis)
    if kind == "entropy":
        return EntropyObserver(axis)
    raise ValueError(f"unknown observer {kind!r}; known: {', '.join(OBSERVERS)}")
