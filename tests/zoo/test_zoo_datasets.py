"""The zoo's data sets load offline from their packages, with the documented sizes and values."""

import gzip

import numpy as np
import pytest
import torch

from mcc.errors import AssetError
from mcc.zoo import fashion_mnist, fashion_mnist_loader, lee_corpus, read_idx, sample_photos
from mcc.zoo.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD, PHOTOS


def test_fashion_mnist_splits_are_complete_and_balanced():
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = fashion_mnist(split).tensors
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
        assert labels.bincount().tolist() == [n // 10] * 10


def test_fashion_mnist_normalisation_constants_are_the_training_statistics():
    images = fashion_mnist("train").tensors[0]
    pixels = images * FASHION_MNIST_STD + FASHION_MNIST_MEAN
    assert pixels.min().item() == pytest.approx(0.0, abs=1e-6)
    assert pixels.max().item() == pytest.approx(1.0, abs=1e-6)
    assert pixels.mean().item() == pytest.approx(FASHION_MNIST_MEAN, abs=1e-4)
    assert pixels.std().item() == pytest.approx(FASHION_MNIST_STD, abs=1e-4)
    assert images.mean().item() == pytest.approx(0.0, abs=1e-3)


def test_loader_limit_batches_and_seeded_shuffle():
    loader = fashion_mnist_loader("test", batch_size=300, limit=1000)
    sizes = [len(y) for _, y in loader]
    assert sizes == [300, 300, 300, 100]
    first = next(iter(loader))[1]
    assert torch.equal(first, fashion_mnist("test").tensors[1][:300])
    a = next(iter(fashion_mnist_loader("test", batch_size=64, shuffle=True)))[1]
    b = next(iter(fashion_mnist_loader("test", batch_size=64, shuffle=True)))[1]
    assert torch.equal(a, b) and not torch.equal(a, fashion_mnist("test").tensors[1][:64])


def test_missing_fashion_mnist_names_the_package_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MCC_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(AssetError) as info:
        fashion_mnist("test")
    message = str(info.value)
    assert "dataset-fashion-mnist" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "t10k-images-idx3-ubyte.gz") in message


def test_unknown_split_is_an_asset_error():
    with pytest.raises(AssetError, match="'train' and 'test', not 'validation'"):
        fashion_mnist("validation")


def _write_idx(path, header: bytes, payload: bytes):
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def test_read_idx_parses_the_header_and_rejects_bad_files(tmp_path):
    good = tmp_path / "good.gz"
    _write_idx(good, b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big"),
               bytes(range(6)))
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    short = tmp_path / "short.gz"
    _write_idx(short, b"\x00\x00\x08\x01" + (10).to_bytes(4, "big"), bytes(7))
    with pytest.raises(AssetError, match="truncated"):
        read_idx(short)
    floats = tmp_path / "floats.gz"
    _write_idx(floats, b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big"), bytes(4))
    with pytest.raises(AssetError, match="not an IDX file of unsigned bytes"):
        read_idx(floats)
    plain = tmp_path / "plain.gz"
    plain.write_bytes(b"not gzip")
    with pytest.raises(AssetError, match="gzipped IDX"):
        read_idx(plain)


def test_sample_photos_are_every_photo_and_its_mirror():
    names, images = sample_photos()
    assert len(names) == 2 * len(PHOTOS) == 38
    assert names[:4] == ["astronaut", "astronaut-mirrored", "brick", "brick-mirrored"]
    assert images.shape == (38, 3, 224, 224)
    assert images.min().item() >= -1.0 and images.max().item() <= 1.0
    assert torch.equal(images[1], images[0].flip(-1))
    camera = names.index("camera")  # greyscale: the same values in every channel
    assert torch.equal(images[camera, 0], images[camera, 2])
    small = sample_photos(size=32).images
    assert small.shape == (38, 3, 32, 32)


def test_lee_corpus_has_50_documents_and_1225_rated_pairs():
    documents, ratings = lee_corpus()
    assert len(documents) == 50 and all(len(d) > 100 for d in documents)
    assert ratings.shape == (50, 50)
    upper = ratings[np.triu_indices(50, k=1)]
    assert upper.size == 1225 and upper.min() >= 0.0 and upper.max() <= 1.0
    assert np.all(np.diag(ratings) == 1.0)
