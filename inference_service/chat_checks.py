"""Checks on a parsed /v1/chat/completions body that vLLM would either not make or make too late (after an
image URL was fetched, or with a message that shows internals). Then each image is made checked bytes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .errors import InvalidRequest
from .media import ImageLimits, MediaUrlPolicy, as_data_url, check_image, decode_data_url, fetch_image
from .stage_timing import StageTimes, stage

TEXT_PART_TYPES = frozenset({"text"})
IMAGE_PART_TYPE = "image_url"


@dataclass(frozen=True)
class ChatLimits:
    max_images_per_request: int
    max_choices_per_request: int
    max_model_len: int


def check_chat_body(body: object, limits: ChatLimits) -> list[dict]:
    """Raises InvalidRequest for what this server refuses; returns the image parts (dicts inside `body`)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", reason="invalid_body")
    if body.get("chat_template") is not None:
        raise InvalidRequest("request-supplied chat templates are not accepted; the model's own is used",
                             reason="chat_template", param="chat_template")
    _check_count(body, "n", 1, limits.max_choices_per_request, reason="n_too_large")
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= limits.max_model_len:
            raise InvalidRequest(f"{key}={value} does not fit the model's context of {limits.max_model_len} "
                                 "tokens", reason="max_tokens", param=key)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", reason="invalid_body", param="messages")
    images = [part for message in messages for part in _parts(message)]
    if len(images) > limits.max_images_per_request:
        raise InvalidRequest(f"{len(images)} images in one request; at most {limits.max_images_per_request}",
                             reason="too_many_images", param="messages")
    return images


def _check_count(body: dict, key: str, low: int, high: int, *, reason: str) -> None:
    value = body.get(key)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"{key} must be an integer from {low} to {high}", reason=reason, param=key)


def _parts(message: object) -> list[dict]:
    if not isinstance(message, dict):
        raise InvalidRequest("each message must be an object", reason="invalid_body", param="messages")
    content = message.get("content")
    if not isinstance(content, list):
        return []
    images = []
    for part in content:
        part_type = part.get("type") if isinstance(part, dict) else None
        if part_type == IMAGE_PART_TYPE:
            images.append(part)
        elif part_type not in TEXT_PART_TYPES:
            raise InvalidRequest(f"content parts may be text or image_url, not {str(part_type)[:40]!r}",
                                 reason="content_type", param="messages")
    return images


async def materialise_images(image_parts: list[dict], policy: MediaUrlPolicy, limits: ImageLimits,
                             fetch_timeout_s: float, times: StageTimes | None = None) -> bool:
    """Replaces every image URL in place with a checked `data:` URL, so the engine never fetches anything.
    True when a part was replaced (the body then differs from what the client sent)."""
    replaced = False
    for part in image_parts:
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str) or not url:
            raise InvalidRequest("image_url needs a url", reason="image_invalid", param="messages")
        if url.startswith("data:"):
            with stage(times, "decode"):
                data = decode_data_url(url)
            with stage(times, "image"):
                await asyncio.to_thread(check_image, data, limits)
            continue
        with stage(times, "fetch"):
            data = await fetch_image(url, policy, limits, fetch_timeout_s)
        with stage(times, "image"):
            mime_type = await asyncio.to_thread(check_image, data, limits)
        part["image_url"] = {**spec, "url": as_data_url(data, mime_type)} if isinstance(spec, dict) else {
            "url": as_data_url(data, mime_type)}
        replaced = True
    return replaced
