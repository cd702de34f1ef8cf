"""Serving on a GPU: our inference service (HTTP, streaming, the official openai client) against plain
`vllm serve` and vLLM's offline engine (`LLM.chat`, every request handed over at once), on the same model with
the same engine flags, on one machine. One engine at a time (the offline one in a child process), so they never
share the GPU; `--phase` runs one of them, each within a 10-minute GPU call, and keeps its figures in
--work-dir for the report.

Every request carries one fresh random 448x448 image (never seen before in the run, so neither vLLM's prefix
cache nor its encoder cache can skip work) and gets exactly --output-tokens tokens. Measured:
  - requests/s, output tokens/s, TTFT and TPOT p50/p99 at 1/8/32/128 concurrent clients (servers);
  - requests/s with 1, 4 and 16 distinct r=16 adapters in the mix (servers at 128 clients, and offline);
  - hot-loading an adapter the server has never seen: the load call, and load call + first token of a request
    on it (servers), next to the offline engine's `add_lora`;
  - the GPU's busy share during each measured level (nvidia-smi's utilization.gpu, the share of time a kernel
    was running, sampled every 200 ms; blank without nvidia-smi);
  - the CPU cores each server process role kept busy during each level (process_cpu.py), and the client's own;
    for our service with several frontends, how the requests spread over them (its `vlmforge-frontend` header).
  - with --profile-engine-core, where vLLM's engine core spends the largest level (engine_profile.py: py-spy on
    its threads, the main thread's wall time by stage of an engine step).

Servers may run with several API processes: `--api-server-count` (ours) and `--plain-api-server-count` (plain
`vllm serve`, which then gets the mix's adapters at start with `--lora-modules`: it loads adapters at run time
only with one API process, so it has no hot-load figures then). Each server's figures are kept per count
(`ours-4.json`), so one report can show a server at several counts; `--label` keeps a run under a name of
its own (`ours-1@capture1024.json`, `offline@capture1024.json`), so one report can set engine flags side by side.

    python bench/serving_throughput.py --tokenizer-from .cache/vlmforge/models/tiny-qwen2-vl [--shape 2b]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import openai
from PIL import Image

from inference_overhead import _free_port, _pct  # noqa: E402 - bench/ is on sys.path when run as a script
from engine_profile import EngineCoreProfile, print_summary, summarize  # noqa: E402
from process_cpu import ProcessCpu  # noqa: E402
from inference_service.server import vllm_argv
from inference_service.settings import InferenceSettings
from vlmforge.processes import start_and_wait, stop

ADAPTER_MIXES = (1, 4, 16)
HOT_LOADS = 8
ADMIN_TOKEN = "bench-admin-token"
READY = re.compile(rb"inference service listening on http://127\.0\.0\.1:(\d+)")
PLAIN_READY = re.compile(rb"Application startup complete")
QUESTION = "Describe this picture in one sentence."
SERVICE_SEED_OFFSET = 1_000_000  # the servers' images never repeat the offline engine's
PHASES = ("offline", "ours", "plain")
FRONTEND_HEADER = "vlmforge-frontend"  # inference_service.frontends: which frontend answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer-from", type=Path, help="a tiny model of the shape's family (builds --shape)")
    parser.add_argument("--shape", default="2b", help="a vlmforge.model_shapes shape")
    parser.add_argument("--model", type=Path, help="serve this model directory instead of building --shape")
    parser.add_argument("--work-dir", type=Path, help="model, adapters and logs (default: a temporary directory)")
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--image-size-px", type=int, default=448)
    parser.add_argument("--offline-requests", type=int, default=512)
    parser.add_argument("--concurrency", default="1,8,32,128", help="client counts, comma-separated; the "
                        "adapter mixes run at the largest")
    parser.add_argument("--adapter-layers", choices=("language", "all"), default="language",
                        help="LoRA on the language model only, or also on the vision tower and projector")
    # vLLM picks some defaults by entry point: on an H100, 16384 batched tokens a step for `LLM`, 8192 for its
    # server. Named here, both engines run the server's value.
    parser.add_argument("--vllm-args", default="--max-num-batched-tokens 8192",
                        help="engine flags given to all three engines")
    parser.add_argument("--vllm-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every engine (e.g. VLLM_USE_V2_MODEL_RUNNER=0); repeatable")
    parser.add_argument("--api-server-count", type=int, default=1,
                        help="our service's API frontends (default 1, the service's own)")
    parser.add_argument("--plain-api-server-count", type=int, default=1,
                        help="plain `vllm serve`'s API processes (default 1, vLLM's own)")
    parser.add_argument("--label", default="",
                        help="keep this run's figures under its own name (e.g. the --vllm-args lever it tries)")
    parser.add_argument("--profile-engine-core", nargs="?", const="python", choices=("python", "native"),
                        help="py-spy on vLLM's engine core during the largest client level (offline: its batch "
                        "without adapters), Python frames or native ones too; the raw profile is kept in "
                        "--work-dir, its summary in the report")
    parser.add_argument("--levels-only", action="store_true",
                        help="servers: only the client levels (no adapter mixes, no hot-loads)")
    parser.add_argument("--phase", choices=("all", *PHASES, "offline-child"), default="all",
                        help="one part only (each fits a 10-minute GPU call), its figures kept in --work-dir; the "
                        "report shows every part measured there")
    args = parser.parse_args()
    args.concurrency = sorted(int(count) for count in args.concurrency.split(","))
    os.environ.update(item.split("=", 1) for item in args.vllm_env)  # inherited by every engine and server
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="serving-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.phase == "offline-child":  # the engine's own process, so it gives the GPU back when done
        (work / f"{_result_stem('offline', args.label)}.json").write_text(json.dumps(measure_offline(args, work)))
        return
    model_dir = args.model or _build_model(args, work)
    _make_adapters(model_dir, work / "artifacts", args.adapter_layers)
    for phase in PHASES if args.phase == "all" else (args.phase,):
        if phase == "offline":
            _run_offline_child(work, args.label)
        else:
            asyncio.run(measure_server(phase, args, model_dir, work))
    _print({path.stem: json.loads(path.read_text()) for path in sorted(work.glob("*.json"))
            if path.stem.partition("@")[0].split("-")[0] in PHASES}, args, model_dir)


def _result_stem(phase: str, label: str) -> str:
    """A run's files in --work-dir: STEM.json (its figures), STEM.log, STEM.engine-core.txt."""
    return f"{phase}@{label}" if label else phase


