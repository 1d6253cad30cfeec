"""Every torchvision classification model, at the smallest input each architecture accepts.

Shared by the zoo tests of every pass. Reduced resolutions keep the suite inside CI's time
budget on two cores; the graph structure (what passes see) does not depend on resolution.
"""

import torch
import torchvision

# Models whose architecture fixes or bounds the input size, and the kwargs that shrink it.
_SIZE = {
    "inception_v3": 80,      # three stride-2 stages and 3x3 valid convs need >= 75
    "maxvit_t": 224,         # block partitioning needs size/32 divisible by the 7x7 window
    "vit_h_14": 56,
    "alexnet": 64,
}
_KWARGS = {
    "vit_b_16": {"image_size": 64},
    "vit_b_32": {"image_size": 64},
    "vit_l_16": {"image_size": 64},
    "vit_l_32": {"image_size": 64},
    "vit_h_14": {"image_size": 56},
    "googlenet": {"init_weights": True},
    "inception_v3": {"init_weights": True},
}

MODELS = torchvision.models.list_models(module=torchvision.models)
assert len(MODELS) == 80, f"torchvision lists {len(MODELS)} classification models; update the zoo"


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model with random weights in eval mode, and a batch-1 input it accepts."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **_KWARGS.get(name, {})).eval()
    for m in model.modules():  # ViT heads start at zero, which would make every output 0
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.02)
    size = _SIZE.get(name, 64)
    return model, torch.randn(1, 3, size, size)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial running statistics, so folding a BatchNorm is not the identity."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model
