"""Bad inputs that only show up at load time or with video; the per-call catalogue is in test_modeling.py."""

import pytest
import torch
from safetensors.torch import load_file

from modeling_visionselector import SCORER_WEIGHTS_NAME, VisionSelectorForConditionalGeneration
from visionselector.publishing import save_scorer


@pytest.fixture
def scorer_folder(stock_model, tmp_path):
    backbone = tmp_path / "backbone"
    stock_model.save_pretrained(backbone)
    model = VisionSelectorForConditionalGeneration.from_backbone(str(backbone))
    return save_scorer(model, tmp_path / "scorer")


def test_a_scorer_only_folder_with_pickled_weights_is_refused(scorer_folder):
    weights = scorer_folder / SCORER_WEIGHTS_NAME
    tensors = load_file(weights)
    weights.unlink()
    torch.save(tensors, scorer_folder / "scorer.bin")  # the same tensors, as a pickle
    with pytest.raises(ValueError, match="safetensors"):
        VisionSelectorForConditionalGeneration.from_pretrained(scorer_folder)


def test_a_scorer_only_folder_loads_when_its_weights_are_safetensors(scorer_folder):
    model = VisionSelectorForConditionalGeneration.from_pretrained(scorer_folder)
    assert model.config.scorer_only is False


def test_video_grid_not_matching_the_pixels_is_a_value_error(model, make_inputs):
    inputs = make_inputs([[("video", 4, 56, 56)]])
    grid = inputs["video_grid_thw"].clone()
    grid[0, 0] += 1
    with pytest.raises(ValueError, match="video_grid_thw"):
        model.generate(**{**inputs, "video_grid_thw": grid}, retention_ratio=0.5, max_new_tokens=2)


def test_pixels_without_their_grid_are_a_value_error(model, make_inputs):
    inputs = make_inputs([[("image", 56, 56)]])
    with pytest.raises(ValueError, match="image_grid_thw"):
        model(**{**inputs, "image_grid_thw": None}, retention_ratio=0.5)


def test_video_placeholders_without_video_pixels_are_a_value_error(model, make_inputs):
    inputs = make_inputs([[("image", 56, 56), ("video", 2, 56, 56)]])
    without_video = {k: v for k, v in inputs.items() if k not in ("pixel_values_videos", "video_grid_thw")}
    with pytest.raises(ValueError, match="placeholder tokens"):
        model(**without_video, retention_ratio=0.5)