def bench_settings(model_dir: Path, artifacts: Path, extra_vllm_args: str) -> InferenceSettings:
    """The service's settings, defaults except room for 16 distinct r=16 adapters in one batch."""
    return InferenceSettings(base_model=str(model_dir), served_model_name="base", port=0, artifacts_dir=artifacts,
                             admin_token=ADMIN_TOKEN, max_lora_rank=16, max_loras_per_batch=max(ADAPTER_MIXES),
                             vllm_args=extra_vllm_args)


def adapter_names(count: int, prefix: str = "mix") -> list[str]:
    return [f"{prefix}-adapter-{index}" for index in range(count)]


# --- inputs -----------------------------------------------------------------------------------------------

def _build_model(args, work: Path) -> Path:
    from vlmforge.model_shapes import build_shaped_model

    return build_shaped_model(work / f"model-{args.shape}", args.shape, args.tokenizer_from,
                              image_size_px=args.image_size_px, device=_device())


def _make_adapters(model_dir: Path, artifacts: Path, layers: str) -> None:
    """Distinct random r=16 PEFT adapters, stored as the trainer stores its fine-tunes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from trainer_service.job_spec import Hyperparameters
    from trainer_service.worker.lora_targets import target_modules
    from vlmforge.artifacts import ADAPTER_DIR, MANIFEST_FILE, model_config_digest
    from vlmforge.families import family_for_model_dir

    names = adapter_names(max(ADAPTER_MIXES)) + adapter_names(HOT_LOADS, prefix="hot")
    if all((artifacts / name / MANIFEST_FILE).is_file() for name in names):
        return
    hyper = Hyperparameters(lora_rank=16, finetune_vision_layers=layers == "all", finetune_projector=layers == "all")
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.bfloat16, device_map=_device())
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                                             target_modules=target_modules(hyper, family_for_model_dir(model_dir))))
    manifest = json.dumps({"base_model_config_sha256": model_config_digest(model_dir)})
    for index, name in enumerate(names):
        torch.manual_seed(index)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if "lora_" in parameter_name:
                    parameter.normal_(0, 0.02)
        model.save_pretrained(artifacts / name / ADAPTER_DIR)
        (artifacts / name / MANIFEST_FILE).write_text(manifest)
    del model
    torch.cuda.empty_cache()


class GpuBusy:
    """The GPU's busy share while the `with` block runs: nvidia-smi's utilization.gpu (the share of the last
    sample period in which a kernel was running) every 200 ms, averaged over samples and GPUs; `percent` is None
    where there is no nvidia-smi."""

    def __enter__(self) -> GpuBusy:
        self.samples: list[float] = []
        self.process = self.reader = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:  # "[N/A]" and the like
                pass

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.reader.join(timeout=1)

    @property
    def percent(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def image_urls(count: int, first_seed: int, side_px: int) -> list[str]:
    """Fresh smooth random pictures (upscaled noise, JPEG): no two alike, realistic sizes on the wire."""
    urls = []
    for seed in range(first_seed, first_seed + count):
        noise = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        picture = Image.fromarray(noise).resize((side_px, side_px), Image.BICUBIC)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=90)
        urls.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode())
    return urls


def _messages(image_url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                         {"type": "text", "text": QUESTION}]}]


# --- the offline engine -----------------------------------------------------------------------------------

def _run_offline_child(work: Path, label: str) -> None:
    command = [sys.executable, __file__, *sys.argv[1:], "--phase", "offline-child", "--work-dir", str(work)]
    log_path = work / f"{_result_stem('offline', label)}.log"
    with open(log_path, "wb") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if finished.returncode != 0:
        raise RuntimeError("offline engine failed:\n" + log_path.read_text()[-4000:])


def offline_engine_kwargs(settings: InferenceSettings) -> dict:
    """The engine arguments `vllm_argv(settings)` gives the service's engine, as keyword arguments of `LLM`:
    only those that differ from a bare `--model`, parsed by vLLM's own parser both times."""
    from vllm.engine.arg_utils import EngineArgs

    from inference_service.vllm_api import FlexibleArgumentParser, make_arg_parser

    parser = make_arg_parser(FlexibleArgumentParser())
    ours = EngineArgs.from_cli_args(parser.parse_args(vllm_argv(settings)))
    bare = EngineArgs.from_cli_args(parser.parse_args(["--model", settings.base_model]))
    return {"model": ours.model} | {field.name: getattr(ours, field.name) for field in dataclasses.fields(EngineArgs)
                                   if getattr(ours, field.name) != getattr(bare, field.name)}


