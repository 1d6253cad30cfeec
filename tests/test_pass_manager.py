"""The pass manager: registry, analysis caching and invalidation, verification, instruments."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import mcc
from mcc.errors import PassError
from mcc.pass_manager import ANALYSES, REGISTRY, AnalysisManager, Pass, PassResult, analysis, registry, register
from mcc.pipeline import Pipeline


def small_graph():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5)).eval()
    return mcc.trace(model, torch.randn(2, 3, 8, 8))


@pytest.fixture
def counting_analysis():
    calls = []

    @analysis("count-nodes")
    def count(graph):
        calls.append(1)
        return sum(1 for _ in graph.nodes)

    yield calls
    del ANALYSES["count-nodes"]


@pytest.fixture
def passes(counting_analysis):
    made = []

    def make(name, preserves, mutate):
        @register(name)
        @dataclass(frozen=True)
        class P(Pass):
            """Test pass."""

            def run(self, graph, analyses):
                analyses.get("count-nodes")
                if mutate:
                    mutate(graph)
                return PassResult(graph, mutate is not None)

        P.preserves = frozenset(preserves)
        made.append(name)
        return P

    yield make
    for name in made:
        del REGISTRY[name]


def test_builtin_passes_are_registered_with_docs():
    names = registry()
    for name in ("fold-bn", "dce", "remove-identity", "fold-constants"):
        assert name in names
        assert names[name].doc(), f"{name} has no one-line doc"
        assert names[name].name == name


def test_analysis_is_cached_until_a_modifying_pass_drops_it(counting_analysis, passes):
    def add_identity(graph):
        out = next(n for n in graph.nodes if n.op == "output")
        with graph.fx_graph.inserting_before(out):
            node = graph.fx_graph.call_function(torch.clone, (out.args[0],))
        out.args = (node,)
        graph.recompile()

    passes("reader", (), None)
    passes("keeper", ("count-nodes",), add_identity)
    passes("breaker", (), add_identity)
    Pipeline.parse("reader,reader").run(small_graph())
    assert len(counting_analysis) == 1  # second reader hits the cache
    counting_analysis.clear()
    Pipeline.parse("reader,keeper,reader").run(small_graph())
    assert len(counting_analysis) == 1  # keeper preserves it
    counting_analysis.clear()
    Pipeline.parse("reader,breaker,reader").run(small_graph())
    assert len(counting_analysis) == 2  # breaker invalidates it


def test_manager_invalidate_keeps_only_preserved():
    am = AnalysisManager(small_graph())
    am.get("shapes")
    am.invalidate(frozenset({"shapes"}))
    assert am.cached() == {"shapes"}
    am.invalidate()
    assert am.cached() == frozenset()


def test_shapes_are_current_after_a_pipeline():
    graph = small_graph()
    graph, _ = Pipeline.parse("fold-bn").run(graph)
    for node in graph.nodes:
        if node.op == "call_module":
            assert graph.info(node) is not None
    conv = graph.node("_0")
    assert graph.info(conv).shape == (2, 4, 6, 6)


def test_internal_error_in_a_pass_names_the_pass(passes):
    def explode(graph):
        raise ZeroDivisionError("boom")

    passes("exploder", (), explode)
    with pytest.raises(PassError, match=r"pass 'exploder'.*internal error \(ZeroDivisionError: boom\)"):
        Pipeline.parse("exploder").run(small_graph())


def test_verify_catches_a_pass_that_changes_output_shape(passes):
    def truncate(graph):
        out = next(n for n in graph.nodes if n.op == "output")
        with graph.fx_graph.inserting_before(out):
            node = graph.fx_graph.call_function(torch.narrow, (out.args[0], 1, 0, 2))
        out.args = (node,)
        graph.recompile()

    passes("truncator", (), truncate)
    Pipeline.parse("truncator").run(small_graph())  # without verify nothing checks
    with pytest.raises(PassError, match=r"pass 'truncator'.*output shapes from \(2, 5\) to \(2, 2\)"):
        Pipeline.parse("truncator").run(small_graph(), verify=True)


def test_instruments_see_every_pass_before_and_after():
    seen = []
    Pipeline.parse("fold-bn,dce").run(small_graph(),
                                      instruments=[lambda when, p, g, rec: seen.append((when, p.name, rec and rec.modified))])
    assert seen == [("before", "fold-bn", None), ("after", "fold-bn", True),
                    ("before", "dce", None), ("after", "dce", False)]


def test_entry_point_group_is_declared():
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "mcc.passes" in meta["project"]["entry-points"]
