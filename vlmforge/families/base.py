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
