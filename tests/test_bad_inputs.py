"""Bad inputs to loading, forward and generate: each is a `ValueError` naming the argument or file (the per-call
catalogue is in test_modeling.py).
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import GenerationConfig

from modeling_visionselector import SCORER_WEIGHTS_NAME, VisionSelectorForConditionalGeneration
from modeling_visionselector.scoring import num_kept_tokens, validate_retention_ratio
from visionselector.publishing import save_scorer


@pytest.fixture
def scorer_folder(stock_model, tmp_path):
    backbone = tmp_path / "backbone"
    stock_model.save_pretrained(backbone)
    model = VisionSelectorForConditionalGeneration.from_backbone(str(backbone))
    return save_scorer(model, tmp_path / "scorer")


def _moved_placeholder(inputs, image_token_id):
    """Row 0's last image placeholder becomes text and row 1 gains one before its run: 3 and 5 for two 4-token images."""
    ids = inputs["input_ids"].clone()
    row0 = (ids[0] == image_token_id).nonzero().flatten()
    row1 = (ids[1] == image_token_id).nonzero().flatten()
    ids[0, row0[-1]] = 10
    ids[1, row1[0] - 1] = image_token_id
    return {**inputs, "input_ids": ids, "mm_token_type_ids": (ids == image_token_id).long()}


# Each keeps the 32 patches of the two 4 x 4 images, so only a check of the grid itself can catch it.
BAD_GRIDS = {
    "zero": lambda g: torch.tensor([[0, 4, 4], [2, 4, 4]]),
    "negative": lambda g: torch.tensor([[-1, 4, 4], [3, 4, 4]]),
    "float": lambda g: g.float(),
    "list": lambda g: g.tolist(),
    "not divisible by the merge size": lambda g: torch.tensor([[1, 1, 16], [1, 4, 4]]),
    "patches moved between items": lambda g: torch.tensor([[1, 2, 4], [1, 6, 4]]),
    "wrong shape (1, 2, 3)": lambda g: torch.tensor([[[1, 4, 4], [1, 4, 4], [1, 4, 4]]]).reshape(1, 3, 3)[:, :2],
    "flat": lambda g: g.flatten(),
    "empty": lambda g: g[:0],
    "bool": lambda g: g.bool(),
}


class _Recorder:
    """Records the ratio and selector `select_visual_tokens` receives."""

    def __init__(self, model, monkeypatch):
        self.calls = []
        select = model.select_visual_tokens

        def record(*args, **kwargs):
            self.calls.append(args[4:6])
            return select(*args, **kwargs)

        monkeypatch.setattr(model, "select_visual_tokens", record)


class TestLoading:
    """What cannot be loaded as it is is refused, naming the file or the shapes; saving never overwrites the checkpoint
    the model was loaded from."""

    def test_a_scorer_only_folder_with_pickled_weights_is_refused(self, scorer_folder):
        weights = scorer_folder / SCORER_WEIGHTS_NAME
        tensors = load_file(weights)
        weights.unlink()
        torch.save(tensors, scorer_folder / "scorer.bin")  # the same tensors, as a pickle
        with pytest.raises(ValueError, match="safetensors"):
            VisionSelectorForConditionalGeneration.from_pretrained(scorer_folder)

    def test_a_scorer_only_folder_loads_when_its_weights_are_safetensors(self, scorer_folder):
        model = VisionSelectorForConditionalGeneration.from_pretrained(scorer_folder)
        assert model.config.scorer_only is False

    def test_a_corrupted_checkpoint_is_a_value_error_naming_the_file(self, model, tmp_path):
        model.save_pretrained(tmp_path / "ckpt")
        weights = tmp_path / "ckpt" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        with pytest.raises(ValueError, match="model.safetensors"):
            VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "ckpt")

    def test_a_corrupted_scorer_file_is_a_value_error_naming_it(self, scorer_folder):
        weights = scorer_folder / SCORER_WEIGHTS_NAME
        weights.write_bytes(weights.read_bytes()[:40])
        with pytest.raises(ValueError, match="scorer.safetensors"):
            VisionSelectorForConditionalGeneration.from_pretrained(scorer_folder)

    def test_a_scorer_only_artifact_on_a_backbone_of_another_size_names_both_shapes(self, scorer_folder, tmp_path):
        from visionselector.tiny import tiny_qwen2_5_vl

        tiny_qwen2_5_vl(text_hidden_size=64, vision_hidden_size=64).save_pretrained(tmp_path / "bigger")
        with pytest.raises(ValueError, match=r"another size.*\(.*64.*\) in the backbone, \(.*32.*\) in the artifact"):
            VisionSelectorForConditionalGeneration.from_pretrained(scorer_folder, base_model_name_or_path=str(tmp_path / "bigger"))

    def test_a_scorer_only_artifact_on_a_backbone_of_another_family_is_refused(self, scorer_folder, tmp_path):
        from visionselector.tiny import tiny_model

        tiny_model("qwen3_vl").save_pretrained(tmp_path / "qwen3")
        with pytest.raises(ValueError, match="'qwen3_vl' model, but the artifact is a 'visionselector_qwen2_5_vl'"):
            VisionSelectorForConditionalGeneration.from_pretrained(scorer_folder, base_model_name_or_path=str(tmp_path / "qwen3"))

    @pytest.mark.parametrize("entry", ["from_pretrained", "from_backbone"])
    def test_a_missing_local_folder_is_named_not_taken_for_a_repo_id(self, tmp_path, entry):
        with pytest.raises(ValueError, match=r"not a folder on this machine"):
            getattr(VisionSelectorForConditionalGeneration, entry)(str(tmp_path / "missing"))

    def test_save_scorer_into_the_folder_the_model_was_loaded_from_is_refused(self, model, tmp_path):
        """A scorer-only config would replace the full checkpoint's (the API side of the hub commands' rule)."""
        model.save_pretrained(tmp_path / "full")
        loaded = VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "full")
        before = {path.name: path.read_bytes() for path in (tmp_path / "full").iterdir()}
        with pytest.raises(ValueError, match="overwrite the input"):
            save_scorer(loaded, tmp_path / "full", base_model_name_or_path="some-org/backbone")
        assert {path.name: path.read_bytes() for path in (tmp_path / "full").iterdir()} == before


class TestPlaceholderRows:
    """Placeholders are checked per row, not per batch (an image's last feature never lands in another row)."""

    @pytest.fixture
    def moved(self, model, make_inputs):
        inputs = make_inputs([[("image", 56, 56)], [("image", 56, 56)]])
        return _moved_placeholder(inputs, model.config.image_token_id)

    def test_forward_generate_and_training_refuse_a_row_holding_part_of_another_rows_image(self, model, moved):
        with pytest.raises(ValueError, match=r"`input_ids` row 0 holds 3 image placeholder"):
            model(**moved, retention_ratio=0.5)
        with pytest.raises(ValueError, match=r"`input_ids` row 0"):
            model.generate(**moved, retention_ratio=0.5, max_new_tokens=1)
        model.train()
        try:
            with pytest.raises(ValueError, match=r"`input_ids` row 0"):
                model(**moved)
        finally:
            model.eval()

    def test_a_run_that_splits_two_images_of_one_row_is_refused(self, model, make_inputs):
        inputs = make_inputs([[("image", 56, 56), ("image", 56, 56)]])
        ids = inputs["input_ids"].clone()
        positions = (ids[0] == model.config.image_token_id).nonzero().flatten()
        ids[0, positions[3]] = 10  # image 0 gets 3 placeholders, image 1 gains the text token after its start
        ids[0, positions[4] - 2] = model.config.image_token_id
        with pytest.raises(ValueError, match="`input_ids` holds a run of image placeholder tokens"):
            model(**{**inputs, "input_ids": ids, "mm_token_type_ids": (ids == model.config.image_token_id).long()}, retention_ratio=0.5)

    def test_token_types_that_do_not_mark_the_placeholders_are_refused(self, model, make_inputs):
        inputs = make_inputs([[("image", 56, 56)]])
        with pytest.raises(ValueError, match="`mm_token_type_ids` must mark the placeholders"):
            model(**{**inputs, "mm_token_type_ids": torch.zeros_like(inputs["input_ids"])}, retention_ratio=0.5)

    def test_video_placeholders_without_video_pixels_are_a_value_error(self, model, make_inputs):
        inputs = make_inputs([[("image", 56, 56), ("video", 2, 56, 56)]])
        without_video = {k: v for k, v in inputs.items() if k not in ("pixel_values_videos", "video_grid_thw")}
        with pytest.raises(ValueError, match="placeholder tokens"):
            model(**without_video, retention_ratio=0.5)


