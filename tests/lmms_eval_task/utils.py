"""The lmms-eval task `visionselector_shapes`: held-out samples of `visionselector.tasks`, scored by exact match.

lmms-eval imports this file through `!function utils.<name>` in visionselector_shapes.yaml. The test suite imports
it too, so that its own count uses the same normalisation (`normalize`) as the task's metric. Run as a script, it
writes the task's data folder:

    python tests/lmms_eval_task/utils.py --count 100 --output WORKDIR/visionselector_shapes_data
"""

from __future__ import annotations

import re

DATA_FOLDER = "visionselector_shapes_data"  # the yaml's dataset_path, relative to lmms-eval's working directory


def write_dataset(folder, count: int, seed: int | None = None):
    """Writes `count` held-out samples (seeds `seed`, `seed + 1`, ...) as a `datasets` folder with a "test" split."""
    import datasets

    from visionselector.tasks import HELD_OUT_SEED, make_samples

    samples = make_samples(count, seed=HELD_OUT_SEED if seed is None else seed)
    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
    )
    rows = {
        "image": [sample.image for sample in samples],
        "question": [sample.question for sample in samples],
        "answer": [sample.answer for sample in samples],
    }
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(folder))
    return samples


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, words separated by single spaces."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"accuracy": float(normalize(results[0]) == normalize(doc["answer"]))}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Writes the data folder of the lmms-eval task visionselector_shapes.")
    parser.add_argument("--count", type=int, default=100, help="held-out samples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="first sample seed (default: visionselector.tasks.HELD_OUT_SEED)")
    parser.add_argument("--output", default=DATA_FOLDER, help="the folder to write (default: %(default)s)")
    arguments = parser.parse_args()
    write_dataset(arguments.output, arguments.count, arguments.seed)
    print(f"wrote {arguments.count} samples to {arguments.output}")
