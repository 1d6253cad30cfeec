"""The reference CNN for Fashion-MNIST: a small network built from what real networks contain.

It has, in order: a conv-BN-ReLU stem, a residual block that downsamples through a 1×1
projection shortcut, a depthwise-separable block, a residual block with an identity shortcut, a
squeeze-and-excitation block, global average pooling and a linear head. Every pass mcc has meets its hard cases here: BatchNorm to
fold, residual additions that tie channel counts together for pruning, a depthwise convolution
(groups = channels) for quantization and pruning, and a channel-wise multiply by a computed
gate. It traces with torch.fx as it is (no control flow).

``scripts/train_reference_cnn.py`` trains it; the weights it produced are committed as
``mcc/data/fashion_cnn.pt``.
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn

from mcc.errors import AssetError

WEIGHTS = "fashion_cnn.pt"


class ResidualBlock(nn.Module):
    """Two 3×3 conv-BN layers and a shortcut (a 1×1 conv-BN projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class DepthwiseSeparable(nn.Module):
    """A 3×3 depthwise conv-BN-ReLU followed by a 1×1 pointwise conv-BN-ReLU (MobileNet's block)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = torch.relu(self.bn1(self.depthwise(x)))
        return torch.relu(self.bn2(self.pointwise(x)))


class SqueezeExcitation(nn.Module):
    """Scale each channel by a gate computed from the globally pooled features (1×1 convs, as in
    torchvision and EfficientNet)."""

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        gate = nn.functional.adaptive_avg_pool2d(x, 1)
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(gate))))
        return x * gate


class FashionCNN(nn.Module):
    """Input: ``[N, 1, 28, 28]`` images normalised as :func:`mcc.zoo.fashion_mnist` does;
    output: ``[N, 10]`` class logits. About 4.0M MACs per image and 54k parameters: small enough
    to train in minutes and to evaluate on the whole test split inside a unit test."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True))
        self.block1 = ResidualBlock(16, 24, stride=2)          # 28×28 → 14×14
        self.block2 = DepthwiseSeparable(24, 48, stride=2)     # 14×14 → 7×7
        self.block3 = ResidualBlock(48, 48)
        self.se = SqueezeExcitation(48, 12)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.se(self.block3(self.block2(self.block1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def reference_cnn(pretrained: bool = True) -> FashionCNN:
    """The reference CNN in eval mode, with the committed trained weights unless
    ``pretrained=False`` (then freshly initialised, seeded by the caller's RNG)."""
    model = FashionCNN()
    if pretrained:
        model.load_state_dict(_load_weights())
    return model.eval()


def _load_weights() -> dict:
    path = resources.files("mcc") / "data" / WEIGHTS
    try:
        with resources.as_file(path) as file:
            return torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise AssetError(f"the reference CNN's weights mcc/data/{WEIGHTS} are missing or unreadable "
                         f"({type(exc).__name__}: {exc}); reinstall mcc (pip install .), or retrain "
                         "them with: python scripts/train_reference_cnn.py") from None
