"""Questions about a scene or chart, each with a short answer (what the demo fine-tune teaches) and a
full-sentence answer (what the tiny model's pre-training sees), plus a caption for pre-training.

Pre-training sees the same pictures described in sentences, so the base model already "knows" what is in an
image; the demo fine-tune must teach it the task's short-answer style, and one question kind it never saw
(`color_position`), which is what a LoRA adapter is for.
"""

from __future__ import annotations

from dataclasses import dataclass

from .charts import Chart
from .scenes import ShapeScene


@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    short_answer: str
    sentence_answer: str


HELD_OUT_OF_PRETRAINING = frozenset({"color_position"})
CAPTION_PROMPT = "Describe the image."


def _count_sentence(count: int, noun: str, verb_phrase: str) -> str:
    return f"{verb_phrase} {count} {noun}{'' if count == 1 else 's'}."


def scene_questions(scene: ShapeScene) -> list[QA]:
    """Objects are named by where they are: a 2x2 grid cell is something a tiny ViT finds at once, whereas
    telling a circle from a square at 30 px takes far more pre-training than a CPU build can afford."""
    questions = []
    for placed in scene.objects:
        questions += [
            QA("position_color", f"What color is the shape at the {placed.position}?", placed.color,
               f"The shape at the {placed.position} is {placed.color}."),
            QA("position_shape", f"Which shape is at the {placed.position}?", placed.shape,
               f"The shape at the {placed.position} is a {placed.shape}."),
            QA("color_position", f"Where is the {placed.color} shape?", placed.position,
               f"The {placed.color} shape is at the {placed.position}."),
        ]
    count = len(scene.objects)
    questions.append(QA("shape_count", "How many shapes are there?", str(count),
                        _count_sentence(count, "shape", "There is" if count == 1 else "There are")))
    return questions


def chart_questions(chart: Chart) -> list[QA]:
    questions = [QA("chart_kind", "What kind of chart is this?", chart.kind, f"This is a {chart.kind} chart.")]
    if chart.kind == "line":
        questions.append(QA("line_trend", "Does the line go up or down?", chart.trend, f"The line goes {chart.trend}."))
        return questions
    part = "bar" if chart.kind == "bar" else "slice"
    extreme = "tallest" if chart.kind == "bar" else "largest"
    least = "shortest" if chart.kind == "bar" else "smallest"
    count = len(chart.values)
    questions += [
        QA(f"{part}_max_color", f"What color is the {extreme} {part}?", chart.largest_color,
           f"The {extreme} {part} is {chart.largest_color}."),
        QA(f"{part}_min_color", f"What color is the {least} {part}?", chart.smallest_color,
           f"The {least} {part} is {chart.smallest_color}."),
        QA(f"{part}_count", f"How many {part}s are in the chart?", str(count), f"The chart has {count} {part}s."),
    ]
    return questions


def scene_caption(scene: ShapeScene) -> str:
    items = [f"a {p.color} {p.shape} at the {p.position}" for p in scene.objects]
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return listed[0].upper() + listed[1:] + "."


def chart_caption(chart: Chart) -> str:
    if chart.kind == "line":
        return f"A {chart.colors[0]} line chart that goes {chart.trend}."
    part = "bar" if chart.kind == "bar" else "slice"
    extreme = "tallest" if chart.kind == "bar" else "largest"
    return f"A {chart.kind} chart with {len(chart.values)} {part}s. The {extreme} {part} is {chart.largest_color}."
