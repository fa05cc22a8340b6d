"""The model artifacts of a bundle, checked on this machine: `modelops ir validate`'s second half.

For each model the pipeline uses, with a local artifact: it exists (a file, or a folder for transformers), its
sha256 matches the declared one, and its signature, where the runtime can tell it without running code the
artifact carries (`scoring_services.signatures`), agrees with the declared inputs and outputs. Problems are
`ir.Issue`s located in the Model document, like every other IR error; remote artifacts (http, https, or any
other scheme) are not fetched, and are reported as not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import ir
from ir.models import Model, Tensor, uri_scheme
from ir.render import artifact_digest
from scheduler.artifact_upload import bundle_folder
from scoring_services.artifacts import directory_sha256, file_sha256
from scoring_services.errors import ModelLoadError
from scoring_services.signatures import compare, read_signature, unread_reason
from scoring_services.types import TensorSpec

__all__ = ["ArtifactReport", "artifact_path", "check_artifacts"]

#: Runtimes whose artifact is one file; transformers and mlflow want a folder; python takes either.
_FILE_RUNTIMES = frozenset({"sklearn", "onnx", "torch", "pmml"})


@dataclass(frozen=True)
class ArtifactReport:
    """What was checked: one line per model (`lines`), and every problem found (`issues`)."""

    lines: list[str]
    issues: list[ir.Issue]


def artifact_path(uri: str, bundle_path: Path) -> Path | None:
    """The local path a model URI names, for the bundle at `bundle_path`; None when the URI is not local (a
    URL, or an artifact in the scheduler's store, `modelops-artifact:sha256:...`).

    A relative path resolves against the bundle's folder (`bundle_folder`: the folder itself, or the folder
    holding the bundle file or archive), as `pipeline deploy` uploads it; a `file://` URI or an absolute path
    is taken as it is.
    """
    if artifact_digest(uri) is not None:
        return None
    scheme = uri_scheme(uri)  # http(s)://, s3://, models:/ are remote: not checked here
    if scheme == "file":
        return Path(unquote(urlsplit(uri).path))
    if scheme:
        return None
    path = Path(uri)
    if path.is_absolute():
        return path
    return bundle_folder(bundle_path) / path


def _specs(tensors: list[Tensor]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in tensors)


def check_artifacts(bundle: ir.Bundle, bundle_path: Path) -> ArtifactReport:
    """Check the artifact of every model the pipeline uses (see the module docstring)."""
    lines: list[str] = []
    issues: list[ir.Issue] = []
    for model in bundle.used_models():
        line, found = _check_model(bundle, model, bundle_path)
        lines.append(f"model {model.metadata.name}: {line}")
        issues.extend(found)
    return ArtifactReport(lines, issues)


def _check_model(bundle: ir.Bundle, model: Model, bundle_path: Path) -> tuple[str, list[ir.Issue]]:
    """The model's summary line and its problems."""
    spec = model.spec
    origin = bundle.origins[("Model", model.metadata.name)]
    issues: list[ir.Issue] = []
    path = artifact_path(spec.uri, bundle_path)
    if path is None:
        where = "in the scheduler's artifact store" if artifact_digest(spec.uri) is not None else "remote artifact"
        return f"{spec.uri}: {where}, not checked", issues
    shown = spec.uri
    if not path.exists():
        issues.append(origin.issue(("spec", "uri"), f"the artifact {path} does not exist"))
        return f"{shown}: missing", issues
    if spec.runtime in _FILE_RUNTIMES and not path.is_file():
        issues.append(origin.issue(("spec", "uri"), f"the artifact {path} is not a file (runtime {spec.runtime})"))
        return f"{shown}: not a file", issues
    if spec.runtime in ("transformers", "mlflow") and not path.is_dir():
        issues.append(origin.issue(("spec", "uri"), f"the artifact {path} is not a model folder"))
        return f"{shown}: not a folder", issues
    done: list[str] = ["exists"]
    if spec.sha256 is not None:
        try:
            actual = directory_sha256(path) if path.is_dir() else file_sha256(path)
        except OSError as exc:
            issues.append(origin.issue(("spec", "uri"), f"cannot read the artifact {path}: {exc.strerror or exc}"))
            return f"{shown}: unreadable", issues
        if actual != spec.sha256:
            issues.append(origin.issue(("spec", "sha256"), f"sha256 mismatch: the artifact {path} has {actual}"))
            return f"{shown}: sha256 mismatch", issues
        done.append("sha256 matches")
    try:
        reason = unread_reason(spec.runtime, path, spec.options)
        signature = read_signature(spec.runtime, path, spec.options) if reason is None else None
    except ModelLoadError as exc:
        issues.append(origin.issue(("spec", "uri"), f"the artifact cannot be read as {spec.runtime}: {exc}"))
        return f"{shown}: unreadable", issues
    except ImportError as exc:
        done.append(f"signature not read ({exc.name or 'a package'} is not installed)")
        return f"{shown}: {', '.join(done)}", issues
    if signature is None:
        done.append(f"signature not read ({reason})")
        return f"{shown}: {', '.join(done)}", issues
    mismatches = compare(_specs(spec.inputs), _specs(spec.outputs), signature)
    for mismatch in mismatches:
        issues.append(origin.issue(("spec", f"{mismatch.kind}s", mismatch.index, mismatch.field), mismatch.message))
    told = [side for side, specs in (("inputs", signature.inputs), ("outputs", signature.outputs)) if specs]
    if not told:
        done.append(f"{signature.source} does not tell its signature")
    elif not mismatches:
        done.append(f"{' and '.join(told)} match {signature.source}")
    return f"{shown}: {', '.join(done)}", issues
