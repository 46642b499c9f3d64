"""Publishing a VisionSelector as a scorer-only artifact, and importing the paper's released checkpoints.

A scorer-only artifact is a folder (or Hub repo) that points at the official backbone instead of copying it:

- `config.json`: the full [`VisionSelectorConfig`] with `scorer_only=True`, `base_model_name_or_path` (and
  `base_model_revision`) and an `auto_map` entry for every auto class;
- the code files (`modeling_visionselector.py` and its sibling imports), for `trust_remote_code`; or, with
  `code_repo`, no code: `auto_map` then names a shared code repository (`"org/code--module.Class"`, which
  transformers resolves), so that one fix there reaches every artifact that points at it (see `save_code`);
- `scorer.safetensors`: the scorer tensors only, named as in `model.state_dict()` (`scorer.q_proj.weight`, ...);
- the processor files, when a processor is given;
- `README.md`: a model card with Hub metadata, usage and, when given, an accuracy-vs-retention table.

`AutoModel.from_pretrained(artifact, trust_remote_code=True)` loads the backbone from `base_model_name_or_path`
and the scorer from the artifact (see `VisionSelectorForConditionalGeneration.from_pretrained`).

This module is not part of the remote code (`modeling_visionselector/`, which checkpoints ship): it lives next to
the hub CLI (`visionselector/hub.py`). In 0.1.0 it was `modeling_visionselector.hub_utils`; that name still
imports, with a `FutureWarning`, until the next release.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers.conversion_mapping import get_checkpoint_conversion_mapping
from transformers.dynamic_module_utils import custom_object_save, get_relative_import_files
from transformers.utils import cached_file, logging

from transformers import PreTrainedConfig

from modeling_visionselector.configuration_visionselector import VisionSelectorFields
from modeling_visionselector import (
    SCORER_PREFIX,
    SCORER_WEIGHTS_NAME,
    VisionSelectorForConditionalGeneration,
    VisionSelectorMixin,
    check_scorer_tensors,
)
from visionselector.checkpoint_files import read_visionselector_config, read_weight_map

logger = logging.get_logger(__name__)

PAPER_URL = "https://arxiv.org/abs/2510.16598"
DEFAULT_TAGS = ("visionselector", "visual-token-pruning")
ResultsType = Sequence[Mapping[str, object]] | str | os.PathLike | None


# ---------------------------------------------------------------------------------------------------- code


def code_files() -> list[str]:
    """The names of the remote-code files: the modeling file and every file it imports, flat (as checkpoints ship them)."""
    modeling_file = sys.modules[VisionSelectorForConditionalGeneration.__module__].__file__
    imported = {Path(f).name for f in get_relative_import_files(modeling_file)} - {Path(modeling_file).name}
    return [Path(modeling_file).name, *sorted(imported)]


def _code_repo_of(auto_map: dict | None) -> str | None:
    """The shared code repository that an artifact's `auto_map` points at, or None when the artifact ships its code."""
    reference = (auto_map or {}).get("AutoModel", "")
    return reference.split("--")[0] if "--" in reference else None


def save_code(save_directory: str | os.PathLike, repo_id: str | None = None) -> Path:
    """Writes a shared code repository: the remote-code files of every family, and a README saying what it is for.

    Scorer artifacts saved with `code_repo=<its Hub id or this folder>` hold no code of their own: their `auto_map`
    points here, so a fix pushed here reaches all of them (users who want a fixed code pass `code_revision=...`).
    `repo_id` (the Hub id it is meant for) names it in the README.
    """
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    custom_object_save(VisionSelectorForConditionalGeneration, folder)
    name = repo_id or folder.resolve().name
    (folder / "README.md").write_text(
        "---\nlibrary_name: transformers\ntags:\n- visionselector\n---\n\n"
        f"# {name.split('/')[-1]}\n\nThe [VisionSelector]({PAPER_URL}) model code (`{'`, `'.join(code_files())}`) that VisionSelector "
        "scorer repositories load with `trust_remote_code=True`: their `config.json` names it in `auto_map` "
        f'(`"{name}--modeling_visionselector.VisionSelectorQwen2_5_VLForConditionalGeneration"` and the other '
        "families' classes), so they ship no code of "
        "their own and a fix here reaches them all. Pin a version with `from_pretrained(..., code_revision=...)`.\n"
    )
    return folder


