"""Every backbone family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE) against its own stock
model.

Two oracles (`tests/oracle.py`) need only the stock model:
- kept-sequence, every family: each sample alone, the stock model on only the kept tokens' embeddings (and, for
  Qwen3-VL, their deepstack features) at their full-sequence 3D positions, one row, no padding, gives the pruned
  model's logits for that row of a padded batch. It is what pruning means, and the only oracle for Qwen3.5, whose
  recurrent (Gated DeltaNet) layers step through masked positions.
- masked-sequence, attention-only families: the full sequence with the dropped placeholders masked out of the
  attention mask, at the stock positions, with the stock features gives at every kept position the same logits.
"""

import copy

import pytest
import torch
from packaging import version
from transformers import AutoModel, AutoModelForImageTextToText

from conftest import build_inputs
from modeling_visionselector import (
    SCORER_PREFIX,
    VISIONSELECTOR_CLASSES,
    VisionSelectorForConditionalGeneration,
    num_kept_tokens,
)
from modeling_visionselector.selectors import SELECTORS
from oracle import (
    kept_sequence,
    kept_sequence_greedy,
    kept_sequence_logits,
    masked_attention,
    masked_greedy,
    masked_logits,
    split_kept_indices,
    stock_positions,
    unbatch,
)
from visionselector.publishing import save_scorer
from visionselector.tiny import FAMILIES, tiny_model, tiny_processor

RATIOS = [0.1, 0.37, 1.0]
MAX_NEW_TOKENS = 4


def side(family: str, merged_tokens: int) -> int:
    """Pixels covered by `merged_tokens` merged tokens along one side: 2 x 2 patches of 14 px (16 px for Qwen3-VL)."""
    return merged_tokens * 2 * (16 if family.startswith("qwen3") else 14)


def scenarios(family: str) -> dict:
    s = lambda n: side(family, n)  # noqa: E731
    return {
        # two left-padded rows of two images of different sizes each (the rows differ in length)
        "two_images_of_different_sizes": [[("image", s(2), s(3)), ("image", s(3), s(2))], [("image", s(1), s(2)), ("image", s(4), s(4))]],
        # a video (4 frames: 2 merged frames) beside images
        "video": [[("video", 4, s(2), s(2))], [("image", s(2), s(1)), ("video", 4, s(2), s(3))]],
    }


_CACHE = {}


def family_setup(family: str):
    """(processor, stock model, VisionSelector model sharing its tensors), built once per family."""
    if family not in _CACHE:
        patch = 16 if family.startswith("qwen3") else 14
        processor = tiny_processor(min_pixels=(2 * patch) ** 2, max_pixels=(8 * patch) ** 2, family=family)
        stock = tiny_model(family, seed=0)
        torch.manual_seed(1)
        model = VisionSelectorForConditionalGeneration.from_backbone(stock).eval()
        _CACHE[family] = processor, stock, model
    return _CACHE[family]


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def has_recurrent_layers(config) -> bool:
    """Whether the language model has linear-attention (recurrent) layers, which step through masked positions."""
    return "linear_attention" in (getattr(config.text_config, "layer_types", None) or ())


def attention_only(family: str) -> None:
    """Skips the masked-sequence oracle's tests where it does not describe pruning."""
    if has_recurrent_layers(family_setup(family)[1].config):
        pytest.skip("recurrent layers step through masked positions: the kept-sequence oracle covers this family")


def kept_sequence_per_row(stock, inputs, kept_indices) -> list[dict]:
    """The kept-sequence oracle's inputs for every row of a padded batch, each row alone."""
    per_row = split_kept_indices(inputs, stock.config, kept_indices)
    return [kept_sequence(stock, sample, kept) for sample, kept in zip(unbatch(inputs, stock.config), per_row)]


