"""The stock transformers internals the remote code relies on, pinned for every family, and the version policy.

When a new transformers release breaks VisionSelector, one of these tests names the internal that changed: a
signature (`get_rope_index`, `get_image_features` / `get_video_features`, `forward`, `generate`), an output field
(`pooler_output`, `deepstack_features`, `logits`), what the stock forward and `generate` do with pre-encoded features
(`mm_encoder_outputs`) and given positions, or the checkpoint-renaming API. The second half checks the remote code's
answer to a changed internal (a `StockInternalError` naming it and the installed version) and to the installed
version (an `ImportError` below the floor, one warning above the tested range).
"""

import inspect
import warnings

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModel, GenerationConfig, GenerationMixin, PreTrainedModel

from conftest import build_inputs
from modeling_visionselector import VISIONSELECTOR_CLASSES, StockInternalError, VisionSelectorForConditionalGeneration
from modeling_visionselector.compatibility import MIN_TRANSFORMERS, TESTED_TRANSFORMERS, UNTESTED_TRANSFORMERS
from visionselector.tiny import tiny_model, tiny_processor

FAMILIES = sorted(VISIONSELECTOR_CLASSES)


def named_parameters(function) -> set[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds}


_SETUPS = {}


def setup(family: str):
    """(stock model, processor inputs of two left-padded rows with images and a video), built once per family."""
    if family not in _SETUPS:
        patch = 16 if family.startswith("qwen3") else 14
        processor = tiny_processor(min_pixels=(2 * patch) ** 2, max_pixels=(8 * patch) ** 2, family=family)
        side = lambda n: 2 * patch * n  # noqa: E731  (pixels of n merged tokens)
        samples = [[("image", side(2), side(3)), ("video", 4, side(2), side(2))], [("image", side(1), side(2))]]
        _SETUPS[family] = tiny_model(family, seed=0), build_inputs(processor, samples, padding_side="left")
    return _SETUPS[family]


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


# ---------------------------------------------------------------------------------------------------- signatures


def test_the_classes_and_attributes_the_remote_code_uses(family):
    stock_class = VISIONSELECTOR_CLASSES[family].stock_class
    stock, _ = setup(family)
    assert type(stock) is stock_class and isinstance(stock, GenerationMixin)
    for name in ("get_rope_index", "get_image_features", "get_video_features", "visual", "language_model"):
        assert hasattr(stock.model, name), f"{type(stock.model).__name__}.{name}"
    assert "rope_deltas" in vars(stock.model), f"{type(stock.model).__name__}.rope_deltas"
    for name in ("image_token_id", "video_token_id"):
        assert isinstance(getattr(stock.config, name), int)
    assert isinstance(stock.config.vision_config.spatial_merge_size, int)
    assert isinstance(stock.config.text_config.hidden_size, int)
    assert stock._supports_mm_encoder_outputs()


def test_get_rope_index_signature(family):
    stock, _ = setup(family)
    expected = {"input_ids", "mm_token_type_ids", "image_grid_thw", "video_grid_thw", "attention_mask"}
    if family == "qwen2_5_vl":
        expected.add("second_per_grid_ts")
    assert expected <= named_parameters(stock.model.get_rope_index)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_get_features_signature(family, kind):
    stock, _ = setup(family)
    parameters = list(inspect.signature(getattr(stock.model, f"get_{kind}_features")).parameters)
    pixels = "pixel_values" if kind == "image" else "pixel_values_videos"
    assert parameters[:2] == [pixels, f"{kind}_grid_thw"]  # the remote code passes them by position


@pytest.mark.parametrize("owner", ["model", "model.model"])
def test_forward_signature(family, owner):
    stock, _ = setup(family)
    module = stock if owner == "model" else stock.model
    expected = {
        "input_ids", "attention_mask", "position_ids", "pixel_values", "pixel_values_videos", "image_grid_thw",
        "video_grid_thw", "mm_token_type_ids", "mm_encoder_outputs",
    }  # fmt: skip
    if owner == "model":
        expected.add("labels")
    parameters = named_parameters(module.forward)
    assert expected <= parameters
    # the cache goes through `**kwargs` under whichever name the release uses: one of these must be it
    assert {"cache", "past_key_values"} & parameters


def test_generate_signature_and_generation_config_fields():
    parameters = list(inspect.signature(GenerationMixin.generate).parameters)
    assert parameters[1] == "inputs"  # `generate(input_ids, ...)` binds the prompt to `inputs`
    assert {"generation_config", "assistant_model", "streamer"} <= set(parameters)
    assert inspect.signature(GenerationMixin.generate).parameters[parameters[-1]].kind is inspect.Parameter.VAR_KEYWORD
    config = GenerationConfig()
    for field in ("prefill_chunk_size", "max_new_tokens", "max_length", "min_length", "num_return_sequences"):
        assert hasattr(config, field), f"GenerationConfig.{field}"


