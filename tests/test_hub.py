"""Scorer-only publishing, its loading (plain and as remote code), and the import of the paper's checkpoints.

No network: conftest sets HF_HUB_OFFLINE=1 and a temporary HF_HOME / HF_MODULES_CACHE before transformers is
imported. "The Hub" is a local folder; pushes go to an `HfApi` double that records the calls and keeps a copy of
the folder it was asked to upload.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers.dynamic_module_utils as dynamic_module_utils
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

from conftest import build_inputs
from modeling_visionselector import VisionSelectorConfig, VisionSelectorForConditionalGeneration
from visionselector.publishing import (
    SCORER_WEIGHTS_NAME,
    convert_checkpoint_to_scorer,
    push_scorer_to_hub,
    results_table,
    save_scorer,
)
from visionselector.hub import main as hub_main

SCORER_KEYS = {f"scorer.{p}_proj.{w}" for p in "qk" for w in ("weight", "bias")}
RESULTS = [
    {"retention": "100%", "MME": 2310.5, "TextVQA": 84.9},
    {"retention": "30%", "MME": 2298.25, "TextVQA": 83.1},
    {"retention": "10%", "MME": 2201.0, "TextVQA": 77.02},
]
GENERATE = dict(retention_ratio=0.3, max_new_tokens=4, do_sample=False)


def assert_same_tensors(expected: dict, actual: dict):
    assert set(actual) == set(expected)
    different = [name for name, value in expected.items() if not torch.equal(value, actual[name])]
    assert not different, different


def scores(model, inputs):
    selection = model.select_visual_tokens(inputs["pixel_values"], inputs["image_grid_thw"], retention_ratio=0.3)
    return torch.cat(selection.scores)


class RecordingApi:
    """An `HfApi` double: records every call; `upload_folder` keeps a copy of the folder it would upload."""

    def __init__(self, upload_copy: Path):
        self.calls = []
        self.upload_copy = upload_copy

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, self.upload_copy)
        return "commit"


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base_dir(stock_model, tmp_path_factory):
    """The "official backbone": the tiny stock model saved as the Hub would hold it."""
    folder = tmp_path_factory.mktemp("Qwen2.5-VL-tiny")
    stock_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(base_dir):
    """A VisionSelector on `base_dir` whose scorer is not at its initial value (as after training)."""
    torch.manual_seed(5)
    model = VisionSelectorForConditionalGeneration.from_backbone(str(base_dir)).eval()
    with torch.no_grad():
        for parameter in model.scorer.parameters():
            parameter.normal_()
    return model


@pytest.fixture(scope="module")
def scorer_dir(trained, processor, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scorer")
    save_scorer(trained, folder, processor=processor, results=RESULTS, repo_id="me/VisionSelector-tiny")
    return folder


@pytest.fixture(scope="module")
def image_inputs(processor):
    return build_inputs(processor, [[("image", 56, 84)], [("image", 84, 56)]])


@pytest.fixture(scope="module")
def official_dir(stock_model, processor, tmp_path_factory):
    """A tiny checkpoint in the layout of the paper's releases (transformers 4.5x): flat `qwen2_5_vl` config,
    `visual.*`, `model.layers.*`, `model.embed_tokens.*`, `lm_head.*`, scorer at `visual.importance_scorer.*`."""
    folder = tmp_path_factory.mktemp("VisionSelector-Qwen2.5-VL-tiny")
    stock_model.save_pretrained(folder)
    processor.save_pretrained(folder)
    tensors = load_file(folder / "model.safetensors")
    assert {name.split(".")[0] for name in tensors} == {"visual", "model", "lm_head"}
    assert any(name.startswith("model.layers.") for name in tensors)
    generator = torch.Generator().manual_seed(7)
    hidden = stock_model.config.text_config.hidden_size
    for projection in ("q_proj", "k_proj"):
        tensors[f"visual.importance_scorer.{projection}.weight"] = torch.randn(hidden // 2, hidden, generator=generator)
        tensors[f"visual.importance_scorer.{projection}.bias"] = torch.randn(hidden // 2, generator=generator)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(legacy_config_dict(stock_model.config), indent=2))
    return folder


def legacy_config_dict(config) -> dict:
    """A v5 Qwen2.5-VL config written as transformers 4.5x wrote it: text fields flat, `rope_scaling` mRoPE."""
    text = config.text_config.to_dict()
    rope = text.pop("rope_parameters")
    flat = {key: text[key] for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "bos_token_id",
        "eos_token_id", "pad_token_id", "sliding_window", "use_sliding_window", "max_window_layers",
    )}
    vision = {key: value for key, value in config.vision_config.to_dict().items() if key not in ("rope_parameters", "dtype")}
    vision["model_type"] = "qwen2_5_vl"  # as in the 4.5x releases
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        **flat,
        "rope_theta": rope["rope_theta"],
        "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
        "vision_config": vision,
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        "vision_start_token_id": config.vision_start_token_id,
        "vision_end_token_id": config.vision_end_token_id,
        "tie_word_embeddings": config.tie_word_embeddings,
        "torch_dtype": "float32",
        "transformers_version": "4.51.3",
    }


class TestScorerArtifact:
    """What `save_scorer` writes."""

    def test_scorer_folder_holds_the_scorer_code_config_processor_and_card(self, scorer_dir):
        files = {path.name for path in scorer_dir.iterdir()}
        shipped_code = {
            Path(name).name
            for name in dynamic_module_utils.get_relative_import_files(scorer_dir / "modeling_visionselector.py")
        }
        assert {"config.json", SCORER_WEIGHTS_NAME, "README.md", "modeling_visionselector.py"} <= files
        assert {"configuration_visionselector.py", "scoring.py"} <= shipped_code <= files
        assert "hub_utils.py" not in files  # publishing code is not remote code
        assert {"processor_config.json", "tokenizer.json"} <= files or "preprocessor_config.json" in files
        assert not [name for name in files if name.startswith("model") and name.endswith(".safetensors")]

        config = json.loads((scorer_dir / "config.json").read_text())
        assert config["scorer_only"] is True
        assert config["base_model_name_or_path"] and Path(config["base_model_name_or_path"]).is_dir()
        assert config["architectures"] == ["VisionSelectorQwen2_5_VLForConditionalGeneration"]
        assert config["auto_map"] == {
            "AutoConfig": "configuration_visionselector.VisionSelectorQwen2_5_VLConfig",
            "AutoModel": "modeling_visionselector.VisionSelectorQwen2_5_VLForConditionalGeneration",
            "AutoModelForImageTextToText": "modeling_visionselector.VisionSelectorQwen2_5_VLForConditionalGeneration",
            "AutoModelForVision2Seq": "modeling_visionselector.VisionSelectorQwen2_5_VLForConditionalGeneration",
        }

    def test_scorer_safetensors_holds_no_backbone_tensor(self, scorer_dir, trained):
        with safe_open(scorer_dir / SCORER_WEIGHTS_NAME, "pt") as handle:
            assert set(handle.keys()) == SCORER_KEYS
        tensors = load_file(scorer_dir / SCORER_WEIGHTS_NAME)
        assert_same_tensors({k: v for k, v in trained.state_dict().items() if k in SCORER_KEYS}, tensors)

    def test_model_card_has_metadata_usage_and_results(self, scorer_dir, base_dir):
        card = ModelCard.load(scorer_dir / "README.md")
        assert card.data.base_model == str(base_dir)
        assert card.data.library_name == "transformers"
        assert card.data.pipeline_tag == "image-text-to-text"
        assert card.data.license == "apache-2.0"
        assert "visionselector" in card.data.tags
        assert 'AutoModel.from_pretrained("me/VisionSelector-tiny", trust_remote_code=True' in card.text
        assert "| retention | MME | TextVQA |" in card.text
        assert "| 30% | 2298.25 | 83.1 |" in card.text
        assert "| 10% | 2201 | 77.02 |" in card.text
        size_kb = (scorer_dir / SCORER_WEIGHTS_NAME).stat().st_size / 1e3
        assert f"(`scorer.safetensors`, {size_kb:.1f} kB)" in card.text and "1,056 trained parameters" in card.text

    def test_results_table_reads_rows_json_csv_and_markdown(self, tmp_path):
        expected = results_table(RESULTS)
        (tmp_path / "rows.json").write_text(json.dumps(RESULTS))
        (tmp_path / "object.json").write_text(json.dumps({"model": "x", "results": RESULTS}))
        (tmp_path / "table.md").write_text(expected + "\n")
        (tmp_path / "table.csv").write_text("retention,MME\n30%,2298.25\n")
        assert results_table(tmp_path / "rows.json") == expected
        assert results_table(tmp_path / "object.json") == expected
        assert results_table(tmp_path / "table.md") == expected
        assert results_table(tmp_path / "table.csv").splitlines()[2] == "| 30% | 2298.25 |"
        for bad in ([], {"retention": 0.3}, [1, 2], tmp_path / "table.txt"):
            with pytest.raises(ValueError, match="results"):
                results_table(bad)

    def test_save_scorer_needs_the_base_model(self, stock_model, tmp_path):
        model = VisionSelectorForConditionalGeneration.from_backbone(stock_model)
        model.config.base_model_name_or_path = None
        with pytest.raises(ValueError, match="base_model_name_or_path"):
            save_scorer(model, tmp_path)
        with pytest.raises(ValueError, match="base_model_name_or_path"):
            VisionSelectorConfig(scorer_only=True)


def full_checkpoint_names(folder: Path) -> set:
    with safe_open(folder / "model.safetensors", "pt") as handle:
        return set(handle.keys())


class TestLoadingTheArtifact:
    """A scorer-only artifact loads back, plain and as remote code."""

    def test_from_pretrained_assembles_backbone_and_scorer(self, scorer_dir, trained, image_inputs):
        loaded = VisionSelectorForConditionalGeneration.from_pretrained(scorer_dir)
        assert_same_tensors(trained.state_dict(), loaded.state_dict())
        assert loaded.config.scorer_only is False  # a save_pretrained of it is a full checkpoint
        assert loaded.config.name_or_path == str(scorer_dir)
        assert torch.equal(scores(loaded, image_inputs), scores(trained, image_inputs))
        assert torch.equal(loaded.generate(**image_inputs, **GENERATE), trained.generate(**image_inputs, **GENERATE))

    def test_remote_code_loads_a_scorer_only_folder_offline(self, scorer_dir, trained, image_inputs, monkeypatch):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        modules_cache = Path(dynamic_module_utils.HF_MODULES_CACHE).resolve()
        assert "visionselector-hf-modules" in str(modules_cache) or "tmp" in str(modules_cache), modules_cache
        for auto_class in (AutoModel, AutoModelForImageTextToText):
            loaded = auto_class.from_pretrained(scorer_dir, trust_remote_code=True)
            assert type(loaded).__name__ == "VisionSelectorQwen2_5_VLForConditionalGeneration"
            assert type(loaded).__module__.startswith("transformers_modules"), type(loaded).__module__
            assert_same_tensors(trained.state_dict(), loaded.state_dict())
        assert torch.equal(scores(loaded, image_inputs), scores(trained, image_inputs))
        assert torch.equal(loaded.generate(**image_inputs, **GENERATE), trained.generate(**image_inputs, **GENERATE))

        processor = AutoProcessor.from_pretrained(scorer_dir)
        assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == trained.config.image_token_id

    def test_config_overrides_and_dtype_reach_a_scorer_only_load(self, scorer_dir, trained):
        loaded = VisionSelectorForConditionalGeneration.from_pretrained(scorer_dir, retention_ratio=0.5, dtype=torch.bfloat16)
        assert loaded.config.retention_ratio == 0.5
        assert loaded.dtype == torch.bfloat16 and loaded.scorer.q_proj.weight.dtype == torch.bfloat16
        assert torch.equal(loaded.scorer.q_proj.weight, trained.scorer.q_proj.weight.to(torch.bfloat16))

    def test_full_checkpoint_of_an_assembled_model_round_trips(self, scorer_dir, trained, tmp_path):
        loaded = VisionSelectorForConditionalGeneration.from_pretrained(scorer_dir)
        loaded.save_pretrained(tmp_path)
        assert json.loads((tmp_path / "config.json").read_text())["scorer_only"] is False
        assert {name for name in full_checkpoint_names(tmp_path) if "scorer" in name} == SCORER_KEYS
        again = VisionSelectorForConditionalGeneration.from_pretrained(tmp_path)
        assert_same_tensors(trained.state_dict(), again.state_dict())

    def test_full_checkpoints_keep_the_scorer_at_scorer_however_the_model_was_made(self, trained, stock_model, official_dir, tmp_path
    ):
        """The stock layout for the backbone and `scorer.*` for the scorer: from memory, from a backbone folder, from the
        paper's layout, and from a scorer-only artifact; each round-trips with every tensor equal."""
        models = {
            "from_backbone(path)": trained,
            "from_backbone(model)": VisionSelectorForConditionalGeneration.from_backbone(stock_model),
            "paper's checkpoint": VisionSelectorForConditionalGeneration.from_pretrained(official_dir),
        }
        for label, model in models.items():
            folder = tmp_path / label
            model.save_pretrained(folder)
            names = full_checkpoint_names(folder)
            assert {name for name in names if "scorer" in name} == SCORER_KEYS, label
            assert {name.split(".")[0] for name in names} == {"visual", "model", "lm_head", "scorer"}, label
            loaded = VisionSelectorForConditionalGeneration.from_pretrained(folder)
            assert_same_tensors(model.state_dict(), loaded.state_dict())

    def test_a_scorer_for_another_width_is_a_clear_error(self, scorer_dir, tmp_path):
        folder = tmp_path / "scorer"
        shutil.copytree(scorer_dir, folder)
        wrong = {name: torch.zeros(8, 32) if name.endswith("weight") else torch.zeros(8) for name in SCORER_KEYS}
        save_file(wrong, folder / SCORER_WEIGHTS_NAME)
        with pytest.raises(ValueError, match=r"scorer.q_proj.weight: \(8, 32\) given, \(16, 32\) expected"):
            VisionSelectorForConditionalGeneration.from_pretrained(folder)

        extra = {**load_file(scorer_dir / SCORER_WEIGHTS_NAME), "lm_head.weight": torch.zeros(128, 32)}
        save_file(extra, folder / SCORER_WEIGHTS_NAME)
        with pytest.raises(ValueError, match="must hold exactly the tensors"):
            VisionSelectorForConditionalGeneration.from_pretrained(folder)

    @pytest.mark.parametrize("loader", ["class", "auto_model"])
    def test_a_full_checkpoint_whose_scorer_has_another_width_is_a_clear_error(self, trained, tmp_path, loader):
        trained.save_pretrained(tmp_path / "full")
        config = json.loads((tmp_path / "full" / "config.json").read_text())
        config["scorer_hidden_size"] = 8  # the weights are 16 wide
        (tmp_path / "full" / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=r"scorer.q_proj.weight: \(16, 32\) given, \(8, 32\) expected"):
            if loader == "class":
                VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "full")
            else:
                AutoModel.from_pretrained(tmp_path / "full", trust_remote_code=True)
        # asked for, a mismatched scorer loads freshly initialised, as in the stock `from_pretrained`
        model = VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "full", ignore_mismatched_sizes=True)
        assert model.scorer.q_proj.weight.shape == (8, 32)


