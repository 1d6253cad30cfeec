"""EfficientNet-Lite0 loads its ImageNet weights offline and labels the sample photos right."""

import pytest
import torch

import mcc
from mcc.zoo import efficientnet_lite0, evaluate_efficientnet_lite0, resolve_evaluator, sample_photos
from mcc.zoo.evaluators import imagenet_logits

EGYPTIAN_CAT, ESPRESSO = 285, 967


@pytest.fixture(scope="module")
def model():
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def logits(model):
    return imagenet_logits(model)


def test_weights_are_the_imagenet_ones(model, logits):
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    labels = dict(zip(sample_photos().names, logits.argmax(1).tolist()))
    assert labels["chelsea"] == labels["chelsea-mirrored"] == EGYPTIAN_CAT
    assert labels["coffee"] == labels["coffee-mirrored"] == ESPRESSO
    assert logits.softmax(1)[sample_photos().names.index("coffee")].max() > 0.8


def test_float_model_agrees_with_itself(model, logits):
    assert evaluate_efficientnet_lite0(model, reference=logits) == {
        "top1": 100.0, "top5": 100.0, "mean_rank": 1.0}


def test_agreement_counts_ranks_of_the_reference_labels(model, logits):
    """Replace half the reference labels by the model's second choice: those photos drop to
    rank 2, so top-1 agreement halves, top-5 stays and the mean rank is 1.5."""
    labels = logits.argmax(1)
    half = len(labels) // 2
    labels[:half] = logits[:half].topk(2).indices[:, 1]
    result = evaluate_efficientnet_lite0(model, reference=labels)
    assert result == {"top1": 50.0, "top5": 100.0, "mean_rank": 1.5}


def test_evaluator_on_the_traced_graph():
    evaluator = resolve_evaluator("efficientnet-lite0")
    assert evaluator.metric_name == "top-1 agreement %"
    inputs = evaluator.example_inputs()
    assert inputs[0].shape == (1, 3, 224, 224)
    graph = mcc.trace(evaluator.model(), inputs)
    assert graph.source == "torch.fx"
    assert evaluator(graph) == 100.0
    assert evaluator(graph.module) == 100.0


def test_perturbed_weights_lose_agreement(model, logits):
    """Noise on every weight (10% of its tensor's std) must show in the numbers."""
    noisy = efficientnet_lite0()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            if p.dim() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1 * p.std())
    result = evaluate_efficientnet_lite0(noisy, reference=logits)
    assert result["top1"] < 100.0 and result["mean_rank"] > 1.0
    assert result["top5"] >= result["top1"]
