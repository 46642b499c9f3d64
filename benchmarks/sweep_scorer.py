"""Which scorer-training settings train well without tuning: a small sweep of seeds x learning rate x scorer init.

Usage (the committed tables, `benchmarks/results/sweep_scorer*.md`, 2 jobs on 2 CPU cores: 20, 10 and 3 minutes):
    python benchmarks/sweep_scorer.py --seeds 0,1 --train-ratios 0.1 --eval-samples 200 --jobs 2
    python benchmarks/sweep_scorer.py --seeds 0,1 --lrs 3e-3 --init-stds 1e-4 --train-ratios 0.2,0.1 \
        --reg-schedules linear,cosine --eval-samples 200 --jobs 2 --out benchmarks/results/sweep_scorer_schedule.json
    python benchmarks/sweep_scorer.py --seeds 0,1 --lrs 3e-3 --init-stds 1e-4 --train-ratios 0.2 \
        --train-ratio-mins 0.1 --eval-samples 200 --jobs 2 --out benchmarks/results/sweep_scorer_range.json

The tables of the temperature schedule (issue 18; 1 job on a shared 2-core machine, 23, 14, 6, 13 and 3 x 3 minutes):
    python benchmarks/sweep_scorer.py --tasks square:1,circle:30,triangle:10 --seeds 0,1 --lrs 1e-4,1e-3,1e-2 \
        --init-stds default --mask-schedules paper,geometric --mask-temp-ends 0.1 --train-ratios 0.1 --steps 100 \
        --eval-samples 100 --out benchmarks/results/sweep_scorer_tasks.json
    python benchmarks/sweep_scorer.py --tasks square:1,circle:30,triangle:10 --seeds 0,1 --lrs 1e-4,1e-3,1e-2 \
        --init-stds default --mask-schedules geometric --mask-temp-ends 0.03 --train-ratios 0.1 --steps 100 \
        --eval-samples 100 --out benchmarks/results/sweep_scorer_tasks_default.json
    python benchmarks/sweep_scorer.py --tasks square:1 --seeds 0,1 --lrs 1e-3 --init-stds default --train-ratios 0.1 \
        --mask-temp-starts 1.0,0.3 --mask-temp-ends 0.1,0.03 --steps 100 --eval-samples 100 \
        --out benchmarks/results/sweep_scorer_temperature.json
    python benchmarks/sweep_scorer.py --tasks square:1,circle:30,triangle:10 --seeds 0 --lrs 1e-3,1e-4,1e-2 \
        --init-stds default --train-ratios 0.1 --steps 400 --eval-samples 100 --out benchmarks/results/sweep_scorer_tasks_400.json
    python benchmarks/sweep_scorer.py --tasks triangle:10 --seeds 0 --lrs 1e-3 --init-stds default --train-ratios 0.1 \
        --mask-schedules paper --steps 400 --eval-samples 100 --out benchmarks/results/sweep_scorer_tasks_400_paper_triangle.json
        (and circle:30 at 1e-4, square:1 at 1e-2)
(The first table ran with the schedule's end temperature at its first default, 0.1, and the 400-step one with
`mask_temperature_end` 0.03 and the lr given; a task is SHAPE:SCALE, see `--tasks`.)

Each run trains a fresh scorer on the frozen backbone of `--model` (a stock Qwen2.5-VL folder, or a VisionSelector
folder whose own scorer is dropped; default: the embedded checkpoint) with `VisionSelectorSFTTrainer` and
`VisionSelectorSFTConfig`'s defaults, except for the swept fields (`--lrs`, `--init-stds`, `--warmups`,
`--reg-starts`, `--reg-ends`, `--reg-schedules`, `--train-ratios`, `--train-ratio-mins`; `default` leaves a field
at its default), on the squares question of `visionselector.tasks` (seeds from 500000, as the recipe's stage 2),
without gradient checkpointing. It then scores the learned selection on `--eval-samples` validation samples (seeds
from `VALIDATION_SEED`: never trained on, and not the held-out seeds of the quality benchmark) at r = 0.1 and 0.2
(`tasks.answer_accuracy`, whole answers), beside every training-free selector on the same samples. Also recorded:
the mask sharpness (1 - mean binary entropy of the soft mask) logged at the end of the first fifth of the run and
at its end, which shows runs whose mask saturated early (the trainer warns above 0.95).

Prints a markdown table (mean and min over seeds per setting, best mean at r = 0.1 in bold) and writes it with the
per-run JSON under `benchmarks/results/` (`--out`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import dataclasses
import itertools
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoProcessor, PrinterCallback
from transformers.utils import logging as transformers_logging

from modeling_visionselector import SCORER_PREFIX, VisionSelectorForConditionalGeneration
from modeling_visionselector.selectors import TRAINING_FREE_SELECTORS
from visionselector.tasks import SHAPES, VALIDATION_SEED, answer_accuracy, make_samples, task_dataset, task_inputs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "visionselector" / "checkpoints" / "tiny-shapes"
SCORER_TRAIN_SEED = 500_000  # the recipe's stage-2 seeds
EVAL_RATIOS = (0.2, 0.1)
# Sweep axes: name -> (config field, which config, type, default values on the command line).
AXES = {
    "lr": ("learning_rate", "trainer", float, "5e-5,3e-4,1e-3,3e-3,1e-2"),
    "init_std": ("scorer_init_std", "model", float, "1e-4,0.02"),
    "warmup": ("warmup_steps", "trainer", float, "default"),
    "reg_start": ("reg_weight_start", "trainer", float, "default"),
    "reg_end": ("reg_weight_end", "trainer", float, "default"),
    "reg_schedule": ("reg_weight_schedule", "trainer", str, "default"),
    "train_ratio": ("train_retention_ratio", "trainer", float, "default"),
    "train_ratio_min": ("train_retention_ratio_min", "trainer", float, "default"),
    "mask_schedule": ("mask_temperature_schedule", "trainer", str, "default"),
    "mask_temp_start": ("mask_temperature_start", "trainer", float, "default"),
    "mask_temp_end": ("mask_temperature_end", "trainer", float, "default"),
}


def parse_task(spec: str) -> tuple[str, float]:
    """`"circle:30"` -> ("circle", 30.0): the question's shape and the factor on the backbone's visual features."""
    shape, _, scale = spec.partition(":")
    if shape not in SHAPES:
        raise SystemExit(f"Unknown task shape {shape!r} in {spec!r}; accepted: {SHAPES}.")
    return shape, float(scale or 1.0)


def scaled_backbone(backbone, scale: float):
    """A copy of `backbone` whose merged visual features (the scorer's input and the LLM's) are `scale` times larger.

    The merger's last linear layer is scaled: a backbone with the same task knowledge and another feature norm (the
    LLM's layers normalise their inputs, so it still answers; the sweep measures how well).
    """
    if scale == 1.0:
        return backbone
    backbone = copy.deepcopy(backbone)
    last = backbone.model.visual.merger.mlp[-1]
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return backbone


def load_backbone(path: Path):
    """The stock Qwen2.5-VL of `path`: a stock checkpoint, or the backbone of a VisionSelector (scorer dropped)."""
    from transformers import PreTrainedConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if PreTrainedConfig.get_config_dict(str(path))[0].get("model_type") == "qwen2_5_vl":
        return Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
    model = VisionSelectorForConditionalGeneration.from_pretrained(path)
    scorer_fields = {field.name for field in dataclasses.fields(type(model.config))} - {
        field.name for field in dataclasses.fields(Qwen2_5_VLConfig)
    }
    dropped = scorer_fields | {"model_type", "architectures", "auto_map", "transformers_version"}
    config = Qwen2_5_VLConfig(**{key: value for key, value in model.config.to_dict().items() if key not in dropped})
    backbone = Qwen2_5_VLForConditionalGeneration(config)
    # every backbone tensor by name, nothing left over but the scorer
    backbone.load_state_dict({name: tensor for name, tensor in model.state_dict().items() if not name.startswith(SCORER_PREFIX)}, strict=True)
    return backbone.eval()


def train_and_evaluate(
    backbone, processor, batches, *, seed: int, setting: dict, steps: int, batch_size: int, shape: str = "square"
) -> dict:
    """A fresh scorer trained with `setting` (axis name -> value; None: the default) and scored on `batches`."""
    from visionselector_training import VisionSelectorSFTTrainer
    from visionselector_training.smoke import task_training_args

    model_fields = {AXES[name][0]: value for name, value in setting.items() if value is not None and AXES[name][1] == "model"}
    trainer_fields = {AXES[name][0]: value for name, value in setting.items() if value is not None and AXES[name][1] == "trainer"}
    torch.manual_seed(seed)
    model = VisionSelectorForConditionalGeneration.from_backbone(backbone, base_model_name_or_path=None, **model_fields)
    with tempfile.TemporaryDirectory() as output_dir:
        args = task_training_args(output_dir, steps=steps, batch_size=batch_size, seed=seed, disable_tqdm=True, **trainer_fields)
        trainer = VisionSelectorSFTTrainer(
            model,
            args=args,
            train_dataset=task_dataset(steps * batch_size, seed=SCORER_TRAIN_SEED, shape=shape),
            processing_class=processor,
        )
        trainer.remove_callback(PrinterCallback)  # the log history keeps what the table needs
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    logs = [entry for entry in trainer.state.log_history if "mask_sharpness" in entry]
    early_logs = [entry for entry in logs if entry["step"] <= steps / 5]
    early = [entry["mask_sharpness"] for entry in early_logs]
    model = trainer.model.eval()
    accuracy = {str(ratio): answer_accuracy(model, batches, retention_ratio=ratio) for ratio in EVAL_RATIOS}
    return {
        "accuracy": accuracy,
        "sharpness_first_fifth": early[-1] if early else None,
        "sharpness_end": logs[-1]["mask_sharpness"] if logs else None,
        "score_std_first_fifth": early_logs[-1].get("score_std") if early_logs else None,
        "score_std_end": logs[-1].get("score_std") if logs else None,
        "ce_loss_end": logs[-1].get("ce_loss") if logs else None,
        "train_s": seconds,
    }


def table(runs, grid_keys) -> str:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(run[key] for key in grid_keys), []).append(run)
    means = {key: statistics.mean(run["accuracy"]["0.1"] for run in group) for key, group in groups.items()}
    best = max(means.values())
    header = [*grid_keys, "r = 0.1 mean", "r = 0.1 min", "r = 0.2 mean", "r = 0.2 min", "sharpness at 1/5", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, group in groups.items():
        low, high = [[run["accuracy"][r] for run in group] for r in ("0.1", "0.2")]
        early = [run["sharpness_first_fifth"] for run in group if run["sharpness_first_fifth"] is not None]
        mean_low = f"{100 * statistics.mean(low):.1f}"
        cells = [
            *(f"{value:g}" if isinstance(value, float) else str(value) for value in key),
            f"**{mean_low}**" if means[key] == best else mean_low,
            f"{100 * min(low):.1f}",
            f"{100 * statistics.mean(high):.1f}",
            f"{100 * min(high):.1f}",
            f"{statistics.mean(early):.2f}" if early else "-",
            str(len(group)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_WORKER: dict = {}


def _load(model_path: str, eval_samples: int, threads: int, task: str = "square:1") -> dict:
    """The backbone (scaled for `task`), processor and validation batches of `task`, loaded once per process."""
    if _WORKER.get("key") != (model_path, eval_samples):
        torch.set_num_threads(threads)
        transformers_logging.set_verbosity_error()
        processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=False)
        _WORKER.clear()
        _WORKER.update(key=(model_path, eval_samples), base=load_backbone(Path(model_path)), processor=processor, tasks={})
    if task not in _WORKER["tasks"]:
        shape, scale = parse_task(task)
        samples = make_samples(eval_samples, seed=VALIDATION_SEED, shape=shape)
        batches = [task_inputs(_WORKER["processor"], samples[i : i + 50], with_answers=True) for i in range(0, len(samples), 50)]
        _WORKER["tasks"][task] = {"backbone": scaled_backbone(_WORKER["base"], scale), "batches": batches, "shape": shape}
    return {"processor": _WORKER["processor"], **_WORKER["tasks"][task]}


def run_one(
    model_path: str, eval_samples: int, threads: int, setting: dict, seed: int, steps: int, batch_size: int, task: str = "square:1"
) -> dict:
    """One training run of the grid (in a worker process with `--jobs` > 1)."""
    loaded = _load(model_path, eval_samples, threads, task)
    return train_and_evaluate(
        loaded["backbone"], loaded["processor"], loaded["batches"], seed=seed, setting=setting, steps=steps,
        batch_size=batch_size, shape=loaded["shape"],
    )  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a stock Qwen2.5-VL or VisionSelector folder with its processor; its backbone is used (default: the embedded checkpoint)")
    parser.add_argument("--tasks", default="square:1", help="task/backbone pairs, comma separated: SHAPE:SCALE, the question's shape (square, circle, triangle) and the factor on the backbone's visual features (default: %(default)s, the demo task)")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (scorer init and data order)")
    for name, (field, where, kind, default) in AXES.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}s", default=default, help=f"`{field}` values, comma separated ({where} config; `default`: its default)"
        )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-samples", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1: robust on a shared machine)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, in worker processes (default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep_scorer.json"))
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        raise SystemExit(f"--jobs and --threads must be >= 1, got {args.jobs} and {args.threads}.")

    model_path = str(Path(args.model))
    tasks = args.tasks.split(",")
    for task in tasks:
        parse_task(task)
    full, baselines = {}, {}
    for task in tasks:
        loaded = _load(model_path, args.eval_samples, args.threads, task)
        full_model = VisionSelectorForConditionalGeneration.from_backbone(loaded["backbone"], base_model_name_or_path=None).eval()
        full[task] = answer_accuracy(full_model, loaded["batches"], retention_ratio=1.0)
        baselines[task] = {}
        for selector in TRAINING_FREE_SELECTORS:
            torch.manual_seed(0)  # the random selector draws from torch's global generator
            baselines[task][selector] = {
                str(r): answer_accuracy(full_model, loaded["batches"], retention_ratio=r, selector=selector) for r in EVAL_RATIOS
            }
        print(f"{task}: all tokens {full[task]:.3f}; training-free {baselines[task]}", file=sys.stderr)

    grid = {
        name: [None] if values == "default" else [kind(value) for value in values.split(",")]
        for name, (_, _, kind, _) in AXES.items()
        for values in [getattr(args, f"{name}s")]
    }
    grid_keys = [key for key, values in grid.items() if values != [None]]
    jobs = [
        (task, dict(zip(grid, values)), int(seed))
        for task in tasks
        for values in itertools.product(*grid.values())
        for seed in args.seeds.split(",")
    ]
    common = (model_path, args.eval_samples, args.threads)
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) if args.jobs > 1 else contextlib.nullcontext() as pool:
        if pool is None:
            results = (run_one(*common, setting, seed, args.steps, args.batch_size, task) for task, setting, seed in jobs)
        else:
            results = pool.map(run_one, *zip(*[(*common, setting, seed, args.steps, args.batch_size, task) for task, setting, seed in jobs]))
        runs = []
        for (task, setting, seed), result in zip(jobs, results):
            runs.append({"task": task, **{key: setting[key] for key in grid_keys}, "seed": seed, **result})
            print(f"  {task} { {key: value for key, value in setting.items() if value is not None} } seed {seed}: {result['accuracy']}, sharpness {result['sharpness_first_fifth']} -> {result['sharpness_end']}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started

    lines = [
        f"Scorers trained on the frozen backbone of {Path(model_path).name}, {args.steps} steps of batch {args.batch_size}, "
        f"`VisionSelectorSFTConfig` defaults (train retention 0.2) but for the swept fields; accuracy in % of the "
        f"learned selection on {args.eval_samples} validation samples per task (whole answers), over seeds "
        f"{args.seeds}. A task is SHAPE:SCALE: the question's shape, and the factor on the backbone's visual features. "
        f"{args.jobs} run(s) at a time, {args.threads} CPU thread(s) each, {elapsed:.0f} s.",
        "",
    ]
    for task in tasks:
        task_runs = [run for run in runs if run["task"] == task]
        lines += [
            f"**{task}** (all tokens {100 * full[task]:.1f}%; training-free: "
            + "; ".join(f"r = {r}: " + ", ".join(f"{name} {100 * scores[r]:.1f}" for name, scores in baselines[task].items()) for r in map(str, EVAL_RATIOS))
            + ")",
            "",
            table(task_runs, grid_keys),
            "",
        ]
    report = "\n".join(lines).rstrip()
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(report + "\n")
    out.write_text(json.dumps({
        "model": model_path, "tasks": tasks, "steps": args.steps, "batch_size": args.batch_size, "eval_samples": args.eval_samples,
        "first_eval_seed": VALIDATION_SEED, "all_tokens_accuracy": full, "training_free": baselines, "elapsed_s": elapsed, "runs": runs,
    }, indent=1))
    print(f"\nWrote {out} and {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
