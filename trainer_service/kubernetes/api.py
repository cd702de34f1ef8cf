"""The three calls the launcher makes to the Kubernetes API, behind a small interface so the launcher can be
tested without an API server. KubernetesJobsApi is the real one, on the official `kubernetes` client."""

from __future__ import annotations

from typing import Any, Protocol

from .manifest import JOB_ID_LABEL, MANAGED_BY, job_name


class WorkerJobExistsError(Exception):
    """A Job of that name is already there (left by an earlier attempt of the trainer)."""


class WorkerJobRejectedError(Exception):
    """The API server refused the manifest itself (400 / 422): trying again would not help."""


class WorkerJobsApi(Protocol):
    def create(self, manifest: dict[str, Any]) -> None: ...
    def statuses(self) -> dict[str, dict[str, Any]]:
        """vlmforge job id -> the status of its worker Job, as the API's JSON; only Jobs this trainer made."""
    def delete(self, job_id: str) -> None: ...


class KubernetesJobsApi:
    def __init__(self, namespace: str, api_client=None):
        from kubernetes import client, config

        if api_client is None:
            config.load_incluster_config()  # the pod's service account: RBAC allows batch/jobs only
            api_client = client.ApiClient()
        self.namespace = namespace
        self._api_client = api_client
        self._batch = client.BatchV1Api(api_client)
        self._selector = ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())

    def create(self, manifest: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._batch.create_namespaced_job(self.namespace, manifest)
        except ApiException as error:
            if error.status == 409:
                raise WorkerJobExistsError(manifest["metadata"]["name"]) from None
            if error.status in (400, 422):
                raise WorkerJobRejectedError(f"HTTP {error.status}: {error.body}") from None
            raise

    def statuses(self) -> dict[str, dict[str, Any]]:
        jobs = self._batch.list_namespaced_job(self.namespace, label_selector=self._selector)
        return {job.metadata.labels[JOB_ID_LABEL]: self._api_client.sanitize_for_serialization(job.status) or {}
                for job in jobs.items if JOB_ID_LABEL in (job.metadata.labels or {})}

    def delete(self, job_id: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:  # Background: the Job goes now, its pods right after (the worker gets SIGTERM and its grace period)
            self._batch.delete_namespaced_job(job_name(job_id), self.namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise
