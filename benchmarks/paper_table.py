"""The paper's accuracy table through lmms-eval: tasks x (selector, retention ratio), relative to all tokens.

    pip install "visionselector[eval]"
    python benchmarks/paper_table.py \
        --model_args pretrained=some-org/VisionSelector-Qwen2.5-VL-7B \
        --tasks mme,pope,textvqa_val,chartqa,docvqa_val,ocrbench,scienceqa_img,ai2d,mmmu_val \
        --ratios 1.0,0.3,0.2,0.1 --selectors learned,divprune,dart --batch_size 8 \
        --output benchmarks/results/paper_table.md

Runs `lmms-eval --model visionselector` once per setting, in a subprocess: once at r = 1.0 (every selector keeps
every token there, so one run is the reference of all rows), then once per (selector, ratio < 1). Each run writes
its lmms-eval output (results JSON, and samples with `--log_samples`) and log under `--work_dir/<selector>-r<ratio>/`;
a setting whose results are already there is not run again, so an interrupted table resumes where it stopped.

The markdown table has one row per setting and one column per task: the task's main metric (table `METRICS`;
`--metric task=name` for others, `a+b` for a sum; shown in percent when it is a fraction) and, below r = 1.0, its share of the r = 1.0 score, which is
how the paper reports results; the last column averages those shares over the tasks.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

# The main metric of each of the paper's tasks (names in lmms-eval's results; a+b is a sum).
METRICS = {
    "mme": "mme_perception_score+mme_cognition_score",  # MME total (perception + cognition), in points
    "pope": "pope_f1_score",
    "textvqa_val": "exact_match",
    "chartqa": "relaxed_overall",
    "docvqa_val": "anls",
    "ocrbench": "ocrbench_accuracy",
    "scienceqa_img": "exact_match",
    "ai2d": "exact_match",
    "mmmu_val": "mmmu_acc",
}
PAPER_TASKS = tuple(METRICS)
FULL = "full"  # the row of the r = 1.0 run


def _ratios(text: str) -> list[float]:
    try:
        ratios = [float(value) for value in text.split(",") if value.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"ratios must be numbers in (0, 1], got {text!r}") from error
    bad = [ratio for ratio in ratios if not 0 < ratio <= 1]
    if not ratios or bad:
        raise argparse.ArgumentTypeError(f"ratios must be numbers in (0, 1], got {text!r}")
    return sorted(set(ratios) | {1.0}, reverse=True)  # r = 1.0 is the reference: always run


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return list(dict.fromkeys(names))


def _metric(text: str) -> tuple[str, str]:
    task, separator, metric = text.partition("=")
    if not separator or not task or not metric:
        raise argparse.ArgumentTypeError(f"--metric takes task=metric (a+b for a sum), got {text!r}")
    return task, metric


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="lmms-eval tasks x retention ratios x selectors for one checkpoint, as one markdown table.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="main metrics: " + ", ".join(f"{task}: {metric}" for task, metric in METRICS.items()),
    )
    parser.add_argument("--model_args", required=True, help="lmms-eval model arguments of `visionselector`, e.g. pretrained=ORG/NAME,dtype=bfloat16 (without retention_ratio and selector)")
    parser.add_argument("--tasks", type=_names, default=list(PAPER_TASKS), help="comma-separated lmms-eval tasks (default: the paper's nine)")
    parser.add_argument("--ratios", type=_ratios, default=_ratios("1.0,0.3,0.2,0.1"), help="comma-separated retention ratios; 1.0 is always added (default: %(default)s)")
    parser.add_argument("--selectors", type=_names, default=["learned"], help="comma-separated selectors (default: learned); a stock checkpoint takes training-free ones only")
    parser.add_argument("--batch_size", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--limit", type=float, default=None, help="lmms-eval --limit: samples per task (for a quick look)")
    parser.add_argument("--include_path", default=None, help="lmms-eval --include_path: a folder of extra task YAMLs")
    parser.add_argument("--metric", type=_metric, action="append", default=[], metavar="TASK=METRIC", help="main metric of a task not in the built-in table, or to override it")
    parser.add_argument("--lmms_eval_args", default="", help="further lmms-eval arguments, one string, written with = (e.g. --lmms_eval_args='--log_samples --device cuda:1')")
    parser.add_argument("--work_dir", type=Path, default=Path("benchmarks/results/lmms_eval"), help="where each run's lmms-eval output goes (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/paper_table.md"), help="the markdown table (default: %(default)s)")
    parser.add_argument("--lmms_eval", default=f"{sys.executable} -m lmms_eval", help="the lmms-eval command (default: %(default)s)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    from modeling_visionselector.selectors import SELECTORS

    unknown = [selector for selector in args.selectors if selector not in SELECTORS]
    if unknown:
        parser.error(f"unknown selectors {', '.join(unknown)}; accepted: {', '.join(SELECTORS)}")
    for forbidden in ("retention_ratio=", "selector="):
        if any(part.strip().startswith(forbidden) for part in args.model_args.split(",")):
            parser.error(f"--model_args must not set {forbidden[:-1]}: use --ratios and --selectors")
    args.metrics = {task: METRICS.get(task) for task in args.tasks}  # None: the first metric lmms-eval reports
    for task, metric in args.metric:
        if task not in args.tasks:
            parser.error(f"--metric names task {task!r}, which is not in --tasks {','.join(args.tasks)}")
        args.metrics[task] = metric
    return args


def settings(ratios: list[float], selectors: list[str]) -> list[tuple[str, float]]:
    """The runs: r = 1.0 once (row `full`), then every selector at every ratio below 1, ratios descending."""
    return [(FULL, 1.0)] + [(selector, ratio) for ratio in ratios if ratio < 1.0 for selector in selectors]


def setting_name(selector: str, ratio: float) -> str:
    return f"{selector}-r{ratio:g}".replace("+", "_")


def lmms_eval_command(args: argparse.Namespace, selector: str, ratio: float, output_path: Path) -> list[str]:
    """The lmms-eval command line of one setting; the r = 1.0 run uses the first selector (it keeps every token)."""
    selector = args.selectors[0] if selector == FULL else selector
    model_args = ",".join(part for part in (args.model_args.strip(","), f"retention_ratio={ratio:g}", f"selector={selector}") if part)
    command = shlex.split(args.lmms_eval) + [
        "--model", "visionselector",
        "--model_args", model_args,
        "--tasks", ",".join(args.tasks),
        "--batch_size", str(args.batch_size),
        "--output_path", str(output_path),
    ]
    if args.limit is not None:
        command += ["--limit", f"{args.limit:g}"]
    if args.include_path is not None:
        command += ["--include_path", str(args.include_path)]
    return command + shlex.split(args.lmms_eval_args)


def find_results(output_path: Path) -> Path | None:
    """The newest `*_results.json` lmms-eval wrote under `output_path` (it adds a folder named after the model)."""
    found = glob.glob(os.path.join(glob.escape(str(output_path)), "**", "*_results.json"), recursive=True)
    return Path(max(found, key=os.path.getmtime)) if found else None


def task_score(results: dict, task: str, metric: str | None) -> tuple[float, str]:
    """A task's score from lmms-eval's results JSON, and the metric it is: `metric` (a+b: a sum), or the first one.

    lmms-eval keys a task's metrics `name,filter` (e.g. `exact_match,none`); the filter part is not needed here.
    """
    if task not in results.get("results", {}):
        raise ValueError(f"lmms-eval's results have no task {task!r}; they have {sorted(results.get('results', {}))}.")
    values = {}
    for key, value in results["results"][task].items():
        name = key.split(",")[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not name.endswith("_stderr") and name != "alias":
            values.setdefault(name, float(value))
    if metric is None:
        if not values:
            raise ValueError(f"lmms-eval reports no numeric metric for task {task!r}.")
        metric = next(iter(values))
    missing = [part for part in metric.split("+") if part not in values]
    if missing:
        raise ValueError(f"Task {task!r} has no metric {', '.join(missing)}; lmms-eval reports {sorted(values)}.")
    return sum(values[part] for part in metric.split("+")), metric


def markdown_table(scores: dict, tasks: list[str], runs: list[tuple[str, float]], metrics: dict) -> str:
    """The table: rows `runs`, columns `tasks`; `scores[(selector, ratio)][task]` as lmms-eval reports it.

    Below r = 1.0 each cell holds the score and, in brackets, its share of the r = 1.0 score; the last column is
    the mean share over the tasks (missing scores are left out of it and shown as `-`). A task whose scores all
    lie in [0, 1] is a fraction, shown in percent.
    """
    reference = scores.get(runs[0], {})
    task_values = {task: [scores[run][task] for run in runs if scores.get(run, {}).get(task) is not None] for task in tasks}
    scales = {task: 100.0 if all(0.0 <= value <= 1.0 for value in task_values[task]) else 1.0 for task in tasks}
    lines = [
        "| selector | r | " + " | ".join(tasks) + " | relative |",
        "|---|---|" + "---|" * len(tasks) + "---|",
    ]
    for run in runs:
        cells, shares = [], []
        for task in tasks:
            value = scores.get(run, {}).get(task)
            if value is None:
                cells.append("-")
                continue
            text = f"{value * scales[task]:.1f}"
            base = reference.get(task)
            if run != runs[0] and base:
                shares.append(100.0 * value / base)
                text += f" ({shares[-1]:.1f}%)"
            elif run == runs[0] and base:
                shares.append(100.0)
            cells.append(text)
        mean = f"{sum(shares) / len(shares):.1f}%" if shares else "-"
        lines.append(f"| {run[0]} | {run[1]:g} | " + " | ".join(cells) + f" | {mean} |")
    lines.append("")
    lines.append("Metrics: " + "; ".join(f"{task}: {metrics[task]}" + (" (in %)" if scales[task] == 100.0 else "") for task in tasks) + ".")
    return "\n".join(lines) + "\n"


def run_setting(args: argparse.Namespace, selector: str, ratio: float) -> dict:
    """Runs lmms-eval for one setting unless its results exist; returns the results JSON."""
    output_path = args.work_dir / setting_name(selector, ratio)
    existing = find_results(output_path)
    if existing is not None:
        return json.loads(existing.read_text())
    output_path.mkdir(parents=True, exist_ok=True)
    command = lmms_eval_command(args, selector, ratio, output_path)
    log_path = output_path / "lmms_eval.log"
    with log_path.open("w") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    found = find_results(output_path)
    if status != 0 or found is None:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"lmms-eval failed for {setting_name(selector, ratio)} (exit code {status}); its log {log_path} ends:\n{tail}")
    return json.loads(found.read_text())


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    runs = settings(args.ratios, args.selectors)
    scores: dict = {}
    used = dict(args.metrics)
    started = time.perf_counter()
    progress = tqdm(runs, desc="lmms-eval runs", unit="run")
    for selector, ratio in progress:
        progress.set_postfix_str(setting_name(selector, ratio))
        results = run_setting(args, selector, ratio)
        scores[(selector, ratio)] = {}
        for task in args.tasks:
            scores[(selector, ratio)][task], used[task] = task_score(results, task, args.metrics[task])
    table = markdown_table(scores, args.tasks, runs, used)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    print(table)
    print(f"wrote {args.output} ({len(runs)} runs, {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
