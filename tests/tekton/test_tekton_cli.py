"""The Tasks' steps against the real `modelops task` commands (scheduler/taskcmd.py).

A step passes its params as MODELOPS_* env and runs `modelops task <name> --job-id ... --scheduler-url ...`;
this test reads the typer commands and fails when a step sets a variable its command never reads, or calls a
flag the command does not have: on a cluster that would be a silently ignored param or a failed step.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from tekton_kit import TASK_NAMES, task

# The uninstall Task takes the same params as install (the Pipeline passes both the same list); helm uninstall
# needs no chart, so its command does not read MODELOPS_CHART.
UNREAD = {"uninstall": {"MODELOPS_CHART"}}


def _command(short: str) -> Any:
    taskcmd = pytest.importorskip("scheduler.taskcmd", reason="the task commands are not there yet")
    # typer vendors its own click: read the command objects by their attributes, not by click's classes
    group = typer.main.get_command(taskcmd.task_app)
    command = group.commands.get(short)
    assert command is not None, f"`modelops task {short}` does not exist"
    return command


@pytest.mark.parametrize("short", list(TASK_NAMES))
def test_every_modelops_variable_a_step_sets_is_read_by_its_command(short: str) -> None:
    command = _command(short)
    read = {p.envvar for p in command.params if isinstance(p.envvar, str)}
    (step,) = task(short)["spec"]["steps"]
    set_by_step = {e["name"] for e in step["env"] if e["name"].startswith("MODELOPS_")}
    assert set_by_step - UNREAD.get(short, set()) <= read, f"`modelops task {short}` reads {sorted(read)}"
    assert "MODELOPS_JOB_TOKEN" in read


@pytest.mark.parametrize("short", list(TASK_NAMES))
def test_every_flag_a_step_passes_is_an_option_of_its_command(short: str) -> None:
    command = _command(short)
    options = {opt for p in command.params for opt in p.opts}
    (step,) = task(short)["spec"]["steps"]
    flags = set(re.findall(r"(--[a-z][a-z-]*)", step["script"]))
    assert flags == {"--job-id", "--scheduler-url"}
    assert flags <= options
