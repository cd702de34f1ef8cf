"""The trainer's /metrics, scraped over HTTP on loopback and read with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from trainer_service.domain import JobStatus
from trainer_service.metrics import serve_metrics
from trainer_service.store import JobStore

SCORES = {"exact_match": 0.5, "relaxed_accuracy": 0.5, "bertscore_precision": 0.9, "bertscore_recall": 0.8,
          "bertscore_f1": 0.85, "examples": 8}


def _scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_metrics_reflect_the_store(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    queued, _ = store.create_job({}, status=JobStatus.QUEUED)
    running, _ = store.create_job({}, status=JobStatus.QUEUED)
    store.transition(running.id, JobStatus.RUNNING, "running")
    store.record_progress(running.id, 3, 10, "step 3", {"step": 3, "total_steps": 10, "loss": 1.25,
                                                        "samples_per_second": 12.5, "tokens_per_second": 800.0,
                                                        "step_seconds": 0.64})
    done, _ = store.create_job({}, status=JobStatus.QUEUED)
    store.transition(done.id, JobStatus.RUNNING, "running")
    store.merge_result(done.id, {"evaluation_before": {**SCORES, "exact_match": 0.1}, "evaluation_after": SCORES})
    store.transition(done.id, JobStatus.SUCCEEDED, "done", result={"fine_tuned_model": "tiny-ft-x"})

    metrics = _scrape(serve_metrics(store, "127.0.0.1", 0))

    by_status = {s.labels["status"]: s.value for s in metrics["vlmforge_trainer_jobs"]}
    assert by_status["queued"] == 1 and by_status["running"] == 1 and by_status["succeeded"] == 1
    assert metrics["vlmforge_trainer_queue_length"][0].value == 1
    (loss,) = metrics["vlmforge_trainer_training_loss"]
    assert loss.labels == {"job_id": running.id} and loss.value == 1.25
    assert metrics["vlmforge_trainer_samples_per_second"][0].value == 12.5
    assert metrics["vlmforge_trainer_tokens_per_second"][0].value == 800.0
    assert metrics["vlmforge_trainer_step_seconds"][0].value == 0.64
    count = next(s for s in metrics["vlmforge_trainer_job_duration_seconds"] if s.name.endswith("_count"))
    assert count.value == 1
    exact = {s.labels["phase"]: s.value for s in metrics["vlmforge_trainer_evaluation_score"]
             if s.labels["metric"] == "exact_match"}
    assert exact == {"before": 0.1, "after": 0.5}
    assert queued.id not in {s.labels.get("job_id") for s in metrics["vlmforge_trainer_training_loss"]}