def test_hub_kernels_api():
    """`from_backbone(<loaded model>)` gives the wrapped model the backbone's `use_kernels` with `set_use_kernels`."""
    assert isinstance(inspect.getattr_static(PreTrainedModel, "use_kernels"), property)
    assert list(inspect.signature(PreTrainedModel.set_use_kernels).parameters)[:3] == ["self", "use_kernels", "kernel_config"]


# ---------------------------------------------------------------------------------------------------- behaviour


def test_get_rope_index_returns_3d_positions_and_deltas(family):
    stock, inputs = setup(family)
    rope_inputs = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "attention_mask", "mm_token_type_ids")}
    if "second_per_grid_ts" in inputs:
        rope_inputs["second_per_grid_ts"] = inputs["second_per_grid_ts"]
    positions, deltas = stock.model.get_rope_index(inputs["input_ids"], **rope_inputs)
    batch, length = inputs["input_ids"].shape
    assert positions.shape == (3, batch, length)
    assert deltas.shape == (batch, 1)
    # the last token (text) has the same position on all three rows, after those of every visual token
    assert torch.equal(positions[:, :, -1], positions[:1, :, -1].expand(3, -1))
    assert torch.equal(positions[:, :, -1].amax(0), positions.amax(dim=(0, 2)))


@pytest.mark.parametrize("kind", ["image", "video"])
def test_get_features_returns_one_tensor_per_item(family, kind):
    stock, inputs = setup(family)
    pixels = inputs["pixel_values" if kind == "image" else "pixel_values_videos"]
    grid = inputs[f"{kind}_grid_thw"]
    with torch.no_grad():
        encoded = getattr(stock.model, f"get_{kind}_features")(pixels, grid, return_dict=True)
    lengths = (grid.prod(-1) // stock.config.vision_config.spatial_merge_size**2).tolist()
    hidden = stock.config.text_config.hidden_size
    assert [tuple(item.shape) for item in encoded.pooler_output] == [(n, hidden) for n in lengths]
    deepstack_layers = getattr(stock.config.vision_config, "deepstack_visual_indexes", None) or []
    if family in ("qwen3_vl", "qwen3_vl_moe"):  # Qwen3.5 has no deepstack
        assert len(deepstack_layers) > 0
        assert len(encoded.deepstack_features) == len(deepstack_layers)
        for layer in encoded.deepstack_features:
            assert [tuple(item.shape) for item in layer] == [(n, hidden) for n in lengths]
    else:
        assert getattr(encoded, "deepstack_features", None) is None


def pre_encoded(stock, inputs) -> dict:
    """`mm_encoder_outputs` as the remote code builds them: the stock encoder's per-item features, rewrapped."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

    outputs = {}
    for kind, pixels in (("image", "pixel_values"), ("video", "pixel_values_videos")):
        encoded = getattr(stock.model, f"get_{kind}_features")(inputs[pixels], inputs[f"{kind}_grid_thw"], return_dict=True)
        fields = {"pooler_output": tuple(encoded.pooler_output)}
        if getattr(encoded, "deepstack_features", None) is not None:
            fields["deepstack_features"] = [tuple(layer) for layer in encoded.deepstack_features]
            outputs[kind] = BaseModelOutputWithDeepstackFeatures(**fields)
        else:
            outputs[kind] = BaseModelOutputWithPooling(**fields)
    return outputs


def test_forward_takes_pre_encoded_features_and_returns_logits_and_loss(family):
    stock, inputs = setup(family)
    pixels = {k: inputs[k] for k in ("pixel_values", "pixel_values_videos")}
    rest = {k: v for k, v in inputs.items() if k not in pixels}
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with torch.no_grad():
        expected = stock(**inputs, labels=labels)
        ours = stock(**rest, labels=labels, mm_encoder_outputs=pre_encoded(stock, inputs))
    torch.testing.assert_close(ours.logits, expected.logits)
    torch.testing.assert_close(ours.loss, expected.loss)
    assert ours.logits.shape == (*inputs["input_ids"].shape, stock.config.text_config.vocab_size)


def test_generate_takes_pre_encoded_features_given_positions_and_rope_deltas(family):
    """What the remote code's `generate` hands the stock one: no pixels, 4-row positions, `model.rope_deltas` set."""
    stock, inputs = setup(family)
    rest = {k: v for k, v in inputs.items() if k not in ("pixel_values", "pixel_values_videos")}
    rope_inputs = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "attention_mask", "mm_token_type_ids")}
    positions, deltas = stock.model.get_rope_index(inputs["input_ids"], **rope_inputs)
    mask = inputs["attention_mask"]
    text_positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    expected = stock.generate(**inputs, **settings)
    for name in ("image_grid_thw", "video_grid_thw"):  # as the remote code does: the positions say it all
        rest.pop(name)
    with torch.no_grad():
        encoded = pre_encoded(stock, inputs)
    stock.model.rope_deltas = deltas
    ours = stock.generate(
        **rest, position_ids=torch.cat([text_positions[None], positions]), mm_encoder_outputs=encoded, **settings
    )
    assert torch.equal(ours, expected)


