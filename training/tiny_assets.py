"""Writes a tiny random stock Qwen2.5-VL backbone, its processor and a small JSONL image dataset: the files the
training script reads, to try its plumbing on CPU in seconds (nothing learns: the backbone is random; for a run that
learns, see `python -m visionselector_training.smoke`).

Usage:

```bash
python -m visionselector_training.tiny_assets tiny-visionselector
python -m visionselector_training.train --model_name_or_path tiny-visionselector/backbone \
    --dataset_name tiny-visionselector/data/train.jsonl --output_dir tiny-visionselector/run \
    --use_cpu --max_steps 10 --per_device_train_batch_size 4 --gradient_checkpointing false --report_to none
```

Layout written under the folder: `backbone/` (model + processor) and `data/train.jsonl` with `data/images/*.png`.
Each example shows a coloured square on a white background and asks for its colour, in TRL's vision format
(`messages` + `images`, image paths relative to the JSONL file).
"""

from __future__ import annotations

import argparse
import json
import os


def write_image_dataset(folder: str, num_examples: int = 24, image_size: int = 112) -> str:
    """Writes `num_examples` coloured-square images and `train.jsonl` under `folder`; returns the JSONL path."""
    from PIL import Image

    from visionselector.tasks import COLOURS

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    names = list(COLOURS)
    path = os.path.join(folder, "train.jsonl")
    with open(path, "w") as file:
        for i in range(num_examples):
            name = names[i % len(names)]
            side = image_size // 3
            image = Image.new("RGB", (image_size, image_size), (255, 255, 255))
            offset = ((7 * i) % (image_size - side), (13 * i) % (image_size - side))
            image.paste(Image.new("RGB", (side, side), COLOURS[name]), offset)
            image_path = os.path.join("images", f"{i:04d}.png")
            image.save(os.path.join(folder, image_path))
            messages = [
                {"role": "user", "content": "what is the colour of the square"},
                {"role": "assistant", "content": name},
            ]
            file.write(json.dumps({"messages": messages, "images": [image_path]}) + "\n")
    return path


def write_tiny_backbone(folder: str, seed: int = 0) -> str:
    """Saves a tiny random stock Qwen2.5-VL and the offline tiny processor to `folder`."""
    from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl

    tiny_qwen2_5_vl(seed=seed).save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="folder to write `backbone/` and `data/` into")
    parser.add_argument("--num_examples", type=int, default=24)
    args = parser.parse_args(argv)
    write_tiny_backbone(os.path.join(args.output_dir, "backbone"))
    path = write_image_dataset(os.path.join(args.output_dir, "data"), args.num_examples)
    print(f"Wrote {os.path.join(args.output_dir, 'backbone')} and {path}.")


if __name__ == "__main__":
    main()
