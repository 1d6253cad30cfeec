"""Evaluation functions for the reference models, and the evaluators ``--eval`` names.

Each ``evaluate_*`` function takes the model to score: an ``nn.Module``, an :class:`mcc.Graph`,
or anything else callable on a batch, and runs it in eval mode without gradients (its
train/eval mode is restored afterwards).

* :func:`evaluate_fashion_mnist`: top-1 accuracy (%) on Fashion-MNIST's 10,000 test images.
* :func:`evaluate_efficientnet_lite0`: agreement with the float model's labels on
  scikit-image's photographs (top-1 and top-5, %) and the float label's mean rank. Without
  ImageNet's validation set, agreement with the float model is the measurable quantity: it
  is what compression changes.
* :func:`evaluate_minilm`: Pearson correlation of the embeddings' cosine similarities with
  the human ratings of the Lee corpus's 1,225 document pairs (float model: 0.656), and the
  mean cosine similarity to the float model's embeddings.

Photos and documents go through the model one at a time, with the shape of the reference
model's example inputs, so graphs that torch.export captured for a fixed shape evaluate too.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
from typing import Callable

import numpy as np
import torch

from mcc.errors import MccError, ModelError, ReportError
from mcc.zoo.datasets import (calibration_photos, fashion_mnist, fashion_mnist_loader,
                              lee_background, lee_corpus, sample_photos)
from mcc.zoo.efficientnet_lite import efficientnet_lite0
from mcc.zoo.minilm import max_seq_length, minilm, tokenize
from mcc.zoo.reference_cnn import reference_cnn


@contextlib.contextmanager
def _inference(model):
    """Eval mode and no gradients while evaluating; the model's mode is restored afterwards."""
    training = getattr(model, "training", False)
    if training:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if training:
            model.train(True)


def _run(model, inputs: tuple, expects: str) -> torch.Tensor:
    """``model(*inputs)``; a model that fails or returns something other than one tensor is
    reported as what it is: a model that does not fit this evaluation."""
    try:
        out = model(*inputs)
    except MccError:
        raise
    except Exception as exc:
        shapes = ", ".join(f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for t in inputs)
        raise ReportError(f"the model fails on the evaluation inputs ({shapes}): "
                          f"{type(exc).__name__}: {exc}; this evaluation needs {expects}") from None
    if not isinstance(out, torch.Tensor):
        raise ReportError(f"the model returned {type(out).__name__}, not a tensor; this evaluation "
                          f"needs {expects}")
    return out


# ---- Fashion-MNIST --------------------------------------------------------------------------
FASHION_EXPECTS = "a model taking [N, 1, 28, 28] normalised images and returning [N, 10] logits"


def evaluate_fashion_mnist(model, limit: int | None = None, batch_size: int = 1000) -> float:
    """Top-1 accuracy in percent on the Fashion-MNIST test split (its first ``limit`` images)."""
    if limit is not None and limit < 1:
        raise ReportError(f"limit must be at least 1 image, got {limit}")
    correct = total = 0
    with _inference(model):
        for images, labels in fashion_mnist_loader("test", batch_size=batch_size, limit=limit):
            logits = _run(model, (images,), FASHION_EXPECTS)
            if logits.shape != (len(labels), 10):
                raise ReportError(f"the model returned {list(logits.shape)} for {len(labels)} "
                                  f"images; this evaluation needs {FASHION_EXPECTS}")
            correct += int((logits.argmax(1) == labels).sum())
            total += len(labels)
    return 100.0 * correct / total


# ---- EfficientNet-Lite0 ---------------------------------------------------------------------
IMAGENET_EXPECTS = "a model taking [1, 3, 224, 224] images in [-1, 1] and returning [1, 1000] logits"


def imagenet_logits(model) -> torch.Tensor:
    """``model``'s logits ``[N, 1000]`` for :func:`sample_photos`, one photo at a time."""
    images = sample_photos().images
    with _inference(model):
        out = [_run(model, (images[i:i + 1],), IMAGENET_EXPECTS) for i in range(len(images))]
    if any(o.shape != (1, 1000) for o in out):
        raise ReportError(f"the model returned {list(out[0].shape)} for one photo; this "
                          f"evaluation needs {IMAGENET_EXPECTS}")
    return torch.cat(out).float()


