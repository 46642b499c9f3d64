"""benchmarks/prefill.py for every family: the benchmark model runs a prefill row end to end on a tiny input, and the
MAC model (`vision_macs`, `llm_macs`) has each family's structure. Timings are never asserted on."""

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch

from conftest import load_script

from modeling_visionselector import VISIONSELECTOR_CLASSES, VisionSelectorForConditionalGeneration, num_kept_tokens

ROOT = Path(__file__).resolve().parents[1]


prefill = load_script("benchmarks_prefill", ROOT / "benchmarks" / "prefill.py")
generate = load_script("hub_configs_generate", ROOT / "hub_configs" / "generate.py")

FAMILIES = list(prefill.FAMILIES)
GRIDS = [(1, 2, 2), (1, 16, 16), (1, 64, 64), (8, 16, 16)]


def _shallow(family):
    """`family` with 2 LLM layers, 4 vision blocks (full attention and deepstack taps moved into them) and at most 8
    experts, 2 per token: the same code paths in seconds."""
    full = family.full
    every_block = len(full.vision_full_attention) == full.vision_depth
    return dataclasses.replace(family, full=dataclasses.replace(
        full,
        llm_layers=2,
        vision_depth=4,
        vision_full_attention=(0, 1, 2, 3) if every_block else (1, 3),
        deepstack_taps=(1, 3)[: len(full.deepstack_taps)],
        llm_experts=min(full.llm_experts, 8),
        llm_active_experts=min(full.llm_active_experts, 2),
        llm_full_attention_interval=min(full.llm_full_attention_interval, 2),  # Qwen3.5: linear, then full attention
    ))


@pytest.mark.parametrize("family_name", FAMILIES)
@pytest.mark.parametrize("size", ["9", "2x2x2"])
def test_one_prefill_row_end_to_end(family_name, size):
    family = _shallow(prefill.FAMILIES[family_name])
    kind, grid = prefill.parse_size(size)
    n = grid[0] * grid[1] * grid[2]
    args = argparse.Namespace(attn="sdpa", width_divisor=1024, repeats=1)
    torch.manual_seed(0)
    rows = prefill.bench_input(family, "tiny", kind, grid, [1.0, 0.5], args, torch.device("cpu"), torch.float32)

    assert [row["retention_ratio"] for row in rows] == [1.0, 0.5]
    for row in rows:
        arch = row["architecture"]
        kept = num_kept_tokens(n, row["retention_ratio"])
        assert row["family"] == family.stock_class.__name__ and row["visual_tokens"] == n
        assert row["kept_visual_tokens"] == kept
        assert row["full_length"] == n + prefill.text_tokens(family, kind, grid)
        assert row["prefill_length"] == row["full_length"] - n + kept
        # the benchmark model has the full-size depths; its KV cache is that of the pruned prompt, in float32
        assert (arch["llm_layers"], arch["vision_depth"]) == (family.full.llm_layers, family.full.vision_depth)
        full_layers = arch["llm_layers"] // arch["llm_full_attention_interval"]
        per_token = 2 * full_layers * arch["llm_kv_heads"] * arch["llm_head_dim"] * 4
        # Qwen3.5's linear-attention layers: a convolution state (q, k, v over the kernel) and a recurrent state (a
        # key x value matrix per value head), the same size whatever the length
        k, v = arch["linear_key_heads"] * arch["linear_head_dim"], arch["linear_value_heads"] * arch["linear_head_dim"]
        state = (arch["llm_layers"] - full_layers) * ((2 * k + v) * arch["linear_conv_kernel"] + v * arch["linear_head_dim"]) * 4
        assert row["kv_cache_bytes"] == per_token * row["prefill_length"] + state
        assert row["kv_cache_bytes_full"] == per_token * row["full_length"] + state
        assert row["kv_cache_bytes_full_size_bf16"] == prefill.kv_bytes(family.full, row["prefill_length"])
        assert all(row[key] > 0 for key in ("t_full_s", "t_pruned_s", "t_encoder_s", "t_llm_s", "speedup"))
        assert 0 < row["vision_mac_share_full_size"] < 1
        assert row["vision_mac_share_bench"] == pytest.approx(row["vision_mac_share_full_size"], abs=0.03)
    assert rows[0]["ideal_speedup_full_size_macs"] == pytest.approx(1.0)
    assert rows[1]["ideal_speedup_full_size_macs"] > 1.0


