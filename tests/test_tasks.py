"""The synthetic task: seeded, one token per object, the answer needs all three squares, colour alone does not find
them, and the budget of retention 0.1 holds the squares but not the other shapes."""

import numpy as np
import pytest
import torch

from visionselector.tasks import (
    CELL,
    COLOURS,
    IMAGE_SIZE,
    COUNTS,
    OTHERS,
    QUESTION,
    SHAPES,
    WORDS,
    answer_accuracy,
    make_sample,
    make_samples,
    question,
    task_dataset,
    task_inputs,
    tokens_covered,
)
from visionselector.tiny import tiny_processor


@pytest.fixture(scope="module")
def task_processor():
    return tiny_processor(min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=IMAGE_SIZE * IMAGE_SIZE)


def _coloured_cells(image) -> dict[int, set[str]]:
    """Per grid cell, the answer colours drawn in it."""
    pixels = np.asarray(image)
    cells = {}
    for name, rgb in COLOURS.items():
        ys, xs = np.nonzero((pixels == np.array(rgb, dtype=np.uint8)).all(-1))
        for cell in set((ys // CELL * (IMAGE_SIZE // CELL) + xs // CELL).tolist()):
            cells.setdefault(cell, set()).add(name)
    return cells


def test_same_seed_same_sample_and_seeds_differ():
    first, again, other = make_sample(7), make_sample(7), make_sample(8)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert (first.answer, first.boxes) == (again.answer, again.boxes)
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))


def test_the_question_changes_the_answer_not_the_image():
    samples = {shape: make_sample(9, shape=shape) for shape in SHAPES}
    assert [sample.question for sample in samples.values()] == [question(shape) for shape in SHAPES]
    assert samples["square"].question == QUESTION
    images = [np.asarray(sample.image) for sample in samples.values()]
    assert all(np.array_equal(images[0], image) for image in images[1:])
    assert len({sample.boxes for sample in samples.values()}) == len(SHAPES)


def test_answer_is_the_squares_colours_in_rainbow_order_each_square_in_one_token():
    rainbow = list(COLOURS)
    for sample in make_samples(50, seed=123):
        colours = sample.answer.split()
        assert len(colours) == len(set(colours)) == COUNTS["square"] == len(sample.boxes)
        assert colours == sorted(colours, key=rainbow.index)
        assert sample.image.size == (IMAGE_SIZE, IMAGE_SIZE) and sample.image.mode == "RGB"
        for colour, box in zip(colours, sample.boxes):
            left, top, right, bottom = box
            assert 0 <= left < right <= IMAGE_SIZE and 0 <= top < bottom <= IMAGE_SIZE
            assert (np.asarray(sample.image)[top:bottom, left:right] == np.array(COLOURS[colour], dtype=np.uint8)).all()
            assert len(tokens_covered(box)) == 1  # snapped into one merged token
        assert len(sample.target_tokens) == COUNTS["square"]