@functools.lru_cache(maxsize=1)
def _efficientnet_reference() -> torch.Tensor:
    return imagenet_logits(efficientnet_lite0())


def evaluate_efficientnet_lite0(model, reference=None) -> dict[str, float]:
    """Compare ``model``'s labels on the sample photos with the reference labels.

    ``reference`` is the float model (default: :func:`mcc.zoo.efficientnet_lite0`), another
    model, or a tensor of its logits ``[N, 1000]`` or labels ``[N]``. Returns ``top1`` and
    ``top5`` (% of photos whose reference label is the model's first / among its first five)
    and ``mean_rank`` (the reference label's mean rank in the model's output; 1 is best).
    """
    if reference is None:
        reference = _efficientnet_reference()
    elif not isinstance(reference, torch.Tensor):
        reference = imagenet_logits(reference)
    labels = reference.argmax(1) if reference.dim() == 2 else reference.long()
    logits = imagenet_logits(model)
    if len(labels) != len(logits):
        raise ReportError(f"{len(labels)} reference labels for {len(logits)} photos")
    target = logits.gather(1, labels[:, None])
    ranks = 1 + (logits > target).sum(1)
    return {"top1": 100.0 * float((ranks == 1).float().mean()),
            "top5": 100.0 * float((ranks <= 5).float().mean()),
            "mean_rank": float(ranks.float().mean())}


# ---- MiniLM ---------------------------------------------------------------------------------
MINILM_EXPECTS = ("a model taking (input_ids, attention_mask), int64 [1, L] each, and returning "
                  "[1, D] sentence embeddings")


@functools.lru_cache(maxsize=1)
def _minilm_reference():
    """The tokenizer, the Lee documents' token tensors and the float embeddings.

    Documents are padded to the shortest multiple of 32 that holds the longest one (154
    tokens), capped at the encoder's maximum length; padding is masked, so the length changes
    speed, not embeddings."""
    tokenizer, model = minilm()
    documents = lee_corpus().documents
    longest = max(len(ids) for ids in tokenizer(documents)["input_ids"])
    length = min(32 * math.ceil(longest / 32), max_seq_length())
    ids, mask = tokenize(tokenizer, documents, length)
    return tokenizer, ids, mask, sentence_embeddings(model, (ids, mask))


def lee_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of the 50 Lee documents, ``[50, L]`` each."""
    _, ids, mask, _ = _minilm_reference()
    return ids.clone(), mask.clone()


def lee_calibration_tokens(count: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` Lee background documents as ``(input_ids, attention_mask)`` batches
    of one, padded or truncated to the evaluation length."""
    tokenizer, ids, _, _ = _minilm_reference()
    tokens = tokenize(tokenizer, lee_background()[:count], ids.shape[1])
    return [(tokens[0][i:i + 1], tokens[1][i:i + 1]) for i in range(len(tokens[0]))]


def sentence_embeddings(model, tokens=None) -> torch.Tensor:
    """``model``'s embeddings ``[50, D]`` of the Lee documents, one document at a time."""
    ids, mask = tokens if tokens is not None else lee_tokens()
    with _inference(model):
        out = [_run(model, (ids[i:i + 1], mask[i:i + 1]), MINILM_EXPECTS) for i in range(len(ids))]
    if any(o.dim() != 2 or o.shape[0] != 1 for o in out):
        raise ReportError(f"the model returned {list(out[0].shape)} for one document; this "
                          f"evaluation needs {MINILM_EXPECTS}")
    return torch.cat(out).float()


def lee_pearson(embeddings: torch.Tensor) -> float:
    """Pearson correlation between the cosine similarities of the documents' embeddings and
    the human ratings, over the 1,225 document pairs."""
    ratings = lee_corpus().ratings
    unit = torch.nn.functional.normalize(embeddings.double(), dim=1)
    similarity = (unit @ unit.T).numpy()
    pairs = np.triu_indices(len(ratings), k=1)
    return float(np.corrcoef(similarity[pairs], ratings[pairs])[0, 1])