def push_code_to_hub(
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    token: str | bool | None = None,
    api: HfApi | None = None,
):
    """Uploads the shared code repository (see `save_code`) to the Hub repo `repo_id`, in one commit.

    Arguments as in [`push_scorer_to_hub`]. Returns the `CommitInfo` of the upload.
    """
    api = api if api is not None else HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="visionselector-code-") as folder:
        save_code(folder, repo_id=repo_id)
        message = commit_message or "Upload the VisionSelector model code"
        return _upload_folder(api, folder, repo_id, private, revision, message, create_pr)


def _upload_folder(api: HfApi, folder, repo_id: str, private, revision, commit_message: str, create_pr: bool):
    """Uploads a written `folder` in one commit, creating the repo (and the branch `revision`) first if needed. Called
    once the folder is complete, so that a failure while writing it leaves nothing on the Hub."""
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        create_pr=create_pr,
    )


# ---------------------------------------------------------------------------------------------------- saving


def scorer_state_dict(model: VisionSelectorMixin) -> dict[str, torch.Tensor]:
    """The scorer's tensors, named as in `model.state_dict()` (`scorer.q_proj.weight`, ...), on CPU."""
    return {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in model.state_dict().items()
        if name.startswith(SCORER_PREFIX)
    }


def code_auto_map(config_class: type, code_repo: str | None = None) -> dict[str, str]:
    """The `auto_map` of an artifact of `config_class`: `module.Class` references to the code the artifact ships, or,
    with `code_repo` (a Hub id, or a folder that `save_code` wrote), `"<code_repo>--module.Class"` references, which
    transformers loads from that repository (at `code_revision`, by default its main branch)."""
    auto_map = config_class.default_auto_map()
    if code_repo is None:
        return auto_map
    code_repo = str(code_repo)
    if os.path.isdir(code_repo):
        missing = sorted(set(code_files()) - set(os.listdir(code_repo)))
        if missing:
            raise ValueError(f"`code_repo` {code_repo!r} lacks the code files {missing}: write it with `save_code`.")
        code_repo = os.path.abspath(code_repo)  # found from any directory
    elif code_repo.count("/") != 1 or code_repo.startswith((".", "/", "~")):
        raise ValueError(f"`code_repo` must be a Hub id ('org/name') or a folder that `save_code` wrote, got {code_repo!r}.")
    if "--" in code_repo:  # transformers splits the reference at its one "--"
        raise ValueError(f"`code_repo` cannot contain '--' (transformers splits `auto_map` references there), got {code_repo!r}.")
    return {auto_class: f"{code_repo}--{reference}" for auto_class, reference in auto_map.items()}


def scorer_only_config(
    config: VisionSelectorFields,
    base_model_name_or_path: str | None = None,
    base_model_revision: str | None = None,
    code_repo: str | None = None,
) -> VisionSelectorFields:
    """A copy of `config` that describes a scorer-only artifact of the backbone `base_model_name_or_path`."""
    config = copy.deepcopy(config)
    config.base_model_name_or_path = base_model_name_or_path or config.base_model_name_or_path
    config.base_model_revision = base_model_revision or config.base_model_revision
    if not config.base_model_name_or_path:
        raise ValueError(
            "A scorer-only artifact needs the backbone it was trained on: pass `base_model_name_or_path` (a Hub id "
            "such as 'Qwen/Qwen2.5-VL-7B-Instruct'), or build the model with `from_backbone(<id>)`."
        )
    if os.path.isdir(config.base_model_name_or_path):  # a local backbone: found from any directory
        config.base_model_name_or_path = os.path.abspath(config.base_model_name_or_path)
    config.scorer_only = True
    # The artifact loads the backbone as its own checkpoint stores it, not as a training run quantized it.
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    config.auto_map = code_auto_map(type(config), code_repo)
    config.architectures = [type(config).model_class_name]
    return config


