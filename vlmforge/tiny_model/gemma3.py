"""The tiny model's Gemma 3 layout (google/gemma-3-4b-it): a SigLIP tower, a projector that average-pools its
patches 4x4 and multiplies them by one weight matrix, and a Gemma 3 text model whose layers are sliding-window
but for every sixth (here the last of three), with Gemma's turns and the image as `<start_of_image>`.

Same sizes as the other families' tiny models. The real tower sees 896 px as 64x64 patches of 14 px, pooled to
256 tokens; here 112 px are 16x16 patches of 7 px, pooled the same 4x4 to 16 tokens. The 4x4 pool matters:
vLLM 0.32 counts a Gemma 3 tower's LoRA tokens as 16 per image token (Gemma3ForConditionalGeneration.
get_mm_lora_token_counts)."""

from __future__ import annotations

from transformers import AddedToken, Gemma3Config, Gemma3ImageProcessor, Gemma3Processor

from .spec import TinyModelSpec
from .tokenizer import ENDOFTEXT, TokenizerStyle

BOI, EOI, IMAGE_SOFT_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
POOL = 4  # patches per image token along each side, as in Gemma 3 (64 -> 16)
PATCH_PX = 7
SLIDING_WINDOW = 32  # real: 1024 (4B); short enough here that every training sample reaches past it

# gemma-3-4b-it's chat template (tokenizer_config.json), unchanged: turns `<start_of_turn>user\n...<end_of_turn>\n
# <start_of_turn>model\n...<end_of_turn>\n`, a system message folded into the first user turn.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# The turn end is the end of sequence, as `<|im_end|>` is for the ChatML families (the real tokenizer's eos is
# `<eos>`, and its generation_config stops on `<end_of_turn>` too).
GEMMA3_STYLE = TokenizerStyle(
    (ENDOFTEXT, "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", BOI, EOI, IMAGE_SOFT_TOKEN),
    "<end_of_turn>", ENDOFTEXT, GEMMA3_CHAT_TEMPLATE, ("user\n", "model\n", "\n\n"), bos_token="<bos>",
    named_tokens=(("boi_token", BOI), ("eoi_token", EOI), ("image_token", IMAGE_SOFT_TOKEN)))


def image_tokens(spec: TinyModelSpec) -> int:
    return (spec.image_size_px // PATCH_PX // POOL) ** 2


def gemma3_processor(tokenizer, spec: TinyModelSpec) -> Gemma3Processor:
    """Also gives the tokenizer Gemma's newline tokens: its vocabulary has runs of one to four newlines as single
    tokens, and vLLM 0.32's Gemma 3 processor looks them up by their text (gemma3_mm.py, `vocab["\\n\\n"]`)
    to merge the newlines around each image with the prompt's; the byte-level vocabulary spells them `Ċ`."""
    tokenizer.add_tokens([AddedToken("\n" * count, normalized=False, special=False) for count in range(1, 5)])
    side = spec.image_size_px
    image_processor = Gemma3ImageProcessor(size={"height": side, "width": side}, do_pan_and_scan=False)
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=image_tokens(spec),
                           chat_template=tokenizer.chat_template)


def gemma3_config(text_config: dict, token, spec: TinyModelSpec) -> Gemma3Config:
    """Gemma 3's text model: GeGLU MLP, q/k norms, embeddings scaled by sqrt(hidden), sliding-window layers with
    a full-attention one last (layer_types), each kind with its own RoPE base (local 10k, global 1M)."""
    head_dim = spec.hidden_size // spec.attention_heads
    text_config = {
        **text_config, "model_type": "gemma3_text", "head_dim": head_dim, "query_pre_attn_scalar": head_dim,
        "hidden_activation": "gelu_pytorch_tanh", "sliding_window": SLIDING_WINDOW,
        "layer_types": ["sliding_attention"] * (spec.layers - 1) + ["full_attention"],
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        "bos_token_id": token("<bos>"),
    }
    vision_config = {
        "model_type": "siglip_vision_model",
        "hidden_size": spec.vision_embed_dim,
        "intermediate_size": spec.vision_embed_dim * spec.vision_mlp_ratio,
        "num_hidden_layers": spec.vision_depth,
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size_px,
        "patch_size": PATCH_PX,
        "vision_use_head": False,
    }
    config = Gemma3Config(text_config=text_config, vision_config=vision_config, mm_tokens_per_image=image_tokens(spec),
                          boi_token_index=token(BOI), eoi_token_index=token(EOI),
                          image_token_index=token(IMAGE_SOFT_TOKEN), tie_word_embeddings=True)
    config.architectures = ["Gemma3ForConditionalGeneration"]
    return config
