"""`visionselector-hub merge`: a full checkpoint from a scorer-only artifact, loading as the assembled model does."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel

from conftest import build_inputs
from modeling_visionselector import VisionSelectorForConditionalGeneration
from visionselector.hub import main as hub_main
from visionselector.publishing import save_scorer
from visionselector.merge import BACKBONE_SHARD_NAME, SCORER_SHARD_NAME, merge_scorer_artifact


@pytest.fixture(scope="module")
def sharded_base(stock_model, tmp_path_factory):
    """The backbone as the Hub holds big ones: several shards and an index."""
    folder = tmp_path_factory.mktemp("base-sharded")
    stock_model.save_pretrained(folder, max_shard_size="200KB")
    assert (folder / "model.safetensors.index.json").exists()
    return folder


@pytest.fixture(scope="module")
def artifact(stock_model, sharded_base, processor, tmp_path_factory):
    torch.manual_seed(3)
    model = VisionSelectorForConditionalGeneration.from_backbone(stock_model).eval()
    folder = tmp_path_factory.mktemp("scorer-artifact")
    save_scorer(model, folder, processor=processor, base_model_name_or_path=str(sharded_base))
    return folder


def test_merged_checkpoint_loads_as_the_assembled_model(artifact, sharded_base, processor, tmp_path):
    merged = merge_scorer_artifact(artifact, tmp_path / "full")
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    base_index = json.loads((sharded_base / "model.safetensors.index.json").read_text())
    scorer_names = {name for name, shard in index["weight_map"].items() if shard == SCORER_SHARD_NAME}
    assert scorer_names == {f"scorer.{p}_proj.{w}" for p in "qk" for w in ("weight", "bias")}
    assert {k: v for k, v in index["weight_map"].items() if k not in scorer_names} == base_index["weight_map"]
    for shard in set(base_index["weight_map"].values()):  # copied byte for byte
        assert (merged / shard).read_bytes() == (sharded_base / shard).read_bytes()
    config = json.loads((merged / "config.json").read_text())
    assert config["scorer_only"] is False and config["base_model_name_or_path"] == str(sharded_base)
    assert (merged / "modeling_visionselector.py").exists() and (merged / "processor_config.json").exists()

    assembled = AutoModel.from_pretrained(artifact, trust_remote_code=True).eval()
    full = AutoModel.from_pretrained(merged, trust_remote_code=True).eval()
    expected, actual = assembled.state_dict(), full.state_dict()
    assert set(actual) == set(expected)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    inputs = build_inputs(processor, [[("image", 56, 84)]])
    with torch.no_grad():
        torch.testing.assert_close(
            full(**inputs, retention_ratio=0.3).logits, assembled(**inputs, retention_ratio=0.3).logits, rtol=0, atol=0
        )


def test_merged_unsharded_backbone_loads_the_scorer(stock_model, tmp_path):
    """A backbone saved as one `model.safetensors`: the merged folder must not hold a `model.safetensors`, which
    transformers would load alone (the scorer left at random)."""
    stock_model.save_pretrained(tmp_path / "base")
    assert (tmp_path / "base" / "model.safetensors").exists()
    torch.manual_seed(4)
    model = VisionSelectorForConditionalGeneration.from_backbone(stock_model).eval()
    save_scorer(model, tmp_path / "artifact", base_model_name_or_path=str(tmp_path / "base"))
    merged = merge_scorer_artifact(tmp_path / "artifact", tmp_path / "full")
    assert not (merged / "model.safetensors").exists()
    assert (merged / BACKBONE_SHARD_NAME).read_bytes() == (tmp_path / "base" / "model.safetensors").read_bytes()
    full = AutoModel.from_pretrained(merged, trust_remote_code=True)
    expected = model.state_dict()
    assert all(torch.equal(expected[name], tensor) for name, tensor in full.state_dict().items())


def test_merge_command_and_bad_inputs(artifact, sharded_base, stock_model, tmp_path):
    assert hub_main(["merge", "--scorer", str(artifact), "--output_dir", str(tmp_path / "cli")]) == 0
    with safe_open(tmp_path / "cli" / SCORER_SHARD_NAME, "pt") as handle:
        assert len(list(handle.keys())) == 4
    # a full checkpoint is served as it is
    with pytest.raises(ValueError, match="not a scorer-only artifact"):
        merge_scorer_artifact(tmp_path / "cli", tmp_path / "again")
    # a backbone that already has a scorer
    with pytest.raises(ValueError, match="already holds scorer tensors"):
        merge_scorer_artifact(artifact, tmp_path / "twice", base_model_name_or_path=str(tmp_path / "cli"))
    with pytest.raises(ValueError, match="Unknown arguments"):
        merge_scorer_artifact(artifact, tmp_path / "x", dtype="bfloat16")