def save_scorer(
    model: VisionSelectorMixin,
    save_directory: str | os.PathLike,
    *,
    processor=None,
    base_model_name_or_path: str | None = None,
    base_model_revision: str | None = None,
    results: ResultsType = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
    repo_id: str | None = None,
    code_repo: str | None = None,
) -> Path:
    """Writes the scorer-only artifact of `model` to `save_directory` (see the module docstring).

    Args:
        model (a VisionSelector model of any family): the model whose scorer is published.
        save_directory (`str` or `os.PathLike`): the folder to write; created if needed.
        processor (*optional*): a processor to save beside the scorer (recommended: users load it from the same repo).
        base_model_name_or_path (`str`, *optional*, defaults to `model.config.base_model_name_or_path`):
            Hub id of the backbone the scorer was trained on; the artifact loads it from there.
        base_model_revision (`str`, *optional*, defaults to `model.config.base_model_revision`): its revision.
        results (*optional*): an accuracy-vs-retention table for the model card: a list of rows (mappings from
            column name to value), or a `.json` (such a list, or an object with a `"results"` list), `.csv` or
            `.md` file.
        license (`str`, *optional*, defaults to `"apache-2.0"`): the licence of the scorer, for the card metadata.
            The backbone keeps its own licence.
        tags (`Sequence[str]`, *optional*): extra Hub tags.
        repo_id (`str`, *optional*): the repo the artifact is meant for, used in the card's usage snippet.
        code_repo (`str`, *optional*): a shared code repository (Hub id, or a folder `save_code` wrote) that the
            artifact's `auto_map` points at instead of shipping its own copy of the code. By default the artifact
            is self-contained.

    Returns:
        `Path`: `save_directory`.
    """
    config = scorer_only_config(model.config, base_model_name_or_path, base_model_revision, code_repo)
    config.dtype = str(model.dtype).removeprefix("torch.")  # the dtype `dtype="auto"` loads the backbone in
    return _write_scorer_artifact(
        save_directory, config, scorer_state_dict(model), type(model), processor, results, license, tags, repo_id,
        inputs={"the folder the model was loaded from": model.config.name_or_path}, nested=False,
    )


def _write_scorer_artifact(
    save_directory, config, tensors, model_class, processor, results, license, tags, repo_id, inputs=None, nested=True
) -> Path:
    """Writes the artifact to a temporary folder next to `save_directory`, then moves it there (never into `inputs`)."""
    from visionselector.output_folders import written_folder

    check_scorer_tensors(tensors, config, source="the scorer")
    with written_folder(save_directory, inputs, "save_directory", nested) as folder:
        _write_scorer_files(folder, Path(save_directory), config, tensors, model_class, processor, results, license, tags, repo_id)
    return Path(save_directory)


def _write_scorer_files(folder, target, config, tensors, model_class, processor, results, license, tags, repo_id) -> None:
    if _code_repo_of(config.auto_map) is None:
        custom_object_save(model_class, folder)  # the modeling file and its relative imports, flat
    config.save_pretrained(folder)
    save_file(tensors, folder / SCORER_WEIGHTS_NAME, metadata={"format": "pt"})
    if processor is not None:
        processor.save_pretrained(folder)
    card = scorer_model_card(
        config,
        repo_id=repo_id or target.resolve().name,
        scorer_bytes=(folder / SCORER_WEIGHTS_NAME).stat().st_size,
        has_processor=processor is not None,
        results=results,
        license=license,
        tags=tags,
    )
    card.save(folder / "README.md")


# ---------------------------------------------------------------------------------------------------- model card


