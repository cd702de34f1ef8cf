"""Datasets in the layouts other projects document, written here as those projects document them (never with our
own writer), load into the same conversations; detection says what it chose and why; `inspect_dataset` reads
only the first records and checks them as the full load does."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmforge.data import DatasetFormat, DatasetFormatError, detect_format, inspect_dataset, load_dataset
from vlmforge.data.types import ImagePart


def _image_bytes(color: str, image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(buffer, format=image_format)
    return buffer.getvalue()


def _write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def _error(path, fmt=None, **kwargs) -> str:
    with pytest.raises(DatasetFormatError) as info:
        load_dataset(path, fmt, **kwargs)
    return str(info.value)


def _kinds(message) -> list[str]:
    return ["image" if isinstance(part, ImagePart) else "text" for part in message.parts]


def _red(image_ref) -> bool:
    red, green, blue = image_ref.open().getpixel((14, 14))
    return red > 200 and green < 60 and blue < 60


# LLaMA-Factory: data/mllm_demo.json + mllm_demo_data/ + dataset_info.json, as its repository ships them

MLLM_DEMO_INFO = {
    "mllm_demo": {
        "file_name": "mllm_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    },
    "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
}
MLLM_DEMO = [
    {"messages": [{"content": "<image>Who are they?", "role": "user"},
                  {"content": "They're Kane and Gretzka from Bayern Munich.", "role": "assistant"},
                  {"content": "What are they doing?<image>", "role": "user"},
                  {"content": "They are celebrating on the soccer field.", "role": "assistant"}],
     "images": ["mllm_demo_data/1.jpg", "mllm_demo_data/1.jpg"]},
    {"messages": [{"content": "<image>Who is he?", "role": "user"},
                  {"content": "He's Thomas Muller from Bayern Munich.", "role": "assistant"}],
     "images": ["mllm_demo_data/2.jpg"]},
]


@pytest.fixture()
def llamafactory_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "mllm_demo_data").mkdir(parents=True)
    (data / "mllm_demo_data" / "1.jpg").write_bytes(_image_bytes("red"))
    (data / "mllm_demo_data" / "2.jpg").write_bytes(_image_bytes("blue"))
    _write_json(data / "dataset_info.json", MLLM_DEMO_INFO)
    _write_json(data / "mllm_demo.json", MLLM_DEMO)
    _write_json(data / "alpaca_en_demo.json", [{"instruction": "Say hi", "input": "", "output": "hi"}])
    return data


def test_llamafactory_mllm_demo_by_dataset_name(llamafactory_data: Path) -> None:
    for path in (llamafactory_data, llamafactory_data / "dataset_info.json"):
        first, second = load_dataset(path, dataset_name="mllm_demo")
        assert [m.role for m in first.messages] == ["user", "assistant", "user", "assistant"]
        assert _kinds(first.messages[0]) == ["image", "text"] and first.messages[0].text == "Who are they?"
        assert _kinds(first.messages[2]) == ["text", "image"]
        assert first.reference_answer == "They are celebrating on the soccer field."
        assert _red(first.images[0]) and not _red(second.images[0])
    summary = inspect_dataset(llamafactory_data, dataset_name="mllm_demo")
    assert summary.format is DatasetFormat.SHAREGPT and "entry 'mllm_demo'" in summary.format_reason
    assert summary.records_checked == 2 and summary.complete


def test_llamafactory_entry_defaults_to_alpaca_and_names_its_entries(llamafactory_data: Path) -> None:
    (sample,) = load_dataset(llamafactory_data, dataset_name="alpaca_en_demo")
    assert sample.question == "Say hi" and sample.reference_answer == "hi" and not sample.images
    assert inspect_dataset(llamafactory_data, dataset_name="alpaca_en_demo").format is DatasetFormat.ALPACA
    assert "defines 2 datasets; name one (mllm_demo, alpaca_en_demo)" in _error(llamafactory_data)
    assert "has no dataset 'nope'; it defines mllm_demo, alpaca_en_demo" in _error(llamafactory_data,
                                                                                   dataset_name="nope")
    assert "is sharegpt in dataset_info.json, not llava" in _error(llamafactory_data, "llava", dataset_name="mllm_demo")


def test_bare_mllm_demo_file_is_detected_as_sharegpt_with_role_content_tags(llamafactory_data: Path) -> None:
    path = llamafactory_data / "mllm_demo.json"
    summary = inspect_dataset(path)
    assert summary.format is DatasetFormat.SHAREGPT and "mllm_demo layout" in summary.format_reason
    first, _ = load_dataset(path)
    assert first.messages[0].text == "Who are they?" and len(first.images) == 2


def test_llamafactory_sharegpt_with_custom_tags_renamed_columns_and_system(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.png").write_bytes(_image_bytes("red", "PNG"))
    _write_json(tmp_path / "dataset_info.json", {"radiology": {
        "file_name": "radiology.jsonl", "formatting": "sharegpt",
        "columns": {"messages": "dialog", "images": "scans", "system": "instructions"},
        "tags": {"role_tag": "speaker", "content_tag": "utterance", "user_tag": "doctor", "assistant_tag": "model",
                 "system_tag": "setup"},
    }})
    records = [
        {"dialog": [{"speaker": "doctor", "utterance": "<image>Which organ?"},
                    {"speaker": "model", "utterance": "lung"}],
         "scans": ["scans/a.png"], "instructions": "Answer in one word."},
        {"dialog": [{"speaker": "setup", "utterance": "Be terse."},
                    {"speaker": "doctor", "utterance": "Left or right?"},
                    {"speaker": "model", "utterance": "left"}], "instructions": "overridden by the setup turn"},
    ]
    (tmp_path / "radiology.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    first, second = load_dataset(tmp_path)
    assert first.messages[0].text == "Answer in one word." and _kinds(first.messages[1]) == ["image", "text"]
    assert second.messages[0].role == "system" and second.messages[0].text == "Be terse."
    assert second.reference_answer == "left"

    records[0]["dialog"][1]["speaker"] = "doctor"
    (tmp_path / "radiology.jsonl").write_text(json.dumps(records[0]) + "\n")
    assert _error(tmp_path) == ("radiology.jsonl line 1, field dialog[1].speaker: speaker must be 'model' here "
                                "(turns alternate user, assistant) (dataset_info.json entry 'radiology')")


def test_llamafactory_alpaca_multimodal_with_system_and_history(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "cat.jpg").write_bytes(_image_bytes("red"))
    _write_json(tmp_path / "dataset_info.json", {"pets": {
        "file_name": "pets.json",
        "columns": {"prompt": "instruction", "query": "input", "response": "output", "images": "images",
                    "system": "system", "history": "history"},
    }})
    _write_json(tmp_path / "pets.json", [{
        "instruction": "<image>What animal is this?", "input": "Answer in one word.", "output": "cat",
        "images": ["imgs/cat.jpg"], "system": "You are a vet.", "history": [["Hello", "Hi, show me the picture."]],
    }])
    (sample,) = load_dataset(tmp_path / "dataset_info.json")
    assert [m.role for m in sample.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert sample.messages[3].text == "What animal is this?\nAnswer in one word."
    assert _kinds(sample.messages[3]) == ["image", "text"] and _red(sample.images[0])
    assert sample.reference_answer == "cat"


def test_llamafactory_columns_replace_every_default_as_llamafactory_does(tmp_path: Path) -> None:
    """With `columns` given, LLaMA-Factory reads only what is named there; without it, it reads no images."""
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "cat.jpg").write_bytes(_image_bytes("red"))
    _write_json(tmp_path / "pets.json", [{"instruction": "<image>What?", "input": "ignored", "output": "cat",
                                          "images": ["imgs/cat.jpg"]}])
    _write_json(tmp_path / "dataset_info.json", {"pets": {"file_name": "pets.json", "columns": {
        "prompt": "instruction", "response": "output", "images": "images"}}})
    (sample,) = load_dataset(tmp_path)
    assert sample.question == "What?"  # no query column named: "input" is not read
    _write_json(tmp_path / "dataset_info.json", {"pets": {"file_name": "pets.json"}})
    assert _error(tmp_path) == ("pets.json record 1, field instruction: 1 <image> placeholders but 0 images "
                                "(no images column is mapped (dataset_info.json entry 'pets'))")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"hf_hub_url": "BUAADreamer/llava-en-zh-300k", "formatting": "sharegpt"}, "hf_hub_url is not supported"),
        ({"ms_hub_url": "AI-ModelScope/x"}, "ms_hub_url is not supported"),
        ({"file_name": "d.json", "ranking": True}, "ranking (preference data) is not supported"),
        ({"file_name": "d.json", "formatting": "sharegpt", "columns": {"messages": "messages", "videos": "videos"}},
         "columns.videos: video inputs is not supported"),
        ({"file_name": "d.json", "columns": {"prompt": "q", "audios": "audios"}}, "columns.audios"),
        ({"file_name": "d.json", "formatting": "sharegpt", "columns": {"images": "images"}},
         "columns has no messages"),
        ({"file_name": "d.json", "formatting": "sharegpt", "tags": {"role_tag": "role"}}, "tags has no content_tag"),
        ({"file_name": "d.json", "formatting": "openai"}, "formatting 'openai' is not supported"),
        ({"file_name": "../outside.json"}, "file_name '../outside.json' leaves the dataset directory"),
        ({"file_name": "missing.json"}, "file_name 'missing.json' does not exist"),
    ],
)
def test_llamafactory_unsupported_entries_are_refused_by_name(tmp_path: Path, entry: dict, expected: str) -> None:
    data = tmp_path / "data"
    _write_json(data / "d.json", [{"instruction": "q", "output": "a"}])
    _write_json(tmp_path / "outside.json", [{"instruction": "q", "output": "a"}])
    _write_json(data / "dataset_info.json", {"demo": entry})
    message = _error(data, dataset_name="demo")
    assert message.startswith("dataset_info.json: dataset 'demo': ") and expected in message


# LLaVA-Instruct: llava_v1_5_mix665k.json

LLAVA_MIX = [
    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
                       {"from": "gpt", "value": "The bus in the image is white and red."},
                       {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                       {"from": "gpt", "value": "The back of the bus features an advertisement."}]},
    {"id": "i6IyJda_0", "model": "",
     "conversations": [{"from": "human", "value": "How to tell if a customer segment is well segmented?"},
                       {"from": "gpt", "value": "Check that it is homogeneous, distinct and reachable."}]},
    {"id": "000000052846", "image": "coco/000000033471.jpg",
     "conversations": [{"from": "human", "value": "Where is the cat?\n<image>"},
                       {"from": "gpt", "value": "On the sofa."}]},
]


@pytest.fixture()
def llava_dir(tmp_path: Path) -> Path:
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    (tmp_path / "coco" / "train2017" / "000000033471.jpg").write_bytes(_image_bytes("red"))
    (tmp_path / "coco" / "000000033471.jpg").write_bytes(_image_bytes("blue"))
    _write_json(tmp_path / "llava_v1_5_mix665k.json", LLAVA_MIX)
    return tmp_path


def test_llava_instruct_json_loads_with_text_only_records_kept(llava_dir: Path) -> None:
    path = llava_dir / "llava_v1_5_mix665k.json"
    summary = inspect_dataset(path)
    assert summary.format is DatasetFormat.LLAVA and "singular 'image' (LLaVA-Instruct)" in summary.format_reason
    bus, text_only, cat = load_dataset(path)
    assert _kinds(bus.messages[0]) == ["image", "text"]
    assert bus.messages[0].text == "What are the colors of the bus in the image?"  # LLaVA moves <image>\n first
    assert len(bus.messages) == 4 and _red(bus.images[0])
    assert text_only.images == [] and text_only.question.startswith("How to tell")
    assert _kinds(cat.messages[0]) == ["image", "text"] and cat.messages[0].text == "Where is the cat?"


def test_llava_errors_name_the_record(llava_dir: Path) -> None:
    records = [dict(LLAVA_MIX[2]), dict(LLAVA_MIX[2], image="coco/missing.jpg")]
    path = _write_json(llava_dir / "broken.json", records)
    assert _error(path) == "broken.json record 2, field image: image file 'coco/missing.jpg' does not exist"
    records[1] = {"id": "x", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}
    _write_json(path, records)
    assert _error(path, "llava") == "broken.json record 2, field image: 1 <image> placeholders but 0 images"
    _write_json(llava_dir / "dataset_info.json", {"llava": {"file_name": "llava_v1_5_mix665k.json",
                                                             "formatting": "sharegpt"}})
    assert "singular 'image' key: that is the LLaVA-Instruct layout" in _error(llava_dir)


def test_llava_file_whose_first_records_are_text_only(llava_dir: Path) -> None:
    """Detection sees no image key in the first records and reads ShareGPT, which takes LLaVA's `image` too."""
    path = _write_json(llava_dir / "sorted.json", [LLAVA_MIX[1]] * 20 + [LLAVA_MIX[0]])
    assert inspect_dataset(path).format is DatasetFormat.SHAREGPT
    samples = load_dataset(path)
    assert len(samples) == 21 and _red(samples[-1].images[0]) and _kinds(samples[-1].messages[0]) == ["image", "text"]