def measure_offline(args, work: Path) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    model_dir = args.model or work / f"model-{args.shape}"
    settings = bench_settings(model_dir, work / "artifacts", args.vllm_args)
    llm = LLM(**offline_engine_kwargs(settings))
    sampling = SamplingParams(max_tokens=args.output_tokens, min_tokens=args.output_tokens, ignore_eos=True,
                              temperature=0)
    loras = {name: LoRARequest(name, index + 1, str(work / "artifacts" / name / "adapter"))
             for index, name in enumerate(adapter_names(max(ADAPTER_MIXES)) + adapter_names(HOT_LOADS, "hot"))}
    next_seed = 0
    gpu_busy_pct = {}

    def batch(count: int, adapters: int) -> float:
        nonlocal next_seed
        urls = image_urls(count, next_seed, args.image_size_px)
        next_seed += count
        requests = None if adapters == 0 else [loras[f"mix-adapter-{index % adapters}"] for index in range(count)]
        with GpuBusy() as busy:
            started = time.perf_counter()
            outputs = llm.chat([_messages(url) for url in urls], sampling, lora_request=requests, use_tqdm=False)
            elapsed = time.perf_counter() - started
        gpu_busy_pct[adapters] = busy.percent
        assert all(len(output.outputs[0].token_ids) == args.output_tokens for output in outputs)
        return count / elapsed

    # Warm-up: compiles, loads the mix's adapters, fills the allocator (the servers get the same).
    batch(min(64, args.offline_requests), max(ADAPTER_MIXES))
    profile_path = work / f"{_result_stem('offline', args.label)}.engine-core.txt"
    with _engine_profile(args.profile_engine_core, os.getpid(), profile_path):
        requests_per_s = {0: batch(args.offline_requests, 0)}
    requests_per_s |= {adapters: batch(args.offline_requests, adapters) for adapters in ADAPTER_MIXES}
    add_lora_s = []
    for name in adapter_names(HOT_LOADS, "hot"):
        started = time.perf_counter()
        llm.llm_engine.add_lora(loras[name])
        add_lora_s.append(time.perf_counter() - started)
    return {"requests_per_s": requests_per_s, "add_lora_s": add_lora_s, "gpu_busy_pct": gpu_busy_pct,
            "requests": args.offline_requests, "vllm_args": _engine_flags(args)} | (
        {"engine_core_profile": summarize(profile_path)} if args.profile_engine_core else {})