def scorer_model_card(
    config: VisionSelectorFields,
    *,
    repo_id: str,
    scorer_bytes: int | None = None,
    has_processor: bool = True,
    results: ResultsType = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
) -> ModelCard:
    """The model card of a scorer-only artifact: Hub metadata, what it is, usage, and the results table if given."""
    base = config.base_model_name_or_path
    card_data = ModelCardData(
        base_model=base,
        base_model_relation="adapter",
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license=license,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, config.model_type.removeprefix("visionselector_"), *tags])),
    )
    d, h = config.text_config.hidden_size, config.scorer_hidden_size
    num_parameters = 2 * (d * h + h)
    heads = getattr(config, "scorer_heads", 1)
    kind = (
        "the paper's scorer"
        if heads == 1
        else f"a {heads}-head scorer (`scorer_heads={heads}`, the {getattr(config, 'scorer_head_reduction', 'max')} of its heads' scores)"
    )
    size = f", {_human_size(scorer_bytes)}" if scorer_bytes is not None else ""
    at_revision = f" at revision `{config.base_model_revision}`" if config.base_model_revision else ""
    processor_repo = repo_id if has_processor else base
    code_repo = _code_repo_of(config.auto_map)
    where_the_code_is = (
        "the model code ships in this repository"
        if code_repo is None
        else f"the model code comes from the repository `{code_repo}`, which `config.json` names (pin it with "
        "`code_revision=...`)"
    )
    sections = [
        f"# {repo_id.split('/')[-1]}",
        f"A [VisionSelector]({PAPER_URL}) scorer for [{base}](https://huggingface.co/{base}), {kind}: {num_parameters:,} "
        "trained parameters that pick which merged visual tokens reach the language model, so the prefill runs on a "
        f"fraction of them. This repository holds only the scorer (`{SCORER_WEIGHTS_NAME}`{size})"
        f"{' and the code' if code_repo is None else ''}; "
        f"the backbone is loaded from `{base}`{at_revision}.",
        "## Usage",
        "```python\n"
        "from transformers import AutoModel, AutoProcessor\n\n"
        f'model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True, dtype="auto", device_map="auto")\n'
        f'processor = AutoProcessor.from_pretrained("{processor_repo}")\n\n'
        'messages = [{"role": "user", "content": [{"type": "image", "url": "https://example.com/cat.jpg"},\n'
        '                                         {"type": "text", "text": "Describe this image."}]}]\n'
        "inputs = processor.apply_chat_template(\n"
        '    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"\n'
        ").to(model.device)\n"
        "out = model.generate(**inputs, max_new_tokens=128, retention_ratio=0.3)  # keep 30% of the visual tokens\n"
        'print(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])\n'
        "```",
        f"`retention_ratio` (in (0, 1], default {config.retention_ratio}) is the share of each image's and video's "
        "visual tokens kept; 1.0 reproduces the backbone exactly. Inference needs only transformers (and torchvision "
        f"for the processor): {where_the_code_is}, hence `trust_remote_code=True`.",
    ]
    if results is not None:
        sections += ["## Results", results_table(results)]
    sections += ["## Reference", f"VisionSelector, Zhu et al., 2025, [arXiv:2510.16598]({PAPER_URL})."]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def _human_size(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f} MB" if num_bytes >= 1e6 else f"{num_bytes / 1e3:.1f} kB"


def results_table(results: ResultsType) -> str:
    """A Markdown table of `results`: rows (mappings column -> value), or a `.json`, `.csv` or `.md` file of them."""
    if isinstance(results, (str, os.PathLike)):
        path = Path(results)
        if path.suffix == ".md":
            return path.read_text().strip()
        if path.suffix == ".csv":
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        elif path.suffix == ".json":
            rows = json.loads(path.read_text())
            if isinstance(rows, Mapping):
                rows = rows.get("results")
        else:
            raise ValueError(f"A results file must be .json, .csv or .md, got {str(path)!r}.")
    else:
        rows = results
    if (
        isinstance(rows, (str, bytes, Mapping))
        or not isinstance(rows, Sequence)
        or not rows
        or not all(isinstance(row, Mapping) for row in rows)
    ):
        raise ValueError(
            "`results` must be a non-empty list of rows (mappings from column name to value), or a .json file of "
            f"one (or of an object with a 'results' list), a .csv or a .md file; got {type(rows).__name__}."
        )
    columns = list(dict.fromkeys(column for row in rows for column in row))
    lines = ["| " + " | ".join(map(_cell, columns)) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value).replace("|", "\\|")


