"""hub_configs/: one generated config per Qwen2.5-VL Instruct backbone, in sync with the table that generates it.

Models are built on the meta device (no memory), shrunk to one LLM layer and one vision block.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from modeling_visionselector import VisionSelectorConfig, VisionSelectorForConditionalGeneration

HUB_CONFIGS = Path(__file__).resolve().parents[1] / "hub_configs"
_spec = importlib.util.spec_from_file_location("hub_configs_generate", HUB_CONFIGS / "generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)

NAMES = list(generate.BACKBONES)
# Official (base repo, text hidden size, scorer parameters): the paper quotes 12.85M for the 7B scorer.
EXPECTED = {
    "VisionSelector-Qwen2.5-VL-3B-Instruct": ("Qwen/Qwen2.5-VL-3B-Instruct", 2048, 4_196_352),
    "VisionSelector-Qwen2.5-VL-7B-Instruct": ("Qwen/Qwen2.5-VL-7B-Instruct", 3584, 12_848_640),
    "VisionSelector-Qwen2.5-VL-32B-Instruct": ("Qwen/Qwen2.5-VL-32B-Instruct", 5120, 2 * (5120 * 2560 + 2560)),
    "VisionSelector-Qwen2.5-VL-72B-Instruct": ("Qwen/Qwen2.5-VL-72B-Instruct", 8192, 2 * (8192 * 4096 + 4096)),
}


def test_the_table_covers_the_family():
    assert set(NAMES) == set(EXPECTED)


def test_written_configs_are_what_the_table_generates():
    assert generate.main(["--check"]) == 0, "run `python hub_configs/generate.py`"


@pytest.mark.parametrize("name", NAMES)
def test_config_points_at_its_official_backbone_with_the_papers_scorer_width(name):
    base_repo, hidden, _ = EXPECTED[name]
    config = VisionSelectorConfig.from_pretrained(HUB_CONFIGS / name)
    text, vision = config.text_config, config.vision_config
    assert config.base_model_name_or_path == base_repo
    assert config.scorer_only is False
    assert text.hidden_size == hidden and config.scorer_hidden_size == hidden // 2
    assert vision.out_hidden_size == hidden
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim == 128 and 2 * sum(text.rope_parameters["mrope_section"]) == head_dim
    assert text.num_attention_heads % text.num_key_value_heads == 0
    assert config.tie_word_embeddings == (name == "VisionSelector-Qwen2.5-VL-3B-Instruct")
    assert text.vocab_size == (151936 if "3B" in name else 152064)
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_and_has_the_papers_scorer_size(name):
    _, hidden, scorer_parameters = EXPECTED[name]
    shrunk = generate.visionselector_config(name)
    shrunk.text_config.num_hidden_layers = 1
    shrunk.text_config.layer_types = shrunk.text_config.layer_types[:1]
    shrunk.vision_config.depth = 1
    shrunk.vision_config.fullatt_block_indexes = [0]
    with torch.device("meta"):
        model = VisionSelectorForConditionalGeneration(shrunk)
    assert sum(p.numel() for p in model.scorer.parameters()) == scorer_parameters
    assert model.scorer.q_proj.weight.shape == (hidden // 2, hidden)
    assert len(model.model.language_model.layers) == 1 and len(model.model.visual.blocks) == 1
    assert model.lm_head.weight.shape == (shrunk.text_config.vocab_size, hidden)
