"""The synthetic task: seeded, the answer is visible in a few tokens, colour alone does not find it, and random
selection mostly misses it."""

import numpy as np
import pytest

from visionselector.tasks import (
    COLOURS,
    IMAGE_SIZE,
    PAIRS,
    QUESTION,
    make_sample,
    make_samples,
    task_dataset,
    task_inputs,
    tokens_covered,
)
from visionselector.tiny import tiny_processor


@pytest.fixture(scope="module")
def task_processor():
    return tiny_processor(min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=IMAGE_SIZE * IMAGE_SIZE)


def test_same_seed_same_sample_and_seeds_differ():
    first, again, other = make_sample(7), make_sample(7), make_sample(8)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert (first.answer, first.box) == (again.answer, again.box)
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))


def test_square_is_drawn_in_its_colour_and_covers_a_few_tokens():
    for sample in make_samples(50, seed=123):
        assert sample.question == QUESTION and sample.answer in COLOURS
        assert sample.image.size == (IMAGE_SIZE, IMAGE_SIZE) and sample.image.mode == "RGB"
        left, top, right, bottom = sample.box
        assert 0 <= left < right <= IMAGE_SIZE and 0 <= top < bottom <= IMAGE_SIZE
        patch = np.asarray(sample.image)[top:bottom, left:right]
        assert (patch == np.array(COLOURS[sample.answer], dtype=np.uint8)).all()
        assert 1 <= len(tokens_covered(sample.box)) <= 4


def test_square_colour_is_also_on_a_triangle_and_other_colours_come_in_pairs():
    # Colour alone does not point at the square: its colour is on a triangle too, and 2-3 other colours are there.
    for sample in make_samples(50, seed=321):
        pixels = np.asarray(sample.image).copy()
        left, top, right, bottom = sample.box
        pixels[top:bottom, left:right] = 0
        present = [name for name, rgb in COLOURS.items() if (pixels == np.array(rgb, dtype=np.uint8)).all(-1).any()]
        assert sample.answer in present
        assert PAIRS[0] + 1 <= len(present) <= PAIRS[1] + 1


def test_random_tenth_of_tokens_usually_misses_the_square():
    # 10% of 64 merged tokens = 6: the chance that a random draw keeps any token of the square.
    rng = np.random.default_rng(0)
    hits = [
        bool(set(rng.choice(64, size=6, replace=False).tolist()) & set(tokens_covered(sample.box)))
        for sample in make_samples(300, seed=5_000)
    ]
    assert np.mean(hits) < 0.3


def test_answers_are_balanced():
    answers = [sample.answer for sample in make_samples(700, seed=0)]
    counts = np.array([answers.count(colour) for colour in COLOURS])
    assert counts.min() > 60  # 100 expected each


def test_tokens_covered_in_raster_order():
    assert tokens_covered((0, 0, 28, 28)) == [0]
    assert tokens_covered((20, 20, 36, 36)) == [0, 1, 8, 9]
    assert tokens_covered((200, 200, 224, 224)) == [63]


def test_negative_count_is_rejected():
    with pytest.raises(ValueError, match="count"):
        make_samples(-1)
    with pytest.raises(ValueError, match="count"):
        task_dataset(-1)


def test_task_inputs_prompt_only(task_processor):
    samples = make_samples(3, seed=11)
    inputs, answer_ids = task_inputs(task_processor, samples)
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]] * 3  # 64 merged tokens each
    assert int((inputs["input_ids"] == 5).sum()) == 3 * 64
    assert task_processor.tokenizer.convert_ids_to_tokens(answer_ids.tolist()) == [s.answer for s in samples]
    assert "labels" not in inputs
    assert task_processor.tokenizer.convert_ids_to_tokens(int(inputs["input_ids"][0, -1])) == "assistant"


def test_task_inputs_labels_only_on_the_answer(task_processor):
    samples = make_samples(2, seed=11)
    inputs, answer_ids = task_inputs(task_processor, samples, with_answers=True)
    labels = inputs["labels"]
    assert (labels[:, :-2] == -100).all()
    assert labels[:, -2].tolist() == answer_ids.tolist()
    assert (labels[:, -1] == task_processor.tokenizer.eos_token_id).all()


def test_task_dataset_draws_conversational_examples():
    dataset = task_dataset(5, seed=40)
    assert len(dataset) == 5
    row = dataset[2]
    sample = make_sample(42)
    assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
    assert row["completion"][0]["content"][0]["text"] == sample.answer
    assert np.array_equal(np.asarray(row["images"][0]), np.asarray(sample.image))