def test_checkpoint_renaming_api(family):
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    assert {"overwrite"} <= named_parameters(register_checkpoint_conversion_mapping)
    assert {"source_patterns", "target_patterns"} <= named_parameters(WeightRenaming)
    selector_class = VISIONSELECTOR_CLASSES[family]
    rules = get_checkpoint_conversion_mapping(selector_class.__name__)
    stock_rules = get_checkpoint_conversion_mapping(selector_class.stock_class.__name__) or get_checkpoint_conversion_mapping(family)
    assert list(map(repr, rules[1:])) == list(map(repr, stock_rules or []))  # copies: compared by value

    def load_name(name):
        for rule in rules:
            name, _ = rule.rename_source_key(name)
        return name

    assert load_name("visual.importance_scorer.q_proj.weight") == "scorer.q_proj.weight"  # the paper's layout
    assert load_name("scorer.k_proj.bias") == "scorer.k_proj.bias"
    on_disk = {"qwen2_vl": "visual.", "qwen2_5_vl": "visual."}.get(family, "model.visual.")
    assert load_name(f"{on_disk}blocks.0.norm1.weight") == "model.visual.blocks.0.norm1.weight"


def test_remote_code_reference_to_another_repository_is_resolved_by_name(monkeypatch):
    """A shared code repository: transformers reads `"org/repo--module.Class"` as repo `org/repo`, file `module.py`."""
    from transformers import dynamic_module_utils

    calls = []
    monkeypatch.setattr(dynamic_module_utils, "get_cached_module_file", lambda repo, file, **kwargs: calls.append((repo, file)) or "x.py")
    monkeypatch.setattr(dynamic_module_utils, "get_class_in_module", lambda name, module, **kwargs: name)
    name = dynamic_module_utils.get_class_from_dynamic_module(
        "org/visionselector-code--configuration_visionselector.VisionSelectorConfig", "me/scorer"
    )
    assert name == "VisionSelectorConfig" and calls == [("org/visionselector-code", "configuration_visionselector.py")]


