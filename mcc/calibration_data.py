"""Calibration data from files, for the command line: ``.npy``, ``.npz`` or a folder of images.

Quantizing activations needs real inputs to observe their ranges (calibrating on random noise
gives wrong scales), so the CLI takes them from a file:

* ``.npy``: one array shaped like the model input with a leading sample axis, ``[N, C, H, W]``;
* ``.npz``: the array named ``x`` or ``input``, or the only array in the file;
* a directory of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``): each resized to the model's
  input height and width, converted to RGB (or grey for one-channel models), scaled to [0, 1],
  then normalised with ``mean``/``std`` when given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mcc.errors import ModelError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def read_calibration_data(path, input_shape: Sequence[int], *, batch_size: int = 8,
                          mean: Sequence[float] | None = None,
                          std: Sequence[float] | None = None) -> list[torch.Tensor]:
    """Batches of calibration inputs for a model whose input has ``input_shape``."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"calibration data {str(path)!r} does not exist")
    if path.is_dir():
        array = _images(path, input_shape, mean, std)
    elif path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = [n for n in ("x", "input") if n in archive.files] or archive.files
            if len(names) != 1 and not set(names) & {"x", "input"}:
                raise ModelError(f"{str(path)!r} holds arrays {archive.files}; name the calibration "
                                 "inputs 'x'")
            array = archive[names[0]]
    else:
        raise ModelError(f"calibration data {str(path)!r} must be a .npy or .npz file or a "
                         "directory of images")
    expected = tuple(input_shape[1:])
    if array.ndim != len(input_shape) or tuple(array.shape[1:]) != expected:
        raise ModelError(f"calibration data {str(path)!r} has shape {list(array.shape)}; the model "
                         f"takes [N, {', '.join(map(str, expected))}]")
    if not np.isfinite(array).all():
        raise ModelError(f"calibration data {str(path)!r} contains NaN or infinity")
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float()
    return list(torch.split(tensor, batch_size))


def _images(folder: Path, input_shape, mean, std) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ModelError(f"{str(folder)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    channels, height, width = input_shape[1], input_shape[-2], input_shape[-1]
    images = []
    for f in files:
        with Image.open(f) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((width, height))
            a = np.asarray(img, dtype=np.float32) / 255.0
        images.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
    array = np.stack(images)
    if mean is not None:
        array = array - np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    if std is not None:
        array = array / np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return array
