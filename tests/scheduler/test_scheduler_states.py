"""The transition table is the specification of a job's life: these tests read it as one."""

from __future__ import annotations

import itertools

import pytest

from scheduler.errors import Conflict, IllegalTransition
from scheduler.states import ACTIVE, ALLOWED, TERMINAL, JobState, Task, check_transition

ALLOWED_PAIRS = [(a, b) for a, targets in ALLOWED.items() for b in sorted(targets)]
REFUSED_PAIRS = [(a, b) for a, b in itertools.product(JobState, JobState) if b not in ALLOWED[a]]


def test_the_table_has_an_entry_for_every_state() -> None:
    assert set(ALLOWED) == set(JobState)


def test_terminal_states_lead_nowhere() -> None:
    assert {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED} == TERMINAL
    for state in TERMINAL:
        assert ALLOWED[state] == frozenset()


def test_every_non_terminal_state_can_be_cancelled_except_while_already_cancelling() -> None:
    for state in ACTIVE - {JobState.CANCELLING}:
        assert JobState.CANCELLING in ALLOWED[state]
    assert ALLOWED[JobState.CANCELLING] == {JobState.CANCELLED, JobState.FAILED}


def test_no_state_moves_to_itself() -> None:
    for state in JobState:
        assert state not in ALLOWED[state]


def test_every_state_is_reachable_from_pending_and_every_active_state_can_finish() -> None:
    reachable = {JobState.PENDING}
    frontier = [JobState.PENDING]
    while frontier:
        for nxt in ALLOWED[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(JobState)
    for state in ACTIVE:
        assert ALLOWED[state] & (TERMINAL | {JobState.CANCELLING})


def test_the_table_cannot_be_modified_at_run_time() -> None:
    with pytest.raises(TypeError):
        ALLOWED[JobState.SUCCEEDED] = frozenset({JobState.PENDING})  # type: ignore[index]


@pytest.mark.parametrize(("from_state", "to_state"), ALLOWED_PAIRS)
def test_an_allowed_transition_passes_the_check(from_state: JobState, to_state: JobState) -> None:
    check_transition(from_state, to_state)


@pytest.mark.parametrize(("from_state", "to_state"), REFUSED_PAIRS)
def test_a_refused_transition_raises_illegal_transition_naming_both_states(
    from_state: JobState, to_state: JobState
) -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_transition(from_state, to_state, job_id="j-1")
    error = caught.value
    assert (error.from_state, error.to_state, error.job_id) == (from_state, to_state, "j-1")
    assert error.details == {"from": from_state.value, "to": to_state.value, "job_id": "j-1"}
    assert from_state.value in error.message and to_state.value in error.message


def test_an_illegal_transition_is_a_409_conflict_with_a_stable_code() -> None:
    with pytest.raises(Conflict) as caught:
        check_transition(JobState.SUCCEEDED, JobState.RUNNING)
    assert caught.value.http_status == 409
    assert caught.value.to_body()["error"]["code"] == "illegal_transition"


def test_states_and_tasks_are_stored_and_printed_as_their_plain_values() -> None:
    assert str(JobState.RUNNING) == "RUNNING"
    assert [t.value for t in Task] == ["install", "wait", "uninstall"]
    assert JobState("CANCELLING") is JobState.CANCELLING
