"""resolve_evaluator: built-in and user evaluators, and the errors for everything that can go wrong."""

import textwrap

import pytest
import torch
from torch import nn

from mcc.errors import MccError, ReportError
from mcc.zoo import (Evaluator, ReferenceEvaluator, evaluate_fashion_mnist, fashion_mnist,
                     reference_cnn, resolve_evaluator)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module `zoo_user_metrics` of evaluation functions, importable from tmp_path."""
    (tmp_path / "zoo_user_metrics.py").write_text(textwrap.dedent("""
        import math
        import numpy as np
        import torch

        def parameters(model):
            return sum(p.numel() for p in model.parameters())
        parameters.metric_name = "parameters"

        def as_tensor(model):
            return torch.tensor(0.25)

        def as_numpy(model):
            return np.float32(0.5)

        def broken(model):
            raise ValueError("no validation data")

        def text(model):
            return "high"

        def nan(model):
            return math.nan

        def flag(model):
            return True

        not_callable = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "zoo_user_metrics"


def test_builtin_evaluators_have_names_metrics_models_and_inputs():
    for name, metric in (("fashion-mnist", "top-1 %"), ("efficientnet-lite0", "top-1 agreement %"),
                         ("minilm", "Lee Pearson r")):
        evaluator = resolve_evaluator(name)
        assert isinstance(evaluator, ReferenceEvaluator)
        assert (evaluator.name, evaluator.metric_name) == (name, metric)
    evaluator = resolve_evaluator("fashion-mnist")
    (image,) = evaluator.example_inputs()
    assert torch.equal(image, fashion_mnist("test").tensors[0][:1])
    model = evaluator.model()
    assert isinstance(model, nn.Module) and not model.training


def test_user_function_value_and_metric_name(user_module):
    model = nn.Linear(3, 2)
    evaluator = resolve_evaluator(f"{user_module}:parameters")
    assert type(evaluator) is Evaluator
    assert evaluator.name == f"{user_module}:parameters" and evaluator.metric_name == "parameters"
    assert evaluator(model) == 8.0
    assert resolve_evaluator(f"{user_module}:as_tensor")(model) == 0.25
    assert resolve_evaluator(f"{user_module}:as_numpy")(model) == 0.5
    assert resolve_evaluator(f"{user_module}:as_tensor").metric_name == "metric"


@pytest.mark.parametrize("function, message", [
    ("broken", "raised ValueError: no validation data"),
    ("text", "returned 'high'; it must return a finite number"),
    ("nan", "returned nan; it must return a finite number"),
    ("flag", "returned True; it must return a finite number"),
])
def test_user_function_that_fails_is_a_report_error_naming_it(user_module, function, message):
    evaluator = resolve_evaluator(f"{user_module}:{function}")
    with pytest.raises(ReportError) as info:
        evaluator(nn.Linear(3, 2))
    assert f"evaluation function {user_module}:{function} {message}" in str(info.value)


@pytest.mark.parametrize("spec, message", [
    ("fashion-mnst", "unknown evaluation 'fashion-mnst' (did you mean 'fashion-mnist'?)"),
    ("imagenet", "use one of fashion-mnist, efficientnet-lite0, minilm, or package.module:function"),
    ("zoo_no_such_module:evaluate", "cannot import 'zoo_no_such_module'"),
    ("zoo_user_metrics:missing", "has no attribute 'missing'"),
    ("zoo_user_metrics:not_callable", "is not callable"),
    (":evaluate", "write a function as package.module:function"),
])
def test_unresolvable_specs_are_report_errors(user_module, spec, message):
    with pytest.raises(ReportError) as info:
        resolve_evaluator(spec)
    assert message in str(info.value)


def test_model_that_does_not_fit_the_data_is_a_report_error():
    with pytest.raises(ReportError, match=r"fails on the evaluation inputs \(float32\[100, 1, 28, 28\]\)"):
        evaluate_fashion_mnist(nn.Linear(10, 10), limit=100)
    with pytest.raises(ReportError, match=r"returned \[100, 784\] for 100 images"):
        evaluate_fashion_mnist(nn.Flatten(), limit=100)
    with pytest.raises(ReportError, match="at least 1 image"):
        evaluate_fashion_mnist(reference_cnn(), limit=0)
    with pytest.raises(MccError, match=r"needs a model taking \[N, 1, 28, 28\] normalised images"):
        resolve_evaluator("fashion-mnist")(nn.Flatten())


def test_evaluation_runs_in_eval_mode_and_restores_the_mode():
    model = reference_cnn().train()
    bn = model.stem[1]
    before = bn.running_mean.clone()
    accuracy = evaluate_fashion_mnist(model, limit=500)
    assert model.training and torch.equal(bn.running_mean, before)
    images, labels = fashion_mnist("test").tensors
    model.eval()
    with torch.no_grad():
        correct = int((model(images[:500]).argmax(1) == labels[:500]).sum())
    assert accuracy == 100.0 * correct / 500
