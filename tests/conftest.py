"""Shared fixtures: tiny random Qwen2.5-VL backbones, an offline processor, and input builders.

Set before transformers is imported: no network, and remote code cached in a temporary folder.
"""

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="visionselector-hf-home-"))
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="visionselector-hf-modules-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str, path: Path):
    """A script of the repository that is no package (benchmarks/, hub_configs/) imported as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the module runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def processor():
    return tiny_processor(min_pixels=28 * 28, max_pixels=112 * 112)


@pytest.fixture(scope="session")
def stock_model():
    """A tiny random stock Qwen2.5-VL (sdpa). Tests must not change its weights."""
    return tiny_qwen2_5_vl(seed=0)


@pytest.fixture(scope="session")
def model(stock_model):
    """A VisionSelector sharing `stock_model`'s tensors, with a random scorer (seeded)."""
    from modeling_visionselector import VisionSelectorForConditionalGeneration

    torch.manual_seed(1)
    return VisionSelectorForConditionalGeneration.from_backbone(stock_model).eval()


def random_image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def random_video(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


WORDS = "what is the colour of square describe image video left right top bottom".split()

# Batches the equivalence tests run on: each sample a list of ("image", height, width) / ("video", frames, height, width).
SCENARIOS = {
    "images_of_different_sizes": [[("image", 56, 84)], [("image", 112, 56)], [("image", 28, 28)]],
    "several_images_per_sample": [[("image", 56, 56), ("image", 84, 56)], [("image", 112, 112)]],
    "video": [[("video", 4, 56, 56)], [("video", 2, 84, 56)]],
    "video_and_images": [[("image", 56, 84), ("video", 4, 56, 84)], [("video", 4, 56, 56), ("image", 28, 56)]],
    "a_sample_without_images": [[("image", 84, 84)], []],
}


def new_tokens(sequences, prompt_length, eos_token_id):
    """Generated tokens of each row, cut after the first eos (generate pads finished rows)."""
    rows = []
    for row in sequences[:, prompt_length:].tolist():
        rows.append(row[: row.index(eos_token_id) + 1] if eos_token_id in row else row)
    return rows


def build_inputs(processor, samples, padding_side="left", seed=0):
    """Processor inputs for a batch.

    `samples` is a list of samples, each a list of visual items: ("image", height, width) or
    ("video", frames, height, width); every sample gets a random short question after its items.
    """
    rng = np.random.default_rng(seed)
    texts, images, videos = [], [], []
    for items in samples:
        content = []
        for kind, *size in items:
            content.append({"type": kind})
            (images if kind == "image" else videos).append(
                random_image(rng, *size) if kind == "image" else random_video(rng, *size)
            )
        question = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 6))))
        content.append({"type": "text", "text": question})
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))
    processor.tokenizer.padding_side = padding_side
    try:
        return processor(
            text=texts,
            images=images or None,
            videos=videos or None,
            return_tensors="pt",
            padding=True,
        )
    finally:
        processor.tokenizer.padding_side = "left"


@pytest.fixture
def make_inputs(processor):
    def make(samples, padding_side="left", seed=0):
        return build_inputs(processor, samples, padding_side, seed)

    return make
