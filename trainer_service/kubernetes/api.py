"""The calls the launcher makes to the Kubernetes API, behind a small interface so the launcher can be tested
without an API server. KubernetesJobsApi is the real one, on the official `kubernetes` client.

A worker is a batch/v1 Job (one node, or an Indexed Job plus its headless Service for several), or a JobSet
(jobset.x-k8s.io) where the cluster serves that CRD and the trainer is told to (or left to detect it)."""

from __future__ import annotations

from typing import Any, Protocol

from .manifest import JOB_ID_LABEL, JOBSET_API_VERSION, MANAGED_BY, job_name

JOBSET_GROUP, JOBSET_VERSION = JOBSET_API_VERSION.split("/")
JOBSET_PLURAL = "jobsets"


class WorkerJobExistsError(Exception):
    """A Job of that name is already there (left by an earlier attempt of the trainer)."""


class WorkerJobRejectedError(Exception):
    """The API server refused the manifest itself (400 / 422): trying again would not help."""


class WorkerJobsApi(Protocol):
    def create(self, manifest: dict[str, Any]) -> None: ...
    def statuses(self) -> dict[str, dict[str, Any]]:
        """vlmforge job id -> the status of its worker Job, as the API's JSON; only Jobs this trainer made."""
    def delete(self, job_id: str) -> None: ...


def serves_jobsets(api_client) -> bool:
    """Whether the API server serves the JobSet CRD's version (API discovery: GET /apis)."""
    from kubernetes import client

    groups = client.ApisApi(api_client).get_api_versions().groups or []
    return any(group.name == JOBSET_GROUP and any(v.version == JOBSET_VERSION for v in group.versions or [])
               for group in groups)


def jobset_status_as_job_status(status: dict[str, Any]) -> dict[str, Any]:
    """A JobSet's status in the shape of a Job's, so one reconciler reads both: its Completed / Failed
    conditions become Complete / Failed, and its restarts plus failed child Jobs count as failed pods."""
    renamed = {"Completed": "Complete", "Failed": "Failed"}
    conditions = [{**c, "type": renamed[c.get("type")]} for c in status.get("conditions") or ()
                  if c.get("type") in renamed]
    failed_jobs = sum(int(r.get("failed") or 0) for r in status.get("replicatedJobsStatus") or ())
    return {"conditions": conditions, "failed": int(status.get("restarts") or 0) + failed_jobs}


class KubernetesJobsApi:
    def __init__(self, namespace: str, api_client=None, *, jobsets: bool = False):
        from kubernetes import client, config

        if api_client is None:
            config.load_incluster_config()  # the pod's service account: RBAC allows only what the launcher does
            api_client = client.ApiClient()
        self.namespace = namespace
        self.jobsets = jobsets  # also list and delete JobSets (multi-node jobs are made as JobSets)
        self._api_client = api_client
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._selector = ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())

    def serves_jobsets(self) -> bool:
        return serves_jobsets(self._api_client)

    def create(self, manifest: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            if manifest["kind"] == "JobSet":
                self._custom.create_namespaced_custom_object(JOBSET_GROUP, JOBSET_VERSION, self.namespace,
                                                             JOBSET_PLURAL, manifest)
            else:
                self._batch.create_namespaced_job(self.namespace, manifest)
        except ApiException as error:
            if error.status == 409:
                raise WorkerJobExistsError(manifest["metadata"]["name"]) from None
            if error.status in (400, 422):
                raise WorkerJobRejectedError(f"HTTP {error.status}: {error.body}") from None
            raise

    def ensure_rendezvous_service(self, job_id: str, service_manifest) -> None:
        """Creates the headless Service of a multi-node Indexed Job, owned by the Job (`service_manifest(uid)`
        builds it); one already there is kept. Called after creating the Job, and again for each multi-node job
        a restarted trainer adopts (it may have stopped between the two creates)."""
        from kubernetes.client.exceptions import ApiException

        try:
            uid = self._batch.read_namespaced_job(job_name(job_id), self.namespace).metadata.uid
        except ApiException as error:
            if error.status == 404:  # no Job (gone, or the job runs as a JobSet, which has its own Service)
                return
            raise
        try:
            self._core.create_namespaced_service(self.namespace, service_manifest(uid))
        except ApiException as error:
            if error.status != 409:
                raise

    def statuses(self) -> dict[str, dict[str, Any]]:
        jobs = self._batch.list_namespaced_job(self.namespace, label_selector=self._selector)
        found = {job.metadata.labels[JOB_ID_LABEL]: self._api_client.sanitize_for_serialization(job.status) or {}
                 for job in jobs.items if JOB_ID_LABEL in (job.metadata.labels or {})}
        if self.jobsets:
            sets = self._custom.list_namespaced_custom_object(JOBSET_GROUP, JOBSET_VERSION, self.namespace,
                                                              JOBSET_PLURAL, label_selector=self._selector)
            for item in sets.get("items", []):
                if JOB_ID_LABEL in (item["metadata"].get("labels") or {}):
                    found[item["metadata"]["labels"][JOB_ID_LABEL]] = jobset_status_as_job_status(
                        item.get("status") or {})
        return found

    def delete(self, job_id: str) -> None:
        from kubernetes.client.exceptions import ApiException

        # Background: the Job (or JobSet) goes now, its pods right after (each worker gets SIGTERM and its grace
        # period); a multi-node Job's Service goes with it (it is owned by the Job).
        calls = [lambda: self._batch.delete_namespaced_job(job_name(job_id), self.namespace,
                                                           propagation_policy="Background")]
        if self.jobsets:
            calls.append(lambda: self._custom.delete_namespaced_custom_object(
                JOBSET_GROUP, JOBSET_VERSION, self.namespace, JOBSET_PLURAL, job_name(job_id),
                propagation_policy="Background"))
        for call in calls:
            try:
                call()
            except ApiException as error:
                if error.status != 404:
                    raise
