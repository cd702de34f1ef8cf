"""Load with adapter churn: N concurrent clients for a bounded time against the inference service, asking the
base model and two adapters in turn (half the requests streamed), while a third adapter is loaded and unloaded
every few seconds through the admin API. Counts every request's outcome: 5xx, other errors, lost (no complete
answer) and duplicated response ids must all be zero; prints latency p50/p99 per model.

    .venv/bin/python bench/load_mixed.py --model MODEL_DIR --data-dir DATA_DIR [--clients 32 --duration-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import openai

from inference_overhead import make_artifacts  # noqa: E402 - bench/ is on sys.path when run as a script
from vlmforge.processes import start_and_wait, stop

ADMIN_TOKEN = "load-admin-token"
READY = re.compile(rb"inference service listening on http://127\.0\.0\.1:(\d+)")
ADAPTERS, CHURNED = ("adapter-a", "adapter-b"), "adapter-churn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=60)
    parser.add_argument("--churn-every-s", type=float, default=5)
    parser.add_argument("--output-tokens", type=int, default=16)
    args = parser.parse_args()
    image = sorted((args.data_dir / "images" / "test").glob("*.png"))[0].read_bytes()
    image_url = "data:image/png;base64," + base64.b64encode(image).decode()
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = make_artifacts(args.model, args.data_dir, Path(scratch), [*ADAPTERS, CHURNED])
        process, ready = start_and_wait(
            ["-m", "inference_service", "--base-model", str(args.model), "--served-model-name", "base",
             "--port", "0", "--artifacts-dir", str(artifacts), "--admin-token", ADMIN_TOKEN,
             "--vllm-args", f"--max-num-seqs {args.clients}"], Path(scratch) / "inference.log", READY)
        try:
            report = asyncio.run(_run(f"http://127.0.0.1:{int(ready.group(1))}", image_url, args))
        finally:
            exit_code = stop(process)
        log = (Path(scratch) / "inference.log").read_text().splitlines()
    failed = _print(report, args, exit_code)
    first_error = next((index for index, line in enumerate(log) if " ERROR " in line), None)
    if failed and first_error is not None:
        print("service log around its first ERROR line:", *log[max(0, first_error - 15):first_error + 40], sep="\n  ")


async def _run(base: str, image_url: str, args) -> dict:
    admin = httpx.AsyncClient(base_url=base + "/admin/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                              timeout=120)
    async with admin, openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0,
                                         timeout=300) as client:
        for name in ADAPTERS:
            (await admin.post("/adapters", json={"name": name})).raise_for_status()
        deadline = time.monotonic() + args.duration_s
        outcomes: list[dict] = []
        churn = asyncio.create_task(_churn(admin, deadline, args.churn_every_s))
        started = time.monotonic()
        await asyncio.gather(*(_client(client, image_url, index, deadline, args.output_tokens, outcomes)
                               for index in range(args.clients)))
        elapsed = time.monotonic() - started
        churn_ops = await churn
    return {"outcomes": outcomes, "elapsed_s": elapsed, "churn": churn_ops}


async def _client(client: openai.AsyncOpenAI, image_url: str, index: int, deadline: float, output_tokens: int,
                  outcomes: list[dict]) -> None:
    models = ["base", *ADAPTERS]
    sent = 0
    while time.monotonic() < deadline:
        model, stream = models[(index + sent) % len(models)], (index + sent) % 2 == 0
        sent += 1
        started = time.perf_counter()
        outcome = {"model": model, "stream": stream, "status": 200, "id": None, "tokens": 0}
        try:
            kwargs = dict(model=model, max_tokens=output_tokens, temperature=0,
                          extra_body={"ignore_eos": True, "min_tokens": output_tokens},
                          messages=[{"role": "user", "content": [
                              {"type": "image_url", "image_url": {"url": image_url}},
                              {"type": "text", "text": "What color is the tallest bar?"}]}])
            if stream:
                reply = await client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                             **kwargs)
                async for chunk in reply:
                    outcome["id"] = chunk.id
                    if chunk.usage:
                        outcome["tokens"] = chunk.usage.completion_tokens
            else:
                reply = await client.chat.completions.create(**kwargs)
                outcome["id"], outcome["tokens"] = reply.id, reply.usage.completion_tokens
        except openai.APIStatusError as error:
            outcome["status"], outcome["error"] = error.status_code, str(error.message)[:300]
        except openai.APIError as error:
            outcome["status"] = f"error: {type(error).__name__}"
        outcome["latency_s"] = time.perf_counter() - started
        outcomes.append(outcome)


async def _churn(admin: httpx.AsyncClient, deadline: float, every_s: float) -> list[tuple[str, int, float]]:
    """Load, then unload, the churned adapter every `every_s` seconds; returns (operation, status, seconds)."""
    operations = []
    loaded = False
    while time.monotonic() + every_s < deadline:
        await asyncio.sleep(every_s)
        started = time.perf_counter()
        if loaded:
            reply = await admin.delete(f"/adapters/{CHURNED}")
        else:
            reply = await admin.post("/adapters", json={"name": CHURNED})
        operations.append(("unload" if loaded else "load", reply.status_code, time.perf_counter() - started))
        loaded = not loaded
    return operations


def _pct(values: list[float], percentile: int) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(percentile / 100 * (len(values) - 1)))]


def _print(report: dict, args, exit_code: int) -> int:
    """Prints the report; returns how many requests did not get a complete answer."""
    outcomes = report["outcomes"]
    statuses = Counter(o["status"] for o in outcomes)
    complete = [o for o in outcomes if o["status"] == 200 and o["tokens"] == args.output_tokens]
    ids = Counter(o["id"] for o in complete)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}; {args.clients} clients for {args.duration_s:.0f} s, {args.output_tokens} "
          f"output tokens, one image; adapter churn every {args.churn_every_s:.0f} s")
    print(f"requests: {len(outcomes)} ({len(outcomes) / report['elapsed_s']:.1f}/s), statuses {dict(statuses)}")
    print(f"5xx: {sum(1 for s in statuses.elements() if isinstance(s, int) and s >= 500)}, "
          f"lost (no complete answer): {len(outcomes) - len(complete)}, "
          f"duplicated response ids: {sum(count - 1 for count in ids.values() if count > 1)}")
    for message, count in Counter(o["error"] for o in outcomes if "error" in o).most_common(5):
        print(f"  {count} x {message}")
    by_model = defaultdict(list)
    for outcome in complete:
        by_model[outcome["model"]].append(outcome["latency_s"])
    print("| model | requests | latency p50 ms | latency p99 ms |")
    print("|---|---|---|---|")
    for model, latencies in sorted(by_model.items()):
        print(f"| {model} | {len(latencies)} | {1000 * statistics.median(latencies):.0f} | "
              f"{1000 * _pct(latencies, 99):.0f} |")
    churn = report["churn"]
    print(f"churn: {len(churn)} operations, statuses {dict(Counter(status for _, status, _ in churn))}, "
          f"p50 {1000 * statistics.median(s for _, _, s in churn):.0f} ms" if churn else "churn: none")
    print(f"service exit code after SIGTERM: {exit_code}")
    return len(outcomes) - len(complete)


if __name__ == "__main__":
    main()
