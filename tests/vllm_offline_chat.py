"""`python -m tests.vllm_offline_chat MODEL_DIR IMAGE QUESTION`: asks vLLM's offline engine (CPU) one question
about an image and prints one JSON line: the prompt's and the answer's token counts and the answer.

Tests run it as a subprocess so that an engine start, which is mostly single-threaded imports and set-up, runs
beside another one (the inference service starting for the same family) on CI's second core instead of after it.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

ENGINE = {"max_model_len": 512, "max_num_seqs": 2, "enforce_eager": True, "gpu_memory_utilization": 0.15,
          "limit_mm_per_prompt": {"image": 1}, "seed": 0}
MAX_ANSWER_TOKENS = 6


def main(model_dir: str, image: str, question: str) -> None:
    from vllm import LLM, SamplingParams

    url = "data:image/png;base64," + base64.b64encode(Path(image).read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": question}]}]
    llm = LLM(model=model_dir, dtype="bfloat16", **ENGINE)
    try:
        output = llm.chat(messages, SamplingParams(max_tokens=MAX_ANSWER_TOKENS, temperature=0.0))[0]
    finally:
        llm.llm_engine.engine_core.shutdown()
    print(json.dumps({"prompt_tokens": len(output.prompt_token_ids),
                      "answer_tokens": len(output.outputs[0].token_ids), "answer": output.outputs[0].text}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
