"""The trainer's typed errors. The gRPC layer maps each class to a status code in one table."""

from __future__ import annotations


class TrainerError(Exception):
    """Base class: anything else that escapes a handler is an internal error, logged in full."""


class InvalidArgumentError(TrainerError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class JobNotFoundError(TrainerError):
    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"no fine-tuning job {job_id!r}")


class InvalidTransitionError(TrainerError):
    """E.g. cancelling a job that already finished (FAILED_PRECONDITION)."""

    def __init__(self, job_id: str, current, requested):
        self.job_id, self.current, self.requested = job_id, current, requested
        super().__init__(f"job {job_id} is {current.value}; it cannot become {requested.value}")


class FailedPreconditionError(TrainerError):
    """The request is valid but cannot run in this state or on this machine (e.g. QLoRA without CUDA)."""


class ServiceDrainingError(FailedPreconditionError):
    """The service is shutting down and takes no new jobs (UNAVAILABLE)."""
