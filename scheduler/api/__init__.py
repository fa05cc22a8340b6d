"""The REST API: one router per resource, mounted by `scheduler.app.create_app`.

`pipelines`, `jobs` and `tasks` (what a job's pipeline tasks fetch and report) live under `/api/v1`; `health`
(`/healthz`, `/readyz`, `/metrics`) at the root. Routes parse and delegate to `scheduler.service.SchedulerService`;
errors become one body shape (`api.errors`).
"""

from scheduler.api import health, jobs, pipelines, tasks
from scheduler.api.deps import API_PREFIX

__all__ = ["API_PREFIX", "health", "jobs", "pipelines", "tasks"]
