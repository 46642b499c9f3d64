"""The `visionselector` model of lmms-eval, end to end through lmms-eval's own CLI (needs the `eval` extra).

The task `visionselector_shapes` (tests/lmms_eval_task: a task YAML read with `--include_path`, and a `datasets`
folder of held-out samples of `visionselector.tasks`) runs on the embedded checkpoint through
`benchmarks/paper_table.py`, which calls the lmms-eval CLI once per setting: r = 1.0, then the learned scorer and
random selection at r = 0.2. The accuracy lmms-eval reports, and every answer it logs, must equal what the
package's own batched `generate` gives on the same samples, counted with the task's own normalisation. lmms-eval
batches 8 requests and the package's count 12, so the seeded random selection must not depend on the batch size.

The plugin's loading paths (for every family: a full checkpoint and a scorer-only artifact through `AutoModel` with
remote code, a stock checkpoint with a training-free selector) are checked in process on tiny random models: the
plugin's answers to lmms-eval requests must be the package's own `generate` answers.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from visionselector.cli import EMBEDDED_CHECKPOINT  # noqa: E402
from visionselector.tiny import FAMILIES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASK_FOLDER = ROOT / "tests" / "lmms_eval_task"
TASK = "visionselector_shapes"
SAMPLES = 24
LMMS_EVAL_BATCH, OWN_BATCH = 8, 12
SEED = 0
MAX_NEW_TOKENS = 16  # the task yaml's
# paper_table.py's rows (selector, ratio) and the (selector, ratio) the model runs for each: r = 1.0 with `learned`
SETTINGS = {("full", 1.0): ("learned", 1.0), ("learned", 0.2): ("learned", 0.2), ("random", 0.2): ("random", 0.2)}


def load_task_utils():
    """tests/lmms_eval_task/utils.py, the module lmms-eval imports for the task's functions."""
    spec = importlib.util.spec_from_file_location("visionselector_shapes_utils", TASK_FOLDER / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_paper_table():
    spec = importlib.util.spec_from_file_location("paper_table", ROOT / "benchmarks" / "paper_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def offline_env(home: Path) -> dict:
    """The environment of the lmms-eval subprocesses: no network, caches in `home`, one thread."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(home / "hf-home"),
        HF_MODULES_CACHE=str(home / "hf-modules"),
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return env


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def task_utils():
    return load_task_utils()


@pytest.fixture(scope="module")
def table_run(task_utils, tmp_path_factory):
    """Runs paper_table.py (three lmms-eval CLI runs) on the tiny task; returns (folder, samples, table text)."""
    work = tmp_path_factory.mktemp("lmms-eval")
    samples = task_utils.write_dataset(work / task_utils.DATA_FOLDER, SAMPLES)
    command = [
        sys.executable, str(ROOT / "benchmarks" / "paper_table.py"),
        "--model_args", f"pretrained={EMBEDDED_CHECKPOINT},seed={SEED},device=cpu",
        "--tasks", TASK,
        "--ratios", "1.0,0.2",
        "--selectors", "learned,random",
        "--batch_size", str(LMMS_EVAL_BATCH),
        "--include_path", str(TASK_FOLDER),
        "--lmms_eval_args=--log_samples",
        "--work_dir", str(work / "runs"),
        "--output", str(work / "table.md"),
    ]  # fmt: skip
    # cwd: the task yaml reads its data folder relative to lmms-eval's working directory
    done = subprocess.run(command, cwd=work, env=offline_env(work), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"paper_table.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return work, samples, (work / "table.md").read_text()


@pytest.fixture(scope="module")
def own_answers(table_run):
    """Per setting, the package's own answers: batched `generate` on the same samples, seeded as the plugin does."""
    from transformers import AutoModel, AutoProcessor

    _, samples, _ = table_run
    model = AutoModel.from_pretrained(str(EMBEDDED_CHECKPOINT), trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(str(EMBEDDED_CHECKPOINT), trust_remote_code=False)
    processor.tokenizer.padding_side = "left"
    answers = {}
    for row, (selector, ratio) in SETTINGS.items():
        torch.manual_seed(SEED)
        answers[row] = []
        for start in range(0, len(samples), OWN_BATCH):
            batch = samples[start : start + OWN_BATCH]
            texts = [
                processor.apply_chat_template(
                    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}],
                    add_generation_prompt=True,
                )
                for sample in batch
            ]
            inputs = processor(text=texts, images=[sample.image for sample in batch], return_tensors="pt", padding=True)
            with torch.no_grad():
                output = model.generate(
                    **inputs, retention_ratio=ratio, selector=selector, max_new_tokens=MAX_NEW_TOKENS, do_sample=False
                )
            answers[row] += processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def run_folder(work: Path, row: tuple[str, float]) -> Path:
    return work / "runs" / load_paper_table().setting_name(*row)


def lmms_eval_samples(work: Path, row) -> list[dict]:
    """The samples lmms-eval logged (`--log_samples`) for one setting, by document id."""
    (path,) = glob.glob(str(run_folder(work, row) / "**" / f"*_samples_{TASK}.jsonl"), recursive=True)
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda logged: logged["doc_id"])


