"""Where one chat request's time to first token goes (issue 18, item 5): N sequential single-client streaming
requests, each with a fresh random image (448 px, then 1344 px), against our inference service; prints each
stage of the Server-Timing header the service sends (p50 / p90 ms, share of the client-measured TTFT), vLLM's own
engine split (queue, prefill) read from its Prometheus histograms around each request, and the client's TTFT.

With `--baseline-ref REF` the service as of git REF (a worktree, run beside this one) answers the same requests,
alternated one by one with ours, so both see the same machine noise: its client TTFT is the "before".

    .venv/bin/python bench/ttft_breakdown.py --model MODEL_DIR [--requests 30] [--baseline-ref REF]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from inference_service.media import ImageLimits, check_image, decode_data_url
from inference_service.stage_timing import parse_server_timing
from vlmforge.processes import stop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_overhead import _free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES_PX = (448, 1344)
# vLLM's per-request engine times, summed over requests: sequential requests make each delta one request's time.
# vLLM stamps a request's arrival as its renderer starts (inside vllm_render), so its TTFT overlaps both vllm stages.
VLLM_SUMS = {"vllm:time_to_first_token_seconds_sum": "vLLM's own TTFT (render start to first token)",
             "vllm:request_queue_time_seconds_sum": "  of which queue (vLLM)",
             "vllm:request_prefill_time_seconds_sum": "  of which prefill, scheduled to first token (vLLM)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / ".cache/vlmforge/models/tiny-qwen2-vl")
    parser.add_argument("--requests", type=int, default=30, help="per image size (the large one gets a third)")
    parser.add_argument("--output-tokens", type=int, default=4)
    parser.add_argument("--baseline-ref", help="git ref of the service to compare against, e.g. HEAD~1")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="ttft-") as scratch:
        servers = {"ours": _start(args.model, ROOT, Path(scratch))}
        if args.baseline_ref:
            servers["baseline"] = _start(args.model, _worktree(args.baseline_ref, Path(scratch)), Path(scratch))
        try:
            for base, _ in servers.values():
                _wait_healthy(base)
            results = {}
            for size in SIZES_PX:
                count = args.requests if size == SIZES_PX[0] else max(3, args.requests // 3)
                results[size] = _measure(servers, size, count, args.output_tokens, rng)
        finally:
            for _, process in servers.values():
                stop(process)
            if args.baseline_ref:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(scratch) / "base")],
                               check=False, capture_output=True)
    _print(results, args)
    _print_candidate_cuts(rng)


def _start(model: Path, source: Path, scratch: Path) -> tuple[str, subprocess.Popen]:
    port = _free_port()
    log = open(scratch / f"server-{port}.log", "wb")  # noqa: SIM115 - closed with the process
    # Two engines side by side on a CPU machine: each keeps a 1 GiB KV cache, not vLLM's default 15% of RAM.
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", **os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "inference_service", "--base-model", str(model),
                                "--served-model-name", "base", "--port", str(port)], cwd=source, stdout=log,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return f"http://127.0.0.1:{port}", process


def _worktree(ref: str, scratch: Path) -> Path:
    path = scratch / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    return path


def _wait_healthy(base: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(base)


def _image_url(rng: np.random.Generator, size_px: int) -> str:
    """A fresh random image: no cache anywhere can have seen it, and PNG cannot shrink it (the worst case)."""
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size_px, size_px, 3), dtype=np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _measure(servers: dict, size_px: int, count: int, output_tokens: int, rng: np.random.Generator) -> dict:
    rows: dict[str, list[dict]] = {name: [] for name in servers}
    with httpx.Client(timeout=300) as http:
        for index in range(count + 1):  # the first is a warm-up, not counted
            url = _image_url(rng, size_px)
            for name, (base, _) in servers.items():
                row = _one(http, base, url, output_tokens)
                if index:
                    rows[name].append(row)
    return rows


def _one(http: httpx.Client, base: str, image_url: str, output_tokens: int) -> dict:
    body = {"model": "base", "max_tokens": output_tokens, "stream": True, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                      {"type": "text", "text": "What color is the tallest bar?"}]}]}
    content = json.dumps(body).encode()
    before = _vllm_sums(http, base)
    started = time.perf_counter()
    ttft_s = None
    with http.stream("POST", base + "/v1/chat/completions", content=content,
                     headers={"content-type": "application/json"}) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if ttft_s is None and line.startswith("data:"):
                ttft_s = time.perf_counter() - started
        stages = parse_server_timing(reply.headers.get("server-timing", ""))
    after = _vllm_sums(http, base)
    return {"client_ttft_ms": 1000 * ttft_s, "stages_ms": stages,
            "vllm_ms": {key: 1000 * (after.get(key, 0) - before.get(key, 0)) for key in VLLM_SUMS}}


def _vllm_sums(http: httpx.Client, base: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    for line in http.get(base + "/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        key = name.split("{")[0]
        if key in VLLM_SUMS:
            sums[key] = sums.get(key, 0.0) + float(value)
    return sums


def _pct(values: list[float], percentile: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(percentile / 100 * (len(ordered) - 1)))]


def _print(results: dict, args) -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; model {args.model.name}; sequential single-client streaming requests, "
          f"{args.output_tokens} output tokens; share = stage total / client TTFT total")
    for size_px, rows in results.items():
        ours = rows["ours"]
        ttft = [row["client_ttft_ms"] for row in ours]
        print(f"\n{size_px}x{size_px} px random PNG, {len(ours)} requests")
        print("| stage | p50 ms | p90 ms | share of TTFT |")
        print("|---|---|---|---|")
        names = list(dict.fromkeys(name for row in ours for name in row["stages_ms"]))
        columns = {name: [row["stages_ms"].get(name, 0.0) for row in ours] for name in names}
        columns["client - server total (HTTP, loopback, client)"] = [
            row["client_ttft_ms"] - row["stages_ms"].get("total", 0.0) for row in ours]
        columns |= {label: [row["vllm_ms"][key] for row in ours] for key, label in VLLM_SUMS.items()}
        columns["**client TTFT**"] = ttft
        for name, values in columns.items():
            print(f"| {name} | {statistics.median(values):.2f} | {_pct(values, 90):.2f} | "
                  f"{100 * sum(values) / sum(ttft):.1f}% |")
        if "baseline" in rows:
            base = [row["client_ttft_ms"] for row in rows["baseline"]]
            print(f"client TTFT p50 / p90 ms: ours {statistics.median(ttft):.2f} / {_pct(ttft, 90):.2f}, "
                  f"baseline {args.baseline_ref} {statistics.median(base):.2f} / {_pct(base, 90):.2f} "
                  f"(alternated request by request)")


def _print_candidate_cuts(rng: np.random.Generator) -> None:
    """Our CPU work per image that the engine repeats, timed in this process (best of 5): what a cut would save."""
    import pybase64

    print("\nour per-request CPU work, in this process (ms, best of 5)")
    print("| image | body JSON re-encode (cut) | base64 decode, stdlib | base64 decode, pybase64 "
          "| image check, full decode | image check, PIL verify() |")
    print("|---|---|---|---|---|---|")
    for size_px in SIZES_PX:
        url = _image_url(rng, size_px)
        data = decode_data_url(url)
        body = json.loads(json.dumps({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}]}]}))
        limits = ImageLimits(64 << 20, 64_000_000)

        def verify() -> None:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()

        costs = [lambda: json.dumps(body).encode(), lambda: decode_data_url(url),
                 lambda: pybase64.b64decode(url.partition(",")[2], validate=True),
                 lambda: check_image(data, limits), verify]
        ms = [1000 * min(timeit.repeat(cost, number=5, repeat=5)) / 5 for cost in costs]
        print(f"| {size_px} px, {len(data) / 1e6:.1f} MB | " + " | ".join(f"{value:.2f}" for value in ms) + " |")


if __name__ == "__main__":
    main()
