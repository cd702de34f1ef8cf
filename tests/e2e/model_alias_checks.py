"""Model aliases against the real services: test_inference_service's inference service (its API frontends, the
tiny model) and a real trainer service (gRPC; its local launcher runs each job's worker process, which pushes the
adapter to the inference admin API and then applies the alias gate), both on one artifact store. The tests are
imported into test_inference_service.py, so its one vLLM engine serves them too (no second engine start).

The two fine-tunes are ordered by what they learn, and each run checks the order: both train on records whose
every answer is "red" and are scored on 8 other questions whose answer is "red". Twelve steps at 2e-2 learn to
say it (exact match above the base's, which answers ""); one step at 1e-6 leaves the base's answers: worse.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vlmforge.processes import start_and_wait, stop
from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

TRAINER_READY = re.compile(rb"trainer listening on ([\d.]+:\d+), metrics on")
ALIAS = "chartqa"
BETTER = pb.Hyperparameters(max_steps=12, batch_size=2, learning_rate=2e-2, seed=0)
WORSE = pb.Hyperparameters(max_steps=1, batch_size=1, learning_rate=1e-6, seed=0)
CLIENTS = 32
# Until the job has ended (the switch included) each caller asks once every PACE_S: 32 callers at one request a
# second took both of CI's cores from the training (40x slower per step), and from the worker's save, merge and
# push after it (niced, it starved until the watch timed out).
PACE_S = 10.0


def _host():
    """test_inference_service, which imports this module: its key, token and admin helper."""
    from . import test_inference_service

    return test_inference_service


def _answered_red(source: Path, target: Path, count: int) -> Path:
    """`count` records of a conversation JSONL file (our documented format) with the answer set to "red", and
    their images beside the copy."""
    lines = []
    for line in source.read_text().splitlines()[:count]:
        record = json.loads(line)
        record["messages"][-1]["content"] = [{"type": "text", "text": "red"}]
        for part in record["messages"][0]["content"]:
            if part.get("type") == "image":
                (target.parent / part["image"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.parent / part["image"], target.parent / part["image"])
        lines.append(json.dumps(record))
    target.write_text("\n".join(lines) + "\n")
    return target


class AliasRun:
    """The trainer service on the inference service's artifact store, and a way to run one job to its end."""

    def __init__(self, address: str, model: str, training_file: Path, test_file: Path):
        self.channel = grpc.insecure_channel(address)
        self.stub = trainer_pb2_grpc.FineTuningServiceStub(self.channel)
        self.model, self.training_file, self.test_file = model, str(training_file), str(test_file)
        self.trained: dict[str, str] = {}  # "better" / "worse" -> fine_tuned_model, for the tests after

    def request(self, hyperparameters: pb.Hyperparameters, **fields) -> pb.CreateFineTuningJobRequest:
        return pb.CreateFineTuningJobRequest(model=self.model, training_file=self.training_file,
                                             test_file=self.test_file, hyperparameters=hyperparameters, **fields)

    def run(self, hyperparameters: pb.Hyperparameters) -> tuple[pb.FineTuningJob, list[pb.FineTuningJobEvent]]:
        job = self.stub.CreateFineTuningJob(self.request(
            hyperparameters, promote_to_alias=pb.AliasPromotion(alias=ALIAS, metric="exact_match")))
        assert job.promote_to_alias.alias == ALIAS and job.promote_to_alias.metric == "exact_match"
        events = list(self.stub.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job.id), timeout=600))
        job = self.stub.GetFineTuningJob(pb.GetFineTuningJobRequest(id=job.id))
        assert job.status == pb.JOB_STATUS_SUCCEEDED, [e.message for e in events]
        return job, events


