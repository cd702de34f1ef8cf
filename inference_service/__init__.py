"""inference_service: an OpenAI-compatible VQA endpoint on vLLM's own OpenAI serving layer, with guarded
image fetching, request limits, and LoRA adapters hot-loaded from the trainer's artifact store."""
