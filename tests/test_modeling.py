"""The model's API contract: construction from a backbone, save/load and remote code, selection, bad input."""

import json
import os

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, Qwen2_5_VLForConditionalGeneration

from modeling_visionselector import (
    VisionSelectorConfig,
    VisionSelectorForConditionalGeneration,
    VisionSelectorQwen2_5_VLConfig,
    VisionSelectorQwen2_5_VLForConditionalGeneration,
    VisionSelectorScorer,
)
from oracle import masked_attention
from visionselector.tiny import tiny_qwen2_5_vl, tiny_qwen2_5_vl_config

ONE_IMAGE_EACH = [[("image", 56, 84)], [("image", 84, 84)]]


def assert_same_tensors(expected: dict, actual: dict, keys=None):
    keys = expected.keys() if keys is None else keys
    for key in keys:
        assert torch.equal(expected[key], actual[key]), key


# ---------------------------------------------------------------- config


def test_config_defaults_follow_the_paper():
    config = VisionSelectorConfig.from_backbone_config(tiny_qwen2_5_vl_config(text_hidden_size=48))
    assert config.model_type == "visionselector_qwen2_5_vl"
    assert config.scorer_hidden_size == 24  # LLM hidden // 2
    assert config.train_retention_ratio == 0.2
    assert set(config.auto_map) >= {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}


@pytest.mark.parametrize(
    "field,value",
    [
        ("retention_ratio", 0),
        ("retention_ratio", 1.5),
        ("retention_ratio", float("nan")),
        ("retention_ratio", "half"),
        ("train_retention_ratio", -0.1),
        ("scorer_hidden_size", 0),
        ("scorer_init_std", -1.0),
        ("scorer_init_std", float("nan")),
    ],
)
def test_config_rejects_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=field):
        VisionSelectorConfig.from_backbone_config(tiny_qwen2_5_vl_config(), **{field: value})


def test_config_rejects_unknown_overrides():
    with pytest.raises(ValueError, match="retention_rate"):
        VisionSelectorConfig.from_backbone_config(tiny_qwen2_5_vl_config(), retention_rate=0.3)


def test_default_scorer_of_the_7b_has_the_papers_parameter_count():
    config = VisionSelectorConfig(text_config={"hidden_size": 3584}, vision_config={"out_hidden_size": 3584})
    scorer = VisionSelectorScorer(config.text_config.hidden_size, config.scorer_hidden_size)
    assert sum(p.numel() for p in scorer.parameters()) == 12_848_640


# ---------------------------------------------------------------- construction


def test_from_backbone_instance_keeps_every_backbone_tensor_and_adds_only_the_scorer(stock_model):
    model = VisionSelectorForConditionalGeneration.from_backbone(stock_model, retention_ratio=0.25)
    stock_state, state = stock_model.state_dict(), model.state_dict()
    assert set(state) - set(stock_state) == {f"scorer.{n}" for n, _ in model.scorer.named_parameters()}
    assert_same_tensors(stock_state, state)
    for name, buffer in stock_model.named_buffers():
        assert torch.equal(buffer, model.get_buffer(name)), name
    assert model.config.retention_ratio == 0.25
    assert not any(p.is_meta for p in model.parameters())
    # scorer initialised from scorer_init_std, biases at zero
    assert torch.equal(model.scorer.q_proj.bias, torch.zeros_like(model.scorer.q_proj.bias))
    assert 0.01 < float(model.scorer.q_proj.weight.detach().std()) < 0.03


def test_from_backbone_path_loads_every_backbone_tensor_from_a_stock_checkpoint(stock_model, tmp_path):
    stock_model.save_pretrained(tmp_path)
    model = VisionSelectorForConditionalGeneration.from_backbone(str(tmp_path), scorer_hidden_size=8)
    assert_same_tensors(stock_model.state_dict(), model.state_dict())
    assert model.scorer.q_proj.weight.shape == (8, stock_model.config.text_config.hidden_size)
    assert model.config.base_model_name_or_path == str(tmp_path)


def test_from_backbone_rejects_something_else():
    with pytest.raises(ValueError, match="Qwen2_5_VLForConditionalGeneration"):
        VisionSelectorForConditionalGeneration.from_backbone(torch.nn.Linear(2, 2))


def test_tied_embeddings_stay_tied():
    backbone = tiny_qwen2_5_vl(tie_word_embeddings=True)
    model = VisionSelectorForConditionalGeneration.from_backbone(backbone)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight


