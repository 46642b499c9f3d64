"""Training data in the LLaVA / ShareGPT and TRL layouts (`visionselector_training.data`), through the trainer and the
training script, on tiny models (CPU)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl
from visionselector_training.data import (
    BadRow,
    VisionLanguageCollator,
    convert,
    detect_format,
    llava_row,
    load_local_dataset,
    main as data_main,
    messages_row,
    scan,
    steps_for,
)
from visionselector_training.tiny_assets import write_tiny_backbone


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def _save_image(path, seed, size=56):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _write_jsonl(path, rows):
    with open(path, "w") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
    return str(path)


# A LLaVA-layout file as the paper's data and Qwen's fine-tuning code have it: one image, several images with tags
# inside the text, a video (a folder of frames), a multi-turn conversation with a system turn, user/assistant roles,
# a text-only row.
LLAVA_ROWS = [
    {"id": "a", "image": "img/0.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat is the colour"}, {"from": "gpt", "value": "red"}]},
    {"id": "b", "image": ["img/0.png", "img/1.png"], "conversations": [
        {"from": "system", "value": "describe"},
        {"from": "human", "value": "left <image> right <image> which"}, {"from": "gpt", "value": "left"},
        {"from": "human", "value": "what colour"}, {"from": "gpt", "value": "blue"}]},
    {"id": "c", "video": "clip", "conversations": [
        {"role": "user", "content": "<video>\ndescribe the video"}, {"role": "assistant", "content": "a square"}]},
    {"id": "d", "conversations": [{"from": "human", "value": "what"}, {"from": "gpt", "value": "yes"}]},
]


@pytest.fixture
def llava_file(tmp_path):
    folder = tmp_path / "data"
    for i in range(2):
        _save_image(str(folder / "img" / f"{i}.png"), i)
    for i in range(4):
        _save_image(str(folder / "clip" / f"frame{i:02d}.png"), 10 + i)
    return _write_jsonl(folder / "train.jsonl", LLAVA_ROWS)


class TestRows:
    """LLaVA / ShareGPT and TRL rows become `messages`, `images` and `videos`."""

    def test_layout_is_told_by_the_columns(self):
        assert detect_format(["id", "image", "conversations"]) == "llava"
        assert detect_format(["messages", "images"]) == "messages"
        with pytest.raises(ValueError, match=r"columns \['image', 'text'\]"):
            detect_format(["text", "image"])

    def test_llava_tags_anywhere_multi_turn_system_and_roles(self):
        row = llava_row(LLAVA_ROWS[1])
        assert [message["role"] for message in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
        assert row["messages"][1]["content"] == [
            {"type": "text", "text": "left"}, {"type": "image", "text": None},
            {"type": "text", "text": "right"}, {"type": "image", "text": None}, {"type": "text", "text": "which"},
        ]
        assert row["images"] == ["img/0.png", "img/1.png"] and row["videos"] == []
        video = llava_row(LLAVA_ROWS[2])
        assert video["messages"][0]["content"][0] == {"type": "video", "text": None} and video["videos"] == ["clip"]
        # no tag at all: the visuals go before the first user turn's text, as TRL places them
        untagged = llava_row({"image": "a.png", "conversations": [{"from": "human", "value": "what"}, {"from": "gpt", "value": "x"}]})
        assert untagged["messages"][0]["content"] == [{"type": "image", "text": None}, {"type": "text", "text": "what"}]

    @pytest.mark.parametrize(
        "row, reason",
        [
            ({"image": "a.png", "conversations": [{"from": "human", "value": "<image><image> q"}, {"from": "gpt", "value": "a"}]},
             "2 image and 0 video placeholders for 1 images"),
            ({"conversations": [{"from": "human", "value": "<video> q"}, {"from": "gpt", "value": "a"}]},
             "0 image and 1 video placeholders for 0 images and 0 videos"),
            ({"image": "a.png", "conversations": [{"from": "human", "value": "<image> q"}]}, "no assistant turn"),
            ({"conversations": [{"from": "robot", "value": "q"}, {"from": "gpt", "value": "a"}]}, "role 'robot'"),
            ({"conversations": []}, "non-empty list"),
        ],
    )
    def test_unusable_llava_rows_say_why(self, row, reason):
        with pytest.raises(BadRow, match=reason):
            llava_row(row)

    def test_trl_row_without_images_is_text_only(self):
        row = messages_row({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]})
        assert row["images"] == [] and row["videos"] == []
        # and with images and string contents, they go before the first user text
        row = messages_row({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}], "images": ["x.png"]})
        assert row["messages"][0]["content"][0] == {"type": "image", "text": None}

    def test_trl_file_with_a_row_lacking_images_loads(self, tmp_path):
        """A TRL JSONL row without `images` was a `TypeError` in the script's loader; it is a text-only row."""
        from visionselector_training.train import load_training_dataset

        _save_image(str(tmp_path / "a.png"), 0)
        rows = [
            {"messages": [{"role": "user", "content": "what"}, {"role": "assistant", "content": "red"}], "images": ["a.png"]},
            {"messages": [{"role": "user", "content": "what"}, {"role": "assistant", "content": "yes"}]},
        ]
        dataset, report = load_training_dataset(_write_jsonl(tmp_path / "train.jsonl", rows))
        assert report.layout == "messages" and report.num_usable == 2
        assert dataset["train"][0]["images"] == [str(tmp_path / "a.png")]
        assert dataset["train"][1]["images"] == []

    def test_bad_rows_are_reported_by_number_then_refused_or_skipped(self, tmp_path, llava_file):
        rows = LLAVA_ROWS + [
            {"image": "img/missing.png", "conversations": [{"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "a"}]},
            {"image": "img/0.png", "conversations": [{"from": "human", "value": "<image> <image> q"}, {"from": "gpt", "value": "a"}]},
            {"image": "img/0.png", "conversations": [{"from": "human", "value": "<image> q"}]},
        ]
        path = _write_jsonl(os.path.join(os.path.dirname(llava_file), "mixed.jsonl"), rows)
        with pytest.raises(ValueError) as error:
            scan(path)
        message = str(error.value)
        assert "3 of 7 rows" in message and "--on_bad_row skip" in message
        assert "row 4: image" in message and "missing.png' does not exist" in message
        assert "row 5: 2 image and 0 video placeholders for 1 images" in message and "row 6: no assistant turn" in message
        with pytest.warns(UserWarning, match="Skipping them: 3 of 7 rows"):
            dataset, report = load_local_dataset(path, on_bad_row="skip")
        assert [number for number, _ in report.bad_rows] == [4, 5, 6]
        assert len(dataset) == 4 and [len(row["images"]) for row in dataset] == [1, 2, 0, 0]
        with pytest.raises(ValueError, match="`on_bad_row` must be one of \\['error', 'skip'\\], got 'ignore'"):
            scan(path, on_bad_row="ignore")

    def test_image_folder_is_where_relative_paths_start(self, tmp_path, llava_file):
        elsewhere = tmp_path / "annotations" / "train.jsonl"
        os.makedirs(elsewhere.parent)
        elsewhere.write_text(open(llava_file).read())
        with pytest.raises(ValueError, match="does not exist"):
            scan(str(elsewhere))
        report = scan(str(elsewhere), image_folder=os.path.dirname(llava_file))
        assert report.num_usable == 4

    def test_a_video_file_without_a_decoder_is_a_bad_row(self, tmp_path, monkeypatch):
        from visionselector_training import data

        (tmp_path / "clip.mp4").write_bytes(b"\x00")
        monkeypatch.setattr(data, "video_backend_available", lambda: False)
        rows = [{"video": "clip.mp4", "conversations": [{"from": "human", "value": "<video> q"}, {"from": "gpt", "value": "a"}]}]
        with pytest.raises(ValueError, match="row 0: video file .*clip.mp4' needs a video decoder"):
            scan(_write_jsonl(tmp_path / "v.jsonl", rows))

    def test_convert_writes_trl_format_that_reads_back_the_same(self, tmp_path, llava_file, capsys):
        output = tmp_path / "out" / "trl.jsonl"
        os.makedirs(output.parent)
        data_main(["convert", llava_file, str(output)])
        assert "Wrote 4 of 4 rows (llava layout)" in capsys.readouterr().out
        written = [json.loads(line) for line in output.read_text().splitlines()]
        assert written[0]["messages"][0]["content"] == [{"type": "image"}, {"type": "text", "text": "what is the colour"}]
        assert written[0]["images"] == ["../data/img/0.png"]  # relative to the written file
        assert written[2]["videos"] == ["../data/clip"]
        original, _ = load_local_dataset(llava_file)
        converted, report = load_local_dataset(str(output))
        assert report.layout == "messages"
        assert converted.to_list() == original.to_list()
        # `check` lists the unusable rows without failing
        data_main(["check", llava_file])
        assert "All 4 rows (llava layout) are usable." in capsys.readouterr().out

    def test_steps_for_matches_the_trainer_count(self):
        assert steps_for(10, per_device_batch_size=3, gradient_accumulation_steps=1, world_size=1, epochs=1) == 4
        assert steps_for(10, per_device_batch_size=2, gradient_accumulation_steps=2, world_size=1, epochs=3) == 9
        assert steps_for(100, per_device_batch_size=4, gradient_accumulation_steps=1, world_size=2, epochs=1) == 13


class TestVisionLanguageCollator:
    """The collator that opens each batch's images and video frames."""

    def test_collator_opens_images_and_frames_of_each_batch(self, llava_file):
        dataset, _ = load_local_dataset(llava_file)
        processor = tiny_processor(min_pixels=28 * 28, max_pixels=112 * 112)
        batch = VisionLanguageCollator(processor)(dataset.to_list())
        config = tiny_qwen2_5_vl().config
        merge = config.vision_config.spatial_merge_size ** 2
        assert batch["image_grid_thw"].shape[0] == 3 and batch["video_grid_thw"].shape[0] == 1
        assert batch["video_grid_thw"][0, 0] == 2  # 4 frames, 2 per temporal patch
        image_tokens = (batch["input_ids"] == config.image_token_id).sum(-1).tolist()
        video_tokens = (batch["input_ids"] == config.video_token_id).sum(-1).tolist()
        per_image = [int(grid.prod()) // merge for grid in batch["image_grid_thw"]]
        assert image_tokens == [per_image[0], per_image[1] + per_image[2], 0, 0]
        assert video_tokens == [0, 0, int(batch["video_grid_thw"][0].prod()) // merge, 0]
        assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()

    def test_collator_skips_or_refuses_a_row_whose_file_vanished(self, tmp_path, llava_file):
        dataset, _ = load_local_dataset(llava_file)
        rows = dataset.to_list()
        os.remove(os.path.join(os.path.dirname(llava_file), "img", "1.png"))
        processor = tiny_processor(min_pixels=28 * 28, max_pixels=112 * 112)
        with pytest.raises(ValueError, match="Cannot open a visual of a training row.*1.png"):
            VisionLanguageCollator(processor)(rows)
        with pytest.warns(UserWarning, match="Skipping a training row"):
            batch = VisionLanguageCollator(processor, on_bad_row="skip")(rows)
        assert batch["input_ids"].shape[0] == 3


def _script_args(tmp_path, data, **extra):
    args = {
        "--model_name_or_path": str(tmp_path / "backbone"), "--dataset_name": data, "--output_dir": str(tmp_path / "run"),
        "--use_cpu": "true", "--bf16": "false", "--per_device_train_batch_size": "2", "--learning_rate": "1e-2",
        "--logging_steps": "1", "--save_strategy": "no", "--report_to": "none", "--seed": "0", "--disable_tqdm": "true",
        "--train_retention_ratio": "0.5",
    }
    args.update(extra)
    return [item for pair in args.items() for item in pair]


class TestDataScript:
    """`visionselector-data`: writes a dataset folder the training script reads."""

    def test_script_trains_on_a_llava_file_with_images_several_images_and_a_video(self, tmp_path, llava_file):
        """The paper's layout through `visionselector_training.train`: every row reaches the model (images, several
        images, a video of frames, text only), the scorer learns, the rest stays as it was."""
        from visionselector_training.train import cli

        write_tiny_backbone(str(tmp_path / "backbone"))
        seen = []
        original_call = VisionLanguageCollator.__call__

        def recording_call(self, examples):
            batch = original_call(self, examples)
            seen.append({key: batch[key] for key in ("image_grid_thw", "video_grid_thw") if key in batch})
            return batch

        VisionLanguageCollator.__call__ = recording_call
        try:
            trainer = cli(_script_args(tmp_path, llava_file, **{"--max_steps": "2"}))
        finally:
            VisionLanguageCollator.__call__ = original_call
        assert sum(len(batch.get("image_grid_thw", [])) for batch in seen) == 3
        assert sum(len(batch.get("video_grid_thw", [])) for batch in seen) == 1
        assert trainer.state.global_step == 2
        logged = [entry for entry in trainer.state.log_history if "ce_loss" in entry]
        assert len(logged) == 2 and all(np.isfinite(entry["ce_loss"]) for entry in logged)

        from modeling_visionselector import VisionSelectorForConditionalGeneration

        from transformers import set_seed

        trained = VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "run")
        set_seed(0)  # the scorer the script drew
        fresh = VisionSelectorForConditionalGeneration.from_backbone(str(tmp_path / "backbone"))
        assert not torch.equal(trained.scorer.k_proj.weight, fresh.scorer.k_proj.weight)
        stock = tiny_qwen2_5_vl()
        torch.testing.assert_close(trained.model.language_model.layers[0].mlp.up_proj.weight,
                                   stock.model.language_model.layers[0].mlp.up_proj.weight, rtol=0, atol=0)

    def test_script_refuses_or_skips_bad_rows_before_training(self, tmp_path, llava_file):
        from visionselector_training.train import cli

        write_tiny_backbone(str(tmp_path / "backbone"))
        rows = LLAVA_ROWS + [{"image": "img/gone.png", "conversations": [{"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "a"}]}]
        path = _write_jsonl(os.path.join(os.path.dirname(llava_file), "bad.jsonl"), rows)
        with pytest.raises(ValueError, match="row 4: image .*gone.png' does not exist"):
            cli(_script_args(tmp_path, path, **{"--max_steps": "1"}))
        with pytest.warns(UserWarning, match="Skipping them: 1 of 5 rows"):
            trainer = cli(_script_args(tmp_path, path, **{"--max_steps": "1", "--on_bad_row": "skip"}))
        assert trainer.state.global_step == 1
        assert trainer.data_collator.collator.on_bad_row == "skip"  # and a file that vanishes later is skipped too

    def test_streaming_computes_the_step_count_from_the_usable_rows(self, tmp_path, llava_file):
        """`--streaming` without `--max_steps`: the steps of `--num_train_epochs` passes over the usable rows, so the
        lambda and learning-rate schedules run over the real length; a Hub stream must give `--max_steps`."""
        from visionselector_training.train import cli

        write_tiny_backbone(str(tmp_path / "backbone"))
        trainer = cli(_script_args(tmp_path, llava_file, **{"--streaming": "true", "--num_train_epochs": "2",
                                                           "--per_device_train_batch_size": "3"}))
        assert trainer.state.max_steps == 4 == trainer.state.global_step  # ceil(4 rows / 3) = 2 batches per epoch
        weights = [entry["reg_weight"] for entry in trainer.state.log_history if "reg_weight" in entry]
        # steps 0 and 2 hold the rows with visuals (the second batch of each pass is the text-only row); lambda at step 2
        # is half way through a 4-step run
        assert weights == pytest.approx([0.1, 0.1 + 1.9 * 2 / 4], rel=1e-6)

    def test_video_file_is_sampled_at_the_processor_rate_with_its_timing(self, tmp_path):
        """A video file (8 frames at 4 fps) is decoded by the installed decoder at 2 frames per second: 4 frames, one
        temporal patch per second of video."""
        av = pytest.importorskip("av", reason="no video decoder (PyAV) installed")
        path = str(tmp_path / "clip.mp4")
        container = av.open(path, mode="w")
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(8):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        container.close()
        rows = [{"video": "clip.mp4", "conversations": [{"from": "human", "value": "<video> what"}, {"from": "gpt", "value": "red"}]}]
        dataset, _ = load_local_dataset(_write_jsonl(tmp_path / "v.jsonl", rows))
        batch = VisionLanguageCollator(tiny_processor(min_pixels=28 * 28, max_pixels=112 * 112))(dataset.to_list())
        assert batch["video_grid_thw"][0, 0] == 2  # 4 sampled frames, 2 per temporal patch
        assert batch["second_per_grid_ts"].tolist() == [1.0]

    @pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
    def test_trainer_reads_rows_with_videos_from_memory(self, tmp_path, family):
        """A `Dataset` of normalised rows built in memory (a folder of frames) trains with the trainer alone."""
        from datasets import Dataset

        from visionselector.tiny import tiny_model

        from visionselector_training import VisionSelectorSFTTrainer

        from training_args import tiny_run_args

        folder = tmp_path / "frames"
        for i in range(2):
            _save_image(str(folder / f"{i}.png"), i)
        rows = [
            {"messages": [{"role": "user", "content": [{"type": "video", "text": None}, {"type": "text", "text": "describe"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
             "images": [], "videos": [str(folder)]}
            for _ in range(4)
        ]
        trainer = VisionSelectorSFTTrainer(
            tiny_model(family), args=tiny_run_args(tmp_path, max_steps=2), train_dataset=Dataset.from_list(rows),
            processing_class=tiny_processor(min_pixels=28 * 28, max_pixels=112 * 112, family=family),
        )
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        assert "pixel_values_videos" in batch
        # the answer only: the supervised tokens are "red" and the end of the turn, in each row
        assert ((batch["labels"] != -100).sum(-1) == 2).all()
        trainer.train()
        assert trainer.state.global_step == 2

    def test_trainer_takes_a_llava_layout_dataset_as_it_is(self, tmp_path, llava_file):
        """A `Dataset` with a `conversations` column goes to the trainer unconverted; unusable rows are refused by number,
        or left out after `normalize_dataset(..., on_bad_row="skip")`."""
        from datasets import Dataset

        from visionselector_training import VisionSelectorSFTTrainer
        from visionselector_training.data import normalize_dataset

        from training_args import tiny_run_args

        folder = os.path.dirname(llava_file)
        rows = [
            {"image": [os.path.join(folder, "img", "0.png"), os.path.join(folder, "img", "1.png")], "conversations": [
                {"from": "human", "value": "<image> left <image> right"}, {"from": "gpt", "value": "left"}]},
            {"image": [os.path.join(folder, "img", "1.png")], "conversations": [
                {"from": "human", "value": "<image>\nwhat"}, {"from": "gpt", "value": "red"}]},
        ]
        processor = tiny_processor(min_pixels=28 * 28, max_pixels=112 * 112)
        trainer = VisionSelectorSFTTrainer(
            tiny_qwen2_5_vl(), args=tiny_run_args(tmp_path, max_steps=1), train_dataset=Dataset.from_list(rows),
            processing_class=processor,
        )
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        assert batch["image_grid_thw"].shape[0] == 3
        trainer.train()

        broken = Dataset.from_list(rows + [{"image": ["/nowhere.png"], "conversations": rows[1]["conversations"]}])
        with pytest.raises(ValueError, match="row 2: image '/nowhere.png' does not exist"):
            VisionSelectorSFTTrainer(tiny_qwen2_5_vl(), args=tiny_run_args(tmp_path, max_steps=1), train_dataset=broken,
                                     processing_class=processor)
        with pytest.warns(UserWarning, match="Skipping them: 1 of 3 rows"):
            assert len(normalize_dataset(broken, on_bad_row="skip")) == 2