# ---------------------------------------------------------------------------------------------------- pushing


def push_scorer_to_hub(
    model: VisionSelectorMixin | str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    token: str | bool | None = None,
    api: HfApi | None = None,
    **save_kwargs,
):
    """Uploads the scorer-only artifact of `model` to the Hub repo `repo_id`, in one commit.

    Args:
        model (a VisionSelector model, `str` or `os.PathLike`): a model, or a full checkpoint
            (ours or the paper's) whose scorer is read from its files (see `convert_checkpoint_to_scorer`).
        repo_id (`str`): the model repo; created if it does not exist.
        private (`bool`, *optional*): visibility of a repo that is created (an existing repo keeps its own).
        revision (`str`, *optional*): the branch to commit to; created from the default branch if missing.
        commit_message (`str`, *optional*): defaults to "Upload VisionSelector scorer for <base model>".
        create_pr (`bool`, *optional*, defaults to `False`): open a pull request instead of committing.
        token (`str` or `bool`, *optional*): the Hub token; unused when `api` is given.
        api (`HfApi`, *optional*): the client to use (tests pass a double).
        **save_kwargs: arguments of [`save_scorer`] or [`convert_checkpoint_to_scorer`] (`processor`,
            `base_model_name_or_path`, `results`, `license`, `tags`, `code_repo`, ...).

    Returns:
        The `CommitInfo` of the upload.
    """
    api = api if api is not None else HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="visionselector-scorer-") as folder:
        if isinstance(model, (str, os.PathLike)):
            convert_checkpoint_to_scorer(model, folder, repo_id=repo_id, **save_kwargs)
        else:  # a model, possibly of the remote-code copy of the class
            save_scorer(model, folder, repo_id=repo_id, **save_kwargs)
        stored = PreTrainedConfig.get_config_dict(folder)[0]
        base = stored["base_model_name_or_path"]
        if Path(base).is_dir():
            warnings.warn(
                f"The scorer pushed to {repo_id} points at the local folder {base!r} for its backbone, which nobody "
                "else can load: pass `base_model_name_or_path=<Hub id>` (e.g. 'Qwen/Qwen2.5-VL-7B-Instruct')."
            )
        code_repo = _code_repo_of(stored.get("auto_map"))
        if code_repo is not None and Path(code_repo).is_dir():
            warnings.warn(
                f"The scorer pushed to {repo_id} points at the local folder {code_repo!r} for its code, which nobody "
                "else can load: pass `code_repo=<Hub id>` (a repository `push_code_to_hub` wrote), or no `code_repo`."
            )
        message = commit_message or f"Upload VisionSelector scorer for {base}"
        return _upload_folder(api, folder, repo_id, private, revision, message, create_pr)


# ---------------------------------------------------------------------------------------------------- import


