"""Writes the embedded VQA dataset: images plus train/validation/test (short answers) and pretrain
(captions and sentence answers) JSONL files in the conversation format. Cached by a fingerprint of the spec."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..build_cache import built_atomically, has_fingerprint, recipe_fingerprint
from . import charts, scenes, tasks

GENERATOR_VERSION = 4
SENTENCE_ANSWER_SHARE = 0.5
INFO_FILE = "dataset_info.json"
SPLITS = ("train", "validation", "test", "pretrain")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that decides the dataset's bytes; change any field and the cache key changes."""

    seed: int = 0
    image_size_px: int = 112
    train_images: int = 1500
    validation_images: int = 100
    test_images: int = 100
    pretrain_images: int = 3000
    chart_fraction: float = 0.5

    def images_in(self, split: str) -> int:
        return getattr(self, f"{split}_images")

    def fingerprint(self) -> str:
        return recipe_fingerprint({"version": GENERATOR_VERSION, **dataclasses.asdict(self)})


def build_dataset(output_dir: Path, spec: DatasetSpec = DatasetSpec(), *, workers: int | None = None) -> Path:
    """Generates into a temporary sibling directory and renames it into place, so a crash leaves no half dataset."""
    output_dir = Path(output_dir)
    if is_built(output_dir, spec):
        return output_dir
    # Spawned, not forked: a process that already runs gRPC's threads (a test session with servers in it) cannot
    # be forked safely (the children were killed mid-build); one pool serves every split.
    workers = workers or min(4, os.cpu_count() or 1)
    with built_atomically(output_dir) as staging, \
            ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        counts = {split: _write_split(staging, split, spec, pool) for split in SPLITS}
        info = {"fingerprint": spec.fingerprint(), "generator_version": GENERATOR_VERSION,
                "spec": dataclasses.asdict(spec), "records": counts}
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return output_dir


def is_built(output_dir: Path, spec: DatasetSpec) -> bool:
    return has_fingerprint(output_dir, INFO_FILE, spec.fingerprint())


def _write_split(root: Path, split: str, spec: DatasetSpec, pool: ProcessPoolExecutor) -> int:
    (root / "images" / split).mkdir(parents=True)
    jobs = [(root, split, index, spec) for index in range(spec.images_in(split))]
    written = 0
    with (root / f"{split}.jsonl").open("w", encoding="utf-8") as out:
        # pool.map keeps input order, so the file is the same whatever the worker count.
        for records in tqdm(pool.map(_make_example, jobs, chunksize=32), total=len(jobs), desc=f"data {split}",
                            unit="img", leave=False):
            for record in records:
                out.write(json.dumps(record, sort_keys=True) + "\n")
                written += 1
    return written


def _make_example(job: tuple[Path, str, int, DatasetSpec]) -> list[dict]:
    root, split, index, spec = job
    rng = random.Random(f"{spec.seed}:{split}:{index}")
    if rng.random() < spec.chart_fraction:
        chart = charts.sample_chart(rng)
        image = charts.render_chart(chart, spec.image_size_px)
        questions, caption = tasks.chart_questions(chart), tasks.chart_caption(chart)
    else:
        scene = scenes.sample_scene(rng)
        image = scenes.render_scene(scene, rng, spec.image_size_px)
        questions, caption = tasks.scene_questions(scene), tasks.scene_caption(scene)
    relative_image = f"images/{split}/{index:05d}.png"
    image.save(root / relative_image, format="PNG")
    if split == "pretrain":
        # One multi-turn conversation per image (caption, then every question): many supervised answers per
        # image, which is what teaches a from-scratch model to look at the picture within a CPU budget.
        # Answers are a sentence or just the short answer at random, like the mixed styles of a real VLM's
        # instruction data. Shuffled, so any question may come first, right after the image, as at evaluation.
        turns = [(tasks.CAPTION_PROMPT, caption)] + [
            (qa.question, qa.sentence_answer if rng.random() < SENTENCE_ANSWER_SHARE else qa.short_answer)
            for qa in questions if qa.kind not in tasks.HELD_OUT_OF_PRETRAINING
        ]
        rng.shuffle(turns)
        return [_record(relative_image, turns, "caption+qa")]
    qa = rng.choice(questions)
    return [_record(relative_image, [(qa.question, qa.short_answer)], qa.kind)]


def _record(image: str, turns: list[tuple[str, str]], kind: str) -> dict:
    """A conversation JSONL record; the image goes with the first question."""
    messages = []
    for index, (question, answer) in enumerate(turns):
        content = [{"type": "text", "text": question}]
        if index == 0:
            content.insert(0, {"type": "image", "image": image})
        messages += [{"role": "user", "content": content},
                     {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return {"messages": messages, "kind": kind}  # kind: question family, for per-kind scores; loaders ignore it