# Hugging Face datasets: save_to_disk, Parquet shards, Image features, ChartQA's schema, TRL's vision layout

def test_saved_datasetdict_takes_the_chosen_split(tmp_path: Path) -> None:
    import datasets

    def split(color: str, answer: str) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"image": [Image.new("RGB", (28, 28), color)], "question": ["What color?"], "answer": [answer]},
            features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                        "answer": datasets.Value("string")}))

    datasets.DatasetDict({"train": split("red", "red"), "test": split("blue", "blue")}).save_to_disk(tmp_path / "dd")
    assert load_dataset(tmp_path / "dd")[0].reference_answer == "red"  # several splits, none named: train
    (sample,) = load_dataset(tmp_path / "dd", split="test")
    assert sample.reference_answer == "blue" and not _red(sample.images[0])
    assert "split test of a DatasetDict" in inspect_dataset(tmp_path / "dd", split="test").format_reason
    assert _error(tmp_path / "dd", split="validation") == "dd: has no split 'validation'; splits present: train, test"


def _chartqa_table(rows: list[tuple[str, str, str]]) -> pa.Table:
    """HuggingFaceM4/ChartQA's own schema: image is a datasets Image struct, label a list of answers."""
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.table({
        "image": pa.array([{"bytes": _image_bytes(color, "PNG"), "path": None} for color, _, _ in rows],
                          type=image_type),
        "query": pa.array([query for _, query, _ in rows]),
        "label": pa.array([[label] for _, _, label in rows], type=pa.list_(pa.string())),
        "human_or_machine": pa.array([0 for _ in rows], type=pa.int64()),
    })


