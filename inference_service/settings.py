"""Every setting of the inference service, in one place: each is a `--flag` and an environment variable
(`VLMFORGE_INFERENCE_<NAME>`), e.g. `--port 8000` or `VLMFORGE_INFERENCE_PORT=8000`. vLLM engine flags that
have no setting here pass through `--vllm-args`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VLMFORGE_INFERENCE_", cli_kebab_case=True,
                                      cli_prog_name="python -m inference_service")

    host: str = Field("127.0.0.1", description="address the HTTP server binds; 0.0.0.0 in a container")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one (logged at start)")
    admin_port: int | None = Field(None, ge=0, le=65535, description="serve /admin/v1/* only on this port "
                                   "(same host; 0 picks a free one, logged at start), so a network policy can "
                                   "keep it to the trainer; unset = on the main port. With several frontends "
                                   "each serves it on that one shared port")
    # 1, as vLLM's own default: on an H200 four frontends served 0.62x of plain `vllm serve` with one
    # (BENCHMARKS.md, issue 18), the engine starved rather than fed, cause not found yet.
    api_server_count: int = Field(1, ge=1, le=64, description="API frontend processes over the one engine, each "
                                  "running this whole layer on the shared port (vLLM's `vllm serve "
                                  "--api-server-count`)")
    base_model: str = Field(description="base model: a directory (e.g. a trainer's merged/ output) or a name "
                                        "vLLM resolves")
    served_model_name: str | None = Field(None, description="the base model's name in the API; default: the "
                                                            "directory name")
    artifacts_dir: Path | None = Field(None, description="the trainer's artifact store; adapters found there "
                                                         "are loaded by name (push or on first request)")
    api_key: SecretStr | None = Field(None, description="bearer key required on /v1/*; unset = no auth")
    admin_token: SecretStr | None = Field(None, description="bearer token of /admin/v1/*; unset = admin "
                                                            "endpoints disabled")
    allowed_media_domains: list[str] = Field([], description="hosts whose http(s) image URLs are fetched "
                                                             "(exact names); data: URLs are always accepted")
    allow_private_media_addresses: bool = Field(False, description="also fetch from loopback/private "
                                                                   "addresses (tests, air-gapped clusters)")
    media_fetch_timeout_s: float = Field(10.0, gt=0, description="time limit to fetch one image URL")
    max_images_per_request: int = Field(4, ge=0, description="images allowed in one chat request")
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest encoded image accepted")
    max_image_pixels: int = Field(16_000_000, ge=1, description="largest width x height accepted, checked "
                                                                "from the header before decoding")
    max_request_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body")
    max_choices_per_request: int = Field(8, ge=1, description="largest `n` accepted")
    max_lora_rank: int = Field(64, ge=1, description="adapters of higher rank are refused")
    max_loras_per_batch: int = Field(8, ge=1, description="distinct adapters in one engine batch (vLLM "
                                                          "--max-loras)")
    max_cpu_loras: int = Field(64, ge=1, description="adapters kept loaded at once (vLLM --max-cpu-loras)")
    vision_tower_lora: bool = Field(True, description="serve adapters that also train the vision tower "
                                                      "(vLLM --enable-tower-connector-lora)")
    max_model_len: int | None = Field(None, ge=16, description="context length; default: the model's")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="share of accelerator memory "
                                                 "for vLLM; on CPU the share of RAM (default 0.15 there)")
    mm_processor_cache_gb: float = Field(0.0, ge=0, description="vLLM's cache of preprocessed images, kept in "
                                         "step between the API process and the engine. Off by default: under "
                                         "concurrent load with repeated images the two copies drift apart in "
                                         "vLLM 0.32 and requests fail with 500 (bench/load_mixed.py)")
    http_keep_alive_s: float = Field(75.0, gt=0, description="how long an idle keep-alive connection stays "
                                     "open. Longer than clients' and load balancers' idle limits (httpx and "
                                     "so the openai client: 5 s; AWS ALB: 60 s), so the client side always "
                                     "closes first: a server that closes as a client reuses the connection "
                                     "fails that request with a connection error (uvicorn's default is 5 s)")
    drain_timeout_s: int = Field(30, ge=0, description="on SIGTERM: time running requests get to finish "
                                                        "(vLLM --shutdown-timeout); 0 aborts them")
    vllm_args: str = Field("", description="more vLLM engine flags, as on its command line, e.g. "
                                           "'--enforce-eager --max-num-seqs 64'")

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.base_model.rstrip("/")).name
