"""`make demo`'s flow end to end on a shortened schedule: both services start as processes, answer, train,
hot-load, answer again, write the report, and stop, leaving nothing running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow


def test_the_demo_fine_tunes_hot_loads_and_reports_a_lift(tiny_model_dir: Path, small_dataset_dir: Path,
                                                         tmp_path: Path) -> None:
    before_children = {p.pid for p in psutil.Process().children(recursive=True)}
    finished = subprocess.run(
        [sys.executable, "-m", "vlmforge.demo", "--model", str(tiny_model_dir), "--data-dir", str(small_dataset_dir),
         "--output-dir", str(tmp_path), "--steps", "80", "--questions", "24"],
        capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout[-5000:] + finished.stderr[-5000:]

    report = next(tmp_path.glob("demo-*/report"))
    assert {"index.html", "scores.md", "scores.json", "loss.png"} <= {p.name for p in report.iterdir()}
    scores = json.loads((report / "scores.json").read_text())
    # This model had 4 pre-training steps and trains 80 more: its answers get closer to the references
    # (BERTScore) but are rarely exact yet. The exact-match lift of the full demo is in BENCHMARKS.md.
    assert scores["after"]["bertscore_f1"] > scores["before"]["bertscore_f1"] + 0.05
    assert scores["after"]["exact_match"] >= scores["before"]["exact_match"]
    assert len(scores["examples"]) == 8  # the small test split has 8 questions
    assert scores["fine_tuned_model"] in (report / "index.html").read_text()
    assert "loaded by the inference service" in finished.stdout
    assert f"{scores['after']['exact_match']:.3f}" in (report / "scores.md").read_text()
    leftovers = [p for p in psutil.Process().children(recursive=True) if p.pid not in before_children]
    assert not leftovers, [p.cmdline() for p in leftovers]