@pytest.mark.parametrize("family_name", FAMILIES)
@pytest.mark.parametrize("size", ["9", "2x2x2"])
def test_timed_llm_alone_is_the_pruned_prefill(family_name, size):
    """T_llm times the language model on `_pruned_llm_inputs`: the same logits as the pruned forward (with Qwen3-VL's
    kept deepstack features)."""
    family = _shallow(prefill.FAMILIES[family_name])
    kind, grid = prefill.parse_size(size)
    arch = prefill.benchmark_architecture(family, grid, 1024, prefill.text_tokens(family, kind, grid))
    torch.manual_seed(0)
    stock = family.stock_class(prefill.qwen_config(family, arch, "sdpa")).eval()
    model = VisionSelectorForConditionalGeneration.from_backbone(stock).eval()
    inputs = prefill.make_inputs(family, kind, grid, torch.device("cpu"), torch.float32)
    visual = {k: v for k, v in inputs.items() if "pixel" in k or "grid" in k}
    with torch.no_grad():
        selection = model.select_visual_tokens(**visual, retention_ratio=0.5)
        logits, cache = prefill._llm_prefill(model, prefill._pruned_llm_inputs(model, inputs, selection))
        pruned = model(**inputs, retention_ratio=0.5, use_cache=True, logits_to_keep=1)
    torch.testing.assert_close(logits, pruned.logits)
    assert prefill.cache_bytes(cache) == prefill.cache_bytes(pruned.past_key_values)


@pytest.mark.parametrize("family_name", FAMILIES)
def test_vision_share_is_a_share_and_pruning_shrinks_only_the_llm(family_name):
    family = prefill.FAMILIES[family_name]
    for kind, grid in [("image", g) if g[0] == 1 else ("video", g) for g in GRIDS]:
        text = prefill.text_tokens(family, kind, grid)
        assert 0 < prefill.vision_share(family.full, grid, text) < 1
        vision, llm = prefill.prefill_macs(family.full, grid, text, 1.0)
        vision_pruned, llm_pruned = prefill.prefill_macs(family.full, grid, text, 0.2)
        assert vision_pruned == vision and 0 < llm_pruned < llm


@pytest.mark.parametrize("family_name", FAMILIES)
@pytest.mark.parametrize("grid", GRIDS[1:])
def test_benchmark_model_has_the_full_size_vision_share(family_name, grid):
    family = prefill.FAMILIES[family_name]
    kind = "image" if grid[0] == 1 else "video"
    text = prefill.text_tokens(family, kind, grid)
    arch = prefill.benchmark_architecture(family, grid, 32, text)
    target = prefill.vision_share(family.full, grid, text)
    # Qwen2-VL's vision MLP is an integer multiple of the width, so its share is matched less closely
    assert prefill.vision_share(arch, grid, text) == pytest.approx(target, abs=0.01 if family.vision_mlp_per_width else 1e-3)
    assert arch.llm_heads % arch.llm_kv_heads == 0 and arch.vision_hidden % 16 == 0
    assert arch.llm_layers == family.full.llm_layers and arch.vision_depth == family.full.vision_depth


