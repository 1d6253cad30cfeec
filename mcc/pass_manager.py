"""Passes, their registry, their options, and the analyses they share.

A pass is a frozen dataclass registered under a kebab-case name::

    @register("fold-bn")
    @dataclass(frozen=True)
    class FoldBatchNorm(Pass):
        '''Fold BatchNorm into the preceding convolution or linear layer.'''
        preserves = frozenset()
        def run(self, graph, analyses) -> PassResult: ...

Its fields are its options: the type annotation, the default and :func:`option` metadata are
the single source of validation, pipeline-text syntax, ``repr`` and ``mcc passes`` docs. Its
docstring's first line is its one-line doc. ``preserves`` names the analyses still valid after
it ran; the manager drops every other cached analysis when the pass reports ``modified``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, ClassVar

from mcc.errors import PipelineError
from mcc.graph import Graph


def option(default: Any, doc: str, *, choices: tuple | None = None, min: float | None = None,
           max: float | None = None, min_open: bool = False, max_open: bool = False):
    """Declare a pass option: its default, a one-line doc, and its allowed values.

    ``min``/``max`` bound numbers (and list lengths' elements), closed unless ``min_open`` /
    ``max_open``; ``choices`` lists the identifiers a string option accepts.
    """
    meta = {"doc": doc, "choices": choices, "min": min, "max": max,
            "min_open": min_open, "max_open": max_open}
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata=meta)


@dataclass
class PassResult:
    """What a pass returns: the graph, whether it changed, and statistics for the report."""

    graph: Graph
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


# ---- analyses ---------------------------------------------------------------------------
ANALYSES: dict[str, Callable[[Graph], Any]] = {}


def analysis(name: str):
    """Register ``fn(graph) -> result`` as the analysis ``name``."""

    def deco(fn):
        ANALYSES[name] = fn
        return fn

    return deco


@analysis("shapes")
def _shapes(graph: Graph):
    """Re-run shape propagation so every ``node.meta`` is current; returns name -> TensorInfo."""
    graph.propagate_shapes()
    return {n.name: graph.info(n) for n in graph.nodes}


class AnalysisManager:
    """Computes analyses on demand, caches them, and drops those a pass did not preserve."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self._cache: dict[str, Any] = {}

    def get(self, name: str):
        if name not in ANALYSES:
            raise KeyError(f"unknown analysis {name!r}; known: {sorted(ANALYSES)}")
        if name not in self._cache:
            self._cache[name] = ANALYSES[name](self.graph)
        return self._cache[name]

    def cached(self) -> frozenset[str]:
        return frozenset(self._cache)

    def invalidate(self, preserved: frozenset[str] = frozenset()) -> None:
        for name in list(self._cache):
            if name not in preserved:
                del self._cache[name]


# ---- passes -----------------------------------------------------------------------------
class Pass:
    """Base of every pass. Subclasses are frozen dataclasses; see the module docstring."""

    name: ClassVar[str] = ""
    preserves: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = _coerce(self.name, f, getattr(self, f.name), type_hints(type(self))[f.name])
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Cross-option checks beyond each option's own type and range; raise PipelineError."""

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        raise NotImplementedError

    def error(self, message: str, node: str | None = None):
        """A :class:`PassError` naming this pass (and the node), ready to raise."""
        from mcc.errors import PassError

        return PassError(self.name, message, node)

    @classmethod
    def doc(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    def non_default_options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}

    def spec(self, explicit: frozenset[str] = frozenset()) -> str:
        """The pass's pipeline text: options that differ from defaults or were given explicitly."""
        from mcc.pipeline import format_value

        shown = [f.name for f in dataclasses.fields(self)
                 if f.name in explicit or getattr(self, f.name) != f.default]
        if not shown:
            return self.name
        return self.name + "{" + ",".join(f"{k}={format_value(getattr(self, k))}" for k in shown) + "}"


REGISTRY: dict[str, type[Pass]] = {}


def register(name: str):
    """Class decorator: register a Pass subclass under the kebab-case ``name``."""

    def deco(cls):
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"pass {name!r} registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


_plugins_loaded = False


def registry() -> dict[str, type[Pass]]:
    """All passes: mcc's own plus third-party ones from the ``mcc.passes`` entry-point group."""
    global _plugins_loaded
    import mcc.passes  # noqa: F401  (registers the built-in passes)

    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in entry_points(group="mcc.passes"):
            ep.load()
    return REGISTRY


def get_pass(name: str) -> type[Pass]:
    passes = registry()
    if name not in passes:
        raise PipelineError(f"unknown pass {name!r}{did_you_mean(name, passes)}; "
                            f"`mcc passes` lists them all")
    return passes[name]


def did_you_mean(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def make_pass(name: str, **options) -> Pass:
    """Instantiate the pass ``name`` with ``options``; unknown options name the closest one."""
    cls = get_pass(name)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in options:
        if key not in known:
            listing = ", ".join(known) if known else "none"
            raise PipelineError(f"pass {name!r} has no option {key!r}{did_you_mean(key, known)}; "
                                f"its options: {listing}")
    return cls(**options)


# ---- option typing ------------------------------------------------------------------------
_HINTS: dict[type, dict[str, Any]] = {}


def type_hints(cls) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if origin in (typing.Union, getattr(__import__('types'), 'UnionType', None)):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    return {int: "int", float: "float", bool: "bool", str: "identifier or string",
            type(None): "none"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(pass_name: str, f: dataclasses.Field, value: Any, tp) -> Any:
    """Check ``value`` against the option's type and range, converting int to float and list
    to tuple; raise PipelineError naming the pass and option otherwise."""

    def bad(why: str):
        return PipelineError(f"pass {pass_name!r} option {f.name!r}: {why}")

    def check(v, t):
        origin = typing.get_origin(t)
        if origin in (typing.Union, getattr(__import__('types'), 'UnionType', None)):
            for alt in typing.get_args(t):
                try:
                    return check(v, alt)
                except PipelineError:
                    continue
            raise bad(f"expected {type_name(t)}, got {v!r}")
        if origin is tuple:
            if isinstance(v, str):
                v = (v,)
            if not isinstance(v, (list, tuple)):
                raise bad(f"expected a list like [a, b], got {v!r}")
            return tuple(check(x, typing.get_args(t)[0]) for x in v)
        if t is type(None):
            if v is not None:
                raise bad(f"expected none, got {v!r}")
            return v
        if t is bool:
            if not isinstance(v, bool):
                raise bad(f"expected true or false, got {v!r}")
            return v
        if t is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(f"expected an integer, got {v!r}")
            return _range(v)
        if t is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise bad(f"expected a number, got {v!r}")
            if not math.isfinite(v):
                raise bad(f"expected a finite number, got {v!r}")
            return _range(float(v))
        if t is str:
            if not isinstance(v, str):
                raise bad(f"expected a name or quoted string, got {v!r}")
            choices = f.metadata.get("choices")
            if choices and v not in choices:
                raise bad(f"{v!r} is not one of {', '.join(choices)}{did_you_mean(v, choices)}")
            return v
        return v

    def _range(v):
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        lo_open, hi_open = f.metadata.get("min_open"), f.metadata.get("max_open")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise bad(f"{v!r} is out of range: must be {'>' if lo_open else '>='} {lo}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise bad(f"{v!r} is out of range: must be {'<' if hi_open else '<='} {hi}")
        return v

    return check(value, tp)
