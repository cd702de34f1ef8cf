"""The Server-Timing header (W3C Server Timing: `name;dur=ms`, comma-separated) and the stage histogram."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from inference_service.metrics import InferenceMetrics
from inference_service.stage_timing import HEADER, ServerTimingSend, StageTimes, parse_server_timing, stage


def test_stages_keep_their_order_add_up_when_repeated_and_format_as_w3c_server_timing() -> None:
    times = StageTimes()
    with times.stage("parse"):
        time.sleep(0.002)
    times.add("decode", 0.0015)
    times.add("decode", 0.0005)
    with stage(None, "ignored"):  # nobody timing: a no-op
        pass
    value = times.header_value()
    assert [metric.split(";")[0] for metric in value.split(", ")] == ["parse", "decode"]
    assert value.endswith("decode;dur=2.000")
    parsed = parse_server_timing(value)
    assert parsed["parse"] >= 2.0 and parsed["decode"] == 2.0


def test_parse_reads_the_spec_forms_other_servers_send() -> None:
    parsed = parse_server_timing('cache;desc="Cache Read";dur=23.2, db;dur=53, app;dur=47.2 ,miss')
    assert parsed == {"cache": 23.2, "db": 53.0, "app": 47.2, "miss": 0.0}


def _response(stream: bool, messages: list[dict]) -> tuple[list[dict], CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = InferenceMetrics(registry)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> None:
        times = StageTimes()
        times.add("parse", 0.001)
        wrapped = ServerTimingSend(send, times, metrics.stage_seconds, stream=stream)
        for message in messages:
            if message["type"] == "http.response.body":
                assert sent == [] or sent[0]["type"] == "http.response.start"
            await wrapped.send(message)
            if message["type"] == "http.response.start":
                assert sent == [], "the start waits for the first body chunk"
        await wrapped.flush()

    asyncio.run(run())
    return sent, registry


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}


def test_a_stream_gets_the_header_with_its_first_chunk_and_every_stage_is_observed() -> None:
    chunks = [{"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True},
              {"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False}]
    sent, registry = _response(True, [START, *chunks])
    assert [message["type"] for message in sent] == ["http.response.start", *(c["type"] for c in chunks)]
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == b"text/event-stream" and sent[0]["status"] == 200
    stages = parse_server_timing(headers[HEADER].decode())
    assert list(stages) == ["parse", "vllm_render", "vllm_engine", "total"]
    assert stages["parse"] == 1.0 and stages["total"] >= stages["vllm_render"] + stages["vllm_engine"] - 0.002
    for name in stages:
        assert registry.get_sample_value("vlmforge_inference_stage_seconds_count", {"stage": name}) == 1


def test_a_whole_response_times_vllm_as_one_stage_and_a_bodiless_start_still_goes_out() -> None:
    sent, _ = _response(False, [START, {"type": "http.response.body", "body": b"{}"}])
    assert list(parse_server_timing(dict(sent[0]["headers"])[HEADER].decode())) == ["parse", "vllm", "total"]
    sent, _ = _response(False, [START])
    assert [message["type"] for message in sent] == ["http.response.start"] and HEADER in dict(sent[0]["headers"])
