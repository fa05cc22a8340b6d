"""Fast paths for the YAML the IR reads and writes, giving exactly PyYAML's results.

PyYAML's C parser and emitter are quick, but the constructor (nodes -> Python data) and the representer
(Python data -> nodes) around them are generic pure Python, and dominate the time of loading and rendering a
large bundle. This module handles the common shapes directly:

- `construct_tree`: the data of a document whose node graph is a tree (no anchors shared through aliases)
  with the core tags only, checked against the load limits on the way;
- `dump_block`: the text of plain data (dicts with string keys, lists, strings, numbers, booleans, None) in
  the style of `yaml.dump(..., sort_keys=True, default_flow_style=False, width=120)`, for scalars that are
  written plain or single-quoted on one line.

Both raise `Unsupported` for anything outside those shapes; callers then take PyYAML's general path, so the
result is identical either way and only the common case is faster.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")


class Unsupported(Exception):
    """The input is outside what the fast path handles: use PyYAML's general path instead."""


# ---------------------------------------------------------------------------------------------- reading


def construct_tree(root: Node, loader: yaml.SafeLoader, max_depth: int, max_nodes: int) -> Any:
    """What `loader.construct_document(root)` returns, for a tree-shaped document within the load limits.

    Raises `Unsupported` when a node is reached twice (an alias), when nesting is deeper than `max_depth`,
    when a mapping repeats a key, when the document has more than `max_nodes` nodes, or on any tag other than
    str, int, float, bool, null, timestamp, seq and map (and str-tagged mapping keys). Every limit the general
    path checks is thus either met here or left to the general path to report, in its own words.
    """
    seen: set[int] = set()
    bool_values: dict[str, bool] = loader.bool_values
    construct_int: Callable[[Any], Any] = loader.construct_yaml_int
    construct_float: Callable[[Any], Any] = loader.construct_yaml_float
    construct_timestamp: Callable[[Any], Any] = loader.construct_yaml_timestamp

    def build(node: Any, depth: int) -> Any:
        if depth > max_depth:
            raise Unsupported
        ident = id(node)
        if ident in seen:
            raise Unsupported
        seen.add(ident)
        cls = node.__class__
        tag = node.tag
        if cls is ScalarNode:
            value: str = node.value
            if tag == _STR:
                return value
            if tag == _INT:
                return int(value) if _DECIMAL.fullmatch(value) else construct_int(node)
            if tag == _NULL:
                return None
            if tag == _BOOL:
                return bool_values[value.lower()]
            if tag == _FLOAT:
                return construct_float(node)
            if tag == _TIMESTAMP:
                return construct_timestamp(node)
            raise Unsupported
        if cls is MappingNode and tag == _MAP:
            mapping: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.__class__ is not ScalarNode or key_node.tag != _STR or depth + 1 > max_depth:
                    raise Unsupported
                key_id = id(key_node)
                key = key_node.value
                if key_id in seen or key in mapping:
                    raise Unsupported
                seen.add(key_id)
                mapping[key] = build(value_node, depth + 1)
            return mapping
        if cls is SequenceNode and tag == _SEQ:
            return [build(item, depth + 1) for item in node.value]
        raise Unsupported

    try:
        data = build(root, 1)
    except Unsupported:
        raise
    except Exception as exc:  # whatever the general path makes of it, it will say so itself
        raise Unsupported from exc
    if len(seen) > max_nodes:
        raise Unsupported
    return data


# ---------------------------------------------------------------------------------------------- writing

BEST_WIDTH = 120
#: Longer keys are left to PyYAML: over 128 characters libyaml writes `? key` (the pure-Python emitter already
#: from 123 on, counting the `!!str` tag it does not write).
_SIMPLE_KEY_MAX = 100
#: First characters that make the emitter quote a string whatever follows (`-`, `?` and `:` only when a space
#: or the end follows: see `_Scalars._analyse`).
_INDICATOR_START = frozenset("#,[]{}&*!|>'\"%@`")


