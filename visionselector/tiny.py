"""Tiny Qwen2.5-VL backbones and an offline processor, for tests, demos and benchmarks.

Nothing here touches the network: the tokenizer is a word-level `tokenizers` model built in memory with the
Qwen vision special tokens, and the image/video processors are the stock Qwen2-VL ones.
"""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

# Qwen chat template, reduced to what the tiny tokenizer can spell.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFAULT_WORDS = (
    "user assistant system what is the colour of square shape circle triangle red green blue yellow "
    "white black grey purple orange cyan describe image video picture left right top bottom a an in on "
    "which where how many one two three four five yes no colours are squares circles triangles diamonds crosses rings"
).split()


def tiny_qwen2_5_vl_config(
    text_hidden_size: int = 32,
    vision_hidden_size: int = 32,
    vocab_size: int = 128,
    num_hidden_layers: int = 2,
    vision_depth: int = 2,
    **overrides,
) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config with the real structure (windowed and full vision attention, mRoPE) at toy width.

    Special token ids match `tiny_tokenizer`: pad 0, bos 1, eos 2, vision start/end 3/4, image/video pad 5/6.
    """
    head_dim = 8
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=text_hidden_size,
        intermediate_size=2 * text_hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=text_hidden_size // head_dim,
        num_key_value_heads=max(1, text_hidden_size // (2 * head_dim)),
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    vision_config = dict(
        depth=vision_depth,
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_heads=vision_hidden_size // head_dim,
        out_hidden_size=text_hidden_size,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[vision_depth - 1],
        tokens_per_second=2,
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=5,
        video_token_id=6,
        vision_start_token_id=3,
        vision_end_token_id=4,
        **overrides,
    )
    return config


def tiny_qwen2_5_vl(seed: int = 0, attn_implementation: str = "sdpa", **config_kwargs):
    """A random tiny stock `Qwen2_5_VLForConditionalGeneration` in eval mode."""
    torch.manual_seed(seed)
    config = tiny_qwen2_5_vl_config(**config_kwargs)
    config._attn_implementation = attn_implementation
    model = Qwen2_5_VLForConditionalGeneration(config)
    return model.eval()


def tiny_tokenizer(words=DEFAULT_WORDS, vocab_size: int = 128):
    """A word-level fast tokenizer whose first ids are pad, bos/eos and the Qwen vision special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    # pad, bos (<|endoftext|>) and eos (<|im_end|>) at ids 0-2, then the vision tokens at the ids the config uses
    ordered = ["<pad>", "<|endoftext|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>", "<|im_start|>", "<unk>", "\n"]
    vocab = {token: i for i, token in enumerate(ordered)}
    for word in words:
        if word not in vocab:
            vocab[word] = len(vocab)
    if len(vocab) > vocab_size:
        raise ValueError(f"{len(vocab)} words do not fit in vocab_size={vocab_size}")
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=ordered[1:8],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_processor(min_pixels: int = 56 * 56, max_pixels: int = 224 * 224, **tokenizer_kwargs):
    """An offline `Qwen2_5_VLProcessor` (needs torchvision, as the stock one does)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = tiny_tokenizer(**tokenizer_kwargs)
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    video_processor = Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