def _engine_flags(args) -> str:
    return " ".join([*args.vllm_env, args.vllm_args]).strip()


def _engine_profile(mode: str | None, root_pid: int, out: Path):
    return EngineCoreProfile(root_pid, out, native=mode == "native") if mode else contextlib.nullcontext()


# --- the service ------------------------------------------------------------------------------------------

async def measure_server(server: str, args, model_dir: Path, work: Path) -> dict:
    """`ours`: the inference service; `plain`: `vllm serve` with the engine flags the service gives vLLM. The
    figures go to --work-dir after every level, so a call cut short keeps what it measured."""
    count = args.api_server_count if server == "ours" else args.plain_api_server_count
    settings = bench_settings(model_dir, work / "artifacts", args.vllm_args).model_copy(
        update={"api_server_count": count})
    figures = {"levels": {}, "mixes": {}, "hot_loads": [], "api_server_count": count,
               "mix_clients": max(args.concurrency), "vllm_args": _engine_flags(args)}
    stem = _result_stem(f"{server}-{count}", args.label)
    path, profile_path = work / f"{stem}.json", work / f"{stem}.engine-core.txt"
    process, base_url, load_adapter = _start(server, settings, work / f"{stem}.log")
    try:
        async with (openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0,
                                       timeout=600) as client,
                    httpx.AsyncClient(base_url=base_url, timeout=120,
                                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http):
            if load_adapter is not None:
                for name in adapter_names(max(ADAPTER_MIXES)):
                    (await load_adapter(http, name)).raise_for_status()
            level = _Level(client, args, process.pid, root_is_frontend=count == 1)
            top = max(args.concurrency)
            await level.run(top, min(64, args.offline_requests), max(ADAPTER_MIXES))  # warm-up, as offline
            for concurrency in args.concurrency:
                profile_mode = args.profile_engine_core if concurrency == top else None
                with _engine_profile(profile_mode, process.pid, profile_path):
                    figures["levels"][concurrency] = await level.run(concurrency, max(32, 4 * concurrency), 0)
                if profile_mode:
                    figures["engine_core_profile"] = summarize(profile_path)
                path.write_text(json.dumps(figures))
            if not args.levels_only:
                for adapters in ADAPTER_MIXES:
                    figures["mixes"][adapters] = await level.run(top, 4 * top, adapters)
                    path.write_text(json.dumps(figures))
                if load_adapter is not None:
                    figures["hot_loads"] = [await _hot_load(http, load_adapter, level, name)
                                            for name in adapter_names(HOT_LOADS, "hot")]
                    path.write_text(json.dumps(figures))
    finally:
        stop(process)
    return figures


