"""Writes `hub_configs/<name>/config.json`, a VisionSelector config for each Qwen-VL Instruct backbone.

The architectures come from one table, `BACKBONES`: a row per backbone names its family, its official base repo,
the sizes that differ within the family, and which of its numbers were checked against which source. The fields
every size of a family shares are in `FAMILIES`. Together they restate the official `config.json` of each base repo
in that repo's own layout (Qwen2-VL and Qwen2.5-VL, transformers 4.4x/4.5x: text fields flat, `rope_scaling` with
the mRoPE sections; Qwen3-VL: `text_config` and `vision_config`). The configs are generated, never edited by hand:
change the table and run

    python hub_configs/generate.py            # (re)write every config
    python hub_configs/generate.py --check    # exit 1 if a written config differs from the table
    python hub_configs/generate.py --list     # the table: sizes, scorer parameters, provenance
    python hub_configs/generate.py --scorer-heads 4 --output-dir DIR   # the same configs with the 4-head scorer

Each config is of its family's VisionSelector configuration class (`VisionSelector` + the stock configuration's name,
as `VisionSelectorQwen2_5_VLConfig`; `modeling_visionselector/families.py`), names its official backbone in
`base_model_name_or_path` and has the paper's scorer: its width (`scorer_hidden_size` = LLM hidden size // 2, the
default) and one head (`scorer_heads` 1; `--scorer-heads` writes configs of the multi-head scorer, which has the same
tensors and parameter count). It is a training/publishing config, not a scorer-only artifact (`scorer_only` is False;
`save_scorer` sets it).

Provenance. There is no network here, so the official files could not be read. Each row's `checked` lists the
numbers that were compared with a public source that restates the official config (named in `SOURCES`); every
other number of a row (and of its family's shared fields, unless a source below says so) is FROM MEMORY of the
official `config.json`, and so are the published parameter counts (`parameters_b`) that no source is named for.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from modeling_visionselector import CONFIG_CLASSES
from modeling_visionselector import FAMILIES as MODEL_FAMILIES

HERE = Path(__file__).resolve().parent

# Public sources that restate (parts of) the official configs, found offline with a code search. "id" is the
# code-search id of a file whose repository the index does not name.
SOURCES = {
    "tf-defaults": "transformers 5.23 configuration defaults (models/qwen2_vl, qwen3_vl, qwen3_vl_moe), whose "
    "docstrings name Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen3-VL-4B-Instruct, Qwen/Qwen3-VL-30B-A3B-Instruct",
    "pai-megatron-qwen2.5-vl": "Megatron conversion script for Qwen2.5-VL 3B/7B/32B/72B (per-size layers, widths, "
    "heads, kv heads, max positions 128000, vocab size via extra vocab; code-search id 273393884)",
    "qwen2.5-vl-7b-json": "the Qwen2.5-VL-7B-Instruct config.json quoted in full in a public evaluation note "
    "(code-search id 25661707017)",
    "qwen2.5-vl-3b-json": "the Qwen2.5-VL-3B-Instruct config.json quoted in a public model-config page (up to "
    "rope_theta) and restated in full in a public Qwen2_5_VLConfig(...) call (code-search id 55701591320)",
    "mllm": "UbiquitousLearning/mllm, mllm/models/qwen2vl/configuration_qwen2vl.hpp (its Qwen2-VL-2B defaults)",
    "qwen2-vl-7b-print": "zhenhua32/Qwen2-VL, READ.md: the printed Qwen2VLForConditionalGeneration of the 7B",
    "qwen3-vl-2b-test": "a public test quoting Qwen/Qwen3-VL-2B-Instruct config.json at revision 89644892e4d8 "
    "(code-search id 58790212583), and an engine config of the 2B 'aligned with config.json' (id 61657298302)",
    "qwen3-vl-4b-json": "the full Qwen3-VL-4B-Instruct config.json in a public DiffSynth encoder (code-search id "
    "2019652574) and a Rust port's copy of the released config (id 62663972414)",
    "xtuner": "InternLM/xtuner, xtuner/v1/model/compose/qwen3_vl/qwen3_vl_config.py (Dense4B/Dense8B/MoE30BA3/"
    "MoE235BA22: vision depth/width/deepstack, projector output width, max positions 262144, rope theta 5e6, "
    "mRoPE [24, 20, 20]) with the text sizes of xtuner/v1/model/dense/qwen3.py and moe/qwen3.py",
    "cosmos-reason2-8b": "the text and vision config of nvidia/Cosmos-Reason2-8B (a Qwen3-VL-8B fine-tune) quoted "
    "in public code (code-search id 58988224642)",
    "qwen3-vl-32b-note": "a public architecture note citing Qwen/Qwen3-VL-32B-Instruct/config.json (code-search id "
    "66482040983) and a MiniMax-H3 text-encoder contract for Qwen3-VL-32B-Instruct (id 59189557892)",
    "lmstudio-8b": "EduardoNicacio/LLMBenchmark, qwen3-VL-8b/readme.md (LM Studio's Qwen3-VL-8B page: 8.77B parameters)",
    "model-pages": "third-party model pages: https://ai-nexus-293.pages.dev/model/huggingface:qwen:qwen2-vl-2b-instruct "
    "(Qwen2-VL-2B-Instruct: 2.21B parameters), https://docs.cognisoc.com/unillm/models/vision-language/qwen2-vl/ "
    "(Qwen2-VL 2B/7B/72B: 2.2B/8.3B/73B)",
    "megatron-235b": "a public Megatron launch script for Qwen3-VL-235B-A22B-Instruct (layers, width, FFN, heads, "
    "query groups, kv channels, experts, top-k, MoE FFN, rotary base, vocab, sequence length)",
    "slime-qwen3.5": "THUDM/slime, scripts/models/qwen3.5-27B.sh, qwen3.5-35B-A3B.sh, qwen3.5-397B-A17B.sh (Megatron "
    "arguments: layers, width, FFN, heads, query groups, kv channels 256, rotary percent 0.25, rotary base 1e7, vocab "
    "248320, untied embeddings, gated attention; MoE: experts, top-k, expert and shared-expert FFN; 35B-A3B also the "
    "linear-attention conv kernel, key/value head dims and head counts, full attention every 4th layer)",
    "qwen3.5-27b-config": "a public Qwen3_5Config(...) call restating a Qwen3.5 27B-size config field by field "
    "(code-search id 55568797625): text sizes, linear-attention heads and dims, max positions 262144, mRoPE "
    "[11, 11, 10] interleaved at partial rotary 0.25, rope theta 1e7, the vision tower (27 x 1152, MLP 4304, 16 "
    "heads, patch 16, 2304 position embeddings), token ids 248053-248057",
    "qwen3.5-35b-a3b-text": "a public parser test of the Qwen3.5-35B-A3B text config (code-search id 58587811594): "
    "every text size, experts 256 / 8, expert and shared-expert MLP 512, linear-attention heads 16 / 32, mRoPE",
    "qwen3.5-122b-page": "https://www.fitmygpu.com/models/qwen-3.5-122b-a10b (48 layers, 12 of them full attention)",
}


@dataclasses.dataclass(frozen=True)
class Family:
    """What every size of a family shares, and the layout of its official `config.json`; the stock classes are the
    family's description (`modeling_visionselector.FAMILIES`)."""

    model_type: str  # the stock `model_type`, the key of the family's description
    top: dict  # top-level fields
    text: dict  # language-model fields
    vision: dict  # vision-tower fields
    vision_out_key: str  # the vision field that is the LLM width (the merger's output)
    nested: bool  # True: text fields under `text_config` (Qwen3-VL); False: flat (Qwen2-VL, Qwen2.5-VL)

    @property
    def stock_config(self) -> type:
        """The transformers configuration class the official config.json is read with."""
        return MODEL_FAMILIES[self.model_type].stock_config

    @property
    def architecture(self) -> str:
        return MODEL_FAMILIES[self.model_type].stock_model.__name__

    @property
    def config_class(self):
        """The VisionSelector configuration class of the family."""
        return CONFIG_CLASSES[self.model_type]


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One official Instruct backbone: its family (stock `model_type`), base repo, published parameter count (a check
    on the sizes: a model built from the row must have it), the sizes that differ within the family, and `checked`:
    (which numbers, `SOURCES` key) pairs; the row's other numbers are from memory."""

    family: str
    base_repo: str
    parameters_b: float  # the backbone's published parameter count in billions (the model page's "Model size")
    text: dict
    vision: dict = dataclasses.field(default_factory=dict)
    checked: tuple[tuple[str, str], ...] = ()
    # how far a model built from the row may be from `parameters_b`: 0.5% for counts published to 3 digits; more
    # where only the rounded count in the model's name is known
    parameters_tolerance: float = 0.005


