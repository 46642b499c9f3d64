"""`benchmarks/sweep_scorer.py` on the embedded checkpoint's backbone: a grid of tiny runs, its table and its JSON."""

import json
import os
import sys

import pytest

from modeling_visionselector.selectors import TRAINING_FREE_SELECTORS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import sweep_scorer  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def test_sweep_trains_every_setting_and_reports_against_training_free(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    sweep_scorer.main([
        "--tasks", "square:1,circle:30", "--seeds", "0", "--lrs", "1e-2,5e-5", "--mask-schedules", "paper,geometric",
        "--init-stds", "1e-4", "--train-ratios", "0.1", "--steps", "10", "--batch-size", "2", "--eval-samples", "10",
        "--out", str(out),
    ])
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert [(run["task"], run["lr"], run["mask_schedule"], run["seed"]) for run in runs] == [
        (task, lr, schedule, 0) for task in ("square:1", "circle:30") for lr in (1e-2, 5e-5) for schedule in ("paper", "geometric")
    ]
    for run in runs:
        assert set(run["accuracy"]) == {"0.2", "0.1"} and all(0 <= value <= 1 for value in run["accuracy"].values())
        assert 0 < run["sharpness_first_fifth"] <= run["sharpness_end"] <= 1  # the mask sharpens
    by_setting = {(run["task"], run["lr"], run["mask_schedule"]): run for run in runs}
    # the paper's top-k: the rate moves the scores, a two-hundredfold rate sharpens the mask more in the same steps,
    # and so do 30x larger features; the geometric schedule's sharpness follows the schedule, not the scores
    assert by_setting["square:1", 1e-2, "paper"]["sharpness_end"] > by_setting["square:1", 5e-5, "paper"]["sharpness_end"]
    assert by_setting["circle:30", 5e-5, "paper"]["score_std_end"] > 100 * by_setting["square:1", 5e-5, "paper"]["score_std_end"]
    geometric = [by_setting[task, lr, "geometric"]["sharpness_first_fifth"] for task in ("square:1", "circle:30") for lr in (1e-2, 5e-5)]
    assert max(geometric) - min(geometric) < 0.15
    assert set(report["all_tokens_accuracy"]) == {"square:1", "circle:30"}
    assert all(value >= 0.8 for value in report["all_tokens_accuracy"].values())  # the backbones answer with every token
    assert set(report["training_free"]["circle:30"]) == set(TRAINING_FREE_SELECTORS)
    table = out.with_suffix(".md").read_text()
    assert "| lr | init_std | train_ratio | mask_schedule | r = 0.1 mean |" in table
    assert table.count("\n| 0.01 | 0.0001 | 0.1 | paper |") == 2 and table.count("Training-free") == 0
    assert "**circle:30** (all tokens" in table and "training-free: r = 0.2: random" in table
    assert table in capsys.readouterr().out + "\n"


def test_scaled_backbone_scales_the_visual_features_only():
    torch = pytest.importorskip("torch")
    from visionselector.tiny import tiny_qwen2_5_vl

    backbone = tiny_qwen2_5_vl()
    scaled = sweep_scorer.scaled_backbone(backbone, 30.0)
    last, scaled_last = backbone.model.visual.merger.mlp[-1], scaled.model.visual.merger.mlp[-1]
    torch.testing.assert_close(scaled_last.weight, 30.0 * last.weight)
    torch.testing.assert_close(scaled_last.bias, 30.0 * last.bias)
    changed = {name for name, tensor in scaled.state_dict().items() if not torch.equal(tensor, backbone.state_dict()[name])}
    assert "model.visual.merger.mlp.2.weight" in changed and changed <= {"model.visual.merger.mlp.2.weight", "model.visual.merger.mlp.2.bias"}
    assert sweep_scorer.scaled_backbone(backbone, 1.0) is backbone
    assert sweep_scorer.parse_task("circle:30") == ("circle", 30.0) and sweep_scorer.parse_task("square") == ("square", 1.0)
    with pytest.raises(SystemExit, match="hexagon"):
        sweep_scorer.parse_task("hexagon:2")


def test_every_axis_is_a_config_field():
    from modeling_visionselector import VisionSelectorConfig
    from visionselector_training import VisionSelectorSFTConfig

    fields = {"model": VisionSelectorConfig.__dataclass_fields__, "trainer": VisionSelectorSFTConfig.__dataclass_fields__}
    for name, (field, where, _, _) in sweep_scorer.AXES.items():
        assert field in fields[where], (name, field, where)
