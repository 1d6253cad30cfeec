"""Recover accuracy after compression: train the compressed graph, optionally distilling from
the original model.

With a teacher the loss is the classic knowledge-distillation objective (Hinton et al.)::

    L = α·L_hard(y_S, labels) + (1 − α)·T²·KL(softmax(y_T/T) ‖ softmax(y_S/T))

where ``T²`` keeps the soft term's gradients on the scale of the hard term. Two optional terms
transfer intermediate knowledge:

* ``feature_loss``: MSE between named intermediate tensors of student and teacher (FitNets).
  When pruning left the student with fewer channels, a 1×1 adapter learnt alongside (and thrown
  away afterwards) maps the student's channels onto the teacher's.
* ``attention_transfer``: Zagoruyko & Komodakis's attention maps — the channel mean of squared
  activations, flattened and L2-normalised — compared with ``β/2·‖Q_S − Q_T‖₂``; the maps do
  not depend on the channel count, so they suit pruned students directly.

The quantization-aware training of :mod:`mcc.quant` reuses :func:`finetune` as its loop.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import fx, nn
from torch.nn import functional as F

from mcc.errors import MccError
from mcc.graph import Graph


class FinetuneError(MccError):
    """Fine-tuning was given something it cannot train with (see the message)."""


def finetune(graph_or_module, loader: Iterable, *, loss: Callable | None = None,
             teacher=None, epochs: int = 1, lr: float = 1e-3, alpha: float = 0.5,
             temperature: float = 4.0, max_seconds: float | None = None,
             feature_loss: Mapping[str, str] | Sequence[str] | None = None,
             attention_transfer: Mapping[str, str] | Sequence[str] | None = None,
             feature_weight: float = 1.0, attention_weight: float = 1000.0,
             optimizer: str = "adam", weight_decay: float = 0.0) -> dict[str, Any]:
    """Train ``graph_or_module`` in place on ``loader`` and return the loss history.

    ``loader`` yields ``(inputs, labels)`` batches (``inputs`` may be a tuple for multi-input
    models) or bare inputs; without labels a ``teacher`` is required and only the distillation
    terms are used. ``loss(output, labels)`` is the hard loss (default: cross-entropy).
    ``teacher`` (a module or :class:`mcc.Graph`, run in eval mode without gradients) turns on
    distillation with weight ``alpha`` on the hard loss and temperature ``temperature``.

    ``feature_loss`` / ``attention_transfer`` name intermediate tensors: node names for an
    :class:`mcc.Graph`, submodule names for a plain module; a mapping pairs student names with
    teacher names, a list uses the same name in both. They need a teacher.

    Weights that ``prune-weights`` zeroed (listed in ``graph.module.meta["mcc.sparse_weights"]``)
    stay zero: their masks are re-applied after every optimizer step.

    The learning rate follows a cosine decay from ``lr`` to 0 over the planned steps — or over
    ``max_seconds`` when that limit comes first — so that a time-boxed run still ends at a low
    rate. ``optimizer`` is ``"adam"`` or ``"sgd"`` (momentum 0.9). A tqdm progress bar is shown
    only on a terminal. The model's train/eval mode is restored at the end.

    Returns ``{"loss": [mean per epoch], "batch_loss": [...], "hard": [...], "soft": [...],
    "feature": [...], "attention": [...], "steps", "epochs", "seconds", "stopped_early"}``
    (per-term lists hold one value per batch; a term that is not used is absent).
    """
    from tqdm import tqdm

    module = graph_or_module.module if isinstance(graph_or_module, Graph) else graph_or_module
    if not isinstance(module, nn.Module):
        raise FinetuneError(f"finetune trains an mcc.Graph or a torch.nn.Module, got "
                            f"{type(graph_or_module).__name__}")
    _check(epochs, lr, alpha, temperature, max_seconds)
    teacher_module = teacher.module if isinstance(teacher, Graph) else teacher
    if teacher_module is not None and not isinstance(teacher_module, nn.Module):
        raise FinetuneError(f"teacher must be an mcc.Graph or a torch.nn.Module, got "
                            f"{type(teacher).__name__}")
    features = _pairs(feature_loss, "feature_loss")
    attentions = _pairs(attention_transfer, "attention_transfer")
    if (features or attentions) and teacher_module is None:
        raise FinetuneError("feature_loss and attention_transfer compare the student with a "
                            "teacher: pass teacher=the original model")
    hard_loss = loss if loss is not None else nn.functional.cross_entropy
    student_taps = _Taps(graph_or_module, [s for s, _ in features + attentions])
    teacher_taps = _Taps(teacher, [t for _, t in features + attentions]) if teacher_module is not None \
        else None
    adapters = nn.ModuleDict()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise FinetuneError("the model has no trainable parameters")
    opt = _optimizer(optimizer, params, lr, weight_decay)
    masks = _sparse_masks(module)
    try:
        total_steps = epochs * len(loader)
    except TypeError:
        total_steps = None
    was_training = module.training
    teacher_training = teacher_module.training if teacher_module is not None else None
    history: dict[str, Any] = {"loss": [], "batch_loss": []}
    for key, used in (("hard", True), ("soft", teacher_module is not None),
                      ("feature", bool(features)), ("attention", bool(attentions))):
        if used:
            history[key] = []
    start = time.perf_counter()
    step, stopped = 0, False
    bar = tqdm(total=total_steps, desc="finetune", leave=False, disable=not sys.stderr.isatty())
    try:
        module.train()
        if teacher_module is not None:
            teacher_module.eval()
        for epoch in range(epochs):
            epoch_losses = []
            for batch in loader:
                elapsed = time.perf_counter() - start
                if max_seconds is not None and elapsed >= max_seconds:
                    stopped = True
                    break
                progress = max(step / total_steps if total_steps else 0.0,
                               elapsed / max_seconds if max_seconds else 0.0)
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
                inputs, labels = _split_batch(batch)
                if labels is None and teacher_module is None:
                    raise FinetuneError("the loader yields inputs without labels: pass a "
                                        "teacher to distil from, or yield (inputs, labels)")
                out, taps = student_taps.run(inputs)
                terms = {}
                if labels is not None:
                    terms["hard"] = hard_loss(out, labels)
                if teacher_module is not None:
                    with torch.no_grad():
                        t_out, t_taps = teacher_taps.run(inputs)
                    terms["soft"] = distillation_loss(out, t_out, temperature)
                    if features:
                        terms["feature"] = feature_weight * sum(
                            _feature_mse(taps[s], t_taps[t], adapters, s, opt)
                            for s, t in features)
                    if attentions:
                        terms["attention"] = attention_weight / 2 * sum(
                            attention_loss(taps[s], t_taps[t]) for s, t in attentions)
                total = _combine(terms, alpha)
                if not torch.isfinite(total):
                    raise FinetuneError(f"the loss became {total.item()} at step {step}: lower "
                                        f"lr (now {lr})")
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                if masks:
                    with torch.no_grad():
                        for p, mask in masks:
                            p.mul_(mask)
                value = float(total.detach())
                epoch_losses.append(value)
                history["batch_loss"].append(value)
                for key, term in terms.items():
                    history[key].append(float(term.detach()))
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            if epoch_losses:
                history["loss"].append(sum(epoch_losses) / len(epoch_losses))
            if stopped:
                break
    finally:
        bar.close()
        student_taps.close()
        if teacher_taps is not None:
            teacher_taps.close()
        module.train(was_training)
        if teacher_module is not None:
            teacher_module.train(teacher_training)
    if isinstance(graph_or_module, Graph):
        from mcc.quant import structure as st

        if st.is_quantized(graph_or_module):
            st.record_input_scales(graph_or_module)  # QAT may have trained the input scales
    for key in ("hard", "soft", "feature", "attention"):
        if key in history and not history[key] and step:
            del history[key]  # e.g. no labels in the data: no hard term
    history.update(steps=step, epochs=len(history["loss"]),
                   seconds=time.perf_counter() - start, stopped_early=stopped)
    return history


SPARSE_WEIGHTS = "mcc.sparse_weights"  # graph.module.meta key: parameters prune-weights zeroed


def _sparse_masks(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(parameter, nonzero mask)`` for every parameter that unstructured pruning zeroed (named
    in ``module.meta[SPARSE_WEIGHTS]``): fine-tuning must not let pruned weights grow back."""
    names = getattr(module, "meta", {}).get(SPARSE_WEIGHTS, ())
    params = dict(module.named_parameters())
    return [(params[n], (params[n] != 0).to(params[n].dtype)) for n in names if n in params]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch."""
    if student.shape != teacher.shape:
        raise FinetuneError(f"student output {tuple(student.shape)} and teacher output "
                            f"{tuple(teacher.shape)} differ: distillation compares logits of "
                            "the same shape")
    t = temperature
    log_p_s = F.log_softmax(student.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis: mean over channels of squared activations, flattened and
    L2-normalised per sample. Channels are axis 1 ([N, C, ...]) or last for 3-D tokens."""
    f = features.float()
    if f.dim() == 3:  # [N, tokens, channels]
        a = f.pow(2).mean(dim=-1)
    else:
        a = f.pow(2).mean(dim=1).flatten(1)
    return F.normalize(a, dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """‖Q_S − Q_T‖₂ averaged over the batch, with Q the normalised attention maps."""
    qs, qt = attention_map(student), attention_map(teacher)
    if qs.shape != qt.shape:
        raise FinetuneError(f"attention maps of shapes {tuple(qs.shape)} and {tuple(qt.shape)} "
                            "cannot be compared: pick tensors of the same spatial size")
    return (qs - qt).norm(dim=1).mean()


def _feature_mse(s: torch.Tensor, t: torch.Tensor, adapters: nn.ModuleDict, name: str,
                 opt) -> torch.Tensor:
    """MSE between student and teacher features, through a learnt 1×1 adapter when the student
    has fewer (or more) channels."""
    if s.shape != t.shape:
        axis = 1 if s.dim() != 3 else 2
        same_elsewhere = s.dim() == t.dim() and all(
            a == b for i, (a, b) in enumerate(zip(s.shape, t.shape)) if i != axis)
        if not same_elsewhere:
            raise FinetuneError(f"feature {name!r}: student {tuple(s.shape)} and teacher "
                                f"{tuple(t.shape)} differ in more than the channel axis")
        key = name.replace(".", "_")
        if key not in adapters:
            adapter = nn.Linear(s.shape[axis], t.shape[axis], bias=False)
            with torch.no_grad():  # start as "copy the channels in order" where it can
                adapter.weight.zero_()
                n = min(s.shape[axis], t.shape[axis])
                adapter.weight[:n, :n] = torch.eye(n)
            adapters[key] = adapter
            opt.add_param_group({"params": adapter.parameters()})
        s = adapters[key](s.movedim(axis, -1).float()).movedim(-1, axis)
    return F.mse_loss(s.float(), t.float())


def _combine(terms: dict[str, torch.Tensor], alpha: float) -> torch.Tensor:
    if "soft" not in terms:
        total = terms["hard"]
    elif "hard" not in terms:
        total = terms["soft"]
    else:
        total = alpha * terms["hard"] + (1 - alpha) * terms["soft"]
    for key in ("feature", "attention"):
        if key in terms:
            total = total + terms[key]
    return total


def _check(epochs, lr, alpha, temperature, max_seconds):
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise FinetuneError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise FinetuneError(f"lr must be a positive number, got {lr!r}")
    if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise FinetuneError(f"alpha weighs the hard loss and must be in [0, 1], got {alpha!r}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise FinetuneError(f"temperature must be positive, got {temperature!r}")
    if max_seconds is not None and (not isinstance(max_seconds, (int, float)) or max_seconds <= 0):
        raise FinetuneError(f"max_seconds must be a positive number or None, got {max_seconds!r}")


def _optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise FinetuneError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def _pairs(spec, what: str) -> list[tuple[str, str]]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [(spec, spec)]
    if isinstance(spec, Mapping):
        return [(str(s), str(t)) for s, t in spec.items()]
    if isinstance(spec, Sequence) and all(isinstance(s, str) for s in spec):
        return [(s, s) for s in spec]
    raise FinetuneError(f"{what} must be a list of names or a mapping student name -> teacher "
                        f"name, got {type(spec).__name__}")


def _split_batch(batch):
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        x, y = batch
        inputs = tuple(x) if isinstance(x, (list, tuple)) else (x,)
        return inputs, y
    if isinstance(batch, torch.Tensor):
        return (batch,), None
    raise FinetuneError(f"the loader must yield (inputs, labels) pairs or input tensors, got "
                        f"{type(batch).__name__}")


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return out[0]  # e.g. (logits, aux_logits)
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    raise FinetuneError(f"the model returned {type(out).__name__}; finetune needs logits "
                        "(a tensor, or a tuple whose first element is the logits)")


class _Taps:
    """Runs a model and captures named intermediate tensors: for an mcc.Graph, nodes (through a
    GraphModule sharing the parameters that also returns them); for a module, submodule
    outputs (through forward hooks)."""

    def __init__(self, model, names: list[str]):
        self.names = list(dict.fromkeys(names))
        self.hooks = []
        self.captured: dict[str, torch.Tensor] = {}
        if isinstance(model, Graph):
            self.module = model.module
            self.runner = self._graph_runner(model.module) if self.names else model.module
        elif model is None:
            self.module = self.runner = None
        else:
            self.module = self.runner = model
            modules = dict(model.named_modules())
            for name in self.names:
                if name not in modules:
                    raise FinetuneError(f"{name!r} is not a submodule of the model; feature and "
                                        "attention names of a plain module are submodule names")
                self.hooks.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(_module, _inputs, output):
            self.captured[name] = output
        return hook

    def _graph_runner(self, gm: fx.GraphModule) -> fx.GraphModule:
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        by_name = {n.name: n for n in gm.graph.nodes}
        by_target = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
        wanted = []
        for name in self.names:
            node = by_name.get(name) or by_target.get(name)
            if node is None or node.op in ("output", "placeholder"):
                raise FinetuneError(f"{name!r} is not a node of the graph (print(graph) lists "
                                    "node names)")
            wanted.append(node)
        output = None
        for node in gm.graph.nodes:
            if node.op == "output":
                output = node
                continue
            env[node] = graph.node_copy(node, lambda n: env[n])
        out_value = fx.node.map_arg(output.args[0], lambda n: env[n])
        graph.output((out_value, tuple(env[n] for n in wanted)))
        return fx.GraphModule(gm, graph)

    def run(self, inputs: tuple):
        self.captured = {}
        out = self.runner(*inputs)
        if isinstance(self.runner, fx.GraphModule) and self.names and self.runner is not self.module:
            out, taps = out
            self.captured = dict(zip(self.names, taps))
        missing = [n for n in self.names if n not in self.captured]
        if missing:
            raise FinetuneError(f"{missing[0]!r} produced no tensor during the forward pass")
        return _first_tensor(out), self.captured

    def close(self):
        for h in self.hooks:
            h.remove()
        self.hooks = []


__all__ = ["finetune", "distillation_loss", "attention_map", "attention_loss", "FinetuneError",
           "SPARSE_WEIGHTS"]
