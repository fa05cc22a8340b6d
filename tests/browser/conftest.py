"""The fixtures and hooks of the browser tests, defined in browser_kit.py (see its docstring)."""

from browser_kit import (
    _sessions,
    browse,
    browser,
    check_page,
    data_root,
    digits,
    digits_folder,
    digits_pipeline,
    finished_jobs,
    open_server,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_makereport,
    shots,
    ui_server,
)

__all__ = [
    "_sessions",
    "browse",
    "browser",
    "check_page",
    "data_root",
    "digits",
    "digits_folder",
    "digits_pipeline",
    "finished_jobs",
    "open_server",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_runtest_makereport",
    "shots",
    "ui_server",
]
