"""Trains a tiny scorer with `VisionSelectorSFTTrainer`: run by `tests/test_distributed.py` under `accelerate launch`.

usage: accelerate launch ... tests/distributed_train.py BACKBONE OUT

Trains 4 steps of 2 samples per process (a checkpoint after step 2), then resumes a second run from that checkpoint;
each rank writes the scorer of both runs to OUT/{full,resumed}-rank{RANK}.safetensors, and rank 0 the accelerate
state to OUT/state.json. The test compares them across
ranks and with one process that trains on the same global batches.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import safetensors.torch
import torch
from datasets import Dataset
from PIL import Image

from modeling_visionselector import SCORER_PREFIX
from visionselector.tiny import tiny_processor
from visionselector_training import VisionSelectorSFTConfig, VisionSelectorSFTTrainer

# Answers of different lengths: a per-process mean CE would weight their tokens differently from one process.
ANSWERS = ["red", "green blue yellow", "blue", "a red circle on the left", "yellow", "green", "cyan red", "purple"]
STEPS, SAVE_STEPS = 4, 2


def dataset() -> Dataset:
    rng = np.random.default_rng(0)
    rows = []
    for answer in ANSWERS:
        image = Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
        messages = [{"role": "user", "content": "what is the colour of the square"}, {"role": "assistant", "content": answer}]
        rows.append({"images": [image], "messages": messages})
    return Dataset.from_list(rows)


def train(backbone: str, output_dir: str, per_device_batch: int, resume: str | None = None, **overrides):
    """Trains `STEPS` steps; returns the trainer."""
    torch.set_num_threads(1)
    values = dict(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        max_steps=STEPS,
        per_device_train_batch_size=per_device_batch,
        learning_rate=1e-2,
        warmup_steps=0,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        logging_steps=1,
        report_to="none",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    trainer = VisionSelectorSFTTrainer(
        backbone,
        args=VisionSelectorSFTConfig(**values),
        train_dataset=dataset(),
        processing_class=tiny_processor(min_pixels=56 * 56, max_pixels=56 * 56),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def scorer_tensors(trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {name: t.detach().clone() for name, t in model.state_dict().items() if name.startswith(SCORER_PREFIX)}


def main(argv: list[str]) -> None:
    backbone, out = argv[0], argv[1]
    rank = int(os.environ.get("RANK", "0"))
    full = train(backbone, os.path.join(out, "run"), per_device_batch=2)
    if rank == 0:
        state = full.accelerator.state
        with open(os.path.join(out, "state.json"), "w") as file:
            json.dump({"distributed_type": state.distributed_type.value, "num_processes": state.num_processes,
                       "backend": state.backend}, file)  # fmt: skip
    safetensors.torch.save_file(scorer_tensors(full), os.path.join(out, f"full-rank{rank}.safetensors"))
    checkpoint = os.path.join(out, "run", f"checkpoint-{SAVE_STEPS}")
    resumed = train(backbone, os.path.join(out, "resumed"), per_device_batch=2, resume=checkpoint)
    safetensors.torch.save_file(scorer_tensors(resumed), os.path.join(out, f"resumed-rank{rank}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1:])
