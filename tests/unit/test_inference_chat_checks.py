"""What the inference service refuses in a chat body before the engine sees it."""

from __future__ import annotations

import pytest

from inference_service.chat_checks import ChatLimits, check_chat_body
from inference_service.errors import InvalidRequest

LIMITS = ChatLimits(max_images_per_request=2, max_choices_per_request=4, max_model_len=1024)


def _image() -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def _body(**extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": [_image(), {"type": "text", "text": "q"}]}],
            **extra}


def test_a_normal_body_passes_and_its_images_are_returned() -> None:
    body = _body(n=2, max_tokens=64)
    assert check_chat_body(body, LIMITS) == [body["messages"][0]["content"][0]]
    assert check_chat_body({"messages": [{"role": "user", "content": "text only"}]}, LIMITS) == []


@pytest.mark.parametrize("body, reason", [
    ([1, 2], "invalid_body"),
    ("text", "invalid_body"),
    ({"model": "m"}, "invalid_body"),
    ({"messages": ["not an object"]}, "invalid_body"),
    (_body(chat_template="{{ messages }}"), "chat_template"),
    (_body(n=5), "n_too_large"),
    (_body(n=0), "n_too_large"),
    (_body(n="2"), "n_too_large"),
    (_body(max_tokens=1024), "max_tokens"),
    (_body(max_completion_tokens=10**9), "max_tokens"),
    ({"messages": [{"role": "user", "content": [_image(), _image(), _image()]}]}, "too_many_images"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "content_type"),
])
def test_refused_bodies_say_why(body: object, reason: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_chat_body(body, LIMITS)
    assert refused.value.reason == reason
