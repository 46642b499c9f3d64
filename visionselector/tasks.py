"""A synthetic visual question-answering task whose answer needs several objects, more distinct objects than the
retention budget keeps, and no outlier to find them by.

"what colours are the squares": three small squares, each in its own colour, lie among four circles, four
triangles and two to four diamonds and crosses, every shape coloured (colours repeat across shapes, so colour alone
does not find the squares). The answer lists the squares' three colours in rainbow order ("red yellow blue"), so it
is right only when all three squares reach the language model.

Every shape is drawn inside one cell of the 7 x 7 grid of merged 28 x 28 px visual tokens (the processor's
196 x 196 px), so each object is exactly one token: the three squares fit in what retention 0.1 keeps (4 of 49
tokens), but the 13-15 coloured objects do not fit even in what retention 0.2 keeps (9). A selector that spreads
the budget over distinct tokens (`divprune`), or keeps the strongest ones (`norm`, `dart`: the squares are the
smallest shapes), spends it on the other shapes; only a selector that knows which tokens the question needs keeps
all three squares.

The same images can be asked about the circles and the triangles too (`make_sample(seed, shape="circle")`); the
embedded checkpoint's backbone learnt all three questions, so its visual features single out no one shape, as a
general model's would not. The demo, the benchmarks and the scorer ask about squares.

Pair questions ask for targets of two different kinds: "what colours are the square and the cross" (`shape=
"square+cross"`, any two of `PAIR_SHAPES` in that order) on an image of their own family, one object of each of the
five shapes in five distinct colours (`make_pair_sample`); the answer is the first shape's colour, then the second's.
A scorer must rank two unlike tokens above three distractors that differ from each other as much as from them; a
diversity rule (`divprune`) finds both, as both are outliers on the noise. They need a backbone trained on them
(`benchmarks/scorer_kinds.py` builds one); the embedded checkpoint knows only the three questions above.

Everything is seeded: `make_samples(n, seed)` gives the same samples on every machine, so anyone can make
held-out data (the embedded checkpoint was trained on seeds below `HELD_OUT_SEED`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

IMAGE_SIZE = 196
# Side in px of one merged visual token (14 px patches, 2 x 2 merged) and of one cell of the grid shapes sit in.
CELL = 28
# Colours, as RGB, in rainbow order: the order answers list them in. All far from grey and from each other.
COLOURS = {
    "red": (220, 30, 30),
    "orange": (250, 140, 20),
    "yellow": (240, 220, 30),
    "green": (30, 180, 40),
    "cyan": (30, 210, 220),
    "blue": (40, 60, 230),
    "purple": (150, 40, 190),
}
# The shapes questions ask about, how many of each every image holds (in distinct colours), and their names in
# questions; then the shapes that are only distractors, `OTHERS[0]` to `OTHERS[1]` of them per image, any colours.
COUNTS = {"square": 3, "circle": 4, "triangle": 4}
SHAPES = tuple(COUNTS)
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles"}
OTHER_SHAPES = ("diamond", "cross")
OTHERS = (2, 4)
# Side in px of each shape (inclusive range); the squares are the smallest, so they are not the strongest tokens.
SIDES = {"square": (14, 17), "circle": (20, 24), "triangle": (22, 26), "diamond": (22, 26), "cross": (20, 24)}


# Pair questions: any two of these shapes, joined by "+" in this order ("square+cross"); their images hold one of each.
PAIR_SHAPES = SHAPES + OTHER_SHAPES
PAIRS = tuple(f"{first}+{second}" for i, first in enumerate(PAIR_SHAPES) for second in PAIR_SHAPES[i + 1 :])
# The words pair questions add to `WORDS` (a tokenizer for them: `tiny.tiny_processor(words=...)` with `PAIR_WORDS`).
PAIR_WORDS = ("and", "diamond", "cross")


def _pair(shape: str) -> tuple[str, str] | None:
    """`"square+cross"` -> ("square", "cross"); None for a single shape; a `ValueError` for anything else."""
    if shape in SHAPES:
        return None
    if shape not in PAIRS:
        raise ValueError(f"`shape` must be one of {SHAPES} or a pair of {PAIRS}, got {shape!r}.")
    first, second = shape.split("+")
    return first, second


def question(shape: str = "square") -> str:
    """The question about the shapes `shape` ("what colours are the squares"; a pair: "what colours are the square
    and the cross")."""
    pair = _pair(shape)
    if pair is not None:
        return f"what colours are the {pair[0]} and the {pair[1]}"
    return f"what colours are the {PLURALS[shape]}"


QUESTION = question("square")
# Every word the task's prompts and answers use, for the tokenizer.
WORDS = tuple(dict.fromkeys(word for shape in SHAPES for word in question(shape).split())) + tuple(COLOURS)
# The recipe trains on seeds from 0 up and validates on seeds from `VALIDATION_SEED` up; seeds from
# `HELD_OUT_SEED` up are never used while building the embedded checkpoint.
VALIDATION_SEED = 900_000
HELD_OUT_SEED = 1_000_000


@dataclass
class Sample:
    """One question about one image.

    Args:
        image (`PIL.Image.Image`): RGB, `IMAGE_SIZE` x `IMAGE_SIZE` px.
        question (`str`): the text of the question.
        answer (`str`): the colours of the asked shapes (keys of `COLOURS`), in rainbow order, space separated (a pair
            question: the first shape's colour, then the second's).
        boxes (`tuple[tuple[int, int, int, int], ...]`): the asked shapes' (left, top, right, bottom) in px,
            right/bottom exclusive, in the order of the answer's colours.
    """

    image: Image.Image
    question: str
    answer: str
    boxes: tuple[tuple[int, int, int, int], ...]

    def messages(self, with_answer: bool = False) -> list[dict]:
        """The chat messages of this sample (user turn with the image, and the assistant's answer if asked)."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.question}]}]
        if with_answer:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": self.answer}]})
        return messages

    @property
    def target_tokens(self) -> list[int]:
        """Ascending raster indices of the merged tokens the asked shapes cover (one per shape)."""
        return sorted({token for box in self.boxes for token in tokens_covered(box, grid_width=self.image.width // CELL)})


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, left: int, top: int, side: int, fill) -> None:
    """A filled shape in the `side` x `side` px box whose top-left corner is (left, top)."""
    right, bottom, middle = left + side - 1, top + side - 1, side // 2
    if shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif shape == "triangle":  # pointing up
        draw.polygon([(left, bottom), (right, bottom), (left + middle, top)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(left + middle, top), (right, top + middle), (left + middle, bottom), (left, top + middle)], fill=fill)
    elif shape == "cross":  # a plus sign with arms a third of the side wide
        arm = side // 3
        draw.rectangle((left + arm, top, right - arm, bottom), fill=fill)
        draw.rectangle((left, top + arm, right, bottom - arm), fill=fill)
    else:
        raise ValueError(f"Unknown shape {shape!r}; accepted: {SHAPES + OTHER_SHAPES}.")


def make_sample(seed: int, shape: str = "square", size: int = IMAGE_SIZE, **pair_options) -> Sample:
    """The sample of `seed`: a question about the `shape`s of an image of coloured shapes.

    On grey noise, `COUNTS[name]` shapes of each of `SHAPES` (the colours of one shape distinct, colours repeating
    across shapes) and `OTHERS[0]` to `OTHERS[1]` distractors of `OTHER_SHAPES` (any colours), each in its own
    `CELL` x `CELL` px cell at a random offset, so that each object lies inside exactly one merged visual token. The
    image depends on `seed` only, not on `shape`.
    """
    if size % CELL or size < 5 * CELL:
        raise ValueError(f"`size` must be a multiple of {CELL} px of at least {5 * CELL}, got {size}.")
    if _pair(shape) is not None:
        return make_pair_sample(seed, shape, size, **pair_options)
    if pair_options:
        raise ValueError(f"{sorted(pair_options)} apply to pair questions only, not to {shape!r}.")
    rng = np.random.default_rng(seed)
    background = rng.integers(100, 140, size=(size, size, 1), dtype=np.uint8).repeat(3, axis=2)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    names = list(COLOURS)
    # (shape, colour) of every object: distinct colours within each asked-about shape, any for the distractors
    objects = [(name, names[int(i)]) for name, count in COUNTS.items() for i in rng.choice(len(names), size=count, replace=False)]
    others = int(rng.integers(OTHERS[0], OTHERS[1] + 1))
    objects += [(OTHER_SHAPES[int(rng.integers(len(OTHER_SHAPES)))], names[int(rng.integers(len(names)))]) for _ in range(others)]
    grid = size // CELL
    cells = rng.choice(grid * grid, size=len(objects), replace=False)
    boxes = {}
    for (name, colour), cell in zip(objects, cells):
        side = int(rng.integers(SIDES[name][0], SIDES[name][1] + 1))
        offset_x, offset_y = (int(v) for v in rng.integers(0, CELL - side + 1, size=2))
        left, top = int(cell) % grid * CELL + offset_x, int(cell) // grid * CELL + offset_y
        _draw_shape(draw, name, left, top, side, COLOURS[colour])
        if name == shape:
            boxes[colour] = (left, top, left + side, top + side)
    colours = [name for name in names if name in boxes]  # rainbow order
    return Sample(image=image, question=question(shape), answer=" ".join(colours), boxes=tuple(boxes[c] for c in colours))


def make_pair_sample(seed: int, shape: str = "square+cross", size: int = IMAGE_SIZE, distractors: int = 3) -> Sample:
    """The pair sample of `seed`: "what colours are the A and the B" about an image of the pair family.

    On grey noise (as `make_sample`), one object of each of `PAIR_SHAPES` in five distinct colours, each in its own
    `CELL` x `CELL` px cell at a random offset. The answer is A's colour, then B's. The image depends on `seed`
    only, not on the pair asked; a pair image of `seed` is not the single-shape image of `seed`. With `distractors`
    below 3, only that many of the three other shapes are drawn (chosen at random after everything else, so the
    objects drawn are where the full image has them).
    """
    if size % CELL or size < 5 * CELL:
        raise ValueError(f"`size` must be a multiple of {CELL} px of at least {5 * CELL}, got {size}.")
    first, second = _pair(shape) or (None, None)
    if first is None:
        raise ValueError(f"`shape` must be a pair of {PAIRS}, got {shape!r}.")
    if isinstance(distractors, bool) or distractors not in range(len(PAIR_SHAPES) - 1):
        raise ValueError(f"`distractors` must be an integer in [0, {len(PAIR_SHAPES) - 2}], got {distractors!r}.")
    # a stream of its own, so that the pair family shares no draws with the single-shape images of the same seed
    rng = np.random.default_rng([seed, 2])
    background = rng.integers(100, 140, size=(size, size, 1), dtype=np.uint8).repeat(3, axis=2)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    names = list(COLOURS)
    colours = [names[int(i)] for i in rng.choice(len(names), size=len(PAIR_SHAPES), replace=False)]
    grid = size // CELL
    cells = rng.choice(grid * grid, size=len(PAIR_SHAPES), replace=False)
    objects = {}
    for name, colour, cell in zip(PAIR_SHAPES, colours, cells):
        side = int(rng.integers(SIDES[name][0], SIDES[name][1] + 1))
        offset_x, offset_y = (int(v) for v in rng.integers(0, CELL - side + 1, size=2))
        left, top = int(cell) % grid * CELL + offset_x, int(cell) // grid * CELL + offset_y
        objects[name] = (colour, left, top, side)
    others = [name for name in PAIR_SHAPES if name not in (first, second)]
    if distractors < len(others):
        dropped = {others[int(i)] for i in rng.choice(len(others), size=len(others) - distractors, replace=False)}
        objects = {name: value for name, value in objects.items() if name not in dropped}
    for name, (colour, left, top, side) in objects.items():
        _draw_shape(draw, name, left, top, side, COLOURS[colour])
    boxes = {name: (left, top, left + side, top + side) for name, (_, left, top, side) in objects.items()}
    return Sample(
        image=image,
        question=question(shape),
        answer=f"{objects[first][0]} {objects[second][0]}",
        boxes=(boxes[first], boxes[second]),
    )


def make_samples(count: int, seed: int = HELD_OUT_SEED, **kwargs) -> list[Sample]:
    """`count` samples with the consecutive seeds `seed`, `seed + 1`, ...; the default seeds are held out.

    `kwargs` go to `make_sample` (`shape`, `size`).
    """
    if count < 0:
        raise ValueError(f"`count` must be >= 0, got {count}.")
    return [make_sample(seed + i, **kwargs) for i in range(count)]


def task_inputs(processor, samples: list[Sample], with_answers: bool = False):
    """Processor inputs for a batch of samples, and the answers' token ids.

    Returns `(inputs, answer_ids)`. `answer_ids` (`torch.LongTensor` of shape `(B, M)`) holds each sample's answer
    tokens followed by the end-of-turn token, right-aligned and left-padded with -100 to the longest (M tokens).
    Without answers, `inputs` is the prompt up to the assistant turn, so the next tokens are the answer. With
    answers, each prompt is followed by its answer and the end-of-turn token, and `inputs["labels"]` (`(B, L)`) is
    -100 everywhere but there: `answer_accuracy` scores these teacher-forced, in one forward pass.
    """
    tokenizer = processor.tokenizer
    if with_answers and tokenizer.padding_side != "left":
        raise ValueError("`task_inputs` with answers needs a tokenizer that pads on the left.")
    prompts = [processor.apply_chat_template(sample.messages(), add_generation_prompt=True) for sample in samples]
    answers = [tokenizer.convert_tokens_to_ids(sample.answer.split()) + [tokenizer.eos_token_id] for sample in samples]
    if any(tokenizer.unk_token_id in ids for ids in answers):
        raise ValueError(f"The tokenizer has no token for some of the answers {sorted({s.answer for s in samples})}.")
    longest = max((len(ids) for ids in answers), default=0)
    answer_ids = torch.tensor([[-100] * (longest - len(ids)) + ids for ids in answers], dtype=torch.long)
    suffix = [f"{sample.answer}{tokenizer.eos_token}" if with_answers else "" for sample in samples]
    inputs = processor(
        text=[prompt + end for prompt, end in zip(prompts, suffix)],
        images=[sample.image for sample in samples],
        return_tensors="pt",
        padding=True,
    )
    if with_answers:
        # Each row ends with its answer and the end-of-turn token (padding is on the left).
        tail = inputs["input_ids"][:, -longest:]
        answered = answer_ids != -100
        if not torch.equal(tail[answered], answer_ids[answered]):
            raise ValueError("The tokenized prompts do not end with their answers; is the chat template the task's?")
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, -longest:] = answer_ids
        inputs["labels"] = labels
    return inputs, answer_ids


@torch.no_grad()
def answer_accuracy(model, batches, **forward_kwargs) -> float:
    """Share of samples whose whole answer is right: exact match, every answer token and the end of turn.

    `batches` are `task_inputs(processor, samples, with_answers=...)` pairs. With answers (the fast way): one
    teacher-forced forward pass per batch, and a sample counts when the argmax at every answer position is the
    answer's token; that is exactly when greedy generation after the prompt writes the answer and stops. Without
    answers: greedy generation (`model.generate`) of as many tokens as the longest answer, compared with the answer.
    Both give the same count. `forward_kwargs` go to the model (`retention_ratio`, `selector`, ...); the random
    selector draws from torch's global generator: seed it first for a fixed draw.
    """
    correct = total = 0
    for inputs, answer_ids in batches:
        width = answer_ids.shape[1]
        if "labels" in inputs:
            inputs = {key: value for key, value in inputs.items() if key != "labels"}
            # the last `width + 1` positions; position t predicts token t + 1, so drop the prediction after the end
            predicted = model(**inputs, logits_to_keep=width + 1, **forward_kwargs).logits[:, :-1].argmax(-1).cpu()
        else:
            output = model.generate(**inputs, max_new_tokens=width, do_sample=False, **forward_kwargs)
            predicted = output[:, inputs["input_ids"].shape[1] :].cpu()  # (B, <= width): generation may stop early
            predicted = torch.nn.functional.pad(predicted, (0, width - predicted.shape[1]), value=-1)
            # right-align each row's prediction with its answer: a row whose answer has m tokens is judged on its
            # first m generated tokens
            lengths = (answer_ids != -100).sum(-1)
            predicted = torch.stack([row.roll(int(width - length)) for row, length in zip(predicted, lengths)])
        right = (predicted == answer_ids) | (answer_ids == -100)  # (B, M)
        correct += int(right.all(-1).sum())
        total += len(answer_ids)
    return correct / total


def conversational(sample: Sample) -> dict:
    """The sample as a TRL conversational prompt-completion example: `prompt`, `completion` and `images`."""
    prompt, completion = sample.messages(with_answer=True)
    return {"prompt": [prompt], "completion": [completion], "images": [sample.image]}


def task_dataset(count: int, seed: int = 0, **kwargs):
    """A `datasets.Dataset` of the `count` samples with seeds `seed`, `seed + 1`, ..., in `conversational` form.

    Only the seeds are stored; each example is drawn when it is read (`with_transform`), so a long run costs no
    memory. Trainers must keep the `seed` column (`remove_unused_columns=False`). `kwargs` go to `make_sample`.
    """
    import datasets

    if count < 0:
        raise ValueError(f"`count` must be >= 0, got {count}.")

    def draw(batch: dict) -> dict:
        examples = [conversational(make_sample(seed_, **kwargs)) for seed_ in batch["seed"]]
        return {key: [example[key] for example in examples] for key in ("prompt", "completion", "images")}

    return datasets.Dataset.from_dict({"seed": list(range(seed, seed + count))}).with_transform(draw)


def tokens_covered(box: tuple[int, int, int, int], token_size: int = CELL, grid_width: int = IMAGE_SIZE // CELL) -> list[int]:
    """Raster indices of the merged tokens (of `token_size` px) that the box (left, top, right, bottom) touches."""
    left, top, right, bottom = box
    columns = range(left // token_size, (right - 1) // token_size + 1)
    rows = range(top // token_size, (bottom - 1) // token_size + 1)
    return [row * grid_width + column for row in rows for column in columns]


__all__ = [
    "CELL",
    "COLOURS",
    "HELD_OUT_SEED",
    "IMAGE_SIZE",
    "COUNTS",
    "OTHERS",
    "OTHER_SHAPES",
    "PAIRS",
    "PAIR_SHAPES",
    "PAIR_WORDS",
    "PLURALS",
    "QUESTION",
    "SHAPES",
    "SIDES",
    "VALIDATION_SEED",
    "WORDS",
    "Sample",
    "answer_accuracy",
    "conversational",
    "make_pair_sample",
    "make_sample",
    "make_samples",
    "question",
    "task_dataset",
    "task_inputs",
    "tokens_covered",
]
