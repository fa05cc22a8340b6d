"""The pipeline IR: strict models of its kinds, loading with precise errors, and rendering into Helm values.

Pure: reads files, imports no other top-level package of modelops (an import-linter contract checks this).
"""

from ir.bundle import Bundle, bundle_from_canonical, load_bundle, load_bundle_files, load_bundle_tarball
from ir.errors import IRError, IRValidationError, Issue
from ir.render import (
    ARTIFACT_SCHEME,
    Globals,
    Values,
    artifact_digest,
    artifact_uri,
    is_relative_uri,
    make_globals,
    parse_sets,
    render,
    resolve_data_path,
    resolve_model_uri,
    resolve_parameters,
    to_document,
    to_yaml,
)

__all__ = [
    "ARTIFACT_SCHEME",
    "Bundle",
    "Globals",
    "IRError",
    "IRValidationError",
    "Issue",
    "Values",
    "artifact_digest",
    "artifact_uri",
    "bundle_from_canonical",
    "is_relative_uri",
    "load_bundle",
    "load_bundle_files",
    "load_bundle_tarball",
    "make_globals",
    "parse_sets",
    "render",
    "resolve_data_path",
    "resolve_model_uri",
    "resolve_parameters",
    "to_document",
    "to_yaml",
]
