"""The zoo's evaluation data: Fashion-MNIST, scikit-image's photographs, the Lee corpus.

All three are real data that install offline (see :mod:`mcc.zoo.assets` for the packages):

* Fashion-MNIST (70,000 28×28 greyscale clothing images, 10 classes) from Debian's
  ``dataset-fashion-mnist``, read from its gzipped IDX files. ``MCC_FASHION_MNIST_DIR`` points
  elsewhere for systems without the Debian package (the same four files from Zalando's
  repository).
* Every photograph scikit-image ships (cat, coffee, astronaut, ...), for ImageNet models;
  scikit-learn's two sample photographs (a temple, a flower) to calibrate quantizers on, so
  that calibration never sees the evaluation images.
* The Lee corpus: 50 news documents and human similarity ratings of all 1,225 pairs (Lee,
  Pincombe & Welsh, 2005), shipped in gensim's wheel as test data, and the 300 different
  documents of its background corpus, for calibration.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from mcc.errors import AssetError
from mcc.zoo.assets import (INSTALL_FASHION_MNIST, INSTALL_GENSIM, INSTALL_SKIMAGE,
                            INSTALL_SKLEARN, data_file, package_dir, require)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package puts it
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
# Mean and standard deviation of the training images' pixels in [0, 1]; the reference CNN
# was trained on images normalised with them.
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

_FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fashion_mnist(split: str = "train") -> TensorDataset:
    """Fashion-MNIST's ``"train"`` (60,000) or ``"test"`` (10,000) split: float32 images
    ``[N, 1, 28, 28]`` normalised with :data:`FASHION_MNIST_MEAN` / :data:`FASHION_MNIST_STD`,
    and int64 labels."""
    images, labels = _fashion_raw(fashion_mnist_dir(), _check_split(split))
    x = (images.unsqueeze(1).float() / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return TensorDataset(x, labels.long())


def fashion_mnist_loader(split: str = "test", batch_size: int = 256, shuffle: bool = False,
                         limit: int | None = None) -> DataLoader:
    """A DataLoader over :func:`fashion_mnist`; ``limit`` keeps the first ``limit`` images.
    Shuffling is seeded, so two loaders made alike yield the same batches."""
    dataset = fashion_mnist(split)
    if limit is not None:
        dataset = TensorDataset(*(t[:limit] for t in dataset.tensors))
    generator = torch.Generator().manual_seed(0) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def _check_split(split: str) -> str:
    if split not in _FASHION_FILES:
        raise AssetError(f"Fashion-MNIST has the splits 'train' and 'test', not {split!r}")
    return split


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("MCC_FASHION_MNIST_DIR", FASHION_MNIST_DIR))


@functools.lru_cache(maxsize=2)
def _fashion_raw(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 28, 28] and uint8 labels [N], parsed once per process."""
    purpose = "the Fashion-MNIST data set"
    package = "dataset-fashion-mnist (Debian/Ubuntu; or set MCC_FASHION_MNIST_DIR)"
    image_file, label_file = (data_file(folder / name, package, INSTALL_FASHION_MNIST,
                                        purpose) for name in _FASHION_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise AssetError(f"{str(image_file)!r} and {str(label_file)!r} do not hold matching "
                         f"images and labels ({tuple(images.shape)} vs {tuple(labels.shape)}); "
                         f"reinstall them with: {INSTALL_FASHION_MNIST}")
    return images, labels


def read_idx(path: Path) -> torch.Tensor:
    """Read a gzipped IDX file of unsigned bytes (the MNIST format): a big-endian header of
    magic ``0x0000 08 <ndim>`` and ``ndim`` 32-bit sizes, then the data."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise AssetError(f"cannot read {str(path)!r} as a gzipped IDX file ({exc}); reinstall "
                         f"it with: {INSTALL_FASHION_MNIST}") from None
    ndim = raw[3] if len(raw) >= 4 else 0
    header = 4 + 4 * ndim
    if raw[:3] != b"\x00\x00\x08" or len(raw) < header:
        raise AssetError(f"{str(path)!r} is not an IDX file of unsigned bytes; reinstall it with: "
                         f"{INSTALL_FASHION_MNIST}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        raise AssetError(f"{str(path)!r} is truncated: its header says {shape}; reinstall it with: "
                         f"{INSTALL_FASHION_MNIST}")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy())


# ---- scikit-image's photographs -------------------------------------------------------------
# Every photograph in skimage.data that needs no download (synthetic images, binary masks and
# tiny crops are left out). Each is also shown mirrored: ImageNet models are trained on
# mirrored images, so a mirror is an equally valid, different input.
PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass",
          "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "motorcycle_left",
          "motorcycle_right", "page", "retina", "rocket", "text")


class Photos(NamedTuple):
    names: list[str]
    images: torch.Tensor  # float32 [N, 3, size, size], normalised to [-1, 1]


def sample_photos(size: int = 224) -> Photos:
    """scikit-image's photographs and their mirror images, resized to ``size``×``size``
    (antialiased bilinear, aspect ratio not kept: the model sees the whole scene) and
    normalised as ``(x - 0.5) / 0.5``. Names are the photo's, ``-mirrored`` for mirrors."""
    names, images = _photos(size)
    return Photos(list(names), images.clone())


@functools.lru_cache(maxsize=1)
def _photos(size: int):
    data = require("skimage.data", "scikit-image", INSTALL_SKIMAGE, "the sample photos")
    names, images = [], []
    for name in PHOTOS:
        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            array = left if name.endswith("left") else right
        else:
            array = getattr(data, name)()
        x = torch.from_numpy(np.ascontiguousarray(array)).float() / 255.0
        if x.dim() == 2:  # greyscale: the same image in all three channels
            x = x.unsqueeze(-1).expand(-1, -1, 3)
        x = _resize(x[..., :3].permute(2, 0, 1).unsqueeze(0), size)
        images += [x, x.flip(-1)]
        names += [name, f"{name}-mirrored"]
    return tuple(names), (torch.cat(images) - 0.5) / 0.5


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False).clamp(0, 1)


