"""Reading IR bundles: a folder of files, one multi-document YAML or JSON file, or a `.tar.gz` bundle.

Input is untrusted (it arrives over REST), so parsing is defensive: size limits per file and per bundle (for
a `.tar.gz`, on the bytes it decompresses to and on its headers, see `ir.archive`), a
limit on documents, on nesting depth and on the size a YAML document expands to through aliases (a "billion
laughs" bomb is a few hundred bytes), duplicate mapping keys refused, binary content refused. Every problem
becomes an `Issue` with its file, document and line; nothing here raises a traceback at the user.

The result of this module is a list of `RawDocument`s; `ir.bundle.parse_bundle` turns them into typed kinds.
"""

from __future__ import annotations

import gc
import io
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path, PurePosixPath
from typing import Any, ParamSpec, TypeVar

import yaml

from ir.archive import GZIP_MAGIC, ArchiveError, ArchiveLimits, ArchiveTooLarge, open_tar
from ir.errors import Issue, Loc
from ir.fastyaml import Unsupported, construct_tree

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_BUNDLE_BYTES = 32 * 1024 * 1024
MAX_FILES = 2_000
MAX_ARCHIVE_MEMBERS = 10_000
MAX_DOCUMENTS = 20_000
MAX_DEPTH = 64
MAX_NODES = 1_000_000
IR_SUFFIXES = (".yaml", ".yml", ".json")

try:  # libyaml is ~10x faster; fall back to the pure-Python parser where it is missing
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment,unused-ignore]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


_P = ParamSpec("_P")
_T = TypeVar("_T")
_gc_lock = threading.Lock()
_gc_holders = 0
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while the block runs (re-entrant, thread-safe).

    Loading and rendering allocate hundreds of thousands of small objects that all stay alive (YAML nodes,
    their marks, dicts), so the collector's generational passes find nothing to free while walking an ever
    larger heap: on a 200-flow bundle they cost more than the work itself. Reference counting still frees
    everything as usual; only cycle collection waits until the outermost block ends.
    """
    global _gc_holders, _gc_was_enabled
    with _gc_lock:
        if _gc_holders == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0 and _gc_was_enabled:
                gc.enable()


def with_gc_paused(function: Callable[_P, _T]) -> Callable[_P, _T]:
    """Decorator form of `gc_paused`."""

    @wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with gc_paused():
            return function(*args, **kwargs)

    return wrapper


class _Source:
    """The text of a YAML file, composed again into nodes only when a message asks for a line number.

    Keeping the node graph of every document alive (a node and two marks per value) would make a loaded
    bundle several times larger and slow down every later garbage collection, for the sake of line numbers
    that only the error path needs. Composing the same text again gives the same nodes.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._nodes: list[yaml.Node] | None = None

    def node(self, index: int) -> yaml.Node | None:
        if self._nodes is None:
            nodes: list[yaml.Node] = []
            loader = _Loader(self.text)
            try:
                while loader.check_node():
                    node = loader.get_node()
                    if node is None:  # pragma: no cover - check_node said there is one
                        break
                    nodes.append(node)
            except (yaml.YAMLError, RecursionError, ValueError):
                pass  # the documents before the problem are the ones that were loaded
            finally:
                loader.dispose()
            self._nodes = nodes
        return self._nodes[index] if index < len(self._nodes) else None


@dataclass
class RawDocument:
    """One parsed document: its data, where it came from, and its YAML node (for line numbers).

    `node` is None for JSON and stored documents, and for YAML documents built by the fast path: their node
    is composed again from `source` when `line_of` needs it.
    """

    file: str
    index: int
    data: Any
    node: yaml.Node | None
    source: _Source | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """`ScoringFlow digits-batch`, or `document 2` when kind or name are unreadable."""
        if isinstance(self.data, dict):
            kind = self.data.get("kind")
            meta = self.data.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            if isinstance(kind, str) and isinstance(name, str) and kind and name:
                return f"{kind} {name}"
        return f"document {self.index + 1}"

    def line_of(self, loc: Loc) -> int | None:
        """1-based line of the deepest node on `loc` that exists in the source."""
        node = self.node
        if node is None and self.source is not None:
            node = self.source.node(self.index)
        if node is None:
            return None
        line: int = node.start_mark.line + 1
        for part in loc:
            child: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == part:
                        child = value
                        line = key.start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                child = node.value[part]
            if child is None:
                break
            node = child
            line = node.start_mark.line + 1
        return line

    def issue(self, loc: Loc, message: str) -> Issue:
        from ir.errors import format_loc

        return Issue(self.file, self.label, format_loc(loc), message, self.line_of(loc))


