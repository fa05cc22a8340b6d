"""The UI's pipelines pages (being built: see docs/ui.md)."""

from __future__ import annotations

from fastapi import APIRouter

from scheduler.ui.deps import UI_PREFIX

router = APIRouter(prefix=UI_PREFIX)