class TestGridsAndPixels:
    """`image_grid_thw` / `video_grid_thw` and the pixels are checked, and the error names the argument."""

    @pytest.mark.parametrize("case", sorted(BAD_GRIDS))
    def test_bad_grid_is_a_value_error_naming_it(self, model, make_inputs, case):
        inputs = make_inputs([[("image", 56, 56), ("image", 56, 56)]])  # grid [[1, 4, 4], [1, 4, 4]], 32 patches
        grid = BAD_GRIDS[case](inputs["image_grid_thw"])
        with pytest.raises(ValueError, match="image_grid_thw"):
            model(**{**inputs, "image_grid_thw": grid}, retention_ratio=0.5)

    def test_a_grid_of_the_wrong_shape_gets_a_message_that_does_not_contradict_itself(self, model, make_inputs):
        inputs = make_inputs([[("image", 56, 56)]])
        with pytest.raises(ValueError, match=r"must have shape \(num_images, 3\).*got shape \(1, 2, 3\)"):
            model(**{**inputs, "image_grid_thw": torch.tensor([[[1, 4, 4], [1, 1, 1]]]).repeat(1, 1, 1)[:, :, :3].reshape(1, 2, 3)})

    @pytest.mark.parametrize("case", ["narrow", "wide", "empty", "3-d", "integer"])
    def test_pixels_of_the_wrong_shape_are_a_value_error_naming_them(self, model, make_inputs, case):
        inputs = make_inputs([[("image", 56, 56)]])
        pixels = inputs["pixel_values"]
        pixels = {
            "narrow": pixels[:, :-1],
            "wide": torch.cat([pixels, pixels[:, :1]], 1),
            "empty": pixels[:0],
            "3-d": pixels[None],
            "integer": pixels.long(),
        }[case]
        with pytest.raises(ValueError, match="pixel_values"):
            model(**{**inputs, "pixel_values": pixels}, retention_ratio=0.5)

    def test_video_grid_not_matching_the_pixels_is_a_value_error(self, model, make_inputs):
        inputs = make_inputs([[("video", 4, 56, 56)]])
        grid = inputs["video_grid_thw"].clone()
        grid[0, 0] += 1
        with pytest.raises(ValueError, match="video_grid_thw"):
            model.generate(**{**inputs, "video_grid_thw": grid}, retention_ratio=0.5, max_new_tokens=2)

    def test_pixels_without_their_grid_are_a_value_error(self, model, make_inputs):
        inputs = make_inputs([[("image", 56, 56)]])
        with pytest.raises(ValueError, match="image_grid_thw"):
            model(**{**inputs, "image_grid_thw": None}, retention_ratio=0.5)


class TestMasksAndLabels:
    """Attention masks and labels are checked before `get_rope_index` and the loss."""

    @pytest.mark.parametrize("case", ["all zero row", "zero over placeholders", "too short", "too long", "values 2"])
    @pytest.mark.parametrize("mode", ["eval", "train", "generate"])
    def test_bad_attention_mask_is_a_value_error_naming_it(self, model, make_inputs, case, mode):
        inputs = make_inputs([[("image", 56, 56)], [("image", 28, 56)]])
        mask = inputs["attention_mask"].clone()
        if case == "all zero row":
            mask[1] = 0
        elif case == "zero over placeholders":
            mask[inputs["input_ids"] == model.config.image_token_id] = 0
        elif case == "too short":
            mask = mask[:, 1:]
        elif case == "too long":
            mask = torch.cat([mask, mask[:, :1]], 1)
        else:
            mask = mask * 2
        bad = {**inputs, "attention_mask": mask}
        with pytest.raises(ValueError, match="attention_mask"):
            if mode == "generate":
                model.generate(**bad, retention_ratio=0.5, max_new_tokens=1)
            else:
                model.train(mode == "train")
                try:
                    model(**bad, retention_ratio=0.5)
                finally:
                    model.eval()

    @pytest.mark.parametrize("delta", [-1, 1])
    @pytest.mark.parametrize("mode", ["eval", "train"])
    def test_labels_of_the_wrong_length_are_a_value_error_naming_them(self, model, make_inputs, delta, mode):
        inputs = make_inputs([[("image", 56, 56)], [("image", 28, 56)]])
        ids = inputs["input_ids"]
        labels = ids[:, :delta] if delta < 0 else torch.cat([ids, ids[:, :1]], 1)
        model.train(mode == "train")
        try:
            with pytest.raises(ValueError, match="`labels` must have the shape of `input_ids`"):
                model(**inputs, labels=labels, retention_ratio=0.5)
        finally:
            model.eval()


