"""Integer references for the int8 kernels, written with numpy int64 and nothing from mcc.

They spell out the arithmetic the kernels must reproduce bit for bit: zero-point padding,
grouped accumulation, int32 bias, and the two requantizations.
"""

from __future__ import annotations

import numpy as np


def conv2d(x, w, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, pad_value=0):
    """``x`` uint8 codes [N, C, H, W], ``w`` int8 codes [OC, C/groups, KH, KW] -> int64 sums."""
    x, w = np.asarray(x, np.int64), np.asarray(w, np.int64)
    n, c, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    pt, pl, pb, pr = padding
    xp = np.full((n, c, h + pt + pb, wd + pl + pr), pad_value, np.int64)
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    oh = (h + pt + pb - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + pl + pr - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, oc, oh, ow), np.int64)
    ocg = oc // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                y0, x0 = i * dilation[0], j * dilation[1]
                patch = xp[:, g * icg:(g + 1) * icg,
                           y0:y0 + stride[0] * (oh - 1) + 1:stride[0],
                           x0:x0 + stride[1] * (ow - 1) + 1:stride[1]]
                out[:, g * ocg:(g + 1) * ocg] += np.einsum(
                    "nchw,oc->nohw", patch, w[g * ocg:(g + 1) * ocg, :, i, j])
    return out


def dense(a, w):
    return np.asarray(a, np.int64) @ np.asarray(w, np.int64).T


def requantize_fixed(acc, multiplier, shift, zero_point, qmin, qmax, axis=1):
    """``clamp(((acc)·m + 2^(s−1)) >> s + zero_point)``, per channel along ``axis``."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    m = np.asarray(multiplier, np.int64).reshape(shape)
    s = np.asarray(shift, np.int64).reshape(shape)
    r = (np.asarray(acc, np.int64) * m + (np.int64(1) << (s - 1))) >> s
    return np.clip(r + zero_point, qmin, qmax)


def requantize_scale(acc, scale, zero_point, qmin, qmax, axis=1):
    """``clamp(round_half_even(float32(acc)·scale) + zero_point)`` in float32, per channel."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    y = np.asarray(acc).astype(np.float32) * np.asarray(scale, np.float32).reshape(shape)
    return np.clip(np.rint(y) + np.float32(zero_point), qmin, qmax).astype(np.int64)