def test_every_object_is_coloured_in_its_own_token_and_colour_alone_does_not_find_the_squares():
    counts, shared = [], 0
    for sample in make_samples(100, seed=321):
        cells = _coloured_cells(sample.image)
        assert all(len(colours) == 1 for colours in cells.values())  # one object per token
        counts.append(len(cells))
        squares = set(sample.target_tokens)
        assert squares <= set(cells)
        # a square's colour is also on another shape in most images
        shared += any(cells[token] & set().union(*(cells[c] for c in cells if c not in squares)) for token in squares)
    asked = sum(COUNTS.values())
    assert set(counts) == set(range(asked + OTHERS[0], asked + OTHERS[1] + 1))  # 13-15 objects
    assert shared >= 90
    # retention 0.1 keeps 4 of the 49 tokens and 0.2 keeps 9: room for the 3 squares, not for the 13-15 objects
    tokens = (IMAGE_SIZE // CELL) ** 2
    assert COUNTS["square"] <= max(1, int(0.1 * tokens)) < max(1, int(0.2 * tokens)) < min(counts)


def test_random_tenth_of_tokens_almost_never_keeps_all_squares():
    rng = np.random.default_rng(0)
    tokens = (IMAGE_SIZE // CELL) ** 2
    hits = [set(sample.target_tokens) <= set(rng.choice(tokens, size=4, replace=False).tolist()) for sample in make_samples(300, seed=5_000)]
    assert np.mean(hits) < 0.01


def test_answers_are_balanced():
    colours = [colour for sample in make_samples(700, seed=0) for colour in sample.answer.split()]
    counts = np.array([colours.count(colour) for colour in COLOURS])
    assert counts.min() > 220  # 300 expected each
    assert len({sample.answer for sample in make_samples(700, seed=0)}) == 35  # every 3 of the 7 colours


def test_tokens_covered_in_raster_order():
    assert tokens_covered((0, 0, 28, 28)) == [0]
    assert tokens_covered((20, 20, 36, 36)) == [0, 1, 7, 8]
    assert tokens_covered((168, 168, 196, 196)) == [48]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="count"):
        make_samples(-1)
    with pytest.raises(ValueError, match="count"):
        task_dataset(-1)
    with pytest.raises(ValueError, match="shape"):
        make_sample(0, shape="hexagon")
    with pytest.raises(ValueError, match="size"):
        make_sample(0, size=100)


def test_words_are_in_the_tiny_tokenizer(task_processor):
    ids = task_processor.tokenizer.convert_tokens_to_ids(list(WORDS))
    assert task_processor.tokenizer.unk_token_id not in ids


def test_task_inputs_prompt_only(task_processor):
    samples = make_samples(3, seed=11)
    inputs, answer_ids = task_inputs(task_processor, samples)
    assert inputs["image_grid_thw"].tolist() == [[1, 14, 14]] * 3  # 49 merged tokens each
    assert int((inputs["input_ids"] == 5).sum()) == 3 * 49
    tokens = [task_processor.tokenizer.convert_ids_to_tokens(row) for row in answer_ids.tolist()]
    assert tokens == [s.answer.split() + ["<|im_end|>"] for s in samples]
    assert "labels" not in inputs
    assert task_processor.tokenizer.convert_ids_to_tokens(int(inputs["input_ids"][0, -1])) == "assistant"


def test_task_inputs_labels_only_on_the_answer(task_processor):
    samples = make_samples(2, seed=11)
    inputs, answer_ids = task_inputs(task_processor, samples, with_answers=True)
    labels = inputs["labels"]
    width = answer_ids.shape[1]
    assert width == COUNTS["square"] + 1
    assert (labels[:, :-width] == -100).all()
    assert torch.equal(labels[:, -width:], answer_ids)
    assert (labels[:, -1] == task_processor.tokenizer.eos_token_id).all()


class _Echo(torch.nn.Module):
    """A fake model whose greedy prediction at each position is the next input token, except at the positions
    `offset` from the end of a row (`wrong`: row -> offset)."""

    def __init__(self, vocab: int, wrong: dict[int, int]):
        super().__init__()
        self.vocab, self.wrong = vocab, wrong  # row -> how many positions from the end to get wrong

    def forward(self, input_ids, logits_to_keep, **kwargs):
        following = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)  # the true next token
        for row, offset in self.wrong.items():
            following[row, -offset] = (following[row, -offset] + 1) % self.vocab
        logits = torch.nn.functional.one_hot(following, self.vocab).float()
        return type("Output", (), {"logits": logits[:, -logits_to_keep:]})()


def test_answer_accuracy_needs_every_answer_token(task_processor):
    samples = make_samples(4, seed=30)
    batch = task_inputs(task_processor, samples, with_answers=True)
    vocab = len(task_processor.tokenizer)
    assert answer_accuracy(_Echo(vocab, {}), [batch]) == 1.0
    # row 0: the last colour wrong; row 1: the end of turn; row 2: the first colour; row 3: only the prediction
    # after the end of turn, which is no part of the answer
    assert answer_accuracy(_Echo(vocab, {0: 3, 1: 2, 2: 5, 3: 1}), [batch]) == 0.25


def test_task_dataset_draws_conversational_examples():
    dataset = task_dataset(5, seed=40)
    assert len(dataset) == 5
    row = dataset[2]
    sample = make_sample(42)
    assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
    assert row["prompt"][0]["content"][1]["text"] == QUESTION
    assert row["completion"][0]["content"][0]["text"] == sample.answer
    assert np.array_equal(np.asarray(row["images"][0]), np.asarray(sample.image))
    circles = task_dataset(2, seed=40, shape="circle")[0]
    assert circles["prompt"][0]["content"][1]["text"] == question("circle")