def test_family_structures_in_the_mac_model():
    qwen2, qwen2_5, qwen3, moe = (prefill.FAMILIES[name].full for name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"))
    # Qwen2-VL: full attention in every block, a 2-matrix MLP at 4x; Qwen2.5-VL: 4 full-attention blocks, SwiGLU
    assert qwen2.vision_full_attention == tuple(range(32)) and qwen2.vision_mlp == 4 * qwen2.vision_hidden
    assert (qwen2.vision_mlp_matrices, qwen2_5.vision_mlp_matrices, qwen2_5.vision_full_attention) == (2, 3, (7, 15, 23, 31))
    # Qwen3-VL: patch 16, full attention, 2-matrix MLP, three deepstack mergers
    assert (qwen3.patch_size, qwen3.vision_mlp_matrices, len(qwen3.deepstack_taps)) == (16, 2, 3)
    assert qwen3.vision_full_attention == tuple(range(qwen3.vision_depth))

    t, h, w = grid = (1, 16, 16)
    merger = t * h * w * ((4 * qwen3.vision_hidden) ** 2 + 4 * qwen3.vision_hidden * qwen3.llm_hidden)
    no_deepstack = dataclasses.replace(qwen3, deepstack_taps=())
    assert prefill.vision_macs(qwen3, grid) - prefill.vision_macs(no_deepstack, grid) == 3 * merger
    # with windows everywhere (as Qwen2.5-VL's other blocks), a 64 x 64 image costs less attention
    windowed = dataclasses.replace(qwen2, vision_full_attention=())
    assert prefill.vision_macs(windowed, (1, 64, 64)) < prefill.vision_macs(qwen2, (1, 64, 64))

    # an MoE layer counts the MLPs of its 8 active experts (and the router), not all 128
    length = 1000
    dense_equivalent = dataclasses.replace(moe, llm_experts=0, llm_active_experts=1, llm_mlp=8 * moe.llm_mlp)
    router = moe.llm_layers * length * moe.llm_hidden * moe.llm_experts
    assert prefill.llm_macs(moe, length) == prefill.llm_macs(dense_equivalent, length) + router
    all_experts = dataclasses.replace(moe, llm_active_experts=moe.llm_experts)
    assert prefill.llm_macs(all_experts, length) > 10 * prefill.llm_macs(moe, length)


@pytest.mark.parametrize("family_name", ["qwen3_5", "qwen3_5_moe"])
def test_linear_attention_layers_cost_linear_in_the_length(family_name):
    """Qwen3.5: only the full-attention layers (every 4th) grow quadratically; the Gated DeltaNet layers are linear."""
    arch = prefill.FAMILIES[family_name].full
    assert prefill.full_attention_layers(arch) == arch.llm_layers // 4
    length = 1000
    quadratic = prefill.llm_macs(arch, 2 * length) - 2 * prefill.llm_macs(arch, length)
    # causal attention costs q L (L + 1) per layer (scores and weighted sum): doubling L adds 2 q L^2 beyond linear
    assert quadratic == prefill.full_attention_layers(arch) * 2 * arch.llm_heads * arch.llm_head_dim * length**2
    transformer = dataclasses.replace(arch, llm_full_attention_interval=1)
    assert prefill.llm_macs(arch, 16384) < prefill.llm_macs(transformer, 16384)


def _stock_fields(config, family_name: str) -> dict:
    """The fields of a stock config that the benchmark's `Architecture` restates."""
    text, vision = config.text_config, config.vision_config
    fields = dict(
        llm_hidden=text.hidden_size,
        llm_mlp=getattr(text, "moe_intermediate_size", None) or text.intermediate_size,
        llm_heads=text.num_attention_heads,
        llm_kv_heads=text.num_key_value_heads,
        llm_head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        llm_layers=text.num_hidden_layers,
        vision_depth=vision.depth,
        patch_size=vision.patch_size,
        deepstack_taps=tuple(getattr(vision, "deepstack_visual_indexes", ())),
        llm_experts=getattr(text, "num_experts", 0),
        llm_active_experts=getattr(text, "num_experts_per_tok", 1),
    )
    if family_name == "qwen2_vl":
        fields.update(vision_hidden=vision.embed_dim, vision_mlp=vision.embed_dim * vision.mlp_ratio)
    else:
        fields.update(vision_hidden=vision.hidden_size, vision_mlp=vision.intermediate_size)
    if family_name == "qwen2_5_vl":
        fields.update(vision_full_attention=tuple(vision.fullatt_block_indexes))
    if hasattr(text, "linear_num_key_heads"):  # Qwen3.5: the hybrid layout and the linear-attention heads
        full = [i for i, kind in enumerate(text.layer_types) if kind == "full_attention"]
        interval = full[0] + 1
        assert full == list(range(interval - 1, text.num_hidden_layers, interval))
        fields.update(llm_full_attention_interval=interval, linear_key_heads=text.linear_num_key_heads,
                      linear_value_heads=text.linear_num_value_heads, linear_head_dim=text.linear_key_head_dim,
                      linear_conv_kernel=text.linear_conv_kernel_dim,
                      llm_shared_expert_mlp=getattr(text, "shared_expert_intermediate_size", 0))
        assert text.linear_value_head_dim == text.linear_key_head_dim
    return fields


@pytest.mark.parametrize("family_name", FAMILIES)
def test_full_size_structure_is_the_hub_config_of_its_backbone(family_name):
    family = prefill.FAMILIES[family_name]
    name = next(name for name, row in generate.BACKBONES.items() if row.base_repo == family.backbone)
    assert generate.BACKBONES[name].family == family_name
    assert VISIONSELECTOR_CLASSES[family_name].stock_class is family.stock_class
    expected = _stock_fields(generate.backbone_config(name), family_name)
    assert {key: getattr(family.full, key) for key in expected} == expected
