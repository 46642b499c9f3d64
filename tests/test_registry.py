"""The family registry (`modeling_visionselector.families`): one description per family, read by every table and
class; `register_family` adds one at run time; `select_tokens` is the one selection rule."""

import dataclasses

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

import modeling_visionselector
from conftest import ROOT, load_script
from modeling_visionselector import (
    CONFIG_CLASSES,
    FAMILIES,
    VISIONSELECTOR_CLASSES,
    Family,
    VisionSelectorConfig,
    VisionSelectorForConditionalGeneration,
    VisionSelectorMixin,
    from_backbone,
    register_family,
    select_tokens,
)
from modeling_visionselector import configuration_visionselector, families, modeling_visionselector as modeling
from modeling_visionselector.scoring import hard_topk_mask, num_kept_tokens
from visionselector import tiny
from visionselector.tiny import tiny_qwen2_5_vl_config

ONE_IMAGE_EACH = [[("image", 56, 84)], [("image", 84, 84)]]


class TestDescriptions:
    def test_every_table_covers_every_family(self):
        prefill = load_script("prefill_for_registry", ROOT / "benchmarks" / "prefill.py")
        generate = load_script("generate_for_registry", ROOT / "hub_configs" / "generate.py")
        assert tiny.FAMILIES == tuple(FAMILIES)
        assert set(prefill.FAMILIES) == set(FAMILIES) == set(generate.FAMILIES)
        assert set(CONFIG_CLASSES) == set(VISIONSELECTOR_CLASSES) == set(FAMILIES)
        for model_type, family in FAMILIES.items():
            assert prefill.FAMILIES[model_type].stock_class is family.stock_model
            assert generate.FAMILIES[model_type].stock_config is family.stock_config

    @pytest.mark.parametrize("model_type", sorted(FAMILIES))
    def test_classes_follow_from_the_description(self, model_type):
        family = FAMILIES[model_type]
        model_class, config_class = VISIONSELECTOR_CLASSES[model_type], CONFIG_CLASSES[model_type]
        assert model_class.__name__ == "VisionSelector" + family.stock_model.__name__
        assert config_class.__name__ == "VisionSelector" + family.stock_config.__name__
        # importable by name from the modules `auto_map` names (the remote code resolves classes that way)
        assert getattr(modeling, model_class.__name__) is model_class
        assert getattr(configuration_visionselector, config_class.__name__) is config_class
        assert model_class.__module__ == modeling.__name__ and config_class.__module__ == configuration_visionselector.__name__
        assert issubclass(model_class, (VisionSelectorMixin, family.stock_model))
        assert model_class.config_class is config_class and config_class.model_type == f"visionselector_{model_type}"
        assert config_class().auto_map["AutoModel"] == f"modeling_visionselector.{model_class.__name__}"

    @pytest.mark.parametrize("model_type", sorted(FAMILIES))
    def test_the_description_says_what_the_stock_model_does(self, model_type, tmp_path):
        """`deepstack`, `patch_size` and `video_per_frame` match a tiny stock model and processor of the family."""
        family = FAMILIES[model_type]
        config = tiny.tiny_config(model_type)
        assert family.deepstack == bool(getattr(config.vision_config, "deepstack_visual_indexes", None))
        assert family.patch_size == config.vision_config.patch_size
        processor = tiny.tiny_processor(family=model_type)
        assert type(processor).__name__ == family.processor
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "describe"}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        video = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8).numpy()
        input_ids = processor(text=[text], videos=[video], return_tensors="pt")["input_ids"][0]
        placeholders = (input_ids == config.video_token_id).int()
        runs = int((placeholders[1:] > placeholders[:-1]).sum() + placeholders[0])  # runs of video placeholders
        assert (runs > 1) == family.video_per_frame

    def test_the_first_qwen2_5_vl_names_are_aliases(self):
        assert VisionSelectorForConditionalGeneration is VISIONSELECTOR_CLASSES["qwen2_5_vl"]
        assert VisionSelectorConfig is CONFIG_CLASSES["qwen2_5_vl"]
        assert VisionSelectorForConditionalGeneration.__name__ == "VisionSelectorQwen2_5_VLForConditionalGeneration"

    def test_from_backbone_is_family_neutral(self, stock_model):
        torch.manual_seed(0)
        by_function = from_backbone(stock_model)
        torch.manual_seed(0)
        by_other_family = VISIONSELECTOR_CLASSES["qwen3_vl"].from_backbone(stock_model)
        assert type(by_function) is type(by_other_family) is VISIONSELECTOR_CLASSES["qwen2_5_vl"]
        for name, value in by_function.scorer.state_dict().items():
            assert torch.equal(value, by_other_family.scorer.state_dict()[name])

    @pytest.mark.parametrize(
        "change, message",
        [
            (dict(patch_size=15), "`patch_size`"),
            (dict(processor="not a name"), "`processor`"),
            (dict(stock_model=Qwen2_5_VLConfig), "`stock_model`"),
        ],
    )
    def test_a_bad_description_is_refused(self, change, message):
        family = dataclasses.replace(FAMILIES["qwen2_5_vl"], **change)
        with pytest.raises(ValueError, match=message):
            register_family(family, overwrite=True)
        assert FAMILIES["qwen2_5_vl"].patch_size == 14 and FAMILIES["qwen2_5_vl"].processor == "Qwen2_5_VLProcessor"

    def test_a_known_family_or_no_family_is_refused(self):
        with pytest.raises(ValueError, match="registered already"):
            register_family(FAMILIES["qwen2_vl"])
        with pytest.raises(ValueError, match="must be a Family"):
            register_family("qwen2_vl")


