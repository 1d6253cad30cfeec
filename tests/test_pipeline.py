"""The pipeline spec: parsing, printing back, errors that point at the problem."""

import string

import pytest
from hypothesis import given, settings, strategies as st

from mcc.errors import MccError, PipelineError, PipelineSyntaxError
from mcc.pipeline import Pipeline, _Parser, format_value


def parse_raw(text):
    return [(name, opts) for name, _, opts in _Parser(text).pipeline()]


def test_grammar_values():
    raw = parse_raw("a-b{i=3,f=-0.25,e=1e-3,t=true,n=none,id=per-channel,s='x,y}',"
                    'q="a\\"b",l=[1,2.5,layer1.0.conv1,"z"],empty=[]},c')
    assert raw == [("a-b", {"i": 3, "f": -0.25, "e": 1e-3, "t": True, "n": None,
                            "id": "per-channel", "s": "x,y}", "q": 'a"b',
                            "l": [1, 2.5, "layer1.0.conv1", "z"], "empty": []}),
                   ("c", {})]
    assert isinstance(raw[0][1]["i"], int) and isinstance(raw[0][1]["f"], float)


def test_whitespace_is_allowed_between_tokens():
    assert parse_raw(" fold-bn , dce { } ") == [("fold-bn", {}), ("dce", {})]


@pytest.mark.parametrize("text, position, expected", [
    ("fold-bn,", 8, "a pass name"),
    ("fold-bn{x}", 9, "'=' after option 'x'"),
    ("fold-bn{x=}", 10, "a value"),
    ("fold-bn{x=1", 11, "',' between options or '}'"),
    ("fold-bn dce", 8, "',' between passes"),
    ("Fold", 0, "a pass name"),
    ("a{x=[1,2}", 8, "',' between list items or ']'"),
    ("a{x='abc}", 9, "a closing '"),
    ("a{x=1,x=2}", 6, "a new option (option 'x' is given twice)"),
    ("a{x=1.2.3}", 4, "a value"),
])
def test_syntax_errors_point_at_the_character(text, position, expected):
    with pytest.raises(PipelineSyntaxError) as info:
        _Parser(text).pipeline()
    assert info.value.position == position
    assert expected in str(info.value)
    assert f"character {position + 1}" in str(info.value)


def test_prints_back_to_the_text_it_was_parsed_from():
    text = "fold-bn,remove-identity,dce,fold-constants"
    assert str(Pipeline.parse(text)) == text
    assert str(Pipeline.parse(" fold-bn ,dce{} ")) == "fold-bn,dce"


def test_unknown_pass_names_the_closest_one():
    with pytest.raises(PipelineError, match=r"unknown pass 'fold-nb'.*did you mean 'fold-bn'"):
        Pipeline.parse("fold-nb")


def test_unknown_option_names_the_closest_one(toy_pass):
    with pytest.raises(PipelineError, match=r"no option 'ratoi'.*did you mean 'ratio'"):
        Pipeline.parse("toy{ratoi=0.3}")


@pytest.mark.parametrize("spec, message", [
    ("toy{ratio=1.5}", "out of range: must be < 1"),
    ("toy{ratio=-0.1}", "out of range: must be >= 0"),
    ("toy{ratio=yes}", "expected a number"),
    ("toy{count=2.5}", "expected an integer"),
    ("toy{count=true}", "expected an integer"),
    ("toy{flag=1}", "expected true or false"),
    ("toy{mode=fancy}", "'fancy' is not one of l1, l2"),
    ("toy{names=[1]}", "expected a name"),
])
def test_option_values_are_validated(toy_pass, spec, message):
    with pytest.raises(PipelineError, match=message) as info:
        Pipeline.parse(spec)
    assert "'toy'" in str(info.value)


def test_options_are_typed_and_round_trip(toy_pass):
    p = Pipeline.parse("toy{ratio=0,count=3,names=[a.b,c],mode=l2}")
    (toy,) = p.passes
    assert toy.ratio == 0.0 and isinstance(toy.ratio, float)
    assert toy.names == ("a.b", "c") and toy.mode == "l2" and toy.count == 3
    assert str(p) == "toy{ratio=0.0,count=3,mode=l2,names=[a.b,c]}"
    assert Pipeline.parse(str(p)) == p
    # Built in Python, only options that differ from the defaults are printed.
    assert str(Pipeline([toy_pass(ratio=0.5)])) == "toy"
    assert str(Pipeline([toy_pass(ratio=0.25, names=["x y"])])) == 'toy{ratio=0.25,names=["x y"]}'


@pytest.fixture
def toy_pass():
    from dataclasses import dataclass

    from mcc.pass_manager import REGISTRY, Pass, PassResult, option, register

    @register("toy")
    @dataclass(frozen=True)
    class Toy(Pass):
        """A pass with one option of every kind, for testing the spec machinery."""

        ratio: float = option(0.5, "a fraction", min=0.0, max=1.0, max_open=True)
        count: int = option(1, "a count", min=1)
        flag: bool = option(False, "a switch")
        mode: str = option("l1", "a choice", choices=("l1", "l2"))
        names: tuple[str, ...] = option((), "a list of names")

        def run(self, graph, analyses):
            return PassResult(graph, False)

    yield Toy
    del REGISTRY["toy"]


values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | st.text(alphabet=string.ascii_letters + string.digits + "_-. ,{}[]='\"\\", max_size=12),
    lambda inner: st.lists(inner, max_size=4), max_leaves=8)


@given(values)
def test_format_value_round_trips(value):
    (name, opts), = parse_raw(f"p{{v={format_value(value)}}}")
    expected = value
    assert opts["v"] == expected


@settings(max_examples=500)
@given(st.text(alphabet=string.ascii_letters + string.digits + "-_.,{}[]='\" \\+", max_size=40))
def test_fuzzed_specs_only_ever_raise_mcc_errors(text):
    try:
        Pipeline.parse(text)
    except MccError:
        pass


@settings(max_examples=300)
@given(st.text(max_size=30))
def test_fuzzed_unicode_specs_only_ever_raise_mcc_errors(text):
    try:
        Pipeline.parse(text)
    except MccError:
        pass