def test_chartqa_parquet_shards_split_from_file_names(tmp_path: Path) -> None:
    root = tmp_path / "ChartQA"
    (root / "data").mkdir(parents=True)
    pq.write_table(_chartqa_table([("red", "Which color is the bar?", "red")]),
                   root / "data" / "train-00000-of-00002.parquet")
    pq.write_table(_chartqa_table([("blue", "Which color is it now?", "blue")]),
                   root / "data" / "train-00001-of-00002.parquet")
    pq.write_table(_chartqa_table([("blue", "And here?", "blue")]), root / "data" / "val-00000-of-00001.parquet")
    pq.write_table(_chartqa_table([("red", "Last one?", "red")]), root / "data" / "test-00000-of-00001.parquet")

    first, second = load_dataset(root, split="train")
    assert (first.question, first.reference_answer, second.reference_answer) == ("Which color is the bar?", "red",
                                                                                 "blue")
    assert _red(first.images[0])
    (validation,) = load_dataset(root, split="validation")  # ChartQA calls it "val"
    assert validation.question == "And here?"
    summary = inspect_dataset(root)
    assert summary.format is DatasetFormat.TABLE and "image/query/label" in summary.format_reason
    assert "split train of 2 Parquet shard(s) (splits: test, train, val)" in summary.format_reason
    assert (summary.records_checked, summary.complete) == (2, True)
    (single,) = load_dataset(root / "data" / "test-00000-of-00001.parquet")  # one shard file on its own
    assert single.question == "Last one?"


