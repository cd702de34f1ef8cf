"""Property-based: 2,000 random and malformed CreateFineTuningJob requests against a real server on port 0.
Every answer is INVALID_ARGUMENT or a created job (FAILED_PRECONDITION only for QLoRA on this CPU machine),
never INTERNAL; raw bytes that are no protobuf message at all get INVALID_ARGUMENT too."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer_service.auth.keys import KeyStore, mint_key, write_key_file
from trainer_service.grpc_api.auth_interceptor import ClientAuth
from trainer_service.grpc_api.server import create_server
from trainer_service.jobs import JobService
from trainer_service.path_roots import PathRoots
from trainer_service.store import JobStore
from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

CREATE_METHOD = "/vlmforge.trainer.v1.FineTuningService/CreateFineTuningJob"
INT32 = st.integers(-(2**31), 2**31 - 1)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # protobuf strings are UTF-8
FUZZ_SETTINGS = settings(max_examples=2000, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_dataset_dir: Path, tiny_model_dir: Path) -> dict[str, str]:
    """A two-record training file (validation stays quick), a broken one, and paths that must be refused."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(small_dataset_dir / "images", root / "images")
    records = (small_dataset_dir / "train.jsonl").read_text().splitlines()[:2]
    (root / "train.jsonl").write_text("\n".join(records) + "\n")
    (root / "broken.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}\n')
    escaping = json.loads(records[0])
    escaping["messages"][0]["content"][0]["image"] = "../../../../../etc/hostname"
    (root / "escaping.jsonl").write_text(json.dumps(escaping) + "\n")
    return {"model": str(tiny_model_dir), "train": str(root / "train.jsonl"), "broken": str(root / "broken.jsonl"),
            "escaping": str(root / "escaping.jsonl"), "missing": str(root / "missing.jsonl")}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    jobs = JobService(JobStore(tmp_path_factory.mktemp("fuzz-state") / "jobs.sqlite3"))
    running = create_server(jobs, "127.0.0.1:0", max_message_bytes=1024 * 1024)
    running.set_serving(True)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield trainer_pb2_grpc.FineTuningServiceStub(channel), channel
    running.server.stop(None)


def _paths(files: dict[str, str]):
    return st.sampled_from(["", files["train"], files["broken"], files["escaping"], files["missing"], "/etc/passwd",
                            "../../x.jsonl", files["model"]]) | TEXT


def _hyperparameters():
    numbers = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1e-4, 2e-4, 1.0, -1.0])
    small = st.integers(-3, 20) | INT32
    return st.fixed_dictionaries({}, optional={
        "epochs": small, "max_steps": small, "batch_size": small, "gradient_accumulation_steps": small,
        "learning_rate": numbers, "warmup_steps": small, "weight_decay": numbers, "scheduler": st.integers(-2, 6),
        "seed": st.integers(-(2**63), 2**63 - 1), "max_sequence_length": small, "lora_rank": small,
        "lora_alpha": numbers, "lora_dropout": numbers, "lora_target_modules": st.lists(TEXT, max_size=3),
        "finetune_vision_layers": st.booleans(), "finetune_language_layers": st.booleans(),
        "finetune_attention_modules": st.booleans(), "finetune_mlp_modules": st.booleans(),
        "eval_every_steps": small, "checkpoint_every_steps": small, "gradient_checkpointing": st.booleans(),
    })


@st.composite
def _requests(draw, files: dict[str, str]) -> pb.CreateFineTuningJobRequest:
    """A valid request with 0 to 4 of its fields replaced by random values, so that both answers happen often
    and each corruption is tried alone as well as together with others."""
    request = pb.CreateFineTuningJobRequest(model=files["model"], training_file=files["train"], suffix="fuzz")
    random_fields = {
        "model": lambda: st.sampled_from(["", "no-such-model", "/", "../" * 5]) | TEXT,
        "training_file": lambda: _paths(files), "validation_file": lambda: _paths(files),
        "test_file": lambda: _paths(files), "dataset_format": lambda: st.integers(-2, 8),
        "method": lambda: st.integers(-2, 5), "suffix": lambda: TEXT | st.sampled_from(["a" * 41, "-x", "A"]),
        "client_request_id": lambda: TEXT,
    }
    for name in draw(st.lists(st.sampled_from([*random_fields, "hyperparameters", "metadata", "columns"]),
                              max_size=4, unique=True)):
        if name == "hyperparameters":
            request.hyperparameters.CopyFrom(pb.Hyperparameters(**draw(_hyperparameters())))
        elif name == "metadata":
            request.metadata.update(draw(st.dictionaries(TEXT, TEXT, max_size=20)))
        elif name == "columns":
            request.columns.CopyFrom(pb.ColumnMapping(image=draw(TEXT), question=draw(TEXT), answer=draw(TEXT)))
        else:
            setattr(request, name, draw(random_fields[name]()))
    return request


