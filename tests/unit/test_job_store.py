"""The SQLite job store: idempotent create, FIFO queue, checked transitions, gap-free events, paging, and
nothing lost across a reopen (a service restart) or between two processes' connections."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from trainer_service.domain import JobError, JobStatus
from trainer_service.errors import InvalidArgumentError, InvalidTransitionError, JobNotFoundError
from trainer_service.store import JobStore

SPEC = {"model": "tiny", "training_file": "train.jsonl"}


@pytest.fixture()
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "state" / "jobs.sqlite3")


def test_the_same_client_request_id_returns_the_same_job(store: JobStore) -> None:
    first, created = store.create_job(SPEC, client_request_id="req-1")
    again, created_again = store.create_job({"model": "other"}, client_request_id="req-1")
    other, _ = store.create_job(SPEC, client_request_id="req-2")
    assert created and not created_again
    assert again.id == first.id and again.spec == SPEC
    assert other.id != first.id


def test_concurrent_creates_share_commits_and_keep_each_request_id_to_one_job(store: JobStore,
                                                                             monkeypatch) -> None:
    """64 threads create at once, each request id twice: every caller gets its answer, each id makes one job,
    and the writes took fewer transactions than creates (group commit)."""
    transactions = []
    write_all = store._creates._write_all
    monkeypatch.setattr(store._creates, "_write_all", lambda batch: transactions.append(len(batch)) or
                        write_all(batch))
    answers: dict[int, list] = {}
    start = threading.Barrier(64)

    def create(n: int) -> None:
        start.wait()
        answers[n] = [store.create_job(SPEC, client_request_id=f"req-{n % 32}") for _ in range(2)]

    threads = [threading.Thread(target=create, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids_by_request = {}
    for n, results in answers.items():
        for job, _ in results:
            assert ids_by_request.setdefault(n % 32, job.id) == job.id
    assert sum(created for results in answers.values() for _, created in results) == 32
    assert len(store.list_jobs(page_size=100)[0]) == 32
    assert sum(transactions) == 128 and len(transactions) < 128


def test_queue_is_fifo(store: JobStore) -> None:
    jobs = [store.create_job(SPEC, status=JobStatus.QUEUED)[0] for _ in range(3)]
    assert store.next_queued().id == jobs[0].id
    store.transition(jobs[0].id, JobStatus.RUNNING, "started")
    assert store.next_queued().id == jobs[1].id


def test_transitions_are_checked_and_terminal_states_are_final(store: JobStore) -> None:
    job, _ = store.create_job(SPEC)
    store.transition(job.id, JobStatus.QUEUED, "files valid")
    running = store.transition(job.id, JobStatus.RUNNING, "started")
    assert running.started_at is not None and running.finished_at is None
    done = store.transition(job.id, JobStatus.SUCCEEDED, "done", result={"fine_tuned_model": "tiny:ft-x"})
    assert done.finished_at is not None and done.result == {"fine_tuned_model": "tiny:ft-x"}
    with pytest.raises(InvalidTransitionError, match="is succeeded; it cannot become cancelled"):
        store.transition(job.id, JobStatus.CANCELLED, "too late")


def test_failure_carries_its_error(store: JobStore) -> None:
    job, _ = store.create_job(SPEC)
    failed = store.transition(job.id, JobStatus.FAILED, "bad file", error=JobError("invalid_file", "line 3"))
    assert failed.error == JobError("invalid_file", "line 3")
    assert store.events_after(job.id)[-1].payload["error"] == {"code": "invalid_file", "message": "line 3"}


def test_events_are_numbered_without_gaps_under_concurrent_writers(store: JobStore, tmp_path: Path) -> None:
    job, _ = store.create_job(SPEC)
    other_process_view = JobStore(store.path)  # a worker process opens its own connection

    def write(target: JobStore) -> None:
        for step in range(50):
            target.record_progress(job.id, step, 100, f"step {step}", {"step": step})

    threads = [threading.Thread(target=write, args=(s,)) for s in (store, other_process_view)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sequences = [event.sequence for event in store.events_after(job.id, limit=1000)]
    assert sequences == list(range(1, 102))  # the creation event and 100 progress events
    assert [e.sequence for e in store.events_after(job.id, 95)] == [96, 97, 98, 99, 100, 101]


def test_nothing_is_lost_across_a_reopen(store: JobStore) -> None:
    job, _ = store.create_job(SPEC, client_request_id="keep")
    store.transition(job.id, JobStatus.QUEUED, "valid")
    store.close()
    reopened = JobStore(store.path)
    assert reopened.get_job(job.id).status is JobStatus.QUEUED
    assert len(reopened.events_after(job.id)) == 2
    assert reopened.create_job(SPEC, client_request_id="keep")[0].id == job.id


def test_list_pages_newest_first_and_filters_by_status(store: JobStore) -> None:
    ids = [store.create_job(SPEC)[0].id for _ in range(5)]
    store.transition(ids[0], JobStatus.CANCELLED, "cancelled")
    seen, token = [], ""
    while True:
        page, token = store.list_jobs(page_size=2, page_token=token)
        seen += [job.id for job in page]
        if not token:
            break
    assert seen == list(reversed(ids))
    cancelled, _ = store.list_jobs([JobStatus.CANCELLED])
    assert [job.id for job in cancelled] == [ids[0]]
    with pytest.raises(InvalidArgumentError, match="page_token"):
        store.list_jobs(page_token="garbage")


def test_unknown_job(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError):
        store.get_job("ftjob-nope")
    with pytest.raises(JobNotFoundError):
        store.transition("ftjob-nope", JobStatus.CANCELLED, "x")
    with pytest.raises(JobNotFoundError):
        store.append_event("ftjob-nope", "progress", "x")