@pytest.mark.parametrize("choice", ["default", "use_kernels=False", "USE_HUB_KERNELS=NO"])
def test_wrapped_and_stock_models_make_the_same_hub_kernel_choice(choice, tmp_path, monkeypatch):
    """transformers 5.25's `from_pretrained` applies Hub kernels by default; a model built from its config does not."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    tiny_model("qwen2_5_vl").save_pretrained(tmp_path)
    loading = {"use_kernels": False} if choice == "use_kernels=False" else {}
    if choice == "USE_HUB_KERNELS=NO":
        monkeypatch.setenv("USE_HUB_KERNELS", "NO")
    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, **loading)
    from_model = VisionSelectorForConditionalGeneration.from_backbone(stock)
    from_path = VisionSelectorForConditionalGeneration.from_backbone(str(tmp_path), **loading)
    assert from_model.use_kernels == from_path.use_kernels == stock.use_kernels
    if choice != "default":
        assert not stock.use_kernels


# ---------------------------------------------------------------------------------------------------- the remote code's answers


def test_a_changed_get_rope_index_is_named(model, make_inputs, monkeypatch):
    def get_rope_index(input_ids, image_grid_thw=None, video_grid_thw=None, attention_mask=None, **kwargs):
        raise AssertionError("not reached")

    monkeypatch.setattr(model.model, "get_rope_index", get_rope_index)
    inputs = make_inputs([[("image", 56, 56)]])
    with pytest.raises(StockInternalError, match=rf"Qwen2_5_VLModel.get_rope_index` takes no `mm_token_type_ids`.* transformers {transformers.__version__}"):
        model(**inputs)


def test_a_get_rope_index_of_another_shape_is_named(model, make_inputs, monkeypatch):
    stock_rope_index = model.model.get_rope_index

    def get_rope_index(input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None, attention_mask=None):
        return stock_rope_index(input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, attention_mask=attention_mask)[0]

    monkeypatch.setattr(model.model, "get_rope_index", get_rope_index)
    inputs = make_inputs([[("image", 56, 56)]])
    with pytest.raises(StockInternalError, match=r"get_rope_index` returned .*not the pair"):
        model(**inputs)


@pytest.mark.parametrize("field", ["pooler_output", "deepstack_features"])
def test_an_encoder_output_without_a_field_is_named(field, monkeypatch):
    family = "qwen3_vl" if field == "deepstack_features" else "qwen2_5_vl"
    stock, inputs = setup(family)
    model = VisionSelectorForConditionalGeneration.from_backbone(stock).eval()
    stock_features = model.model.get_image_features

    def get_image_features(pixel_values, image_grid_thw=None, **kwargs):
        encoded = stock_features(pixel_values, image_grid_thw, **kwargs)
        setattr(encoded, field, None)
        return encoded

    monkeypatch.setattr(model.model, "get_image_features", get_image_features)
    with pytest.raises(StockInternalError, match=rf"get_image_features` returned a \w+ without `{field}` in transformers"):
        model(**inputs)


def test_a_pooler_output_of_another_layout_is_named(model, make_inputs, monkeypatch):
    stock_features = model.model.get_image_features

    def get_image_features(pixel_values, image_grid_thw=None, **kwargs):
        encoded = stock_features(pixel_values, image_grid_thw, **kwargs)
        encoded.pooler_output = torch.cat(encoded.pooler_output)  # one tensor for all images
        return encoded

    monkeypatch.setattr(model.model, "get_image_features", get_image_features)
    with pytest.raises(StockInternalError, match=r"get_image_features` returned a `pooler_output` of shapes"):
        model(**make_inputs([[("image", 56, 56)], [("image", 56, 84)]]))


def test_a_forward_without_mm_encoder_outputs_is_named(model, make_inputs, monkeypatch):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, mm_token_type_ids=None, **kwargs):
        raise AssertionError("not reached")

    monkeypatch.setattr(type(model.model), "forward", forward)
    inputs = make_inputs([[("image", 56, 56)]])
    with pytest.raises(StockInternalError, match=r"Qwen2_5_VLModel.forward` takes no `mm_encoder_outputs`"):
        model.generate(**inputs, max_new_tokens=1)


# ---------------------------------------------------------------------------------------------------- versions


def save_checkpoint(folder):
    torch.manual_seed(0)
    model = VisionSelectorForConditionalGeneration.from_backbone(tiny_model("qwen2_5_vl"))
    model.save_pretrained(folder)
    return model


def test_the_tested_range_is_the_one_pyproject_declares():
    import pathlib
    import tomllib

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    pyproject = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
    (declared,) = [r for r in map(Requirement, pyproject["project"]["dependencies"]) if r.name == "transformers"]
    for release in ("5.19.9", "5.20.0", "5.25.0", "5.25.9", "5.26.0"):
        assert (release in declared.specifier) == (release in SpecifierSet(TESTED_TRANSFORMERS)), release
    installed = Version(Version(transformers.__version__).base_version)
    assert MIN_TRANSFORMERS <= installed < UNTESTED_TRANSFORMERS  # the suite runs inside the range


@pytest.mark.parametrize("installed", ["5.26.0", "6.0.0.dev0"])
def test_a_checkpoint_loads_and_generates_with_one_warning_above_the_tested_range(installed, tmp_path, make_inputs, monkeypatch):
    reference = save_checkpoint(tmp_path).eval()  # the folder's name is the module's: one per test
    inputs = make_inputs([[("image", 56, 84)], [("image", 28, 56)]])
    expected = reference.generate(**inputs, max_new_tokens=3, retention_ratio=0.5)
    monkeypatch.setattr(transformers, "__version__", installed)
    monkeypatch.delattr(transformers, "_visionselector_warned_untested_release", raising=False)  # once per process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
        AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    ours = [str(w.message) for w in caught if "VisionSelector was tested with" in str(w.message)]
    assert ours == [
        f"VisionSelector was tested with transformers {TESTED_TRANSFORMERS}; transformers {installed} is newer. It "
        "loads, and checks each transformers internal it relies on where it uses it: if this release changed one, "
        f"the error names it. Tested releases: `pip install 'transformers{TESTED_TRANSFORMERS}'`."
    ]
    assert type(model).__module__.startswith("transformers_modules.")  # the checkpoint's own code
    assert torch.equal(model.generate(**inputs, max_new_tokens=3, retention_ratio=0.5), expected)


@pytest.mark.parametrize("installed", ["5.20.0", "5.25.9"])
def test_no_warning_inside_the_tested_range(installed, tmp_path, monkeypatch):
    save_checkpoint(tmp_path)
    monkeypatch.setattr(transformers, "__version__", installed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    assert not [w for w in caught if "VisionSelector" in str(w.message)]


@pytest.mark.parametrize("installed", ["5.19.3", "4.57.1"])
def test_below_the_floor_the_checkpoint_refuses_to_import(installed, tmp_path, monkeypatch):
    save_checkpoint(tmp_path)
    monkeypatch.setattr(transformers, "__version__", installed)
    with pytest.raises(ImportError, match=rf"needs transformers >=5\.20\.0, but transformers {installed} is installed"):
        AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
