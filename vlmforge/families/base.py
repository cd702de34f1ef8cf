"""What a model family is: its chat markers (for assistant-only labels), the module names behind the
trainer's layer switches (vision / language, attention / MLP, projector), and what vLLM serves of it."""

from __future__ import annotations

from dataclasses import dataclass


class UnsupportedModelError(ValueError):
    """The model's `model_type` belongs to no registered family."""


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: frozenset[str]  # config.json `model_type` values
    # Labels cover what follows each assistant header up to and including the turn end.
    assistant_header: str
    turn_end: str
    # Regular expressions matched against the end of module names (peft `target_modules`).
    vision_attention: str
    vision_mlp: str
    projector: str  # the multimodal projector / merger between the towers
    language_attention: str
    language_mlp: str
    # Whether vLLM serves this family at all. Where it does not (Mllama: vLLM removed it after 0.10.2), the family
    # is for training only: jobs say so when they are created, their adapter and merged model are for
    # transformers, and the inference service's base-model check (inference_service/base_model.py) refuses such a
    # base before vLLM starts. `vllm_unserved_reason` is what they tell users.
    vllm_serves: bool = True
    vllm_unserved_reason: str = ""
    # Whether vLLM serves LoRA on the vision tower and the projector (--enable-tower-connector-lora). Where it
    # does not, the engine runs without that flag, adapters with such LoRA are refused by the inference service,
    # and their jobs say so when created: their merged model is what to serve.
    vllm_serves_tower_connector_lora: bool = True
    # Weight-name fixes so vLLM loads what transformers saves (merged models, adapters): (written, read by vLLM).
    vllm_weight_renames: tuple[tuple[str, str], ...] = ()
    # Whether the projector has linear layers for LoRA to wrap. Gemma 3's is one bare weight matrix: there
    # finetune_projector adapts nothing (the trainer leaves the projector out of the LoRA targets).
    projector_takes_lora: bool = True

    def __post_init__(self) -> None:
        if self.vllm_serves == bool(self.vllm_unserved_reason):
            raise ValueError(f"{self.name}: vllm_unserved_reason is what users are told when vllm_serves is False, "
                             "and only then")

    @property
    def tower_and_projector_patterns(self) -> tuple[str, str, str]:
        return self.vision_attention, self.vision_mlp, self.projector