def test_from_backbone_returns_the_visionselector_class_of_the_family(family):
    _, stock, model = family_setup(family)
    assert type(model) is VISIONSELECTOR_CLASSES[family]
    assert isinstance(model, type(stock))
    assert model.config.model_type == f"visionselector_{family}"
    assert set(model.state_dict()) - set(stock.state_dict()) == {f"scorer.{n}" for n in ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")}


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("scenario", ["two_images_of_different_sizes", "video"])
def test_pruned_prefill_equals_the_masked_stock_oracle(family, scenario, ratio):
    attention_only(family)
    processor, stock, model = family_setup(family)
    inputs = build_inputs(processor, scenarios(family)[scenario], padding_side="left")
    with torch.no_grad():
        out = model(**inputs, retention_ratio=ratio)
    expected, mask = masked_logits(stock, inputs, out.kept_indices)
    for row in range(inputs["input_ids"].shape[0]):
        ours = out.logits[row][out.attention_mask[row].bool()]
        theirs = expected[row][mask[row].bool()]
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("scenario", ["two_images_of_different_sizes", "video"])
def test_pruned_prefill_equals_the_stock_model_on_the_kept_tokens_alone(family, scenario, padding_side, ratio):
    """Each row of a padded batch: the pruned logits at its real positions are the stock model's on that row's kept
    tokens alone (one row, no padding), at their full-sequence positions."""
    processor, stock, model = family_setup(family)
    inputs = build_inputs(processor, scenarios(family)[scenario], padding_side=padding_side)
    with torch.no_grad():
        out = model(**inputs, retention_ratio=ratio)
    for row, oracle_inputs in enumerate(kept_sequence_per_row(stock, inputs, out.kept_indices)):
        ours = out.logits[row][out.attention_mask[row].bool()]
        theirs = kept_sequence_logits(stock, oracle_inputs)[0]
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scenario", ["two_images_of_different_sizes", "video"])
def test_a_left_padded_row_equals_the_row_alone_in_float64(family, scenario):
    """The recurrent layers run through a left-padded row's padding (zeroed) before its first token: in float64 the
    pruned batch matches each row's kept tokens alone to 1e-7 (measured: under 4e-9; the stock model itself differs
    by ~1e-8 between a padded row and the row alone), so no tolerance of float32 hides a difference."""
    processor, stock, _ = family_setup(family)
    if not has_recurrent_layers(stock.config):
        pytest.skip("attention-only families: covered in float32")
    if getattr(stock.config.text_config, "num_experts", None):
        pytest.skip("the grouped expert kernels have no float64 on CPU")
    stock = copy.deepcopy(stock).double()
    torch.manual_seed(1)
    model = VisionSelectorForConditionalGeneration.from_backbone(stock).eval()
    inputs = build_inputs(processor, scenarios(family)[scenario], padding_side="left")
    for key in ("pixel_values", "pixel_values_videos"):
        if key in inputs:
            inputs[key] = inputs[key].double()
    with torch.no_grad():
        out = model(**inputs, retention_ratio=0.37)
    assert bool((out.attention_mask == 0).any())  # some row is padded
    for row, oracle_inputs in enumerate(kept_sequence_per_row(stock, inputs, out.kept_indices)):
        ours = out.logits[row][out.attention_mask[row].bool()]
        torch.testing.assert_close(ours, kept_sequence_logits(stock, oracle_inputs)[0], atol=1e-7, rtol=0)


def test_masking_is_not_removing_in_recurrent_layers(family):
    """Why Qwen3.5 needs the kept-sequence oracle: there the masked full sequence gives other logits than pruning."""
    processor, stock, model = family_setup(family)
    if not has_recurrent_layers(stock.config):
        pytest.skip("attention-only: masking a token is removing it")
    inputs = build_inputs(processor, scenarios(family)["two_images_of_different_sizes"], padding_side="left")
    with torch.no_grad():
        out = model(**inputs, retention_ratio=0.37)
    expected, mask = masked_logits(stock, inputs, out.kept_indices)
    difference = max(
        float((out.logits[row][out.attention_mask[row].bool()] - expected[row][mask[row].bool()]).abs().max())
        for row in range(inputs["input_ids"].shape[0])
    )
    assert difference > 1e-3


@pytest.mark.parametrize("scenario", ["two_images_of_different_sizes", "video"])
def test_cached_greedy_generation_equals_a_stock_loop_on_the_kept_tokens(family, scenario):
    """`generate` (with its cache, rows re-padded on the left) against a stock no-cache loop on each row's kept
    tokens alone: the same tokens, and at every step the same logits."""
    processor, stock, model = family_setup(family)
    inputs = build_inputs(processor, scenarios(family)[scenario], padding_side="left", seed=3)
    ratio = 0.3
    selection = model.select_visual_tokens(
        inputs.get("pixel_values"), inputs.get("image_grid_thw"), inputs.get("pixel_values_videos"),
        inputs.get("video_grid_thw"), retention_ratio=ratio,
    )
    out = model.generate(
        **inputs, retention_ratio=ratio, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, use_cache=True,
        return_dict_in_generate=True, output_logits=True,
    )
    prompt = inputs["input_ids"].shape[1]
    eos = stock.generation_config.eos_token_id
    for row, oracle_inputs in enumerate(kept_sequence_per_row(stock, inputs, selection.kept_indices)):
        tokens, step_logits = kept_sequence_greedy(stock, oracle_inputs, MAX_NEW_TOKENS)
        ours = out.sequences[row, prompt:].tolist()
        ours = ours[: ours.index(eos) + 1] if eos in ours else ours
        assert ours == tokens
        for step, logits in enumerate(step_logits):
            torch.testing.assert_close(out.logits[step][row], logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scenario", ["two_images_of_different_sizes", "video"])
def test_greedy_generation_equals_the_masked_stock_loop(family, scenario):
    attention_only(family)
    processor, stock, model = family_setup(family)
    inputs = build_inputs(processor, scenarios(family)[scenario], padding_side="left", seed=3)
    ratio = 0.3
    selection = model.select_visual_tokens(
        inputs.get("pixel_values"), inputs.get("image_grid_thw"), inputs.get("pixel_values_videos"),
        inputs.get("video_grid_thw"), retention_ratio=ratio,
    )
    out = model.generate(**inputs, retention_ratio=ratio, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    prompt = inputs["input_ids"].shape[1]
    expected = masked_greedy(stock, inputs, selection.kept_indices, MAX_NEW_TOKENS)
    eos = stock.generation_config.eos_token_id
    for row, tokens in enumerate(out[:, prompt:].tolist()):
        tokens = tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
        assert tokens == expected[row]


@pytest.mark.parametrize("scenario", ["two_images_of_different_sizes", "video"])
def test_ratio_one_is_token_for_token_the_stock_generate(family, scenario):
    processor, stock, model = family_setup(family)
    inputs = build_inputs(processor, scenarios(family)[scenario], padding_side="left", seed=5)
    kwargs = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    assert torch.equal(model.generate(**inputs, retention_ratio=1.0, **kwargs), stock.generate(**inputs, **kwargs))


@pytest.mark.parametrize(
    "mode",
    [dict(num_beams=2), dict(do_sample=True, num_return_sequences=2), dict(use_cache=False), dict(prefill_chunk_size=8)],
    ids=["beam_search", "sampling_with_copies", "no_cache", "chunked_prefill"],
)
def test_ratio_one_is_the_stock_generate_in_every_mode(family, mode):
    """Beam search and copies reorder and repeat the cache (Qwen3.5: recurrent states too), chunked prefill fills it in
    pieces: at ratio 1.0 each is the stock `generate` token for token."""
    from modeling_visionselector.configuration_visionselector import TRANSFORMERS_VERSION

    if "prefill_chunk_size" in mode and TRANSFORMERS_VERSION < version.Version("5.23.0"):
        pytest.skip("chunked prefill with images is refused before transformers 5.23")
    processor, stock, model = family_setup(family)
    inputs = build_inputs(processor, scenarios(family)["video"], padding_side="left", seed=5)
    torch.manual_seed(0)
    ours = model.generate(**inputs, retention_ratio=1.0, max_new_tokens=MAX_NEW_TOKENS, **mode)
    torch.manual_seed(0)
    assert torch.equal(ours, stock.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, **mode))


def test_a_video_frame_may_keep_none_of_its_tokens(family):
    """Selection is per video, not per frame: at k = 1 a two-frame video keeps one frame's token and the other
    frame none, and the pruned prefill still equals the oracle."""
    processor, stock, model = family_setup(family)
    inputs = build_inputs(processor, [[("video", 4, side(family, 1), side(family, 2))]])
    assert inputs["video_grid_thw"].tolist() == [[2, 2, 4]]  # 2 merged frames of 1 x 2 merged tokens
    with torch.no_grad():
        out = model(**inputs, retention_ratio=0.25)
    (kept,) = out.kept_indices
    assert len(kept) == 1  # max(1, int(0.25 * 4))
    expected = kept_sequence_logits(stock, kept_sequence(stock, inputs, out.kept_indices))
    torch.testing.assert_close(out.logits[0], expected[0], atol=1e-5, rtol=1e-4)


def test_every_selector_keeps_the_budget(family):
    processor, _, model = family_setup(family)
    inputs = build_inputs(processor, scenarios(family)["video"])
    visual = {k: inputs[k] for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")}
    for name in SELECTORS:
        torch.manual_seed(0)
        selection = model.select_visual_tokens(**visual, retention_ratio=0.3, selector=name)
        for kept, features in zip(selection.kept_indices, selection.features):
            assert len(kept) == num_kept_tokens(features.shape[0], 0.3)
            assert torch.equal(kept, kept.unique())


def test_training_scales_features_and_deepstack_by_the_soft_mask(family):
    """In training the stock model runs on every merged token (and every deepstack feature) times its soft mask."""
    processor, stock, model = family_setup(family)
    inputs = build_inputs(processor, scenarios(family)["video"])
    model.train()
    try:
        with torch.no_grad():
            out = model(**inputs, retention_ratio=0.3)
    finally:
        model.eval()
    masks = list(torch.split(out.soft_mask, out.item_lengths))
    encoded = {}
    num_images = len(inputs["image_grid_thw"]) if inputs.get("image_grid_thw") is not None else 0
    for kind, pixels, grid, items in (
        ("image", "pixel_values", "image_grid_thw", masks[:num_images]),
        ("video", "pixel_values_videos", "video_grid_thw", masks[num_images:]),
    ):
        if inputs.get(pixels) is None:
            continue
        features = getattr(stock.model, f"get_{kind}_features")(inputs[pixels], inputs[grid], return_dict=True)
        features.pooler_output = tuple(f * m[:, None] for f, m in zip(features.pooler_output, items))
        if getattr(features, "deepstack_features", None) is not None:
            features.deepstack_features = [tuple(f * m[:, None] for f, m in zip(layer, items)) for layer in features.deepstack_features]
        encoded[kind] = features
    stock_inputs = {k: v for k, v in inputs.items() if k not in ("pixel_values", "pixel_values_videos")}
    with torch.no_grad():
        expected = stock(**stock_inputs, mm_encoder_outputs=encoded).logits
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-4)
    assert 0 < float(out.soft_mask.min()) and float(out.soft_mask.max()) < 1


def test_stock_checkpoint_loads_every_backbone_tensor(family, tmp_path):
    _, stock, _ = family_setup(family)
    stock.save_pretrained(tmp_path / "stock")
    model = VisionSelectorForConditionalGeneration.from_backbone(str(tmp_path / "stock"))
    assert type(model) is VISIONSELECTOR_CLASSES[family]
    state = model.state_dict()
    for name, tensor in stock.state_dict().items():
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForImageTextToText])
def test_full_and_scorer_only_checkpoints_load_with_remote_code(family, auto_class, tmp_path):
    processor, stock, model = family_setup(family)
    stock.save_pretrained(tmp_path / "stock")
    model.config.base_model_name_or_path = str(tmp_path / "stock")
    model.save_pretrained(tmp_path / "full")
    save_scorer(model, tmp_path / "scorer", processor=processor)
    inputs = build_inputs(processor, scenarios(family)["video"])
    with torch.no_grad():
        expected = model(**inputs, retention_ratio=0.3).logits
    for folder in ("full", "scorer"):
        loaded = auto_class.from_pretrained(tmp_path / folder, trust_remote_code=True).eval()
        assert type(loaded).__name__ == type(model).__name__
        assert type(loaded).__module__.startswith("transformers_modules")  # the shipped code, not this package
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs, retention_ratio=0.3).logits, expected, atol=0, rtol=0)