@pytest.fixture(scope="module")
def alias_run(admin_url: str, artifacts, tiny_model_dir: Path, small_dataset_dir: Path, tmp_path_factory):
    root, _ = artifacts
    directory = tmp_path_factory.mktemp("aliases")
    training = _answered_red(small_dataset_dir / "train.jsonl", directory / "train-red.jsonl", 16)
    test = _answered_red(small_dataset_dir / "test.jsonl", directory / "test-red.jsonl", 8)
    process, ready = start_and_wait(
        ["-m", "trainer_service", "--grpc-port", "0", "--metrics-port", "0", "--state-dir", str(directory / "state"),
         "--artifacts-dir", str(root), "--inference-admin-url", admin_url,
         "--inference-admin-token", _host().ADMIN_TOKEN, "--drain-announce-s", "0", "--drain-timeout-s", "5"],
        directory / "trainer.log", TRAINER_READY)
    run = AliasRun(ready.group(1).decode(), str(tiny_model_dir), training, test)
    yield run
    run.channel.close()
    assert stop(process) == 0, (directory / "trainer.log").read_text()[-3000:]


def _decision(events: list[pb.FineTuningJobEvent]) -> pb.FineTuningJobEvent:
    (decision,) = [e for e in events if e.WhichOneof("payload") == "alias_decision"]
    return decision


