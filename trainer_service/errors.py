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


class StreamDrainedError(ServiceDrainingError):
    """An open stream ended because the trainer is shutting down; the client reconnects (to another replica or
    after the restart) and resumes from the last sequence it received (UNAVAILABLE)."""

    def __init__(self, after_sequence: int):
        self.after_sequence = after_sequence
        super().__init__(f"the trainer is shutting down; reconnect with after_sequence={after_sequence}")


class TooManyStreamsError(TrainerError):
    """A stream limit is reached (RESOURCE_EXHAUSTED); the message names the setting that raises it."""

    def __init__(self, setting: str, limit: int, scope: str):
        self.setting, self.limit = setting, limit
        super().__init__(f"{limit} concurrent streams {scope} is the limit (--{setting.replace('_', '-')}); "
                         "close a stream or retry later")


class StoredFileNotFoundError(TrainerError):
    """No uploaded file with this id (NOT_FOUND)."""

    def __init__(self, file_id: str):
        self.file_id = file_id
        super().__init__(f"no file {file_id!r}")


class LimitExceededError(TrainerError):
    """A request is larger than a setting allows (RESOURCE_EXHAUSTED); the message names the setting."""

    def __init__(self, setting: str, message: str):
        self.setting = setting
        super().__init__(f"{message} (--{setting.replace('_', '-')})")


class ConflictError(TrainerError):
    """Another call is changing the same thing right now; retry later (ABORTED)."""


class UnauthenticatedError(TrainerError):
    """No API key, or one this trainer does not hold (UNAUTHENTICATED). Says nothing about which keys exist."""


class QuotaExceededError(LimitExceededError):
    """A project's quota is used up (RESOURCE_EXHAUSTED); the message names the limit and its setting."""


class RateLimitedError(LimitExceededError):
    """An API key sent more requests than its rate allows (RESOURCE_EXHAUSTED); retry after a moment."""
