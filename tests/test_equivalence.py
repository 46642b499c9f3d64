"""Pruned inference against the stock Qwen2.5-VL: the oracle on the kept tokens, generation modes, ratio 1.0.

(A row of a batch against the same sample alone: `test_properties.py`.)
"""

import pytest
import torch
from packaging import version

from conftest import SCENARIOS, new_tokens
from modeling_visionselector import VisionSelectorForConditionalGeneration, num_kept_tokens
from modeling_visionselector.configuration_visionselector import TRANSFORMERS_VERSION
from oracle import greedy_tokens, largest_prompt_position, prefill_logits, pruned_embeddings, split_kept_indices, unbatch
from visionselector.tiny import tiny_qwen2_5_vl

RATIOS = [0.1, 0.37, 1.0]
MAX_NEW_TOKENS = 5


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_prefill_matches_stock_oracle_on_kept_tokens(model, stock_model, make_inputs, scenario, ratio, padding_side):
    inputs = make_inputs(SCENARIOS[scenario], padding_side=padding_side)
    with torch.no_grad():
        out = model(**inputs, retention_ratio=ratio)
    per_sample_kept = split_kept_indices(inputs, model.config, out.kept_indices)
    for row, (sample, kept) in enumerate(zip(unbatch(inputs, model.config), per_sample_kept)):
        embeds, positions = pruned_embeddings(stock_model, sample, kept)
        expected = prefill_logits(stock_model, embeds, positions)[0]
        ours = out.logits[row][out.attention_mask[row].bool()]
        assert ours.shape == expected.shape
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_greedy_generation_matches_stock_oracle(model, stock_model, make_inputs, scenario, ratio):
    inputs = make_inputs(SCENARIOS[scenario])
    selection = model.select_visual_tokens(
        inputs.get("pixel_values"),
        inputs.get("image_grid_thw"),
        inputs.get("pixel_values_videos"),
        inputs.get("video_grid_thw"),
        retention_ratio=ratio,
    )
    out = model.generate(**inputs, retention_ratio=ratio, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    eos = model.generation_config.eos_token_id
    generated = new_tokens(out, inputs["input_ids"].shape[1], eos)
    per_sample_kept = split_kept_indices(inputs, model.config, selection.kept_indices)
    for row, (sample, kept) in enumerate(zip(unbatch(inputs, model.config), per_sample_kept)):
        embeds, positions = pruned_embeddings(stock_model, sample, kept)
        assert generated[row] == greedy_tokens(stock_model, embeds, positions, MAX_NEW_TOKENS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_item_keeps_max_1_int_r_n_tokens_and_all_text(model, make_inputs, scenario):
    inputs = make_inputs(SCENARIOS[scenario])
    ratio = 0.3
    with torch.no_grad():
        out = model(**inputs, retention_ratio=ratio)
    grids = [g for key in ("image_grid_thw", "video_grid_thw") if inputs.get(key) is not None for g in inputs[key]]
    for kept, grid in zip(out.kept_indices, grids):
        n = int(grid.prod()) // 4
        assert len(kept) == num_kept_tokens(n, ratio) == max(1, int(ratio * n))
        assert torch.equal(kept, kept.unique())  # distinct, ascending
        assert 0 <= int(kept.min()) and int(kept.max()) < n
    visual = (inputs["input_ids"] == model.config.image_token_id) | (inputs["input_ids"] == model.config.video_token_id)
    text_per_row = ((inputs["attention_mask"] == 1) & ~visual).sum(1)
    assert int(out.attention_mask.sum()) == int(text_per_row.sum()) + sum(len(k) for k in out.kept_indices)


GENERATION_MODES = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, top_k=20, temperature=1.3),
    "beam_search": dict(do_sample=False, num_beams=3),
    "num_return_sequences": dict(do_sample=True, num_return_sequences=3),
    "beam_search_return_2": dict(do_sample=False, num_beams=3, num_return_sequences=2),
    "no_cache": dict(do_sample=False, use_cache=False),
}