class TestGenerationSettings:
    """`retention_ratio` / `selector` on a `GenerationConfig` or in `generation_config.json` are honoured and
    checked; `from_pretrained(..., retention_ratio=...)` is checked at load; length errors name the caller's lengths."""

    def test_a_generation_config_ratio_and_selector_are_used(self, model, make_inputs, monkeypatch):
        inputs = make_inputs([[("image", 112, 112)]])
        recorder = _Recorder(model, monkeypatch)
        config = GenerationConfig(retention_ratio=0.25, selector="norm", max_new_tokens=2, do_sample=False)
        out = model.generate(**inputs, generation_config=config)
        assert recorder.calls == [(0.25, "norm")]
        expected = model.generate(**inputs, retention_ratio=0.25, selector="norm", max_new_tokens=2, do_sample=False)
        assert torch.equal(out, expected)
        model.generate(**inputs, generation_config=config, retention_ratio=0.5)  # an argument wins
        assert recorder.calls[-1] == (0.5, "norm")

    @pytest.mark.parametrize("field, value", [("retention_ratio", 5.0), ("retention_ratio", 0.0), ("selector", "nonsense")])
    def test_invalid_generation_config_values_are_refused(self, model, make_inputs, field, value):
        inputs = make_inputs([[("image", 56, 56)]])
        with pytest.raises(ValueError, match=f"generation_config.{field}"):
            model.generate(**inputs, generation_config=GenerationConfig(**{field: value}, max_new_tokens=1))

    def test_a_checkpoints_generation_config_is_used_and_checked_at_load(self, model, make_inputs, tmp_path, monkeypatch):
        model.save_pretrained(tmp_path / "ckpt")
        path = tmp_path / "ckpt" / "generation_config.json"
        saved = json.loads(path.read_text())
        path.write_text(json.dumps({**saved, "retention_ratio": 0.75}))
        loaded = VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "ckpt").eval()
        recorder = _Recorder(loaded, monkeypatch)
        loaded.generate(**make_inputs([[("image", 56, 56)]]), max_new_tokens=1)
        assert recorder.calls == [(0.75, "learned")]
        model.generation_config.selector = "norm"  # set on the model: saved, reloaded, used
        try:
            model.save_pretrained(tmp_path / "saved")
        finally:
            del model.generation_config.selector
        reloaded = VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
        recorder = _Recorder(reloaded, monkeypatch)
        reloaded.generate(**make_inputs([[("image", 56, 56)]]), max_new_tokens=1)
        assert recorder.calls == [(0.3, "norm")]
        path.write_text(json.dumps({**saved, "retention_ratio": 5.0}))
        with pytest.raises(ValueError, match="retention_ratio"):
            VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "ckpt")
        path.write_text(json.dumps({**saved, "selector": "nonsense"}))
        with pytest.raises(ValueError, match="selector"):
            VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "ckpt")

    def test_a_bad_ratio_at_load_or_on_assignment_is_refused(self, model, tmp_path):
        model.save_pretrained(tmp_path / "ckpt")
        with pytest.raises(ValueError, match=r"`retention_ratio` must be in \(0, 1\], got 3.0"):
            VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "ckpt", retention_ratio=3.0)
        config = model.config.__class__.from_pretrained(tmp_path / "ckpt")
        with pytest.raises(ValueError, match="train_retention_ratio"):
            config.train_retention_ratio = float("nan")

    def test_max_length_error_names_the_callers_lengths(self, model, make_inputs):
        """The stock message, with the caller's prompt length, not the pruned one."""
        inputs = make_inputs([[("image", 112, 112)]])
        length = inputs["input_ids"].shape[1]
        with pytest.raises(ValueError, match=rf"Input length of input_ids is {length}, but `max_length` is set to 10\."):
            model.generate(**inputs, max_length=10, retention_ratio=0.3)


class TestRatioNumbers:
    """A ratio given as a numpy scalar keeps what the Python float it prints as keeps."""

    @pytest.mark.parametrize("ratio", [np.float32(0.29), np.float64(0.29), np.float16(0.5)])
    def test_numpy_ratios_keep_what_the_python_float_keeps(self, ratio):
        assert num_kept_tokens(100, ratio) == num_kept_tokens(100, float(str(ratio)))
        assert validate_retention_ratio(ratio) == float(str(ratio))
        assert num_kept_tokens(100, validate_retention_ratio(ratio)) == num_kept_tokens(100, float(str(ratio)))