class TestEndToEnd:
    """lmms-eval's own CLI on the embedded checkpoint."""

    def test_lmms_eval_finds_the_model_through_the_entry_point(self):
        from importlib.metadata import entry_points

        from lmms_eval.models import get_model

        from visionselector.lmms_eval_model import VisionSelector

        assert "visionselector" in {entry.name for entry in entry_points(group="lmms_eval.models")}
        assert get_model("visionselector") is VisionSelector
        assert VisionSelector.is_simple is False  # a chat model: requests arrive as messages

    def test_own_answers_tell_the_selectors_apart(self, own_answers, table_run, task_utils):
        """The comparison below can tell a plugin that ignored `selector` or `retention_ratio` from a right one."""
        _, samples, _ = table_run
        right = {
            row: [task_utils.normalize(answer) == task_utils.normalize(sample.answer) for answer, sample in zip(answers, samples)]
            for row, answers in own_answers.items()
        }
        assert right[("full", 1.0)] != right[("random", 0.2)]
        assert right[("learned", 0.2)] != right[("random", 0.2)]

    @pytest.mark.parametrize("row", list(SETTINGS), ids=lambda row: f"{row[0]}-r{row[1]}")
    def test_lmms_eval_accuracy_equals_the_packages_count(self, row, table_run, own_answers, task_utils):
        work, samples, _ = table_run
        (results_file,) = glob.glob(str(run_folder(work, row) / "**" / "*_results.json"), recursive=True)
        results = json.loads(Path(results_file).read_text())
        correct = sum(
            task_utils.normalize(answer) == task_utils.normalize(sample.answer) for answer, sample in zip(own_answers[row], samples)
        )
        assert results["results"][TASK]["accuracy,none"] == pytest.approx(correct / len(samples), abs=1e-12)
        assert results["n-samples"][TASK]["effective"] == SAMPLES
        model_args = results["config"]["model_args"]
        selector, ratio = SETTINGS[row]
        assert f"retention_ratio={ratio:g}" in model_args and f"selector={selector}" in model_args

    @pytest.mark.parametrize("row", list(SETTINGS), ids=lambda row: f"{row[0]}-r{row[1]}")
    def test_lmms_eval_answers_equal_the_packages_answers(self, row, table_run, own_answers):
        """Every logged answer, document by document: same prompt, same kept tokens, same greedy answer."""
        work, samples, _ = table_run
        logged = lmms_eval_samples(work, row)
        assert [entry["doc_id"] for entry in logged] == list(range(SAMPLES))
        assert [entry["target"] for entry in logged] == [sample.answer for sample in samples]
        assert [entry["filtered_resps"] for entry in logged] == own_answers[row]  # lmms-eval 0.7 logs the text

    def test_paper_table_reports_lmms_eval_scores_relative_to_full(self, table_run, own_answers, task_utils):
        _, samples, table = table_run
        lines = table.splitlines()
        assert lines[0] == f"| selector | r | {TASK} | relative |"
        accuracy = {
            row: 100.0 * sum(task_utils.normalize(a) == task_utils.normalize(s.answer) for a, s in zip(answers, samples)) / len(samples)
            for row, answers in own_answers.items()
        }
        full = accuracy[("full", 1.0)]
        assert lines[2] == f"| full | 1 | {full:.1f} | 100.0% |"
        for line, row in zip(lines[3:5], [("learned", 0.2), ("random", 0.2)]):
            share = 100.0 * accuracy[row] / full
            assert line == f"| {row[0]} | 0.2 | {accuracy[row]:.1f} ({share:.1f}%) | {share:.1f}% |"
        assert f"{TASK}: accuracy (in %)" in table

    def test_paper_table_resumes_from_existing_results(self, table_run):
        """A second run finds every setting's results and writes the same table without calling lmms-eval."""
        work, _, table = table_run
        paper_table = load_paper_table()
        output = work / "again.md"
        paper_table.main([
            "--model_args", f"pretrained={EMBEDDED_CHECKPOINT}", "--tasks", TASK, "--ratios", "0.2",
            "--selectors", "learned,random", "--work_dir", str(work / "runs"), "--output", str(output),
            "--lmms_eval", "false",  # would fail if it ran
        ])  # fmt: skip
        assert output.read_text() == table


