"""Our inference service against a plain `vllm serve` of the same model with the same engine flags, in one
run on one machine: requests/s, time to first token and end-to-end latency (p50/p99) at 1, 8 and 32
concurrent streaming clients, each request one image and exactly --output-tokens tokens; then adapter load
time (ours: the admin endpoint; plain: vLLM's /v1/load_lora_adapter). Servers run one at a time, so they
never share the CPU.

    .venv/bin/python bench/inference_overhead.py --model MODEL_DIR --data-dir DATA_DIR [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from inference_service.chat_checks import ChatLimits, check_chat_body, materialise_images
from inference_service.media import ImageLimits, MediaUrlPolicy
from inference_service.server import vllm_argv
from inference_service.settings import InferenceSettings
from vlmforge.processes import stop

CONCURRENCY = (1, 8, 32)
ADMIN_TOKEN = "bench-admin-token"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--requests-per-client", type=int, default=6)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="plain/ours alternations, to average out drift")
    args = parser.parse_args()
    image = sorted((args.data_dir / "images" / "test").glob("*.png"))[0].read_bytes()
    image_url = "data:image/png;base64," + base64.b64encode(image).decode()
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = make_artifacts(args.model, args.data_dir, Path(scratch),
                                   [f"bench-adapter-{index}" for index in range(args.adapters)])
        results: dict[str, list[dict]] = {"plain vLLM": [], "vlmforge": []}
        for _ in range(args.rounds):
            for name in results:
                results[name].append(asyncio.run(_measure(name, args, artifacts, image_url, Path(scratch))))
    _print(results, args, guard_cost_s(image_url))


def make_artifacts(model: Path, data_dir: Path, scratch: Path, names: list[str]) -> Path:
    """A real 3-step fine-tune, copied under each of `names` (distinct adapters to load); returns the store."""
    from trainer_service.domain import JobStatus
    from trainer_service.job_spec import Hyperparameters, JobSpec
    from trainer_service.jobs import JobService
    from trainer_service.store import JobStore
    from trainer_service.worker.run import run_job

    store = JobStore(scratch / "jobs.sqlite3")
    job = JobService(store).create(JobSpec(str(model), str(data_dir / "train.jsonl"),
                                           hyperparameters=Hyperparameters(max_steps=3, batch_size=2)))
    store.transition(job.id, JobStatus.RUNNING, "bench")
    run_job(store, job.id, scratch)
    root = scratch / "artifacts"
    trained = root / store.get_job(job.id).result["fine_tuned_model"]
    for name in names:
        shutil.copytree(trained, root / name)
    return root


async def _measure(name: str, args, artifacts: Path, image_url: str, scratch: Path) -> dict:
    port = _free_port()
    settings = InferenceSettings(base_model=str(args.model), served_model_name="base", port=port,
                                 artifacts_dir=artifacts, vllm_args="--max-num-seqs 32")
    if name == "plain vLLM":
        command = ["-m", "vllm.entrypoints.openai.api_server", *vllm_argv(settings)]
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    else:
        command = ["-m", "inference_service", "--base-model", str(args.model), "--served-model-name", "base",
                   "--port", str(port), "--artifacts-dir", str(artifacts), "--admin-token", ADMIN_TOKEN,
                   "--vllm-args", "--max-num-seqs 32"]
        env = dict(os.environ)
    log = open(scratch / f"{name.replace(' ', '-')}-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen([sys.executable, *command], stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(base, process)
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300) as client:
            # Warm-up at the highest concurrency: the first bursts after a start run markedly slower.
            await _level(client, image_url, args.output_tokens, max(CONCURRENCY), 2)
            levels = {c: await _level(client, image_url, args.output_tokens, c, args.requests_per_client)
                      for c in CONCURRENCY}
        loads = await _adapter_loads(name, base, args.adapters, artifacts)
    finally:
        stop(process)
        log.close()
    return {"levels": levels, "adapter_load_s": loads}


async def _wait_healthy(base: str, process: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            assert process.poll() is None, "server exited during start"
            try:
                if (await http.get(base + "/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(base)


async def _one(client: openai.AsyncOpenAI, image_url: str, output_tokens: int) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    stream = await client.chat.completions.create(
        model="base", max_tokens=output_tokens, stream=True, temperature=0,
        extra_body={"ignore_eos": True, "min_tokens": output_tokens},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                               {"type": "text", "text": "What color is the tallest bar?"}]}])
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    return first or 0.0, time.perf_counter() - started


async def _level(client, image_url: str, output_tokens: int, concurrency: int, per_client: int) -> dict:
    async def worker() -> list[tuple[float, float]]:
        return [await _one(client, image_url, output_tokens) for _ in range(per_client)]

    started = time.perf_counter()
    timings = [t for batch in await asyncio.gather(*(worker() for _ in range(concurrency))) for t in batch]
    elapsed = time.perf_counter() - started
    ttft, e2e = sorted(t for t, _ in timings), sorted(e for _, e in timings)
    return {"rps": len(timings) / elapsed, "ttft_p50": _pct(ttft, 50), "ttft_p99": _pct(ttft, 99),
            "e2e_p50": _pct(e2e, 50), "e2e_p99": _pct(e2e, 99)}


async def _adapter_loads(name: str, base: str, count: int, artifacts: Path) -> list[float]:
    seconds = []
    async with httpx.AsyncClient(timeout=120) as http:
        for index in range(count):
            adapter = f"bench-adapter-{index}"
            started = time.perf_counter()
            if name == "plain vLLM":
                reply = await http.post(base + "/v1/load_lora_adapter", json={
                    "lora_name": adapter, "lora_path": str(artifacts / adapter / "adapter")})
            else:
                reply = await http.post(base + "/admin/v1/adapters", json={"name": adapter},
                                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            reply.raise_for_status()
            seconds.append(time.perf_counter() - started)
    return seconds


def _pct(values: list[float], percentile: int) -> float:
    return values[min(len(values) - 1, round(percentile / 100 * (len(values) - 1)))]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def guard_cost_s(image_url: str, iterations: int = 2000) -> float:
    """CPU time our layer adds to one chat request before vLLM sees it (parse, checks, image check, re-encode),
    measured in this process: the deterministic part of the overhead, free of the engine's noise."""
    body = json.dumps({"model": "base", "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": "What color is it?"}]}]})
    limits, policy = ChatLimits(4, 8, 4096), MediaUrlPolicy(frozenset())
    image_limits = ImageLimits(10 * 1024 * 1024, 16_000_000)

    async def one() -> None:
        parsed = json.loads(body)
        await materialise_images(check_chat_body(parsed, limits), policy, image_limits, 10.0)
        json.dumps(parsed).encode()

    async def run() -> float:
        await one()
        started = time.process_time()  # CPU time of this process, threads included
        for _ in range(iterations):
            await one()
        return (time.process_time() - started) / iterations

    return asyncio.run(run())