@with_gc_paused
def load_path(path: str | Path) -> tuple[list[RawDocument], list[Issue]]:
    """Read a folder (every .yaml/.yml/.json below it), a single file, or a .tar.gz bundle."""
    root = Path(path)
    if not root.exists():
        return [], [Issue(str(path), "", "", "no such file or directory")]
    if root.is_dir():
        files: dict[str, bytes] = {}
        issues: list[Issue] = []
        total = 0
        candidates = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and p.suffix in IR_SUFFIXES and not _hidden(p.relative_to(root).parts)
        )
        if not candidates:
            return [], [Issue(str(path), "", "", "the folder holds no .yaml, .yml or .json files")]
        for file in candidates[: MAX_FILES + 1]:
            rel = file.relative_to(root).as_posix()
            size = file.stat().st_size
            if size > MAX_FILE_BYTES:
                issues.append(Issue(rel, "", "", _too_large(size, MAX_FILE_BYTES)))
                continue
            total += size
            if total > MAX_BUNDLE_BYTES:
                issues.append(Issue(rel, "", "", f"the bundle is larger than {MAX_BUNDLE_BYTES // 2**20} MiB"))
                break
            files[rel] = file.read_bytes()
        if len(candidates) > MAX_FILES:
            issues.append(Issue(str(path), "", "", f"the folder holds more than {MAX_FILES} IR files"))
        docs, more = load_files(files)
        return docs, issues + more
    size = root.stat().st_size
    name = root.name
    if name.endswith((".tar.gz", ".tgz")):
        if size > MAX_BUNDLE_BYTES:
            return [], [Issue(name, "", "", _too_large(size, MAX_BUNDLE_BYTES))]
        return load_tarball(root.read_bytes(), name)
    if size > MAX_FILE_BYTES:
        return [], [Issue(name, "", "", _too_large(size, MAX_FILE_BYTES))]
    return load_files({name: root.read_bytes()})


@with_gc_paused
def load_tarball(data: bytes, name: str = "bundle.tar.gz") -> tuple[list[RawDocument], list[Issue]]:
    """Read the IR files of a gzip-compressed tar archive, in memory, refusing anything but plain files.

    The archive is read through `ir.archive.open_tar`: at most `MAX_BUNDLE_BYTES` decompressed (headers
    included), extended headers bounded before they are read, at most `MAX_ARCHIVE_MEMBERS` members.
    """
    files: dict[str, bytes] = {}
    issues: list[Issue] = []
    total = 0
    unpacked = 0
    limits = ArchiveLimits(MAX_BUNDLE_BYTES, MAX_ARCHIVE_MEMBERS, "the bundle limit")
    if data[:2] != GZIP_MAGIC:
        return [], [
            Issue(name, "", "", f"not a readable .tar.gz archive ({'not a gzip file' if data else 'empty file'})")
        ]
    try:
        with open_tar(io.BytesIO(data), limits) as archive:
            for member in archive:
                # Every member is decompressed to reach the next one, IR file or not: bound the whole archive
                # by its declared sizes before that happens (the reader also counts what it decompresses).
                unpacked += member.size
                if unpacked > MAX_BUNDLE_BYTES:
                    issues.append(Issue(name, "", "", str(limits.too_large())))
                    break
                if member.isdir():
                    continue
                rel = member.name
                clean = PurePosixPath(rel)
                if not member.isfile():
                    issues.append(Issue(rel, "", "", "only regular files are allowed in a bundle (links refused)"))
                    continue
                if clean.is_absolute() or ".." in clean.parts:
                    issues.append(Issue(rel, "", "", "paths in a bundle must be relative and stay inside it"))
                    continue
                if not rel.endswith(IR_SUFFIXES) or any(part.startswith(".") for part in clean.parts):
                    continue
                if member.size > MAX_FILE_BYTES:
                    issues.append(Issue(rel, "", "", _too_large(member.size, MAX_FILE_BYTES)))
                    continue
                total += member.size
                if total > MAX_BUNDLE_BYTES or len(files) >= MAX_FILES:
                    issues.append(Issue(name, "", "", "the bundle is too large"))
                    break
                files[str(clean)] = archive.read(member)
    except ArchiveTooLarge as exc:
        return [], [Issue(name, "", "", str(exc))]
    except ArchiveError as exc:
        return [], [Issue(name, "", "", f"not a readable .tar.gz archive ({exc})")]
    if not files:  # `load_files` would add "the bundle is empty" to what is said here already
        return [], issues or [Issue(name, "", "", "the archive holds no .yaml, .yml or .json files")]
    docs, more = load_files(files)
    return docs, issues + more


@with_gc_paused
def load_files(files: Mapping[str, bytes | str]) -> tuple[list[RawDocument], list[Issue]]:
    """Parse named file contents (the form the REST API receives) into documents."""
    docs: list[RawDocument] = []
    issues: list[Issue] = []
    if not files:
        return [], [Issue("<bundle>", "", "", "the bundle is empty: no IR files")]
    for name in sorted(files):
        content = files[name]
        size = len(content)
        if size > MAX_FILE_BYTES:
            issues.append(Issue(name, "", "", _too_large(size, MAX_FILE_BYTES)))
            continue
        text, problem = _decode(content)
        if problem:
            issues.append(Issue(name, "", "", problem))
            continue
        found, more = _parse_text(name, text)
        docs.extend(found)
        issues.extend(more)
        if len(docs) > MAX_DOCUMENTS:
            issues.append(Issue(name, "", "", f"the bundle holds more than {MAX_DOCUMENTS} documents"))
            break
    return docs, issues


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(part.startswith(".") for part in parts)


