"""What a model family is: its chat markers (for assistant-only labels) and the module names behind the
trainer's layer switches (vision / language, attention / MLP, projector)."""

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
    # Whether vLLM serves LoRA on the vision tower and the projector (--enable-tower-connector-lora). Where it
    # does not, the engine runs without that flag, adapters with such LoRA are refused by the inference service,
    # and their jobs say so when created: their merged model is what to serve.
    vllm_serves_tower_connector_lora: bool = True
    # Weight-name fixes so vLLM loads what transformers saves (merged models, adapters): (written, read by vLLM).
    vllm_weight_renames: tuple[tuple[str, str], ...] = ()

    @property
    def tower_and_projector_patterns(self) -> tuple[str, str, str]:
        return self.vision_attention, self.vision_mlp, self.projector