_QWEN2_IDS = dict(bos_token_id=151643, eos_token_id=151645, vision_start_token_id=151652, vision_end_token_id=151653,
                  vision_token_id=151654, image_token_id=151655, video_token_id=151656)
_QWEN2_TEXT = dict(attention_dropout=0.0, hidden_act="silu", initializer_range=0.02, rms_norm_eps=1e-06,
                   rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                   use_sliding_window=False, use_cache=True, torch_dtype="bfloat16")
_QWEN3_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                  vision_end_token_id=151653)
_QWEN3_TEXT = dict(attention_bias=False, attention_dropout=0.0, bos_token_id=151643, eos_token_id=151645, head_dim=128,
                   hidden_act="silu", initializer_range=0.02, max_position_embeddings=262144, rms_norm_eps=1e-06,
                   rope_scaling={"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
                   rope_theta=5000000, use_cache=True, vocab_size=151936, dtype="bfloat16")
# The Qwen3-VL vision tower: the same in every size but for depth, width and deepstack taps (two variants).
_QWEN3_VISION = dict(hidden_act="gelu_pytorch_tanh", in_channels=3, initializer_range=0.02, num_heads=16,
                     num_position_embeddings=2304, patch_size=16, spatial_merge_size=2, temporal_patch_size=2)
_QWEN3_VISION_SMALL = dict(depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=[5, 11, 17])
_QWEN3_VISION_LARGE = dict(depth=27, hidden_size=1152, intermediate_size=4304, deepstack_visual_indexes=[8, 16, 24])

# Qwen3.5: natively multimodal; the text fields in the transformers 5 layout (`rope_parameters`, `layer_types`), the
# vision tower Qwen3-VL's large one without deepstack. The official config.json also holds MTP fields (the multi-token
# prediction head, which transformers does not load): left out.
_QWEN3_5_IDS = dict(image_token_id=248056, video_token_id=248057, vision_start_token_id=248053,
                    vision_end_token_id=248054)
_QWEN3_5_TEXT = dict(attention_bias=False, attention_dropout=0.0, eos_token_id=248044, head_dim=256, hidden_act="silu",
                     initializer_range=0.02, max_position_embeddings=262144, rms_norm_eps=1e-06, use_cache=True,
                     vocab_size=248320, dtype="bfloat16", linear_conv_kernel_dim=4, linear_key_head_dim=128,
                     linear_value_head_dim=128, linear_num_key_heads=16,
                     rope_parameters={"mrope_interleaved": True, "mrope_section": [11, 11, 10], "rope_type": "default",
                                      "rope_theta": 10000000, "partial_rotary_factor": 0.25})
_QWEN3_5_VISION = dict(depth=27, hidden_size=1152, intermediate_size=4304, hidden_act="gelu_pytorch_tanh", in_channels=3,
                       initializer_range=0.02, num_heads=16, num_position_embeddings=2304, patch_size=16,
                       spatial_merge_size=2, temporal_patch_size=2)

FAMILIES = {
    "qwen2_vl": Family(
        model_type="qwen2_vl",
        top=_QWEN2_IDS,
        text={**_QWEN2_TEXT, "max_position_embeddings": 32768, "sliding_window": 32768},
        # 675M-parameter tower: full attention in every block, 2-matrix MLP at 4x width (`hidden_size` = LLM width)
        vision=dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, patch_size=14, spatial_merge_size=2,
                    temporal_patch_size=2),
        vision_out_key="hidden_size",
        nested=False,
    ),
    "qwen2_5_vl": Family(
        model_type="qwen2_5_vl",
        top=_QWEN2_IDS,
        text={**_QWEN2_TEXT, "max_position_embeddings": 128000, "sliding_window": 32768},
        # 675M-parameter tower, the same in every size: windowed attention but 4 blocks, SwiGLU MLP
        vision=dict(depth=32, hidden_act="silu", hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                    tokens_per_second=2),
        vision_out_key="out_hidden_size",
        nested=False,
    ),
    "qwen3_vl": Family(
        model_type="qwen3_vl",
        top=_QWEN3_IDS,
        text=_QWEN3_TEXT,
        vision=_QWEN3_VISION,
        vision_out_key="out_hidden_size",
        nested=True,
    ),
    "qwen3_vl_moe": Family(
        model_type="qwen3_vl_moe",
        top=_QWEN3_IDS,
        text={**_QWEN3_TEXT, "decoder_sparse_step": 1, "mlp_only_layers": [], "num_experts": 128,
              "num_experts_per_tok": 8},
        vision={**_QWEN3_VISION, **_QWEN3_VISION_LARGE},
        vision_out_key="out_hidden_size",
        nested=True,
    ),
    "qwen3_5": Family(
        model_type="qwen3_5",
        top=_QWEN3_5_IDS,
        text=_QWEN3_5_TEXT,
        vision=_QWEN3_5_VISION,
        vision_out_key="out_hidden_size",
        nested=True,
    ),
    "qwen3_5_moe": Family(
        model_type="qwen3_5_moe",
        top=_QWEN3_5_IDS,
        text=_QWEN3_5_TEXT,
        vision=_QWEN3_5_VISION,
        vision_out_key="out_hidden_size",
        nested=True,
    ),
}


