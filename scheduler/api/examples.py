"""The request examples of the OpenAPI document: valid requests, so "Try it out" in /docs works as shown.

The deploy examples are one complete bundle: the digits pipeline of `examples/digits`, reduced to its ONNX
model (one flow: 64 pixel columns in, the predicted label out). A test sends every request example of the
document to a running server and checks that none is refused as invalid.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BUNDLE_FILES", "BUNDLE_YAML", "PIPELINE"]

PIPELINE: Final = "digits"
"""The pipeline the examples deploy, start and read."""

_PIXELS: Final = [f"p{i}" for i in range(64)]
_PIXEL_FIELDS: Final = "".join(f"      - {{name: {p}, type: integer, format: int32}}\n" for p in _PIXELS)

BUNDLE_FILES: Final[dict[str, str]] = {
    "pipeline.yaml": f"""\
apiVersion: modelops/v1
kind: ScoringPipeline
metadata: {{name: {PIPELINE}}}
spec:
  mode: batch
  flows: [digits-batch]
  parameters:
    - {{name: input, type: string, default: data/digits.csv, description: CSV of 64 pixel columns and an id}}
    - {{name: output, type: string, default: out/scored.csv, description: where the scored CSV is written}}
""",
    "channels/digits-in.yaml": f"""\
apiVersion: modelops/v1
kind: DataChannel
metadata: {{name: digits-in}}
spec:
  direction: source
  type: file
  file: {{path: "${{params.input}}", format: csv}}
  schema:
    fields:
      - {{name: id, type: integer, format: int64}}
{_PIXEL_FIELDS}""",
    "channels/digits-out.yaml": """\
apiVersion: modelops/v1
kind: DataChannel
metadata: {name: digits-out}
spec:
  direction: sink
  type: file
  file: {path: "${params.output}", format: csv}
  schema:
    fields:
      - {name: id, type: integer, format: int64}
      - {name: label, type: integer, format: int64}
""",
    "flows/digits-batch.yaml": f"""\
apiVersion: modelops/v1
kind: ScoringFlow
metadata: {{name: digits-batch}}
spec:
  source: digits-in
  sinks: [digits-out]
  steps:
    - name: score
      score:
        model: digits-rf-onnx
        inputs:
          - {{input: input, fields: [{", ".join(_PIXELS)}]}}
        outputs:
          - {{output: label, field: label}}
""",
    "models/digits-rf-onnx.yaml": """\
apiVersion: modelops/v1
kind: Model
metadata: {name: digits-rf-onnx}
spec:
  runtime: onnx
  uri: artifacts/digits-rf.onnx
  inputs:
    - {name: input, datatype: FP32, shape: [-1, 64]}
  outputs:
    - {name: label, datatype: INT64, shape: [-1]}
    - {name: probabilities, datatype: FP32, shape: [-1, 10]}
""",
}
"""The example bundle as named files (the `application/json` deploy body's `files`)."""

BUNDLE_YAML: Final = "---\n".join(BUNDLE_FILES.values())
"""The example bundle as one multi-document YAML text (the `application/yaml` deploy body)."""
