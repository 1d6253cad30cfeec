"""A small CNN trained on scikit-learn's digits: a real trained model for quantization tests.

1797 8×8 images, 10 classes; training takes about a second on one core. Trained once per test
session (results are cached by ``trained_digits``), seeded, so every number is reproducible.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


class DigitsNet(nn.Module):
    """conv-bn-relu ×2 with a residual block, max-pool, linear head: what int8 engines see."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)) + x)
        x = self.pool(torch.relu(self.bn3(self.conv3(x))))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def digits_data():
    """``(x_train, y_train, x_test, y_test)``: 1297 training and 500 test images in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1297], y[:1297], x[1297:], y[1297:]


@functools.lru_cache(maxsize=1)
def _trained_state():
    torch.manual_seed(0)
    x, y, _, _ = digits_data()
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: see tests/quant/conftest.py
    try:
        for _ in range(12):
            for idx in torch.randperm(len(y), generator=gen).split(64):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_digits() -> DigitsNet:
    """A fresh copy of the trained model, in eval mode."""
    model = DigitsNet()
    model.load_state_dict(_trained_state())
    return model.eval()


def accuracy(model, x, y) -> float:
    """Top-1 accuracy in percent."""
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def calibration_batches(x, batch_size=32, count=8):
    return [x[i * batch_size:(i + 1) * batch_size] for i in range(count)]
