"""`ir.fastyaml` gives exactly PyYAML's results, or steps aside.

`dump_block` must write byte-for-byte what `yaml.dump(..., sort_keys=True, default_flow_style=False,
allow_unicode=True, width=120)` writes (with libyaml's emitter and with the pure-Python one), and
`construct_tree` must build what `construct_document` builds; both may instead raise `Unsupported`, which
sends the caller to PyYAML's general path. Also checked: the fast paths are taken for real IR, and loading
keeps reporting the same line numbers now that nodes are composed again on demand.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir
import ir.load
from ir.fastyaml import Unsupported, construct_tree, dump_block

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits"
DUMPERS = [yaml.SafeDumper, *([yaml.CSafeDumper] if hasattr(yaml, "CSafeDumper") else [])]

# Words that read back as other types, indicators in every position, spaces, quotes, long lines.
TRICKY = [
    "", "yes", "No", "on", "OFF", "true", "False", "null", "~", "1", "-1", "+1", "0x1f", "017", "0o17", "1_000",
    "1.5", "1.", ".5", ".inf", "-.inf", ".nan", "1e5", "12:30", "2024-01-01", "2001-12-14t21:59:43.10-05:00", "=",
    "<<", "---", "...", "-", "- a", "-a", "a:", "a: b", "a:b", "a #b", "a#b", "#a", "?", "? a", "?a", ":a", ": a",
    "a b", " a", "a ", "a  b", "it's", "'q'", '"q"', ",", '"', "*.csv", "data/*.csv", "${params.x}", "&a", "!t",
    "|", ">", "%", "@", "`", "[x]", "{x}", "https://h.example/a?b=c", "x" * 130, "word " * 30,
    "a" * 60 + " " + "b" * 70, "tab\there", "line\nbreak", "été", "\u2028", "\x85",
]  # fmt: skip
texts = st.one_of(
    st.sampled_from(TRICKY),
    st.text(alphabet=st.sampled_from(list("abzAZ09_-./:#,[]{}&*!|>'\"%@`?=~+<$() ")), max_size=140),
)
scalars = st.one_of(
    texts,
    st.booleans(),
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
    max_leaves=30,
)
documents = st.dictionaries(texts, values, min_size=1, max_size=6)


def _reference(data: Any, dumper: type) -> str:
    text: str = yaml.dump(data, Dumper=dumper, sort_keys=True, default_flow_style=False, allow_unicode=True, width=120)
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_dump_block_writes_what_yaml_dump_writes(document: dict[str, Any]) -> None:
    try:
        fast = dump_block(document)
    except Unsupported:
        return
    for dumper in DUMPERS:
        assert fast == _reference(document, dumper), dumper.__name__


def test_dump_block_refuses_shared_objects_which_pyyaml_writes_as_aliases() -> None:
    shared = {"a": 1}
    with pytest.raises(Unsupported):
        dump_block({"x": shared, "y": shared})


def test_rendered_values_take_the_fast_path_and_match_pyyaml() -> None:
    bundle = ir.load_bundle(DIGITS)
    document = ir.to_document(ir.render(bundle, {"scorer": "it's a 'test': #1"}))
    fast = dump_block(document)
    assert fast == ir.to_yaml(ir.render(bundle, {"scorer": "it's a 'test': #1"}))
    for dumper in DUMPERS:
        assert fast == _reference(document, dumper)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


YAML_SNIPPETS = [
    "a: 1\nb: [x, 'y', \"z\", 1.5, -.inf, .nan, ~, null, true, No, 0x1f, 017, 1_000, 12:30, 2024-01-01]\n",
    "a: {b: {c: [1, [2, [3, {d: e}]]]}}\n",
    "a: !!str 1\nb: !!int '5'\nc: !!float 1\n",
    "a: !!binary aGVsbG8=\n",
    "a: !!set {x, y}\n",
    "base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n",
    "a: &x [1, 2]\nb: *x\n",
    "a: 1\na: 2\n",
    "? [x]\n: 1\n",
    "a: " + "[" * 63 + "]" * 63 + "\n",
    "a: " + "[" * 64 + "]" * 64 + "\n",
    "a: 2001-12-14t21:59:43.10-05:00\nb: 2002-12-14\n",
    "=: 1\n",
    "[1, 2, {a: b}]\n",
    "plain\n",
    "",
]


@pytest.mark.parametrize("text", YAML_SNIPPETS)
def test_construct_tree_builds_what_pyyaml_builds_or_steps_aside(text: str) -> None:
    loader = ir.load._Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            assert node is not None
            try:
                fast = construct_tree(node, loader, ir.load.MAX_DEPTH, ir.load.MAX_NODES)
            except Unsupported:
                continue
            assert ir.load._check_node(node) is None
            assert _same(fast, loader.construct_document(node))
    finally:
        loader.dispose()


def test_construct_tree_leaves_limits_to_the_general_path() -> None:
    text = "a: [1, 2, 3]\nb: {c: d}\n"
    loader = yaml.SafeLoader(text)
    node = loader.get_single_node()
    assert node is not None
    with pytest.raises(Unsupported):
        construct_tree(node, loader, 2, 1000)  # too deep for a limit of 2
    with pytest.raises(Unsupported):
        construct_tree(node, loader, 64, 5)  # more than 5 nodes
    assert construct_tree(node, loader, 64, 1000) == {"a": [1, 2, 3], "b": {"c": "d"}}


def test_line_numbers_come_from_the_source_when_nodes_were_not_kept() -> None:
    text = "kind: A\nspec:\n  items:\n  - x\n  - y: 1\n    z: 2\n---\nkind: B\nspec: {k: v}\n"
    docs, issues = ir.load.load_files({"f.yaml": text})
    assert issues == []
    first, second = docs
    assert first.node is None and second.node is None  # built by the fast path
    assert first.line_of(("spec", "items", 1, "z")) == 6
    assert first.line_of(("spec", "items", 0)) == 4
    assert first.line_of(("spec", "missing")) == 3  # the line where the value of spec starts
    assert second.line_of(("spec", "k")) == 9


def test_line_numbers_of_documents_left_to_pyyaml_are_unchanged() -> None:
    text = "base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n"
    docs, issues = ir.load.load_files({"f.yaml": text})
    assert issues == []
    (doc,) = docs
    assert doc.node is not None  # merge keys: built by PyYAML, node kept as the constructor left it
    assert doc.data == {"base": {"x": 1}, "other": {"x": 1, "y": 2}}
    assert doc.line_of(("other", "x")) == 1
    assert doc.line_of(("other", "y")) == 4
