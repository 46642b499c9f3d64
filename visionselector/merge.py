"""A full, servable checkpoint from a scorer-only artifact, written file by file (no model is loaded).

Serving engines (vLLM) load one folder, while a scorer-only artifact (see `visionselector.publishing`)
holds only `scorer.safetensors` and points at its backbone. `merge_scorer_artifact` writes a folder that holds:

- the backbone's safetensors shards, copied byte for byte (any size: nothing is loaded into memory; an unsharded
  `model.safetensors` becomes `model-backbone.safetensors`, since a folder's `model.safetensors` would load alone),
- `model-scorer.safetensors` with the scorer tensors, and a `model.safetensors.index.json` listing both,
- the artifact's `config.json` with `scorer_only: false` (the backbone it came from stays recorded),
- the model code, for `trust_remote_code`,
- the processor files and `generation_config.json`: the artifact's when it ships a processor, else the backbone's.

`AutoModel.from_pretrained(folder, trust_remote_code=True)` loads it like any full checkpoint, and so does vLLM
with the `visionselector[vllm]` plugin.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

from visionselector.checkpoint_files import read_visionselector_config, read_weight_map
from visionselector.output_folders import written_folder
from modeling_visionselector import (
    BACKBONE_LOCATION_KWARGS,
    SCORER_PREFIX,
    SCORER_WEIGHTS_NAME,
    check_scorer_tensors,
)

SCORER_SHARD_NAME = "model-scorer.safetensors"
# An unsharded backbone's `model.safetensors` is copied under this name: transformers loads a folder's
# `model.safetensors` alone when it has one, index or not, which would leave the scorer out.
BACKBONE_SHARD_NAME = "model-backbone.safetensors"
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# the artifact ships a processor when it holds one of these
PROCESSOR_MARKERS = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
# The `from_pretrained` arguments that say where the artifact and its backbone are (`revision` is the artifact's own).
LOCATION_KWARGS = BACKBONE_LOCATION_KWARGS


def _optional_file(repo, filename, **kwargs) -> str | None:
    return cached_file(repo, filename, _raise_exceptions_for_missing_entries=False, **kwargs)


def merge_scorer_artifact(
    artifact: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    base_model_name_or_path: str | None = None,
    base_model_revision: str | None = None,
    revision: str | None = None,
    **location_kwargs,
) -> Path:
    """Writes the full checkpoint of a scorer-only artifact to `output_dir` (see the module docstring).

    Args:
        artifact (`str` or `os.PathLike`): folder or Hub id of a scorer-only artifact (`scorer_only: true`).
        output_dir (`str` or `os.PathLike`): the folder to write; created if needed.
        base_model_name_or_path (`str`, *optional*): the backbone (folder or Hub id); defaults to the artifact's
            `base_model_name_or_path`.
        base_model_revision (`str`, *optional*): its revision; defaults to the artifact's `base_model_revision`.
        revision (`str`, *optional*): the artifact's revision.
        **location_kwargs: `token`, `cache_dir`, `local_files_only`, ... for both the artifact and the backbone.

    Returns:
        `Path`: `output_dir`.
    """
    unknown = sorted(set(location_kwargs) - set(LOCATION_KWARGS))
    if unknown:
        raise ValueError(f"Unknown arguments {unknown}; accepted: {list(LOCATION_KWARGS)}.")
    artifact_kwargs = dict(location_kwargs, revision=revision)
    model_class, config = read_visionselector_config(artifact, f"The artifact {artifact}", **artifact_kwargs)
    if not config.scorer_only:
        raise ValueError(f"{artifact} is not a scorer-only artifact (its config says `scorer_only: false`): serve it as it is.")
    base = base_model_name_or_path or config.base_model_name_or_path
    base_kwargs = dict(location_kwargs, revision=base_model_revision or config.base_model_revision)

    scorer_file = cached_file(artifact, SCORER_WEIGHTS_NAME, **artifact_kwargs)
    try:
        scorer = load_file(scorer_file)
    except SafetensorError as error:
        raise ValueError(f"Cannot read {scorer_file}: {error} (a truncated or corrupted safetensors file?).") from error
    check_scorer_tensors(scorer, config, source=f"The scorer of {artifact}")
    weight_map = read_weight_map(base, f"The backbone {base}", **base_kwargs)
    clashing = sorted(name for name in weight_map if name.startswith(SCORER_PREFIX) or ".importance_scorer." in name)
    if clashing:
        raise ValueError(f"The backbone {base} already holds scorer tensors {clashing}; merge into a stock backbone.")

    # Never into the artifact or the backbone; written next to `output_dir`, moved there once complete.
    with written_folder(output_dir, {"scorer": artifact, "base_model": base}) as folder:
        _write_merged(folder, model_class, config, scorer, weight_map, artifact, artifact_kwargs, base, base_kwargs)
    return Path(output_dir)


def _write_merged(folder, model_class, config, scorer, weight_map, artifact, artifact_kwargs, base, base_kwargs) -> None:
    total_size = 0
    renamed = {SAFE_WEIGHTS_NAME: BACKBONE_SHARD_NAME}
    for shard in sorted(set(weight_map.values())):
        source = cached_file(base, shard, **base_kwargs)
        shutil.copyfile(source, folder / renamed.get(shard, shard))
        total_size += (folder / renamed.get(shard, shard)).stat().st_size
    weight_map = {name: renamed.get(shard, shard) for name, shard in weight_map.items()}
    save_file(scorer, folder / SCORER_SHARD_NAME, metadata={"format": "pt"})
    total_size += sum(tensor.numel() * tensor.element_size() for tensor in scorer.values())
    weight_map.update(dict.fromkeys(scorer, SCORER_SHARD_NAME))
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

    config.scorer_only = False
    config.base_model_name_or_path = base
    config.base_model_revision = base_kwargs["revision"]
    config.architectures = [model_class.__name__]
    config.auto_map = type(config).default_auto_map()
    config.save_pretrained(folder)
    custom_object_save(model_class, folder)

    ships_processor = any(_optional_file(artifact, name, **artifact_kwargs) for name in PROCESSOR_MARKERS)
    processor_source, processor_kwargs = (artifact, artifact_kwargs) if ships_processor else (base, base_kwargs)
    for name in PROCESSOR_FILES:
        if (path := _optional_file(processor_source, name, **processor_kwargs)) is not None:
            shutil.copyfile(path, folder / name)
    generation = _optional_file(artifact, "generation_config.json", **artifact_kwargs) or _optional_file(
        base, "generation_config.json", **base_kwargs
    )
    if generation is not None:
        shutil.copyfile(generation, folder / "generation_config.json")
