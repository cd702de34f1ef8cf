"""Turning `Conversation`s into what a VLM processor eats, for training and for evaluation prompts.

Labels cover only the assistant turns (answer tokens and their turn end, `<|im_end|>` in ChatML), as TRL's
`assistant_only_loss` does: the model is taught to answer, not to repeat the question. Where the turns start
and end is the model family's (vlmforge.families).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .data.types import Conversation, ImagePart, Message
from .families import QWEN2_VL, ModelFamily

IGNORE_INDEX = -100


class _ProcessorOwnKwargsWarning(logging.Filter):
    """transformers 5.17's SmolVLMProcessor.apply_chat_template adds its own video defaults (`num_frames`, `fps`)
    as plain keyword arguments, and the base class then warns that such arguments belong in `processor_kwargs`:
    once per rendered chat, thousands of lines a training run, about arguments nobody passed. Nothing here passes
    processor arguments to a chat render, so in this process the warning is never about ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "have to be in `processor_kwargs`" not in record.getMessage()


PROCESSING_LOGGER = "transformers.processing_utils"
logging.getLogger(PROCESSING_LOGGER).addFilter(_ProcessorOwnKwargsWarning())


def to_hf_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Chat-template messages: images become `{"type": "image"}` slots filled by the processor's `images`."""
    return [
        {
            "role": message.role,
            "content": [
                {"type": "image"} if isinstance(part, ImagePart) else {"type": "text", "text": part.text}
                for part in message.parts
            ],
        }
        for message in messages
    ]


def prompt_text(processor, conversation: Conversation) -> str:
    """The evaluation prompt: everything but the reference answer, ending where the assistant starts to speak."""
    return processor.apply_chat_template(to_hf_messages(conversation.prompt), tokenize=False,
                                         add_generation_prompt=True)


def images_by_conversation(conversations: list[Conversation]) -> list[list[Any]] | None:
    """The opened images, one list per conversation (None when there are none): SmolVLM's and Mllama's
    processors pair images with texts by sample and refuse a flat list; the other families take either."""
    images = [[image.open() for image in c.images] for c in conversations]
    return images if any(images) else None


class SequenceTooLongError(ValueError):
    """A sample cannot be cut to the configured length without cutting into its image."""


class ChatCollator:
    """Collates conversations into padded `input_ids`, `attention_mask`, `pixel_values`, `image_grid_thw`,
    `mm_token_type_ids` (what the processor returns) plus assistant-only `labels`."""

    def __init__(self, processor, *, family: ModelFamily = QWEN2_VL, max_length: int | None = None):
        self.processor = processor
        self.max_length = max_length
        tokenizer = processor.tokenizer
        # A header that follows text on the same line ("... ASSISTANT:") is a different token with the space
        # folded in: look for both spellings.
        self.assistant_headers = {tuple(tokenizer.encode(header, add_special_tokens=False))
                                  for header in (family.assistant_header, " " + family.assistant_header)}
        self.turn_end_id = tokenizer.convert_tokens_to_ids(family.turn_end)
        # Placeholders the vision features replace (Idefics3 also frames each image with a marker token).
        self.image_token_ids = [token_id for token_id in (getattr(processor, "image_token_id", None),
                                                          getattr(processor, "fake_image_token_id", None))
                                if isinstance(token_id, int)]

    def __call__(self, conversations: list[Conversation]) -> dict[str, torch.Tensor]:
        texts = [self.processor.apply_chat_template(to_hf_messages(c.messages), tokenize=False) for c in conversations]
        # On the right whatever the processor's default (InternVL's pads on the left): truncation cuts the ends.
        batch = self.processor(text=texts, images=images_by_conversation(conversations), padding=True,
                               padding_side="right", return_tensors="pt")
        batch["labels"] = self.assistant_labels(batch["input_ids"], batch["attention_mask"])
        return self.truncated(dict(batch))

    def truncated(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cuts every row to `max_length` tokens (padding is on the right, so the ends of the longest answers
        go). Image tokens cannot be cut: the vision features would no longer match their placeholders."""
        if self.max_length is None or batch["input_ids"].shape[1] <= self.max_length:
            return batch
        cut = batch["input_ids"][:, self.max_length:]
        cuts_image = any(bool((cut == token_id).any()) for token_id in self.image_token_ids)
        # Gemma 3's processor names them token_type_ids (and marks only the soft tokens, not <start_of_image>).
        type_ids = batch.get("mm_token_type_ids", batch.get("token_type_ids"))
        if cuts_image or (type_ids is not None and type_ids[:, self.max_length:].any()):
            raise SequenceTooLongError(f"a sample's image tokens reach beyond max_sequence_length "
                                       f"{self.max_length}; raise it or use smaller images")
        # Mllama's cross_attention_mask is (batch, tokens, images, tiles): which tokens see which image.
        per_token = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids",
                     "cross_attention_mask")
        return {name: value[:, :self.max_length] if name in per_token else value for name, value in batch.items()}

    def assistant_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, ids in enumerate(input_ids.tolist()):
            position = 0
            while position < len(ids):
                header = next((h for h in self.assistant_headers if tuple(ids[position:position + len(h)]) == h), None)
                if header is None:
                    position += 1
                    continue
                start = position + len(header)
                end = start
                while end < len(ids) and ids[end] != self.turn_end_id:
                    end += 1
                stop = min(end + 1, len(ids))  # the model must learn to emit the turn end and stop
                labels[row, start:stop] = input_ids[row, start:stop]
                position = stop
        return labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