def test_the_trainer_changes_only_the_scorer(family, tmp_path):
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    from visionselector_training import VisionSelectorSFTConfig, VisionSelectorSFTTrainer

    processor, _, _ = family_setup(family)
    rng = np.random.default_rng(0)
    rows = [
        {
            "images": [Image.fromarray(rng.integers(0, 256, (side(family, 3), side(family, 3), 3), dtype=np.uint8))],
            "messages": [
                {"role": "user", "content": "what is the colour of the square"},
                {"role": "assistant", "content": answer},
            ],
        }
        for answer in ["red", "green", "blue", "yellow"]
    ]
    args = VisionSelectorSFTConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, max_steps=3, per_device_train_batch_size=2,
        learning_rate=1e-2, warmup_steps=0, save_strategy="no", report_to="none", seed=0, disable_tqdm=True,
    )
    trainer = VisionSelectorSFTTrainer(
        tiny_model(family, seed=2), args=args, train_dataset=Dataset.from_list(rows), processing_class=processor
    )
    assert type(trainer.model) is VISIONSELECTOR_CLASSES[family]
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    for name, parameter in trainer.model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        if not name.startswith(SCORER_PREFIX):
            assert not changed, name
        elif name != "scorer.q_proj.bias":  # it shifts every score of an item alike: its gradient is ~0
            assert changed, name