def _start(server: str, settings: InferenceSettings, log: Path):
    """Starts one server; returns it, its URL and how to load an adapter on it (None: only at start)."""
    count = settings.api_server_count
    if server == "ours":
        process, ready = start_and_wait(
            ["-m", "inference_service", "--base-model", settings.base_model, "--served-model-name", "base",
             "--port", "0", "--artifacts-dir", str(settings.artifacts_dir), "--admin-token", ADMIN_TOKEN,
             "--max-lora-rank", str(settings.max_lora_rank), "--max-loras-per-batch",
             str(settings.max_loras_per_batch), "--api-server-count", str(count),
             "--vllm-args", settings.vllm_args],
            log, READY, timeout_s=540)
        return process, f"http://127.0.0.1:{int(ready.group(1))}", _load_on_ours
    port = _free_port()
    argv = vllm_argv(settings.model_copy(update={"port": port}))
    if count == 1:  # as issue 4 and 7 measured it: the OpenAI server's own module, adapters loaded at run time
        process, _ = start_and_wait(["-m", "vllm.entrypoints.openai.api_server", *argv], log, PLAIN_READY,
                                    timeout_s=540, env={**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})
    else:  # only `vllm serve` starts several API processes
        lora_modules = [f"{name}={settings.artifacts_dir / name / 'adapter'}"
                        for name in adapter_names(max(ADAPTER_MIXES))]
        process, _ = start_and_wait([str(Path(__file__).with_name("vllm_serve.py")), "serve", *argv, "--api-server-count",
                                     str(count), "--lora-modules", *lora_modules], log, PLAIN_READY, timeout_s=540)
        _wait_for_count(process, log, PLAIN_READY, count, timeout_s=120)
        return process, f"http://127.0.0.1:{port}", None

    async def load_on_plain(http: httpx.AsyncClient, name: str) -> httpx.Response:
        return await http.post("/v1/load_lora_adapter", json={
            "lora_name": name, "lora_path": str(settings.artifacts_dir / name / "adapter")})

    return process, f"http://127.0.0.1:{port}", load_on_plain


def _wait_for_count(process, log: Path, pattern: re.Pattern[bytes], count: int, *, timeout_s: float) -> None:
    """Until `pattern` shows `count` times in the log (each API process says it once)."""
    deadline = time.monotonic() + timeout_s
    while len(pattern.findall(log.read_bytes())) < count:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{count} API processes did not all start:\n" + log.read_text()[-4000:])
        time.sleep(0.2)


async def _load_on_ours(http: httpx.AsyncClient, name: str) -> httpx.Response:
    return await http.post("/admin/v1/adapters", json={"name": name})


class _Level:
    """Closed-loop clients: each sends its next request when the last one finished."""

    def __init__(self, client: openai.AsyncOpenAI, args, server_pid: int, *, root_is_frontend: bool):
        self.client, self.args = client, args
        self.server_pid, self.root_is_frontend = server_pid, root_is_frontend
        self.next_seed = SERVICE_SEED_OFFSET
        self.frontends: Counter[str] = Counter()  # requests answered per frontend (ours with several)

    def fresh_images(self, count: int) -> list[str]:
        urls = image_urls(count, self.next_seed, self.args.image_size_px)
        self.next_seed += count
        return urls

    async def run(self, concurrency: int, total_requests: int, adapters: int) -> dict:
        queue = list(enumerate(self.fresh_images(total_requests)))

        async def client_loop() -> list[tuple[float, float, int]]:
            timings = []
            while queue:
                index, url = queue.pop()
                model = "base" if adapters == 0 else f"mix-adapter-{index % adapters}"
                timings.append(await self.one(url, model))
            return timings

        self.frontends.clear()
        with GpuBusy() as busy, ProcessCpu(self.server_pid, root_is_frontend=self.root_is_frontend) as cpu:
            started = time.perf_counter()
            timings = [t for batch in await asyncio.gather(*(client_loop() for _ in range(concurrency)))
                       for t in batch]
            elapsed = time.perf_counter() - started
        ttft = sorted(t for t, _, _ in timings)
        tpot = sorted((end - first) / max(1, tokens - 1) for first, end, tokens in timings)
        return {"requests": len(timings), "requests_per_s": len(timings) / elapsed,
                "output_tokens_per_s": sum(tokens for _, _, tokens in timings) / elapsed,
                "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
                "tpot_p50_s": _pct(tpot, 50), "tpot_p99_s": _pct(tpot, 99), "gpu_busy_pct": busy.percent,
                "cpu": cpu.report(), "requests_per_frontend": dict(self.frontends)}

    async def one(self, image_url: str, model: str) -> tuple[float, float, int]:
        """(time to first token, time to last token, output tokens) of one streamed chat request."""
        started = time.perf_counter()
        first = None
        tokens = 0
        response = await self.client.chat.completions.with_raw_response.create(
            model=model, messages=_messages(image_url), max_tokens=self.args.output_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True, "min_tokens": self.args.output_tokens})
        if (frontend := response.headers.get(FRONTEND_HEADER)) is not None:
            self.frontends[frontend] += 1
        stream = response.parse()
        async for chunk in stream:
            if first is None and chunk.choices:
                first = time.perf_counter() - started
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        assert tokens == self.args.output_tokens, f"{tokens} output tokens, expected {self.args.output_tokens}"
        return first or 0.0, time.perf_counter() - started, tokens