def _qwen2_sizes(hidden, mlp, layers, heads, kv_heads, vocab, tied):
    return dict(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads, max_window_layers=layers, vocab_size=vocab, tie_word_embeddings=tied)


def _qwen3_sizes(hidden, mlp, layers, heads, kv_heads, tied, **moe):
    return dict(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads, tie_word_embeddings=tied, **moe)


def _qwen3_5_sizes(hidden, layers, heads, kv_heads, linear_value_heads, tied, mlp=None, **moe):
    """Qwen3.5 sizes; full attention in every 4th layer (the official `full_attention_interval`), linear otherwise."""
    sizes = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                 linear_num_value_heads=linear_value_heads, tie_word_embeddings=tied,
                 layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)], **moe)
    return sizes if mlp is None else {**sizes, "intermediate_size": mlp}


# name -> row. Sizes: hidden, MLP, layers, query heads, key-value heads, (vocab,) tied embeddings.
BACKBONES = {
    # ---- Qwen2-VL
    "VisionSelector-Qwen2-VL-2B-Instruct": Backbone(
        "qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct", 2.21, _qwen2_sizes(1536, 8960, 28, 12, 2, 151936, True),
        checked=(("hidden, MLP, layers, heads, kv heads, vocab, tied embeddings, rms eps, rope theta, mRoPE sections, "
                  "vision tower (32 x 1280, mlp_ratio 4, 16 heads, patch 14, 2x2 merge), vision/bos/eos token ids", "mllm"),
                 ("parameter count", "model-pages")),
    ),
    "VisionSelector-Qwen2-VL-7B-Instruct": Backbone(
        "qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct", 8.29, _qwen2_sizes(3584, 18944, 28, 28, 4, 152064, False),
        checked=(("hidden, MLP, layers, heads, kv heads (k_proj 512 = 4 x 128), vocab, untied lm_head, vision tower "
                  "(32 x 1280, MLP 5120, merger to 3584)", "qwen2-vl-7b-print"),
                 ("vision tower fields (depth, embed_dim, mlp_ratio, num_heads, patch, merge)", "tf-defaults"),
                 ("parameter count (to 2 digits)", "model-pages")),
    ),
    "VisionSelector-Qwen2-VL-72B-Instruct": Backbone(
        "qwen2_vl", "Qwen/Qwen2-VL-72B-Instruct", 73.4, _qwen2_sizes(8192, 29568, 80, 64, 8, 152064, False),
        checked=(("hidden, MLP, layers, heads, kv heads, vocab, max_window_layers, max positions: equal to the text "
                  "defaults (that these defaults are the 72B's is from memory)", "tf-defaults"),
                 ("parameter count (to 2 digits)", "model-pages")),
    ),
    # ---- Qwen2.5-VL
    "VisionSelector-Qwen2.5-VL-3B-Instruct": Backbone(
        "qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct", 3.75, _qwen2_sizes(2048, 11008, 36, 16, 2, 151936, True)
        | {"max_window_layers": 70},
        checked=(("every field", "qwen2.5-vl-3b-json"),
                 ("hidden, MLP, layers, heads, kv heads, max positions, vocab, tied", "pai-megatron-qwen2.5-vl")),
    ),
    "VisionSelector-Qwen2.5-VL-7B-Instruct": Backbone(
        "qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct", 8.29, _qwen2_sizes(3584, 18944, 28, 28, 4, 152064, False),
        checked=(("every field", "qwen2.5-vl-7b-json"),),
    ),
    "VisionSelector-Qwen2.5-VL-32B-Instruct": Backbone(
        "qwen2_5_vl", "Qwen/Qwen2.5-VL-32B-Instruct", 33.5, _qwen2_sizes(5120, 27648, 64, 40, 8, 152064, False),
        checked=(("hidden, MLP, layers, heads, kv heads, max positions, vocab, untied", "pai-megatron-qwen2.5-vl"),),
    ),
    "VisionSelector-Qwen2.5-VL-72B-Instruct": Backbone(
        "qwen2_5_vl", "Qwen/Qwen2.5-VL-72B-Instruct", 73.4, _qwen2_sizes(8192, 29568, 80, 64, 8, 152064, False),
        checked=(("hidden, MLP, layers, heads, kv heads, max positions, vocab, untied", "pai-megatron-qwen2.5-vl"),),
    ),
    # ---- Qwen3-VL (dense)
    "VisionSelector-Qwen3-VL-2B-Instruct": Backbone(
        "qwen3_vl", "Qwen/Qwen3-VL-2B-Instruct", 2.13, _qwen3_sizes(2048, 6144, 28, 16, 8, True), _QWEN3_VISION_SMALL,
        checked=(("hidden, MLP, layers, heads, kv heads, head dim, vocab, max positions, rope theta, vision width, "
                  "deepstack taps, vision output; tied embeddings, vision depth and MLP", "qwen3-vl-2b-test"),),
    ),
    "VisionSelector-Qwen3-VL-4B-Instruct": Backbone(
        "qwen3_vl", "Qwen/Qwen3-VL-4B-Instruct", 4.44, _qwen3_sizes(2560, 9728, 36, 32, 8, True), _QWEN3_VISION_SMALL,
        checked=(("every field", "qwen3-vl-4b-json"), ("vision depth, width, MLP, deepstack taps", "xtuner")),
    ),
    "VisionSelector-Qwen3-VL-8B-Instruct": Backbone(
        "qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct", 8.77, _qwen3_sizes(4096, 12288, 36, 32, 8, False), _QWEN3_VISION_LARGE,
        checked=(("hidden, MLP, layers, heads, kv heads, head dim, max positions, rope, untied, the whole vision "
                  "tower", "cosmos-reason2-8b"),
                 ("text sizes, vocab, vision tower, projector width 4096", "xtuner"),
                 ("vision depth, width, MLP, heads, deepstack taps", "tf-defaults"),
                 ("parameter count", "lmstudio-8b")),
    ),
    "VisionSelector-Qwen3-VL-32B-Instruct": Backbone(
        "qwen3_vl", "Qwen/Qwen3-VL-32B-Instruct", 33.4, _qwen3_sizes(5120, 25600, 64, 64, 8, False), _QWEN3_VISION_LARGE,
        checked=(("layers, hidden, heads, kv heads, head dim, MLP, vocab, max positions, mRoPE, vision depth, "
                  "width, MLP, heads, output width, deepstack taps", "qwen3-vl-32b-note"),),
    ),
    # ---- Qwen3-VL-MoE
    "VisionSelector-Qwen3-VL-30B-A3B-Instruct": Backbone(
        "qwen3_vl_moe", "Qwen/Qwen3-VL-30B-A3B-Instruct", 31.1,
        _qwen3_sizes(2048, 6144, 48, 32, 4, False, moe_intermediate_size=768),
        checked=(("every size: layers, hidden, MLP, MoE MLP, heads, kv heads, head dim, experts, experts per token, "
                  "vocab, untied, max positions, rope theta, mRoPE, vision tower, projector width 2048", "xtuner"),
                 ("vision tower", "tf-defaults")),
    ),
    "VisionSelector-Qwen3-VL-235B-A22B-Instruct": Backbone(
        "qwen3_vl_moe", "Qwen/Qwen3-VL-235B-A22B-Instruct", 236,
        _qwen3_sizes(4096, 12288, 94, 64, 4, False, moe_intermediate_size=1536),
        checked=(("every size: layers, hidden, MLP, MoE MLP, heads, kv heads, head dim, experts, experts per token, "
                  "vocab, untied, max positions, rope theta, mRoPE, vision tower, projector width 4096", "xtuner"),
                 ("layers, hidden, FFN, MoE FFN, heads, kv heads, kv channels, experts, top-k, rope, vocab",
                  "megatron-235b")),
    ),
    # ---- Qwen3.5 (dense). Repos have no -Instruct suffix: the released models are the instruct ones. The parameter
    # counts are the names' (rounded), checked to 3% (`parameters_tolerance`).
    "VisionSelector-Qwen3.5-27B": Backbone(
        "qwen3_5", "Qwen/Qwen3.5-27B", 27, _qwen3_5_sizes(5120, 64, 24, 4, 48, False, mlp=17408),
        checked=(("every text and vision field, token ids", "qwen3.5-27b-config"),
                 ("layers, hidden, MLP, heads, kv heads, head dim, vocab, untied, rotary, gated attention",
                  "slime-qwen3.5")),
        parameters_tolerance=0.03,
    ),
    # ---- Qwen3.5-MoE
    "VisionSelector-Qwen3.5-35B-A3B": Backbone(
        "qwen3_5_moe", "Qwen/Qwen3.5-35B-A3B", 35,
        _qwen3_5_sizes(2048, 40, 16, 2, 32, False, num_experts=256, num_experts_per_tok=8, moe_intermediate_size=512,
                       shared_expert_intermediate_size=512),
        checked=(("every text size: layers, hidden, heads, kv heads, head dim, experts, top-k, expert and shared "
                  "MLP, linear-attention heads and dims, conv kernel, full attention every 4th layer, vocab, rotary",
                  "slime-qwen3.5"),
                 ("the same text sizes, max positions, mRoPE", "qwen3.5-35b-a3b-text")),
        parameters_tolerance=0.03,
    ),
    "VisionSelector-Qwen3.5-122B-A10B": Backbone(
        "qwen3_5_moe", "Qwen/Qwen3.5-122B-A10B", 122,
        _qwen3_5_sizes(3072, 48, 32, 2, 64, False, num_experts=256, num_experts_per_tok=8, moe_intermediate_size=1024,
                       shared_expert_intermediate_size=1024),
        checked=(("layers, 12 of them full attention", "qwen3.5-122b-page"),),
        parameters_tolerance=0.03,
    ),
    "VisionSelector-Qwen3.5-397B-A17B": Backbone(
        "qwen3_5_moe", "Qwen/Qwen3.5-397B-A17B", 397,
        _qwen3_5_sizes(4096, 60, 32, 2, 64, False, num_experts=512, num_experts_per_tok=10, moe_intermediate_size=1024,
                       shared_expert_intermediate_size=1024),
        checked=(("layers, hidden, heads, kv heads, head dim, experts, top-k, expert and shared-expert MLP, vocab, "
                  "untied, rotary", "slime-qwen3.5"),),
        parameters_tolerance=0.03,
    ),
}


