"""`benchmarks/sweep_scorer.py` on the embedded checkpoint's backbone: a grid of tiny runs, its table and its JSON."""

import json
import os
import sys

import pytest

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
        "--seeds", "0", "--lrs", "1e-2,5e-5", "--init-stds", "1e-4", "--train-ratios", "0.1", "--steps", "10",
        "--batch-size", "2", "--eval-samples", "10", "--out", str(out),
    ])
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert [(run["lr"], run["init_std"], run["train_ratio"], run["seed"]) for run in runs] == [
        (1e-2, 1e-4, 0.1, 0), (5e-5, 1e-4, 0.1, 0)
    ]
    for run in runs:
        assert set(run["accuracy"]) == {"0.2", "0.1"} and all(0 <= value <= 1 for value in run["accuracy"].values())
        assert 0 < run["sharpness_first_fifth"] <= run["sharpness_end"] <= 1  # the mask sharpens as scores spread
    # the rate moves the scores: a two-hundredfold rate sharpens the mask more in the same 10 steps
    assert runs[0]["sharpness_end"] > runs[1]["sharpness_end"]
    assert report["all_tokens_accuracy"] >= 0.9  # the backbone answers with every token
    assert set(report["training_free"]) == {"random", "uniform", "norm", "dart", "divprune"}
    table = out.with_suffix(".md").read_text()
    assert "| lr | init_std | train_ratio | r = 0.1 mean |" in table
    assert table.count("\n| 0.01 | 0.0001 | 0.1 |") == 1 and "Training-free selectors on the same samples" in table
    assert table in capsys.readouterr().out + "\n"


def test_every_axis_is_a_config_field():
    from modeling_visionselector import VisionSelectorConfig
    from visionselector_training import VisionSelectorSFTConfig

    fields = {"model": VisionSelectorConfig.__dataclass_fields__, "trainer": VisionSelectorSFTConfig.__dataclass_fields__}
    for name, (field, where, _, _) in sweep_scorer.AXES.items():
        assert field in fields[where], (name, field, where)
