"""A byte-level BPE tokenizer in Qwen2's mould, trained on the embedded dataset's text.

Same pre-tokenizer and special tokens as Qwen2-VL, so chat templates, processors and vLLM treat it as a
Qwen2 tokenizer; only the vocabulary is small (hundreds of tokens instead of 151k). The other families' styles
swap in their special tokens and chat templates (LLaVA's `<image>`, `</s>` and Vicuna turns; Idefics3's and
SmolVLM2's `<end_of_utterance>`; Llama 3.2 Vision's header tokens and `<|eot_id|>`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, Qwen2Tokenizer
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE as SMOLVLM2_CHAT_TEMPLATE

# Qwen2's split pattern (tokenizer.json of Qwen2-VL-2B-Instruct).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS = (
    ENDOFTEXT, "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)

# Qwen2-VL-Instruct's chat template, unchanged: the default system prompt, <|vision_start|><|image_pad|>... slots.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Text every chat contains, so its pieces get merges of their own.
_TEMPLATE_TEXT = ("system\nYou are a helpful assistant.", "user\n", "assistant\n", "\n")

# LLaVA-1.5's training format (Vicuna v1): "USER: <image>\nquestion ASSISTANT: answer</s>", with a system line.
LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the human's questions.")
LLAVA_CHAT_TEMPLATE = (
    '{{ "' + LLAVA_SYSTEM + '" }}{% for message in messages %}'
    "{% if message['role'] == 'user' %}{{ ' USER: ' }}{% else %}{{ ' ASSISTANT: ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{% endif %}{% if message['role'] == 'assistant' %}{{ '</s>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)


# LLaVA-1.6 on Mistral-7B: "[INST] <image>\nquestion [/INST] answer</s>".
MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{% endif %}{{ ' [/INST]' }}{% else %}{{ ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{{ '</s>' }}{% endif %}{% endfor %}"
)


# Idefics3: "<|im_start|>User:<image>question<end_of_utterance>\nAssistant: answer<end_of_utterance>\n".
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# The processor also asks for <global-img> and the <row_i_col_j> tags of split images.
_IDEFICS3_TOKENS = (ENDOFTEXT, "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                    "<global-img>", *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)))


# Llama 3.2 Vision's turns, without the default system prompt its template adds to text-only chats:
# "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>question<|eot_id|>
# <|start_header_id|>assistant<|end_header_id|>\n\nanswer<|eot_id|>". The image is one <|image|> token: the
# text reads the picture through cross-attention, not through placeholder embeddings.
LLAMA3_VISION_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|image|>' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# MllamaProcessor also looks up <|python_tag|>.
_LLAMA3_TOKENS = (ENDOFTEXT, "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|image|>", "<|python_tag|>")


@dataclass(frozen=True)
class TokenizerStyle:
    special_tokens: tuple[str, ...]
    eos_token: str
    pad_token: str
    chat_template: str
    template_text: tuple[str, ...]
    bos_token: str | None = None  # Llama 3's processor prepends it to every text that lacks it
    # Named tokens a processor reads off the tokenizer (Gemma 3's `boi_token`, InternVL's `context_image_token`):
    # saved in tokenizer_config.json as the published checkpoints have them.
    named_tokens: tuple[tuple[str, str], ...] = ()


QWEN2_STYLE = TokenizerStyle(SPECIAL_TOKENS, "<|im_end|>", ENDOFTEXT, CHAT_TEMPLATE, _TEMPLATE_TEXT)
MISTRAL_STYLE = TokenizerStyle((ENDOFTEXT, "</s>", "<image>", "[INST]", "[/INST]"), "</s>", ENDOFTEXT,
                               MISTRAL_CHAT_TEMPLATE, ("[INST] ", " [/INST]"))
IDEFICS3_STYLE = TokenizerStyle(_IDEFICS3_TOKENS, "<end_of_utterance>", ENDOFTEXT, IDEFICS3_CHAT_TEMPLATE,
                                ("User:", "User: ", "\nAssistant: ", "Assistant:"))
# SmolVLM2: Idefics3's turns in the template transformers ships as SmolVLM2's (a `<video>` slot added; content
# always a list of parts).
SMOLVLM_STYLE = TokenizerStyle(_IDEFICS3_TOKENS, "<end_of_utterance>", ENDOFTEXT, SMOLVLM2_CHAT_TEMPLATE,
                               IDEFICS3_STYLE.template_text)
MLLAMA_STYLE = TokenizerStyle(_LLAMA3_TOKENS, "<|eot_id|>", ENDOFTEXT, LLAMA3_VISION_CHAT_TEMPLATE,
                              ("user", "assistant", "\n\n"), bos_token="<|begin_of_text|>")
LLAVA_STYLE = TokenizerStyle((ENDOFTEXT, "</s>", "<image>"), "</s>", ENDOFTEXT, LLAVA_CHAT_TEMPLATE,
                             (LLAVA_SYSTEM, " USER: ", " ASSISTANT: ", " ASSISTANT:"))


def train_tokenizer(texts: Iterable[str], vocab_size: int, style: TokenizerStyle = QWEN2_STYLE) -> Qwen2Tokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([*style.template_text, *texts], trainer=trainer)
    vocab = bpe.get_vocab()
    merges = _merges(bpe)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=style.bos_token,
                               eos_token=style.eos_token, pad_token=style.pad_token, errors="replace",
                               **dict(style.named_tokens))
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in style.special_tokens]},
    )
    tokenizer.chat_template = style.chat_template
    tokenizer.model_max_length = 32768
    return tokenizer


def _merges(bpe: Tokenizer) -> list[tuple[str, str]]:
    """The trained merge list; `tokenizers` exposes it only through the serialised model."""
    merges = json.loads(bpe.to_str())["model"]["merges"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
