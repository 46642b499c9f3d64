"""Scorers for targets of one kind and of several kinds: the paper's scorer against the multi-head scorer.

Usage (the committed table, `benchmarks/results/scorer_kinds.md`; 1 CPU thread):
    python benchmarks/scorer_kinds.py backbone      # stage 1: the pair backbone, outputs/scorer-kinds/backbone
    python benchmarks/scorer_kinds.py table --seeds 0,1 --eval-samples 200

`backbone` fine-tunes every parameter of the embedded checkpoint's backbone (the stock Qwen2.5-VL of
`visionselector/checkpoints/tiny-shapes`, its scorer dropped) on a mix of its three single-shape questions and the
ten pair questions of `visionselector.tasks` ("what colours are the square and the cross": one object of each of five
shapes, targets of two different kinds), with a tokenizer that adds the pair questions' words. Seeds: training 0..,
validation `VALIDATION_SEED`.., as the recipe's stage 1 (`recipes/build_tiny_checkpoint.py`).

`table` trains, for every task and every scorer, a fresh scorer on the frozen backbone with
`VisionSelectorSFTTrainer` at `VisionSelectorSFTConfig`'s defaults (issue 18's recipe: no per-task setting; only the
run length, `--steps` of `--batch-size`), on the task's question (seeds from 500000, the recipe's stage 2), and scores
the learned selections and every training-free selector at r = 0.5 / 0.2 / 0.1 on held-out samples (seeds from
`HELD_OUT_SEED`). Tasks are SHAPE[/DISTRACTORS]:SCALE@BACKBONE (see `TASKS`): the question (a pair question's
images with only DISTRACTORS of the three other shapes: `tasks.make_pair_sample`), the factor on the backbone's visual
features (`sweep_scorer.scaled_backbone`) and the backbone (`demo`: the embedded checkpoint's, `pair`: the one
`backbone` builds). `report` renders the table of several JSON files of `table` as one.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import PrinterCallback
from transformers.utils import logging as transformers_logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from sweep_scorer import DEFAULT_MODEL, SCORER_TRAIN_SEED, load_backbone, scaled_backbone  # noqa: E402

from modeling_visionselector import VisionSelectorForConditionalGeneration  # noqa: E402
from modeling_visionselector.selectors import SELECTORS  # noqa: E402
from visionselector.tasks import (  # noqa: E402
    HELD_OUT_SEED,
    PAIR_WORDS,
    PAIRS,
    SHAPES,
    VALIDATION_SEED,
    answer_accuracy,
    make_sample,
    make_samples,
    task_dataset,
    task_inputs,
)
from visionselector.tiny import DEFAULT_WORDS, tiny_processor  # noqa: E402

WORK_DIR = ROOT / "outputs" / "scorer-kinds"
IMAGE_PIXELS = 196 * 196
# The backbone's questions: the three single-shape ones and the ten pairs, in turn.
BACKBONE_QUESTIONS = SHAPES + PAIRS
# The scorers compared: name -> `from_backbone` config overrides.
SCORERS = {
    "paper": {},
    "heads=4 max": {"scorer_heads": 4},
    "heads=4 logsumexp": {"scorer_heads": 4, "scorer_head_reduction": "logsumexp"},
    "heads=2 max": {"scorer_heads": 2},
    "heads=8 max": {"scorer_heads": 8},
}
DEFAULT_SCORERS = ("paper", "heads=4 max", "heads=4 logsumexp")
# Tasks of the table: SHAPE[/DISTRACTORS]:SCALE@BACKBONE: the question (a pair question's image with only
# DISTRACTORS of its three other shapes), the factor on the backbone's visual features, the backbone.
TASKS = (
    "square:1@demo",
    "square+cross:1@pair",
    "square+cross/1:1@pair",
    "circle+cross/2:1@pair",
    "triangle+diamond:30@pair",
    "square:1@pair",
)
RATIOS = (0.5, 0.2, 0.1)


def pair_processor():
    """The tiny processor of the embedded checkpoint with the pair questions' words added (same ids for the rest)."""
    return tiny_processor(min_pixels=IMAGE_PIXELS, max_pixels=IMAGE_PIXELS, words=[*DEFAULT_WORDS, *PAIR_WORDS])


