"""Loading VisionSelector models: around a stock backbone, from full checkpoints and from scorer-only artifacts.

- `from_backbone` wraps a stock Qwen-VL model (loaded, or a Hub id / folder) with a fresh scorer;
- `from_pretrained` loads a full checkpoint, or assembles a scorer-only artifact (`scorer.safetensors` and a config
  naming the backbone) from its backbone and its scorer;
- `register_conversion_rules` gives each VisionSelector class the weight-renaming rules of its stock family, plus the
  scorer's (the paper's checkpoints keep it at `visual.importance_scorer.*`, ours at `scorer.*`).

Loading reads safetensors only.
"""

from __future__ import annotations

import copy
import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers.configuration_utils import PreTrainedConfig
from transformers.utils import cached_file

from .compatibility import missing_internal
from .families import MODEL_CLASSES, visionselector_class_for
from .generation import GENERATION_SELECTION_FIELDS, check_generation_selection_settings
from .scoring import build_scorer

# Internals below the public API of transformers (the weight-renaming rules): a release that moves one fails here.
try:
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming
except ImportError as error:
    raise missing_internal(error) from error

# A scorer-only artifact (see `visionselector.publishing.save_scorer`): its scorer tensors, named as in `state_dict()`.
SCORER_WEIGHTS_NAME = "scorer.safetensors"
# The scorer's tensors are named with this prefix in the full model's state dict (`scorer.q_proj.weight`, ...).
SCORER_PREFIX = "scorer."
# The `from_pretrained` arguments that say where an artifact's files are.
HUB_LOCATION_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
# Those that also say where a scorer-only artifact's backbone is: its revision is the config's, and it has no subfolder.
BACKBONE_LOCATION_KWARGS = tuple(name for name in HUB_LOCATION_KWARGS if name not in ("revision", "subfolder"))


def scorer_unquantized(quantization_config):
    """A copy of a transformers quantization config (object or dict) that leaves the scorer, and as by default the
    output head, unquantized: `scorer` added to `modules_to_not_convert` (`llm_int8_skip_modules` for bitsandbytes).
    The scorer is small, and trains and ranks in floating point."""
    config = copy.deepcopy(quantization_config)
    values = config if isinstance(config, dict) else vars(config)
    name = "llm_int8_skip_modules" if "llm_int8_skip_modules" in values else "modules_to_not_convert"
    skipped = list(values.get(name) or ["lm_head"])  # None: transformers' default skips the output head
    if "scorer" not in skipped:
        skipped.append("scorer")
    if isinstance(config, dict):
        config[name] = skipped
    else:
        setattr(config, name, skipped)
    return config


