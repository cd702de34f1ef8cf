"""The trainer's domain types. Protobuf never appears here: the gRPC layer converts at the edge."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class JobStatus(str, enum.Enum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

# Which status may follow which. RUNNING -> QUEUED is a worker that died and is requeued to resume.
ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING_FILES: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True)
class Job:
    """A fine-tuning job as stored. `spec` is the validated request (plain JSON types), `result` what the
    worker reported (paths, scores, fine-tuned model name)."""

    id: str
    status: JobStatus
    spec: dict[str, Any]
    created_at: float  # seconds since the epoch
    client_request_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    trained_steps: int = 0
    total_steps: int = 0
    error: JobError | None = None
    result: dict[str, Any] = field(default_factory=dict)
    project: str = ""  # the project of the API key that created it ("" with no keys configured)


@dataclass(frozen=True)
class Caller:
    """Who makes a call, as the domain sees it: the gRPC edge builds it from the authenticated API key. Jobs and
    files a caller creates belong to its project; a caller sees only its project's, an admin every project's."""

    project: str
    key_id: str = ""  # "" when the trainer runs without API keys
    is_admin: bool = False

    def can_see(self, project: str) -> bool:
        return self.is_admin or project == self.project

    @property
    def visible_project(self) -> str | None:
        """The project a listing is narrowed to; None: every project."""
        return None if self.is_admin else self.project


# No API keys configured (the local demo): everything is one project, "", and every caller sees all of it.
OPEN_CALLER = Caller(project="", key_id="", is_admin=True)


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    sequence: int  # per job, 1, 2, 3, ... with no gaps
    created_at: float
    # status_changed | progress | evaluation | checkpoint | deployment | gpu_assignment | alias_decision | log
    kind: str
    message: str
    payload: dict[str, Any] = field(default_factory=dict)
