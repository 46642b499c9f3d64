"""Tiny Qwen-VL backbones of every supported family and offline processors, for tests, demos and benchmarks.

Nothing here touches the network: the tokenizer is a word-level `tokenizers` model built in memory with the
Qwen vision special tokens, and the image/video processors are the stock ones of each family. The families, by
stock `model_type`, are `FAMILIES`; `tiny_model(family)` and `tiny_processor(family=...)` build any of them.
"""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3_5Config, Qwen3_5MoeConfig, Qwen3VLConfig, Qwen3VLMoeConfig

from modeling_visionselector.families import FAMILIES as MODEL_FAMILIES

# Special token ids of `tiny_tokenizer`, the same in every family's tiny config.
TOKEN_IDS = dict(image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4)

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


# Width of every attention head of the tiny models, text and vision.
HEAD_DIM = 8


def _text_config(hidden_size: int, vocab_size: int, num_hidden_layers: int, **extra) -> dict:
    """Text settings shared by every family; `extra` adds or overrides family fields."""
    shared = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=hidden_size // HEAD_DIM,
        num_key_value_heads=max(1, hidden_size // (2 * HEAD_DIM)),
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return {**shared, **extra}


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
    vision_config = dict(
        depth=vision_depth,
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_heads=vision_hidden_size // HEAD_DIM,
        out_hidden_size=text_hidden_size,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[vision_depth - 1],
        tokens_per_second=2,
    )
    text_config = _text_config(text_hidden_size, vocab_size, num_hidden_layers)
    return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **TOKEN_IDS, **overrides)


def tiny_qwen2_vl_config(
    text_hidden_size: int = 32,
    vision_hidden_size: int = 32,
    vocab_size: int = 128,
    num_hidden_layers: int = 2,
    vision_depth: int = 2,
    **overrides,
) -> Qwen2VLConfig:
    """A Qwen2-VL config at toy width (patch 14, 2 x 2 merge, full vision attention, no `second_per_grid_ts`)."""
    vision_config = dict(
        depth=vision_depth,
        embed_dim=vision_hidden_size,
        hidden_size=text_hidden_size,
        mlp_ratio=2,
        num_heads=vision_hidden_size // HEAD_DIM,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    text_config = _text_config(text_hidden_size, vocab_size, num_hidden_layers)
    return Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **TOKEN_IDS, **overrides)


def _qwen3_vision_config(vision_hidden_size: int, text_hidden_size: int, vision_depth: int) -> dict:
    """The toy vision tower of Qwen3-VL and Qwen3.5: patch 16, learned positions interpolated to each image."""
    return dict(
        depth=vision_depth,
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_heads=vision_hidden_size // HEAD_DIM,
        out_hidden_size=text_hidden_size,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=64,  # an 8 x 8 grid of learned positions, interpolated to each image
    )


def tiny_qwen3_vl_config(
    text_hidden_size: int = 32,
    vision_hidden_size: int = 32,
    vocab_size: int = 128,
    num_hidden_layers: int = 2,
    vision_depth: int = 2,
    moe: bool = False,
    **overrides,
) -> Qwen3VLConfig | Qwen3VLMoeConfig:
    """A Qwen3-VL (with `moe`, Qwen3-VL-MoE: 4 experts, 2 per token) config at toy width: patch 16, interleaved
    mRoPE, and deepstack features taken after every vision block and added after the first decoder layers."""
    vision_config = _qwen3_vision_config(vision_hidden_size, text_hidden_size, vision_depth)
    vision_config["deepstack_visual_indexes"] = list(range(vision_depth))
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2], "mrope_interleaved": True}
    experts = dict(moe_intermediate_size=text_hidden_size, num_experts=4, num_experts_per_tok=2) if moe else {}
    text_config = _text_config(
        text_hidden_size, vocab_size, num_hidden_layers, head_dim=HEAD_DIM, rope_parameters=rope, **experts
    )
    config_class = Qwen3VLMoeConfig if moe else Qwen3VLConfig
    return config_class(text_config=text_config, vision_config=vision_config, **TOKEN_IDS, **overrides)


