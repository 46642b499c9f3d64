"""Reading a checkpoint's config and weight map without loading it, with a `ValueError` naming the file when the
file is not what it must be (so that `visionselector-hub` reports one `error:` line, never a traceback)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedConfig
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

from modeling_visionselector import visionselector_class_for


def read_visionselector_config(source: str | os.PathLike, what: str, **hub_kwargs):
    """The VisionSelector class of `source`'s family and `source`'s config read as its config class.

    Args:
        source: folder or Hub id of a VisionSelector or stock checkpoint.
        what (`str`): how errors name it, e.g. "The artifact me/scorer".
        **hub_kwargs: `revision`, `token`, `cache_dir`, `local_files_only`, ...
    """
    config_dict = PreTrainedConfig.get_config_dict(source, **hub_kwargs)[0]
    if not isinstance(config_dict, dict):
        raise ValueError(f"{what}: its config.json holds a {type(config_dict).__name__}, not a JSON object.")
    model_class = visionselector_class_for(config_dict.get("model_type"), what)
    try:
        config = model_class.config_class.from_pretrained(source, **hub_kwargs)
    except StrictDataclassError as error:
        raise ValueError(f"{what}: its config.json does not validate: {error}") from error
    return model_class, config


def read_weight_map(source: str | os.PathLike, what: str, **hub_kwargs) -> dict[str, str]:
    """Tensor name -> shard file of `source`'s safetensors checkpoint (`model.safetensors` or its index)."""
    index = cached_file(source, SAFE_WEIGHTS_INDEX_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if index is not None:
        try:
            stored = json.loads(Path(index).read_text())
        except ValueError as error:
            raise ValueError(f"{what}: {index} is not JSON: {error}") from error
        weight_map = stored.get("weight_map") if isinstance(stored, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(shard, str) for shard in weight_map.values()):
            raise ValueError(f"{what}: {index} has no `weight_map` of tensor names to shard files.")
        return dict(weight_map)
    single = cached_file(source, SAFE_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if single is None:
        raise ValueError(f"{what} has no safetensors weights ({SAFE_WEIGHTS_NAME} or an index).")
    try:
        with safe_open(single, "pt") as handle:
            return {name: SAFE_WEIGHTS_NAME for name in handle.keys()}
    except SafetensorError as error:
        raise ValueError(f"Cannot read {single}: {error} (a truncated or corrupted safetensors file?).") from error


__all__ = ["read_visionselector_config", "read_weight_map"]
