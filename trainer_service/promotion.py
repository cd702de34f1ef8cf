"""The quality gate in front of a model alias (vlmforge.aliases): a job that asks for `promote_to_alias` moves the
alias to its adapter only if the adapter's score on the job's test set, in the metric the job names, is at least
the current target's score on the same test set. The decision, with both scores, is a job event either way.

What the current target scored on this test set:
- the base model (or an alias that does not exist yet): this job's own `before` evaluation, which is the base
  model scored on this very test set;
- an adapter: the `after` score in its manifest, if its job's test set had the same content digest
  (`test_set_sha256`, written by every job with a test file);
- anything else (an adapter evaluated on another test set, or none): no comparison is possible, and the gate
  refuses rather than guess; the event says so, and an operator can still move the alias with the admin API.

The test set is identified by its content (every question, answer and image byte), not its path: the same
records uploaded twice, or in another format, are the same test set; a file edited in place is not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from vlmforge.aliases import AliasChange, AliasStore, AliasVersion
from vlmforge.artifacts import read_manifest
from vlmforge.data.types import Conversation, ImagePart

from .job_spec import AliasPromotion
from .store import JobRecords

logger = logging.getLogger(__name__)

ALIAS_DECISION_EVENT = "alias_decision"


def dataset_sha256(samples: list[Conversation]) -> str:
    """SHA-256 of the test set's content: each message's role, text and image bytes, in order."""
    digest = hashlib.sha256()
    for sample in samples:
        for message in sample.messages:
            parts = [["image", _image_sha256(part)] if isinstance(part, ImagePart) else ["text", part.text]
                     for part in message.parts]
            digest.update(json.dumps([message.role, parts]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _image_sha256(part: ImagePart) -> str:
    image = part.image
    data = image.data if image.data is not None else Path(image.location).read_bytes()
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Candidate:
    """The job's new adapter and what it scored."""

    job_id: str
    name: str  # its fine_tuned_model
    after: dict[str, float]  # its test-set scores
    before: dict[str, float]  # the base model's, on the same test set
    test_set_sha256: str
    servable: bool = True  # False: vLLM cannot serve this family, so no alias may point at it


@dataclass(frozen=True)
class Decision:
    alias: str
    metric: str
    promoted: bool
    reason: str
    candidate: str
    candidate_score: float | None
    current_target: str | None  # None: the base model
    current_score: float | None
    test_set_sha256: str
    version: int  # the alias version written (promoted), or the one kept (0: the alias does not exist)

    def to_payload(self) -> dict:
        return {"alias": self.alias, "metric": self.metric, "promoted": self.promoted, "reason": self.reason,
                "candidate": self.candidate, "candidate_score": self.candidate_score,
                "current_target": self.current_target, "current_score": self.current_score,
                "test_set_sha256": self.test_set_sha256, "version": self.version}


def promote_job_adapter(store: JobRecords, job_id: str, promotion: AliasPromotion, name: str,
                        after: dict | None, test_set_sha256: str | None, artifacts_dir: Path, *,
                        servable: bool = True) -> Decision:
    """The worker's call, once the job's artifacts are written (and pushed to the inference service)."""
    before = store.get_job(job_id).result.get("evaluation_before") or {}
    candidate = Candidate(job_id, name, after or {}, before, test_set_sha256 or "", servable)
    return promote_to_alias(store, AliasStore(artifacts_dir), promotion, candidate)


def promote_to_alias(store: JobRecords, aliases: AliasStore, promotion: AliasPromotion,
                     candidate: Candidate) -> Decision:
    """Decides, writes the alias version when the candidate passes, and records the decision as a job event.
    Never raises for the job: an alias that cannot be written is a refusal with the reason."""
    try:
        decision = _decide_and_write(aliases, promotion, candidate)
    except Exception as error:  # noqa: BLE001 - the job's artifacts are written: any failure here is a refusal
        logger.warning("job %s: promotion to alias %s failed", candidate.job_id, promotion.alias, exc_info=True)
        decision = Decision(promotion.alias, promotion.metric, False, f"the alias could not be changed: {error}",
                            candidate.name, candidate.after.get(promotion.metric), None, None,
                            candidate.test_set_sha256, 0)
    verdict = "promoted to" if decision.promoted else "not promoted to"
    store.append_event(candidate.job_id, ALIAS_DECISION_EVENT,
                       f"{candidate.name} {verdict} alias {promotion.alias}: {decision.reason}", decision.to_payload())
    return decision


def _decide_and_write(aliases: AliasStore, promotion: AliasPromotion, candidate: Candidate) -> Decision:
    decided: list[Decision] = []

    def decide(history: list[AliasVersion]) -> AliasChange | None:
        decided.clear()  # another writer won the version: decided again on the new target
        decision = _judge(aliases, promotion, candidate, history[-1] if history else None)
        decided.append(decision)
        if not decision.promoted:
            return None
        return AliasChange(candidate.name, "promote", f"job:{candidate.job_id}", decision.reason, scores={
            "metric": promotion.metric, "candidate": decision.candidate_score, "current": decision.current_score,
            "current_target": decision.current_target, "test_set_sha256": candidate.test_set_sha256})

    written = aliases.change(promotion.alias, decide)
    decision = decided[-1]
    if written is not None:
        decision = dataclasses.replace(decision, version=written.version)
    return decision


def _judge(aliases: AliasStore, promotion: AliasPromotion, candidate: Candidate,
           current: AliasVersion | None) -> Decision:
    metric = promotion.metric
    score = candidate.after.get(metric)
    target = current.target if current else None
    kept = current.version if current else 0

    def refused(reason: str, current_score: float | None = None) -> Decision:
        return Decision(promotion.alias, metric, False, reason, candidate.name, score, target, current_score,
                        candidate.test_set_sha256, kept)

    if (aliases.artifacts_dir / promotion.alias).exists():
        return refused(f"`{promotion.alias}` is already a model's name in the artifact store; an alias needs a name "
                       "of its own")
    if not candidate.servable:
        return refused("the inference service cannot serve this model family, so no alias may point at it")
    if score is None:
        return refused(f"the job has no {metric} score on its test set")
    if target is None:
        baseline, what = candidate.before.get(metric), "the base model"
    else:
        baseline, what = _recorded_score(aliases.artifacts_dir, target, metric, candidate.test_set_sha256), target
        if baseline is None:
            return refused(f"the current target {target} has no recorded {metric} on this test set (sha256 "
                           f"{candidate.test_set_sha256[:12]}): its job scored another test set, or none, so the two "
                           "cannot be compared; move the alias with the inference admin API instead")
    if baseline is None:
        return refused(f"the job has no {metric} score of the base model on its test set")
    if score >= baseline:
        return Decision(promotion.alias, metric, True, f"{metric} {score:.4f} >= {baseline:.4f} of {what} on the "
                        "same test set", candidate.name, score, target, baseline, candidate.test_set_sha256, kept)
    return refused(f"{metric} {score:.4f} < {baseline:.4f} of the current target {what} on the same test set",
                   baseline)


def _recorded_score(artifacts_dir: Path, adapter: str, metric: str, test_set_sha256: str) -> float | None:
    """The adapter's own job's score on this test set, from its manifest; None when it scored another set."""
    try:
        manifest = read_manifest(artifacts_dir / adapter)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    after = manifest.get("evaluation_after")
    if manifest.get("test_set_sha256") != test_set_sha256 or not isinstance(after, dict):
        return None
    value = after.get(metric)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