class VisionSelectorLoadingMixin:
    """Construction and loading of a VisionSelector model (see the module docstring); mixed into `VisionSelectorMixin`."""


    @classmethod
    def from_backbone(
        cls,
        model_or_path,
        *,
        revision: str | None = None,
        dtype=None,
        device_map=None,
        attn_implementation: str | None = None,
        quantization_config=None,
        use_kernels: bool | None = None,
        **config_overrides,
    ):
        """A VisionSelector around a stock Qwen-VL model, with the backbone's weights and a fresh scorer.

        Whatever class it is called on, it returns the VisionSelector class of the backbone's family (Qwen2-VL,
        Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5 or Qwen3.5-MoE).

        Args:
            model_or_path (stock `*ForConditionalGeneration` or `str`): a loaded backbone, whose tensors the new
                model shares (no copy), or a Hub id / folder of a stock checkpoint.
            revision, dtype, device_map, attn_implementation, quantization_config, use_kernels: passed to
                `from_pretrained` for a path (a quantized backbone keeps the scorer unquantized: see
                `scorer_unquantized`). A loaded backbone's own Hub-kernel choice (`backbone.use_kernels`;
                transformers 5.25's `from_pretrained` turns kernels on by default) is applied to the new model, so
                that it runs the same kernels as the stock model.
            **config_overrides: VisionSelector configuration fields (e.g. `retention_ratio=0.3`).
        """
        # The most derived stock class the backbone is an instance of: a registered family may subclass another's.
        stock_matches = [
            selector_class
            for selector_class in MODEL_CLASSES.values()
            if isinstance(model_or_path, selector_class.stock_class) and not isinstance(model_or_path, VisionSelectorLoadingMixin)
        ]
        if stock_matches:
            selector_class = next(
                c for c in stock_matches if all(issubclass(c.stock_class, other.stock_class) for other in stock_matches)
            )
            return selector_class._wrap_backbone(model_or_path, **config_overrides)
        if not isinstance(model_or_path, (str, bytes)) and not hasattr(model_or_path, "__fspath__"):
            accepted = ", ".join(c.stock_class.__name__ for c in MODEL_CLASSES.values())
            raise ValueError(
                f"`model_or_path` must be a stock {accepted}, or a Hub id / folder of one, got "
                f"{type(model_or_path).__name__}."
            )
        from transformers import AutoConfig

        path = str(model_or_path)
        _check_local_folder(path, "model_or_path")
        backbone_config = AutoConfig.from_pretrained(path, revision=revision)
        selector_class = visionselector_class_for(backbone_config.model_type, path)
        config_overrides.setdefault("base_model_name_or_path", path)
        config_overrides.setdefault("base_model_revision", revision)
        config = selector_class.config_class.from_backbone_config(backbone_config, **config_overrides)
        loading = {
            "dtype": dtype,
            "device_map": device_map,
            "attn_implementation": attn_implementation,
            "quantization_config": quantization_config,
            "use_kernels": use_kernels,
        }
        return selector_class.from_pretrained(
            path, config=config, revision=revision, **{k: v for k, v in loading.items() if v is not None}
        )


    @classmethod
    def _wrap_backbone(cls, backbone, **config_overrides):
        config_overrides.setdefault("base_model_name_or_path", backbone.config.name_or_path or None)
        config = cls.config_class.from_backbone_config(backbone.config, **config_overrides)
        config._attn_implementation = backbone.config._attn_implementation
        with torch.device("meta"):
            model = cls(config)
        # Take the backbone's tensors as they are (assign, no copy), then its non-persistent buffers.
        result = model.load_state_dict(backbone.state_dict(), strict=False, assign=True)
        scorer_keys = {f"{SCORER_PREFIX}{name}" for name, _ in model.scorer.named_parameters()}
        if set(result.missing_keys) != scorer_keys or result.unexpected_keys:
            raise ValueError(
                f"The backbone does not match a {cls.stock_class.__name__} of its config: missing "
                f"{sorted(set(result.missing_keys) - scorer_keys)}, unexpected {sorted(result.unexpected_keys)}."
            )
        for name, buffer in backbone.named_buffers():
            module_name, _, buffer_name = name.rpartition(".")
            setattr(model.get_submodule(module_name), buffer_name, buffer)
        parameter = next(backbone.parameters())
        model.scorer.to_empty(device=parameter.device).to(parameter.dtype)
        model._init_weights(model.scorer)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.get_input_embeddings().weight
        model.generation_config = copy.deepcopy(backbone.generation_config)
        model.train(backbone.training)
        # The backbone's Hub-kernel choice (`from_pretrained` applies kernels by default from transformers 5.25 on; a
        # model built from its config does not): the wrapped model runs the same kernels as the stock one.
        if getattr(backbone, "use_kernels", False):
            model.set_use_kernels(True, getattr(backbone, "kernel_config", None))
        return model


    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """[`~PreTrainedModel.from_pretrained`] for full checkpoints, and the assembly of scorer-only artifacts.

        A scorer-only artifact (its config says `scorer_only=True`; see `save_scorer`) holds the scorer in
        `scorer.safetensors` and no backbone: the backbone is loaded from the config's `base_model_name_or_path` at
        `base_model_revision`, then the scorer from the artifact. The location arguments (`revision`, `subfolder`,
        `token`, `cache_dir`, `local_files_only`, ...) find the artifact's files; all but `revision` and
        `subfolder` apply to the backbone too. The other arguments (`dtype`, `device_map`, ...) load the backbone.

        A `retention_ratio` or `selector` in the checkpoint's `generation_config.json` is checked here, and used
        by `generate` as its default.
        """
        loaded = cls._load_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if pretrained_model_name_or_path is not None and kwargs.get("generation_config") is None:
            # transformers drops every field it does not know from a `generation_config.json` marked
            # `_from_model_config` (as `save_pretrained` marks an untouched one): take ours from the file itself.
            hub_kwargs = {name: kwargs[name] for name in HUB_LOCATION_KWARGS if name in kwargs}
            path = cached_file(
                pretrained_model_name_or_path, "generation_config.json", _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False, **hub_kwargs,
            )
            if path is not None:
                with open(path, encoding="utf-8") as file:
                    stored = json.load(file)
                for name in GENERATION_SELECTION_FIELDS:
                    if stored.get(name) is not None and getattr(model.generation_config, name, None) is None:
                        setattr(model.generation_config, name, stored[name])
        check_generation_selection_settings(model.generation_config, f"the generation config of {pretrained_model_name_or_path}")
        return loaded


    def save_pretrained(self, save_directory, *args, **kwargs):
        """[`~PreTrainedModel.save_pretrained`], refusing a `retention_ratio` or `selector` in the generation config
        that `from_pretrained` would refuse."""
        check_generation_selection_settings(self.generation_config, "model.generation_config")
        return super().save_pretrained(save_directory, *args, **kwargs)


    @classmethod
    def _load_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        if pretrained_model_name_or_path is not None and not isinstance(config, PreTrainedConfig):
            _check_local_folder(str(pretrained_model_name_or_path), "pretrained_model_name_or_path")
        hub_kwargs = {name: kwargs[name] for name in HUB_LOCATION_KWARGS if name in kwargs}
        if kwargs.get("quantization_config") is not None:
            kwargs["quantization_config"] = scorer_unquantized(kwargs["quantization_config"])
        if pretrained_model_name_or_path is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        if not isinstance(config, PreTrainedConfig):
            stored, _ = cls.config_class.get_config_dict(config or pretrained_model_name_or_path, **hub_kwargs)
            if not stored.get("scorer_only", False):
                return cls._from_full_checkpoint(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
            # As `PreTrainedModel.from_pretrained` does: keyword arguments that are config fields update the config.
            loading = {name: kwargs.pop(name) for name in ("dtype", "torch_dtype", "quantization_config") if name in kwargs}
            config, kwargs = cls.config_class.from_pretrained(
                config or pretrained_model_name_or_path, return_unused_kwargs=True, **kwargs
            )
            kwargs.update(loading)
        elif not getattr(config, "scorer_only", False):
            return cls._from_full_checkpoint(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

        scorer_file = cached_file(
            pretrained_model_name_or_path, SCORER_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
        )
        if scorer_file is None:
            raise ValueError(
                f"{pretrained_model_name_or_path} is a scorer-only artifact without {SCORER_WEIGHTS_NAME}: its scorer "
                "weights must be that safetensors file (no other format is loaded). Write it with `save_scorer`."
            )
        backbone_kwargs = {
            name: value for name, value in {**kwargs, **hub_kwargs}.items() if name not in ("revision", "subfolder")
        }
        output_loading_info = backbone_kwargs.pop("output_loading_info", False)
        base = config.base_model_name_or_path
        source = f"the backbone {base!r} of the scorer-only artifact {pretrained_model_name_or_path}"
        if _looks_like_a_path(base) and not os.path.isdir(base):
            raise ValueError(
                f"Cannot load {source} (its config's `base_model_name_or_path`): not a folder on this machine. Pass "
                "`base_model_name_or_path=<folder or Hub id>` to `from_pretrained`, or fix it in the artifact's config."
            )
        revision = config.base_model_revision or "main"
        ignore_mismatched_sizes = backbone_kwargs.pop("ignore_mismatched_sizes", False)
        try:
            location = {name: backbone_kwargs[name] for name in BACKBONE_LOCATION_KWARGS if name in backbone_kwargs}
            base_type = cls.config_class.get_config_dict(base, **{**location, "revision": revision})[0].get("model_type")
            if visionselector_class_for(base_type, source).config_class.model_type != config.model_type:
                raise ValueError(
                    f"{source} is a {base_type!r} model, but the artifact is a {config.model_type!r} scorer: load it on "
                    "a backbone of its own family."
                )
            model, loading_info = super().from_pretrained(
                base,
                *model_args,
                config=config,
                revision=revision,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below as a ValueError naming both shapes
                **backbone_kwargs,
            )
        except OSError as error:
            raise OSError(f"Cannot load {source} (its config's `base_model_name_or_path`): {error}") from error
        mismatched = sorted(loading_info["mismatched_keys"], key=str)
        if mismatched and not ignore_mismatched_sizes:
            described = "; ".join(f"{name}: {tuple(given)} in the backbone, {tuple(expected)} in the artifact's config" for name, given, expected in mismatched[:5])
            raise ValueError(
                f"The scorer-only artifact {pretrained_model_name_or_path} was made for another size of backbone than "
                f"{source}: {len(mismatched)} tensors differ ({described}). Load it on the backbone it was trained on."
            )
        model.load_scorer(scorer_file)
        model.config.scorer_only = False  # the model is whole now; `save_pretrained` writes a full checkpoint
        model.config.name_or_path = str(pretrained_model_name_or_path)
        return (model, loading_info) if output_loading_info else model


    @classmethod
    def _from_full_checkpoint(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """The stock loading of a full checkpoint, with a clear `ValueError` for a scorer of another width."""
        if kwargs.get("ignore_mismatched_sizes"):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        output_loading_info = kwargs.pop("output_loading_info", False)
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            raise ValueError(
                f"Cannot read the weights of {pretrained_model_name_or_path}: {_unreadable_safetensors(pretrained_model_name_or_path)}"
                f"{error} (a truncated or corrupted file?)."
            ) from error
        mismatched = sorted(loading_info["mismatched_keys"], key=str)
        described = "; ".join(f"{name}: {tuple(given)} given, {tuple(expected)} expected" for name, given, expected in mismatched)
        if any(name.startswith(SCORER_PREFIX) for name, *_ in mismatched):
            raise ValueError(
                f"The checkpoint {pretrained_model_name_or_path} does not fit its configuration (text hidden size "
                f"{model.config.text_config.hidden_size}, scorer_hidden_size {model.config.scorer_hidden_size}): {described}."
            )
        if mismatched:  # what the stock loading raises, since the caller did not ask to ignore mismatched sizes
            raise RuntimeError(
                f"The checkpoint {pretrained_model_name_or_path} has tensors of other shapes than the model: {described}. "
                "Pass `ignore_mismatched_sizes=True` to load it with those tensors freshly initialised."
            )
        return (model, loading_info) if output_loading_info else model


    def load_scorer(self, weights: str | dict[str, torch.Tensor], source: str | None = None) -> None:
        """Loads scorer weights: a safetensors file, or tensors named as in `state_dict()` (`scorer.q_proj.weight`, ...).

        Raises a `ValueError` naming the tensors and shapes unless they are exactly this model's scorer.
        """
        if not isinstance(weights, dict):
            source = source or str(weights)
            try:
                weights = load_file(weights)
            except SafetensorError as error:
                raise ValueError(f"Cannot read the scorer weights {weights}: {error} (a truncated or corrupted file?).") from error
        check_scorer_tensors(weights, self.config, source or "the scorer weights")
        with torch.no_grad():
            self.scorer.load_state_dict({name.removeprefix(SCORER_PREFIX): value for name, value in weights.items()})


def check_scorer_tensors(tensors: dict[str, torch.Tensor], config, source: str) -> None:
    """Raises a `ValueError` unless `tensors` are exactly the `scorer.*` tensors of a model with `config`."""
    with torch.device("meta"):
        reference = build_scorer(config)
    expected = {f"{SCORER_PREFIX}{name}": value.shape for name, value in reference.state_dict().items()}
    if set(tensors) != set(expected):
        raise ValueError(
            f"{source} must hold exactly the tensors {sorted(expected)}: missing {sorted(set(expected) - set(tensors))}, "
            f"unexpected {sorted(set(tensors) - set(expected))}."
        )
    mismatched = [
        f"{name}: {tuple(tensors[name].shape)} given, {tuple(shape)} expected"
        for name, shape in expected.items()
        if tensors[name].shape != shape
    ]
    if mismatched:
        raise ValueError(
            f"{source} does not fit the backbone (text hidden size {config.text_config.hidden_size}, "
            f"scorer_hidden_size {config.scorer_hidden_size}): " + "; ".join(mismatched) + "."
        )


def _unreadable_safetensors(folder) -> str:
    """"<file>: " for the first safetensors file of a local `folder` that cannot be opened, else ""."""
    if not os.path.isdir(str(folder)):
        return ""
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            try:
                with safe_open(os.path.join(folder, name), "pt") as handle:
                    for key in handle.keys():
                        handle.get_slice(key)
            except (SafetensorError, OSError):
                return f"{os.path.join(folder, name)}: "
    return ""


def _check_local_folder(name: str, argument: str) -> None:
    """A `ValueError` for a `name` that can only be a local path (see `_looks_like_a_path`) but is not a folder here,
    where the Hub client would answer "Repo id must be in the form 'repo_name' or 'namespace/repo_name'"."""
    if _looks_like_a_path(name) and not os.path.isdir(os.path.expanduser(name)):
        what = "a file, not a folder" if os.path.isfile(os.path.expanduser(name)) else "not a folder on this machine"
        raise ValueError(f"`{argument}` {name!r} is {what}; give a checkpoint folder or a Hub id (org/name).")


def _looks_like_a_path(name: str) -> bool:
    """Whether `name` can only be a local path: absolute, relative to `.`/`~`, or deeper than a Hub `org/name`."""
    return os.path.isabs(name) or name.startswith((".", "~")) or len(name.replace(os.sep, "/").split("/")) > 2


def register_conversion_rules(model_class: type, stock_type: str) -> None:
    """Gives `model_class` the checkpoint renaming rules of its stock family, the scorer's first.

    A remote-code class is not under `transformers.`, so a family's checkpoint renaming rules (Qwen2/2.5-VL on disk:
    `visual.*`, `model.layers.*`; in memory: `model.visual.*`, `model.language_model.*`; Qwen3-VL-MoE: fused experts)
    must be registered for it by name, or a stock checkpoint would load with the language model left at random. The
    paper's released checkpoints (transformers 4.5x) keep the scorer in the vision tower, at
    `visual.importance_scorer.*`; that rule comes first, or `^visual` -> `model.visual` would take it. On save the
    rules are reversed and a reversed rule renames to its first source: `^scorer` is listed first so that our
    checkpoints always keep the scorer at `scorer.*`. Families whose checkpoints already use the in-memory names have
    no stock rules (None).
    """
    stock_rules = get_checkpoint_conversion_mapping(model_class.stock_class.__name__)
    if stock_rules is None:
        stock_rules = get_checkpoint_conversion_mapping(stock_type)
    register_checkpoint_conversion_mapping(
        model_class.__name__,
        [WeightRenaming(source_patterns=["^scorer", "^visual.importance_scorer"], target_patterns="scorer")]
        + list(stock_rules or []),
        overwrite=True,
    )


__all__ = [
    "BACKBONE_LOCATION_KWARGS",
    "HUB_LOCATION_KWARGS",
    "SCORER_PREFIX",
    "SCORER_WEIGHTS_NAME",
    "VisionSelectorLoadingMixin",
    "check_scorer_tensors",
    "register_conversion_rules",
    "scorer_unquantized",
]