def test_chartqa_empty_label_list_is_refused(tmp_path: Path) -> None:
    table = _chartqa_table([("red", "Which color?", "red")]).set_column(
        2, "label", pa.array([[]], type=pa.list_(pa.string())))
    pq.write_table(table, tmp_path / "train.parquet")
    assert _error(tmp_path / "train.parquet") == ("train.parquet row 1, field label: expected non-empty text, "
                                                  "got an empty list")


def _trl_dataset():
    """The layout of HuggingFaceH4/llava-instruct-mix-vsft, which TRL's vision SFT examples train on."""
    import datasets

    part = {"index": datasets.Value("int64"), "text": datasets.Value("string"), "type": datasets.Value("string")}
    features = datasets.Features({
        "messages": [{"content": [part], "role": datasets.Value("string")}],
        "images": datasets.Sequence(datasets.Image()),
    })
    messages = [
        {"role": "user", "content": [{"index": 0, "text": None, "type": "image"},
                                     {"index": None, "text": "What color is the square?", "type": "text"}]},
        {"role": "assistant", "content": [{"index": None, "text": "red", "type": "text"}]},
    ]
    return datasets.Dataset.from_dict({"messages": [messages], "images": [[Image.new("RGB", (28, 28), "red")]]},
                                      features=features)