def batches_of(processor, samples, batch_size: int = 50):
    return [task_inputs(processor, samples[i : i + batch_size], with_answers=True) for i in range(0, len(samples), batch_size)]


def train_backbone(steps: int, batch_size: int, lr: float, out: Path, log_every: int = 100) -> None:
    """Stage 1: every parameter of the embedded backbone, AdamW with warm-up and cosine decay, on all questions."""
    processor = pair_processor()
    model = load_backbone(DEFAULT_MODEL).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )
    checks = {name: batches_of(processor, make_samples(100, seed=VALIDATION_SEED, shape=name)) for name in ("square", "square+cross", "triangle+diamond")}
    started = time.time()
    for step in range(steps):
        seeds = range(step * batch_size, (step + 1) * batch_size)
        samples = [make_sample(seed, shape=BACKBONE_QUESTIONS[seed % len(BACKBONE_QUESTIONS)]) for seed in seeds]
        inputs, _ = task_inputs(processor, samples, with_answers=True)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            model.eval()
            scores = {name: answer_accuracy(model, batches) for name, batches in checks.items()}
            model.train()
            print(f"step {step + 1}: loss {loss.item():.4f}, validation (all tokens) {scores}, {time.time() - started:.0f} s", flush=True)
            model.save_pretrained(out)
            processor.save_pretrained(out)
    print(f"stage 1 done in {time.time() - started:.0f} s: {out}", flush=True)


def parse_task(spec: str) -> tuple[str, dict, float, str]:
    """`"square+cross/1:30@pair"` -> ("square+cross", {"distractors": 1}, 30.0, "pair")."""
    rest, _, which = spec.partition("@")
    question, _, scale = rest.partition(":")
    shape, _, distractors = question.partition("/")
    options = {"distractors": int(distractors)} if distractors else {}
    make_sample(0, shape=shape, **options)  # a ValueError naming a bad shape or distractor count
    return shape, options, float(scale or 1.0), which


def load_task(spec: str, eval_samples: int):
    """(question shape, sample options, backbone, processor, held-out batches) of a task (see `TASKS`)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    shape, options, scale, which = parse_task(spec)
    if which == "demo":
        backbone = load_backbone(DEFAULT_MODEL)
        processor = AutoProcessor.from_pretrained(DEFAULT_MODEL, trust_remote_code=False)
    elif which == "pair":
        backbone = Qwen2_5_VLForConditionalGeneration.from_pretrained(WORK_DIR / "backbone").eval()
        processor = pair_processor()
    else:
        raise SystemExit(f"Unknown backbone {which!r} in {spec!r}; accepted: demo, pair.")
    backbone = scaled_backbone(backbone, scale)
    samples = make_samples(eval_samples, seed=HELD_OUT_SEED, shape=shape, **options)
    return shape, options, backbone, processor, batches_of(processor, samples)


def train_scorer(
    backbone, processor, shape: str, options: dict, overrides: dict, seed: int, steps: int, batch_size: int, train_ratio=None
):
    """A fresh scorer (config `overrides`) trained at the trainer's defaults on the question about `shape`."""
    from visionselector_training import VisionSelectorSFTTrainer
    from visionselector_training.smoke import task_training_args

    torch.manual_seed(seed)
    model = VisionSelectorForConditionalGeneration.from_backbone(backbone, base_model_name_or_path=None, **overrides)
    with tempfile.TemporaryDirectory() as output_dir:
        ratio = {} if train_ratio is None else {"train_retention_ratio": train_ratio}  # the trainer config's field
        args = task_training_args(output_dir, steps=steps, batch_size=batch_size, seed=seed, disable_tqdm=True, **ratio)
        trainer = VisionSelectorSFTTrainer(
            model, args=args, train_dataset=task_dataset(steps * batch_size, seed=SCORER_TRAIN_SEED, shape=shape, **options), processing_class=processor
        )
        trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    return trainer.model.eval(), seconds


