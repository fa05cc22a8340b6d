"""From raw documents to typed IR kinds, with pydantic's errors rewritten for people.

Pydantic reports `Extra inputs are not permitted` at `spec.runtme`; a user wants `unknown field 'runtme' (did
you mean 'runtime'?)`. This module does that translation for every error of every document, so all of them
can be reported at once.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ir.errors import Issue, Loc, did_you_mean
from ir.load import RawDocument
from ir.models import API_VERSION, AT, KINDS, SecretRef, SecretSource, StrictModel

# Tags pydantic adds to an error location to say which member of a union failed; they are not input keys.
_UNION_TAGS = frozenset({"bool", "int", "float", "str", "none", "FieldList", "FieldSelector"})
_QUOTED = re.compile(r"'([^']*)'")


def parse_document(doc: RawDocument) -> tuple[StrictModel | None, list[Issue]]:
    """Validate one document against its kind; all its problems are returned, never raised."""
    data = doc.data
    if not isinstance(data, dict):
        return None, [doc.issue((), "a document must be a mapping with apiVersion, kind, metadata and spec")]
    issues: list[Issue] = []
    api_version = data.get("apiVersion")
    if api_version != API_VERSION:
        got = "missing" if api_version is None else f"got {api_version!r}"
        issues.append(doc.issue(("apiVersion",), f"apiVersion must be '{API_VERSION}' ({got})"))
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        message = "kind is missing" if kind is None else f"unknown kind {kind!r}{did_you_mean(str(kind), KINDS)}"
        issues.append(doc.issue(("kind",), f"{message}; the kinds are {', '.join(KINDS)}"))
        return None, issues
    if issues:
        return None, issues
    model = KINDS[kind]
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, _translate(doc, model, exc.errors(include_url=False))


def _translate(doc: RawDocument, model: type[BaseModel], errors: list[ErrorDetails]) -> list[Issue]:
    grouped: dict[Loc, list[ErrorDetails]] = {}
    for error in errors:
        loc = _strip_union_tags(error["loc"]) + _validator_loc(error)
        grouped.setdefault(loc, []).append(error)
    issues: list[Issue] = []
    for loc, group in grouped.items():
        if len(group) > 1:
            issues.append(doc.issue(loc, f"wrong type: expected {_union_expectation(group)}{_got(group[0])}"))
        else:
            issues.append(doc.issue(loc, _message(model, loc, group[0])))
    return issues


def _strip_union_tags(loc: tuple[int | str, ...]) -> Loc:
    return tuple(
        part for part in loc
        if not (isinstance(part, str) and (part in _UNION_TAGS or part.startswith(("list[", "function-"))))
    )  # fmt: skip


def _validator_loc(error: ErrorDetails) -> Loc:
    """The field a model validator's error is about, below the model pydantic locates it at (`ir.models.AT`)."""
    at = (error.get("ctx") or {}).get(AT)
    return tuple(at) if isinstance(at, tuple) else ()


def _union_expectation(group: list[ErrorDetails]) -> str:
    names = {"bool": "a boolean", "int": "an integer", "float": "a number", "str": "a string"}
    wanted: list[str] = []
    for error in group:
        for part in error["loc"]:
            if isinstance(part, str):
                if part in names and names[part] not in wanted:
                    wanted.append(names[part])
                elif part.startswith("list[") and "a list" not in wanted:
                    wanted.append("a list")
    if not wanted:
        return "another type"
    return ", ".join(wanted[:-1]) + (" or " if len(wanted) > 1 else "") + wanted[-1]


def _got(error: ErrorDetails) -> str:
    value = error.get("input")
    if isinstance(value, dict):
        return " (got a mapping)"
    if isinstance(value, list):
        return " (got a list)"
    if isinstance(value, str | int | float | bool) and len(repr(value)) <= 60:
        return f" (got {value!r})"
    return ""


def _message(model: type[BaseModel], loc: Loc, error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        allowed = _allowed_keys(model, loc[:-1])
        hint = did_you_mean(key, allowed) if allowed else ""
        return f"unknown field '{key}'{hint}"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        expected = _QUOTED.findall(str(ctx.get("expected", "")))
        value = error.get("input")
        hint = did_you_mean(value, expected) if isinstance(value, str) else ""
        options = ", ".join(f"'{e}'" for e in expected)
        return f"{value!r} is not one of {options}{hint}" if value is not None else f"must be one of {options}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        if _unwrap(_type_at(model, _strip_union_tags(error["loc"]))) in (SecretSource, SecretRef):
            # never echo the value: it is likely a credential written inline
            return "credentials are never written inline: use secretRef: {name: <secret>, key: <key>}"
        return f"expected a mapping{_got(error)}"
    if kind == "list_type":
        return f"expected a list{_got(error)}"
    if kind in ("string_type", "int_type", "int_parsing", "float_type", "float_parsing", "bool_type", "bool_parsing"):
        wanted = {"string": "a string", "int": "an integer", "float": "a number", "bool": "a boolean"}[
            kind.split("_")[0]
        ]
        return f"expected {wanted}{_got(error)}"
    if kind == "int_from_float":
        return f"expected an integer{_got(error)}"
    if kind.startswith(("too_short", "too_long", "greater_than", "less_than", "string_")):
        return f"{_lower_first(error['msg'])}{_got(error)}"
    return _lower_first(error["msg"])


def _lower_first(text: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model accepts at `loc` (aliases), found by walking the type annotations."""
    current = _unwrap(_type_at(model, loc))
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return []


def _type_at(model: type[BaseModel], loc: Loc) -> Any:
    """The annotation of the value at `loc` inside `model`, None when the path leaves the known types."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = typing.get_args(current)
            current = args[0] if typing.get_origin(current) is list and args else None
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = _field_by_key(current, part)
            current = field.annotation if field is not None else None
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return None
        if current is None:
            return None
    return current


def _field_by_key(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info
    return None


def _unwrap(tp: Any) -> Any:
    """`Optional[X]` and `Annotated[X, ...]` -> `X`."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp
