"""Prefill speed and memory of VisionSelector against the stock Qwen-VL model and against the ideal speedup.

Usage:
    python benchmarks/prefill.py                      # Qwen2.5-VL-7B structure, CPU, float32: a few minutes on 2 cores
    python benchmarks/prefill.py --family qwen3_vl    # --family qwen2_vl | qwen2_5_vl (default) | qwen3_vl | qwen3_vl_moe
                                                      #          | qwen3_5 | qwen3_5_moe
    python benchmarks/prefill.py --device cuda --attn flash_attention_2 --dtype bfloat16
    python benchmarks/prefill.py --sizes 1024,8x16x16 --ratios 1.0,0.2 --repeats 5 --out /tmp/prefill.json

What is measured, per input and retention ratio r, all in one run (median of `--repeats` after one warm-up):

- T_full: the stock model's prefill (encoder + all visual tokens through the LLM).
- T_pruned(r): the VisionSelector prefill with the learned selector; speedup = T_full / T_pruned(r).
- T_vision(r): encoder + scorer + selection (`select_visual_tokens`), and within it T_select(r): scorer + top-k.
- T_llm(r): the language model alone on the pruned sequence (embeddings, all layers, the last token's logits).
- ideal speedup = T_full / (T_vision(r) + T_llm(r)): what pruning could give if gathering the kept tokens and
  rebuilding positions cost nothing; achieved/ideal = speedup / ideal is the overhead of doing it for real.
- KV cache bytes of the prefill, and peak memory of the prefill above the weights (CUDA: allocator peak;
  CPU: allocation records of the profiler during the warm-up call).

The model. A 7B-class model is far too slow to prefill a 4096-token image on 2 CPU cores, so the benchmark builds a
random model with the structure of one full-size backbone of the `--family` (the rows of `FAMILIES`) at a shrunk
width:

| `--family` | structure of | vision tower | LLM |
| --- | --- | --- | --- |
| `qwen2_vl` | Qwen2-VL-7B | 32 blocks, patch 14, full attention in every block, GELU MLP (2 matrices, 4x) | 28 layers, 7:1 GQA |
| `qwen2_5_vl` | Qwen2.5-VL-7B | 32 blocks, patch 14, 112 px windows, full attention at blocks 7/15/23/31, SwiGLU MLP | 28 layers, 7:1 GQA |
| `qwen3_vl` | Qwen3-VL-8B | 27 blocks, patch 16, full attention, GELU MLP (2 matrices), 3 deepstack mergers | 36 layers, 4:1 GQA |
| `qwen3_vl_moe` | Qwen3-VL-30B-A3B | as Qwen3-VL-8B | 48 layers, 8:1 GQA, 8 of 128 experts per token |
| `qwen3_5` | Qwen3.5-27B | as Qwen3-VL-8B, no deepstack | 64 layers: 48 Gated DeltaNet, 16 gated full attention (6:1 GQA) |
| `qwen3_5_moe` | Qwen3.5-35B-A3B | as Qwen3-VL-8B, no deepstack | 40 layers: 30 Gated DeltaNet, 10 gated full attention (8:1 GQA); 8 of 256 experts + a shared one |

Qwen3.5's Gated DeltaNet (linear-attention) layers cost per token, not per pair of tokens (`llm_macs`): the input
projections (q, k, v, the output gate z, the decay and write gates a, b), a short causal convolution over q, k, v, the
delta-rule recurrence (per value head: decay, read, write and query of a key x value state, 4 d_k d_v) and the output
projection. Only every 4th layer has attention over the sequence (with a gated query: the query projection is twice
as wide). So the LLM's cost grows more slowly with the sequence than a transformer's, and pruning saves mostly the
per-token work of every layer.

All merge 2 x 2 patches into one visual token and use mRoPE. What decides the speedup of pruning is the vision
encoder's share of prefill compute, because only the LLM part shrinks with r. Counted in multiply-accumulates (MACs,
`prefill_macs` below; an MoE LLM counts the MLPs of its active experts only), that share is about 28% for
Qwen2.5-VL-7B at 256 merged tokens and about 32% at 4096 (full-attention blocks over 16k patches weigh in). Shrinking
every width by the same factor s keeps the matrix products' ratio but makes attention (N^2 d, not N d^2) weigh 1/s
times more, so one shrunk model cannot match the full-size one at every size. Instead:

- the LLM is the full-size one at width / `--width-divisor` (default 32: Qwen2.5-VL-7B gives hidden 112, 7 query heads
  and 1 key-value head of dim 16, MLP 592), the same for every input, except where even a vision tower of width 16
  would exceed the full-size model's vision share (full attention in every block, as in Qwen2-VL and Qwen3-VL, over
  many patches): there the LLM is widened in steps of 16 until that tower fits;
- for each input, the vision width (a multiple of 16, heads of dim 16, MLP at the full-size ratio) is the largest
  whose vision share does not exceed the full-size model's, and its MLP width is then raised until the two shares
  match (Qwen2-VL's config states the vision MLP as an integer multiple of the width, so there the match is only as
  close as that multiple allows).

The table states both shares and also the full-size model's ideal speedup from MAC counts. The shrunk LLM still gives
its attention a larger share than the full-size one does, so the measured ideal is somewhat above the MAC ideal at
long sequences; achieved/ideal compares like with like.

The scorer part times `VisionSelectorScorer` (mean-key form, O(N h)) against the naive N x N formula
(`(q @ k.T).mean(1)`, O(N^2 h)) at N = 1k ... 16k tokens of the benchmark LLM width (`--scorer-width` to change),
checking both agree, and skips the naive one where its N x N matrix would exceed `--naive-max-gib`; for the paper's
scorer and the 4-head one (`scorer_heads=4`, max over heads: the same tensors and parameter count), each row with
its parameter count.

Writes the tables as markdown (printed, and next to the JSON) and everything as JSON (`--out`; by default
`benchmarks/results/prefill_<device>.json` for qwen2_5_vl and `prefill_<family>_<device>.json` for the others).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the CPU memory profiler's start/stop lines off stderr
import torch  # noqa: E402

from modeling_visionselector import FAMILIES as MODEL_FAMILIES  # noqa: E402
from modeling_visionselector import (  # noqa: E402
    VisionSelectorScorer,
    from_backbone,
    num_kept_tokens,
    select_tokens,
)

IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 5, 6, 3, 4
TEXT_TOKENS = 32  # prompt text around the visual tokens (16 before, 16 after)
FRAME_TEXT_TOKENS = 4  # Qwen3-VL: the timestamp text before each frame of a video ("<0.5 seconds>")


# ---------------------------------------------------------------------------------------------- compute model


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Widths and depths of a Qwen-VL model that matter for prefill compute."""

    vision_hidden: int
    vision_mlp: int
    llm_hidden: int
    llm_mlp: int  # an MoE: the MLP width of one expert
    llm_heads: int
    llm_kv_heads: int
    llm_head_dim: int
    llm_layers: int
    vision_depth: int
    vision_full_attention: tuple[int, ...]  # the blocks with full attention (per frame); the others use windows
    window_merged: int = 4  # windows of 4 x 4 merged tokens = 8 x 8 patches (Qwen2.5-VL: 112 px)
    vision_mlp_matrices: int = 3  # SwiGLU: gate, up, down; a GELU MLP: 2
    deepstack_taps: tuple[int, ...] = ()  # Qwen3-VL: blocks whose output a merger of its own hands to the LLM
    patch_size: int = 14
    llm_experts: int = 0  # an MoE: routed experts per layer (0: one dense MLP)
    llm_active_experts: int = 1  # experts each token runs through
    llm_shared_expert_mlp: int = 0  # an MoE with a shared expert (Qwen3.5): its MLP width (0: none)
    # Qwen3.5: every `llm_full_attention_interval`-th layer is full attention (with a gated query, twice as wide),
    # the others Gated DeltaNet linear attention with these heads (1: a transformer, every layer full attention)
    llm_full_attention_interval: int = 1
    linear_key_heads: int = 0
    linear_value_heads: int = 0
    linear_head_dim: int = 0  # key and value head dim of the linear-attention layers
    linear_conv_kernel: int = 4


@dataclasses.dataclass(frozen=True)
class Family:
    """One Qwen-VL family in the benchmark: the full-size model whose structure it copies, and how to build one. The
    stock classes and the video layout are the family's description (`modeling_visionselector.FAMILIES`)."""

    model_type: str  # the stock `model_type`, the key of the family's description
    label: str  # the full-size model, as the tables name it
    backbone: str  # its Hub id
    full: Architecture
    vision_fields: Callable[[Architecture], dict]  # the family's `vision_config` for an architecture
    rope: dict  # the text rope parameters but the mRoPE sections
    mrope_split: tuple[int, int, int]  # the full model's mRoPE sections (t, h, w), of its head dim / 2
    vision_mlp_per_width: bool = False  # the config states the vision MLP as an integer multiple of the width
    partial_rotary: float = 1.0  # the share of each head's dims that rotate (of the benchmark model; Qwen3.5: 0.5)

    @property
    def stock_class(self) -> type:
        return MODEL_FAMILIES[self.model_type].stock_model

    @property
    def config_class(self) -> type:
        return MODEL_FAMILIES[self.model_type].stock_config

    @property
    def video_per_frame(self) -> bool:
        """A video is one <vision_start> ... <vision_end> block per frame, timestamps between."""
        return MODEL_FAMILIES[self.model_type].video_per_frame


def _qwen2_vl_vision(a: Architecture) -> dict:
    return dict(depth=a.vision_depth, embed_dim=a.vision_hidden, mlp_ratio=a.vision_mlp // a.vision_hidden,
                num_heads=a.vision_hidden // 16, hidden_size=a.llm_hidden, patch_size=a.patch_size)


def _qwen2_5_vl_vision(a: Architecture) -> dict:
    return dict(depth=a.vision_depth, hidden_size=a.vision_hidden, intermediate_size=a.vision_mlp,
                num_heads=a.vision_hidden // 16, out_hidden_size=a.llm_hidden, patch_size=a.patch_size,
                window_size=2 * a.window_merged * a.patch_size, fullatt_block_indexes=list(a.vision_full_attention),
                tokens_per_second=2)


def _qwen3_5_vision(a: Architecture) -> dict:
    return dict(depth=a.vision_depth, hidden_size=a.vision_hidden, intermediate_size=a.vision_mlp,
                num_heads=a.vision_hidden // 16, out_hidden_size=a.llm_hidden, patch_size=a.patch_size)


def _qwen3_vl_vision(a: Architecture) -> dict:
    return dict(depth=a.vision_depth, hidden_size=a.vision_hidden, intermediate_size=a.vision_mlp,
                num_heads=a.vision_hidden // 16, out_hidden_size=a.llm_hidden, patch_size=a.patch_size,
                deepstack_visual_indexes=list(a.deepstack_taps))


_QWEN2_ROPE = {"rope_type": "default", "rope_theta": 1e6}
_QWEN3_ROPE = {"rope_type": "default", "rope_theta": 5e6, "mrope_interleaved": True}
_QWEN3_VL_8B_VISION = dict(vision_hidden=1152, vision_mlp=4304, vision_depth=27, vision_full_attention=tuple(range(27)),
                           vision_mlp_matrices=2, deepstack_taps=(8, 16, 24), patch_size=16)

_QWEN3_5_ROPE = {"rope_type": "default", "rope_theta": 1e7, "mrope_interleaved": True}
_QWEN3_5_VISION = {**_QWEN3_VL_8B_VISION, "deepstack_taps": ()}
_QWEN3_5_LINEAR = dict(llm_full_attention_interval=4, linear_key_heads=16, linear_head_dim=128, linear_conv_kernel=4)

# One row per family: the full-size model of `hub_configs/` whose structure the benchmark copies (a test checks the
# numbers against that table).
FAMILIES = {
    row.model_type: row
    for row in (
        Family(
            "qwen2_vl", "7B", "Qwen/Qwen2-VL-7B-Instruct",
            Architecture(vision_hidden=1280, vision_mlp=5120, llm_hidden=3584, llm_mlp=18944, llm_heads=28, llm_kv_heads=4,
                         llm_head_dim=128, llm_layers=28, vision_depth=32, vision_full_attention=tuple(range(32)),
                         vision_mlp_matrices=2),
            _qwen2_vl_vision, _QWEN2_ROPE, (16, 24, 24),
            vision_mlp_per_width=True,
        ),
        Family(
            "qwen2_5_vl", "7B", "Qwen/Qwen2.5-VL-7B-Instruct",
            Architecture(vision_hidden=1280, vision_mlp=3420, llm_hidden=3584, llm_mlp=18944, llm_heads=28, llm_kv_heads=4,
                         llm_head_dim=128, llm_layers=28, vision_depth=32, vision_full_attention=(7, 15, 23, 31)),
            _qwen2_5_vl_vision, _QWEN2_ROPE, (16, 24, 24),
        ),
        Family(
            "qwen3_vl", "8B", "Qwen/Qwen3-VL-8B-Instruct",
            Architecture(llm_hidden=4096, llm_mlp=12288, llm_heads=32, llm_kv_heads=8, llm_head_dim=128, llm_layers=36,
                         **_QWEN3_VL_8B_VISION),
            _qwen3_vl_vision, _QWEN3_ROPE, (24, 20, 20),
        ),
        Family(
            "qwen3_vl_moe", "30B-A3B", "Qwen/Qwen3-VL-30B-A3B-Instruct",
            Architecture(llm_hidden=2048, llm_mlp=768, llm_heads=32, llm_kv_heads=4, llm_head_dim=128, llm_layers=48,
                         llm_experts=128, llm_active_experts=8, **_QWEN3_VL_8B_VISION),
            _qwen3_vl_vision, _QWEN3_ROPE, (24, 20, 20),
        ),
        # The full-size models rotate a quarter of their 256-dim heads (mRoPE sections 11, 11, 10); the benchmark
        # model's heads of 16 rotate half (4 frequencies), as rotary costs no MACs here.
        Family(
            "qwen3_5", "27B", "Qwen/Qwen3.5-27B",
            Architecture(llm_hidden=5120, llm_mlp=17408, llm_heads=24, llm_kv_heads=4, llm_head_dim=256, llm_layers=64,
                         linear_value_heads=48, **_QWEN3_5_LINEAR, **_QWEN3_5_VISION),
            _qwen3_5_vision, _QWEN3_5_ROPE, (11, 11, 10),
            partial_rotary=0.5,
        ),
        Family(
            "qwen3_5_moe", "35B-A3B", "Qwen/Qwen3.5-35B-A3B",
            Architecture(llm_hidden=2048, llm_mlp=512, llm_heads=16, llm_kv_heads=2, llm_head_dim=256, llm_layers=40,
                         llm_experts=256, llm_active_experts=8, llm_shared_expert_mlp=512, linear_value_heads=32,
                         **_QWEN3_5_LINEAR, **_QWEN3_5_VISION),
            _qwen3_5_vision, _QWEN3_5_ROPE, (11, 11, 10),
            partial_rotary=0.5,
        ),
    )
}


def _blocks(size: int, block: int) -> list[int]:
    return [block] * (size // block) + ([size % block] if size % block else [])


def vision_macs(arch: Architecture, grid: tuple[int, int, int]) -> float:
    """MACs of the vision encoder and its mergers on one item of (t, h, w) merged tokens (4 patches each)."""
    t, h, w = grid
    patches = 4 * t * h * w
    d, m = arch.vision_hidden, arch.vision_mlp
    per_layer_linear = patches * (4 * d * d + arch.vision_mlp_matrices * d * m)  # qkv + output projections, MLP
    window_sq = t * sum((4 * a * b) ** 2 for a in _blocks(h, arch.window_merged) for b in _blocks(w, arch.window_merged))
    frame_sq = t * (4 * h * w) ** 2  # full attention is per frame
    full = len(arch.vision_full_attention)
    attention = 2 * d * (full * frame_sq + (arch.vision_depth - full) * window_sq)  # scores and weighted sum
    mergers = (1 + len(arch.deepstack_taps)) * t * h * w * ((4 * d) ** 2 + 4 * d * arch.llm_hidden)
    patch_values = 3 * 2 * arch.patch_size**2  # channels x temporal patch x patch x patch
    return patches * patch_values * d + arch.vision_depth * per_layer_linear + attention + mergers


def full_attention_layers(arch: Architecture) -> int:
    """How many of the LLM's layers attend over the sequence (Qwen3.5: every 4th; the others are linear attention)."""
    return arch.llm_layers // arch.llm_full_attention_interval


def llm_macs(arch: Architecture, length: int) -> float:
    """MACs of a causal LLM prefill of `length` tokens (the last token's logits are negligible and left out); an MoE
    counts its router, the MLPs of the experts each token runs through and a shared expert; a hybrid (Qwen3.5) counts
    its full-attention and its Gated DeltaNet layers apart."""
    d, q, kv = arch.llm_hidden, arch.llm_heads * arch.llm_head_dim, arch.llm_kv_heads * arch.llm_head_dim
    mlp = arch.llm_active_experts * 3 * d * arch.llm_mlp + d * arch.llm_experts  # SwiGLU MLPs, router
    if arch.llm_shared_expert_mlp:
        mlp += 3 * d * arch.llm_shared_expert_mlp + d  # the shared expert and its gate
    gated = arch.llm_full_attention_interval > 1  # Qwen3.5's full attention: the query projection also gives a gate
    per_token = (3 if gated else 2) * d * q + 2 * d * kv + mlp  # q (and gate) and output, k and v projections, MLP
    attention = 2 * q * length * (length + 1) / 2
    full_layers = full_attention_layers(arch)
    macs = full_layers * (length * per_token + attention)
    if full_layers < arch.llm_layers:  # Gated DeltaNet layers: linear in the length
        k, v = arch.linear_key_heads * arch.linear_head_dim, arch.linear_value_heads * arch.linear_head_dim
        projections = d * (2 * k + v) + d * v + 2 * d * arch.linear_value_heads + v * d  # qkv, z, a and b; output
        convolution = (2 * k + v) * arch.linear_conv_kernel
        recurrence = 4 * arch.linear_value_heads * arch.linear_head_dim**2  # decay, read, write, query of the state
        macs += (arch.llm_layers - full_layers) * length * (projections + convolution + recurrence + mlp)
    return macs


def prefill_macs(arch: Architecture, grid, text_tokens: int, retention_ratio: float = 1.0) -> tuple[float, float]:
    """(vision MACs, LLM MACs) of a prefill of one item plus `text_tokens` other tokens at `retention_ratio`."""
    n = grid[0] * grid[1] * grid[2]
    kept = num_kept_tokens(n, retention_ratio)
    return vision_macs(arch, grid), llm_macs(arch, kept + text_tokens)


def vision_share(arch: Architecture, grid, text_tokens: int) -> float:
    vision, llm = prefill_macs(arch, grid, text_tokens)
    return vision / (vision + llm)


def _with_llm_width(base: Architecture, llm_hidden: int) -> Architecture:
    """`base` with an LLM of width `llm_hidden`: heads of dim 16, the query width, GQA ratio and MLP ratio of `base`
    (Qwen3.5: also the linear-attention width per hidden unit and its value:key head ratio, heads of dim 16)."""
    query_width = base.llm_heads * base.llm_head_dim / base.llm_hidden  # heads x head dim / hidden: 1, or 2 (30B-A3B)
    llm_heads = max(1, round(query_width * llm_hidden / 16))
    kv_heads = max(1, llm_heads // (base.llm_heads // base.llm_kv_heads))
    while llm_heads % kv_heads:  # each key-value head serves a whole group of query heads
        kv_heads -= 1
    linear = {}
    if base.linear_key_heads:
        key_heads = max(1, round(base.linear_key_heads * base.linear_head_dim * llm_hidden / base.llm_hidden / 16))
        linear = dict(linear_key_heads=key_heads, linear_head_dim=16,
                      linear_value_heads=key_heads * (base.linear_value_heads // base.linear_key_heads))
    shared = 8 * max(1, round(base.llm_shared_expert_mlp * llm_hidden / base.llm_hidden / 8)) if base.llm_shared_expert_mlp else 0
    return dataclasses.replace(
        base,
        llm_hidden=llm_hidden,
        llm_mlp=8 * max(1, round(base.llm_mlp * llm_hidden / base.llm_hidden / 8)),  # grouped expert kernels: 16-byte strides
        llm_heads=llm_heads,
        llm_kv_heads=kv_heads,
        llm_head_dim=16,
        llm_shared_expert_mlp=shared,
        **linear,
    )


def benchmark_architecture(family: Family, grid, width_divisor: int, text_tokens: int) -> Architecture:
    """The full-size model at LLM width / `width_divisor`, with the vision width solved so that the vision MAC share is
    the full-size model's."""
    base = family.full
    target = vision_share(base, grid, text_tokens)
    # Even the narrowest vision tower (width 16) may exceed the target share: full attention in every block over many
    # patches costs N^2 d. Then the LLM is widened, in steps of 16, until that tower fits under the target.
    narrowest = dict(vision_hidden=16, vision_mlp=16 if family.vision_mlp_per_width else 1)
    llm_hidden = max(16, base.llm_hidden // width_divisor // 16 * 16)
    arch = _with_llm_width(base, llm_hidden)
    while llm_hidden < base.llm_hidden and vision_share(dataclasses.replace(arch, **narrowest), grid, text_tokens) > target:
        llm_hidden += 16
        arch = _with_llm_width(base, llm_hidden)
    start = max(16, base.vision_hidden // width_divisor // 16 * 16)
    for hidden in range(start, 15, -16):
        arch = dataclasses.replace(arch, vision_hidden=hidden, vision_mlp=round(hidden * base.vision_mlp / base.vision_hidden))
        if vision_share(arch, grid, text_tokens) <= target:
            break
    # Vision MACs are linear in the MLP width: solve for the width that gives the target share exactly.
    vision, llm = prefill_macs(arch, grid, text_tokens)
    per_mlp_unit = (vision - vision_macs(dataclasses.replace(arch, vision_mlp=0), grid)) / arch.vision_mlp
    wanted = target * llm / (1 - target)
    mlp = max(1, round(arch.vision_mlp + (wanted - vision) / per_mlp_unit))
    if family.vision_mlp_per_width:
        mlp = arch.vision_hidden * max(1, round(mlp / arch.vision_hidden))
    return dataclasses.replace(arch, vision_mlp=mlp)


def qwen_config(family: Family, arch: Architecture, attn: str):
    """The stock configuration of a random `family` model with the widths and depths of `arch`."""
    half = int(arch.llm_head_dim * family.partial_rotary) // 2  # rotary frequencies per head
    t, h, w = family.mrope_split
    section = [half * h // (t + h + w), half * w // (t + h + w)]  # the full model's split, scaled to this head dim
    text = dict(
        vocab_size=1024,
        hidden_size=arch.llm_hidden,
        intermediate_size=arch.llm_mlp,
        num_hidden_layers=arch.llm_layers,
        num_attention_heads=arch.llm_heads,
        num_key_value_heads=arch.llm_kv_heads,
        head_dim=arch.llm_head_dim,
        max_position_embeddings=32768,
        rope_parameters={**family.rope, "mrope_section": [half - sum(section), *section],
                         **({"partial_rotary_factor": family.partial_rotary} if family.partial_rotary != 1.0 else {})},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch.llm_experts:  # every layer routes each token to `llm_active_experts` of `llm_experts` MLPs
        text.update(moe_intermediate_size=arch.llm_mlp, num_experts=arch.llm_experts,
                    num_experts_per_tok=arch.llm_active_experts)
        if arch.llm_shared_expert_mlp:  # Qwen3.5-MoE: and a shared expert; no intermediate_size at all
            text.update(shared_expert_intermediate_size=arch.llm_shared_expert_mlp)
            text.pop("intermediate_size")
        else:
            text.update(decoder_sparse_step=1, mlp_only_layers=[])
    if arch.linear_key_heads:  # Qwen3.5: Gated DeltaNet layers, full attention every `llm_full_attention_interval`-th
        interval = arch.llm_full_attention_interval
        text.update(layer_types=["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                                 for i in range(arch.llm_layers)],
                    linear_num_key_heads=arch.linear_key_heads, linear_num_value_heads=arch.linear_value_heads,
                    linear_key_head_dim=arch.linear_head_dim, linear_value_head_dim=arch.linear_head_dim,
                    linear_conv_kernel_dim=arch.linear_conv_kernel)
    config = family.config_class(
        text_config=text,
        vision_config=dict(spatial_merge_size=2, temporal_patch_size=2, **family.vision_fields(arch)),
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn
    return config


# ---------------------------------------------------------------------------------------------- inputs


def parse_size(text: str) -> tuple[str, tuple[int, int, int]]:
    """"1024" -> an image of 32 x 32 merged tokens; "8x16x16" -> a video of 8 x 16 x 16 merged tokens."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        side = math.isqrt(parts[0])
        if side * side != parts[0]:
            raise ValueError(f"An image size must be a square number of merged tokens, got {text!r}.")
        return "image", (1, side, side)
    if len(parts) == 3:
        return "video", tuple(parts)
    raise ValueError(f"A size is N (square image of N merged tokens) or TxHxW (video), got {text!r}.")


def prompt_ids(family: Family, kind: str, grid) -> list[int]:
    """Text, then the item's placeholders between vision start/end tokens (a Qwen3-VL video: one such block per
    merged frame, each after its timestamp text), then text."""
    t, h, w = grid
    if kind == "video" and family.video_per_frame:
        frames = [list(range(50, 50 + FRAME_TEXT_TOKENS)) + [VISION_START] + [VIDEO_TOKEN] * (h * w) + [VISION_END]
                  for _ in range(t)]
        visual = [token for frame in frames for token in frame]
    else:
        visual = [VISION_START] + [IMAGE_TOKEN if kind == "image" else VIDEO_TOKEN] * (t * h * w) + [VISION_END]
    return list(range(10, 26)) + visual + list(range(30, 46))


def text_tokens(family: Family, kind: str, grid) -> int:
    """Tokens of the prompt that are not visual placeholders."""
    return len(prompt_ids(family, kind, grid)) - grid[0] * grid[1] * grid[2]


def make_inputs(family: Family, kind: str, grid, device, dtype) -> dict:
    t, h, w = grid
    n = t * h * w
    input_ids = torch.tensor([prompt_ids(family, kind, grid)], device=device)
    patch_values = 3 * 2 * family.full.patch_size**2
    pixels = torch.randn(4 * n, patch_values, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    grid_thw = torch.tensor([[t, 2 * h, 2 * w]], device=device)
    visual = {"pixel_values": pixels, "image_grid_thw": grid_thw} if kind == "image" else {
        "pixel_values_videos": pixels, "video_grid_thw": grid_thw}
    mm_token_type_ids = (input_ids == IMAGE_TOKEN).long() + 2 * (input_ids == VIDEO_TOKEN).long()  # text 0, image 1, video 2
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "mm_token_type_ids": mm_token_type_ids,
            **visual}


# ---------------------------------------------------------------------------------------------- measuring


def measure(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function over `repeats` rounds; a round calls every function once, in turn, so a
    change in machine load during the run touches all of them alike. The caller has warmed them up."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory(fn, device: torch.device):
    """(result of fn(), peak bytes of tensors allocated during the call above those alive before it).

    CUDA: the caching allocator's peak. CPU: the profiler's allocation and free records, summed in time order (so
    the peak is seen at operator granularity).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = fn()
    live = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return result, peak


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):  # states only: integer bookkeeping (5.25's lengths) is not cache memory
        return value.numel() * value.element_size() if value.is_floating_point() else 0
    if isinstance(value, dict):
        value = list(value.values())
    return sum(_tensor_bytes(item) for item in value) if isinstance(value, (list, tuple)) else 0


def cache_bytes(cache) -> int:
    """Bytes of every floating-point tensor the cache holds: keys and values, and (Qwen3.5's linear-attention layers)
    the convolution and recurrent states, whose size does not grow with the sequence."""
    return sum(_tensor_bytes(vars(layer)) for layer in cache.layers)


def kv_bytes(arch: Architecture, length: int) -> int:
    """KV cache of `arch` in bfloat16 for `length` tokens (the full-attention layers': a linear-attention layer's state
    has a fixed size, the same pruned or not)."""
    return 2 * full_attention_layers(arch) * arch.llm_kv_heads * arch.llm_head_dim * length * 2


@torch.no_grad()
def bench_input(family: Family, label, kind, grid, ratios, args, device, dtype) -> list[dict]:
    other_tokens = text_tokens(family, kind, grid)
    arch = benchmark_architecture(family, grid, args.width_divisor, other_tokens)
    torch.manual_seed(0)
    stock = family.stock_class(qwen_config(family, arch, args.attn)).to(device, dtype).eval()
    model = from_backbone(stock).eval()  # the family's class, sharing the tensors
    inputs = make_inputs(family, kind, grid, device, dtype)
    visual = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    n = grid[0] * grid[1] * grid[2]

    # T_vision(r) = encoder (the same for every r) + scorer and top-k at r, timed apart.
    fns = {
        "full": lambda: stock(**inputs, use_cache=True, logits_to_keep=1),
        "encoder": lambda: encode_visual_items(stock, visual),
    }
    features = fns["encoder"]()
    lengths = [f.shape[0] for f in features]
    flat = torch.cat(features)
    selections = {}
    for ratio in ratios:
        selections[ratio] = model.select_visual_tokens(**visual, retention_ratio=ratio)
        llm_inputs = _pruned_llm_inputs(model, inputs, selections[ratio])
        fns[f"pruned@{ratio}"] = lambda ratio=ratio: model(**inputs, retention_ratio=ratio, use_cache=True, logits_to_keep=1)
        kept = [num_kept_tokens(n, ratio) for n in lengths]
        fns[f"select@{ratio}"] = lambda kept=kept: select_tokens(model.scorer(flat, lengths), lengths, kept)
        fns[f"llm@{ratio}"] = lambda llm_inputs=llm_inputs: _llm_prefill(model, llm_inputs)

    outputs, peaks = {}, {}
    for name, fn in fns.items():  # the warm-up calls; the prefills' ones also record the peak memory
        if name == "full" or name.startswith("pruned@"):
            outputs[name], peaks[name] = peak_memory(fn, device)
        else:
            outputs[name] = fn()
    t = measure(fns, args.repeats, device)

    full_length = inputs["input_ids"].shape[1]
    full_macs = sum(prefill_macs(family.full, grid, other_tokens, 1.0))
    rows = []
    for ratio in ratios:
        pruned = outputs[f"pruned@{ratio}"]
        t_pruned, t_llm = t[f"pruned@{ratio}"], t[f"llm@{ratio}"]
        t_vision = t["encoder"] + t[f"select@{ratio}"]
        ideal = t["full"] / (t_vision + t_llm)
        vision_full, llm_full = prefill_macs(family.full, grid, other_tokens, ratio)
        rows.append({
            "family": family.stock_class.__name__, "backbone": family.backbone,
            "input": label, "kind": kind, "merged_grid": list(grid), "visual_tokens": n,
            "kept_visual_tokens": sum(len(k) for k in selections[ratio].kept_indices), "retention_ratio": ratio,
            "prefill_length": pruned.attention_mask.shape[1], "full_length": full_length,
            "t_full_s": t["full"], "t_pruned_s": t_pruned, "t_encoder_s": t["encoder"], "t_select_s": t[f"select@{ratio}"],
            "t_vision_s": t_vision, "t_llm_s": t_llm,
            "speedup": t["full"] / t_pruned, "ideal_speedup": ideal, "achieved_over_ideal": t["full"] / t_pruned / ideal,
            "select_share_of_prefill": t[f"select@{ratio}"] / t_pruned,
            "kv_cache_bytes": cache_bytes(pruned.past_key_values), "kv_cache_bytes_full": cache_bytes(outputs["full"].past_key_values),
            "kv_cache_bytes_full_size_bf16": kv_bytes(family.full, pruned.attention_mask.shape[1]),
            "peak_bytes": peaks[f"pruned@{ratio}"], "peak_bytes_full": peaks["full"],
            "ideal_speedup_full_size_macs": full_macs / (vision_full + llm_full),
            "vision_mac_share_full_size": vision_share(family.full, grid, other_tokens),
            "vision_mac_share_bench": vision_share(arch, grid, other_tokens),
            "vision_time_share_bench": t["encoder"] / t["full"],
            "architecture": dataclasses.asdict(arch),
        })
    print(f"  {label}: stock {t['full'] * 1e3:.0f} ms, encoder {t['encoder'] * 1e3:.0f} ms", file=sys.stderr, flush=True)
    return rows


def encode_visual_items(stock, visual) -> list[torch.Tensor]:
    """The stock vision encoder's merged tokens of every image, then every video."""
    features = []
    if visual.get("pixel_values") is not None:
        features += stock.model.get_image_features(visual["pixel_values"], visual["image_grid_thw"]).pooler_output
    if visual.get("pixel_values_videos") is not None:
        features += stock.model.get_video_features(visual["pixel_values_videos"], visual["video_grid_thw"]).pooler_output
    return features


def _llm_prefill(model, llm_inputs):
    """The language model alone: all layers over the pruned sequence, then the last token's logits."""
    out = model.model.language_model(**llm_inputs, use_cache=True)
    return model.lm_head(out.last_hidden_state[:, -1:]), out.past_key_values


def _pruned_llm_inputs(model, inputs, selection) -> dict:
    """The language model's inputs for the pruned prompt: embeddings with the kept features, positions, mask (and for
    Qwen3-VL the kept deepstack features, which the first decoder layers add at the visual positions)."""
    pruned = model.prune_inputs(
        selection,
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
    )
    embeds = model.model.get_input_embeddings()(pruned.input_ids)  # (1, L', D)
    placeholders = (pruned.input_ids == IMAGE_TOKEN) | (pruned.input_ids == VIDEO_TOKEN)
    kept = torch.cat([f[i] for f, i in zip(selection.features, selection.kept_indices)])
    embeds[placeholders] = kept.to(embeds.dtype)
    llm_inputs = {"inputs_embeds": embeds, "attention_mask": pruned.attention_mask, "position_ids": pruned.position_ids}
    if selection.deepstack_features is not None:
        per_item = [[layer[i] for layer in item] for item, i in zip(selection.deepstack_features, selection.kept_indices)]
        llm_inputs["visual_pos_masks"] = placeholders
        llm_inputs["deepstack_visual_embeds"] = [torch.cat(layer).to(embeds.dtype) for layer in zip(*per_item)]
    return llm_inputs


# The scorers the scorer table times: name -> (scorer_heads, scorer_head_reduction).
SCORER_KINDS = {"paper": (1, "max"), "heads=4 max": (4, "max")}


@torch.no_grad()
def bench_scorer(sizes, width: int, repeats: int, device, dtype, naive_max_gib: float, kinds=tuple(SCORER_KINDS)) -> list[dict]:
    rows = []
    for kind in kinds:
        heads, reduction = SCORER_KINDS[kind]
        torch.manual_seed(0)
        scorer = VisionSelectorScorer(width, width // 2, num_heads=heads, head_reduction=reduction).to(device, dtype)
        head_size = scorer.hidden_size // heads
        parameters = sum(parameter.numel() for parameter in scorer.parameters())
        for n in sizes:
            features = torch.randn(n, width, device=device, dtype=dtype)

            def naive():
                q, k = scorer.q_proj(features).float(), scorer.k_proj(features).float()
                per_head = [
                    (q[:, a * head_size : (a + 1) * head_size] @ k[:, a * head_size : (a + 1) * head_size].T).mean(1)
                    for a in range(heads)
                ]  # each an (N, N) matrix, then its row means
                return torch.stack(per_head, -1).amax(-1) / math.sqrt(head_size)

            fns = {
                "scorer_s": lambda: scorer(features, [n]),
                "scorer_topk_s": lambda: select_tokens(scorer(features, [n]), [n], [num_kept_tokens(n, 0.2)]),
            }
            row = {"scorer": kind, "parameters": parameters, "tokens": n, "width": width, "naive_s": None}
            if n * n * 4 / 2**30 <= naive_max_gib and reduction == "max":
                fns["naive_s"] = naive
                row["max_abs_difference"] = float((naive() - fns["scorer_s"]()).abs().max())
            for fn in fns.values():
                fn()  # warm-up
            row.update(measure(fns, repeats, device))
            rows.append(row)
    return rows


def _growth_exponent(rows, key) -> float | None:
    points = [(math.log(r["tokens"]), math.log(r[key])) for r in rows if r[key]]
    if len(points) < 2:
        return None
    mx, my = (sum(p[i] for p in points) / len(points) for i in (0, 1))
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


# ---------------------------------------------------------------------------------------------- reporting


def _mib(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f}"


def prefill_table(rows, family: Family) -> str:
    size = family.label
    lines = [
        f"| input | r | visual tokens | prefill ms | speedup | ideal | achieved/ideal | scorer+top-k % | KV MiB | KV MiB ({size} bf16) | peak MiB | {size} MAC ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['input']} | {r['retention_ratio']} | {r['kept_visual_tokens']}/{r['visual_tokens']} | "
            f"{r['t_pruned_s'] * 1e3:.0f} (stock {r['t_full_s'] * 1e3:.0f}) | {r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | "
            f"{100 * r['achieved_over_ideal']:.0f}% | {100 * r['select_share_of_prefill']:.2f}% | {_mib(r['kv_cache_bytes'])} | "
            f"{_mib(r['kv_cache_bytes_full_size_bf16'])} | {_mib(r['peak_bytes'])} (stock {_mib(r['peak_bytes_full'])}) | "
            f"{r['ideal_speedup_full_size_macs']:.2f}x |"
        )
    return "\n".join(lines)


def shares_table(rows, family: Family) -> str:
    lines = [f"| input | vision MAC share, {family.label} | vision MAC share, benchmark model | encoder time share, measured | vision width / MLP |",
             "|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        if r["input"] not in seen:
            seen.add(r["input"])
            a = r["architecture"]
            lines.append(
                f"| {r['input']} | {100 * r['vision_mac_share_full_size']:.1f}% | {100 * r['vision_mac_share_bench']:.1f}% | "
                f"{100 * r['vision_time_share_bench']:.1f}% | {a['vision_hidden']} / {a['vision_mlp']} |"
            )
    return "\n".join(lines)


def scorer_table(rows) -> str:
    lines = [
        "| scorer | parameters | N tokens | scorer ms | scorer + top-k (r=0.2) ms | naive N x N ms | naive / scorer |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        naive = "skipped (memory cap)" if r["naive_s"] is None else f"{r['naive_s'] * 1e3:.2f}"
        ratio = "" if r["naive_s"] is None else f"{r['naive_s'] / r['scorer_s']:.0f}x"
        lines.append(
            f"| {r.get('scorer', 'paper')} | {r.get('parameters', 0):,} | {r['tokens']} | {r['scorer_s'] * 1e3:.2f} | "
            f"{r['scorer_topk_s'] * 1e3:.2f} | {naive} | {ratio} |"
        )
    for kind in dict.fromkeys(r.get("scorer", "paper") for r in rows):
        of_kind = [r for r in rows if r.get("scorer", "paper") == kind]
        grow_fast, grow_naive = _growth_exponent(of_kind, "scorer_s"), _growth_exponent(of_kind, "naive_s")
        if grow_fast is not None:
            lines.append("")
            lines.append(
                f"Time ~ N^a over these N, {kind}: scorer a = {grow_fast:.2f}"
                + ("" if grow_naive is None else f", naive a = {grow_naive:.2f}")
                + " (1 = linear, 2 = quadratic)."
            )
    return "\n".join(lines)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_5_vl", choices=list(FAMILIES),
                        help="the structure of the benchmark model: " + ", ".join(
                            f"{name}: {f.backbone.split('/')[1]}" for name, f in FAMILIES.items()))
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--attn", default="sdpa", help="attention implementation: sdpa, eager, flash_attention_2")
    parser.add_argument("--dtype", default=None, help="float32 (default on CPU), bfloat16 (default on CUDA), float16")
    parser.add_argument("--sizes", default="256,1024,4096,8x16x16",
                        help="comma-separated: N = square image of N merged tokens, TxHxW = video of T x H x W merged tokens")
    parser.add_argument("--ratios", default="1.0,0.5,0.3,0.2,0.1")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median), after one warm-up")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared machine, OpenMP threads that wait for each other "
                        "slow small kernels by 10x or more and ruin the ratios; pass 2 on an idle 2-core machine)")
    parser.add_argument("--width-divisor", type=int, default=32, help="LLM width = the full-size model's width / this")
    parser.add_argument("--scorer-sizes", default="1024,2048,4096,8192,16384")
    parser.add_argument("--scorer-width", type=int, default=None, help="token width for the scorer timing (default: the benchmark LLM's)")
    parser.add_argument("--naive-max-gib", type=float, default=4.0, help="skip the naive scorer where its N x N float32 matrix is larger")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/prefill_[<family>_]<device>.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.attn == "flash_attention_2" and dtype == torch.float32:
        parser.error("flash_attention_2 needs --dtype bfloat16 or float16.")
    ratios = [float(r) for r in args.ratios.split(",")]
    family = FAMILIES[args.family]
    prefix = "prefill" if args.family == "qwen2_5_vl" else f"prefill_{args.family}"
    out = Path(args.out or Path(__file__).parent / "results" / f"{prefix}_{device.type}.json")

    started = time.perf_counter()
    warm_up = argparse.Namespace(**{**vars(args), "repeats": 1})
    bench_input(family, "warm-up", "image", (1, 2, 2), [0.5], warm_up, device, dtype)  # first-call costs
    rows = []
    px = 2 * family.full.patch_size  # pixels per merged token
    for size in args.sizes.split(","):
        kind, grid = parse_size(size)
        label = f"image {grid[1] * px}x{grid[2] * px} px" if kind == "image" else f"video {2 * grid[0]} frames {grid[1] * px}x{grid[2] * px} px"
        rows.extend(bench_input(family, label, kind, grid, ratios, args, device, dtype))
    width = args.scorer_width or benchmark_architecture(family, (1, 16, 16), args.width_divisor, TEXT_TOKENS + 2).llm_hidden
    scorer_rows = bench_scorer([int(s) for s in args.scorer_sizes.split(",")], width, args.repeats, device, dtype, args.naive_max_gib)
    elapsed = time.perf_counter() - started

    report = "\n\n".join([
        f"Hardware: {hardware(device)}; dtype {str(dtype).removeprefix('torch.')}, attention {args.attn}, "
        f"median of {args.repeats}; total {elapsed:.0f} s.",
        prefill_table(rows, family), shares_table(rows, family), scorer_table(scorer_rows),
    ])
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "family": args.family, "backbone": family.backbone,
        "hardware": hardware(device), "dtype": str(dtype), "attn": args.attn, "repeats": args.repeats,
        "width_divisor": args.width_divisor, "elapsed_s": elapsed, "prefill": rows, "scorer": scorer_rows,
    }, indent=1))
    out.with_suffix(".md").write_text(report + "\n")
    print(f"\nWrote {out} and {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
