"""Each peer dataset layout, written as its project documents it, trains the tiny model through the worker's own
path (job created, run_job, adapter saved), with the format the worker announces for it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.integration.test_training_loop import CPU
from trainer_service.job_spec import Hyperparameters
from trainer_service.worker.backends import TransformersBackend

QUESTIONS = [("red", "What color is the square?"), ("blue", "Which color fills the image?")]


def _save(color: str, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (56, 56), color).save(path)
    return path.name


def _png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _llamafactory_mllm_demo(root: Path) -> tuple[Path, str]:
    records = [{"messages": [{"role": "user", "content": f"<image>{q}"}, {"role": "assistant", "content": color}],
                "images": [f"mllm_demo_data/{_save(color, root / 'mllm_demo_data' / f'{i}.jpg')}"]}
               for i, (color, q) in enumerate(QUESTIONS)]
    (root / "mllm_demo.json").write_text(json.dumps(records, indent=2))
    (root / "dataset_info.json").write_text(json.dumps({"mllm_demo": {
        "file_name": "mllm_demo.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    return root, "mllm_demo"


def _llamafactory_alpaca(root: Path) -> tuple[Path, str]:
    records = [{"instruction": f"<image>{q}", "input": "One word.", "output": color, "system": "Be brief.",
                "images": [f"imgs/{_save(color, root / 'imgs' / f'{i}.png')}"]}
               for i, (color, q) in enumerate(QUESTIONS)]
    (root / "colors.json").write_text(json.dumps(records))
    (root / "dataset_info.json").write_text(json.dumps({"colors": {"file_name": "colors.json", "columns": {
        "prompt": "instruction", "query": "input", "response": "output", "system": "system", "images": "images"}}}))
    return root / "dataset_info.json", "colors"


def _llava(root: Path) -> tuple[Path, str]:
    records = [{"id": str(i), "image": f"coco/{_save(color, root / 'coco' / f'{i:012d}.jpg')}",
                "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": color}]}
               for i, (color, q) in enumerate(QUESTIONS)]
    records.append({"id": "text-only", "conversations": [{"from": "human", "value": "Name a primary color."},
                                                          {"from": "gpt", "value": "red"}]})
    (root / "llava_v1_5_mix665k.json").write_text(json.dumps(records))
    return root / "llava_v1_5_mix665k.json", ""


def _chartqa_shards(root: Path) -> tuple[Path, str]:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for index, (color, q) in enumerate(QUESTIONS):
        (root / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({
            "image": pa.array([{"bytes": _png(color), "path": None}], type=image_type), "query": [q],
            "label": pa.array([[color]], type=pa.list_(pa.string())), "human_or_machine": [0],
        }), root / "data" / f"train-{index:05d}-of-{len(QUESTIONS):05d}.parquet")
    return root, ""


def _trl_datasetdict(root: Path) -> tuple[Path, str]:
    import datasets

    part = {"index": datasets.Value("int64"), "text": datasets.Value("string"), "type": datasets.Value("string")}
    features = datasets.Features({"messages": [{"content": [part], "role": datasets.Value("string")}],
                                  "images": datasets.Sequence(datasets.Image())})
    rows = {"messages": [[{"role": "user", "content": [{"index": 0, "text": None, "type": "image"},
                                                       {"index": None, "text": q, "type": "text"}]},
                          {"role": "assistant", "content": [{"index": None, "text": color, "type": "text"}]}]
                         for color, q in QUESTIONS],
            "images": [[Image.new("RGB", (56, 56), color)] for color, _ in QUESTIONS]}
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(root / "vsft"))
    return root / "vsft", ""


LAYOUTS: dict[str, tuple[Callable[[Path], tuple[Path, str]], str]] = {
    "llamafactory_mllm_demo": (_llamafactory_mllm_demo, "sharegpt"),
    "llamafactory_alpaca": (_llamafactory_alpaca, "alpaca"),
    "llava_with_text_only": (_llava, "llava"),
    "chartqa_parquet_shards": (_chartqa_shards, "table"),
    "trl_datasetdict": (_trl_datasetdict, "trl_messages"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_peer_layout_trains_through_the_worker(layout: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    from trainer_service.domain import JobStatus
    from trainer_service.job_spec import JobSpec
    from trainer_service.jobs import JobService
    from trainer_service.store import JobStore
    from trainer_service.worker.run import run_job

    build, expected_format = LAYOUTS[layout]
    dataset, dataset_name = build(tmp_path / "data")
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = JobService(store).create(JobSpec(
        str(tiny_model_dir), str(dataset), dataset_name=dataset_name,
        hyperparameters=Hyperparameters(max_steps=1, batch_size=3, learning_rate=1e-3)))
    store.transition(job.id, JobStatus.RUNNING, "running")
    run_job(store, job.id, tmp_path / "state", backend=TransformersBackend(CPU))

    finished = store.get_job(job.id)
    assert finished.status is JobStatus.SUCCEEDED, finished
    messages = [e.message for e in store.events_after(job.id)]
    assert any(m.startswith(f"dataset format: {expected_format} ") for m in messages), messages