def fake_requests(task_dict_owner, images: list, question: str = "what is the colour of the square"):
    """`generate_until` requests of a one-split task held in `task_dict_owner.task_dict`, as lmms-eval builds them."""
    from lmms_eval.api.instance import Instance

    docs = [{"image": image, "question": question} for image in images]
    task_dict_owner.task_dict = {"tiny": {"test": docs}}

    def doc_to_messages(doc):
        return [{"role": "user", "content": [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}]}]

    gen_kwargs = {"max_new_tokens": 4, "temperature": 0, "until": ["\n\n"]}
    return [
        Instance("generate_until", ("", doc_to_messages, dict(gen_kwargs), doc_id, "tiny", "test"), 0, {"task": "tiny", "doc_id": doc_id, "repeats": 1})
        for doc_id in range(len(docs))
    ]


def reference_answers(model, processor, images, ratio, selector, question="what is the colour of the square"):
    """The package's own batched `generate` on the requests of `fake_requests`."""
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}], add_generation_prompt=True
    )
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=[text] * len(images), images=images, return_tensors="pt", padding=True)
    torch.manual_seed(SEED)
    with torch.no_grad():
        output = model.generate(**inputs, retention_ratio=ratio, selector=selector, max_new_tokens=4, do_sample=False)
    return processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=False)


def family_images(family: str) -> list:
    """Three random images of different sizes (in merged tokens: 2 x 3, 3 x 2, 4 x 4) for the family's patch size."""
    patch = 2 * (16 if family.startswith("qwen3") else 14)
    generator = torch.Generator().manual_seed(3)
    return [
        Image.fromarray(torch.randint(0, 256, (h * patch, w * patch, 3), generator=generator, dtype=torch.uint8).numpy())
        for h, w in ((2, 3), (3, 2), (4, 4))
    ]


_FAMILY_FOLDERS = {}