def read_checkpoint_scorer(checkpoint: str | os.PathLike, **hub_kwargs) -> dict[str, torch.Tensor]:
    """The scorer tensors of a full safetensors checkpoint, read without loading the rest, in-memory names.

    The checkpoint's names are mapped with the rules `from_pretrained` applies, so the paper's layout
    (`visual.importance_scorer.*`) and ours (the same, or the older `scorer.*`) both give `scorer.*`.
    `hub_kwargs` (`revision`, `token`, `cache_dir`, `local_files_only`, ...) are passed to `cached_file`.
    """
    weight_map = read_weight_map(checkpoint, f"The checkpoint {checkpoint}", **hub_kwargs)
    renamings = get_checkpoint_conversion_mapping(VisionSelectorForConditionalGeneration.__name__)
    wanted = {}  # file -> {name on disk: name in memory}
    for name, filename in weight_map.items():
        in_memory = name
        for renaming in renamings:
            in_memory, _ = renaming.rename_source_key(in_memory)
        if in_memory.startswith(SCORER_PREFIX):
            wanted.setdefault(filename, {})[name] = in_memory
    tensors = {}
    for filename, names in wanted.items():
        path = cached_file(checkpoint, filename, **hub_kwargs)
        try:
            with safe_open(path, "pt") as handle:
                for name, in_memory in names.items():
                    if in_memory in tensors:
                        raise ValueError(f"{checkpoint} holds the scorer tensor {in_memory} twice (one is {name}).")
                    tensors[in_memory] = handle.get_tensor(name)
        except SafetensorError as error:
            raise ValueError(f"Cannot read {path}: {error} (a truncated or corrupted safetensors file?).") from error
    return tensors


def convert_checkpoint_to_scorer(
    checkpoint: str | os.PathLike,
    save_directory: str | os.PathLike,
    *,
    base_model_name_or_path: str | None = None,
    base_model_revision: str | None = None,
    processor="checkpoint",
    results: ResultsType = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
    repo_id: str | None = None,
    code_repo: str | None = None,
    **hub_kwargs,
) -> Path:
    """Writes the scorer-only artifact of a full checkpoint: the paper's released ones or a `save_pretrained` of ours.

    Only the config and the four scorer tensors are read (a 7B checkpoint is never loaded). The backbone of the
    checkpoint is assumed to be the unchanged `base_model_name_or_path` (VisionSelector trains the scorer only).

    Args:
        checkpoint (`str` or `os.PathLike`): folder or Hub id of a full safetensors checkpoint. The paper's
            (transformers 4.5x, `model_type` "qwen2_5_vl", scorer at `visual.importance_scorer.*`) need
            `base_model_name_or_path`, since their config does not name the backbone.
        save_directory (`str` or `os.PathLike`): the folder to write.
        base_model_name_or_path (`str`, *optional*): Hub id of the backbone; defaults to the checkpoint config's.
        base_model_revision (`str`, *optional*): its revision.
        processor (*optional*, defaults to `"checkpoint"`): the processor to ship: `"checkpoint"` loads the
            checkpoint's own with `AutoProcessor`, a processor object is saved as it is, `None` ships none.
        results, license, tags, repo_id, code_repo: as in [`save_scorer`].
        **hub_kwargs: `revision`, `token`, `cache_dir`, `local_files_only`, ... for reading `checkpoint`.
    """
    model_class, config = read_visionselector_config(checkpoint, f"The checkpoint {checkpoint}", **hub_kwargs)
    config = scorer_only_config(config, base_model_name_or_path, base_model_revision, code_repo)
    tensors = read_checkpoint_scorer(checkpoint, **hub_kwargs)
    check_scorer_tensors(tensors, config, source=f"The checkpoint {checkpoint}")
    if isinstance(processor, str) and processor == "checkpoint":
        from transformers import AutoProcessor

        # the processor is the stock one: the checkpoint's auto_map names only the model's remote code
        processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=False, **hub_kwargs)
    return _write_scorer_artifact(
        save_directory,
        config,
        tensors,
        model_class,
        processor,
        results,
        license,
        tags,
        repo_id,
        inputs={"checkpoint": checkpoint, "base_model_name_or_path": config.base_model_name_or_path},
    )


__all__ = [
    "SCORER_WEIGHTS_NAME",
    "check_scorer_tensors",
    "code_auto_map",
    "code_files",
    "convert_checkpoint_to_scorer",
    "push_code_to_hub",
    "push_scorer_to_hub",
    "read_checkpoint_scorer",
    "results_table",
    "save_code",
    "save_scorer",
    "scorer_model_card",
    "scorer_only_config",
    "scorer_state_dict",
]
