"""Answer metrics: exact match, ChartQA's relaxed accuracy, and BERTScore on the offline bundled backbone."""

from __future__ import annotations

import pytest

from trainer_service.evaluation import exact_match, relaxed_match, score_answers


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [("Red", "red", True), ("red.", "red", True), ("  top   left ", "top left", True), ("reddish", "red", False),
     ("The circle is red.", "red", False)],
)
def test_exact_match_normalises_case_space_and_final_period(prediction, reference, expected) -> None:
    assert exact_match(prediction, reference) is expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [("104", "100", True), ("105", "100", True), ("106", "100", False), ("95%", "100", True),
     ("1,000", "1000", True), ("0", "0", True), ("0.1", "0", False), ("blue", "blue", True), ("nan", "nan", True),
     ("3", "three", False)],
)
def test_relaxed_match_is_chartqa_five_percent(prediction, reference, expected) -> None:
    assert relaxed_match(prediction, reference) is expected


def test_scores_rank_right_answers_above_wrong_ones_with_the_offline_backbone() -> None:
    references = ["red", "top left", "3"]
    perfect = score_answers(references, references)
    wrong = score_answers(["a purple square", "", "seven"], references)
    assert perfect.exact_match == 1.0 and perfect.relaxed_accuracy == 1.0 and perfect.examples == 3
    assert perfect.bertscore_f1 == pytest.approx(1.0, abs=1e-3)
    assert wrong.exact_match == 0.0
    assert wrong.bertscore_f1 < perfect.bertscore_f1 - 0.1


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        score_answers(["a", "b"], ["a"])
