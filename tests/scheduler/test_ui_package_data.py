"""The UI's templates and static assets ship in the wheel and the sdist: every file under scheduler/ui/templates
and scheduler/ui/static is matched by the `scheduler.ui` package-data globs of pyproject.toml.

Building a wheel here would take long; setuptools includes a package-data file when one of its globs, relative to
the package folder, matches the file's path (`*` does not cross `/`, `**` does: setuptools expands them with
`glob(..., recursive=True)`), so the same matching on the files found is the check.
"""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "scheduler" / "ui"


def package_data_globs() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs: list[str] = config["tool"]["setuptools"]["package-data"]["scheduler.ui"]
    return globs


def shipped_files() -> set[Path]:
    """What setuptools takes for `scheduler.ui`: each glob expanded from the package folder."""
    found: set[Path] = set()
    for pattern in package_data_globs():
        found.update(Path(path) for path in glob.glob(str(PACKAGE / pattern), recursive=True) if Path(path).is_file())
    return found


def ui_assets() -> set[Path]:
    assets = set()
    for folder in ("templates", "static"):
        assets.update(
            path
            for path in (PACKAGE / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and not path.name.startswith(".")
        )
    return assets


def test_every_template_and_static_file_of_the_ui_is_package_data() -> None:
    assets = ui_assets()
    assert any(path.name == "base.html" for path in assets) and any(path.name == "ui.css" for path in assets)
    missing = sorted(str(path.relative_to(PACKAGE)) for path in assets - shipped_files())
    assert not missing, (
        "these UI files are not matched by [tool.setuptools.package-data] 'scheduler.ui' in pyproject.toml, so "
        f"`pip install` would not ship them: {missing}"
    )


def test_the_vendored_scripts_and_their_licences_are_package_data() -> None:
    vendored = {path.name for path in shipped_files() if path.parent.name == "vendor"}
    assert {"htmx-2.0.8.min.js", "htmx-ext-sse-2.2.4.min.js", "htmx.LICENSE", "htmx-ext-sse.LICENSE"} <= vendored
