"""The command-line contract of every subcommand: a failure is one `error:` line and exit code 2, writes
nothing anywhere, and no command ever writes into one of its own inputs. Everything runs in process."""

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from modeling_visionselector import VisionSelectorForConditionalGeneration
from visionselector.publishing import save_scorer
from visionselector.cli import main as cli_main
from visionselector.hub import main as hub_main
from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root`, with a hash of each file's bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(root.rglob("*"))
    }


def assert_one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    # argparse names the top-level program for an option no subcommand knows
    assert len(lines) == 1 and lines[0].startswith((f"{command}: error:", f"{command.split()[0]}: error:")), err
    assert "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """`backbone/` (stock), `run/` (a full VisionSelector checkpoint of it) and `scorer/` (its scorer-only artifact)."""
    root = tmp_path_factory.mktemp("cli")
    tiny_qwen2_5_vl().save_pretrained(root / "backbone")
    tiny_processor().save_pretrained(root / "backbone")
    torch.manual_seed(0)
    model = VisionSelectorForConditionalGeneration.from_backbone(str(root / "backbone"))
    model.save_pretrained(root / "run")
    tiny_processor().save_pretrained(root / "run")
    save_scorer(model, root / "scorer", processor=tiny_processor())
    return root


class _NoUploads:
    def __getattr__(self, name):
        raise AssertionError(f"the Hub was called ({name}) by a command that should have failed first")


class TestHubCommandsNeverWriteIntoTheirInputs:
    """`save --checkpoint D --output_dir D` used to rewrite D's config; `merge --scorer A --output_dir A`
    rewrote A's config and then crashed, leaving a half-converted folder."""

    @pytest.mark.parametrize(
        "argv",
        [
            ["save", "--checkpoint", "{run}", "--output_dir", "{run}"],
            ["convert", "--checkpoint", "{run}", "--output_dir", "{run}"],
            ["save", "--checkpoint", "{run}", "--output_dir", "{run}/scorer"],
            ["save", "--checkpoint", "{run}", "--base_model", "{backbone}", "--output_dir", "{backbone}"],
            ["merge", "--scorer", "{scorer}", "--output_dir", "{scorer}"],
            ["merge", "--scorer", "{scorer}", "--output_dir", "{backbone}"],
        ],
        ids=["save-into-checkpoint", "convert-into-checkpoint", "save-inside-checkpoint", "save-into-backbone",
             "merge-into-scorer", "merge-into-backbone"],
    )
    def test_writing_into_an_input_is_refused_and_changes_nothing(self, folders, capsys, argv):
        before = snapshot(folders)
        argv = [arg.format(run=folders / "run", backbone=folders / "backbone", scorer=folders / "scorer") for arg in argv]
        assert hub_main(argv) == 2
        assert "overwrite the input" in assert_one_error_line(capsys, f"visionselector-hub {argv[0]}")
        assert snapshot(folders) == before

    def test_a_failure_midway_leaves_no_output_folder(self, folders, tmp_path, capsys):
        # the model card is written last; a results table that cannot be read fails it
        argv = ["save", "--checkpoint", str(folders / "run"), "--output_dir", str(tmp_path / "out"),
                "--results", str(tmp_path / "missing.json")]
        assert hub_main(argv) == 2
        assert_one_error_line(capsys, "visionselector-hub save")
        assert list(tmp_path.iterdir()) == []

    def test_success_writes_the_folder_and_leaves_no_staging_folder(self, folders, tmp_path):
        (tmp_path / "existing").mkdir()
        (tmp_path / "existing" / "notes.txt").write_text("kept")
        assert hub_main(["save", "--checkpoint", str(folders / "run"), "--output_dir", str(tmp_path / "existing")]) == 0
        assert hub_main(["merge", "--scorer", str(folders / "scorer"), "--output_dir", str(tmp_path / "merged")]) == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "merged"]
        assert (tmp_path / "existing" / "notes.txt").read_text() == "kept"
        assert (tmp_path / "existing" / "scorer.safetensors").is_file()
        VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "merged")


def _corrupted_copy(source: Path, target: Path, name: str) -> Path:
    target.mkdir()
    for path in source.iterdir():
        target.joinpath(path.name).write_bytes(path.read_bytes())
    weights = target / name
    weights.write_bytes(weights.read_bytes()[:100])
    return target


def _copy_with(source: Path, target: Path, name: str, text: str) -> Path:
    """A copy of folder `source` in which file `name` holds `text`."""
    target.mkdir()
    for path in source.iterdir():
        target.joinpath(path.name).write_bytes(path.read_bytes())
    target.joinpath(name).write_text(text)
    return target


# Malformed files of the inputs: each names the copy it is written into, the file and its text.
MALFORMED = {
    "list_config_run": ("run", "config.json", "[1, 2]"),
    "list_config_scorer": ("scorer", "config.json", "[1, 2]"),
    "invalid_config_scorer": ("scorer", "config.json", '{"model_type": "visionselector_qwen2_5_vl", "scorer_only": true, '
                              '"base_model_name_or_path": "a/b", "text_config": "x"}'),
    "no_weight_map_backbone": ("backbone", "model.safetensors.index.json", '{"metadata": {}}'),
    "list_index_backbone": ("backbone", "model.safetensors.index.json", "[1]"),
    "no_weight_map_run": ("run", "model.safetensors.index.json", '{"metadata": {}}'),
}


class TestHubCommandFailuresAreOneErrorLine:
    """Every `visionselector-hub` failure, malformed input files included, is one `error:` line with exit code 2 and writes nothing."""

    @pytest.mark.parametrize(
        "argv",
        [
            ["save", "--checkpoint", "{run}", "--output_dir", "{out}", "--no_such_option", "1"],
            ["convert", "--checkpoint", "{corrupt_run}", "--output_dir", "{out}"],
            ["save", "--checkpoint", "{tmp}/missing", "--output_dir", "{out}"],
            ["save", "--checkpoint", "{run}/config.json", "--output_dir", "{out}"],
            ["push", "--checkpoint", "{corrupt_run}", "--repo_id", "me/scorer"],
            ["push", "--checkpoint", "{tmp}/missing", "--repo_id", "me/scorer"],
            ["merge", "--scorer", "{run}", "--output_dir", "{out}"],
            ["merge", "--scorer", "{corrupt_scorer}", "--output_dir", "{out}"],
            ["merge", "--scorer", "{tmp}/missing", "--output_dir", "{out}"],
            ["merge", "--scorer", "{scorer}", "--output_dir", "{out}", "--base_model", "{tmp}/missing"],
            ["merge", "--scorer", "{scorer}", "--output_dir", "{out}", "--no_such_option", "1"],
            ["merge", "--scorer", "{list_config_scorer}", "--output_dir", "{out}"],
            ["merge", "--scorer", "{invalid_config_scorer}", "--output_dir", "{out}"],
            ["merge", "--scorer", "{scorer}", "--output_dir", "{out}", "--base_model", "{no_weight_map_backbone}"],
            ["merge", "--scorer", "{scorer}", "--output_dir", "{out}", "--base_model", "{list_index_backbone}"],
            ["save", "--checkpoint", "{list_config_run}", "--output_dir", "{out}"],
            ["save", "--checkpoint", "{no_weight_map_run}", "--output_dir", "{out}"],
            ["merge", "--scorer", "{scorer}"],
            ["upload", "--checkpoint", "{run}"],
        ],
    )
    def test_failure(self, folders, tmp_path, capsys, argv):
        paths = dict(run=folders / "run", scorer=folders / "scorer", tmp=tmp_path, out=tmp_path / "out")
        if any("corrupt_run" in arg for arg in argv):
            paths["corrupt_run"] = _corrupted_copy(folders / "run", tmp_path / "corrupt_run", "model.safetensors")
        if any("corrupt_scorer" in arg for arg in argv):
            paths["corrupt_scorer"] = _corrupted_copy(folders / "scorer", tmp_path / "corrupt_scorer", "scorer.safetensors")
        for key, (source, name, text) in MALFORMED.items():
            if any(key in arg for arg in argv):
                paths[key] = _copy_with(folders / source, tmp_path / key, name, text)
        argv = [arg.format(**paths) for arg in argv]
        before, inputs = snapshot(tmp_path), snapshot(folders)
        assert hub_main(argv, api=_NoUploads()) == 2
        assert_one_error_line(capsys, f"visionselector-hub {argv[0]}" if argv[0] != "upload" else "visionselector-hub")
        assert snapshot(tmp_path) == before and snapshot(folders) == inputs


@pytest.fixture
def images(tmp_path):
    Image.new("RGB", (56, 56), "red").save(tmp_path / "square.png")
    Image.new("RGB", (28 * 201, 28), "red").save(tmp_path / "strip.png")
    (tmp_path / "folder").mkdir()
    return tmp_path


class TestVisionSelectorCommandFailures:
    """Every `visionselector` failure is one `error:` line with exit code 2, checked before anything is written."""

    @pytest.mark.parametrize(
        "argv, message",
        [
            (["generate", "--image", "{tmp}/strip.png", "--prompt", "x"], "aspect ratio"),
            (["generate", "--image", "{tmp}/square.png", "--prompt", "what <|image_pad|> is"], "--prompt"),
            (["generate", "--image", "{tmp}/square.png", "--prompt", "x", "--show-kept", "{tmp}/folder"], "--show-kept"),
            (["generate", "--image", "{tmp}/square.png", "--prompt", "x", "--show-kept", "{tmp}/no/kept.png"], "does not exist"),
            (["generate", "--image", "{tmp}/square.png", "--prompt", "x", "--device", "bogus"], "--device 'bogus'"),
            (["generate", "--image", "{tmp}/folder", "--prompt", "x"], "is a folder"),
            (["generate", "--image", "{tmp}/square.png", "--prompt", "x", "--model", "{tmp}/square.png"], "is a file"),
            (["generate", "--image", "{tmp}/square.png", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
            (["generate", "--image", "{tmp}/square.png", "--prompt", "x", "--no-such-option"], "unrecognized"),
            (["demo", "--out", "{tmp}/folder"], "--out"),
            (["demo", "--samples", "0"], "--samples"),
            (["demo", "--out", "{tmp}/no/demo.png"], "does not exist"),
        ],
    )
    def test_visionselector_failures_are_one_error_line_and_write_nothing(self, images, capsys, argv, message):
        argv = [arg.format(tmp=images) for arg in argv]
        before = snapshot(images)
        assert cli_main(argv) == 2
        assert message in assert_one_error_line(capsys, f"visionselector {argv[0]}")
        assert capsys.readouterr().out == ""  # checked before anything is generated
        assert snapshot(images) == before

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
    def test_generate_on_a_missing_gpu_is_one_error_line(self, images, capsys):
        argv = ["generate", "--image", str(images / "square.png"), "--prompt", "x", "--device", "cuda"]
        assert cli_main(argv) == 2
        assert "not available" in assert_one_error_line(capsys, "visionselector generate")