def family_folders(family: str, root: Path) -> dict:
    """Per family: a stock checkpoint, a full VisionSelector checkpoint and a scorer-only artifact (with its processor),
    and the VisionSelector model (a scorer not at its initial value) the last two hold."""
    from modeling_visionselector import VisionSelectorForConditionalGeneration
    from visionselector.publishing import save_scorer

    from visionselector.tiny import tiny_model, tiny_processor

    if family not in _FAMILY_FOLDERS:
        patch = 16 if family.startswith("qwen3") else 14
        processor = tiny_processor(min_pixels=(2 * patch) ** 2, max_pixels=(8 * patch) ** 2, family=family)
        folders = {kind: root / f"{family}-{kind}" for kind in ("stock", "full", "scorer-only")}
        tiny_model(family, seed=0).save_pretrained(folders["stock"])
        processor.save_pretrained(folders["stock"])
        torch.manual_seed(5)
        trained = VisionSelectorForConditionalGeneration.from_backbone(str(folders["stock"])).eval()
        with torch.no_grad():
            for parameter in trained.scorer.parameters():
                parameter.normal_()
        trained.save_pretrained(folders["full"])
        processor.save_pretrained(folders["full"])
        save_scorer(trained, folders["scorer-only"], processor=processor, base_model_name_or_path=str(folders["stock"]))
        _FAMILY_FOLDERS[family] = folders, trained, processor
    return _FAMILY_FOLDERS[family]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """The stock tiny Qwen2.5-VL checkpoint (processor: 56 x 56 to 112 x 112 px)."""
    return family_folders("qwen2_5_vl", tmp_path_factory.getbasetemp() / "families")[0]["stock"]