class _Scalars:
    """How each string is written, memoised per dump: plain text or single-quoted, one line."""

    def __init__(self) -> None:
        self.resolve: Callable[[type[Node], str, tuple[bool, bool]], str] = Resolver().resolve
        self.memo: dict[str, tuple[str, bool]] = {}

    def text(self, value: str) -> tuple[str, bool]:
        """(written form, may break at spaces); raises Unsupported for strings needing double quotes etc."""
        hit = self.memo.get(value)
        if hit is None:
            hit = self.memo[value] = self._analyse(value)
        return hit

    def _analyse(self, value: str) -> tuple[str, bool]:
        """libyaml's choice for a one-line printable ASCII scalar in block context: plain, else single-quoted.

        Plain is refused (as in `yaml_emitter_analyze_scalar`) for a leading indicator, `-`/`?`/`:` followed by a
        space or the end, a leading `---` or `...`, `: ` or a final `:`, ` #`, a leading or trailing space,
        and for text that would read back as another type (`true`, `1.5`, `~`, ``).
        """
        if not value:
            return "''", False
        if not value.isascii() or not value.isprintable():
            raise Unsupported  # double quotes and escapes: leave to PyYAML
        first = value[0]
        followed_by_space = len(value) == 1 or value[1] == " "
        plain = not (
            first in _INDICATOR_START
            or (first in "?:-" and followed_by_space)
            or value.startswith(("---", "..."))
            or value.endswith((":", " "))
            or first == " "
            or ": " in value
            or " #" in value
        )
        breakable = " " in value
        if plain and self.resolve(ScalarNode, value, (True, False)) == _STR:
            return value, breakable
        return "'" + value.replace("'", "''") + "'", breakable


def dump_block(data: Any) -> str:
    """`yaml.dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True, width=120)`, faster.

    Raises `Unsupported` for data the fast path does not write: then call `yaml.dump` itself.
    """
    if data.__class__ is not dict or not data:
        raise Unsupported
    out: list[str] = []
    append = out.append
    scalars = _Scalars()
    texts = scalars.memo
    keys_memo: dict[str, str] = {}
    containers: set[int] = set()

    def scalar(value: Any, column: int) -> str:
        cls = value.__class__
        if cls is str:
            hit = texts.get(value)
            if hit is None:
                hit = scalars.text(value)
            text, breakable = hit
            if breakable and column + len(text) > BEST_WIDTH:
                raise Unsupported  # the emitter would fold this line
            return text
        if cls is bool:
            return "true" if value else "false"
        if cls is int:
            return str(value)
        if cls is float:
            return _float_text(value, scalars.resolve)
        if value is None:
            return "null"
        raise Unsupported

    def key_of(key: Any) -> str:
        if key.__class__ is not str or not key:
            raise Unsupported  # (PyYAML's pure-Python emitter writes an empty key as `? ''`)
        text, _ = scalars.text(key)
        if len(text) > _SIMPLE_KEY_MAX:
            raise Unsupported
        keys_memo[key] = text
        return text

    def mapping(items: dict[Any, Any], indent: int, inline: bool) -> None:
        if id(items) in containers:
            raise Unsupported  # the same object twice: PyYAML writes an anchor and an alias
        containers.add(id(items))
        pad = " " * indent
        try:
            keys = sorted(items)
        except TypeError:
            raise Unsupported from None
        for key in keys:
            key_text = keys_memo.get(key) if key.__class__ is str else None
            if key_text is None:
                key_text = key_of(key)
            line = key_text if inline else pad + key_text
            inline = False
            value = items[key]
            cls = value.__class__
            if cls is dict:
                if value:
                    append(line + ":\n")
                    mapping(value, indent + 2, False)
                else:
                    append(line + ": {}\n")
            elif cls is list:
                if value:
                    append(line + ":\n")
                    sequence(value, indent, False)
                else:
                    append(line + ": []\n")
            else:
                append(line + ": " + scalar(value, indent + len(key_text) + 2) + "\n")

    def sequence(items: list[Any], indent: int, inline: bool) -> None:
        if id(items) in containers:
            raise Unsupported
        containers.add(id(items))
        dash = "-" if inline else " " * indent + "-"
        rest = " " * indent + "-"
        for item in items:
            cls = item.__class__
            if cls is dict:
                if item:
                    append(dash + " ")
                    mapping(item, indent + 2, True)
                else:
                    append(dash + " {}\n")
            elif cls is list:
                if item:
                    append(dash + " ")
                    sequence(item, indent + 2, True)
                else:
                    append(dash + " []\n")
            else:
                append(dash + " " + scalar(item, indent + 2) + "\n")
            dash = rest

    mapping(data, 0, False)
    return "".join(out)


def _float_text(value: float, resolve: Callable[[type[Node], str, tuple[bool, bool]], str]) -> str:
    """`SafeRepresenter.represent_float`, and a check that the text reads back as a float."""
    if value != value:
        return ".nan"
    if value == float("inf"):
        return ".inf"
    if value == float("-inf"):
        return "-.inf"
    text = repr(value).lower()
    if "." not in text and "e" in text:
        text = text.replace("e", ".0e", 1)
    if resolve(ScalarNode, text, (True, False)) != _FLOAT:
        raise Unsupported
    return text