@pytest.mark.parametrize("mode", GENERATION_MODES)
@pytest.mark.parametrize("scenario", ["images_of_different_sizes", "video_and_images"])
def test_ratio_one_is_token_for_token_the_stock_model(model, stock_model, make_inputs, scenario, mode):
    inputs = make_inputs(SCENARIOS[scenario])
    kwargs = dict(max_new_tokens=MAX_NEW_TOKENS, **GENERATION_MODES[mode])
    torch.manual_seed(0)
    expected = stock_model.generate(**inputs, **kwargs)
    torch.manual_seed(0)
    ours = model.generate(**inputs, retention_ratio=1.0, **kwargs)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_ratio_one_forward_equals_stock_logits(model, stock_model, make_inputs, padding_side):
    inputs = make_inputs(SCENARIOS["video_and_images"], padding_side=padding_side)
    with torch.no_grad():
        expected = stock_model(**inputs).logits
        ours = model(**inputs, retention_ratio=1.0)
    assert torch.equal(ours.attention_mask, inputs["attention_mask"])
    torch.testing.assert_close(ours.logits, expected, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["beam_search", "num_return_sequences", "sampling"])
def test_pruned_generation_modes_match_stock_generate_on_the_oracle_prompt(model, stock_model, make_inputs, mode):
    """Beam search and sampling on the pruned prompt equal the stock loop run on the oracle's embeddings."""
    inputs = make_inputs(SCENARIOS["several_images_per_sample"])
    ratio = 0.3
    kwargs = dict(max_new_tokens=MAX_NEW_TOKENS, **GENERATION_MODES[mode])
    with torch.no_grad():
        kept = model(**inputs, retention_ratio=ratio).kept_indices
    eos = model.generation_config.eos_token_id
    for sample, sample_kept in zip(unbatch(inputs, model.config), split_kept_indices(inputs, model.config, kept)):
        embeds, positions = pruned_embeddings(stock_model, sample, sample_kept)
        text_positions = torch.arange(embeds.shape[1])[None, None]
        torch.manual_seed(0)
        expected = stock_model.generate(
            inputs_embeds=embeds, position_ids=torch.cat([text_positions, positions]), **kwargs
        )
        torch.manual_seed(0)
        ours = model.generate(**sample, retention_ratio=ratio, **kwargs)
        assert new_tokens(ours, sample["input_ids"].shape[1], eos) == new_tokens(expected, 0, eos)