def _print(results: dict[str, list[dict]], args, guard_s: float) -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.output_tokens} output tokens, one image, {args.rounds} rounds (median of rounds)")
    print("| clients | server | requests/s | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms "
          "| requests/s by round |")
    print("|---|---|---|---|---|---|---|---|")
    for concurrency in CONCURRENCY:
        medians = {name: {key: statistics.median(run["levels"][concurrency][key] for run in runs)
                          for key in ("rps", "ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99")}
                   for name, runs in results.items()}
        for name, m in medians.items():
            rounds = ", ".join(f"{run['levels'][concurrency]['rps']:.1f}" for run in results[name])
            print(f"| {concurrency} | {name} | {m['rps']:.2f} | {1000 * m['ttft_p50']:.0f} | "
                  f"{1000 * m['ttft_p99']:.0f} | {1000 * m['e2e_p50']:.0f} | {1000 * m['e2e_p99']:.0f} | {rounds} |")
        ratio = medians["vlmforge"]["rps"] / medians["plain vLLM"]["rps"]
        print(f"| {concurrency} | **ratio vlmforge / plain** | **{ratio:.3f}** | | | | | |")
    for name, runs in results.items():
        loads = sorted(s for run in runs for s in run["adapter_load_s"])
        print(f"adapter load, {name}: p50 {1000 * statistics.median(loads):.0f} ms, max {1000 * max(loads):.0f} ms "
              f"({len(loads)} loads)")
    best_plain_rps = max(run["levels"][c]["rps"] for run in results["plain vLLM"] for c in CONCURRENCY)
    print(f"guard CPU time per request: {1e6 * guard_s:.0f} us = {100 * guard_s * best_plain_rps:.1f}% of the "
          f"time plain vLLM spends per request at its best throughput ({best_plain_rps:.1f} requests/s)")


if __name__ == "__main__":
    main()
