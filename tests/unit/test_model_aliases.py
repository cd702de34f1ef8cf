"""Model aliases without a model: the alias files (versions, history, rollback, writers racing), the quality gate
(which score it compares with, and when it refuses), the inference side's re-reading and info metric, and the
job spec's and the proto's alias fields."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from inference_service.aliases import AliasResolver
from inference_service.metrics import InferenceMetrics
from trainer_service.domain import JobStatus
from trainer_service.errors import InvalidArgumentError
from trainer_service.evaluation.metrics import EvaluationScores
from trainer_service.grpc_api.convert import event_to_pb, job_to_pb
from trainer_service.job_spec import PROMOTION_METRICS, AliasPromotion, JobSpec
from trainer_service.promotion import Candidate, promote_to_alias, dataset_sha256
from trainer_service.store import JobStore
from vlmforge.aliases import AliasChange, AliasError, AliasNotFound, AliasStore
from vlmforge.data import load_dataset

# ------------------------------------------------------------------------------------------------ the files


def test_each_change_is_a_new_version_and_the_history_keeps_them_all(tmp_path: Path) -> None:
    store = AliasStore(tmp_path)
    assert store.current("chartqa") is None and store.names() == []
    store.set("chartqa", None, "admin", "start on the base model")
    store.set("chartqa", "tiny-ft-a", "admin")
    assert [(v.version, v.target, v.action) for v in store.history("chartqa")] == [(1, None, "set"),
                                                                                  (2, "tiny-ft-a", "set")]
    assert store.current("chartqa").target == "tiny-ft-a" and store.names() == ["chartqa"]
    assert sorted(p.name for p in (tmp_path / ".aliases" / "chartqa").iterdir()) == ["0000000001.json",
                                                                                     "0000000002.json"]


def test_rollback_walks_back_through_the_history_and_can_name_a_version(tmp_path: Path) -> None:
    store = AliasStore(tmp_path)
    for target in ("a", "b", "c"):
        store.set("m", target, "admin")
    assert store.rollback("m", "admin").target == "b"  # v4 restores v2
    assert store.rollback("m", "admin").target == "a"  # v5 restores v1: a second rollback goes further back
    with pytest.raises(AliasError, match="nothing to roll back to"):
        store.rollback("m", "admin")
    store.set("m", "d", "admin")  # v6
    assert store.rollback("m", "admin").target == "a"  # what was served before d
    assert store.rollback("m", "admin", to_version=3).target == "c"
    with pytest.raises(AliasError, match="no version 9"):
        store.rollback("m", "admin", to_version=9)
    with pytest.raises(AliasNotFound):
        store.rollback("never-set", "admin")


@pytest.mark.parametrize("name", ["", "Upper", "-lead", "a/b", "..", "a..b", ".aliases", "x" * 65])
def test_alias_names_are_refused_unless_lowercase_and_path_safe(tmp_path: Path, name: str) -> None:
    with pytest.raises(AliasError, match="alias names are"):
        AliasStore(tmp_path).set(name, None, "admin")


def test_writers_racing_for_the_next_version_all_land_once_each(tmp_path: Path) -> None:
    """Eight writers (each its own store object, as separate processes would be) x 10 changes: every change is
    one version, none is lost or written twice."""
    def write(writer: int) -> None:
        store = AliasStore(tmp_path)
        for i in range(10):
            store.set("busy", f"w{writer}-{i}", f"writer-{writer}")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = AliasStore(tmp_path).history("busy")
    assert [v.version for v in history] == list(range(1, 81))
    assert sorted(v.target for v in history) == sorted(f"w{w}-{i}" for w in range(8) for i in range(10))
    assert not [p for p in (tmp_path / ".aliases" / "busy").iterdir() if p.name.startswith(".tmp-")]


def test_a_writer_that_loses_the_race_decides_again_on_the_new_history(tmp_path: Path) -> None:
    store, other = AliasStore(tmp_path), AliasStore(tmp_path)
    store.set("m", "a", "admin")
    seen = []

    def decide(history):
        seen.append(history[-1].target)
        if len(seen) == 1:
            other.set("m", "sneaked-in", "admin")  # another process takes version 2 meanwhile
        return AliasChange("mine", "set", "admin")

    assert store.change("m", decide).version == 3
    assert seen == ["a", "sneaked-in"]


def test_a_reader_in_another_process_sees_each_change_at_once(tmp_path: Path) -> None:
    """Two changes within one mtime tick must not leave a reader on the first."""
    writer, reader = AliasStore(tmp_path), AliasResolver(AliasStore(tmp_path), "tiny")
    assert reader.current("chartqa") is None
    for target in ("a", "b", "c", None):
        writer.set("chartqa", target, "admin")
        entry = reader.current("chartqa")
        assert entry.target == target and reader.served_name(entry) == (target or "tiny")
    assert reader.current("Not-An-Alias") is None and reader.current("unknown") is None


def test_the_info_metric_shows_each_alias_target_and_drops_the_old_one(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = InferenceMetrics(registry)
    metrics.alias_targets({"chartqa": "tiny-ft-a", "docqa": "tiny"})
    metrics.alias_targets({"chartqa": "tiny-ft-b", "docqa": "tiny"})
    text = generate_latest(registry).decode()
    assert 'vlmforge_inference_alias_info{adapter="tiny-ft-b",alias="chartqa"} 1.0' in text
    assert 'vlmforge_inference_alias_info{adapter="tiny",alias="docqa"} 1.0' in text
    assert "tiny-ft-a" not in text


# One frontend process's view of the alias files, written into the shared multiprocess directory.
_FRONTEND_SYNC = """
import sys
from inference_service.metrics import InferenceMetrics
InferenceMetrics(None).alias_targets({"chartqa": sys.argv[1]}, {("chartqa", name) for name in sys.argv[2:]})
"""


def test_with_several_frontends_the_old_target_reads_0_whichever_frontend_saw_it(tmp_path: Path) -> None:
    """Frontend A saw the alias on `a` and was never scraped again; frontend B only ever saw `b`. B's scrape
    must still outdate A's 1 for `a`: it zeroes every target of the alias's history."""
    from prometheus_client.multiprocess import MultiProcessCollector

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for argv in (["a"], ["b", "a", "b"]):  # A, then B (history: a, then b)
        subprocess.run([sys.executable, "-c", _FRONTEND_SYNC, *argv], env=env, check=True)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    assert 'vlmforge_inference_alias_info{adapter="a",alias="chartqa"} 0.0' in text, text
    assert 'vlmforge_inference_alias_info{adapter="b",alias="chartqa"} 1.0' in text, text


# ------------------------------------------------------------------------------------------- the gate


def _manifest(root: Path, name: str, *, after: dict, test_set_sha256: str | None) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "manifest.json").write_text(json.dumps({"fine_tuned_model": name, "evaluation_after": after,
                                                            "test_set_sha256": test_set_sha256}))


@pytest.fixture()
def job(tmp_path: Path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    created, _ = store.create_job({"model": "m", "training_file": "t"}, status=JobStatus.QUEUED)
    return store, created.id


def _candidate(job_id: str, *, after: float, before: float = 0.1, digest: str = "d" * 64, **kwargs) -> Candidate:
    return Candidate(job_id, "tiny-ft-new", {"exact_match": after}, {"exact_match": before}, digest, **kwargs)


def _decision_events(store: JobStore, job_id: str) -> list:
    return [e for e in store.events_after(job_id) if e.kind == "alias_decision"]


def test_a_new_alias_takes_an_adapter_at_least_as_good_as_the_base_on_the_same_test_set(tmp_path, job) -> None:
    records, job_id = job
    aliases = AliasStore(tmp_path / "artifacts")
    decision = promote_to_alias(records, aliases, AliasPromotion("chartqa"), _candidate(job_id, after=0.1))
    assert decision.promoted and decision.version == 1 and decision.current_score == 0.1
    written = aliases.current("chartqa")
    assert written.target == "tiny-ft-new" and written.action == "promote" and written.actor == f"job:{job_id}"
    assert written.scores == {"metric": "exact_match", "candidate": 0.1, "current": 0.1, "current_target": None,
                              "test_set_sha256": "d" * 64}
    (event,) = _decision_events(records, job_id)
    assert event.payload["promoted"] and "0.1000 >= 0.1000 of the base model" in event.message


def test_a_worse_adapter_is_refused_and_the_event_gives_both_scores(tmp_path, job) -> None:
    records, job_id = job
    root = tmp_path / "artifacts"
    _manifest(root, "tiny-ft-old", after={"exact_match": 0.5}, test_set_sha256="d" * 64)
    aliases = AliasStore(root)
    aliases.set("chartqa", "tiny-ft-old", "admin")
    decision = promote_to_alias(records, aliases, AliasPromotion("chartqa"), _candidate(job_id, after=0.375))
    assert not decision.promoted and aliases.current("chartqa").version == 1
    (event,) = _decision_events(records, job_id)
    assert event.payload | {"reason": ""} == {
        "alias": "chartqa", "metric": "exact_match", "promoted": False, "reason": "", "candidate": "tiny-ft-new",
        "candidate_score": 0.375, "current_target": "tiny-ft-old", "current_score": 0.5,
        "test_set_sha256": "d" * 64, "version": 1}
    assert event.message == ("tiny-ft-new not promoted to alias chartqa: exact_match 0.3750 < 0.5000 of the "
                             "current target tiny-ft-old on the same test set")
    pb = event_to_pb(event).alias_decision
    assert not pb.promoted and pb.candidate_score == 0.375 and pb.current_score == 0.5 and pb.alias_version == 1


def test_a_target_scored_on_another_test_set_is_not_compared_and_the_gate_says_so(tmp_path, job) -> None:
    records, job_id = job
    root = tmp_path / "artifacts"
    _manifest(root, "tiny-ft-old", after={"exact_match": 0.0}, test_set_sha256="e" * 64)
    _manifest(root, "tiny-ft-untested", after=None, test_set_sha256=None)
    aliases = AliasStore(root)
    for target in ("tiny-ft-old", "tiny-ft-untested"):
        aliases.set("chartqa", target, "admin")
        decision = promote_to_alias(records, aliases, AliasPromotion("chartqa"), _candidate(job_id, after=1.0))
        assert not decision.promoted and decision.current_score is None
        assert f"the current target {target} has no recorded exact_match on this test set" in decision.reason
    assert pb_unset(event_to_pb(_decision_events(records, job_id)[-1]).alias_decision, "current_score")


def pb_unset(message, field: str) -> bool:
    return not message.HasField(field)


def test_the_gate_compares_the_metric_the_job_names(tmp_path, job) -> None:
    records, job_id = job
    candidate = Candidate(job_id, "tiny-ft-new", {"exact_match": 0.0, "bertscore_f1": 0.6},
                          {"exact_match": 0.5, "bertscore_f1": 0.5}, "d" * 64)
    aliases = AliasStore(tmp_path / "artifacts")
    assert not promote_to_alias(records, aliases, AliasPromotion("a", "exact_match"), candidate).promoted
    assert promote_to_alias(records, aliases, AliasPromotion("b", "bertscore_f1"), candidate).promoted


def test_an_alias_named_like_a_model_or_an_unservable_adapter_is_refused(tmp_path, job) -> None:
    records, job_id = job
    root = tmp_path / "artifacts"
    _manifest(root, "tiny-ft-old", after={"exact_match": 0.0}, test_set_sha256="d" * 64)
    aliases = AliasStore(root)
    named = promote_to_alias(records, aliases, AliasPromotion("tiny-ft-old"), _candidate(job_id, after=1.0))
    assert not named.promoted and "is already a model's name" in named.reason
    unservable = promote_to_alias(records, aliases, AliasPromotion("m"), _candidate(job_id, after=1.0,
                                                                                  servable=False))
    assert not unservable.promoted and "cannot serve" in unservable.reason
    assert aliases.names() == []


def test_the_test_set_is_known_by_its_content_not_its_path(small_dataset_dir: Path, tmp_path: Path) -> None:
    original = load_dataset(str(small_dataset_dir / "test.jsonl"))
    lines = (small_dataset_dir / "test.jsonl").read_text().splitlines()
    shutil.copytree(small_dataset_dir / "images" / "test", tmp_path / "images" / "test")
    copy = tmp_path / "elsewhere.jsonl"
    copy.write_text("\n".join(lines) + "\n")
    assert dataset_sha256(load_dataset(str(copy))) == dataset_sha256(original)
    edited = json.loads(lines[0])
    edited["messages"][-1]["content"][0]["text"] += " (edited)"
    copy.write_text("\n".join([json.dumps(edited), *lines[1:]]) + "\n")
    assert dataset_sha256(load_dataset(str(copy))) != dataset_sha256(original)
    copy.write_text("\n".join(lines) + "\n")
    next((tmp_path / "images" / "test").iterdir()).write_bytes(b"not the same image")
    assert dataset_sha256(load_dataset(str(copy))) != dataset_sha256(original)
    assert dataset_sha256(original[:-1]) != dataset_sha256(original)


# ---------------------------------------------------------------------------------------- job spec, proto


@pytest.mark.parametrize(("promotion", "test_file", "field"), [
    (AliasPromotion("Chart QA"), "test.jsonl", "promote_to_alias.alias"),
    (AliasPromotion("chartqa", "accuracy"), "test.jsonl", "promote_to_alias.metric"),
    (AliasPromotion("chartqa"), "", "test_file"),
])
def test_a_promotion_request_is_checked_naming_the_field(promotion, test_file: str, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        JobSpec("m", "train.jsonl", test_file=test_file, promote_to_alias=promotion).validated()
    assert error.value.field == field


def test_the_promotion_survives_the_job_store_and_is_echoed_on_the_job(tmp_path: Path) -> None:
    spec = JobSpec("m", "train.jsonl", test_file="test.jsonl", promote_to_alias=AliasPromotion("chartqa",
                                                                                                "bertscore_f1"))
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    store = JobStore(tmp_path / "jobs.sqlite3")
    job, _ = store.create_job(spec.to_json(), status=JobStatus.QUEUED)
    echoed = job_to_pb(job).promote_to_alias
    assert (echoed.alias, echoed.metric) == ("chartqa", "bertscore_f1")
    assert not job_to_pb(dataclasses.replace(job, spec={**job.spec, "promote_to_alias": None})).HasField(
        "promote_to_alias")


def test_the_metrics_a_promotion_may_name_are_the_evaluation_scores() -> None:
    assert PROMOTION_METRICS == tuple(f.name for f in dataclasses.fields(EvaluationScores) if f.name != "examples")