def _too_large(size: int, limit: int) -> str:
    return f"file is too large ({size / 2**20:.1f} MiB; the limit is {limit // 2**20} MiB)"


def _decode(content: bytes | str) -> tuple[str, str | None]:
    if isinstance(content, str):
        text = content
    else:
        if b"\x00" in content[:8192]:
            return "", "binary content: an IR file must be UTF-8 YAML or JSON text"
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return "", f"not UTF-8 text (invalid byte at offset {exc.start}): an IR file must be YAML or JSON"
    if "\x00" in text:
        return "", "binary content: an IR file must be UTF-8 YAML or JSON text"
    if not text.strip():
        return "", "the file is empty"
    return text, None


def _parse_text(name: str, text: str) -> tuple[list[RawDocument], list[Issue]]:
    if name.endswith(".json"):
        return _parse_json(name, text)
    return _parse_yaml(name, text)


def _parse_json(name: str, text: str) -> tuple[list[RawDocument], list[Issue]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [Issue(name, "", "", f"invalid JSON: {exc.msg}", exc.lineno)]
    except RecursionError:
        return [], [Issue(name, "", "", f"nesting is too deep (more than {MAX_DEPTH} levels)")]
    except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits()
        return [], [Issue(name, "", "", f"invalid JSON: {_value_problem(exc)}")]
    if _depth(data) > MAX_DEPTH:
        return [], [Issue(name, "", "", f"nesting is too deep (more than {MAX_DEPTH} levels)")]
    items = data if isinstance(data, list) else [data]
    return [RawDocument(name, i, item, None) for i, item in enumerate(items)], []


def _depth(data: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of plain data, stopping early once past `limit`."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _parse_yaml(name: str, text: str) -> tuple[list[RawDocument], list[Issue]]:
    docs: list[RawDocument] = []
    loader = _Loader(text)
    source = _Source(text)
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node said there is one
                break
            kept: yaml.Node | None = None  # composed again from `source` if a line number is needed
            try:  # the common case (a tree of plain values within the limits) without PyYAML's constructor
                data = construct_tree(node, loader, MAX_DEPTH, MAX_NODES)
            except Unsupported:  # anything else: the checks below say what is wrong, or PyYAML builds it
                problem = _check_node(node)
                if problem:
                    message, line = problem
                    return docs, [Issue(name, f"document {index + 1}", "", message, line)]
                data = loader.construct_document(node)
                kept = node  # as the constructor left it (merge keys flattened)
            if data is not None:
                docs.append(RawDocument(name, index, data, kept, source))
            index += 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        if "maximum nesting depth" in what:  # libyaml's own limit (0.2.5+), far above ours: say ours
            return docs, [
                Issue(name, f"document {index + 1}", "", f"nesting is too deep (more than {MAX_DEPTH} levels)", line)
            ]
        return docs, [Issue(name, f"document {index + 1}", "", f"YAML syntax error: {what}", line)]
    except yaml.YAMLError as exc:
        return docs, [Issue(name, f"document {index + 1}", "", f"YAML error: {exc}")]
    except RecursionError:
        return docs, [Issue(name, f"document {index + 1}", "", f"nesting is too deep (more than {MAX_DEPTH} levels)")]
    except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits()
        return docs, [Issue(name, f"document {index + 1}", "", f"invalid value: {_value_problem(exc)}")]
    finally:
        loader.dispose()
    if not docs:
        return [], [Issue(name, "", "", "the file holds no documents")]
    return docs, []


def _value_problem(exc: ValueError) -> str:
    """The reason of a ValueError raised while constructing a value, without Python-specific advice."""
    return str(exc).partition("; use sys.set_int_max_str_digits()")[0]


def _check_node(root: yaml.Node) -> tuple[str, int | None] | None:
    """Refuse alias bombs, deep nesting and duplicate keys before constructing Python objects.

    The expanded size is computed with memoisation over the node graph, so a bomb costs linear time here
    instead of exponential time later.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        if depth > MAX_DEPTH:
            return f"nesting is too deep (more than {MAX_DEPTH} levels)", node.start_mark.line + 1
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children: list[yaml.Node]
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = list(node.value)
        if not children_done:
            if isinstance(node, yaml.MappingNode):
                seen: set[str] = set()
                for k, _ in node.value:
                    if isinstance(k, yaml.ScalarNode):
                        if k.value in seen:
                            return f"duplicate key '{k.value}'", k.start_mark.line + 1
                        seen.add(k.value)
            stack.append((node, depth, True))
            stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(child), 1) for child in children)
        if total > MAX_NODES:
            return (
                f"the document expands to more than {MAX_NODES:,} values through YAML aliases (an alias bomb?)",
                node.start_mark.line + 1,
            )
        sizes[key] = total
    return None
