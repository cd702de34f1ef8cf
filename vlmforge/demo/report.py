"""The demo's report directory: scores as Markdown and JSON, the loss curve, and an HTML page showing each
test image with its question, the reference and both answers."""

from __future__ import annotations

import dataclasses
import html
import json
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

from trainer_service.evaluation.metrics import exact_match
from vlmforge.data.types import Conversation

from .ask import ServedAnswer, image_data_url

SCORE_ROWS = (("exact match", "exact_match"), ("relaxed accuracy (5%)", "relaxed_accuracy"),
              ("BERTScore precision", "bertscore_precision"), ("BERTScore recall", "bertscore_recall"),
              ("BERTScore F1", "bertscore_f1"))


@dataclass(frozen=True)
class DemoResult:
    base_model: str
    fine_tuned_model: str
    job_id: str
    before: dict[str, float]
    after: dict[str, float]
    timings_s: dict[str, float]


def scores_markdown(result: DemoResult) -> str:
    lines = [f"| metric | zero-shot `{result.base_model}` | fine-tuned `{result.fine_tuned_model}` |",
             "|---|---|---|"]
    lines += [f"| {label} | {result.before[key]:.3f} | {result.after[key]:.3f} |" for label, key in SCORE_ROWS]
    return "\n".join(lines) + "\n"


def write_report(report_dir: Path, result: DemoResult, samples: list[Conversation], before: list[ServedAnswer],
                 after: list[ServedAnswer], loss_plot: Path | None) -> Path:
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "scores.md").write_text(f"# vlmforge demo: before / after\n\n{scores_markdown(result)}")
    examples = [{"question": old.question, "reference": old.reference, "zero_shot": old.prediction,
                 "fine_tuned": new.prediction} for old, new in zip(before, after)]
    (report_dir / "scores.json").write_text(json.dumps({**dataclasses.asdict(result), "examples": examples},
                                                       indent=2) + "\n")
    if loss_plot is not None and loss_plot.exists():
        shutil.copyfile(loss_plot, report_dir / "loss.png")
    (report_dir / "index.html").write_text(_html(result, samples, before, after, loss_plot is not None))
    _summary_picture(report_dir / "summary.png", result, samples, before, after)
    return report_dir / "index.html"


def _summary_picture(path: Path, result: DemoResult, samples, before, after, examples: int = 4) -> None:
    """The report at a glance, as one PNG (for a README or a chat message): scores, then a few test images
    with both answers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(12, 5), dpi=100)
    grid = figure.add_gridspec(2, examples + 2, height_ratios=(3, 1.4))
    bars = figure.add_subplot(grid[:, :2])
    labels = [label.replace("BERTScore ", "BERTScore\n") for label, _ in SCORE_ROWS]
    positions = range(len(SCORE_ROWS))
    bars.barh([p + 0.2 for p in positions], [result.before[key] for _, key in SCORE_ROWS], 0.4, label="zero-shot")
    bars.barh([p - 0.2 for p in positions], [result.after[key] for _, key in SCORE_ROWS], 0.4, label="fine-tuned")
    bars.set_yticks(list(positions), labels, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, 1)
    bars.legend(fontsize=8, loc="lower right")
    bars.set_title(f"{len(before)} test questions", fontsize=9)
    for column, (sample, old, new) in enumerate(list(zip(samples, before, after))[:examples]):
        axes = figure.add_subplot(grid[0, column + 2])
        axes.imshow(sample.images[0].open().convert("RGB"))
        axes.set_axis_off()
        axes.set_title(textwrap.fill(old.question, 30), fontsize=8)
        text = figure.add_subplot(grid[1, column + 2])
        text.set_axis_off()
        lines = [f"reference:  {old.reference}", f"zero-shot:  {old.prediction}", f"fine-tuned: {new.prediction}"]
        text.text(0, 1, "\n".join(textwrap.fill(line, 26, subsequent_indent=" " * 12) for line in lines),
                  fontsize=7, va="top", family="monospace")
    figure.suptitle(f"{result.base_model} -> {result.fine_tuned_model}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _html(result: DemoResult, samples, before, after, has_loss_plot: bool) -> str:
    e = html.escape
    score_rows = "".join(f"<tr><td>{e(label)}</td><td>{result.before[key]:.3f}</td>"
                         f"<td><b>{result.after[key]:.3f}</b></td></tr>" for label, key in SCORE_ROWS)
    cards = "".join(
        f"<div class='card'><img src='{image_data_url(sample)}' alt='test image'><p class='q'>{e(old.question)}</p>"
        f"<p>reference: <b>{e(old.reference)}</b></p>"
        f"<p class='{_verdict(old)}'>zero-shot: {e(old.prediction) or '<i>(empty)</i>'}</p>"
        f"<p class='{_verdict(new)}'>fine-tuned: {e(new.prediction) or '<i>(empty)</i>'}</p></div>"
        for sample, old, new in zip(samples, before, after))
    loss = "<h2>Training loss</h2><img src='loss.png' alt='training loss curve'>" if has_loss_plot else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vlmforge demo report</title><style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; }} table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: .3rem .8rem; }} .grid {{ display: flex; flex-wrap: wrap; gap: 1rem; }}
.card {{ width: 15rem; border: 1px solid #ddd; padding: .5rem; }} .card img {{ width: 100%; image-rendering: pixelated; }}
.q {{ font-weight: 600; }} .right {{ color: #0a7a2f; }} .wrong {{ color: #b3261e; }}
</style></head><body>
<h1>Fine-tuning <code>{e(result.base_model)}</code> → <code>{e(result.fine_tuned_model)}</code></h1>
<p>Job {e(result.job_id)}. Both answered through the inference service's OpenAI API; the adapter was hot-loaded
without a restart.</p>
<table><tr><th>metric</th><th>zero-shot</th><th>fine-tuned</th></tr>{score_rows}</table>
{loss}
<h2>Test questions ({len(samples)})</h2><div class="grid">{cards}</div>
</body></html>
"""


def _verdict(answer: ServedAnswer) -> str:
    return "right" if exact_match(answer.prediction, answer.reference) else "wrong"