def official_config_dict(name: str) -> dict:
    """The backbone's `config.json` as the base repo has it (without `transformers_version`)."""
    row = BACKBONES[name]
    family = FAMILIES[row.family]
    text = {**family.text, **row.text}
    vision = {**family.vision, **row.vision, family.vision_out_key: text["hidden_size"]}
    head = {"architectures": [family.architecture], "model_type": row.family, **family.top}
    if family.nested:
        return {**head, "tie_word_embeddings": text["tie_word_embeddings"], "text_config": text, "vision_config": vision}
    return {**head, **text, "vision_config": vision}


def backbone_config(name: str):
    """The stock transformers configuration of the backbone `name`."""
    family = FAMILIES[BACKBONES[name].family]
    return family.stock_config(**{k: v for k, v in official_config_dict(name).items() if k != "model_type"})


def visionselector_config(name: str, **overrides):
    """The VisionSelector config of the table row `name` (its family's class), with `overrides` applied."""
    row = BACKBONES[name]
    config_class = FAMILIES[row.family].config_class
    return config_class.from_backbone_config(backbone_config(name), base_model_name_or_path=row.base_repo, **overrides)


def scorer_parameters(hidden_size: int, scorer_hidden_size: int | None = None) -> int:
    """Parameters of the scorer's query and key projections (weights and biases): 2 (D h + h), h = D // 2 by default."""
    h = hidden_size // 2 if scorer_hidden_size is None else scorer_hidden_size
    return 2 * (hidden_size * h + h)


