"""Rebuilds the embedded tiny checkpoint `visionselector/checkpoints/tiny-shapes` from scratch, on CPU.

usage: python recipes/build_tiny_checkpoint.py [--out FOLDER] [--work-dir FOLDER] [--stage {all,backbone,scorer,refresh-code}]

Stage 1 trains a tiny stock Qwen2.5-VL (all parameters, from random) on the task of `visionselector.tasks`
("what colours are the squares / circles / triangles": 3 squares, 4 circles, 4 triangles and 2-4 diamonds and
crosses, the answer the asked shapes' colours in rainbow order) until it answers held-out samples with all visual
tokens. It learns all three questions, so its visual features favour no one shape. Stage 2 wraps it with
`VisionSelectorForConditionalGeneration.from_backbone` and trains only the scorer with the project's trainer at its
defaults (the temperature-annealed top-k at lr 1e-2; `--scorer-settings paper` for the scorer shipped before it, the
paper's raw-score top-k at lr 3e-3), on the squares question alone, at retention 0.1: the answer needs exactly three
tokens, and a scorer trained at 0.2 only learns to rank them among its 9 best, in any order. Seeds are fixed; on 2 CPU
cores stage 1 took 25 minutes (1 torch thread) and stage 2 with its validation 1-2 minutes; both rebuild the shipped
weights bit for bit: stage 1 reproduced an earlier run of the same settings (another script) to the last bit, and two
runs of stage 2 (2026-12-04, transformers 5.25.0) gave the shipped scorer exactly.
Stage 1 needs its 1500 steps: the backbone's accuracy stays near chance until about step 700, then jumps to 98%.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modeling_visionselector import VisionSelectorForConditionalGeneration
from modeling_visionselector.selectors import SELECTORS
from visionselector.tasks import SHAPES, VALIDATION_SEED, answer_accuracy, make_sample, make_samples, task_dataset, task_inputs
from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl

SCORER_TRAIN_SEED = 500_000  # stage 2 samples: seeds 500000 ..; stage 1: 0 ..; validation: VALIDATION_SEED ..
MODEL_CARD = """---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [visionselector, qwen2_5_vl, tiny, synthetic]
---

# tiny-shapes: a tiny VisionSelector for tests and demos

A Qwen2.5-VL-architecture model (603k parameters: text hidden 128 x 2 layers, vision hidden 64 x depth 2, 55 tokens)
trained from scratch on CPU for three synthetic questions, "what colours are the squares / circles / triangles":
3 squares, 4 circles, 4 triangles and 2-4 diamonds and crosses, each its own colour within a shape, on a
196 x 196 px image (49 merged visual tokens, one object per token); the answer lists the colours in rainbow order.
Its VisionSelector scorer was then trained on the squares question at retention 0.1 with the frozen backbone: it
keeps the three squares, which no training-free selector does. Not a general model: it only knows this task.

Rebuild it with `python recipes/build_tiny_checkpoint.py`; make held-out data with
`visionselector.tasks.make_samples(n)`; see it work with `visionselector demo`.

