"""KubernetesLauncher: the local launcher's interface (start / stop), with Kubernetes doing the running. Each
poll lists this trainer's worker Jobs once, reconciles every job the store has as RUNNING or CANCELLED against
them, then submits queued jobs while fewer than `max_concurrent_jobs` run. Nothing is kept only in memory that
a restarted trainer needs: the store and the Jobs' status are the whole state."""

from __future__ import annotations

import logging
import threading

from ..domain import Job, JobError, JobStatus
from ..errors import JobNotFoundError
from ..job_spec import JobSpec
from ..store import JobStore
from .api import WorkerJobExistsError, WorkerJobRejectedError, WorkerJobsApi
from .manifest import (WorkerJobTemplate, job_name, rendezvous_service_manifest, worker_job_manifest,
                       worker_jobset_manifest)
from .reconcile import WorkerJobStatus, decide

logger = logging.getLogger(__name__)


class KubernetesLauncher:
    def __init__(self, store: JobStore, api: WorkerJobsApi, template: WorkerJobTemplate, *,
                 max_concurrent_jobs: int = 4, poll_interval_s: float = 5.0, jobsets: bool = False):
        self.store = store
        self.api = api
        self.template = template
        self.jobsets = jobsets  # multi-node jobs as JobSets; else Indexed Jobs with a headless Service
        self._services_checked: set[str] = set()  # multi-node jobs whose Service this process made or checked
        self.max_concurrent_jobs = max_concurrent_jobs
        self.poll_interval_s = poll_interval_s
        self._failed_pods_seen: dict[str, int] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubernetes-launcher", daemon=True)

    def start(self) -> None:
        # Unlike the local launcher, RUNNING jobs are not requeued: their Jobs kept running while we were away.
        self._thread.start()

    def stop(self) -> None:
        """Stops polling; worker Jobs keep running and the next trainer picks them up."""
        self._stopping.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - an API hiccup must not end the launcher; the log has the details
                logger.exception("kubernetes launcher poll failed")
            if self._stopping.wait(self.poll_interval_s):
                return

    def tick(self) -> None:
        statuses = self.api.statuses()
        running = self.store.list_jobs([JobStatus.RUNNING], page_size=1000)[0]
        cancelled_with_worker = [job for job in map(self._stored, statuses)
                                 if job is not None and job.status is JobStatus.CANCELLED]
        for job in running + cancelled_with_worker:
            worker = WorkerJobStatus.from_api(statuses[job.id]) if job.id in statuses else None
            if worker is not None and job.status is JobStatus.RUNNING:
                self._adopt(job)
            self._apply(job, worker)
        self._failed_pods_seen = {k: v for k, v in self._failed_pods_seen.items() if k in statuses}
        active = len(self.store.list_jobs([JobStatus.RUNNING], page_size=1000)[0])
        while active < self.max_concurrent_jobs and (queued := self.store.next_queued()) is not None:
            if self._submit(queued, exists=queued.id in statuses):
                active += 1
            else:
                break

    def _adopt(self, job) -> None:
        """A multi-node Indexed Job's pods meet through its headless Service: a trainer that stopped between
        creating the Job and the Service makes the Service when it finds the Job running (once per process)."""
        if self.jobsets or job.id in self._services_checked:
            return
        if JobSpec.from_json(job.spec).placement.node_count > 1:
            self._ensure_service(job.id)
        self._services_checked.add(job.id)

    def _ensure_service(self, job_id: str) -> None:
        self.api.ensure_rendezvous_service(job_id, lambda uid: rendezvous_service_manifest(
            job_id, self.template, owner_uid=uid))
        self._services_checked.add(job_id)

    def _stored(self, job_id: str) -> Job | None:
        try:
            return self.store.get_job(job_id)
        except JobNotFoundError:  # a Job of another trainer's store sharing the namespace: not ours
            return None

    def _apply(self, job, worker: WorkerJobStatus | None) -> None:
        decision = decide(job, worker, failed_pods_seen=self._failed_pods_seen.get(job.id, 0))
        if worker is not None:
            self._failed_pods_seen[job.id] = worker.failed_pods
        if decision.event:
            self.store.append_event(job.id, "log", decision.event)
        if decision.delete_worker_job:
            logger.info("job %s: deleting worker Job %s", job.id, job_name(job.id))
            self.api.delete(job.id)
        if decision.transition:
            status, message, error = decision.transition
            logger.info("job %s: %s", job.id, message)
            self.store.transition(job.id, status, message, error=error)

    def _submit(self, job, *, exists: bool) -> bool:
        """Creates the worker Job; False when it could not (left QUEUED for the next poll)."""
        if exists:  # a leftover of an attempt the trainer lost track of (it crashed between two writes)
            self.api.delete(job.id)
            return False
        placement = JobSpec.from_json(job.spec).placement
        multi_node = placement.node_count > 1
        as_jobset = multi_node and self.jobsets
        kind = "JobSet" if as_jobset else "Indexed Job" if multi_node else "Job"
        nodes = f" on {placement.node_count} nodes" if multi_node else ""
        self.store.transition(job.id, JobStatus.RUNNING, f"running as Kubernetes {kind} {job_name(job.id)}{nodes}")
        try:
            if as_jobset:
                self.api.create(worker_jobset_manifest(job.id, placement, self.template))
            else:
                self.api.create(worker_job_manifest(job.id, placement, self.template))
        except WorkerJobRejectedError as error:
            self.store.transition(job.id, JobStatus.FAILED, "failed: Kubernetes refused the worker Job",
                                  error=JobError("worker_job_rejected", str(error)))
            return False
        except WorkerJobExistsError:
            self.store.transition(job.id, JobStatus.QUEUED, "an old worker Job of this name is still being "
                                  "deleted; retrying")
            return False
        except Exception as error:
            self.store.transition(job.id, JobStatus.QUEUED, f"could not create the worker Job: {error}; retrying")
            raise
        if multi_node and not as_jobset:
            try:
                self._ensure_service(job.id)
            except Exception:  # noqa: BLE001 - the Job stands; the next poll's _adopt makes the Service
                logger.exception("job %s: creating the rendezvous Service failed; retrying on the next poll", job.id)
        return True
