"""Peak memory (RSS) of reading a large training file: images stay on disk until their batch.

Writes a synthetic LLaVA-layout JSONL of `--rows` rows (default 100,000), each with its own small noise image
(`--image_size` px, PNG), then, each mode in a fresh process, measures the peak resident set size of:

- `imports`: importing torch, transformers, datasets and the training package (the floor of every mode);
- `prepared`: `load_local_dataset` (the scan for bad rows plus the memory-mapped Arrow table of normalised rows), then
  `--batches` batches of `--batch_size` rows through `VisionLanguageCollator` with the tiny processor;
- `streaming`: the same with `streaming=True` (rows read from the file as batches are drawn);
- `eager` (reference, with `--eager`): every image opened and decoded into a list up front, what a loader that
  decodes the dataset before training holds.

```bash
python benchmarks/data_memory.py --folder /tmp/data-100k --output benchmarks/results/data_memory.json
```
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def write_dataset(folder: str, rows: int, image_size: int) -> str:
    """`rows` rows, one noise PNG each, in the LLaVA layout; reuses a folder already written with the same sizes."""
    import numpy as np
    from PIL import Image

    path = os.path.join(folder, f"train-{rows}.jsonl")
    marker = os.path.join(folder, f"written-{rows}-{image_size}")
    if os.path.exists(marker):
        return path
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rng = np.random.default_rng(0)
    with open(path, "w") as file:
        for i in range(rows):
            name = os.path.join("images", f"{i // 1000:03d}", f"{i:06d}.png")
            if i % 1000 == 0:
                os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)).save(os.path.join(folder, name))
            row = {
                "id": i,
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nwhat is the colour of the square"},
                    {"from": "gpt", "value": "red"},
                ],
            }
            file.write(json.dumps(row) + "\n")
    open(marker, "w").close()
    return path


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(mode: str, path: str, batches: int, batch_size: int) -> dict:
    """Runs in its own process: the peak RSS after imports and after the mode's work."""
    import datasets  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from visionselector.tiny import tiny_processor
    from visionselector_training.data import VisionLanguageCollator, load_local_dataset

    torch.set_num_threads(1)
    result = {"mode": mode, "imports_peak_mib": round(_peak_mib(), 1)}
    start = time.perf_counter()
    if mode == "eager":
        from PIL import Image

        folder = os.path.dirname(path)
        images = []
        with open(path) as file:
            for line in file:
                with Image.open(os.path.join(folder, json.loads(line)["image"])) as image:
                    images.append(image.convert("RGB"))
        result["rows"] = len(images)
    else:
        dataset, report = load_local_dataset(path, streaming=mode == "streaming")
        result["rows"] = report.num_usable
        result["load_seconds"] = round(time.perf_counter() - start, 1)
        result["load_peak_mib"] = round(_peak_mib(), 1)
        collator = VisionLanguageCollator(tiny_processor(min_pixels=28 * 28, max_pixels=56 * 56))
        rows = iter(dataset)
        for _ in range(batches):
            batch = collator([next(rows) for _ in range(batch_size)])
        result["batch_pixel_values"] = list(batch["pixel_values"].shape)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["peak_mib"] = round(_peak_mib(), 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, help="where the synthetic dataset is written (reused if there)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--eager", action="store_true", help="also measure decoding every image up front (reference)")
    parser.add_argument("--output", default=None, help="a .json file for the results (a .md table is written beside it)")
    parser.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    path = os.path.join(args.folder, f"train-{args.rows}.jsonl")
    if args._measure:
        print(json.dumps(measure(args._measure, path, args.batches, args.batch_size)))
        return

    started = time.perf_counter()
    write_dataset(args.folder, args.rows, args.image_size)
    print(f"dataset: {args.rows} rows, {args.image_size} px images ({time.perf_counter() - started:.0f} s to write or find)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_DATASETS_CACHE": os.path.join(args.folder, "cache")}
    results = []
    for mode in ["prepared", "streaming"] + (["eager"] if args.eager else []):
        command = [sys.executable, os.path.abspath(__file__), "--folder", args.folder, "--rows", str(args.rows),
                   "--batches", str(args.batches), "--batch_size", str(args.batch_size), "--_measure", mode]
        output = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(results[-1])
    decoded_mib = args.rows * args.image_size**2 * 3 / 2**20
    lines = [
        f"Peak RSS reading a synthetic {args.rows:,}-row LLaVA-layout JSONL ({args.image_size} px PNG per row; all "
        f"images decoded: {decoded_mib:.0f} MiB of pixels), then {args.batches} batches of {args.batch_size} through "
        "`VisionLanguageCollator` (tiny processor); one process per mode, 1 thread.",
        "",
        "| mode | rows | peak RSS after imports (MiB) | peak RSS after loading (MiB) | peak RSS at the end (MiB) | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        lines.append(
            f"| {result['mode']} | {result['rows']:,} | {result['imports_peak_mib']:.0f} | "
            f"{result['load_peak_mib']:.0f} | " if "load_peak_mib" in result else "- | "
        )
        lines[-1] += f"{result['peak_mib']:.0f} | {result['seconds']} |"
    table = "\n".join(lines)
    print(table)
    if args.output:
        with open(args.output, "w") as file:
            json.dump({"rows": args.rows, "image_size": args.image_size, "results": results}, file, indent=2)
        with open(os.path.splitext(args.output)[0] + ".md", "w") as file:
            file.write(table + "\n")


if __name__ == "__main__":
    main()