class ToyConfig(Qwen2_5_VLConfig):
    model_type = "toy_qwen2_5_vl"


class ToyForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    config_class = ToyConfig


@pytest.fixture
def toy_family():
    """A family registered at run time (a subclass of Qwen2.5-VL under its own `model_type`), unregistered after."""
    family = Family("Toy", ToyConfig, ToyForConditionalGeneration, "Qwen2_5_VLProcessor", 14)
    yield family, *register_family(family)
    FAMILIES.pop(family.model_type)
    families.MODEL_CLASSES.pop(family.model_type)
    CONFIG_CLASSES.pop(family.model_type)
    for module, name in ((modeling, family.model_class_name), (configuration_visionselector, family.config_class_name)):
        delattr(module, name)


class TestRegisterFamily:
    def test_one_call_makes_a_working_family(self, toy_family, make_inputs, tmp_path):
        family, config_class, model_class = toy_family
        assert model_class.__name__ == "VisionSelectorToyForConditionalGeneration" and modeling.VisionSelectorToyForConditionalGeneration is model_class
        assert config_class.model_type == "visionselector_toy_qwen2_5_vl"
        config = ToyConfig(**tiny_qwen2_5_vl_config().to_dict())
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        stock = ToyForConditionalGeneration(config).eval()
        # dispatched to the most derived registered stock class, not to its Qwen2.5-VL base
        model = from_backbone(stock).eval()
        assert type(model) is model_class
        inputs = make_inputs(ONE_IMAGE_EACH)
        kwargs = dict(max_new_tokens=4, do_sample=False)
        assert torch.equal(model.generate(**inputs, retention_ratio=1.0, **kwargs), stock.generate(**inputs, **kwargs))
        model.save_pretrained(tmp_path)
        loaded = model_class.from_pretrained(tmp_path).eval()
        assert torch.equal(
            loaded.generate(**inputs, retention_ratio=0.3, **kwargs), model.generate(**inputs, retention_ratio=0.3, **kwargs)
        )
        assert modeling_visionselector.visionselector_class_for("toy_qwen2_5_vl") is model_class


class TestSelectTokens:
    def test_training_and_inference_keep_the_same_tokens(self, model, make_inputs):
        inputs = make_inputs(ONE_IMAGE_EACH)
        visual = {name: inputs[name] for name in ("pixel_values", "image_grid_thw")}
        for ratio in (0.1, 0.3, 0.5):
            selection = model.select_visual_tokens(**visual, retention_ratio=ratio)
            lengths = [len(scores) for scores in selection.scores]
            mask = hard_topk_mask(torch.cat(selection.scores), lengths, ratio)
            kept = [torch.nonzero(item).flatten() for item in torch.split(mask, lengths)]
            assert all(torch.equal(a, b) for a, b in zip(kept, selection.kept_indices))
            assert [len(k) for k in kept] == [num_kept_tokens(n, ratio) for n in lengths]

    def test_every_selector_goes_through_it(self):
        torch.manual_seed(0)
        scores, features = torch.randn(20), torch.randn(20, 8)
        for selector in modeling_visionselector.SELECTORS:
            if selector == "random":
                continue
            kept = select_tokens(scores, [12, 8], [3, 2], selector, features=features, grids=[(1, 3, 4), (1, 2, 4)])
            assert [len(k) for k in kept] == [3, 2]
            assert all(torch.equal(k, k.sort().values) for k in kept)
        assert torch.equal(select_tokens(scores, [20], [4])[0], torch.topk(scores, 4).indices.sort().values)

    @pytest.mark.parametrize("kept", [[0, 2], [13, 2], [3]])
    def test_a_bad_count_is_refused(self, kept):
        with pytest.raises(ValueError, match="`kept`"):
            select_tokens(torch.randn(20), [12, 8], kept)

    def test_a_selector_that_reads_features_needs_them(self):
        with pytest.raises(ValueError, match="`features`"):
            select_tokens(torch.randn(20), [20], [4], "divprune")
