"""Prometheus metrics of the trainer, computed from the job store at scrape time.

Reading the store (not counters kept in memory) means the numbers survive a service restart and include what
worker processes wrote: job states, queue length, job durations, the live loss and throughput of running
jobs, and the before/after evaluation scores of finished ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from .domain import JobStatus
from .store import JobStore

DURATION_BUCKETS_S = (60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)
RECENT_JOBS = 1000


class JobStoreCollector:
    def __init__(self, store: JobStore, *, gpus: Sequence[str] = ()):
        self.store = store
        self.gpus = tuple(gpus)  # the local launcher's GPU list (empty: none to hand out)

    def collect(self):
        by_status = GaugeMetricFamily("vlmforge_trainer_jobs", "Fine-tuning jobs by status", labels=["status"])
        counts = self.store.status_counts()
        for status, count in counts.items():
            by_status.add_metric([status.value], count)
        yield by_status
        yield GaugeMetricFamily("vlmforge_trainer_queue_length", "Jobs waiting for a worker slot",
                                value=counts[JobStatus.QUEUED])

        jobs, _ = self.store.list_jobs(page_size=RECENT_JOBS)
        yield _duration_histogram([j for j in jobs if j.finished_at and j.started_at])

        loss = GaugeMetricFamily("vlmforge_trainer_training_loss", "Latest training loss of running jobs",
                                 labels=["job_id"])
        throughput = GaugeMetricFamily("vlmforge_trainer_samples_per_second",
                                       "Training throughput of running jobs", labels=["job_id"])
        tokens = GaugeMetricFamily("vlmforge_trainer_tokens_per_second",
                                   "Training input tokens per second of running jobs", labels=["job_id"])
        step_time = GaugeMetricFamily("vlmforge_trainer_step_seconds", "Time of the last training step",
                                      labels=["job_id"])
        steps = GaugeMetricFamily("vlmforge_trainer_trained_steps", "Steps done by running jobs", labels=["job_id"])
        eta = GaugeMetricFamily("vlmforge_trainer_eta_seconds", "Estimated time left of running jobs' training "
                                "at their current step rate", labels=["job_id"])
        for job in jobs:
            if job.status is not JobStatus.RUNNING:
                continue
            progress = self.store.latest_event(job.id, "progress")
            if progress is not None:
                loss.add_metric([job.id], progress.payload["loss"])
                throughput.add_metric([job.id], progress.payload["samples_per_second"])
                steps.add_metric([job.id], progress.payload["step"])
                # events written before these fields existed lack them
                tokens.add_metric([job.id], progress.payload.get("tokens_per_second", 0.0))
                step_time.add_metric([job.id], progress.payload.get("step_seconds", 0.0))
                if "eta_seconds" in progress.payload:  # no estimate beats a made-up 0 ("done")
                    eta.add_metric([job.id], progress.payload["eta_seconds"])
        yield from (loss, throughput, tokens, step_time, steps, eta)
        yield from self._gpu_assignment([job for job in jobs if job.status is JobStatus.RUNNING])

        scores = GaugeMetricFamily("vlmforge_trainer_evaluation_score",
                                   "Evaluation scores on the test split before and after fine-tuning",
                                   labels=["job_id", "fine_tuned_model", "phase", "metric"])
        for job in jobs:
            for phase in ("before", "after"):
                for metric, value in (job.result.get(f"evaluation_{phase}") or {}).items():
                    if metric != "examples":
                        scores.add_metric([job.id, job.result.get("fine_tuned_model", ""), phase, metric], value)
        yield scores


    def _gpu_assignment(self, running):
        """Which GPU each running job holds (its latest gpu_assignment event: the launch of this attempt)."""
        assigned = GaugeMetricFamily("vlmforge_trainer_job_gpu", "1 for each GPU a running job holds (its "
                                     "CUDA_VISIBLE_DEVICES)", labels=["job_id", "gpu"])
        in_use = set()
        for job in running:
            event = self.store.latest_event(job.id, "gpu_assignment")
            for gpu in event.payload["gpus"] if event is not None else ():
                assigned.add_metric([job.id, gpu], 1)
                in_use.add(gpu)
        yield assigned
        if self.gpus:
            yield GaugeMetricFamily("vlmforge_trainer_gpus", "GPUs the local launcher hands out",
                                    value=len(self.gpus))
            yield GaugeMetricFamily("vlmforge_trainer_gpus_in_use", "GPUs held by running jobs",
                                    value=len(in_use & set(self.gpus)))


def _duration_histogram(finished) -> HistogramMetricFamily:
    durations = [job.finished_at - job.started_at for job in finished]
    buckets = [(str(bound), sum(d <= bound for d in durations)) for bound in DURATION_BUCKETS_S]
    buckets.append(("+Inf", len(durations)))
    return HistogramMetricFamily("vlmforge_trainer_job_duration_seconds",
                                 "Wall time from start to end of finished jobs (recent jobs)",
                                 buckets=buckets, sum_value=sum(durations))


def serve_metrics(store: JobStore, host: str, port: int, *, gpus: Sequence[str] = ()) -> int:
    """Starts the /metrics HTTP server in a thread; returns the bound port."""
    registry = CollectorRegistry()
    registry.register(JobStoreCollector(store, gpus=gpus))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server.server_port
