#!/usr/bin/env bash
# Copy the Tekton Pipeline and Tasks into the platform sub-chart, which installs them with
# `.Files.Glob "files/tekton/*.yaml"` (a glob that does not descend into folders, hence the flat names):
#   tekton/pipeline.yaml       -> charts/modelops/charts/scheduler/files/tekton/pipeline.yaml
#   tekton/tasks/<name>.yaml   -> charts/modelops/charts/scheduler/files/tekton/task-<name>.yaml
# tekton/ is the source of truth; tests/tekton/test_chart_copies.py fails when the copies drift.
# tekton/rbac.yaml is not copied: its namespaces are fixed, the chart templates the runner's RBAC itself
# (one Role per runner.jobNamespaces entry).
#
# Usage: scripts/sync-tekton.sh          refresh the copies (and remove copies whose source is gone)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=$ROOT/tekton
DEST=$ROOT/charts/modelops/charts/scheduler/files/tekton

mkdir -p "$DEST"

declare -A wanted=()
wanted[pipeline.yaml]=$SRC/pipeline.yaml
shopt -s nullglob
for task in "$SRC"/tasks/*.yaml; do
    wanted[task-$(basename "$task")]=$task
done
shopt -u nullglob

for name in "${!wanted[@]}"; do
    if ! cmp -s "${wanted[$name]}" "$DEST/$name"; then
        cp "${wanted[$name]}" "$DEST/$name"
        echo "sync-tekton: ${wanted[$name]#"$ROOT"/} -> ${DEST#"$ROOT"/}/$name"
    fi
done

shopt -s nullglob
for copy in "$DEST"/*; do
    if [[ -z "${wanted[$(basename "$copy")]:-}" ]]; then
        rm -- "$copy"
        echo "sync-tekton: removed ${copy#"$ROOT"/} (no source in tekton/)"
    fi
done