def rendered(name: str, **overrides) -> dict:
    """The `config.json` content `main` writes for `name` (with the scorer fields `overrides`)."""
    with tempfile.TemporaryDirectory() as folder:
        visionselector_config(name, **overrides).save_pretrained(folder)
        return json.loads((Path(folder) / "config.json").read_text())


def _comparable(config: dict) -> dict:
    return {key: value for key, value in config.items() if key != "transformers_version"}


def table() -> str:
    """The table as markdown: sizes, scorer parameters and provenance of every row."""
    lines = ["| config | class | base repo | LLM hidden | scorer parameters | checked (source) |", "|---|---|---|---|---|---|"]
    for name, row in BACKBONES.items():
        hidden = row.text["hidden_size"]
        checked = "; ".join(f"{what} ({source})" for what, source in row.checked) or "nothing"
        lines.append(f"| {name} | {FAMILIES[row.family].config_class.__name__} | {row.base_repo} | {hidden} | "
                     f"{scorer_parameters(hidden):,} | {checked} |")
    lines += ["", "Everything not listed as checked (other fields, the family-wide fields, the published parameter "
              "counts) is from memory of the official config.json and model pages.", "", "Sources:"]
    lines += [f"- {key}: {text}" for key, text in SOURCES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare the written configs with the table")
    parser.add_argument("--list", action="store_true", help="print the table (sizes, scorer parameters, provenance)")
    parser.add_argument("--output-dir", type=Path, default=HERE, help="where the <name>/config.json folders go")
    parser.add_argument("--scorer-heads", type=int, default=1, help="`scorer_heads` of every config (default: 1, the paper's scorer)")
    parser.add_argument("--scorer-head-reduction", default="max", help="`scorer_head_reduction`: max or logsumexp (default: %(default)s)")
    args = parser.parse_args(argv)
    scorer = {"scorer_heads": args.scorer_heads, "scorer_head_reduction": args.scorer_head_reduction}
    try:
        visionselector_config(next(iter(BACKBONES)), **scorer)  # a bad value fails here, naming it, before any write
    except ValueError as error:
        parser.error(str(error))
    if args.list:
        print(table())
        return 0
    stale = []
    for name in BACKBONES:
        path = args.output_dir / name / "config.json"
        content = rendered(name, **scorer)
        if args.check:
            if not path.exists() or _comparable(json.loads(path.read_text())) != _comparable(content):
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")
    if stale:
        print("Out of date (run `python hub_configs/generate.py`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
