"""One code repository for all scorers: artifacts whose `auto_map` points at shared code instead of shipping a copy.

No network: the "code repository" and the backbone are local folders; transformers resolves an `auto_map` reference
`"<repo>--module.Class"` with a local folder as it does a Hub id (`tests/test_stock_contract.py` pins the parsing).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from conftest import build_inputs
from modeling_visionselector import VisionSelectorForConditionalGeneration
from visionselector.hub import main as hub_main
from visionselector.publishing import code_files, push_code_to_hub, push_scorer_to_hub, save_code, save_scorer

GENERATE = dict(retention_ratio=0.3, max_new_tokens=4, do_sample=False)


class RecordingApi:
    """An `HfApi` double: records the calls; `upload_folder` keeps a copy of the folder it would upload."""

    def __init__(self, upload_copy: Path):
        self.calls, self.upload_copy = [], upload_copy

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id))
        shutil.copytree(folder_path, self.upload_copy)
        return "commit"


@pytest.fixture(scope="module")
def trained(stock_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("backbone")
    stock_model.save_pretrained(base)
    torch.manual_seed(5)
    model = VisionSelectorForConditionalGeneration.from_backbone(str(base)).eval()
    with torch.no_grad():
        for parameter in model.scorer.parameters():
            parameter.normal_()
    return model


@pytest.fixture(scope="module")
def code_dir(tmp_path_factory):
    return save_code(tmp_path_factory.mktemp("visionselector_code"))


def auto_map(folder) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())["auto_map"]


def test_the_code_repository_holds_the_remote_code_files(code_dir):
    assert sorted(p.name for p in code_dir.glob("*.py")) == sorted(code_files())
    assert "configuration_visionselector.py" in code_files() and "compatibility.py" in code_files()
    assert "trust_remote_code" in (code_dir / "README.md").read_text()


def test_a_scorer_pointing_at_the_code_repository_ships_no_code_and_loads_from_it(trained, code_dir, processor, tmp_path):
    artifact = save_scorer(trained, tmp_path / "scorer", processor=processor, code_repo=str(code_dir))
    assert not list(artifact.glob("*.py"))
    references = auto_map(artifact)
    assert set(references) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoModelForVision2Seq"}
    assert references["AutoConfig"] == f"{code_dir}--configuration_visionselector.VisionSelectorQwen2_5_VLConfig"
    assert references["AutoModel"] == f"{code_dir}--modeling_visionselector.VisionSelectorQwen2_5_VLForConditionalGeneration"
    assert f"`{code_dir}`" in (artifact / "README.md").read_text()

    loaded = AutoModel.from_pretrained(artifact, trust_remote_code=True).eval()
    assert type(loaded).__module__.startswith(f"transformers_modules.{code_dir.name}.")  # the shared code's module
    inputs = build_inputs(processor, [[("image", 56, 84)], [("image", 84, 56)]])
    assert torch.equal(loaded.generate(**inputs, **GENERATE), trained.generate(**inputs, **GENERATE))


def test_by_default_a_scorer_ships_its_own_code(trained, tmp_path):
    artifact = save_scorer(trained, tmp_path / "scorer")
    assert sorted(p.name for p in artifact.glob("*.py")) == sorted(code_files())
    assert auto_map(artifact)["AutoModel"] == "modeling_visionselector.VisionSelectorQwen2_5_VLForConditionalGeneration"


@pytest.mark.parametrize(
    "code_repo,match",
    [
        ("me/visionselector--code", "cannot contain '--'"),
        ("visionselector-code", "must be a Hub id"),
        ("./not/a/folder", "must be a Hub id"),
        ("EMPTY", "lacks the code files"),
    ],
)
def test_a_code_repository_that_cannot_work_is_a_clear_error(trained, tmp_path, code_repo, match):
    if code_repo == "EMPTY":
        code_repo = str(tmp_path / "empty")
        Path(code_repo).mkdir()
    with pytest.raises(ValueError, match=match):
        save_scorer(trained, tmp_path / "scorer", code_repo=code_repo)


def test_push_points_at_a_hub_code_repository_and_push_code_uploads_the_code(trained, code_dir, tmp_path):
    api = RecordingApi(tmp_path / "uploaded")
    hub = dict(base_model_name_or_path="Qwen/Qwen2.5-VL-3B-Instruct")  # no warning about a local backbone
    push_scorer_to_hub(trained, "me/scorer", api=api, code_repo="me/visionselector-code", **hub)
    assert not list((tmp_path / "uploaded").glob("*.py"))
    assert auto_map(tmp_path / "uploaded")["AutoModel"] == (
        "me/visionselector-code--modeling_visionselector.VisionSelectorQwen2_5_VLForConditionalGeneration"
    )
    with pytest.warns(UserWarning, match="points at the local folder .* for its code"):
        push_scorer_to_hub(trained, "me/scorer", api=RecordingApi(tmp_path / "local"), code_repo=str(code_dir), **hub)

    code_api = RecordingApi(tmp_path / "code")
    push_code_to_hub("me/visionselector-code", api=code_api)
    assert code_api.calls == [("create_repo", "me/visionselector-code"), ("upload_folder", "me/visionselector-code")]
    assert sorted(p.name for p in (tmp_path / "code").glob("*.py")) == sorted(code_files())
    assert "me/visionselector-code--modeling_visionselector" in (tmp_path / "code" / "README.md").read_text()


def test_cli_code_repository_commands(trained, tmp_path):
    trained.save_pretrained(tmp_path / "full")
    assert hub_main(["save-code", "--output_dir", str(tmp_path / "code")]) == 0
    assert sorted(p.name for p in (tmp_path / "code").glob("*.py")) == sorted(code_files())
    command = ["save", "--checkpoint", str(tmp_path / "full"), "--processor", "none", "--output_dir"]
    assert hub_main([*command, str(tmp_path / "scorer"), "--code_repo", "me/visionselector-code"]) == 0
    assert auto_map(tmp_path / "scorer")["AutoConfig"].startswith("me/visionselector-code--")
    assert not list((tmp_path / "scorer").glob("*.py"))
    api = RecordingApi(tmp_path / "uploaded")
    assert hub_main(["push-code", "--repo_id", "me/visionselector-code", "--private"], api=api) == 0
    assert sorted(p.name for p in (tmp_path / "uploaded").glob("*.py")) == sorted(code_files())
