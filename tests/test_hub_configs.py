"""hub_configs/: one generated config per Qwen-VL Instruct backbone of every family, in sync with the table that
generates it. The tests iterate over the table's rows.

Models are built on the meta device (no memory): at full size to count the backbone's parameters, shrunk to one LLM
layer and one vision block to compare the VisionSelector model with the stock one.
"""

import re
from pathlib import Path

import pytest
import torch

from conftest import load_script

from modeling_visionselector import CONFIG_CLASSES, VISIONSELECTOR_CLASSES
from visionselector.tiny import FAMILIES

HUB_CONFIGS = Path(__file__).resolve().parents[1] / "hub_configs"
generate = load_script("hub_configs_generate", HUB_CONFIGS / "generate.py")

NAMES = list(generate.BACKBONES)
# What the table must hold: every family, each in the sizes its backbones are published in.
REQUIRED = {
    "qwen2_vl": {"2B", "7B", "72B"},
    "qwen2_5_vl": {"3B", "7B", "32B", "72B"},
    "qwen3_vl": {"2B", "4B", "8B", "32B"},
    "qwen3_vl_moe": {"30B-A3B", "235B-A22B"},
    "qwen3_5": {"27B"},
    "qwen3_5_moe": {"35B-A3B", "122B-A10B", "397B-A17B"},
}


def _size(name: str) -> str:
    """"VisionSelector-Qwen3-VL-30B-A3B-Instruct" -> "30B-A3B", "VisionSelector-Qwen3.5-27B" -> "27B"."""
    return re.search(r"-(\d+(?:\.\d+)?B(?:-A\d+B)?)(?:-Instruct)?$", name).group(1)


def _shrunk(config):
    """`config` with one LLM layer and one vision block (deepstack/full-attention taps moved to it)."""
    text, vision = config.text_config, config.vision_config
    text.num_hidden_layers = 1
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = text.layer_types[:1]
    vision.depth = 1
    for taps in ("fullatt_block_indexes", "deepstack_visual_indexes"):
        if hasattr(vision, taps):
            setattr(vision, taps, [0])
    return config


def test_the_table_covers_every_family_and_size():
    sizes = {family: set() for family in FAMILIES}
    for name, row in generate.BACKBONES.items():
        sizes[row.family].add(_size(name))
        assert row.base_repo == "Qwen/" + name.removeprefix("VisionSelector-")
    assert set(generate.FAMILIES) == set(FAMILIES)
    assert sizes == REQUIRED


def test_every_row_names_its_sources():
    for row in generate.BACKBONES.values():
        assert row.checked, "a row with no checked number"
        for what, source in row.checked:
            assert what and source in generate.SOURCES


def test_written_configs_are_what_the_table_generates():
    assert generate.main(["--check"]) == 0, "run `python hub_configs/generate.py`"


def test_check_notices_a_stale_config(tmp_path):
    assert generate.main(["--output-dir", str(tmp_path)]) == 0
    assert generate.main(["--check", "--output-dir", str(tmp_path)]) == 0
    name = NAMES[-1]
    path = tmp_path / name / "config.json"
    path.write_text(path.read_text().replace('"scorer_hidden_size": ', '"scorer_hidden_size": 1'))
    assert generate.main(["--check", "--output-dir", str(tmp_path)]) == 1


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_with_its_family_class_and_points_at_its_backbone(name):
    row = generate.BACKBONES[name]
    config_class = CONFIG_CLASSES[row.family]
    config = config_class.from_pretrained(HUB_CONFIGS / name)
    assert type(config) is config_class and config.model_type == f"visionselector_{row.family}"
    assert config.auto_map["AutoModel"].endswith(VISIONSELECTOR_CLASSES[row.family].__name__)
    assert config.base_model_name_or_path == row.base_repo and config.scorer_only is False

    text, vision = config.text_config, config.vision_config
    hidden = row.text["hidden_size"]
    assert text.hidden_size == hidden and config.scorer_hidden_size == hidden // 2
    assert text.num_hidden_layers == row.text["num_hidden_layers"]
    # the vision tower's merger writes the LLM width (Qwen2-VL names it `hidden_size`)
    assert getattr(vision, generate.FAMILIES[row.family].vision_out_key) == hidden
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    rotary = head_dim * text.rope_parameters.get("partial_rotary_factor", 1.0)  # Qwen3.5 rotates a quarter of 256
    assert head_dim in (128, 256) and 2 * sum(text.rope_parameters["mrope_section"]) == rotary
    assert text.num_attention_heads % text.num_key_value_heads == 0
    assert config.tie_word_embeddings == row.text["tie_word_embeddings"]
    expected_ids = (248056, 248057) if row.family.startswith("qwen3_5") else (151655, 151656)
    assert (config.image_token_id, config.video_token_id) == expected_ids


@pytest.mark.parametrize("name", NAMES)
def test_full_size_backbone_has_its_published_parameter_count(name):
    row = generate.BACKBONES[name]
    with torch.device("meta"):
        stock = VISIONSELECTOR_CLASSES[row.family].stock_class(generate.backbone_config(name))
    count = sum(p.numel() for p in stock.parameters())
    # published counts have 3 significant digits; 0.5% is less than one layer of any of these models (Qwen3.5: the
    # rounded count of the name, `parameters_tolerance`)
    assert abs(count / 1e9 - row.parameters_b) <= row.parameters_tolerance * row.parameters_b, f"{count:,}"


@pytest.mark.parametrize("name", NAMES)
def test_model_is_the_stock_model_plus_the_papers_scorer(name):
    row = generate.BACKBONES[name]
    selector_class = VISIONSELECTOR_CLASSES[row.family]
    hidden = row.text["hidden_size"]
    h = hidden // 2
    with torch.device("meta"):
        model = selector_class(_shrunk(generate.visionselector_config(name)))
        stock = selector_class.stock_class(_shrunk(generate.backbone_config(name)))
    scorer = sum(p.numel() for p in model.scorer.parameters())
    assert scorer == 2 * (hidden * h + h) == generate.scorer_parameters(hidden)
    assert model.scorer.q_proj.weight.shape == (h, hidden)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in stock.parameters()) + scorer
    assert len(model.model.language_model.layers) == 1 and len(model.model.visual.blocks) == 1
    vocab = {**generate.FAMILIES[row.family].text, **row.text}["vocab_size"]
    assert model.lm_head.weight.shape == (vocab, hidden)


def test_paper_scorer_sizes():
    # the paper quotes 12.85M for the 7B scorer
    assert generate.scorer_parameters(3584) == 12_848_640
    assert generate.scorer_parameters(2048) == 4_196_352


def test_list_prints_every_row_with_its_scorer_size(capsys):
    assert generate.main(["--list"]) == 0
    printed = capsys.readouterr().out
    for name, row in generate.BACKBONES.items():
        line = next(line for line in printed.splitlines() if line.startswith(f"| {name} |"))
        assert f"{generate.scorer_parameters(row.text['hidden_size']):,}" in line

