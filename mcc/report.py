"""What a model costs, and what a compression run changed.

:func:`measure` gives a model's :class:`ModelStats`: parameters, bytes by dtype, MACs and
FLOPs (counted by ``torch.utils.flop_counter``, so every op PyTorch knows the cost of is counted
the same way on every model), weight sparsity and the size a sparse encoding would take, CPU
latency (median and p90 after warm-up), and a metric from the user's evaluation function.
:class:`Comparison` puts two of them side by side; :class:`Report` adds the pipeline and each
pass's statistics. Everything prints as an aligned table and serialises to strict JSON.

Ratios are always ``before / after``: above 1 means smaller, cheaper or faster.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from mcc.errors import MccError, ModelError, ReportError


@dataclass
class ModelStats:
    """One model's costs, as measured by :func:`measure`.

    ``sparsity`` is the fraction of exactly-zero weights among parameters with two or more
    dimensions (the weights of Conv/Linear-like layers, which pruning zeroes);
    ``sparse_size_bytes`` is the model's size if those weights were stored in CSR form
    (see :func:`csr_bytes`) and everything else dense, i.e. what a sparse format would save.
    Latency is ``None`` when not measured, the metric when no evaluation was given.
    ``storage_bytes`` is set for a quantized graph: its size with quantized weights stored at
    their bit width (:func:`mcc.quant.storage_bytes`), since fake-quantized layers keep float
    weights in memory and ``size_bytes`` alone would show no gain.
    """

    params: int
    size_bytes: int
    size_by_dtype: dict[str, int]
    macs: int
    flops: int
    sparsity: float
    sparse_size_bytes: int
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    metric: float | None = None
    metric_name: str | None = None
    storage_bytes: int | None = None

    @property
    def stored_bytes(self) -> int:
        """The size a deployed model takes: ``storage_bytes`` when quantized, else ``size_bytes``."""
        return self.size_bytes if self.storage_bytes is None else self.storage_bytes

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_json(self, path=None) -> str:
        return _dump(self.to_dict(), path)

    def table(self) -> str:
        """Two aligned columns: what is measured, and its value."""
        rows = []
        for row in _rows(self, self):
            value = row.format(self)
            if value is not None:
                if row.label == "size" and len(self.size_by_dtype) > 1:
                    value += " (" + ", ".join(f"{k} {human_bytes(v)}"
                                              for k, v in self.size_by_dtype.items()) + ")"
                rows.append((row.label, value))
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def measure(model, example_inputs=None, *, latency: bool = True, warmup: int = 3,
            repeats: int = 20, evaluate: Callable[[nn.Module], Any] | None = None,
            metric_name: str | None = None) -> ModelStats:
    """Measure ``model`` (an :class:`mcc.Graph` or ``nn.Module``) on ``example_inputs``.

    ``example_inputs`` (a tensor or tuple of tensors) defaults to the Graph's own. The model
    runs in eval mode, and every submodule's train/eval flag is put back afterwards, so
    measuring changes nothing the caller can see. ``evaluate(module) -> number`` supplies the
    metric (named ``metric_name``); it is called on the ``nn.Module`` (a Graph's GraphModule).
    Latency is CPU wall time of one forward pass under ``torch.inference_mode()``, ``warmup``
    untimed runs first, then the median and p90 of ``repeats`` timed ones.
    """
    from mcc.frontends.torch import normalize_inputs
    from mcc.graph import Graph

    if isinstance(model, Graph):
        module = model.module
        inputs = model.example_inputs if example_inputs is None else normalize_inputs(example_inputs)
    elif isinstance(model, nn.Module):
        if example_inputs is None:
            raise ModelError("measuring an nn.Module needs example inputs, e.g. "
                             "measure(model, torch.randn(1, 3, 224, 224)); an mcc.Graph brings its own")
        module, inputs = model, normalize_inputs(example_inputs)
    else:
        raise ModelError(f"expected a torch.nn.Module or an mcc.Graph to measure, "
                         f"got {type(model).__name__}")
    if latency and (warmup < 0 or repeats < 1):
        raise ReportError(f"latency needs warmup >= 0 and repeats >= 1, got warmup={warmup}, "
                          f"repeats={repeats}")
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        flops = count_flops(module, inputs)
        median = p90 = None
        if latency:
            median, p90 = measure_latency(module, inputs, warmup=warmup, repeats=repeats)
        metric = run_evaluation(evaluate, module) if evaluate is not None else None
    finally:
        for m, training in modes:
            m.training = training
    by_dtype: dict[str, int] = {}
    zeros = weights = sparse_bytes = 0
    for t in _tensors(module):
        nbytes = t.numel() * t.element_size()
        key = str(t.dtype).removeprefix("torch.")
        by_dtype[key] = by_dtype.get(key, 0) + nbytes
        if isinstance(t, nn.Parameter) and t.dim() >= 2:
            zeros += int((t == 0).sum())
            weights += t.numel()
            sparse_bytes += csr_bytes(t)
        else:
            sparse_bytes += nbytes
    return ModelStats(
        params=sum(p.numel() for p in module.parameters()),
        size_bytes=sum(by_dtype.values()), size_by_dtype=by_dtype,
        macs=flops // 2, flops=flops, sparsity=zeros / weights if weights else 0.0,
        sparse_size_bytes=sparse_bytes, latency_ms=median, latency_p90_ms=p90,
        metric=metric, metric_name=metric_name if evaluate is not None else None,
        storage_bytes=_quantized_storage(module, inputs))


def _quantized_storage(module: nn.Module, inputs: tuple) -> int | None:
    """Bytes with quantized weights at their bit width, for a graph holding quantizers."""
    if not isinstance(module, fx.GraphModule):
        return None
    from mcc.graph import Graph
    from mcc.quant import FakeQuantize, QuantizedLayer, storage_bytes

    if not any(isinstance(m, (FakeQuantize, QuantizedLayer)) for m in module.modules()):
        return None
    return storage_bytes(Graph(module, inputs))


def _tensors(module: nn.Module):
    """Every parameter and buffer once (tied weights count once), plus, in a GraphModule, the
    plain tensor attributes its ``get_attr`` nodes read (FX keeps traced constants that way)."""
    seen = set()
    tensors = list(module.parameters()) + list(module.buffers())
    if isinstance(module, fx.GraphModule):
        for node in module.graph.nodes:
            if node.op == "get_attr":
                value = _attribute(module, node.target)
                if isinstance(value, torch.Tensor):
                    tensors.append(value)
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            yield t


def _attribute(module: nn.Module, target: str):
    value = module
    for part in target.split("."):
        value = getattr(value, part, None)
    return value


def csr_bytes(weight: torch.Tensor) -> int:
    """Bytes of a CSR encoding of ``weight`` viewed as ``[shape[0], -1]`` (one row per output
    channel): the nonzero values in their own dtype, an int32 column index per value and
    ``rows + 1`` int32 row pointers."""
    rows = weight.shape[0]
    nnz = int((weight != 0).sum())
    return nnz * (weight.element_size() + 4) + (rows + 1) * 4


def count_flops(module: nn.Module, inputs: tuple) -> int:
    """FLOPs of one forward pass as ``torch.utils.flop_counter`` counts them (2 per MAC of each
    convolution, matrix product and attention)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        _run(module, inputs)
    return int(counter.get_total_flops())


def measure_latency(module: nn.Module, inputs: tuple, *, warmup: int = 3,
                    repeats: int = 20) -> tuple[float, float]:
    """Median and p90 (nearest rank) wall time of one forward pass, in milliseconds."""
    from tqdm import tqdm

    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            _run(module, inputs)
        for _ in tqdm(range(repeats), desc="latency", unit="run", leave=False,
                      disable=not sys.stderr.isatty()):
            start = time.perf_counter()
            module(*inputs)
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return statistics.median(times), times[math.ceil(0.9 * len(times)) - 1]


def _run(module: nn.Module, inputs: tuple):
    """One forward pass; a model that fails on its inputs is the user's error, named as such."""
    try:
        return module(*inputs)
    except MccError:
        raise
    except Exception as exc:
        shapes = ", ".join(f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for t in inputs)
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(f"the model fails on the example inputs ({shapes}): "
                         f"{type(exc).__name__}: {first_line}; give inputs of the shape and dtype "
                         "the model expects") from exc


def run_evaluation(evaluate: Callable, module: nn.Module) -> float:
    """Call the user's evaluation function; anything but a finite real number is a ReportError."""
    name = _callable_name(evaluate)
    try:
        with torch.no_grad():
            value = evaluate(module)
    except Exception as exc:
        raise ReportError(f"evaluation function {name} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:76] + " ..."
        raise ReportError(f"evaluation function {name} returned {shown} "
                          f"({type(value).__name__}); it must return a finite number, the metric "
                          "(for example top-1 accuracy in percent)")
    return float(value)


def _callable_name(fn) -> str:
    """``module.qualname`` of a function, method, callable object or partial, for messages."""
    if isinstance(fn, functools.partial):
        return f"functools.partial({_callable_name(fn.func)})"
    qualname = getattr(fn, "__qualname__", None) or f"{type(fn).__qualname__} object"
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if module else qualname


# ---- formatting ---------------------------------------------------------------------------
def human_count(n: float) -> str:
    """A count in SI units with three significant digits: ``224``, ``3.11 K``, ``1.82 G``."""
    return _scaled(n, 1000, ("", "K", "M", "G", "T"))


def human_bytes(n: float) -> str:
    """A size in binary units with three significant digits: ``10 B``, ``3.91 KiB``, ``44.6 MiB``."""
    return _scaled(n, 1024, ("B", "KiB", "MiB", "GiB", "TiB"))


def _scaled(n: float, base: int, units: tuple[str, ...]) -> str:
    if abs(n) < base:
        return f"{n:.0f} {units[0]}".rstrip()
    value, unit = float(n), 0
    while abs(value) >= base - 0.5 and unit < len(units) - 1:
        value /= base
        unit += 1
    for decimals in (2, 1, 0):
        text = f"{value:.{decimals}f}"
        if abs(float(text)) < 10 ** (3 - decimals):
            break
    return f"{text} {units[unit]}"


def _number(v: float) -> str:
    return f"{v:.4g}"


def _ms(v: float | None) -> str | None:
    return None if v is None else f"{v:.2f} ms"


@dataclass(frozen=True)
class _Row:
    label: str
    format: Callable[[ModelStats], str | None]
    change: Callable[["Comparison"], str | None]


def _ratio_text(r: float | None) -> str | None:
    return None if r is None else f"{r:.2f}x"


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _rows(before: ModelStats, after: ModelStats) -> list[_Row]:
    """The table's rows; the sparse-encoding size only where some weights are zero (for dense
    weights CSR is larger than dense, which is no news)."""
    rows = [
        _Row("params", lambda s: human_count(s.params), lambda c: _ratio_text(c.param_ratio)),
        _Row("size", lambda s: human_bytes(s.size_bytes),
             lambda c: _ratio_text(_ratio(c.before.size_bytes, c.after.size_bytes))),
    ]
    if before.storage_bytes is not None or after.storage_bytes is not None:
        rows.append(_Row("size, quantized", lambda s: human_bytes(s.stored_bytes),
                         lambda c: _ratio_text(c.compression_ratio)))
    if before.sparsity or after.sparsity:
        rows.append(_Row("size, sparse weights", lambda s: human_bytes(s.sparse_size_bytes),
                         lambda c: _ratio_text(_ratio(c.before.sparse_size_bytes,
                                                      c.after.sparse_size_bytes))))
    metric_label = after.metric_name or before.metric_name or "metric"
    rows += [
        _Row("MACs", lambda s: human_count(s.macs), lambda c: _ratio_text(c.flop_ratio)),
        _Row("sparsity", lambda s: f"{100 * s.sparsity:.1f}%",
             lambda c: f"{100 * (c.after.sparsity - c.before.sparsity):+.1f} pp"),
        _Row("latency median", lambda s: _ms(s.latency_ms), lambda c: _ratio_text(c.speedup)),
        _Row("latency p90", lambda s: _ms(s.latency_p90_ms),
             lambda c: _ratio_text(_ratio(c.before.latency_p90_ms, c.after.latency_p90_ms))),
        _Row(metric_label, lambda s: None if s.metric is None else _number(s.metric),
             lambda c: None if c.metric_delta is None else f"{c.metric_delta:+.4g}"),
    ]
    return rows


@dataclass
class Comparison:
    """Two measurements of a model, before and after compression; ratios are before/after."""

    before: ModelStats
    after: ModelStats

    @property
    def compression_ratio(self) -> float | None:
        """Stored size before/after: quantized weights count at their bit width."""
        return _ratio(self.before.stored_bytes, self.after.stored_bytes)

    @property
    def param_ratio(self) -> float | None:
        return _ratio(self.before.params, self.after.params)

    @property
    def flop_ratio(self) -> float | None:
        return _ratio(self.before.macs, self.after.macs)

    @property
    def speedup(self) -> float | None:
        return _ratio(self.before.latency_ms, self.after.latency_ms)

    @property
    def metric_delta(self) -> float | None:
        if self.before.metric is None or self.after.metric is None:
            return None
        return self.after.metric - self.before.metric

    def table(self) -> str:
        """Rows of measurements; columns before, after and the change (ratio or difference).
        Rows measured on neither side (latency, metric) are left out."""
        rows = [("", "before", "after", "change")]
        for row in _rows(self.before, self.after):
            b, a = row.format(self.before), row.format(self.after)
            if b is None and a is None:
                continue
            rows.append((row.label, b or "-", a or "-", row.change(self) or ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  "
                         f"{r[3]:>{widths[3]}}".rstrip() for r in rows)

    def to_dict(self) -> dict[str, Any]:
        return _plain({"before": self.before.to_dict(), "after": self.after.to_dict(),
                       "compression_ratio": self.compression_ratio, "param_ratio": self.param_ratio,
                       "flop_ratio": self.flop_ratio, "speedup": self.speedup,
                       "metric_delta": self.metric_delta})

    def to_json(self, path=None) -> str:
        return _dump(self.to_dict(), path)


@dataclass
class Report:
    """A compression run: the pipeline, each pass's :class:`mcc.pipeline.PassRecord`, the
    model measured before and after, and notes for the reader."""

    pipeline: str
    passes: list = field(default_factory=list)
    before: ModelStats | None = None
    after: ModelStats | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def comparison(self) -> Comparison | None:
        if self.before is None or self.after is None:
            return None
        return Comparison(self.before, self.after)

    def table(self) -> str:
        """The passes (time, compact statistics), the notes, then the before/after table."""
        lines = [f"pipeline: {self.pipeline}"]
        names = [r.name for r in self.passes]
        times = [f"{r.seconds:.2f} s" for r in self.passes]
        name_w = max(map(len, names), default=0)
        time_w = max(map(len, times), default=0)
        for r, name, seconds in zip(self.passes, names, times):
            stats = ", ".join(f"{k}={_compact(v)}" for k, v in r.stats.items())
            change = "" if r.modified else "(no change) "
            lines.append(f"  {name:<{name_w}}  {seconds:>{time_w}}  {change}{stats}".rstrip())
        if self.notes:
            lines += ["notes:"] + [f"  - {n}" for n in self.notes]
        if self.comparison is not None:
            lines += ["", self.comparison.table()]
        elif self.before is not None or self.after is not None:
            lines += ["", (self.after or self.before).table()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return _plain({
            "pipeline": self.pipeline,
            "passes": [{"name": r.name, "spec": r.spec, "modified": r.modified,
                        "seconds": r.seconds, "stats": r.stats} for r in self.passes],
            "before": self.before.to_dict() if self.before else None,
            "after": self.after.to_dict() if self.after else None,
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "notes": self.notes})

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON text; with ``path``, also written there atomically."""
        return _dump(self.to_dict(), path)


_MAX_ITEMS = 4  # entries of a list or mapping shown in a pass's line; the JSON has them all


def _compact(value) -> str:
    """One pass statistic on one line: numbers short, mappings as ``[key: value; ...]`` with
    keys that share a reason grouped (``[bn1, bn2 +5 more: graph is in training mode]``)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, dict):
        entries: list[tuple[list[str], str]] = []
        by_reason: dict[str, list[str]] = {}
        for k, v in value.items():
            if isinstance(v, str) and v in by_reason:
                by_reason[v].append(str(k))
                continue
            keys = [str(k)]
            if isinstance(v, str):
                by_reason[v] = keys
            entries.append((keys, _compact(v)))
        parts = [", ".join(keys[:3]) + (f" +{len(keys) - 3} more" if len(keys) > 3 else "")
                 + f": {text}" for keys, text in entries[:_MAX_ITEMS]]
        if len(entries) > _MAX_ITEMS:
            parts.append(f"+{len(entries) - _MAX_ITEMS} more")
        return "[" + "; ".join(parts) + "]"
    if isinstance(value, (list, tuple, set)):
        items = list(value)
        more = f", +{len(items) - _MAX_ITEMS} more" if len(items) > _MAX_ITEMS else ""
        return "[" + ", ".join(_compact(v) for v in items[:_MAX_ITEMS]) + more + "]"
    return str(_plain(value))


def _dump(data: dict, path) -> str:
    """Strict JSON (NaN would make it unreadable for other tools); written atomically."""
    text = json.dumps(data, indent=2, allow_nan=False)
    if path is not None:
        from mcc.io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write(text + "\n")
    return text


def _plain(obj):
    """JSON-safe values: tensors and arrays to numbers/lists, dtypes to names, NaN/inf to None,
    dataclasses to dicts, anything else to its text."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return _plain(obj.tolist())
    return str(obj)