def run_table(tasks, seeds, steps: int, batch_size: int, eval_samples: int, scorers, out: Path, train_ratio=None) -> None:
    results = {"steps": steps, "batch_size": batch_size, "eval_samples": eval_samples, "first_seed": HELD_OUT_SEED, "train_ratio": train_ratio,
               "seeds": seeds, "threads": torch.get_num_threads(), "tasks": {}}  # fmt: skip
    started = time.perf_counter()
    for spec in tasks:
        shape, options, backbone, processor, batches = load_task(spec, eval_samples)
        full = VisionSelectorForConditionalGeneration.from_backbone(backbone, base_model_name_or_path=None).eval()
        task = {"all_tokens": answer_accuracy(full, batches, retention_ratio=1.0), "training_free": {}, "learned": {}}
        for selector in SELECTORS:
            if selector.startswith("learned"):
                continue
            repeats = []
            for repeat in range(3 if selector == "random" else 1):  # random: the mean of 3 draws
                torch.manual_seed(repeat)
                repeats.append({str(r): answer_accuracy(full, batches, retention_ratio=r, selector=selector) for r in RATIOS})
            task["training_free"][selector] = {r: statistics.mean(rep[r] for rep in repeats) for r in map(str, RATIOS)}
        print(f"{spec}: all tokens {task['all_tokens']:.3f}, training-free {task['training_free']}", flush=True)
        for name in scorers:
            task["learned"][name] = []
            for seed in seeds:
                model, seconds = train_scorer(backbone, processor, shape, options, SCORERS[name], seed, steps, batch_size, train_ratio)
                run = {"seed": seed, "train_s": seconds}
                for selector in ("learned", "learned+diversity"):
                    run[selector] = {str(r): answer_accuracy(model, batches, retention_ratio=r, selector=selector) for r in RATIOS}
                task["learned"][name].append(run)
                print(f"  {spec} {name} seed {seed}: {run}", flush=True)
        results["tasks"][spec] = task
        results["elapsed_s"] = time.perf_counter() - started
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    report = render(results)
    print(report)
    out.with_suffix(".md").write_text(report + "\n")


def render(results: dict) -> str:
    """The markdown table of `run_table`'s results: accuracy in % (mean over seeds) per task and ratio."""
    seeds = results["seeds"]
    lines = [
        f"Accuracy in % (whole answers) on {results['eval_samples']} held-out samples per task (seeds from "
        f"{results['first_seed']}); learned rows: the mean over training seeds {', '.join(map(str, seeds))} (min in "
        f"brackets), each a fresh scorer trained {results['steps']} steps of batch {results['batch_size']} at "
        f"`VisionSelectorSFTConfig`'s defaults, at train retention {results.get('train_ratio') or 0.2}; random: the mean "
        f"of 3 draws. {results['threads']} CPU thread(s), "
        f"{results['elapsed_s'] / 60:.0f} min in all.",
        "",
    ]
    for spec, task in results["tasks"].items():
        header = [f"{spec} (all tokens {100 * task['all_tokens']:.1f})"] + [f"r = {r}" for r in RATIOS]
        rows = []
        for name, runs in task["learned"].items():
            for selector in ("learned", "learned+diversity"):
                label = f"{name} scorer" + (" + diversity" if selector != "learned" else "")
                rows.append((label, [[run[selector][str(r)] for run in runs] for r in RATIOS]))
        rows += [(selector, [[scores[str(r)]] for r in RATIOS]) for selector, scores in task["training_free"].items()]
        best = [max(statistics.mean(values[i]) for _, values in rows) for i in range(len(RATIOS))]
        lines += ["| " + " | ".join(header) + " |", "|---|" + "---|" * len(RATIOS)]
        for label, values in rows:
            cells = []
            for i, runs in enumerate(values):
                mean = statistics.mean(runs)
                cell = f"{100 * mean:.1f}" + (f" ({100 * min(runs):.1f})" if len(runs) > 1 else "")
                cells.append(f"**{cell}**" if mean == best[i] else cell)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += [_target_line(task), ""]
    return "\n".join(lines).rstrip()