def test_trl_vision_layout_from_parquet_and_save_to_disk(tmp_path: Path) -> None:
    dataset = _trl_dataset()
    (tmp_path / "data").mkdir()
    dataset.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    for path in (tmp_path, tmp_path / "saved"):
        summary = inspect_dataset(path)
        assert summary.format is DatasetFormat.TRL_MESSAGES and "TRL vision SFT" in summary.format_reason
        (sample,) = load_dataset(path)
        assert _kinds(sample.messages[0]) == ["image", "text"] and sample.reference_answer == "red"
        assert _red(sample.images[0])


def test_trl_layout_counts_images_against_placeholders(tmp_path: Path) -> None:
    record = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                        {"type": "text", "text": "Same color?"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "yes"}]}],
              "images": ["a.png"]}
    (tmp_path / "a.png").write_bytes(_image_bytes("red", "PNG"))
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert _error(path) == ("train.jsonl line 1, field messages[0].content[1]: more {'type': 'image'} parts than "
                            "the 1 entries of images")


# Detection and inspection

def test_ambiguous_records_name_every_format_they_could_be(tmp_path: Path) -> None:
    both = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(both) + "\n")
    message = _error(path)
    assert message.startswith("train.jsonl: ambiguous: the first record could be sharegpt (")
    assert "or conversation (" in message
    assert load_dataset(path, "sharegpt")[0].reference_answer == "a"  # naming the format settles it

    records = [{"conversations": LLAVA_MIX[1]["conversations"], "image": "x.jpg"},
               {"conversations": LLAVA_MIX[1]["conversations"], "images": ["x.jpg"]}]
    _write_json(tmp_path / "mixed.json", records)
    message = _error(tmp_path / "mixed.json")
    assert "could be llava (record 1: " in message and "sharegpt (record 2: " in message