async def _hot_load(http: httpx.AsyncClient, load_adapter, level: _Level, name: str) -> dict:
    started = time.perf_counter()
    (await load_adapter(http, name)).raise_for_status()
    loaded = time.perf_counter() - started
    first_token_s, _, _ = await level.one(level.fresh_images(1)[0], name)
    return {"load_s": loaded, "load_to_first_token_s": loaded + first_token_s}


# --- report -----------------------------------------------------------------------------------------------

SERVER_NAMES = {"ours": "vlmforge", "plain": "plain `vllm serve`"}


def _server_name(key: str) -> str:
    """'ours-4' -> 'vlmforge, 4 API processes'; 'ours-1@capture1024' -> 'vlmforge, 1 API process, capture1024'."""
    key, _, label = key.partition("@")
    server, _, count = key.partition("-")
    name = f"{SERVER_NAMES[server]}, {count or 1} API process{'es' if count not in ('', '1') else ''}"
    return f"{name}, {label}" if label else name


def _print(results: dict[str, dict], args, model_dir: Path) -> None:
    import torch
    import vllm

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"
    print(f"device: {device}; vLLM {vllm.__version__}; model {model_dir.name}; {args.output_tokens} output tokens; "
          f"one fresh {args.image_size_px}x{args.image_size_px} image per request; adapters r=16 on "
          f"{args.adapter_layers} layers; {os.cpu_count()} CPUs, Python {platform.python_version()}")
    offlines = {_offline_name(key): figures for key, figures in results.items() if key.startswith("offline")}
    # The adapter mixes compare with the offline engine on the same flags: the unlabelled run, else any one.
    offline_figures = results.get("offline") or next(iter(offlines.values()), None)
    offline = {int(k): v for k, v in offline_figures["requests_per_s"].items()} if offline_figures else {}
    servers = {_server_name(key): figures for key, figures in results.items() if not key.startswith("offline")}
    print("\nengine flags (--vllm-args) of each run: " + "; ".join(
        f"{name}: `{figures.get('vllm_args', '?') or 'none'}`" for name, figures in (servers | offlines).items()))
    _print_levels(servers, offlines, args)
    _print_cpu(servers)
    _print_mixes({name: f for name, f in servers.items() if f["mixes"]}, offline, args)
    for name, figures in servers.items():
        if figures["hot_loads"]:
            loads = [h["load_s"] for h in figures["hot_loads"]]
            to_first = [h["load_to_first_token_s"] for h in figures["hot_loads"]]
            print(f"hot-load, {name}: load call p50 {1000 * statistics.median(loads):.0f} ms, max "
                  f"{1000 * max(loads):.0f} ms; load call + first token on it p50 {1000 * statistics.median(to_first):.0f}"
                  f" ms, max {1000 * max(to_first):.0f} ms ({len(loads)} adapters)")
    for name, figures in (servers | offlines).items():
        if "engine_core_profile" in figures:
            print_summary(name, figures["engine_core_profile"])
    for name, figures in offlines.items():
        add = figures["add_lora_s"]
        print(f"hot-load, {name} `add_lora`: p50 {1000 * statistics.median(add):.0f} ms, max {1000 * max(add):.0f} ms")


def _offline_name(key: str) -> str:
    """'offline' -> 'offline `LLM.chat`'; 'offline@capture1024' -> 'offline `LLM.chat`, capture1024'."""
    label = key.partition("@")[2]
    return "offline `LLM.chat`" + (f", {label}" if label else "")