class _Callers:
    """CLIENTS official openai clients, each asking for the alias in a loop from its own connection: what model
    answered each request, and every error."""

    def __init__(self, server: str):
        self.clients = [openai.OpenAI(base_url=server + "/v1", api_key=_host().API_KEY, max_retries=0, timeout=120)
                        for _ in range(CLIENTS)]
        self.answered: list[list[str]] = [[] for _ in range(CLIENTS)]
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.hurry = threading.Event()  # set once the job has ended: until then one request every PACE_S each
        self.pool = ThreadPoolExecutor(CLIENTS)
        self.futures = []

    def start(self) -> None:
        self.futures = [self.pool.submit(self._call, i) for i in range(CLIENTS)]

    def _call(self, index: int) -> None:
        client = self.clients[index]
        while not self.stopping.is_set():
            try:
                reply = client.chat.completions.create(model=ALIAS, max_tokens=1, temperature=0, messages=[
                    {"role": "user", "content": "What color is the shortest bar?"}])
                self.answered[index].append(reply.model)
            except Exception as error:  # noqa: BLE001 - every error is a failure, collected for the message
                self.errors.append(f"client {index}: {type(error).__name__}: {error}")
            self.hurry.wait(PACE_S)  # training shares the CPU meanwhile

    def wait_until_all_see(self, model: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(a and a[-1] == model for a in self.answered):
            time.sleep(0.1)

    def stop(self) -> None:
        self.stopping.set()
        self.hurry.set()  # wakes the callers still pacing
        for future in self.futures:
            future.result()
        self.pool.shutdown()
        for client in self.clients:
            client.close()


def test_a_job_asking_for_an_alias_is_checked_naming_the_field(alias_run: AliasRun) -> None:
    for promotion, fields, named in (
            (pb.AliasPromotion(alias="Chart QA"), {}, "promote_to_alias.alias"),
            (pb.AliasPromotion(alias=ALIAS, metric="accuracy"), {}, "promote_to_alias.metric"),
            (pb.AliasPromotion(alias=ALIAS), {"test_file": ""}, "test_file")):
        request = alias_run.request(WORSE, promote_to_alias=promotion)
        for name, value in fields.items():
            setattr(request, name, value)
        with pytest.raises(grpc.RpcError) as error:
            alias_run.stub.CreateFineTuningJob(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error.value.details().startswith(named)


def test_a_better_fine_tune_moves_the_alias_under_32_callers_and_a_worse_one_does_not(
        alias_run: AliasRun, server: str, admin_url: str) -> None:
    admin = _host()._admin
    assert admin(admin_url, "PUT", f"/aliases/{ALIAS}", json={"target": "tiny"}).json()["target"] == "tiny"
    callers = _Callers(server)
    callers.start()  # before the job: every caller is served by the base first
    try:
        better, events = alias_run.run(BETTER)
        callers.hurry.set()
        callers.wait_until_all_see(better.fine_tuned_model)
    finally:
        callers.stop()
    assert not callers.errors, callers.errors[:5]
    # Each caller's requests are sequential: once one was served by the new adapter, none after it by the base.
    for answered in callers.answered:
        assert better.fine_tuned_model in answered, f"a caller was never served by the new adapter: {answered}"
        switched = answered.index(better.fine_tuned_model)
        assert set(answered[:switched]) <= {"tiny"} and set(answered[switched:]) == {better.fine_tuned_model}
    assert all(answered[0] == "tiny" for answered in callers.answered), "a caller was not served before the switch"
    assert better.evaluation_after.exact_match > better.evaluation_before.exact_match, "the better one is not"
    promoted = _decision(events).alias_decision
    assert promoted.promoted and promoted.current_target == "" and promoted.alias_version == 2
    assert promoted.candidate_score == better.evaluation_after.exact_match
    assert promoted.current_score == better.evaluation_before.exact_match  # the base, on this same test set

    alias_run.trained["better"] = better.fine_tuned_model
    worse, events = alias_run.run(WORSE)
    alias_run.trained["worse"] = worse.fine_tuned_model
    assert worse.evaluation_after.exact_match < better.evaluation_after.exact_match, "the worse one is not"
    refused = _decision(events)
    assert not refused.alias_decision.promoted and refused.alias_decision.current_target == better.fine_tuned_model
    assert refused.alias_decision.current_score == better.evaluation_after.exact_match
    assert refused.message == (
        f"{worse.fine_tuned_model} not promoted to alias {ALIAS}: exact_match "
        f"{worse.evaluation_after.exact_match:.4f} < {better.evaluation_after.exact_match:.4f} of the current target "
        f"{better.fine_tuned_model} on the same test set")
    shown = admin(admin_url, "GET", f"/aliases/{ALIAS}").json()
    assert shown["target"] == better.fine_tuned_model and [v["action"] for v in shown["history"]] == ["set",
                                                                                                     "promote"]


def test_rollback_restores_the_previous_adapter_and_every_frontend_lists_and_reports_it(
        alias_run: AliasRun, server: str, admin_url: str) -> None:
    admin = _host()._admin
    if set(alias_run.trained) != {"better", "worse"}:
        pytest.skip("needs both fine-tunes of the test before it, which failed")
    better, worse = alias_run.trained["better"], alias_run.trained["worse"]
    before = admin(admin_url, "GET", f"/aliases/{ALIAS}").json()["history"]
    assert before[-1]["target"] == better, before
    assert admin(admin_url, "PUT", f"/aliases/{ALIAS}", json={"target": worse, "reason": "by hand"}).json()[
        "target"] == worse
    rolled = admin(admin_url, "POST", f"/aliases/{ALIAS}/rollback", json={}).json()
    assert rolled["target"] == better and rolled["version"] == len(before) + 2
    shown = admin(admin_url, "GET", f"/aliases/{ALIAS}").json()["history"]
    assert [(v["action"], v["target"]) for v in shown[len(before):]] == [("set", worse), ("rollback", better)]
    assert shown[-1]["restores"] == before[-1]["version"]
    # Fresh connections land on the frontends in turn: each must answer, list and report the same.
    headers = {"Authorization": f"Bearer {_host().API_KEY}"}
    for _ in range(6):
        with httpx.Client(base_url=server, headers=headers, timeout=120) as fresh:
            reply = fresh.post("/v1/chat/completions", json={"model": ALIAS, "max_tokens": 1, "messages": [
                {"role": "user", "content": "What color is the shortest bar?"}]})
            assert reply.status_code == 200 and reply.json()["model"] == better, reply.text
            cards = {card["id"]: card for card in fresh.get("/v1/models").json()["data"]}
            assert cards[ALIAS]["parent"] == better and "tiny" in cards
            info = {sample.labels["adapter"]: sample.value
                    for family in text_string_to_metric_families(fresh.get("/metrics").text)
                    for sample in family.samples
                    if sample.name == "vlmforge_inference_alias_info" and sample.labels["alias"] == ALIAS}
            assert info.get(better) == 1 and info.get(worse, 0) == 0 and info.get("tiny", 0) == 0, info
