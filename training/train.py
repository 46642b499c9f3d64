"""
Train the scorer of a VisionSelector on a Qwen2.5-VL backbone (everything else stays frozen).

`--model_name_or_path` is a stock Qwen2.5-VL (wrapped with a fresh scorer) or an existing VisionSelector (training
continues from its scorer). `--dataset_name` is a local JSON/JSONL file in TRL's vision format, one example per row
with `messages` and `images` (image paths, relative to the file or absolute), or a dataset on the Hub. Every field of
`VisionSelectorSFTConfig` (TRL's `SFTConfig` plus `--train_retention_ratio`, `--train_retention_ratio_min`,
`--reg_weight_start`, `--reg_weight_end`, `--reg_weight_schedule`, `--save_scorer_only_checkpoints`) is an option;
a YAML file given with `--config` sets any of them, and the command line overrides it.

# Tiny runs on CPU

`python -m visionselector_training.smoke` trains a fresh scorer for the embedded tiny backbone on the demo task and
prints its accuracy before and after (see `smoke.py`); `python -m visionselector_training.tiny_assets DIR` writes a
tiny random backbone and a JSONL dataset in the format this script reads (see `tiny_assets.py`).

# Qwen2.5-VL-7B on 8 GPUs (DeepSpeed ZeRO-2; see training/configs/ for DDP, ZeRO-3 and FSDP)

```bash
accelerate launch --config_file training/configs/accelerate/zero2.yaml \
    -m visionselector_training.train --config training/configs/qwen2_5_vl_7b.yaml \
    --dataset_name /data/llava_sft.jsonl --output_dir VisionSelector-Qwen2.5-VL-7B
```

Resume with `--resume_from_checkpoint true` (the last checkpoint of `--output_dir`) or a checkpoint folder; the
annealing of lambda continues from the checkpoint's step. The script also runs as `python training/train.py`.
"""

from __future__ import annotations

import argparse
import os

from visionselector_training import VisionSelectorSFTConfig, VisionSelectorSFTTrainer, load_visionselector


def load_training_dataset(name: str, config: str | None = None, streaming: bool = False):
    """A `DatasetDict` from a local JSON/JSONL file (split `"train"`) or a Hub dataset.

    In a local file, the `images` (or `image`) column holds paths, relative to the file or absolute; they are decoded
    into PIL images on access.
    """
    import datasets

    if os.path.isfile(name):
        if not name.endswith((".json", ".jsonl")):
            raise ValueError(f"A local dataset must be a .json or .jsonl file, got {name!r}.")
        dataset = datasets.load_dataset("json", data_files={"train": name}, streaming=streaming)
        root = os.path.dirname(os.path.abspath(name))

        def resolve(path: str) -> str:
            return path if os.path.isabs(path) else os.path.join(root, path)

        column = "images" if "images" in dataset["train"].column_names else "image"
        if column == "images":
            dataset = dataset.map(lambda example: {"images": [resolve(path) for path in example["images"]]})
            return dataset.cast_column("images", datasets.List(datasets.Image()))
        if column in dataset["train"].column_names:
            dataset = dataset.map(lambda example: {"image": resolve(example["image"])})
            return dataset.cast_column("image", datasets.Image())
        raise ValueError(f"{name!r} has no `images` or `image` column; columns: {dataset['train'].column_names}.")
    return datasets.load_dataset(name, name=config, streaming=streaming)


def main(script_args, training_args: VisionSelectorSFTConfig, model_args) -> VisionSelectorSFTTrainer:
    from transformers import AutoProcessor, set_seed

    if model_args.use_peft or model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError("PEFT and quantized backbones are not supported: only the scorer is trained.")
    if script_args.dataset_name is None:
        raise ValueError("`--dataset_name` is required: a local .json/.jsonl file or a Hub dataset.")

    set_seed(training_args.seed)  # the fresh scorer of a stock backbone is drawn while loading
    model = load_visionselector(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
    )
    processor = AutoProcessor.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
    )
    dataset = load_training_dataset(script_args.dataset_name, script_args.dataset_config, script_args.dataset_streaming)

    trainer = VisionSelectorSFTTrainer(
        model,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        processing_class=processor,
    )
    trainer.accelerator.print(f"Training the scorer: {trainer.num_trainable_parameters:,} parameters.")

    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True
    trainer.train(resume_from_checkpoint=resume)

    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.end()
    return trainer


def make_parser():
    from trl import ModelConfig, ScriptArguments, TrlParser

    return TrlParser(
        (ScriptArguments, VisionSelectorSFTConfig, ModelConfig),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def cli(argv: list[str] | None = None) -> VisionSelectorSFTTrainer:
    """Parses `argv` (default: the command line; `--config x.yaml` accepted) and trains."""
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    return main(script_args, training_args, model_args)


if __name__ == "__main__":
    cli()
