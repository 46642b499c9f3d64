"""benchmarks/paper_table.py without lmms-eval: arguments, command lines, reading results, the markdown table.

The end-to-end run through lmms-eval is in test_lmms_eval.py (needs the `eval` extra).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper_table():
    spec = importlib.util.spec_from_file_location("paper_table", ROOT / "benchmarks" / "paper_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A results file in the shape lmms-eval 0.7.3 writes (keys `metric,filter`, stderr beside each metric, alias).
def results_json(scores: dict) -> dict:
    results = {}
    for task, metrics in scores.items():
        results[task] = {"alias": task}
        for key, value in metrics.items():
            results[task][key] = value
            results[task][key.replace(",", "_stderr,")] = "N/A"
    return {"results": results, "config": {"model": "visionselector"}}


def test_defaults_are_the_papers_tasks_and_r_1_is_always_run(paper_table):
    args = paper_table.parse_args(["--model_args", "pretrained=org/model", "--ratios", "0.2,0.1", "--selectors", "learned,divprune"])
    assert args.tasks == ["mme", "pope", "textvqa_val", "chartqa", "docvqa_val", "ocrbench", "scienceqa_img", "ai2d", "mmmu_val"]
    assert args.ratios == [1.0, 0.2, 0.1]
    assert paper_table.settings(args.ratios, args.selectors) == [
        ("full", 1.0), ("learned", 0.2), ("divprune", 0.2), ("learned", 0.1), ("divprune", 0.1)
    ]  # fmt: skip
    assert args.metrics["mme"] == "mme_perception_score+mme_cognition_score"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ratios", "0.2,1.5"], "ratios must be numbers in"),
        (["--ratios", "0"], "ratios must be numbers in"),
        (["--ratios", "a"], "ratios must be numbers in"),
        (["--selectors", ","], "comma-separated list"),
        (["--selectors", "learned,best"], "unknown selectors best; accepted: learned, random"),
        (["--batch_size", "0"], "--batch_size must be >= 1"),
        (["--metric", "pope"], "task=metric"),
        (["--metric", "vqav2=exact_match"], "not in --tasks"),
    ],
)
def test_bad_arguments_are_usage_errors(paper_table, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        paper_table.parse_args(["--model_args", "pretrained=org/model", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("setting", ["retention_ratio=0.2", "selector=random"])
def test_model_args_must_leave_ratio_and_selector_to_the_table(paper_table, capsys, setting):
    with pytest.raises(SystemExit):
        paper_table.parse_args(["--model_args", f"pretrained=org/model,{setting}"])
    assert "use --ratios and --selectors" in capsys.readouterr().err


def test_lmms_eval_command_line(paper_table, tmp_path):
    args = paper_table.parse_args([
        "--model_args", "pretrained=org/model,dtype=bfloat16", "--tasks", "mme,pope", "--selectors", "divprune,dart",
        "--batch_size", "4", "--limit", "50", "--include_path", "my_tasks", "--lmms_eval_args", "--log_samples --device cuda:1",
        "--lmms_eval", "lmms-eval",
    ])  # fmt: skip
    full = paper_table.lmms_eval_command(args, "full", 1.0, tmp_path)
    assert full == [
        "lmms-eval", "--model", "visionselector",
        "--model_args", "pretrained=org/model,dtype=bfloat16,retention_ratio=1,selector=divprune",  # the first selector
        "--tasks", "mme,pope", "--batch_size", "4", "--output_path", str(tmp_path),
        "--limit", "50", "--include_path", "my_tasks", "--log_samples", "--device", "cuda:1",
    ]  # fmt: skip
    dart = paper_table.lmms_eval_command(args, "dart", 0.1, tmp_path)
    assert dart[dart.index("--model_args") + 1].endswith("retention_ratio=0.1,selector=dart")
    assert paper_table.setting_name("learned+diversity", 0.25) == "learned_diversity-r0.25"


def test_task_score_reads_lmms_eval_results(paper_table):
    results = results_json({
        "mme": {"mme_perception_score,none": 1600.5, "mme_cognition_score,none": 600.0},
        "ai2d": {"exact_match,flexible-extract": 0.8},
        "custom": {"bleu,none": 0.3, "rouge,none": 0.4},
    })  # fmt: skip
    assert paper_table.task_score(results, "mme", "mme_perception_score+mme_cognition_score") == (2200.5, "mme_perception_score+mme_cognition_score")
    assert paper_table.task_score(results, "ai2d", "exact_match") == (0.8, "exact_match")
    assert paper_table.task_score(results, "custom", None) == (0.3, "bleu")  # the first metric
    with pytest.raises(ValueError, match="no metric anls; lmms-eval reports"):
        paper_table.task_score(results, "ai2d", "anls")
    with pytest.raises(ValueError, match="no task 'pope'"):
        paper_table.task_score(results, "pope", "pope_f1_score")


def test_markdown_table_shows_shares_of_the_full_run(paper_table):
    runs = [("full", 1.0), ("learned", 0.2), ("random", 0.2)]
    scores = {
        ("full", 1.0): {"mme": 2000.0, "pope": 0.8},
        ("learned", 0.2): {"mme": 1900.0, "pope": 0.76},
        ("random", 0.2): {"mme": 1000.0},  # pope missing: "-" and left out of the mean
    }
    table = paper_table.markdown_table(scores, ["mme", "pope"], runs, {"mme": "total", "pope": "pope_f1_score"})
    assert table.splitlines() == [
        "| selector | r | mme | pope | relative |",
        "|---|---|---|---|---|",
        "| full | 1 | 2000.0 | 80.0 | 100.0% |",
        "| learned | 0.2 | 1900.0 (95.0%) | 76.0 (95.0%) | 95.0% |",
        "| random | 0.2 | 1000.0 (50.0%) | - | 50.0% |",
        "",
        "Metrics: mme: total; pope: pope_f1_score (in %).",
    ]


def test_main_writes_the_table_from_existing_runs_without_lmms_eval(paper_table, tmp_path):
    """Results already in --work_dir are read, not recomputed (`--lmms_eval false` would fail if called)."""
    scores = {("full", 1.0): 0.5, ("learned", 0.3): 0.45, ("random", 0.3): 0.25}
    for (selector, ratio), value in scores.items():
        folder = tmp_path / "runs" / paper_table.setting_name(selector, ratio) / "visionselector"
        folder.mkdir(parents=True)
        (folder / "20250101_000000_results.json").write_text(json.dumps(results_json({"textvqa_val": {"exact_match,none": value}})))
    output = tmp_path / "table.md"
    paper_table.main([
        "--model_args", "pretrained=org/model", "--tasks", "textvqa_val", "--ratios", "0.3", "--selectors", "learned,random",
        "--work_dir", str(tmp_path / "runs"), "--output", str(output), "--lmms_eval", "false",
    ])  # fmt: skip
    assert output.read_text().splitlines()[2:5] == [
        "| full | 1 | 50.0 | 100.0% |",
        "| learned | 0.3 | 45.0 (90.0%) | 90.0% |",
        "| random | 0.3 | 25.0 (50.0%) | 50.0% |",
    ]


def test_a_failed_lmms_eval_run_names_the_setting_and_shows_its_log(paper_table, tmp_path):
    command = f"sh -c {shlex.quote('echo lmms-eval says no; exit 3')}"
    with pytest.raises(RuntimeError, match=r"full-r1 \(exit code 3\)(.|\n)*lmms-eval says no"):
        paper_table.main([
            "--model_args", "pretrained=org/model", "--tasks", "pope", "--ratios", "0.5",
            "--work_dir", str(tmp_path), "--output", str(tmp_path / "t.md"), "--lmms_eval", command,
        ])  # fmt: skip
    assert not os.path.exists(tmp_path / "t.md")