```python
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder)
```
"""
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "visionselector" / "checkpoints" / "tiny-shapes"
IMAGE_PIXELS = 196 * 196  # a 7 x 7 grid of merged tokens
BACKBONE = dict(text_hidden_size=128, vision_hidden_size=64, num_hidden_layers=2, vision_depth=2)


def build_processor():
    return tiny_processor(min_pixels=IMAGE_PIXELS, max_pixels=IMAGE_PIXELS)


def accuracy(model, processor, samples, batch_size: int = 50, **forward_kwargs) -> float:
    """Share of samples whose whole answer greedy decoding gets right (`tasks.answer_accuracy`)."""
    model.eval()
    batches = [task_inputs(processor, samples[i : i + batch_size], with_answers=True) for i in range(0, len(samples), batch_size)]
    return answer_accuracy(model, batches, **forward_kwargs)


def train_backbone(processor, steps: int, batch_size: int, lr: float, seed: int, log_every: int):
    """Stage 1: all parameters of a random tiny Qwen2.5-VL, AdamW with warm-up and cosine decay."""
    model = tiny_qwen2_5_vl(seed=seed, **BACKBONE).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )
    validation = make_samples(200, seed=VALIDATION_SEED)
    bar = tqdm(range(steps), desc="stage 1: backbone", unit="step")
    for step in bar:
        # training seeds: 0 .. steps * batch_size, each asked about squares, circles or triangles in turn
        samples = [make_sample(seed_, shape=SHAPES[seed_ % len(SHAPES)]) for seed_ in range(step * batch_size, (step + 1) * batch_size)]
        inputs, _ = task_inputs(processor, samples, with_answers=True)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % log_every == 0 or step + 1 == steps:
            score = accuracy(model, processor, validation)
            model.train()
            tqdm.write(f"step {step + 1}: loss {loss.item():.4f}, validation accuracy {score:.3f}")
    return model.eval()


# The scorer shipped until 2026-12 was trained with the trainer's defaults of its day: the paper's top-k over raw
# scores at lr 3e-3 (82.0% at r = 0.1 on benchmarks/quality.py's 500 samples; today's defaults: 83.8%).
PAPER_SCORER_SETTINGS = {"learning_rate": 3e-3, "mask_temperature_schedule": "paper"}


def train_scorer(
    backbone, processor, steps: int, batch_size: int, lr: float | None, seed: int, work_dir: Path, train_ratio: float,
    settings: dict | None = None,
):  # fmt: skip
    """Stage 2: a fresh scorer on the frozen backbone, with the project's trainer at retention `train_ratio`.

    Everything but the run length, the batch size and the train ratio is the default of `VisionSelectorConfig`
    (scorer initialisation) and `VisionSelectorSFTConfig` (learning rate, warmup, schedule, lambda curriculum,
    answer-only loss), unless `lr` is given. The task's answer needs exactly three tokens, so the ratio trained at
    is the lowest one served: a scorer trained at 0.2 only learns to put the squares among its 9 best tokens, in
    any order (`benchmarks/results/sweep_scorer.md`).
    """
    from visionselector_training import VisionSelectorSFTTrainer
    from visionselector_training.smoke import task_training_args

    torch.manual_seed(seed)
    model = VisionSelectorForConditionalGeneration.from_backbone(
        backbone, retention_ratio=0.2, train_retention_ratio=train_ratio, base_model_name_or_path=None
    )
    args = task_training_args(
        str(work_dir / "scorer"),
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        train_retention_ratio=train_ratio,
        **{**(settings or {}), **({} if lr is None else {"learning_rate": lr})},
    )
    trainer = VisionSelectorSFTTrainer(
        model,
        args=args,
        train_dataset=task_dataset(steps * batch_size, seed=SCORER_TRAIN_SEED),
        processing_class=processor,
    )
    trainer.train()
    return trainer.model.eval()


def save_checkpoint(model, out: Path) -> None:
    """`save_pretrained` of the model (with its remote code) and of a fresh processor, plus a model card."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.py"):  # save_pretrained copies the modeling files in use; drop any it no longer needs
        stale.unlink()
    model.config.use_cache = True  # `Trainer` writes its own `use_cache=False` into the model config
    model.save_pretrained(out)
    build_processor().save_pretrained(out)  # fresh: a used tokenizer also saves its last padding state
    (out / "README.md").write_text(MODEL_CARD)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the finished checkpoint goes (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "tiny-shapes", help="intermediate files (default: %(default)s)")
    parser.add_argument(
        "--stage",
        choices=["all", "backbone", "scorer", "refresh-code"],
        default="all",
        help="`scorer` reuses the stage-1 backbone in --work-dir; `refresh-code` only re-saves --out with the "
        "package's current modeling code and config fields (weights unchanged)",
    )
    parser.add_argument("--backbone-steps", type=int, default=1500)
    parser.add_argument("--backbone-lr", type=float, default=1e-3)
    parser.add_argument("--scorer-steps", type=int, default=300)
    parser.add_argument("--scorer-lr", type=float, default=None, help="(default: that of --scorer-settings)")
    parser.add_argument(
        "--scorer-settings",
        choices=("defaults", "paper"),
        default="defaults",
        help="stage 2's trainer settings: `defaults`, VisionSelectorSFTConfig's (the shipped scorer), or `paper`, the "
        "paper's raw-score top-k at lr 3e-3 (the scorer shipped before 2026-12) (default: %(default)s)",
    )
    parser.add_argument("--scorer-train-ratio", type=float, default=0.1, help="retention ratio of stage 2 (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="stage 1 batch size (default: %(default)s)")
    parser.add_argument("--scorer-batch-size", type=int, default=16, help="stage 2 batch size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 1 is as fast as 2 on a shared machine and the default build used it (default: %(default)s)")
    args = parser.parse_args(argv)

    if args.stage == "refresh-code":
        model = VisionSelectorForConditionalGeneration.from_pretrained(args.out)
        before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        save_checkpoint(model, args.out)
        after = VisionSelectorForConditionalGeneration.from_pretrained(args.out).state_dict()
        assert all(torch.equal(before[name], after[name]) for name in before), "weights changed on re-save"
        print(f"re-saved {args.out} with the current code")
        return 0
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    processor = build_processor()
    backbone_dir = args.work_dir / "backbone"
    start = time.time()
    if args.stage in ("all", "backbone"):
        backbone = train_backbone(processor, args.backbone_steps, args.batch_size, args.backbone_lr, args.seed, log_every=100)
        backbone.save_pretrained(backbone_dir)
        processor.save_pretrained(backbone_dir)
        print(f"stage 1 done in {time.time() - start:.0f} s: {backbone_dir}")
    if args.stage in ("all", "scorer"):
        from transformers import Qwen2_5_VLForConditionalGeneration

        backbone = Qwen2_5_VLForConditionalGeneration.from_pretrained(backbone_dir, attn_implementation="sdpa")
        model = train_scorer(
            backbone, processor, args.scorer_steps, args.scorer_batch_size, args.scorer_lr, args.seed, args.work_dir, args.scorer_train_ratio,
            settings=PAPER_SCORER_SETTINGS if args.scorer_settings == "paper" else None,
        )
        validation = make_samples(200, seed=VALIDATION_SEED)
        for ratio in (1.0, 0.2, 0.1):
            scores = {}
            for selector in SELECTORS:
                torch.manual_seed(args.seed)  # the random selector draws from torch's global generator
                scores[selector] = accuracy(model, processor, validation, retention_ratio=ratio, selector=selector)
            print(f"validation at retention {ratio}: " + ", ".join(f"{name} {value:.3f}" for name, value in scores.items()))
        save_checkpoint(model, args.out)
        print(f"done in {time.time() - start:.0f} s: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
