"""Pipeline specs: parse ``fold-bn,prune-channels{ratio=0.3},quantize{bits=8}``, print it back,
and run it over a graph.

Grammar (whitespace allowed between tokens)::

    pipeline := pass ("," pass)*
    pass     := NAME ("{" [option ("," option)*] "}")?
    option   := KEY "=" value
    value    := INT | FLOAT | "true" | "false" | "none" | IDENT | STRING | "[" [value ("," value)*] "]"

NAME is kebab-case (``prune-channels``); KEY is snake_case; IDENT may contain letters, digits,
``_ - .`` and starts with a letter or ``_`` (``per-channel``, ``layer1.0.conv1``); STRING is
single- or double-quoted with backslash escapes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mcc.errors import MccError, PassError, PipelineError, PipelineSyntaxError
from mcc.graph import Graph
from mcc.pass_manager import AnalysisManager, Pass, PassResult, make_pass

_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_KEY = re.compile(r"[a-z_][a-z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?(?![A-Za-z0-9_.\-])")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_IDENT_FULL = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_KEYWORDS = {"true": True, "false": False, "none": None}


class _Parser:
    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def fail(self, expected: str):
        raise PipelineSyntaxError(self.text, self.pos, expected)

    def skip_ws(self):
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str, expected: str):
        if self.peek() != ch:
            self.fail(expected)
        self.pos += 1

    def match(self, pattern: re.Pattern, expected: str) -> str:
        self.skip_ws()
        m = pattern.match(self.text, self.pos)
        if not m:
            self.fail(expected)
        self.pos = m.end()
        return m.group()

    def pipeline(self) -> list[tuple[str, int, dict[str, Any]]]:
        passes = [self.pass_()]
        while self.peek() == ",":
            self.pos += 1
            passes.append(self.pass_())
        if self.peek():
            self.fail("',' between passes or '{' to give options")
        return passes

    def pass_(self):
        self.skip_ws()
        start = self.pos
        name = self.match(_NAME, "a pass name (kebab-case, like fold-bn)")
        options: dict[str, Any] = {}
        if self.peek() == "{":
            self.pos += 1
            if self.peek() != "}":
                while True:
                    key_pos = self.pos
                    key = self.match(_KEY, "an option name (snake_case, like ratio)")
                    if key in options:
                        self.pos = key_pos
                        self.skip_ws()
                        self.fail(f"a new option (option {key!r} is given twice)")
                    self.expect("=", f"'=' after option {key!r}")
                    options[key] = self.value()
                    if self.peek() == ",":
                        self.pos += 1
                        continue
                    break
            self.expect("}", "',' between options or '}' to close them")
        return name, start, options

    def value(self):
        ch = self.peek()
        if ch == "[":
            self.pos += 1
            items = []
            if self.peek() != "]":
                items.append(self.value())
                while self.peek() == ",":
                    self.pos += 1
                    items.append(self.value())
            self.expect("]", "',' between list items or ']' to close the list")
            return items
        if ch in ("'", '"'):
            return self.string(ch)
        m = _NUMBER.match(self.text, self.pos)
        if m:
            self.pos = m.end()
            token = m.group()
            return int(token) if re.fullmatch(r"[+-]?\d+", token) else float(token)
        word = self.match(_IDENT, "a value: a number, true/false, a name, a quoted string or [list]")
        return _KEYWORDS.get(word, word)

    def string(self, quote: str) -> str:
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            if ch == quote:
                self.pos += 1
                return "".join(out)
            out.append(ch)
            self.pos += 1
        self.fail(f"a closing {quote}")


def format_value(value: Any) -> str:
    """A value in pipeline syntax, such that parsing it gives the value back."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    text = str(value)
    if _IDENT_FULL.match(text) and text not in _KEYWORDS and not _NUMBER.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class PassRecord:
    """One pass's run: for the report and for instruments."""

    name: str
    spec: str
    modified: bool
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


Instrument = Callable[[str, Pass, Graph, "PassRecord | None"], None]


class Pipeline:
    """An ordered list of passes; ``str(pipeline)`` is its text form.

    ``Pipeline.parse(text)`` and ``Pipeline([FoldBatchNorm(), ...])`` build the same thing.
    Options given explicitly in parsed text are printed back even when they equal the default,
    so a parsed spec prints back to the text it came from (in canonical spacing).
    """

    def __init__(self, passes: Sequence[Pass], explicit: Sequence[frozenset[str]] | None = None):
        self.passes = list(passes)
        self._explicit = list(explicit) if explicit else [frozenset()] * len(self.passes)

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        if not isinstance(text, str):
            raise PipelineError(f"a pipeline spec is text like 'fold-bn,quantize{{bits=8}}', "
                                f"got {type(text).__name__}")
        if not text.strip():
            raise PipelineError("the pipeline spec is empty; give at least one pass, "
                                "for example 'fold-bn' (`mcc passes` lists them)")
        passes, explicit = [], []
        for name, _, options in _Parser(text).pipeline():
            passes.append(make_pass(name, **options))
            explicit.append(frozenset(options))
        return cls(passes, explicit)

    def __str__(self) -> str:
        return ",".join(p.spec(e) for p, e in zip(self.passes, self._explicit))

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Pipeline) and self.passes == other.passes

    def __len__(self) -> int:
        return len(self.passes)

    def run(self, graph: Graph, *, verify: bool = False,
            instruments: Sequence[Instrument] = ()) -> tuple[Graph, list[PassRecord]]:
        """Run every pass in order on ``graph`` **in place**; callers copy first.

        With ``verify`` the graph is linted, re-run on its example inputs and checked to keep
        its output shapes after every pass. Instruments are called as
        ``instrument("before"|"after", pass, graph, record)``.
        """
        analyses = AnalysisManager(graph)
        reference = _output_shapes(graph) if verify else None
        records = []
        for p, explicit in zip(self.passes, self._explicit):
            for inst in instruments:
                inst("before", p, graph, None)
            start = time.perf_counter()
            try:
                result = p.run(graph, analyses)
            except MccError:
                raise
            except Exception as exc:  # a bug in the pass: say which pass, keep the cause
                raise PassError(p.name, f"internal error ({type(exc).__name__}: {exc}); "
                                "this is a bug in mcc, please report it") from exc
            seconds = time.perf_counter() - start
            if not isinstance(result, PassResult):
                raise PassError(p.name, f"run() returned {type(result).__name__}, not PassResult")
            graph = result.graph
            if analyses.graph is not graph:
                analyses = AnalysisManager(graph)
            if result.modified:
                analyses.invalidate(p.preserves)
            record = PassRecord(p.name, p.spec(explicit), result.modified, seconds, result.stats)
            records.append(record)
            if verify:
                _verify(p, graph, reference)
            for inst in instruments:
                inst("after", p, graph, record)
        analyses.get("shapes")  # leave the graph's metadata current
        return graph, records


def _output_shapes(graph: Graph):
    import torch

    with torch.no_grad():
        out = graph.module(*graph.example_inputs)
    return _shapes_of(out)


def _shapes_of(out):
    import torch

    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (list, tuple)):
        return tuple(_shapes_of(o) for o in out)
    if isinstance(out, dict):
        return {k: _shapes_of(v) for k, v in out.items()}
    return None


def _verify(p: Pass, graph: Graph, reference) -> None:
    try:
        graph.module.graph.lint()
    except Exception as exc:
        raise PassError(p.name, f"left a malformed graph: {exc}") from exc
    got = _output_shapes(graph)
    if got != reference:
        raise PassError(p.name, f"changed the model's output shapes from {reference} to {got}")