def test_generate_command_runs_a_checkpoint_of_the_family(family, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from visionselector.cli import main

    processor, _, model = family_setup(family)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    image = np.random.default_rng(0).integers(0, 256, (side(family, 4), side(family, 4), 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "image.png")
    code = main([
        "generate", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "image.png"),
        "--prompt", "what is the colour of the square", "--retention-ratio", "0.25", "--max-new-tokens", "2",
        "--device", "cpu",
    ])
    assert code == 0
    assert "kept 4 of 16 visual tokens (retention 0.25" in capsys.readouterr().err


@pytest.mark.parametrize("family_name", ["qwen2_vl", "qwen2_5_vl"])
def test_a_long_video_whose_largest_position_is_dropped_continues_as_the_stock_model(family_name):
    """A late frame of a long video holds the prompt's largest (time) position, beyond the text after the video.
    With that frame's tokens dropped, `generate` still continues where the stock `generate` does (the last prompt
    position + 1), and a forward + cached decode where the stock one does (the largest position + 1)."""
    import numpy as np

    processor, stock, model = family_setup(family_name)
    video = np.random.default_rng(0).integers(0, 256, (16, side(family_name, 1), side(family_name, 2), 3), dtype=np.uint8)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "describe"}]}], add_generation_prompt=True
    )
    inputs = processor(text=[text], videos=[video], return_tensors="pt")
    if "second_per_grid_ts" in inputs:
        inputs["second_per_grid_ts"] = torch.tensor([1.5])  # 4/3 frames per second: time advances 3 per merged frame
    ratio = 0.2
    with torch.no_grad():
        prefill = model(**inputs, retention_ratio=ratio, use_cache=True)
    kept = prefill.kept_indices
    positions = stock_positions(stock, inputs)[:, 0]
    kept_positions = positions[:, masked_attention(inputs, stock.config, kept)[0].bool()]
    assert int(kept_positions.max()) < int(positions.max())  # the largest position was dropped
    assert int(positions.max()) > int(positions[:, -1].max())  # and lies beyond the last prompt token

    out = model.generate(
        **inputs, retention_ratio=ratio, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS, do_sample=False,
        return_dict_in_generate=True, output_logits=True,
    )
    new = out.sequences[:, inputs["input_ids"].shape[1]:]
    expected, _ = masked_logits(stock, inputs, kept, extra_tokens=new[:, :-1])
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits[0], expected[0, -MAX_NEW_TOKENS + step], atol=1e-5, rtol=1e-4)

    cache = {name: value for name, value in prefill.items() if name in ("cache", "past_key_values")}
    with torch.no_grad():
        step = model(input_ids=new[:, :1], use_cache=True, **cache)
    expected, _ = masked_logits(stock, inputs, kept, extra_tokens=new[:, :1], after_largest=True)
    torch.testing.assert_close(step.logits[0, -1], expected[0, -1], atol=1e-5, rtol=1e-4)
