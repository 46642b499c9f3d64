"""Training on bad data: what would train the scorer on nothing is said at the first step, an empty
dataset is refused, labels of the wrong length and unreadable images are clear `ValueError`s."""

import io
import warnings

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl
from visionselector_training import VisionSelectorSFTTrainer

from training_args import tiny_run_args


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def rows(n=4, answer=True, image=True):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        messages = [{"role": "user", "content": "what is the colour of the square"}]
        if answer:
            messages.append({"role": "assistant", "content": "red"})
        row = {"messages": messages}
        if image:
            row["images"] = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))]
        out.append(row)
    return out


def make_trainer(tmp_path, dataset, **overrides):
    return VisionSelectorSFTTrainer(
        tiny_qwen2_5_vl(), args=tiny_run_args(tmp_path, max_steps=1, **overrides), train_dataset=dataset,
        processing_class=tiny_processor(),
    )


def first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def test_an_empty_dataset_is_refused_with_a_message(tmp_path):
    with pytest.raises(ValueError, match="`train_dataset` is empty"):
        make_trainer(tmp_path, Dataset.from_list(rows()).select([]))


@pytest.mark.parametrize("cause", ["no assistant turn", "answers cut off by max_length"])
def test_no_supervised_token_is_said_at_the_first_step(tmp_path, cause):
    if cause == "no assistant turn":
        trainer = make_trainer(tmp_path, Dataset.from_list(rows(answer=False)))
    else:  # the placeholders are kept, the answers cut
        length = first_batch(make_trainer(tmp_path, Dataset.from_list(rows())))["input_ids"].shape[1]
        trainer = make_trainer(tmp_path, Dataset.from_list(rows()), max_length=length - 3)
    batch = first_batch(trainer)
    assert int((batch["labels"] != -100).sum()) == 0 and batch["pixel_values"] is not None
    with pytest.warns(UserWarning, match="no supervised token"):
        trainer.train()


def test_a_supervised_first_batch_gives_no_such_warning(tmp_path):
    trainer = make_trainer(tmp_path, Dataset.from_list(rows()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "no supervised token" in str(w.message) or "no image or video" in str(w.message)]


def test_text_only_data_is_said_at_the_first_step(tmp_path):
    trainer = make_trainer(tmp_path, Dataset.from_list(rows(image=False)))
    with pytest.warns(UserWarning, match="no image or video"):
        trainer.train()


@pytest.mark.parametrize("delta", [-1, 1])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_labels_of_the_wrong_length_are_a_value_error(tmp_path, delta, mode):
    trainer = make_trainer(tmp_path, Dataset.from_list(rows()))
    batch = first_batch(trainer)
    labels = batch["labels"]
    batch["labels"] = labels[:, :delta] if delta < 0 else torch.cat([labels, labels[:, :1]], 1)
    trainer.model.train(mode == "train")
    with pytest.raises(ValueError, match="`labels` must have the shape of `input_ids`"):
        trainer.compute_loss(trainer.model, batch)


def test_a_truncated_image_names_its_file_and_example(tmp_path):
    trainer = make_trainer(tmp_path, Dataset.from_list(rows()))
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((56, 56, 3), dtype=np.uint8) + 100).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    examples = rows(2)
    examples[1]["images"] = [Image.open(tmp_path / "cut.png")]  # opens lazily; decoding fails in the processor
    with pytest.raises(ValueError, match=r"Image 0 of example 1 of the batch \(.*cut.png\) cannot be read"):
        trainer.data_collator(examples)


def test_a_missing_model_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"`model` '.*missing' is not a folder"):
        VisionSelectorSFTTrainer(str(tmp_path / "missing"), args=tiny_run_args(tmp_path, max_steps=1), train_dataset=Dataset.from_list(rows()))


def test_an_object_that_is_not_a_model_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="`model` must be a VisionSelector"):
        VisionSelectorSFTTrainer(torch.nn.Linear(2, 2), args=tiny_run_args(tmp_path, max_steps=1))
