"""`visionselector-hub` on a locally trained run, as a user first meets it.

The artifact of a run whose backbone is a local folder loads from any directory; the package's own tools never ask
"Do you wish to run the custom code?"; their errors are one `error:` line naming the command-line flag; a backbone
that cannot be found is one clear error naming it.
"""

import builtins
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from modeling_visionselector import VisionSelectorForConditionalGeneration
from visionselector.hub import main as hub_main
from visionselector.publishing import save_scorer
from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl
from visionselector_training import load_visionselector


@pytest.fixture
def no_prompt(monkeypatch):
    """Fails the test if anything asked the user a question (transformers' remote-code prompt calls `input`; it
    swallows what `input` raises, so the questions are recorded and checked at the end)."""
    questions = []

    def record(prompt=""):
        questions.append(prompt)
        return "n"

    monkeypatch.setattr(builtins, "input", record)
    yield
    assert not questions, questions


@pytest.fixture
def local_run(tmp_path, monkeypatch):
    """In `tmp_path/work`: `backbone/` (a stock tiny model) and `run/`, a full save of a VisionSelector made from
    the relative path "backbone", as a locally trained run is; the current directory is `tmp_path/work`."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    tiny_qwen2_5_vl().save_pretrained("backbone")
    tiny_processor().save_pretrained("backbone")
    torch.manual_seed(3)
    model = VisionSelectorForConditionalGeneration.from_backbone("backbone")
    with torch.no_grad():
        model.scorer.k_proj.weight.normal_()
    model.save_pretrained("run")
    tiny_processor().save_pretrained("run")
    return work, model


def test_cli_save_of_a_local_run_loads_from_another_directory(local_run, tmp_path, monkeypatch, no_prompt):
    work, model = local_run
    assert hub_main(["save", "--checkpoint", "run", "--output_dir", "scorer"]) == 0  # the run's own processor
    config = json.loads((work / "scorer" / "config.json").read_text())
    assert config["base_model_name_or_path"] == str(work / "backbone")  # absolute
    assert (work / "scorer" / "tokenizer.json").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = AutoModel.from_pretrained(str(work / "scorer"), trust_remote_code=True)
    assert torch.equal(loaded.scorer.k_proj.weight, model.scorer.k_proj.weight)


def test_convert_does_not_prompt(local_run, no_prompt):
    assert hub_main(["convert", "--checkpoint", "run", "--output_dir", "converted"]) == 0
    assert (local_run[0] / "converted" / "scorer.safetensors").is_file()


def test_save_scorer_records_a_local_backbone_by_its_absolute_path(local_run):
    work, model = local_run
    assert model.config.base_model_name_or_path == "backbone"  # as `from_backbone` was given it
    folder = save_scorer(model, "artifact")
    assert json.loads((folder / "config.json").read_text())["base_model_name_or_path"] == str(work / "backbone")


def test_training_records_a_local_backbone_by_its_absolute_path(local_run):
    work, _ = local_run
    model = load_visionselector("backbone")
    assert model.config.base_model_name_or_path == str(work / "backbone")


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"visionselector-hub {command}: error: ")
    assert "Traceback" not in err[0]
    return err[0]


def test_cli_errors_are_one_line_naming_the_flag(tmp_path, capsys, no_prompt):
    # A checkpoint whose config names no backbone (as the paper's releases): the flag to pass is --base_model.
    stock = tmp_path / "stock-with-scorer"
    tiny_qwen2_5_vl().save_pretrained(stock)
    tensors = load_file(stock / "model.safetensors")
    hidden = 32
    for projection in ("q_proj", "k_proj"):
        tensors[f"visual.importance_scorer.{projection}.weight"] = torch.zeros(hidden // 2, hidden)
        tensors[f"visual.importance_scorer.{projection}.bias"] = torch.zeros(hidden // 2)
    save_file(tensors, stock / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    code = hub_main(["save", "--checkpoint", str(stock), "--output_dir", str(tmp_path / "out"), "--processor", "none"])
    assert code == 2
    line = _one_error_line(capsys, "save")
    assert "--base_model" in line and "base_model_name_or_path" not in line

    for missing in (str(tmp_path / "missing"), "missing-folder"):
        code = hub_main(["convert", "--checkpoint", missing, "--output_dir", str(tmp_path / "o")])
        assert code == 2
        assert f"--checkpoint '{missing}'" in _one_error_line(capsys, "convert")


def test_a_backbone_that_cannot_be_found_is_one_clear_error(tmp_path, monkeypatch):
    torch.manual_seed(0)
    tiny_qwen2_5_vl().save_pretrained(tmp_path / "backbone")
    model = VisionSelectorForConditionalGeneration.from_backbone(str(tmp_path / "backbone"))
    folder = save_scorer(model, tmp_path / "artifact")
    (tmp_path / "backbone").rename(tmp_path / "moved")
    with pytest.raises(ValueError, match=rf"backbone.*{tmp_path / 'backbone'}.*not.*folder"):
        VisionSelectorForConditionalGeneration.from_pretrained(folder)

    config = json.loads((folder / "config.json").read_text())
    config["base_model_name_or_path"] = "some-org/no-such-backbone"
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="backbone 'some-org/no-such-backbone'"):
        VisionSelectorForConditionalGeneration.from_pretrained(folder)
