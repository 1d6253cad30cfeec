"""finetune: the distillation formula, attention maps, the training loop and its contracts."""

import math

import pytest
import torch
from torch import nn

import mcc
from mcc.finetune import (SPARSE_WEIGHTS, FinetuneError, attention_loss, attention_map,
                          distillation_loss, finetune)


def test_distillation_loss_is_t2_times_kl():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    T = 4.0
    p_t = torch.softmax(t / T, dim=1)
    p_s = torch.softmax(s / T, dim=1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()  # KL(p_T ‖ p_S), batch mean
    assert distillation_loss(s, t, T).item() == pytest.approx(T * T * kl.item(), rel=1e-6)
    assert distillation_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(FinetuneError, match="same shape"):
        distillation_loss(s, t[:, :2], T)


def test_attention_map_and_loss():
    a = torch.zeros(1, 2, 2, 2)
    a[0, 0] = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    a[0, 1] = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    # channel mean of squares: [4.5, 8, 0, 0], then L2-normalised
    expected = torch.tensor([[4.5, 8.0, 0.0, 0.0]]) / math.hypot(4.5, 8.0)
    torch.testing.assert_close(attention_map(a), expected)
    # the map ignores the channel count: a pruned student compares with its teacher
    assert attention_loss(a[:, :1].repeat(1, 3, 1, 1), a[:, :1]).item() == pytest.approx(0, abs=1e-6)
    assert attention_loss(a, a[:, :1]).item() == pytest.approx(
        (attention_map(a) - attention_map(a[:, :1])).norm().item(), rel=1e-6)


class Small(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def _data(n=64, batch=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def test_training_lowers_the_loss_and_restores_modes():
    model = Small().eval()
    data = _data()
    before = [p.detach().clone() for p in model.parameters()]
    history = finetune(model, data, epochs=10, lr=2e-2)
    assert history["steps"] == 10 * len(data) and history["epochs"] == 10
    assert len(history["batch_loss"]) == len(history["hard"]) == history["steps"]
    assert history["loss"][-1] < 0.75 * history["loss"][0]
    assert not history["stopped_early"] and "soft" not in history
    assert not model.training  # eval mode given back
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_alpha_weighs_the_hard_and_soft_terms():
    student = Small().eval()
    graph = mcc.trace(student, torch.randn(2, 1, 6, 6))
    teacher = mcc.trace(student, torch.randn(2, 1, 6, 6))
    teacher.train()
    t_params = [p.detach().clone() for p in teacher.parameters()]
    history = finetune(graph, _data(), teacher=teacher, alpha=1.0, lr=1e-3, epochs=1)
    assert history["loss"][0] == pytest.approx(sum(history["hard"]) / len(history["hard"]))
    assert teacher.training  # the teacher's mode is given back too
    assert all(torch.equal(a, b) for a, b in zip(t_params, teacher.parameters()))
    # alpha=0 with labels-free data: only the soft term
    unlabeled = [x for x, _ in _data()]
    history = finetune(graph, unlabeled, teacher=teacher, alpha=0.0, epochs=1)
    assert "hard" not in history and history["batch_loss"] == history["soft"]


def test_feature_and_attention_terms_on_a_pruned_student():
    torch.manual_seed(0)
    teacher = mcc.trace(Small(width=8).eval(), torch.randn(2, 1, 6, 6))
    student = teacher.copy()
    mcc.Pipeline.parse("prune-channels{ratio=0.5,round_to=1}").run(student)
    assert student.module.conv.out_channels == 4
    history = finetune(student, _data(), teacher=teacher, epochs=2, lr=1e-2,
                       feature_loss=["relu"], attention_transfer={"relu": "relu"})
    assert len(history["feature"]) == len(history["attention"]) == history["steps"] == 8
    assert history["feature"][-1] < history["feature"][0]


def test_plain_module_features_use_submodule_names():
    teacher, student = Small().eval(), Small().eval()
    history = finetune(student, _data()[:2], teacher=teacher, feature_loss=["bn"])
    assert len(history["feature"]) == 2 and history["feature"][0] > 0
    with pytest.raises(FinetuneError, match="not a submodule"):
        finetune(student, _data(), teacher=teacher, feature_loss=["nope"])


def test_pruned_weights_stay_zero():
    graph = mcc.trace(Small().eval(), torch.randn(2, 1, 6, 6))
    with torch.no_grad():
        graph.module.conv.weight[:4] = 0
    graph.module.meta[SPARSE_WEIGHTS] = ["conv.weight"]
    finetune(graph, _data(), epochs=2, lr=1e-2)
    assert int((graph.module.conv.weight == 0).sum()) == 4 * 9
    assert bool((graph.module.fc.weight != 0).all())


def test_max_seconds_stops_before_the_next_batch():
    history = finetune(Small(), _data(), epochs=3, max_seconds=1e-9)
    assert history["steps"] == 0 and history["stopped_early"] and history["loss"] == []


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs"), ({"lr": 0}, "lr"), ({"alpha": 1.5}, "alpha"),
    ({"temperature": 0}, "temperature"), ({"max_seconds": -1}, "max_seconds"),
    ({"feature_loss": ["conv"]}, "teacher"), ({"optimizer": "lbfgs"}, "optimizer"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(FinetuneError, match=match):
        finetune(Small(), _data(), **kwargs)


def test_bad_data_and_diverging_loss():
    with pytest.raises(FinetuneError, match="without labels"):
        finetune(Small(), [torch.randn(4, 1, 6, 6)])
    with pytest.raises(FinetuneError, match="mcc.Graph or a torch.nn.Module"):
        finetune("model", _data())
    with pytest.raises(FinetuneError, match="lower"):
        finetune(Small(), _data(), loss=lambda out, y: out.sum() * float("nan"))
    graph = mcc.trace(Small().eval(), torch.randn(2, 1, 6, 6))
    with pytest.raises(FinetuneError, match="not a node"):
        finetune(graph, _data(), teacher=graph, feature_loss=["missing"])