def test_no_cache_and_chunked_prefill_equal_the_cached_generation(model, make_inputs):
    inputs = make_inputs(SCENARIOS["video_and_images"])
    kwargs = dict(retention_ratio=0.3, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    cached = model.generate(**inputs, **kwargs)
    assert torch.equal(model.generate(**inputs, use_cache=False, **kwargs), cached)
    if TRANSFORMERS_VERSION < version.Version("5.23"):
        # The stock chunked prefill of these releases changes Qwen-VL generations (stock against stock), so
        # VisionSelector refuses it with a clear error instead of returning other tokens.
        with pytest.raises(ValueError, match="prefill_chunk_size"):
            model.generate(**inputs, prefill_chunk_size=5, **kwargs)
    else:
        assert torch.equal(model.generate(**inputs, prefill_chunk_size=5, **kwargs), cached)


def test_max_length_counts_the_original_prompt(model, make_inputs):
    inputs = make_inputs(SCENARIOS["images_of_different_sizes"])
    prompt = inputs["input_ids"].shape[1]
    out = model.generate(**inputs, retention_ratio=0.2, max_length=prompt + 3, min_length=prompt + 3, do_sample=False)
    assert out.shape[1] == prompt + 3


def test_generate_output_dict_sequences_start_with_the_caller_prompt(model, make_inputs):
    inputs = make_inputs(SCENARIOS["several_images_per_sample"])
    out = model.generate(
        **inputs, retention_ratio=0.3, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_scores=True
    )
    prompt = inputs["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, :prompt], inputs["input_ids"])
    assert len(out.scores) == out.sequences.shape[1] - prompt


def test_sdpa_equals_eager(make_inputs):
    torch.manual_seed(3)
    sdpa = VisionSelectorForConditionalGeneration.from_backbone(tiny_qwen2_5_vl(seed=5)).eval()
    eager = VisionSelectorForConditionalGeneration.from_backbone(tiny_qwen2_5_vl(seed=5, attn_implementation="eager"))
    eager.scorer.load_state_dict(sdpa.scorer.state_dict())
    eager.eval()
    assert eager.config._attn_implementation == "eager"
    inputs = make_inputs(SCENARIOS["video_and_images"])
    with torch.no_grad():
        a, b = sdpa(**inputs, retention_ratio=0.3), eager(**inputs, retention_ratio=0.3)
    mask = a.attention_mask.bool()
    torch.testing.assert_close(a.logits[mask], b.logits[mask], atol=1e-5, rtol=1e-4)
    kwargs = dict(retention_ratio=0.3, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    assert torch.equal(sdpa.generate(**inputs, **kwargs), eager.generate(**inputs, **kwargs))


def test_generate_sets_rope_deltas_so_a_manual_decode_step_continues_correctly(model, stock_model, make_inputs):
    """After a pruned prefill, a decode step with no position_ids uses the pruned rope deltas.

    (Without an attention mask: the stock decode step with a mask and no position_ids fails in stock 5.23 too.)
    """
    inputs = make_inputs([[("image", 84, 56)]])
    with torch.no_grad():
        out = model(**inputs, retention_ratio=0.25, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        step = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
    (sample,) = unbatch(inputs, model.config)
    embeds, positions = pruned_embeddings(stock_model, sample, out.kept_indices)
    embeds = torch.cat([embeds, stock_model.get_input_embeddings()(token)], dim=1)
    # with the cache and no positions, decoding continues after the largest position of the whole prompt
    positions = torch.cat([positions, torch.full_like(positions[:, :, -1:], largest_prompt_position(stock_model, sample) + 1)], dim=2)
    torch.testing.assert_close(step.logits[0, -1], prefill_logits(stock_model, embeds, positions)[0, -1], atol=1e-5, rtol=1e-4)


def _flash_attention_available():
    from transformers.utils import is_flash_attn_2_available

    return torch.cuda.is_available() and is_flash_attn_2_available()


@pytest.mark.skipif(not _flash_attention_available(), reason="flash_attention_2 needs CUDA and the flash-attn package")
def test_flash_attention_2_matches_stock_and_sdpa(make_inputs):
    """On CUDA: ratio 1.0 under flash-attention is the stock flash model; pruned logits agree with sdpa."""
    device, dtype = "cuda", torch.bfloat16
    stock_flash = tiny_qwen2_5_vl(seed=5, attn_implementation="flash_attention_2").to(device, dtype)
    torch.manual_seed(3)
    flash = VisionSelectorForConditionalGeneration.from_backbone(stock_flash).eval()
    sdpa = VisionSelectorForConditionalGeneration.from_backbone(tiny_qwen2_5_vl(seed=5).to(device, dtype)).eval()
    sdpa.scorer.load_state_dict(flash.scorer.state_dict())
    inputs = make_inputs(SCENARIOS["video_and_images"]).to(device)
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    kwargs = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    assert torch.equal(flash.generate(**inputs, retention_ratio=1.0, **kwargs), stock_flash.generate(**inputs, **kwargs))
    with torch.no_grad():
        a, b = flash(**inputs, retention_ratio=0.3), sdpa(**inputs, retention_ratio=0.3)
    mask = a.attention_mask.bool()
    torch.testing.assert_close(a.logits[mask].float(), b.logits[mask].float(), atol=2e-2, rtol=2e-2)
