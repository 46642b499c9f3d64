"""A synthetic visual question-answering task whose answer sits in a few visual tokens among look-alikes.

"what is the colour of the square": one small coloured square lies at a random place among coloured triangles of
the same size and many grey squares, circles and triangles. Every colour in the image is on exactly two shapes
(the square's colour on the square and on one triangle, two to three other colours on two triangles each), so
neither colour nor colour frequency gives the answer away: only the shape does. At the processor's 224 x 224 px
(an 8 x 8 grid of merged 28 x 28 px tokens) the square covers one to four of the 64 merged tokens, so a model that
keeps 10% of the tokens at random misses it most of the time, and a selector must know which coloured token is the
square to keep the answer.

Everything is seeded: `make_samples(n, seed)` gives the same samples on every machine, so anyone can make
held-out data (the embedded checkpoint was trained on seeds below `HELD_OUT_SEED`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

IMAGE_SIZE = 224
QUESTION = "what is the colour of the square"
# Answer colours, as RGB; all far from grey and from each other.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 60, 230),
    "yellow": (240, 220, 30),
    "purple": (150, 40, 190),
    "orange": (250, 140, 20),
    "cyan": (30, 210, 220),
}
# Every word the task's prompts and answers use, for the tokenizer.
WORDS = tuple(QUESTION.split()) + tuple(COLOURS)
# The recipe trains on seeds from 0 up and validates on seeds from `VALIDATION_SEED` up; seeds from
# `HELD_OUT_SEED` up are never used while building the embedded checkpoint.
VALIDATION_SEED = 900_000
HELD_OUT_SEED = 1_000_000
# Colours other than the answer's per image (two coloured triangles each), and the side in px of every coloured
# shape, the square included.
PAIRS = (2, 3)
SIDES = (16, 24)


@dataclass
class Sample:
    """One question about one image.

    Args:
        image (`PIL.Image.Image`): RGB, `IMAGE_SIZE` x `IMAGE_SIZE` px.
        question (`str`): the text of the question.
        answer (`str`): one word, a key of `COLOURS`.
        box (`tuple[int, int, int, int]`): the square's (left, top, right, bottom) in px, right/bottom exclusive.
    """

    image: Image.Image
    question: str
    answer: str
    box: tuple[int, int, int, int]

    def messages(self, with_answer: bool = False) -> list[dict]:
        """The chat messages of this sample (user turn with the image, and the assistant's answer if asked)."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.question}]}]
        if with_answer:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": self.answer}]})
        return messages


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, left: int, top: int, side: int, fill) -> None:
    """A filled square, circle or (upward) triangle in the `side` x `side` px box at (left, top)."""
    box = (left, top, left + side - 1, top + side - 1)
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([(left, top + side - 1), (left + side - 1, top + side - 1), (left + side // 2, top)], fill=fill)


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, count: int, size: int) -> None:
    """`count` grey squares, circles and triangles of 10-26 px at random places (they may overlap)."""
    for _ in range(count):
        side = int(rng.integers(10, 27))
        left, top = (int(v) for v in rng.integers(0, size - side, size=2))
        grey = int(rng.integers(60, 200))
        shape = ("square", "circle", "triangle")[int(rng.integers(3))]
        _draw_shape(draw, shape, left, top, side, (grey, grey, grey))


def _place(rng: np.random.Generator, sides: list[int], size: int, gap: int = 3) -> list[tuple[int, int]]:
    """Top-left corners for squares of `sides` px that do not overlap (at least `gap` px apart), drawn in turn."""
    corners: list[tuple[int, int]] = []
    for side in sides:
        for _ in range(10_000):
            left, top = (int(v) for v in rng.integers(0, size - side, size=2))
            if all(
                left + side + gap <= other_left or other_left + other_side + gap <= left
                or top + side + gap <= other_top or other_top + other_side + gap <= top
                for (other_left, other_top), other_side in zip(corners, sides)
            ):
                corners.append((left, top))
                break
        else:
            raise ValueError(f"Cannot place {len(sides)} shapes of {max(sides)} px or less apart on {size} x {size} px.")
    return corners


def make_sample(seed: int, size: int = IMAGE_SIZE, clutter: tuple[int, int] = (25, 40), pairs: tuple[int, int] = PAIRS) -> Sample:
    """The sample of `seed`: a coloured square among coloured triangles of the same size and grey shapes.

    On grey noise, first `clutter[0]`..`clutter[1]` grey shapes of 10-26 px (overlapping freely); then one triangle
    in the square's colour and two triangles in each of `pairs[0]`..`pairs[1]` other colours; then the square. The
    coloured shapes are `SIDES` px wide and at least 3 px apart, so none hides another.
    """
    rng = np.random.default_rng(seed)
    background = rng.integers(100, 140, size=(size, size, 1), dtype=np.uint8).repeat(3, axis=2)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    _draw_clutter(draw, rng, int(rng.integers(clutter[0], clutter[1] + 1)), size)
    names = list(COLOURS)
    answer = names[int(rng.integers(len(names)))]
    # Every colour on exactly two shapes, so the most frequent colour says nothing about the answer.
    others = [name for name in names if name != answer]
    count = int(rng.integers(pairs[0], pairs[1] + 1))
    colours = [answer] + [others[int(i)] for i in rng.choice(len(others), size=count, replace=False) for _ in range(2)]
    sides = [int(v) for v in rng.integers(SIDES[0], SIDES[1] + 1, size=len(colours) + 1)]
    corners = _place(rng, sides, size)  # the square's first
    for (left, top), side, colour in zip(corners[1:], sides[1:], colours):
        _draw_shape(draw, "triangle", left, top, side, COLOURS[colour])
    (left, top), side = corners[0], sides[0]
    _draw_shape(draw, "square", left, top, side, COLOURS[answer])
    return Sample(image=image, question=QUESTION, answer=answer, box=(left, top, left + side, top + side))


def make_samples(count: int, seed: int = HELD_OUT_SEED, **kwargs) -> list[Sample]:
    """`count` samples with the consecutive seeds `seed`, `seed + 1`, ...; the default seeds are held out."""
    if count < 0:
        raise ValueError(f"`count` must be >= 0, got {count}.")
    return [make_sample(seed + i, **kwargs) for i in range(count)]


def task_inputs(processor, samples: list[Sample], with_answers: bool = False):
    """Processor inputs for a batch of samples, and the answers' token ids.

    Returns `(inputs, answer_ids)`. Without answers, `inputs` is the prompt up to the assistant turn, so the next
    token is the answer. With answers, each prompt is followed by its answer and the end-of-turn token, and
    `inputs["labels"]` (`(B, L)`) is -100 everywhere but there. `answer_ids` (`torch.LongTensor` of shape
    `(B,)`) is the token id of each sample's answer word.
    """
    tokenizer = processor.tokenizer
    prompts = [processor.apply_chat_template(sample.messages(), add_generation_prompt=True) for sample in samples]
    answer_ids = [tokenizer.convert_tokens_to_ids(sample.answer) for sample in samples]
    if tokenizer.unk_token_id in answer_ids:
        raise ValueError(f"The tokenizer has no token for some of the answers {sorted({s.answer for s in samples})}.")
    suffix = [f"{sample.answer}{tokenizer.eos_token}" if with_answers else "" for sample in samples]
    inputs = processor(
        text=[prompt + end for prompt, end in zip(prompts, suffix)],
        images=[sample.image for sample in samples],
        return_tensors="pt",
        padding=True,
    )
    if with_answers:
        # The answer word and the end-of-turn token are the last two tokens of every row (padding is on the left).
        if tokenizer.padding_side != "left":
            raise ValueError("`task_inputs` with answers needs a tokenizer that pads on the left.")
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, -2:] = inputs["input_ids"][:, -2:]
        inputs["labels"] = labels
    return inputs, torch.tensor(answer_ids)


@torch.no_grad()
def answer_accuracy(model, batches, **forward_kwargs) -> float:
    """Share of samples whose greedy next token after the prompt is the answer.

    `batches` are `task_inputs(processor, samples)` pairs; `forward_kwargs` go to the model (`retention_ratio`,
    `selector`, ...). The random selector draws from torch's global generator: seed it first for a fixed draw.
    """
    correct = total = 0
    for inputs, answer_ids in batches:
        logits = model(**inputs, logits_to_keep=1, **forward_kwargs).logits[:, -1]
        correct += int((logits.argmax(-1).cpu() == answer_ids).sum())
        total += len(answer_ids)
    return correct / total


def conversational(sample: Sample) -> dict:
    """The sample as a TRL conversational prompt-completion example: `prompt`, `completion` and `images`."""
    prompt, completion = sample.messages(with_answer=True)
    return {"prompt": [prompt], "completion": [completion], "images": [sample.image]}


def task_dataset(count: int, seed: int = 0, **kwargs):
    """A `datasets.Dataset` of the `count` samples with seeds `seed`, `seed + 1`, ..., in `conversational` form.

    Only the seeds are stored; each example is drawn when it is read (`with_transform`), so a long run costs no
    memory. Trainers must keep the `seed` column (`remove_unused_columns=False`).
    """
    import datasets

    if count < 0:
        raise ValueError(f"`count` must be >= 0, got {count}.")

    def draw(batch: dict) -> dict:
        examples = [conversational(make_sample(seed_, **kwargs)) for seed_ in batch["seed"]]
        return {key: [example[key] for example in examples] for key in ("prompt", "completion", "images")}

    return datasets.Dataset.from_dict({"seed": list(range(seed, seed + count))}).with_transform(draw)


def tokens_covered(box: tuple[int, int, int, int], token_size: int = 28, grid_width: int = IMAGE_SIZE // 28) -> list[int]:
    """Raster indices of the merged tokens (of `token_size` px) that the box (left, top, right, bottom) touches."""
    left, top, right, bottom = box
    columns = range(left // token_size, (right - 1) // token_size + 1)
    rows = range(top // token_size, (bottom - 1) // token_size + 1)
    return [row * grid_width + column for row in rows for column in columns]


__all__ = ["COLOURS", "HELD_OUT_SEED", "PAIRS", "SIDES", "VALIDATION_SEED", "task_inputs", "IMAGE_SIZE", "QUESTION", "WORDS", "Sample", "conversational", "make_sample", "task_dataset", "make_samples", "tokens_covered"]