def test_random_create_requests_get_invalid_argument_or_a_job(client, files) -> None:
    stub, _ = client

    outcomes: Counter[str] = Counter()

    @FUZZ_SETTINGS
    @given(request=_requests(files))
    def check(request: pb.CreateFineTuningJobRequest) -> None:
        try:
            job = stub.CreateFineTuningJob(request, timeout=30)
        except grpc.RpcError as error:
            allowed = {grpc.StatusCode.INVALID_ARGUMENT}
            if request.method == pb.FINE_TUNING_METHOD_QLORA:
                allowed.add(grpc.StatusCode.FAILED_PRECONDITION)  # QLoRA needs CUDA: this machine has none
            assert error.code() in allowed, (error.code(), error.details(), request)
            outcomes[error.code().name] += 1
            return
        assert job.status == pb.JOB_STATUS_QUEUED and job.id
        assert request.training_file == files["train"], "only the readable dataset can make a job"
        outcomes["created"] += 1

    check()
    assert outcomes["created"] >= 100 and outcomes["INVALID_ARGUMENT"] >= 1000, outcomes


@pytest.fixture(scope="module")
def auth_client(tmp_path_factory, files, tiny_model_dir: Path):
    """API keys on, datasets confined to <data root>/<project>/ (the fuzz files' directory), models to the tiny
    model's parent: a valid key, a revoked one and a malformed one."""
    data_dir = Path(files["train"]).parent
    state = tmp_path_factory.mktemp("fuzz-auth")
    key, entry = mint_key(data_dir.name)
    revoked, revoked_entry = mint_key(data_dir.name)
    write_key_file(state / "keys.json", {entry.id: entry, revoked_entry.id: replace(revoked_entry, revoked=True)})
    jobs = JobService(JobStore(state / "jobs.sqlite3"), roots=PathRoots(data_dir.parent, tiny_model_dir.parent,
                                                                        required=True))
    running = create_server(jobs, "127.0.0.1:0", max_message_bytes=1024 * 1024,
                            auth=ClientAuth(KeyStore(state / "keys.json")))
    running.set_serving(True)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield trainer_pb2_grpc.FineTuningServiceStub(channel), [key, revoked, key[:-1], "", "x" * 300]
    running.server.stop(None)


def test_random_create_requests_with_api_keys_on_never_get_internal(auth_client, files) -> None:
    stub, keys = auth_client
    outcomes: Counter[str] = Counter()
    header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)  # what HTTP/2 sends

    @settings(FUZZ_SETTINGS, max_examples=300)
    @given(request=_requests(files), key=st.sampled_from(keys) | header_text,
           scheme=st.sampled_from(["Bearer ", "bearer ", "", "Basic "]))
    def check(request: pb.CreateFineTuningJobRequest, key: str, scheme: str) -> None:
        try:
            stub.CreateFineTuningJob(request, metadata=(("authorization", scheme + key),), timeout=30)
            outcomes["created"] += 1
        except grpc.RpcError as error:
            allowed = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED}
            if request.method == pb.FINE_TUNING_METHOD_QLORA:
                allowed.add(grpc.StatusCode.FAILED_PRECONDITION)
            assert error.code() in allowed, (error.code(), error.details(), request)
            if error.code() is grpc.StatusCode.UNAUTHENTICATED:
                assert not (key == keys[0] and scheme.lower() == "bearer "), error.details()
            outcomes[error.code().name] += 1

    check()
    assert outcomes["created"] >= 10 and outcomes["UNAUTHENTICATED"] >= 50, outcomes


def test_bytes_that_are_no_message_get_invalid_argument(client) -> None:
    _, channel = client
    create = channel.unary_unary(CREATE_METHOD, request_serializer=None, response_deserializer=None)

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(raw=st.binary(max_size=200))
    def check(raw: bytes) -> None:
        with pytest.raises(grpc.RpcError) as info:
            create(raw, timeout=30)  # parses or not, it never names a readable model and dataset
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (raw, info.value.details())

    check()
    with pytest.raises(grpc.RpcError) as info:
        create(b"\x0a\xff\xff\xff\xff\x0f", timeout=30)  # a string field claiming 4 GiB of bytes
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in info.value.details()


def test_an_image_path_leaving_the_dataset_directory_fails_validation(client, files) -> None:
    stub, _ = client
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateFineTuningJob(pb.CreateFineTuningJobRequest(model=files["model"], training_file=files["escaping"]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "leaves the dataset directory" in info.value.details() and "line 1" in info.value.details()
