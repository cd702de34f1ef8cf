"""Scores of a model's answers against reference answers: exact match, relaxed accuracy, BERTScore."""

from .metrics import (
    BertScoreSettings,
    EvaluationScores,
    exact_match,
    normalize_answer,
    relaxed_match,
    score_answers,
)

__all__ = ["BertScoreSettings", "EvaluationScores", "exact_match", "normalize_answer", "relaxed_match",
           "score_answers"]