class TestPushing:
    """Pushes to an `HfApi` double."""

    def test_push_uploads_the_artifact_in_one_commit(self, trained, processor, tmp_path, image_inputs):
        api = RecordingApi(tmp_path / "uploaded")
        with pytest.warns(UserWarning, match="local folder"):  # the tiny backbone is not on the Hub
            commit = push_scorer_to_hub(
                trained, "me/VisionSelector-tiny", private=True, revision="v1", commit_message="Scorer at 20%",
                processor=processor, results=RESULTS, api=api,
            )
        assert commit == "commit"
        assert [call[0] for call in api.calls] == ["create_repo", "create_branch", "upload_folder"]
        assert api.calls[0] == ("create_repo", "me/VisionSelector-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
        assert api.calls[1][2] == {"branch": "v1", "exist_ok": True, "repo_type": "model"}
        upload = api.calls[2][2]
        assert upload["revision"] == "v1" and upload["commit_message"] == "Scorer at 20%" and not upload["create_pr"]

        uploaded = api.upload_copy
        assert 'AutoModel.from_pretrained("me/VisionSelector-tiny"' in (uploaded / "README.md").read_text()
        loaded = AutoModel.from_pretrained(uploaded, trust_remote_code=True)
        assert_same_tensors(trained.state_dict(), loaded.state_dict())
        assert torch.equal(loaded.generate(**image_inputs, **GENERATE), trained.generate(**image_inputs, **GENERATE))

    def test_push_defaults_and_pull_requests(self, trained, tmp_path):
        api = RecordingApi(tmp_path / "uploaded")
        with pytest.warns(UserWarning, match="local folder"):
            push_scorer_to_hub(trained, "me/x", create_pr=True, api=api)
        assert [call[0] for call in api.calls] == ["create_repo", "upload_folder"]  # a PR needs no branch
        assert api.calls[0][2]["private"] is None
        upload = api.calls[1][2]
        assert upload["create_pr"] is True and upload["revision"] is None
        assert upload["commit_message"].startswith("Upload VisionSelector scorer for ")


class TestPaperCheckpoints:
    """Import of the paper's checkpoints."""

    def test_papers_checkpoint_loads_its_scorer_and_every_backbone_tensor(self, official_dir, stock_model):
        planted = load_file(official_dir / "model.safetensors")
        loaded = VisionSelectorForConditionalGeneration.from_pretrained(official_dir)
        assert type(loaded.config) is VisionSelectorConfig
        assert loaded.config.scorer_hidden_size == stock_model.config.text_config.hidden_size // 2
        state = loaded.state_dict()
        for name in SCORER_KEYS:
            assert torch.equal(state[name], planted[f"visual.importance_{name}"]), name
        backbone = stock_model.state_dict()
        assert set(state) - set(backbone) == SCORER_KEYS
        assert_same_tensors(backbone, {name: value for name, value in state.items() if name in backbone})

    def test_converter_writes_the_papers_scorer_as_a_scorer_only_artifact(self, official_dir, base_dir, tmp_path, image_inputs):
        with pytest.raises(ValueError, match="base_model_name_or_path"):
            convert_checkpoint_to_scorer(official_dir, tmp_path / "no-base")
        folder = convert_checkpoint_to_scorer(official_dir, tmp_path / "scorer", base_model_name_or_path=str(base_dir))
        with safe_open(folder / SCORER_WEIGHTS_NAME, "pt") as handle:
            assert set(handle.keys()) == SCORER_KEYS
        assert (folder / "tokenizer.json").is_file()  # the checkpoint's processor ships with it

        full = VisionSelectorForConditionalGeneration.from_pretrained(official_dir)
        assembled = AutoModel.from_pretrained(folder, trust_remote_code=True)
        assert_same_tensors(full.state_dict(), assembled.state_dict())
        assert torch.equal(scores(assembled, image_inputs), scores(full, image_inputs))

    def test_cli_save_and_push(self, official_dir, base_dir, tmp_path):
        results = tmp_path / "results.json"
        results.write_text(json.dumps(RESULTS))
        out = tmp_path / "scorer"
        code = hub_main(["save", "--checkpoint", str(official_dir), "--base_model", str(base_dir),
                         "--output_dir", str(out), "--results", str(results), "--tags", "tiny", "--processor", "none"])
        assert code == 0
        assert (out / SCORER_WEIGHTS_NAME).is_file() and not (out / "tokenizer.json").exists()
        card = ModelCard.load(out / "README.md")
        assert "tiny" in card.data.tags and "| 30% | 2298.25 | 83.1 |" in card.text

        api = RecordingApi(tmp_path / "uploaded")
        with pytest.warns(UserWarning, match="local folder"):
            code = hub_main(["push", "--checkpoint", str(official_dir), "--base_model", str(base_dir),
                             "--repo_id", "me/y", "--private", "--revision", "dev", "--commit_message", "hello"], api=api)
        assert code == 0
        assert api.calls[0][2]["private"] is True and api.calls[-1][2]["commit_message"] == "hello"
        assert {SCORER_WEIGHTS_NAME, "config.json", "README.md"} <= {p.name for p in api.upload_copy.iterdir()}
        assert hub_main([]) == 2

    def test_the_old_import_paths_of_the_publishing_functions_warn_and_still_work(self, monkeypatch):
        import importlib
        import sys

        import modeling_visionselector
        from visionselector import publishing

        monkeypatch.delitem(sys.modules, "modeling_visionselector.hub_utils", raising=False)
        with pytest.warns(FutureWarning, match="moved to `visionselector.publishing`"):
            old = importlib.import_module("modeling_visionselector.hub_utils")
        assert {name: getattr(old, name) for name in publishing.__all__} == {
            name: getattr(publishing, name) for name in publishing.__all__
        }
        for name in ("save_scorer", "push_scorer_to_hub", "convert_checkpoint_to_scorer", "scorer_state_dict"):
            with pytest.warns(FutureWarning, match=f"visionselector.publishing.{name}"):
                assert getattr(modeling_visionselector, name) is getattr(publishing, name)
        with pytest.raises(AttributeError, match="no_such_name"):
            modeling_visionselector.no_such_name
