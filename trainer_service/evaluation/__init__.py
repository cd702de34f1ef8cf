"""Scores of a model's answers against reference answers: exact match, relaxed accuracy, BERTScore."""

from .generate import Answer, answer_questions, exact_match_rate
from .metrics import (
    BertScoreSettings,
    EvaluationScores,
    exact_match,
    normalize_answer,
    relaxed_match,
    score_answers,
)

__all__ = ["Answer", "BertScoreSettings", "answer_questions", "exact_match_rate", "EvaluationScores", "exact_match", "normalize_answer", "relaxed_match",
           "score_answers"]
