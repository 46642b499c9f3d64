"""Accuracy against retention ratio for every selector, on held-out samples of the synthetic task.

Usage:
    python benchmarks/quality.py                 # the embedded checkpoint, 500 held-out samples, about a minute on CPU
    python benchmarks/quality.py --model PATH --task visionselector.tasks --samples 1000 --ratios 1.0,0.3,0.1

The model is any VisionSelector folder (`save_pretrained` output with its processor); the default is the checkpoint
embedded in the package (`visionselector/checkpoints/tiny-shapes`), trained on task seeds below
`visionselector.tasks.HELD_OUT_SEED`. The task is a module with `make_samples(count, seed)` and
`task_inputs(processor, samples, with_answers=True) -> (inputs, answer_ids)`; the samples are drawn from `--seed` on
(default: the module's `HELD_OUT_SEED`), so they were never trained or validated on.

A sample counts as correct when its whole answer is right (`visionselector.tasks.answer_accuracy`: every answer
token and the end of turn, i.e. greedy decoding writes exactly the answer). Every selector of
`modeling_visionselector.selectors.SELECTORS` runs at every ratio on the same inputs; "random" is averaged over
`--random-repeats` seeds. At ratio 1.0 every selector keeps every token, so those entries agree (a check).

Targets (issue 14): at r = 0.1 the learned scorer keeps >= 90% accuracy and beats every training-free selector by
at least 10 points; the report says whether they are met.

Writes a markdown table (printed, and next to the JSON), the JSON (`--out`) and a PNG plot of accuracy against
retention, one line per selector.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from transformers import AutoProcessor

from modeling_visionselector import VisionSelectorForConditionalGeneration
from modeling_visionselector.selectors import SELECTORS, TRAINING_FREE_SELECTORS
from visionselector.tasks import answer_accuracy

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "visionselector" / "checkpoints" / "tiny-shapes"


@torch.no_grad()
def evaluate(model, batches, ratios, random_repeats: int) -> dict[str, dict[float, float]]:
    results = {}
    for selector in SELECTORS:
        results[selector] = {}
        for ratio in ratios:
            if selector == "random":
                scores = []
                for seed in range(random_repeats):
                    torch.manual_seed(seed)
                    scores.append(answer_accuracy(model, batches, retention_ratio=ratio, selector=selector))
                results[selector][ratio] = sum(scores) / len(scores)
            else:
                results[selector][ratio] = answer_accuracy(model, batches, retention_ratio=ratio, selector=selector)
        print(f"  {selector}: " + ", ".join(f"{r}: {a:.3f}" for r, a in results[selector].items()), file=sys.stderr, flush=True)
    return results


def targets(results, ratios, ratio: float = 0.1, floor: float = 0.9, margin: float = 0.10) -> list[str]:
    """The quality targets, checked on these results: at `ratio`, learned >= `floor` and >= `margin` above every
    training-free selector; at the other ratios <= 0.2, the margin over the best training-free selector."""
    lines = []
    learned = results["learned"]
    for r in [r for r in ratios if r <= 0.2]:
        best_name = max(TRAINING_FREE_SELECTORS, key=lambda name: results[name][r])
        best = results[best_name][r]
        line = f"- r = {r}: learned {learned[r]:.3f}, best training-free ({best_name}) {best:.3f}: {100 * (learned[r] - best):+.1f} points"
        if r == ratio:
            met = learned[r] >= floor and learned[r] - best >= margin - 1e-9
            line += f" (target: learned >= {floor:.2f} and >= {100 * margin:.0f} points ahead: {'met' if met else 'NOT met'})"
        lines.append(line)
    if "learned+diversity" in results:
        lines.append(
            "- learned+diversity: " + ", ".join(f"r = {r}: {results['learned+diversity'][r]:.3f}" for r in ratios if r <= 0.2)
        )
    return lines


def table(results, ratios, n: int) -> str:
    header = "| selector | " + " | ".join(f"r = {r}" for r in ratios) + " |"
    lines = [header, "|---|" + "---|" * len(ratios)]
    for selector, by_ratio in results.items():
        cells = []
        for ratio in ratios:
            best = max(results[name][ratio] for name in results)
            value = f"{100 * by_ratio[ratio]:.1f}"
            cells.append(f"**{value}**" if by_ratio[ratio] == best and ratio < 1.0 else value)
        lines.append(f"| {selector} | " + " | ".join(cells) + " |")
    standard_error = 100 * math.sqrt(0.25 / n)
    lines.append("")
    lines.append(f"Accuracy in %, {n} held-out samples (standard error at most {standard_error:.1f} points); best per ratio in bold.")
    return "\n".join(lines)


def plot(results, ratios, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for selector, by_ratio in results.items():
        style = {"linewidth": 2.4, "zorder": 3} if selector.startswith("learned") else {"linewidth": 1.4}
        axes.plot(ratios, [100 * by_ratio[r] for r in ratios], marker="o", label=selector, **style)
    axes.set_xscale("log")
    axes.set_xticks(ratios, [str(r) for r in ratios])
    axes.minorticks_off()
    axes.set_xlabel("retention ratio (share of visual tokens kept)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a VisionSelector folder with its processor")
    parser.add_argument("--task", default="visionselector.tasks", help="module with make_samples and task_inputs")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=None, help="first task seed (default: the task's HELD_OUT_SEED)")
    parser.add_argument("--ratios", default="1.0,0.5,0.3,0.2,0.1,0.05")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--random-repeats", type=int, default=3, help="seeds the random selector is averaged over")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: robust on a shared machine)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model_path = Path(args.model)
    if not (model_path / "config.json").is_file():
        raise SystemExit(
            f"No model at {model_path}: pass --model with a VisionSelector folder (save_pretrained output with "
            "its processor), e.g. the one `python recipes/build_tiny_checkpoint.py` writes."
        )
    task = importlib.import_module(args.task)
    ratios = sorted({float(r) for r in args.ratios.split(",")}, reverse=True)
    started = time.perf_counter()
    model = VisionSelectorForConditionalGeneration.from_pretrained(model_path).eval()
    # the processor is stock; False answers the remote-code question the tokenizer's config lookup would ask
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=False)
    seed = task.HELD_OUT_SEED if args.seed is None else args.seed
    samples = task.make_samples(args.samples, seed)
    batches = [
        task.task_inputs(processor, samples[i : i + args.batch_size], with_answers=True)
        for i in range(0, len(samples), args.batch_size)
    ]

    results = evaluate(model, batches, ratios, args.random_repeats)
    elapsed = time.perf_counter() - started
    full = {name: by_ratio[1.0] for name, by_ratio in results.items() if 1.0 in by_ratio}
    if len(set(full.values())) > 1:
        print(f"warning: selectors disagree at ratio 1.0: {full}", file=sys.stderr)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"{model_path.name}: {args.samples} held-out samples of {args.task}"
    plot(results, ratios, out.with_suffix(".png"), title)
    report = "\n".join([
        f"Model {model_path.name}, {args.samples} held-out samples (task seeds {seed}..{seed + args.samples - 1}); "
        f"{torch.get_num_threads()} CPU threads, {elapsed:.0f} s.",
        "",
        table(results, ratios, args.samples),
        "",
        "Targets:",
        *targets(results, ratios),
    ])
    print(report)
    out.with_suffix(".md").write_text(report + "\n")
    out.write_text(json.dumps({
        "model": str(model_path), "task": args.task, "samples": args.samples, "first_seed": seed,
        "random_repeats": args.random_repeats, "elapsed_s": elapsed,
        "accuracy": {name: {str(r): a for r, a in by_ratio.items()} for name, by_ratio in results.items()},
    }, indent=1))
    print(f"\nWrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
