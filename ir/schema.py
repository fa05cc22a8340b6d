"""JSON Schema export of the IR kinds and of the rendered values.

`values_schema()` is what `charts/modelops/values.schema.json` holds (a test fails when the checked-in file
drifts); `ir_schema()` describes the four IR kinds for editors and the UI.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from ir.models import Document
from ir.render import Values


def values_schema() -> dict[str, Any]:
    schema = Values.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "modelops chart values"
    return schema


def ir_schema() -> dict[str, Any]:
    schema = TypeAdapter(Document).json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "modelops IR document (modelops/v1)"
    return schema


def dumps(schema: dict[str, Any]) -> str:
    """Stable text of a schema: sorted keys, two-space indent, final newline."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
