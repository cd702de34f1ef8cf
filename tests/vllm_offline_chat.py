"""`python -m tests.vllm_offline_chat MODEL_DIR IMAGE QUESTION [--adapter DIR [--tower-lora]]`: asks vLLM's
offline engine (CPU) one question about an image, through the PEFT adapter when one is given, and prints one
JSON line: the prompt's and the answer's token counts and the answer.

Tests run it as a subprocess: an engine start then runs beside other work (the inference service starting for
the same family) on CI's second core, and the engine never lives in the pytest process. V1 multiprocessing is
off here, so the engine core and the model run in this one process ("uni" executor) instead of three: each vLLM
process start is ~10 s of imports on CI's CPU, and the tiny models need no OpenMP thread binding, which is what
the CPU backend's worker process is for (vllm/platforms/cpu.py). Servers keep vLLM's default.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

ENGINE = {"max_model_len": 512, "max_num_seqs": 2, "enforce_eager": True, "gpu_memory_utilization": 0.15,
          "limit_mm_per_prompt": {"image": 1}, "seed": 0}
MAX_ANSWER_TOKENS = 6


REPO_ROOT = Path(__file__).resolve().parents[1]  # where `-m tests.vllm_offline_chat` resolves


def command(model_dir: Path, image: Path, question: str, *, adapter: Path | None = None,
            tower_lora: bool = False) -> list[str]:
    """This module's command line, to run from REPO_ROOT."""
    line = [sys.executable, "-m", "tests.vllm_offline_chat", str(model_dir), str(image), question]
    return line + ["--adapter", str(adapter)] * bool(adapter) + ["--tower-lora"] * tower_lora


def ask(model_dir: Path, image: Path, question: str, log: Path, *, adapter: Path | None = None,
        tower_lora: bool = False, timeout_s: float = 300) -> dict:
    """Runs this module to its end; its JSON answer (the engine's log goes to `log`)."""
    with open(log, "wb") as stderr:
        done = subprocess.run(command(model_dir, image, question, adapter=adapter, tower_lora=tower_lora),
                              stdout=subprocess.PIPE, stderr=stderr, timeout=timeout_s, cwd=REPO_ROOT)
    assert done.returncode == 0, log.read_text()[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("image", type=Path)
    parser.add_argument("question")
    parser.add_argument("--adapter", help="a PEFT LoRA adapter directory to answer through")
    parser.add_argument("--tower-lora", action="store_true", help="the adapter has vision tower / projector LoRA")
    args = parser.parse_args()

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    url = "data:image/png;base64," + base64.b64encode(args.image.read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": args.question}]}]
    lora = {"enable_lora": True, "max_lora_rank": 16, "max_loras": 1,
            "enable_tower_connector_lora": args.tower_lora} if args.adapter else {}
    llm = LLM(model=args.model_dir, dtype="bfloat16", **ENGINE, **lora)
    request = LoRARequest("job-adapter", 1, args.adapter) if args.adapter else None
    output = llm.chat(messages, SamplingParams(max_tokens=MAX_ANSWER_TOKENS, temperature=0.0),
                      lora_request=request)[0]
    print(json.dumps({"prompt_tokens": len(output.prompt_token_ids),
                      "answer_tokens": len(output.outputs[0].token_ids), "answer": output.outputs[0].text}), flush=True)
    os._exit(0)  # the engine's teardown at interpreter exit takes ~5 s and leaves nothing a test reads


if __name__ == "__main__":
    main()
