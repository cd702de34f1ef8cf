"""The embedded dataset generator: deterministic bytes, the promised splits and question kinds, real images."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vlmforge.data import load_dataset
from vlmforge.datagen import DatasetSpec, build_dataset, is_built

SMALL = DatasetSpec(train_images=60, validation_images=10, test_images=10, pretrain_images=40)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("datagen") / "data", SMALL, workers=2)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(small_dataset: Path, tmp_path: Path) -> None:
    first = _tree_digest(small_dataset)
    second = _tree_digest(build_dataset(tmp_path / "b", SMALL, workers=1))
    assert first == second
    other = _tree_digest(build_dataset(tmp_path / "c", DatasetSpec(**{**SMALL.__dict__, "seed": 1}), workers=1))
    assert other["train.jsonl"] != first["train.jsonl"]


def test_splits_load_with_the_trainers_loader_and_cover_charts_and_scenes(small_dataset: Path) -> None:
    root = small_dataset
    for split, images in (("train", 60), ("validation", 10), ("test", 10)):
        conversations = load_dataset(root / f"{split}.jsonl")
        assert len(conversations) == images
        assert all(len(c.images) == 1 and c.reference_answer for c in conversations)
    kinds = Counter(json.loads(line)["kind"] for line in (root / "train.jsonl").read_text().splitlines())
    assert any(k.startswith("shape_") or k.startswith("color_") for k in kinds)
    assert any(k.startswith(("bar_", "slice_", "line_", "chart_")) for k in kinds)
    answers = [c.reference_answer for c in load_dataset(root / "train.jsonl")]
    assert max(len(a.split()) for a in answers) <= 2, "demo answers are short"


def test_pretraining_split_is_one_multi_turn_conversation_per_image_without_the_held_out_kind(
    small_dataset: Path,
) -> None:
    conversations = load_dataset(small_dataset / "pretrain.jsonl")
    assert len(conversations) == SMALL.pretrain_images
    held_out_questions = {"Where is the red shape?", "Where is the blue shape?"}
    for conversation in conversations:
        questions = [m.text for m in conversation.messages if m.role == "user"]
        answers = [m.text for m in conversation.messages if m.role == "assistant"]
        assert "Describe the image." in questions and len(questions) >= 2
        assert answers[[m.text for m in conversation.messages if m.role == "user"].index("Describe the image.")
                       ].endswith("."), "captions are sentences"
        assert not held_out_questions & set(questions)
        assert len(conversation.images) == 1
    first_questions = {[m.text for m in c.messages if m.role == "user"][0] for c in conversations}
    assert len(first_questions) > 1, "turn order is shuffled, so not every conversation opens with the caption"
    answers = [m.text for c in conversations for m in c.messages[2:] if m.role == "assistant"]
    assert any(a.endswith(".") for a in answers) and any(not a.endswith(".") for a in answers), "mixed styles"


def test_images_are_real_pictures_of_the_configured_size(small_dataset: Path) -> None:
    root = small_dataset
    for conversation in load_dataset(root / "test.jsonl"):
        image = conversation.images[0].open()
        assert image.size == (SMALL.image_size_px, SMALL.image_size_px)
        assert len(set(image.getdata())) >= 2, "a blank image would teach nothing"


def test_build_is_cached_by_spec(tmp_path: Path) -> None:
    root = build_dataset(tmp_path / "data", SMALL)
    stamp = (root / "train.jsonl").stat().st_mtime_ns
    assert is_built(root, SMALL)
    build_dataset(root, SMALL)
    assert (root / "train.jsonl").stat().st_mtime_ns == stamp
    assert not is_built(root, DatasetSpec(**{**SMALL.__dict__, "test_images": 11}))


def test_chart_pixels_match_the_question_answer(tmp_path: Path) -> None:
    """The tallest bar's colour must really be the tallest thing drawn, or the dataset teaches noise."""
    import random

    from vlmforge.datagen import charts
    from vlmforge.datagen.scenes import COLORS

    rng = random.Random(3)
    chart = next(c for c in iter(lambda: charts.sample_chart(rng), None) if c.kind == "bar")
    image = charts.render_chart(chart, 112).convert("RGB")
    rgb = COLORS[chart.largest_color]
    top_rows = {}
    for name in chart.colors:
        target = COLORS[name]
        rows = [y for y in range(112) for x in range(112) if _close(image.getpixel((x, y)), target)]
        top_rows[name] = min(rows)
    assert min(top_rows, key=top_rows.get) == chart.largest_color, (top_rows, rgb)


def _close(pixel, target, tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, target))


def test_generated_images_open_with_pillow(small_dataset: Path) -> None:
    root = small_dataset
    path = next((root / "images" / "train").glob("*.png"))
    with Image.open(path) as image:
        assert image.format == "PNG"
