#!/usr/bin/env bash
# Regenerate charts/modelops/values.schema.json, the JSON Schema (draft-07) Helm checks the rendered values
# against. It is generated from the `Values` model in ir/render.py; tests/test_values_schema.py fails when the
# checked-in file differs from what this prints. The script is the same as running, from the repository root:
#
#   modelops ir schema values > charts/modelops/values.schema.json
#
# Usage: scripts/gen-schema.sh           rewrite the file
#        scripts/gen-schema.sh --check   exit 1 (changing nothing) when the file is out of date
#
# Environment overrides:
#   MODELOPS  the modelops command (default: .venv/bin/modelops, else modelops on PATH)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=$ROOT/charts/modelops/values.schema.json

if [[ -z "${MODELOPS:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/modelops" ]]; then MODELOPS=$ROOT/.venv/bin/modelops; else MODELOPS=modelops; fi
fi

tmp=$(mktemp "${TARGET}.XXXXXX")
trap 'rm -f "$tmp"' EXIT
(cd "$ROOT" && "$MODELOPS" ir schema values) >"$tmp"

case "${1:-}" in
    --check)
        if cmp -s "$tmp" "$TARGET"; then
            echo "gen-schema: ${TARGET#"$ROOT"/} is up to date"
        else
            echo "gen-schema: ${TARGET#"$ROOT"/} is out of date; run scripts/gen-schema.sh" >&2
            exit 1
        fi
        ;;
    "")
        chmod 644 "$tmp"
        mv "$tmp" "$TARGET"
        echo "gen-schema: wrote ${TARGET#"$ROOT"/}"
        ;;
    *)
        echo "usage: scripts/gen-schema.sh [--check]" >&2
        exit 2
        ;;
esac