class TestLoadingPaths:
    """The plugin's loading paths, in process, for every family."""

    @pytest.mark.parametrize("kind", ["full", "scorer-only"])
    @pytest.mark.parametrize("family", FAMILIES)
    def test_plugin_loads_visionselector_checkpoints_of_every_family(self, family, kind, tmp_path_factory):
        from visionselector.lmms_eval_model import VisionSelector

        folders, trained, processor = family_folders(family, tmp_path_factory.getbasetemp() / "families")
        lmm = VisionSelector(pretrained=str(folders[kind]), retention_ratio=0.5, device="cpu", batch_size=2)
        assert type(lmm.model).__name__ == type(trained).__name__  # the remote code's class of the family
        for name, value in trained.scorer.state_dict().items():
            torch.testing.assert_close(lmm.model.scorer.state_dict()[name], value, rtol=0, atol=0)
        images = family_images(family)
        answers = [result.text for result in lmm.generate_until(fake_requests(lmm, images))]
        assert answers == reference_answers(trained, processor, images, 0.5, "learned")

    @pytest.mark.parametrize("family", FAMILIES)
    def test_plugin_runs_a_training_free_selector_on_a_stock_checkpoint(self, family, tmp_path_factory):
        from modeling_visionselector import VisionSelectorForConditionalGeneration

        from visionselector.lmms_eval_model import VisionSelector

        folders, _, _ = family_folders(family, tmp_path_factory.getbasetemp() / "families")
        lmm = VisionSelector(pretrained=str(folders["stock"]), retention_ratio=0.5, selector="divprune", device="cpu", batch_size=2)
        images = family_images(family)
        answers = [result.text for result in lmm.generate_until(fake_requests(lmm, images))]
        reference = VisionSelectorForConditionalGeneration.from_backbone(str(folders["stock"])).eval()
        # the processor the plugin loaded from the folder: for a stock Qwen3.5 folder, AutoTokenizer picks the registered
        # Qwen3_5Tokenizer over the tiny word-level tokenizer saved there
        assert answers == reference_answers(reference, lmm.processor, images, 0.5, "divprune")
        with pytest.raises(ValueError, match="stock checkpoint without a trained scorer"):
            VisionSelector(pretrained=str(folders["stock"]), selector="learned", device="cpu")

    def test_a_scorer_only_artifact_without_processor_uses_its_backbones(self, tmp_path_factory, tmp_path):
        from visionselector.publishing import save_scorer

        from visionselector.lmms_eval_model import VisionSelector

        folders, trained, processor = family_folders("qwen2_5_vl", tmp_path_factory.getbasetemp() / "families")
        save_scorer(trained, tmp_path, base_model_name_or_path=str(folders["stock"]))
        assert not (tmp_path / "processor_config.json").exists()
        lmm = VisionSelector(pretrained=str(tmp_path), retention_ratio=0.5, device="cpu", batch_size=2)
        images = family_images("qwen2_5_vl")
        answers = [result.text for result in lmm.generate_until(fake_requests(lmm, images))]
        assert answers == reference_answers(trained, processor, images, 0.5, "learned")

    def test_min_and_max_pixels_bound_the_processor(self, base_dir):
        from visionselector.lmms_eval_model import VisionSelector

        def grid(lmm):
            return lmm.processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (448, 448))])["image_grid_thw"].tolist()

        assert grid(VisionSelector(pretrained=str(base_dir), selector="random", device="cpu")) == [[1, 8, 8]]  # its max 112 x 112 px
        bounded = VisionSelector(pretrained=str(base_dir), selector="random", device="cpu", min_pixels=28 * 28, max_pixels=56 * 56)
        assert grid(bounded) == [[1, 4, 4]]

    def test_task_generation_arguments_become_generate_keywords_and_stops(self):
        from types import SimpleNamespace

        from visionselector.lmms_eval_model import VisionSelector

        plugin = SimpleNamespace(max_new_tokens=128)
        greedy = {"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
                  "until": ["\n\n", "ASSISTANT:"], "image_aspect_ratio": "original"}  # fmt: skip
        assert VisionSelector._generation_arguments(plugin, greedy) == (
            {"max_new_tokens": 16, "num_beams": 1, "do_sample": False}, ["ASSISTANT:"]
        )
        sampled = {"temperature": 0.7, "top_p": 0.9, "until": "Q:"}
        assert VisionSelector._generation_arguments(plugin, sampled) == (
            {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.9, "do_sample": True}, ["Q:"]
        )

    @pytest.mark.parametrize(
        "arguments, message",
        [
            ({"retention_ratio": 1.5}, "retention_ratio"),
            ({"retention_ratio": 0}, "retention_ratio"),
            ({"selector": "best"}, "Unknown selector 'best'"),
            ({"batch_size": 0}, "batch_size"),
            ({"batch_size": "auto"}, "batch_size"),
            ({"max_new_tokens": -1}, "max_new_tokens"),
            ({"dtype": "int8"}, "dtype"),
            ({"seed": 1.5}, "seed"),
            ({"max_pixels": 0}, "max_pixels"),
            ({"min_pixels": 3136, "max_pixels": 784}, r"`min_pixels` \(3136\) must not exceed `max_pixels` \(784\)"),
            ({"temperature": 0.7}, r"Unknown model arguments \['temperature'\]"),
        ],
    )
    def test_bad_model_arguments_are_value_errors(self, arguments, message):
        from visionselector.lmms_eval_model import VisionSelector

        with pytest.raises(ValueError, match=message):
            VisionSelector(pretrained=str(EMBEDDED_CHECKPOINT), device="cpu", **arguments)

    @pytest.mark.parametrize("kind", ["full", "scorer-only"])
    def test_plugin_serves_a_multi_head_scorer_checkpoint(self, kind, tmp_path_factory, tmp_path):
        """A checkpoint of the 4-head scorer (`scorer_heads=4`) loads as one: its config says which scorer it holds."""
        from modeling_visionselector import from_backbone
        from visionselector.publishing import save_scorer

        from visionselector.lmms_eval_model import VisionSelector

        folders, _, processor = family_folders("qwen2_5_vl", tmp_path_factory.getbasetemp() / "families")
        torch.manual_seed(6)
        trained = from_backbone(str(folders["stock"]), scorer_heads=4).eval()
        with torch.no_grad():
            for parameter in trained.scorer.parameters():
                parameter.normal_()
        if kind == "full":
            trained.save_pretrained(tmp_path)
            processor.save_pretrained(tmp_path)
        else:
            save_scorer(trained, tmp_path, processor=processor, base_model_name_or_path=str(folders["stock"]))
        lmm = VisionSelector(pretrained=str(tmp_path), retention_ratio=0.5, device="cpu", batch_size=2)
        assert lmm.model.config.scorer_heads == 4 and lmm.model.scorer.num_heads == 4
        images = family_images("qwen2_5_vl")
        answers = [result.text for result in lmm.generate_until(fake_requests(lmm, images))]
        assert answers == reference_answers(trained, processor, images, 0.5, "learned")