def test_detection_reasons_cover_every_chat_layout(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_image_bytes("red", "PNG"))
    conversation = {"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"},
                                                              {"type": "text", "text": "q"}]},
                                 {"role": "assistant", "content": "a"}]}
    text_only = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    cases = [
        (conversation, DatasetFormat.CONVERSATION, "{'type': 'image', 'image': path} parts"),
        (text_only, DatasetFormat.CONVERSATION, "without images"),
        ({"instruction": "q", "input": "", "output": "a"}, DatasetFormat.ALPACA, "'instruction' and 'output'"),
        ({"conversations": LLAVA_MIX[1]["conversations"]}, DatasetFormat.SHAREGPT, "LLaVA reads them alike"),
    ]
    for record, expected, why in cases:
        path = tmp_path / "train.jsonl"
        path.write_text(json.dumps(record) + "\n")
        summary = inspect_dataset(path)
        assert (summary.format, detect_format(path)) == (expected, expected)
        assert why in summary.format_reason and "JSONL file" in summary.format_reason
    assert inspect_dataset(path, "sharegpt").format_reason == "sharegpt: named by the caller; JSONL file"
    path.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n")
    assert _error(path) == ("train.jsonl: cannot tell the image/question/answer columns from ['completion', 'prompt']; "
                            "name them explicitly; nor is it a chat layout (no chat keys (conversations, messages, "
                            "instruction/output) in the first record)")


def test_inspect_reads_only_the_first_records_and_checks_them_like_the_full_load(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_image_bytes("red", "PNG"))
    good = {"conversations": [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}],
            "images": ["a.png"]}
    bad = dict(good, images=["missing.png"])
    lines = [json.dumps(good)] * 10_000 + [json.dumps(bad), "{not json"]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    summary = inspect_dataset(path, max_records=16)
    assert (summary.records_checked, summary.complete) == (16, False)
    assert _error(path) == "big.jsonl line 10001, field images[0]: image file 'missing.png' does not exist"

    array = tmp_path / "big.json"  # a JSON array far larger than one read, broken at its very end
    array.write_text("[" + ",\n".join([json.dumps(good)] * 10_000) + ",\n" + json.dumps(bad) + ", {oops")
    assert inspect_dataset(array).records_checked == 16
    assert _error(array) == "big.json record 10001, field images[0]: image file 'missing.png' does not exist"
    array.write_text("[" + json.dumps(good) + ", {oops")
    assert _error(array).startswith("big.json: record 2: invalid JSON (")
    array.write_text("[" + json.dumps(good) + ", 7]")
    assert _error(array) == "big.json record 2: expected a JSON object, got int"

    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DatasetFormatError, match="small.jsonl line 1, field images"):
        inspect_dataset(small)
    small.write_text(json.dumps(good) + "\n")
    assert inspect_dataset(small).complete


def test_an_images_column_the_detected_format_does_not_read_is_refused_not_dropped(tmp_path: Path) -> None:
    text_only = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    with_images = {"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
                   "images": ["a.png"]}
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [text_only] * 20 + [with_images]))
    assert inspect_dataset(path).format is DatasetFormat.CONVERSATION
    assert _error(path).startswith("train.jsonl line 21, field images: an 'images' column is not read by this format")
    (tmp_path / "a.png").write_bytes(_image_bytes("red", "PNG"))
    assert len(load_dataset(path, "sharegpt")[-1].images) == 1


def test_repeated_image_paths_are_checked_once_and_share_one_reference(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_image_bytes("red", "PNG"))
    records = [{"image": "imgs/a.png", "conversations": [{"from": "human", "value": f"<image>\nq{i}"},
                                                         {"from": "gpt", "value": "a"}]} for i in range(3)]
    records[2]["image"] = "./imgs//a.png"
    samples = load_dataset(_write_json(tmp_path / "d.json", records))
    assert samples[0].images[0] is samples[1].images[0]
    assert samples[2].images[0] == samples[0].images[0]  # the same file, spelled differently
    assert samples[0].images[0].path == (tmp_path / "imgs" / "a.png").resolve()



def test_parquet_shards_without_split_names_are_one_dataset(tmp_path: Path) -> None:
    for index, (color, query) in enumerate([("red", "First?"), ("blue", "Second?")]):
        pq.write_table(_chartqa_table([(color, query, color)]), tmp_path / f"chunk_{index}.parquet")
    assert [s.question for s in load_dataset(tmp_path, split="train")] == ["First?", "Second?"]
    assert "2 Parquet shard(s) without split names" in inspect_dataset(tmp_path, split="validation").format_reason


