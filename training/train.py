"""
Train the scorer of a VisionSelector on a Qwen-VL backbone (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5, dense or MoE;
everything else stays frozen).

`--model_name_or_path` is a Qwen-VL backbone (wrapped with a fresh scorer) or an existing VisionSelector (training
continues from its scorer). `--dataset_name` is a local JSON/JSONL file, or a dataset on the Hub in TRL's vision
format. A local file is in either layout, told apart by its columns: LLaVA / ShareGPT (`conversations` with
`<image>` / `<video>` tags, `image` and `video` paths: the paper's data) or TRL's (`messages`, `images`, optionally
`videos`); a video is a video file or a folder of frames. Relative paths start from `--image_folder` (default: the
file's folder). Unusable rows (missing file, tags not matching the visuals, no answer) are listed by row number before
training and refused (`--on_bad_row error`, the default) or left out (`--on_bad_row skip`); images are opened batch by
batch, never up front. `--streaming` reads the file as training goes; the step count then comes from `--max_steps`
or, for a local file, from its usable rows and `--num_train_epochs`. `--quantization torchao_int8` (CPU or CUDA; the
`quant` extra), `--load_in_8bit` or `--load_in_4bit` (bitsandbytes, CUDA) load the frozen backbone quantized; the
scorer stays in floating point and the saved result is then the scorer-only artifact, which loads on the
full-precision backbone. Every field of
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
from dataclasses import dataclass, field

from trl import ScriptArguments

from visionselector_training import VisionSelectorSFTConfig, VisionSelectorSFTTrainer, load_visionselector
from visionselector_training.data import (
    ON_BAD_ROW,
    VisionLanguageCollator,
    detect_format,
    load_local_dataset,
    steps_for,
    validate_on_bad_row,
)
from visionselector_training.quantization import QUANTIZATION_CHOICES, quantization_config_for


@dataclass
class VisionSelectorScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments` plus the reading of local data files and the backbone's quantization."""

    image_folder: str | None = field(
        default=None,
        metadata={"help": "Folder that relative image and video paths of a local file start from (LLaVA's "
                  "--image_folder). Default: the data file's folder."},
    )
    on_bad_row: str = field(
        default="error",
        metadata={"help": "What to do with rows that cannot be used (listed by row number before training): refuse "
                  "the file ('error') or leave them out ('skip').", "choices": list(ON_BAD_ROW)},
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the dataset as training goes instead of preparing it first (same as "
                  "--dataset_streaming). The step count is --max_steps, or for a local file computed from its rows."},
    )
    quantization: str | None = field(
        default=None,
        metadata={"help": "Load the frozen backbone quantized (the scorer stays unquantized): 'torchao_int8' (CPU "
                  "or CUDA), 'bnb_8bit' or 'bnb_4bit' (CUDA; same as --load_in_8bit / --load_in_4bit).",
                  "choices": list(QUANTIZATION_CHOICES)},
    )

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):
            super().__post_init__()
        self.on_bad_row = validate_on_bad_row(self.on_bad_row)
        if self.quantization is not None and self.quantization not in QUANTIZATION_CHOICES:
            raise ValueError(f"`quantization` must be one of {list(QUANTIZATION_CHOICES)}, got {self.quantization!r}.")
        self.streaming = self.streaming or self.dataset_streaming


def load_training_dataset(
    name: str, config: str | None = None, streaming: bool = False, image_folder: str | None = None, on_bad_row: str = "error"
):
    """`(DatasetDict, report)`: a local JSON/JSONL file of either layout (split `"train"`, rows holding paths that the
    trainer's collator opens batch by batch; `report` says how many rows are usable), or a Hub dataset (`report`
    None)."""
    import datasets

    if os.path.isfile(name):
        dataset, report = load_local_dataset(name, image_folder=image_folder, on_bad_row=on_bad_row, streaming=streaming)
        container = datasets.IterableDatasetDict if streaming else datasets.DatasetDict
        return container({"train": dataset}), report
    dataset = datasets.load_dataset(name, name=config, streaming=streaming)
    columns = next(iter(dataset.values())).column_names
    if columns is not None and detect_format(columns) == "llava":
        raise ValueError(
            f"{name!r} is in the LLaVA layout, whose images are files beside the data: download it and pass the "
            "JSON/JSONL file with `--image_folder`, or convert it with `visionselector-data convert`."
        )
    return dataset, None


def _quantization(script_args, model_args) -> str | None:
    chosen = [kind for kind, flag in (("bnb_8bit", model_args.load_in_8bit), ("bnb_4bit", model_args.load_in_4bit)) if flag]
    if script_args.quantization:
        chosen.append(script_args.quantization)
    if len(set(chosen)) > 1:
        raise ValueError(f"Choose one quantization of the backbone, got {sorted(set(chosen))}.")
    return chosen[0] if chosen else None


def main(script_args, training_args: VisionSelectorSFTConfig, model_args) -> VisionSelectorSFTTrainer:
    from transformers import AutoProcessor, set_seed

    if model_args.use_peft:
        raise ValueError("PEFT is not supported: only the scorer is trained.")
    if script_args.dataset_name is None:
        raise ValueError("`--dataset_name` is required: a local .json/.jsonl file or a Hub dataset.")
    quantization = _quantization(script_args, model_args)

    dataset, report = load_training_dataset(
        script_args.dataset_name,
        script_args.dataset_config,
        script_args.streaming,
        image_folder=script_args.image_folder,
        on_bad_row=script_args.on_bad_row,
    )
    if script_args.streaming and training_args.max_steps <= 0:
        if report is None:
            raise ValueError("`--max_steps` is required with `--streaming` of a Hub dataset: its length is unknown.")
        # The count `Trainer` would take for a sized dataset; the lambda schedule and the LR schedule run over it.
        training_args.max_steps = steps_for(
            report.num_usable,
            training_args.per_device_train_batch_size,
            training_args.gradient_accumulation_steps,
            training_args.world_size,
            training_args.num_train_epochs,
        )

    set_seed(training_args.seed)  # the fresh scorer of a backbone is drawn while loading
    model = load_visionselector(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        quantization_config=quantization_config_for(quantization, model_args.dtype) if quantization else None,
    )
    processor = AutoProcessor.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
    )

    trainer = VisionSelectorSFTTrainer(
        model,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        processing_class=processor,
    )
    collator = getattr(trainer.data_collator, "collator", None)
    if isinstance(collator, VisionLanguageCollator):  # a file that vanishes mid-run: refused or skipped, as asked
        collator.on_bad_row = script_args.on_bad_row
    trainer.accelerator.print(f"Training the scorer: {trainer.num_trainable_parameters:,} parameters.")

    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True
    trainer.train(resume_from_checkpoint=resume)

    if quantization:
        # A full save would be the quantized backbone; the scorer-only artifact loads on the full-precision one.
        trainer._save_scorer(training_args.output_dir)
        trainer.accelerator.print(f"Scorer-only artifact saved to {training_args.output_dir}.")
    else:
        trainer.save_model(training_args.output_dir)
        trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.end()
    return trainer


def make_parser():
    from trl import ModelConfig, TrlParser

    return TrlParser(
        (VisionSelectorScriptArguments, VisionSelectorSFTConfig, ModelConfig),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def cli(argv: list[str] | None = None) -> VisionSelectorSFTTrainer:
    """Parses `argv` (default: the command line; `--config x.yaml` accepted) and trains."""
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    return main(script_args, training_args, model_args)


if __name__ == "__main__":
    cli()