def calibration_photos(size: int = 224) -> torch.Tensor:
    """28 images ``[28, 3, size, size]`` for calibrating ImageNet models, none of them an
    evaluation photo: scikit-learn's two sample photographs, each whole and cropped to 3/4 and
    1/2 of its side at the top-left, centre and bottom-right, and every crop mirrored;
    normalised like :func:`sample_photos`."""
    sklearn_data = require("sklearn.datasets", "scikit-learn", INSTALL_SKLEARN,
                           "the calibration photos")
    crops = []
    for array in sklearn_data.load_sample_images().images:
        x = torch.from_numpy(np.ascontiguousarray(array)).float().permute(2, 0, 1)[None] / 255.0
        height, width = x.shape[-2:]
        crops.append(_resize(x, size))
        for fraction in (0.75, 0.5):
            h, w = int(height * fraction), int(width * fraction)
            for top, left in ((0, 0), ((height - h) // 2, (width - w) // 2), (height - h, width - w)):
                crops.append(_resize(x[..., top:top + h, left:left + w], size))
    images = torch.cat(crops)
    return (torch.cat([images, images.flip(-1)]) - 0.5) / 0.5


# ---- the Lee corpus -------------------------------------------------------------------------
class LeeCorpus(NamedTuple):
    documents: list[str]
    ratings: np.ndarray  # [50, 50]; ratings[i, j] for i < j is the mean human similarity in [0, 1]


def lee_corpus() -> LeeCorpus:
    """The 50 Lee news documents and the mean human similarity rating of each pair (upper
    triangle of a 50×50 matrix), from gensim's test data (gensim is not imported)."""
    documents, ratings = _lee()
    return LeeCorpus(list(documents), ratings.copy())


def lee_background() -> list[str]:
    """The Lee background corpus: 300 news documents from the same source, none of them among
    the 50 rated ones (for calibrating quantizers of text encoders)."""
    return list(_documents("lee_background.cor"))


def _lee_file(name: str) -> Path:
    purpose = "the Lee corpus (MiniLM evaluation)"
    folder = package_dir("gensim", "gensim", INSTALL_GENSIM, purpose) / "test" / "test_data"
    return data_file(folder / name, "gensim", INSTALL_GENSIM, purpose)


@functools.lru_cache(maxsize=2)
def _documents(name: str) -> tuple[str, ...]:
    text = _lee_file(name).read_text(encoding="latin-1")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@functools.lru_cache(maxsize=1)
def _lee():
    documents = _documents("lee.cor")
    ratings_file = _lee_file("similarities0-1.txt")
    ratings = np.loadtxt(ratings_file)
    if ratings.shape != (len(documents), len(documents)):
        raise AssetError(f"{str(ratings_file)!r} holds a {ratings.shape} matrix for "
                         f"{len(documents)} documents; reinstall gensim with: {INSTALL_GENSIM}")
    return documents, ratings