def test_inspect_with_a_huge_max_records_streams_the_whole_file(tmp_path: Path) -> None:
    import sys

    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = tmp_path / "train.jsonl"
    path.write_text((json.dumps(record) + "\n") * 40)
    summary = inspect_dataset(path, max_records=sys.maxsize)
    assert (summary.records_checked, summary.complete) == (40, True)
    assert (inspect_dataset(path, max_records=40).complete, inspect_dataset(path, max_records=39).complete) == (True,
                                                                                                                False)


def _outside_shard(tmp_path: Path) -> Path:
    """Someone else's data beside the dataset directory (with --data-root: another project's)."""
    (tmp_path / "other").mkdir()
    pq.write_table(_chartqa_table([("red", "Secret?", "red")]), tmp_path / "other" / "train-00000-of-00001.parquet")
    return tmp_path / "other" / "train-00000-of-00001.parquet"


def test_a_parquet_shard_or_data_folder_linked_out_of_the_dataset_is_refused(tmp_path: Path) -> None:
    outside = _outside_shard(tmp_path)
    linked_shard = tmp_path / "shard-link"
    (linked_shard / "data").mkdir(parents=True)
    (linked_shard / "data" / "train-00000-of-00001.parquet").symlink_to(outside)
    assert _error(linked_shard).endswith("is a link to a file outside the dataset directory")
    linked_folder = tmp_path / "folder-link"
    linked_folder.mkdir()
    (linked_folder / "data").symlink_to(outside.parent, target_is_directory=True)
    assert _error(linked_folder).endswith("is a link to a file outside the dataset directory")
    inside = tmp_path / "inside"  # a link that stays inside is fine
    (inside / "data").mkdir(parents=True)
    pq.write_table(_chartqa_table([("red", "Mine?", "red")]), inside / "real.parquet.bak")
    (inside / "data" / "train-00000-of-00001.parquet").symlink_to(inside / "real.parquet.bak")
    assert load_dataset(inside)[0].question == "Mine?"


def test_a_save_to_disk_file_or_split_linked_out_of_the_dataset_is_refused(tmp_path: Path) -> None:
    import datasets

    saved = tmp_path / "other" / "saved"
    datasets.Dataset.from_dict({"image": [Image.new("RGB", (28, 28), "red")], "question": ["Secret?"],
                                "answer": ["red"]},
                               features=datasets.Features({"image": datasets.Image(), "question": datasets.Value(
                                   "string"), "answer": datasets.Value("string")})).save_to_disk(saved)
    arrow = next(saved.glob("data-*.arrow"))
    linked = tmp_path / "mine"
    linked.mkdir()
    (linked / "state.json").write_text((saved / "state.json").read_text())
    (linked / "dataset_info.json").write_text((saved / "dataset_info.json").read_text())
    (linked / arrow.name).symlink_to(arrow)
    assert "names a data file" in _error(linked)
    split_linked = tmp_path / "dict"
    split_linked.mkdir()
    _write_json(split_linked / "dataset_dict.json", {"splits": ["train"]})
    (split_linked / "train").symlink_to(saved, target_is_directory=True)
    assert "names a data file" in _error(split_linked)


def test_a_llamafactory_folder_whose_file_links_out_is_refused(llamafactory_data: Path, tmp_path: Path) -> None:
    outside = _write_json(tmp_path / "other" / "secret.json", MLLM_DEMO)
    (llamafactory_data / "folder").mkdir()
    (llamafactory_data / "folder" / "part-0.json").symlink_to(outside)
    info = json.loads((llamafactory_data / "dataset_info.json").read_text())
    info["linked"] = {**MLLM_DEMO_INFO["mllm_demo"], "file_name": "folder"}
    _write_json(llamafactory_data / "dataset_info.json", info)
    message = _error(llamafactory_data / "dataset_info.json", dataset_name="linked")
    assert "a file in 'folder' is a link that leaves the dataset directory" in message