def _print_levels(servers: dict[str, dict], offlines: dict[str, dict], args) -> None:
    print("\n| server | clients | requests | requests/s | output tokens/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms "
          "| TPOT p99 ms | GPU busy % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, figures in servers.items():
        for concurrency, m in sorted(figures["levels"].items(), key=lambda item: int(item[0])):
            print(f"| {name} | {concurrency} | {m['requests']} | {m['requests_per_s']:.1f} | "
                  f"{m['output_tokens_per_s']:.0f} | {1000 * m['ttft_p50_s']:.0f} | {1000 * m['ttft_p99_s']:.0f} | "
                  f"{1000 * m['tpot_p50_s']:.1f} | {1000 * m['tpot_p99_s']:.1f} | {_busy(m.get('gpu_busy_pct'))} |")
    for name, figures in offlines.items():
        requests_per_s = figures["requests_per_s"]["0"]
        print(f"| {name} | all at once | {figures.get('requests', args.offline_requests)} | "
              f"{requests_per_s:.1f} | {requests_per_s * args.output_tokens:.0f} | | | | | "
              f"{_busy(figures.get('gpu_busy_pct', {}).get('0'))} |")


CPU_ROLES = ("API frontend", "engine core", "engine worker", "main", "other")


def _print_cpu(servers: dict[str, dict]) -> None:
    """Per role: cores kept busy (CPU s / wall s), CPU ms per request, the busiest single process."""
    print("\nCPU during each level: cores kept busy (CPU s / wall s) and CPU ms per request; in brackets the busiest "
          "single process's cores; threads at the level's end:\n")
    print(f"| server | clients | {' | '.join(CPU_ROLES)} | bench client | threads (frontends / engine core) | "
          "requests per frontend |")
    print("|---" * (len(CPU_ROLES) + 5) + "|")
    for name, figures in servers.items():
        for concurrency, m in sorted(figures["levels"].items(), key=lambda item: int(item[0])):
            if not (cpu := m.get("cpu")):
                continue
            per_request_ms = 1000 * cpu["wall_s"] / m["requests"]
            cells = []
            for role in CPU_ROLES:
                r = cpu["roles"].get(role)
                cells.append("" if r is None else f"{r['cores']:.2f}, {r['cores'] * per_request_ms:.0f} ms" + (
                    f" ({r['busiest_process_cores']:.2f})" if r["processes"] > 1 else ""))
            threads = "/".join(str(cpu["roles"].get(role, {}).get("threads", "")) for role in CPU_ROLES[:2])
            spread = m.get("requests_per_frontend") or {}
            print(f"| {name} | {concurrency} | {' | '.join(cells)} | {cpu['client_cores']:.2f}, "
                  f"{cpu['client_cores'] * per_request_ms:.0f} ms | {threads} | "
                  f"{' '.join(f'{k}:{v}' for k, v in sorted(spread.items()))} |")


def _print_mixes(servers: dict[str, dict], offline: dict[int, float], args) -> None:
    if not servers:
        return
    top = str(max(args.concurrency))
    print(f"\n| adapters in the mix | {' | '.join(f'{name} requests/s' for name in servers)} | offline requests/s "
          f"| {' | '.join(f'{name} / offline' for name in servers)} | "
          f"{' | '.join(f'{name} vs no adapter' for name in servers)} | offline vs no adapter |")
    print("|---" * (2 + 3 * len(servers)) + "|---|")
    # Each phase ran its mixes at its own largest client count (phases may be run with different --concurrency).
    mix_clients = {name: str(f.get("mix_clients", top)) for name, f in servers.items()}
    nan = float("nan")
    for adapters in (0, *ADAPTER_MIXES):
        rps = {name: (f["levels"][mix_clients[name]] if adapters == 0 else f["mixes"][str(adapters)])["requests_per_s"]
               for name, f in servers.items()}
        no_adapter = {name: f["levels"][mix_clients[name]]["requests_per_s"] for name, f in servers.items()}
        row = [str(adapters), *(f"{v:.1f}" for v in rps.values()), f"{offline.get(adapters, nan):.1f}",
               *(f"{v / offline.get(adapters, nan):.3f}" for v in rps.values()),
               *(f"{v / no_adapter[name]:.3f}" for name, v in rps.items()),
               f"{offline.get(adapters, nan) / offline.get(0, nan):.3f}"]
        print("| " + " | ".join(row) + " |")
    print(f"(servers at {', '.join(f'{name} {clients}' for name, clients in mix_clients.items())} clients; offline "
          "gets every request at once)")


def _busy(percent: float | None) -> str:
    return "" if percent is None else f"{percent:.0f}"


if __name__ == "__main__":  # vLLM starts its engine in a spawned child, which re-imports this module
    main()