def test_a_checkpoint_naming_the_first_qwen2_5_vl_class_names_loads(model, make_inputs, tmp_path):
    """Published checkpoints name `VisionSelectorConfig` / `VisionSelectorForConditionalGeneration` in `auto_map` and
    `architectures`: those names still load, as remote code and in-package, to the explicit Qwen2.5-VL classes."""
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["VisionSelectorForConditionalGeneration"]
    config["auto_map"] = {"AutoConfig": "configuration_visionselector.VisionSelectorConfig"} | {
        name: "modeling_visionselector.VisionSelectorForConditionalGeneration"
        for name in ("AutoModel", "AutoModelForImageTextToText", "AutoModelForVision2Seq")
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(loaded).__name__ == "VisionSelectorQwen2_5_VLForConditionalGeneration"
    assert VisionSelectorForConditionalGeneration is VisionSelectorQwen2_5_VLForConditionalGeneration
    assert VisionSelectorConfig is VisionSelectorQwen2_5_VLConfig
    inputs = make_inputs(ONE_IMAGE_EACH)
    kwargs = dict(retention_ratio=0.3, max_new_tokens=4, do_sample=False)
    assert torch.equal(loaded.generate(**inputs, **kwargs), model.generate(**inputs, **kwargs))


def test_save_pretrained_round_trip_keeps_every_tensor(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = VisionSelectorForConditionalGeneration.from_pretrained(tmp_path)
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert_same_tensors(model.state_dict(), loaded.state_dict())


def test_remote_code_round_trip(model, make_inputs, tmp_path):
    """save_pretrained ships the code and a complete auto_map; the auto classes load it as remote code."""
    model.save_pretrained(tmp_path)
    for name in ("modeling_visionselector.py", "configuration_visionselector.py", "families.py", "loading.py",
                 "pruning.py", "generation.py", "scoring.py", "selectors.py", "compatibility.py"):
        assert (tmp_path / name).is_file(), name
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_visionselector.VisionSelectorQwen2_5_VLConfig"
    for auto_class in ("AutoModel", "AutoModelForImageTextToText"):
        assert auto_map[auto_class] == "modeling_visionselector.VisionSelectorQwen2_5_VLForConditionalGeneration"

    assert type(AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)).__name__ == "VisionSelectorQwen2_5_VLConfig"
    for auto_class in (AutoModel, AutoModelForImageTextToText):
        loaded = auto_class.from_pretrained(tmp_path, trust_remote_code=True).eval()
        assert type(loaded).__name__ == "VisionSelectorQwen2_5_VLForConditionalGeneration"
        assert type(loaded).__module__.startswith("transformers_modules"), type(loaded).__module__
        assert_same_tensors(model.state_dict(), loaded.state_dict())
    assert str(tmp_path) not in os.environ["HF_MODULES_CACHE"]

    inputs = make_inputs(ONE_IMAGE_EACH)
    kwargs = dict(retention_ratio=0.3, max_new_tokens=4, do_sample=False)
    assert torch.equal(loaded.generate(**inputs, **kwargs), model.generate(**inputs, **kwargs))


def test_remote_code_folder_needs_trust_remote_code(model, tmp_path):
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModel.from_pretrained(tmp_path, trust_remote_code=False)


# ---------------------------------------------------------------- selection API


def test_select_visual_tokens_contract(model, make_inputs):
    inputs = make_inputs([[("image", 56, 84), ("video", 4, 56, 56)], [("image", 28, 56)]])
    selection = model.select_visual_tokens(
        inputs["pixel_values"], inputs["image_grid_thw"], inputs["pixel_values_videos"], inputs["video_grid_thw"], 0.5
    )
    grids = torch.cat([inputs["image_grid_thw"], inputs["video_grid_thw"]])
    assert selection.num_images == 2
    assert len(selection.kept_indices) == len(selection.scores) == len(grids) == 3
    for kept, scores, grid in zip(selection.kept_indices, selection.scores, grids):
        n = int(grid.prod()) // 4
        assert scores.shape == (n,) and scores.dtype == torch.float32
        assert kept.dtype == torch.long and len(kept) == max(1, int(0.5 * n))
        assert torch.equal(kept, kept.sort().values)
        # the kept tokens are the highest scores
        dropped = scores[~torch.isin(torch.arange(n), kept)]
        if len(dropped):
            assert float(scores[kept].min()) >= float(dropped.max())


def test_retention_ratio_none_means_the_config_default(model, make_inputs):
    inputs = make_inputs(ONE_IMAGE_EACH)
    with torch.no_grad():
        default = model(**inputs).kept_indices
        explicit = model(**inputs, retention_ratio=model.config.retention_ratio).kept_indices
    assert [k.tolist() for k in default] == [k.tolist() for k in explicit]


def test_text_only_inputs_are_the_stock_model(model, stock_model, processor):
    inputs = processor(text=["what is the colour", "left right top"], return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=4, do_sample=False)
    assert torch.equal(model.generate(**inputs, retention_ratio=0.1, **kwargs), stock_model.generate(**inputs, **kwargs))


def test_missing_mm_token_type_ids_are_derived_from_input_ids(model, make_inputs):
    inputs = make_inputs(ONE_IMAGE_EACH)
    without = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    kwargs = dict(retention_ratio=0.3, max_new_tokens=4, do_sample=False)
    assert torch.equal(model.generate(**without, **kwargs), model.generate(**inputs, **kwargs))


def test_labels_are_pruned_with_the_sequence(model, make_inputs):
    inputs = make_inputs(ONE_IMAGE_EACH, padding_side="right")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with torch.no_grad():
        out = model(**inputs, labels=labels, retention_ratio=0.25)
    kept_tokens = out.attention_mask.bool()
    assert int(kept_tokens.sum()) < int(inputs["attention_mask"].sum())
    # the returned labels are the caller's labels at the kept positions (found by the stock-only oracle) ...
    kept_positions = masked_attention(inputs, model.config, out.kept_indices).bool()
    for row in range(labels.shape[0]):
        assert torch.equal(out.labels[row][kept_tokens[row]], labels[row][kept_positions[row]])
    assert bool((out.labels[~kept_tokens] == -100).all())
    # ... and the loss is the next-token cross-entropy of the pruned logits against them, computed by hand
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), out.labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)


