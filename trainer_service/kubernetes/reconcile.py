"""What the trainer does about one of its jobs, given the status of the job's worker Job as the Kubernetes API
reports it. Pure functions over plain dictionaries (the API's JSON), so recorded status sequences test them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ..domain import Job, JobError, JobStatus


class WorkerPhase(enum.Enum):
    ACTIVE = "active"  # pending or running pods, or between two attempts
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class WorkerJobStatus:
    phase: WorkerPhase
    failed_pods: int
    reason: str = ""
    message: str = ""

    @classmethod
    def from_api(cls, status: dict[str, Any] | None) -> WorkerJobStatus:
        """Kubernetes sets FailureTarget / SuccessCriteriaMet first and Failed / Complete once the pods are gone
        (1.31+); older servers set only the latter. Either one decides."""
        status = status or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or () if c.get("status") == "True"}
        failed = int(status.get("failed") or 0)
        for kind in ("Failed", "FailureTarget"):
            if kind in conditions:
                return cls(WorkerPhase.FAILED, failed, conditions[kind].get("reason") or "",
                           conditions[kind].get("message") or "")
        if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
            return cls(WorkerPhase.SUCCEEDED, failed)
        return cls(WorkerPhase.ACTIVE, failed)


@dataclass(frozen=True)
class Decision:
    transition: tuple[JobStatus, str, JobError | None] | None = None
    delete_worker_job: bool = False
    event: str | None = None  # a log event on the job


def decide(job: Job, worker: WorkerJobStatus | None, *, failed_pods_seen: int) -> Decision:
    """`worker` None: no worker Job exists for this job. `failed_pods_seen`: as of the last decision."""
    if job.status is JobStatus.RUNNING:
        return _running(worker, failed_pods_seen)
    if job.status is JobStatus.CANCELLED and worker is not None and worker.phase is WorkerPhase.ACTIVE:
        return Decision(delete_worker_job=True)  # the worker also sees CANCELLED and stops; this makes sure
    return Decision()


def _running(worker: WorkerJobStatus | None, failed_pods_seen: int) -> Decision:
    if worker is None:
        return Decision(transition=(JobStatus.QUEUED, "the worker Job is gone (deleted outside the trainer); a new "
                                    "one will resume from the last checkpoint", None))
    if worker.phase is WorkerPhase.FAILED:
        detail = f"{worker.reason}: {worker.message}" if worker.message else worker.reason or "no reason given"
        return Decision(transition=(JobStatus.FAILED, "failed: the worker Job failed", JobError(
            "worker_failed", f"the worker Job failed after {worker.failed_pods} failed pod(s) ({detail}); "
            "the pods' logs have the details")))
    if worker.phase is WorkerPhase.SUCCEEDED:  # a worker that finishes always reports first; this one did not
        return Decision(transition=(JobStatus.FAILED, "failed: the worker exited without a result", JobError(
            "worker_exited", "the worker Job completed without reporting a result; its pod log has the details")))
    if worker.failed_pods > failed_pods_seen:
        return Decision(event=f"worker pod failed ({worker.failed_pods} so far); Kubernetes starts a new one, "
                              "which resumes from the last checkpoint")
    return Decision()
