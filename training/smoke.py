"""
Smoke run of the scorer training on CPU: a fresh scorer for the embedded tiny backbone, trained on the demo task.

```bash
python -m visionselector_training.smoke                       # training/configs/tiny_cpu.yaml
python -m visionselector_training.smoke --max_steps 100 --learning_rate 1e-3
```

The backbone of the embedded checkpoint `visionselector/checkpoints/tiny-shapes` gets a fresh scorer (drawn with
`--seed`; its own trained scorer is set aside), which `VisionSelectorSFTTrainer` trains on the demo task
(`visionselector.tasks.task_dataset`, drawn on the fly). Before and after training, the accuracy at
`--eval_retention_ratio` on `--eval_samples` held-out samples is printed, beside random selection at the same ratio.
Every option of `VisionSelectorSFTConfig` is accepted; `--config x.yaml` sets any of them.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field

import torch

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "tiny_cpu.yaml")
TRAIN_SEED = 0  # task samples of the run: seeds 0, 1, ...; held-out ones: `tasks.make_samples`'s default seeds


@dataclass
class SmokeArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A VisionSelector checkpoint whose backbone knows the demo task (default: the embedded one)."},
    )
    eval_retention_ratio: float = field(default=0.1, metadata={"help": "Retention ratio of the accuracy printed."})
    eval_samples: int = field(default=100, metadata={"help": "Held-out task samples the accuracy is measured on."})


def fresh_scorer(model, seed: int) -> None:
    """Replaces the scorer's weights by a new draw of its initialisation (normal weights, zero biases)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for projection in (model.scorer.q_proj, model.scorer.k_proj):
            weight = torch.randn(projection.weight.shape, generator=generator) * model.config.scorer_init_std
            projection.weight.copy_(weight)
            projection.bias.zero_()


def task_training_args(output_dir: str, *, steps: int, batch_size: int, seed: int, **overrides):
    """`VisionSelectorSFTConfig` for a short CPU run on the demo task (the recipe's stage 2, the sweep's runs).

    Defaults everywhere but the run: `steps` of `batch_size`, logged 10 times, no saves, no gradient checkpointing
    (a tiny model has memory to spare; recomputing would cost a third of each step), `seed` for the data order too,
    and the columns the task dataset needs kept. `overrides` set any other field.
    """
    from visionselector_training import VisionSelectorSFTConfig

    return VisionSelectorSFTConfig(
        **{
            "output_dir": output_dir,
            "max_steps": steps,
            "per_device_train_batch_size": batch_size,
            "logging_steps": max(1, steps // 10),
            "save_strategy": "no",
            "report_to": "none",
            "seed": seed,
            "data_seed": seed,
            "use_cpu": True,
            "gradient_checkpointing": False,
            "dataloader_num_workers": 0,
            "remove_unused_columns": False,  # the dataset stores seeds and draws the examples when read
            **overrides,
        }
    )


def accuracies(model, batches, ratio: float, seed: int) -> dict[str, float]:
    """Held-out accuracy of the learned scorer and of random selection at `ratio`."""
    from visionselector.tasks import answer_accuracy

    model.eval()
    scores = {}
    for selector in ("learned", "random"):
        torch.manual_seed(seed)  # the random selector draws from the global generator
        scores[selector] = answer_accuracy(model, batches, retention_ratio=ratio, selector=selector)
    return scores


def main(smoke_args: SmokeArguments, training_args) -> dict[str, float]:
    """Trains a fresh scorer on the demo task; returns the accuracies before and after."""
    from transformers import AutoProcessor

    from transformers import PreTrainedConfig

    from modeling_visionselector import visionselector_class_for
    from visionselector.cli import EMBEDDED_CHECKPOINT
    from visionselector.tasks import make_samples, task_dataset, task_inputs
    from visionselector_training import VisionSelectorSFTTrainer

    checkpoint = smoke_args.model_name_or_path or str(EMBEDDED_CHECKPOINT)
    config_dict, _ = PreTrainedConfig.get_config_dict(checkpoint)
    # the VisionSelector class of the checkpoint's family
    model = visionselector_class_for(config_dict.get("model_type"), checkpoint).from_pretrained(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=False)
    fresh_scorer(model, training_args.seed)
    model.config.base_model_name_or_path = checkpoint  # what a scorer-only checkpoint would point at

    ratio = smoke_args.eval_retention_ratio
    held_out = make_samples(smoke_args.eval_samples)
    batches = [task_inputs(processor, held_out[i : i + 50]) for i in range(0, len(held_out), 50)]
    before = accuracies(model, batches, ratio, training_args.seed)
    print(
        f"held-out accuracy at retention {ratio} ({len(held_out)} samples): fresh scorer {before['learned']:.1%}, "
        f"random selection {before['random']:.1%}",
        flush=True,
    )

    steps = training_args.max_steps
    if steps <= 0:
        raise ValueError(f"The smoke run needs `max_steps` > 0 (it draws that many batches of the task), got {steps}.")
    samples = steps * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    trainer = VisionSelectorSFTTrainer(
        model,
        args=training_args,
        train_dataset=task_dataset(samples, seed=TRAIN_SEED),
        processing_class=processor,
    )
    start = time.time()
    trainer.train()
    seconds = time.time() - start

    after = accuracies(trainer.model, batches, ratio, training_args.seed)
    print(
        f"held-out accuracy at retention {ratio} ({len(held_out)} samples): trained scorer {after['learned']:.1%} "
        f"(fresh {before['learned']:.1%}), random selection {after['random']:.1%}; {steps} steps in {seconds:.0f} s",
        flush=True,
    )
    return {"before": before["learned"], "after": after["learned"], "random": after["random"], "seconds": seconds}


def make_parser():
    from trl import TrlParser

    from visionselector_training import VisionSelectorSFTConfig

    return TrlParser(
        (SmokeArguments, VisionSelectorSFTConfig), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def cli(argv: list[str] | None = None) -> dict[str, float]:
    """Parses `argv` (default: the command line; `--config` defaults to the packaged tiny_cpu.yaml) and runs."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", CONFIG, *argv]
    smoke_args, training_args = make_parser().parse_args_and_config(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return main(smoke_args, training_args)


if __name__ == "__main__":
    cli()