def evaluate_minilm(model, reference=None) -> dict[str, float]:
    """``pearson``: :func:`lee_pearson` of ``model``'s embeddings; ``cosine``: their mean cosine
    similarity to the reference embeddings (default: the float encoder's; or another model,
    or a tensor of embeddings ``[50, D]``)."""
    if reference is None:
        reference = _minilm_reference()[3]
    elif not isinstance(reference, torch.Tensor):
        reference = sentence_embeddings(reference)
    embeddings = sentence_embeddings(model)
    if embeddings.shape != reference.shape:
        raise ReportError(f"the model's embeddings are {list(embeddings.shape)}, the reference's "
                          f"{list(reference.shape)}")
    if not torch.isfinite(embeddings).all():
        raise ReportError("the model's embeddings contain NaN or Inf")
    cosine = torch.nn.functional.cosine_similarity(embeddings, reference.float(), dim=1)
    return {"pearson": lee_pearson(embeddings), "cosine": float(cosine.mean())}


# ---- evaluators -----------------------------------------------------------------------------
class Evaluator:
    """``evaluator(model) -> float``: one named metric of a model, higher is better.

    ``name`` is what ``--eval`` was given, ``metric_name`` what the number means (for reports).
    A function that raises or returns anything but a finite number is a ReportError naming it.
    """

    def __init__(self, name: str, metric_name: str, function: Callable):
        self.name, self.metric_name, self.function = name, metric_name, function

    def __call__(self, model) -> float:
        try:
            value = self.function(model)
        except MccError:
            raise
        except Exception as exc:
            raise ReportError(f"the evaluation function {self.name} raised "
                              f"{type(exc).__name__}: {exc}") from exc
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (np.floating, np.integer)):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ReportError(f"the evaluation function {self.name} returned {value!r}; it must "
                              "return a finite number (the metric, e.g. accuracy in percent)")
        return float(value)

    def __repr__(self) -> str:
        return f"Evaluator({self.name!r}, metric {self.metric_name!r})"


class ReferenceEvaluator(Evaluator):
    """A built-in evaluator: it also builds its reference model, example inputs and
    calibration data."""

    def __init__(self, name: str, metric_name: str, function: Callable,
                 model: Callable[[], torch.nn.Module], example_inputs: Callable[[], tuple],
                 calibration_data: Callable[[], list]):
        super().__init__(name, metric_name, function)
        self._model, self._example_inputs = model, example_inputs
        self._calibration_data = calibration_data

    def model(self) -> torch.nn.Module:
        """A fresh copy of the reference model, in eval mode."""
        return self._model()

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """One real input, shaped as the evaluation feeds them (batch 1)."""
        return self._example_inputs()

    def calibration_data(self) -> list:
        """Input batches for :func:`mcc.calibrate`, drawn from data the evaluation never sees:
        Fashion-MNIST training images, scikit-learn's photographs, Lee background documents."""
        return self._calibration_data()


BUILTIN = {
    "fashion-mnist": lambda: ReferenceEvaluator(
        "fashion-mnist", "top-1 %", evaluate_fashion_mnist, reference_cnn,
        lambda: (fashion_mnist("test").tensors[0][:1],),
        lambda: list(fashion_mnist("train").tensors[0][:512].split(64))),
    "efficientnet-lite0": lambda: ReferenceEvaluator(
        "efficientnet-lite0", "top-1 agreement %",
        lambda model: evaluate_efficientnet_lite0(model)["top1"], efficientnet_lite0,
        lambda: (sample_photos().images[:1],), lambda: list(calibration_photos().split(4))),
    "minilm": lambda: ReferenceEvaluator(
        "minilm", "Lee Pearson r", lambda model: evaluate_minilm(model)["pearson"],
        lambda: minilm().model, lambda: tuple(t[:1] for t in lee_tokens()),
        lee_calibration_tokens),
}


def resolve_evaluator(spec: str) -> Evaluator:
    """The evaluator ``spec`` names: ``fashion-mnist``, ``efficientnet-lite0``, ``minilm``, or
    ``package.module:function`` (the user's ``function(model) -> number``; a ``metric_name``
    attribute on it names the metric)."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    if ":" in spec:
        from mcc.model_source import load_callable

        try:
            function = load_callable(spec)
        except ModelError as exc:
            raise ReportError(f"evaluation function {spec}: {exc}") from None
        return Evaluator(spec, str(getattr(function, "metric_name", "metric")), function)
    close = difflib.get_close_matches(spec, BUILTIN, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ReportError(f"unknown evaluation {spec!r}{hint}: use one of {', '.join(BUILTIN)}, or "
                      "package.module:function for a function(model) -> number of your own")
