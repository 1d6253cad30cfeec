"""The canonical clean-ups: dce, remove-identity, fold-constants."""

import torch
import torch.nn.functional as F
from torch import nn

import mcc
from mcc.pipeline import Pipeline


def run(spec, graph):
    return Pipeline.parse(spec).run(graph, verify=True)


class Dead(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        _ = self.unused(x) * 2  # computed and thrown away
        return self.used(x)


def test_dce_removes_dead_nodes_and_their_modules():
    x = torch.randn(2, 4)
    model = Dead().eval()
    graph = mcc.trace(model, x)
    assert len(list(graph.nodes)) == 5
    out, records = run("dce", graph)
    assert records[0].stats == {"nodes_removed": 2, "modules_removed": 1, "attributes_removed": 0}
    assert [n.op for n in out.nodes] == ["placeholder", "call_module", "output"]
    assert not hasattr(out.module, "unused")
    torch.testing.assert_close(out(x), model(x))
    assert run("dce", out)[1][0].modified is False


class Noops(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.drop, self.ident = nn.Linear(4, 4), nn.Dropout(0.5), nn.Identity()

    def forward(self, x):
        y = self.ident(self.drop(self.fc(x)))
        return F.dropout(y, 0.3, training=self.training).contiguous()


def test_remove_identity_in_eval_mode():
    x = torch.randn(2, 4)
    model = Noops().eval()
    out, records = run("remove-identity,dce", mcc.trace(model, x))
    assert records[0].stats == {"removed": 4, "dropout": 2, "identity": 1, "contiguous": 1}
    assert [n.op for n in out.nodes] == ["placeholder", "call_module", "output"]
    torch.testing.assert_close(out(x), model(x))


def test_dropout_stays_in_training_mode():
    graph = mcc.trace(Noops().train(), torch.randn(2, 4))
    _, records = run("remove-identity", graph)
    assert records[0].stats == {"removed": 2, "identity": 1, "contiguous": 1}


class WeightMath(nn.Module):
    """Weight-only arithmetic of the kind ONNX imports and torch.export leave behind.

    (torch.fx itself pre-computes the buffer arithmetic, leaving one constant to fold.)
    """

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3))
        self.register_buffer("shift", torch.arange(3.0))

    def forward(self, x):
        return x @ (self.w * 2) + self.shift.reshape(1, 3) * 0.5


def test_fold_constants_keeps_outputs_and_trainability():
    x = torch.randn(5, 4)
    model = WeightMath()
    out, records = run("fold-constants,dce", mcc.trace(model, x))
    assert records[0].stats == {"folded": 1}
    ops = [n.target for n in out.nodes if n.op == "call_function"]
    assert len(ops) == 2  # matmul and add remain; the weight arithmetic is gone
    torch.testing.assert_close(out(x), model(x))
    params = dict(out.module.named_parameters())
    buffers = dict(out.module.named_buffers())
    assert [p.shape for p in params.values()] == [torch.Size([4, 3])]  # folded w*2 still trains
    assert [b.shape for b in buffers.values()] == [torch.Size([1, 3])]
    out(x).sum().backward()
    assert next(iter(params.values())).grad is not None
    assert run("fold-constants", out)[1][0].modified is False


def test_fold_constants_leaves_random_ops():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x + torch.randn_like(self.w)

    _, records = run("fold-constants", mcc.trace(Noisy(), torch.randn(2, 3)))
    assert records[0].modified is False
