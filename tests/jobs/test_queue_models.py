"""The queue and model switches: a job for a loaded model may go before one that needs a
switch, but only for --switch-wait seconds; users' turns and batches are kept."""

from __future__ import annotations

import time

import pytest

from server.jobs.queue import JobQueue

A, B = "model-a", "model-b"


def take_ids(queue: JobQueue, loaded: set[str | None], wait: float, batch: int = 1) -> list[int]:
    jobs = queue.take(timeout=0, max_batch=batch, loaded=loaded, switch_wait=wait)
    queue.done()
    return [job.generation_id for job in jobs]


def test_a_loaded_models_job_goes_first_while_the_other_waits_under_the_limit() -> None:
    queue = JobQueue()
    queue.put(1, 1.0, user_id=1, key=("b",), model=B)
    queue.put(2, 1.0, user_id=2, key=("a",), model=A)
    assert take_ids(queue, {A}, wait=10) == [2]
    assert take_ids(queue, {A}, wait=10) == [1]  # nothing else to do: it switches


def test_the_passed_over_job_runs_once_its_extra_wait_reaches_the_limit() -> None:
    queue = JobQueue()
    queue.put(1, 1.0, user_id=1, key=("b",), model=B)
    for job in range(2, 6):
        queue.put(job, 1.0, user_id=job, key=("a",), model=A)
    assert take_ids(queue, {A}, wait=0.3) == [2]  # job 1 is passed over from now on
    assert take_ids(queue, {A}, wait=0.3) == [3]
    time.sleep(0.35)
    assert take_ids(queue, {A}, wait=0.3) == [1]  # its extra wait reached 0.3 s
    assert take_ids(queue, {B}, wait=0.3) == [4]


def test_without_a_switch_wait_or_knowledge_of_loaded_models_the_fair_order_holds() -> None:
    for loaded, wait in (({A}, 0.0), (None, 10.0)):
        queue = JobQueue()
        queue.put(1, 1.0, user_id=1, key=("b",), model=B)
        queue.put(2, 1.0, user_id=2, key=("a",), model=A)
        assert take_ids(queue, loaded, wait) == [1]  # type: ignore[arg-type]


def test_a_users_own_jobs_keep_their_order() -> None:
    """Only each user's first job may go ahead: user 1's loaded-model job waits behind their
    own job that needs a switch, so user 2's job goes ahead instead."""
    queue = JobQueue()
    queue.put(1, 1.0, user_id=1, key=("b",), model=B)
    queue.put(2, 1.0, user_id=1, key=("a",), model=A)
    queue.put(3, 1.0, user_id=2, key=("a",), model=A)
    assert take_ids(queue, {A}, wait=10) == [3]
    assert take_ids(queue, {A}, wait=10) == [1]
    assert take_ids(queue, {A}, wait=10) == [2]


@pytest.mark.parametrize("default_loaded", [True, False])
def test_the_default_model_is_named_none(default_loaded: bool) -> None:
    queue = JobQueue()
    queue.put(1, 1.0, user_id=1, key=("x",), model=A)
    queue.put(2, 1.0, user_id=2, key=("d",), model=None)
    loaded: set[str | None] = {None} if default_loaded else {A}
    assert take_ids(queue, loaded, wait=10) == ([2] if default_loaded else [1])


def test_batches_never_mix_models() -> None:
    queue = JobQueue()
    queue.put(1, 1.0, user_id=1, key=("shape", A), model=A)
    queue.put(2, 1.0, user_id=2, key=("shape", B), model=B)
    queue.put(3, 1.0, user_id=3, key=("shape", A), model=A)
    assert take_ids(queue, {A, B}, wait=10, batch=4) == [1]
    assert take_ids(queue, {A, B}, wait=10, batch=4) == [2]
