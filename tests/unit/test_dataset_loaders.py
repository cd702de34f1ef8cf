"""Each dataset format loads into the same conversations, and bad input gets a message naming file, line, field."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from vlmforge.data import ColumnMapping, DatasetFormat, DatasetFormatError, detect_format, load_dataset


def _png_bytes(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture()
def dataset_dir(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(_png_bytes("red"))
    (tmp_path / "images" / "b.png").write_bytes(_png_bytes("blue"))
    return tmp_path


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _conversation_record(image: str = "images/a.png", answer: str = "red") -> dict:
    return {"messages": [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What color?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]}


def _assert_red_sample(conversations) -> None:
    assert len(conversations) == 1
    sample = conversations[0]
    assert sample.question == "What color?"
    assert sample.reference_answer == "red"
    assert len(sample.images) == 1
    assert sample.images[0].open().getpixel((0, 0)) == (255, 0, 0)


def _error(path, fmt=None, **kwargs) -> str:
    with pytest.raises(DatasetFormatError) as info:
        load_dataset(path, fmt, **kwargs)
    return str(info.value)


# (a) conversation JSONL

def test_conversation_jsonl_loads_and_is_detected(dataset_dir: Path) -> None:
    path = _write_jsonl(dataset_dir / "train.jsonl", [_conversation_record()])
    assert detect_format(path) is DatasetFormat.CONVERSATION
    _assert_red_sample(load_dataset(path))


def test_conversation_jsonl_with_system_message_and_string_content(dataset_dir: Path) -> None:
    record = _conversation_record()
    record["messages"].insert(0, {"role": "system", "content": "Answer in one word."})
    record["messages"][2]["content"] = "red"
    (sample,) = load_dataset(_write_jsonl(dataset_dir / "train.jsonl", [record]))
    assert sample.messages[0].role == "system" and sample.reference_answer == "red"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.pop("messages"), "line 2, field messages: missing"),
        (lambda r: r["messages"][0].update(role="robot"), "line 2, field messages[0].role: role must be one of"),
        (lambda r: r["messages"][0]["content"][0].update(image="../outside.png"),
         "line 2, field messages[0].content[0].image: image path '../outside.png' leaves the dataset directory"),
        (lambda r: r["messages"][0]["content"][0].update(image="/etc/passwd"),
         "field messages[0].content[0].image: absolute image paths are refused"),
        (lambda r: r["messages"][0]["content"][0].update(image="http://example.com/a.png"),
         "field messages[0].content[0].image: image URLs are not fetched"),
        (lambda r: r["messages"][0]["content"][0].update(image="images/missing.png"),
         "image file 'images/missing.png' does not exist"),
        (lambda r: r["messages"].pop(), "line 2, field messages[0]: the last message must be the assistant's answer"),
        (lambda r: r["messages"][0]["content"][1].update(type="audio"),
         "field messages[0].content[1].type: part type must be 'text' or 'image'"),
    ],
)
def test_conversation_jsonl_rejects_malformed_records(dataset_dir: Path, mutate, expected: str) -> None:
    bad = _conversation_record()
    mutate(bad)
    path = _write_jsonl(dataset_dir / "train.jsonl", [_conversation_record(), bad])
    assert expected in _error(path, "conversation")
    assert _error(path, "conversation").startswith("train.jsonl line 2")


def test_invalid_json_names_the_line(dataset_dir: Path) -> None:
    path = dataset_dir / "train.jsonl"
    path.write_text(json.dumps(_conversation_record()) + "\n{not json\n")
    assert _error(path, "conversation").startswith("train.jsonl line 2: invalid JSON")


def test_symlink_out_of_the_dataset_directory_is_refused(dataset_dir: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    outside.write_bytes(_png_bytes())
    (dataset_dir / "images" / "link.png").symlink_to(outside)
    path = _write_jsonl(dataset_dir / "train.jsonl", [_conversation_record(image="images/link.png")])
    assert "leaves the dataset directory" in _error(path)


# (b) OpenAI JSONL with data: URLs

def _openai_record(url: str) -> dict:
    return {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "What color?"},
                                     {"type": "image_url", "image_url": {"url": url}}]},
        {"role": "assistant", "content": "red"},
    ]}


def test_openai_jsonl_loads_and_is_detected(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "train.jsonl", [_openai_record(_data_url(_png_bytes()))])
    assert detect_format(path) is DatasetFormat.OPENAI
    _assert_red_sample(load_dataset(path))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/cat.png", "only data: image URLs are accepted"),
        ("data:image/png;base64,@@@not-base64@@@", "payload is not valid base64"),
        ("data:text/plain;base64,aGVsbG8=", "media type 'text/plain', expected image/*"),
        ("data:image/png,rawtext", "expected a base64 data: URL"),
    ],
)
def test_openai_jsonl_rejects_bad_image_urls(tmp_path: Path, url: str, expected: str) -> None:
    path = _write_jsonl(tmp_path / "train.jsonl", [_openai_record(url)])
    message = _error(path, "openai")
    assert message.startswith("train.jsonl line 1, field messages[0].content[1].image_url.url")
    assert expected in message


# (c) column-mapped tables

def test_csv_table_with_chartqa_columns(dataset_dir: Path) -> None:
    path = dataset_dir / "train.csv"
    pd.DataFrame({"image": ["images/a.png"], "query": ["What color?"], "label": ["red"]}).to_csv(path, index=False)
    assert detect_format(path) is DatasetFormat.TABLE
    _assert_red_sample(load_dataset(path))


def test_parquet_table_with_embedded_image_bytes_and_explicit_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    frame = pd.DataFrame({"picture": [{"bytes": _png_bytes(), "path": None}], "q": ["What color?"], "a": ["red"]})
    frame.to_parquet(path)
    _assert_red_sample(load_dataset(path, columns=ColumnMapping(image="picture", question="q", answer="a")))


def test_jsonl_table_with_medpix_columns(dataset_dir: Path) -> None:
    path = _write_jsonl(dataset_dir / "medpix.jsonl",
                        [{"image_id": "images/a.png", "question": "What color?", "answer": "red"}])
    assert detect_format(path) is DatasetFormat.TABLE
    _assert_red_sample(load_dataset(path))


def test_saved_hf_dataset_directory(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    data = datasets.Dataset.from_dict(
        {"image": [Image.open(io.BytesIO(_png_bytes()))], "question": ["What color?"], "answer": ["red"]},
        features=features,
    )
    data.save_to_disk(str(tmp_path / "saved"))
    _assert_red_sample(load_dataset(tmp_path / "saved"))


def test_table_errors_name_the_row_and_column(dataset_dir: Path) -> None:
    path = dataset_dir / "train.csv"
    pd.DataFrame({"image": ["images/a.png", "images/b.png"], "question": ["What color?", "What color?"],
                  "answer": ["red", ""]}).to_csv(path, index=False)
    assert _error(path) == "train.csv row 2, field answer: expected non-empty text"


def test_table_with_unknown_columns_says_which_exist(dataset_dir: Path) -> None:
    path = dataset_dir / "train.csv"
    pd.DataFrame({"img": ["images/a.png"], "text": ["q"]}).to_csv(path, index=False)
    assert "cannot tell the image/question/answer columns from ['img', 'text']" in _error(path)
    assert "column(s) image not found" in _error(path, columns=ColumnMapping(image="image", question="text",
                                                                               answer="text"))


def test_table_image_path_escaping_the_directory_is_refused(dataset_dir: Path) -> None:
    path = dataset_dir / "train.csv"
    pd.DataFrame({"image": ["../../etc/passwd"], "question": ["q"], "answer": ["a"]}).to_csv(path, index=False)
    assert _error(path) == "train.csv row 1, field image: image path '../../etc/passwd' leaves the dataset directory"


# (d) ShareGPT

def test_sharegpt_json_with_placeholder_and_system(dataset_dir: Path) -> None:
    path = dataset_dir / "data.json"
    path.write_text(json.dumps([{
        "conversations": [{"from": "human", "value": "<image>What color?"}, {"from": "gpt", "value": "red"}],
        "images": ["images/a.png"], "system": "Be brief.",
    }]))
    assert detect_format(path) is DatasetFormat.SHAREGPT
    (sample,) = load_dataset(path)
    assert sample.messages[0].role == "system"
    _assert_red_sample([sample])


def test_sharegpt_without_placeholder_puts_images_before_the_first_question(dataset_dir: Path) -> None:
    path = dataset_dir / "data.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "What color?"},
                                                    {"from": "gpt", "value": "red"}], "images": ["images/a.png"]}]))
    _assert_red_sample(load_dataset(path))


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"conversations": [{"from": "human", "value": "<image><image>q"}, {"from": "gpt", "value": "a"}],
          "images": ["images/a.png"]}, "record 1, field images: 2 <image> placeholders but 1 images"),
        ({"conversations": [{"from": "bot", "value": "q"}]}, "record 1, field conversations[0].from"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": 3}]},
         "record 1, field conversations[1].value: expected str, got int"),
        ({"images": []}, "record 1, field conversations: missing"),
    ],
)
def test_sharegpt_rejects_malformed_records(dataset_dir: Path, record: dict, expected: str) -> None:
    path = dataset_dir / "data.json"
    path.write_text(json.dumps([record]))
    assert expected in _error(path, "sharegpt")


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    assert _error(tmp_path / "nope.jsonl") == "nope.jsonl: file not found"
    (tmp_path / "data.xml").write_text("<x/>")
    assert "cannot tell the format of a .xml file" in _error(tmp_path / "data.xml")


@pytest.mark.parametrize("dataset_format", [None, "conversation", "openai", "sharegpt", "table"])
def test_a_directory_or_binary_file_is_a_format_error_not_a_crash(tmp_path: Path, dataset_format) -> None:
    (tmp_path / "not-a-dataset").mkdir()
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    for path in (tmp_path / "not-a-dataset", tmp_path / "binary.jsonl"):
        with pytest.raises(DatasetFormatError):
            load_dataset(path, dataset_format)