# ---------------------------------------------------------------- training forward


def test_training_forward_keeps_the_length_and_reaches_the_scorer(stock_model, make_inputs):
    model = VisionSelectorForConditionalGeneration.from_backbone(tiny_qwen2_5_vl(seed=2)).train()
    inputs = make_inputs(ONE_IMAGE_EACH)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    out = model(**inputs, labels=labels)
    assert out.logits.shape[:2] == inputs["input_ids"].shape
    n_visual = int(inputs["image_grid_thw"].prod(-1).sum()) // 4
    assert out.soft_mask.shape == out.hard_mask.shape == (n_visual,)
    k_total = sum(max(1, int(0.2 * int(g.prod()) // 4)) for g in inputs["image_grid_thw"])
    torch.testing.assert_close(out.soft_mask.sum().double(), torch.tensor(float(k_total), dtype=torch.float64))
    assert out.hard_mask.sum() == k_total
    out.loss.backward()
    for name, parameter in model.scorer.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name


# ---------------------------------------------------------------- bad input


BAD_RATIOS = [0, -0.5, 1.2, float("nan"), "0.3", True]


@pytest.mark.parametrize("ratio", BAD_RATIOS)
def test_bad_retention_ratio_is_a_value_error_everywhere(model, make_inputs, ratio):
    inputs = make_inputs(ONE_IMAGE_EACH)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        model.generate(**inputs, retention_ratio=ratio, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        model(**inputs, retention_ratio=ratio)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        model.select_visual_tokens(inputs["pixel_values"], inputs["image_grid_thw"], retention_ratio=ratio)


def test_placeholder_count_not_matching_the_features_is_a_value_error(model, make_inputs):
    inputs = make_inputs(ONE_IMAGE_EACH)
    ids = inputs["input_ids"].clone()
    first = int((ids[0] == model.config.image_token_id).nonzero()[0])
    ids[0, first] = 10  # one placeholder fewer
    with pytest.raises(ValueError, match="placeholder tokens"):
        model.generate(**{**inputs, "input_ids": ids}, retention_ratio=0.5, max_new_tokens=2)


def test_grid_not_matching_the_pixels_is_a_value_error(model, make_inputs):
    inputs = make_inputs(ONE_IMAGE_EACH)
    grid = inputs["image_grid_thw"].clone()
    grid[0, 1] += 2
    with pytest.raises(ValueError, match="image_grid_thw"):
        model(**{**inputs, "image_grid_thw": grid}, retention_ratio=0.5)


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"assistant_model": "any"}, "Assisted generation"),
        ({"inputs_embeds": torch.zeros(1)}, "input_ids"),
    ],
)
def test_generation_paths_that_cannot_work_raise(model, make_inputs, extra, match):
    inputs = make_inputs(ONE_IMAGE_EACH)
    with pytest.raises(ValueError, match=match):
        model.generate(**inputs, **extra, retention_ratio=0.5, max_new_tokens=2)


def test_continuing_from_a_filled_cache_raises(model, make_inputs):
    inputs = make_inputs(ONE_IMAGE_EACH)
    out = model.generate(**inputs, retention_ratio=0.5, max_new_tokens=2, return_dict_in_generate=True)
    with pytest.raises(ValueError, match="past_key_values"):
        model.generate(**inputs, past_key_values=out.past_key_values, retention_ratio=0.5, max_new_tokens=2)