class _Writer(torch.nn.Module):
    """A fake model whose `generate` appends fixed continuations to the prompts (a shorter one is padded)."""

    def __init__(self, continuations: list[list[int]]):
        super().__init__()
        self.continuations = continuations

    def generate(self, input_ids, max_new_tokens, **kwargs):
        width = max(len(c) for c in self.continuations)
        new = torch.tensor([c + [0] * (width - len(c)) for c in self.continuations])[:, :max_new_tokens]
        return torch.cat([input_ids, new], dim=1)


def test_answer_accuracy_by_generation_needs_every_answer_token(task_processor):
    samples = make_samples(4, seed=30)
    prompts, answer_ids = task_inputs(task_processor, samples)
    answers = [row.tolist() for row in answer_ids]  # 3 colours and the end of turn each
    eos = task_processor.tokenizer.eos_token_id
    continuations = [
        answers[0],  # right
        answers[1][:2] + [answers[1][0], eos],  # the last colour wrong
        answers[2][:3],  # stopped without the end of turn
        answers[3][:3] + [eos],  # right
    ]
    assert answer_accuracy(_Writer(continuations), [(prompts, answer_ids)]) == 0.5
    assert answer_accuracy(_Writer(answers), [(prompts, answer_ids)]) == 1.0


# ---------------------------------------------------------------------------------------------------- pair questions


def test_pair_question_asks_two_kinds_and_answers_their_colours_in_the_order_asked():
    from visionselector.tasks import PAIR_SHAPES, PAIRS

    assert len(PAIRS) == 10 and all(first != second for first, second in (pair.split("+") for pair in PAIRS))
    for seed in range(20):
        sample = make_sample(seed, shape="square+cross")
        assert sample.question == "what colours are the square and the cross"
        cells = _coloured_cells(sample.image)
        assert len(cells) == len(PAIR_SHAPES)  # one object of each of the five shapes, one token each
        assert len({colour for colours in cells.values() for colour in colours}) == len(PAIR_SHAPES)  # distinct colours
        assert len(sample.target_tokens) == 2
        assert [next(iter(cells[token])) for token in (tokens_covered(box)[0] for box in sample.boxes)] == sample.answer.split()
    swapped = make_sample(3, shape="circle+cross"), make_sample(3, shape="square+cross")
    assert np.array_equal(np.asarray(swapped[0].image), np.asarray(swapped[1].image))  # the image is the seed's


def test_pair_images_with_fewer_distractors_keep_the_objects_where_they_were():
    full = make_sample(11, shape="square+cross")
    assert np.array_equal(np.asarray(make_sample(11, shape="square+cross", distractors=3).image), np.asarray(full.image))
    for distractors in (0, 1, 2):
        sparse = make_sample(11, shape="square+cross", distractors=distractors)
        cells = _coloured_cells(sparse.image)
        assert len(cells) == 2 + distractors
        assert all(cells[cell] == colours for cell, colours in cells.items() if cell in _coloured_cells(full.image))
        assert (sparse.answer, sparse.boxes) == (full.answer, full.boxes)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(shape="square+square"), "pair"),
        (dict(shape="cross+square"), "pair"),  # pairs are named in PAIR_SHAPES order
        (dict(shape="square+cross", distractors=4), r"distractors.*\[0, 3\]"),
        (dict(shape="square+cross", distractors=-1), "distractors"),
        (dict(shape="square", distractors=1), "pair questions only"),
    ],
)
def test_bad_pair_arguments_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_sample(0, **kwargs)


def test_pair_words_complete_the_tokenizer():
    from visionselector.tasks import PAIR_WORDS, PAIRS
    from visionselector.tiny import DEFAULT_WORDS

    processor = tiny_processor(min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=IMAGE_SIZE * IMAGE_SIZE, words=[*DEFAULT_WORDS, *PAIR_WORDS])
    tokenizer = processor.tokenizer
    for pair in PAIRS:
        assert tokenizer.unk_token_id not in tokenizer(question(pair)).input_ids
    plain = tiny_processor(min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=IMAGE_SIZE * IMAGE_SIZE).tokenizer
    assert all(tokenizer.convert_tokens_to_ids(word) == plain.convert_tokens_to_ids(word) for word in DEFAULT_WORDS)
