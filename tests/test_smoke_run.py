"""The CPU smoke run of README (`python -m visionselector_training.smoke`): a fresh scorer for the embedded backbone
learns the demo task, and the accuracy at retention 0.2 before and after is printed."""

import re

import pytest
import torch

from modeling_visionselector import VisionSelectorForConditionalGeneration
from visionselector.cli import EMBEDDED_CHECKPOINT
from visionselector.tiny import FAMILIES, tiny_model, tiny_processor
from visionselector_training.smoke import cli, fresh_scorer

LINE = r"held-out accuracy at retention 0\.2 \(50 samples\): {} scorer (\d+\.\d)%"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def test_fresh_scorer_replaces_the_trained_one():
    model = VisionSelectorForConditionalGeneration.from_pretrained(EMBEDDED_CHECKPOINT)
    trained = model.scorer.k_proj.weight.detach().clone()
    fresh_scorer(model, seed=0)
    weight = model.scorer.k_proj.weight
    assert not torch.equal(weight, trained)
    assert weight.std().item() == pytest.approx(model.config.scorer_init_std, rel=0.1)
    assert torch.equal(model.scorer.k_proj.bias, torch.zeros_like(model.scorer.k_proj.bias))


def test_smoke_run_learns_the_demo_task(tmp_path, capsys):
    """The packaged config (30 steps of 8 samples): the learned selection goes from near random to near perfect."""
    result = cli(["--output_dir", str(tmp_path / "run"), "--eval_samples", "50"])
    out = capsys.readouterr().out
    before = float(re.search(LINE.format("fresh"), out).group(1)) / 100
    after = float(re.search(LINE.format("trained"), out).group(1)) / 100
    assert (before, after) == (pytest.approx(result["before"]), pytest.approx(result["after"]))
    assert re.search(r"random selection \d+\.\d%; 30 steps in \d+ s", out)
    # measured (100 samples): 23% -> 93% at r = 0.2 (random selection 5%)
    assert before < 0.6 and after >= 0.9
    for key in ("reg_loss", "mask_sharpness", "score_std"):
        assert f"'{key}'" in out


@pytest.mark.parametrize("family", FAMILIES)
def test_smoke_run_accepts_a_checkpoint_of_every_family(family, tmp_path, capsys):
    """`--model_name_or_path` of a tiny random VisionSelector of any family: the run trains its scorer (2 steps)."""
    torch.manual_seed(0)
    model = VisionSelectorForConditionalGeneration.from_backbone(tiny_model(family, seed=0))
    model.save_pretrained(tmp_path / "model")
    tiny_processor(family=family).save_pretrained(tmp_path / "model")
    result = cli([
        "--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(tmp_path / "run"), "--eval_samples", "2",
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1",
    ])
    assert set(result) == {"before", "after", "random", "seconds"}
    assert "2 steps in" in capsys.readouterr().out