def tiny_qwen3_5_config(
    text_hidden_size: int = 32,
    vision_hidden_size: int = 32,
    vocab_size: int = 128,
    num_hidden_layers: int = 3,
    vision_depth: int = 2,
    moe: bool = False,
    **overrides,
) -> Qwen3_5Config | Qwen3_5MoeConfig:
    """A Qwen3.5 (with `moe`, Qwen3.5-MoE: 4 experts, 2 per token, and a shared expert) config at toy width.

    The vision tower is Qwen3-VL's without deepstack (patch 16). The language model alternates Gated DeltaNet
    linear-attention layers with full attention, starting and ending with a linear one (3 layers: linear, full,
    linear), so a recurrent layer feeds full attention and one reads its output; full attention uses gated queries
    and rotates half of each head (`partial_rotary_factor`), as the released models do (a quarter of 256 there).
    """
    vision_config = _qwen3_vision_config(vision_hidden_size, text_hidden_size, vision_depth)  # no deepstack
    head_dim = 2 * HEAD_DIM  # rotary on half of it: the mRoPE sections cover 4 frequencies
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2], "mrope_interleaved": True,
            "partial_rotary_factor": 0.5}
    layer_types = ["full_attention" if i % 2 else "linear_attention" for i in range(num_hidden_layers)]
    linear = dict(linear_conv_kernel_dim=4, linear_key_head_dim=HEAD_DIM, linear_value_head_dim=HEAD_DIM,
                  linear_num_key_heads=2, linear_num_value_heads=4)
    experts = dict(moe_intermediate_size=text_hidden_size, shared_expert_intermediate_size=text_hidden_size,
                   num_experts=4, num_experts_per_tok=2) if moe else {}
    text_config = _text_config(
        text_hidden_size, vocab_size, num_hidden_layers, head_dim=head_dim, num_attention_heads=text_hidden_size // head_dim,
        num_key_value_heads=1, rope_parameters=rope, layer_types=layer_types, **linear, **experts,
    )
    if moe:
        text_config.pop("intermediate_size")  # the MoE text config has none: its MLPs are the experts
    config_class = Qwen3_5MoeConfig if moe else Qwen3_5Config
    return config_class(text_config=text_config, vision_config=vision_config, **TOKEN_IDS, **overrides)


# The toy-width config builder of each family; the stock model class is the family's description.
_TINY_CONFIGS = {
    "qwen2_vl": tiny_qwen2_vl_config,
    "qwen2_5_vl": tiny_qwen2_5_vl_config,
    "qwen3_vl": tiny_qwen3_vl_config,
    "qwen3_vl_moe": lambda **kwargs: tiny_qwen3_vl_config(moe=True, **kwargs),
    "qwen3_5": tiny_qwen3_5_config,
    "qwen3_5_moe": lambda **kwargs: tiny_qwen3_5_config(moe=True, **kwargs),
}
# The families (stock `model_type`s of `modeling_visionselector.FAMILIES`) with a tiny builder: all (a test checks it).
FAMILIES = tuple(family for family in MODEL_FAMILIES if family in _TINY_CONFIGS)


def tiny_config(family: str = "qwen2_5_vl", **config_kwargs):
    """A toy-width config of `family` (one of `FAMILIES`), its token ids matching `tiny_tokenizer`."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; accepted: {list(FAMILIES)}.")
    return _TINY_CONFIGS[family](**config_kwargs)


def tiny_model(family: str = "qwen2_5_vl", seed: int = 0, attn_implementation: str = "sdpa", **config_kwargs):
    """A random tiny stock model of `family` (one of `FAMILIES`) in eval mode."""
    config = tiny_config(family, **config_kwargs)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return MODEL_FAMILIES[family].stock_model(config).eval()


def tiny_qwen2_5_vl(seed: int = 0, attn_implementation: str = "sdpa", **config_kwargs):
    """A random tiny stock `Qwen2_5_VLForConditionalGeneration` in eval mode."""
    return tiny_model("qwen2_5_vl", seed=seed, attn_implementation=attn_implementation, **config_kwargs)


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


def tiny_processor(min_pixels: int = 56 * 56, max_pixels: int = 224 * 224, family: str = "qwen2_5_vl", **tokenizer_kwargs):
    """An offline processor of `family` (the stock processor class; video processors need torchvision)."""
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor, Qwen3VLVideoProcessor

    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; accepted: {list(FAMILIES)}.")
    description = MODEL_FAMILIES[family]
    processor_class = getattr(transformers, description.processor)
    tokenizer = tiny_tokenizer(**tokenizer_kwargs)
    if description.patch_size == 16:
        # Qwen3-VL and later: 16 px patches; videos as given (no frame sampling), at 1 frame per second
        size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        image_processor = Qwen2VLImageProcessor(patch_size=16, size=size)
        video_processor = Qwen3VLVideoProcessor(size=size, do_sample_frames=False)
        return processor_class(image_processor, tokenizer, video_processor, chat_template=CHAT_TEMPLATE)
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    video_processor = Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