def _target_line(task: dict, new: str = "heads=4 max", ratio: str = "0.1") -> str:
    """Issue 26's comparison at r = 0.1: the new scorer against the paper's and the best training-free selector."""
    mean = {name: statistics.mean(run["learned"][ratio] for run in runs) for name, runs in task["learned"].items()}
    best = max(task["training_free"], key=lambda name: task["training_free"][name][ratio])
    if new not in mean or "paper" not in mean:
        return f"r = {ratio}: best training-free {best} {100 * task['training_free'][best][ratio]:.1f}."
    return (
        f"r = {ratio}: {new} {100 * mean[new]:.1f}, paper {100 * mean['paper']:.1f} ({100 * (mean[new] - mean['paper']):+.1f}), "
        f"best training-free ({best}) {100 * task['training_free'][best][ratio]:.1f} "
        f"({100 * (mean[new] - task['training_free'][best][ratio]):+.1f})."
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    backbone = sub.add_parser("backbone", help="stage 1: the pair backbone")
    backbone.add_argument("--steps", type=int, default=800)
    backbone.add_argument("--batch-size", type=int, default=32)
    backbone.add_argument("--lr", type=float, default=5e-4)
    backbone.add_argument("--out", type=Path, default=WORK_DIR / "backbone")
    table = sub.add_parser("table", help="the quality table")
    table.add_argument("--tasks", default=",".join(TASKS))
    table.add_argument("--scorers", default=",".join(DEFAULT_SCORERS), help=f"comma separated, of {list(SCORERS)} (default: %(default)s)")
    table.add_argument("--train-ratio", type=float, default=None, help="`train_retention_ratio` of every scorer (default: VisionSelectorSFTConfig's, 0.2)")
    table.add_argument("--seeds", default="0,1", help="scorer training seeds")
    table.add_argument("--steps", type=int, default=150)
    table.add_argument("--batch-size", type=int, default=8)
    table.add_argument("--eval-samples", type=int, default=200)
    table.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scorer_kinds.json")
    report = sub.add_parser("report", help="one markdown table of several `table` JSON files")
    report.add_argument("inputs", nargs="+", type=Path)
    report.add_argument("--out", type=Path, required=True, help="the markdown file to write")
    for command in (backbone, table, report):
        command.add_argument("--threads", type=int, default=1)
        command.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transformers_logging.set_verbosity_error()
    if args.command == "backbone":
        train_backbone(args.steps, args.batch_size, args.lr, args.out)
    elif args.command == "report":
        parts = [json.loads(path.read_text()) for path in args.inputs]
        settings = ("steps", "batch_size", "eval_samples", "first_seed", "seeds", "train_ratio")
        if any(tuple(part.get(key) for key in settings) != tuple(parts[0].get(key) for key in settings) for part in parts):
            raise SystemExit(f"The runs of {args.inputs} differ in {settings}.")
        merged = {**parts[0], "tasks": {}, "elapsed_s": sum(part["elapsed_s"] for part in parts)}
        for part in parts:
            merged["tasks"].update(part["tasks"])
        order = {spec: i for i, spec in enumerate(TASKS)}
        merged["tasks"] = dict(sorted(merged["tasks"].items(), key=lambda item: order.get(item[0], len(order))))
        text = render(merged)
        print(text)
        args.out.write_text(text + "\n")
    else:
        scorers = args.scorers.split(",")
        unknown = sorted(set(scorers) - set(SCORERS))
        if unknown:
            raise SystemExit(f"Unknown scorers {unknown}; accepted: {list(SCORERS)}.")
        seeds = [int(seed) for seed in args.seeds.split(",")]
        run_table(args.tasks.split(","), seeds, args.steps, args.batch_size, args.eval_samples, scorers, args.out, args.train_ratio)


if __name__ == "__main__":
    main()
