"""`VisionSelectorSFTTrainer`: trains only the scorer of a VisionSelector with TRL's `SFTTrainer`.

In training mode the model keeps every visual token and scales each merged token by its differentiable top-k mask
value, so the language-modelling loss of the frozen backbone reaches the scorer. This trainer adds the curriculum term
`lambda * BCE(soft_mask, hard_mask)`, with lambda annealed over the run, freezes everything but the scorer, logs the
parts of the loss, and keeps intermediate checkpoints down to the scorer.
"""

from __future__ import annotations

import os

import safetensors.torch
import torch
from transformers import PreTrainedConfig, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.utils import logging
from trl import SFTTrainer

from modeling_visionselector import (
    SCORER_WEIGHTS_NAME,
    VISIONSELECTOR_CLASSES,
    VisionSelectorForConditionalGeneration,
    scorer_state_dict,
    visionselector_class_for,
)

from .config import VisionSelectorSFTConfig
from .losses import mask_hard_distance, mask_regularization, mask_sharpness
from .schedule import annealed_reg_weight

logger = logging.get_logger(__name__)

SCORER_PREFIX = "scorer."
# Intermediate checkpoints: the scorer's tensors, under their names in the full model (`scorer.q_proj.weight`, ...),
# in the file a scorer-only artifact uses.
SCORER_CHECKPOINT_NAME = SCORER_WEIGHTS_NAME
_BACKBONE_LOADING_KWARGS = ("revision", "dtype", "device_map", "attn_implementation")


def load_visionselector(model_name_or_path: str, **kwargs):
    """A VisionSelector from a folder or Hub id of either a VisionSelector or a stock Qwen-VL backbone of any family.

    A stock backbone is wrapped with [`VisionSelectorForConditionalGeneration.from_backbone`] (fresh scorer) into the
    VisionSelector class of its family; a VisionSelector is loaded with its trained scorer.

    Args:
        model_name_or_path (`str`): the checkpoint.
        **kwargs: `from_pretrained` arguments (`revision`, `dtype`, `device_map`, `attn_implementation`, ...).
            `trust_remote_code` is ignored: the classes are imported from this package.
    """
    kwargs = {key: value for key, value in kwargs.items() if value is not None and key != "trust_remote_code"}
    if isinstance(kwargs.get("dtype"), str) and kwargs["dtype"] != "auto":
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    config_dict, _ = PreTrainedConfig.get_config_dict(model_name_or_path, revision=kwargs.get("revision"))
    model_type = config_dict.get("model_type")
    model_class = visionselector_class_for(model_type, repr(model_name_or_path))
    if model_type == model_class.config_class.model_type:
        return model_class.from_pretrained(model_name_or_path, **kwargs)
    unsupported = sorted(set(kwargs) - set(_BACKBONE_LOADING_KWARGS))
    if unsupported:
        raise ValueError(
            f"Loading a stock {model_type} backbone accepts only {list(_BACKBONE_LOADING_KWARGS)}, got {unsupported}."
        )
    return model_class.from_backbone(model_name_or_path, **kwargs)


class VisionSelectorSFTTrainer(SFTTrainer):
    """[`~trl.SFTTrainer`] that trains only the scorer of a [`VisionSelectorForConditionalGeneration`].

    The loss is `CE + lambda * BCE(soft_mask, hard_mask)`, lambda going from `args.reg_weight_start` to
    `args.reg_weight_end` as a function of `state.global_step / state.max_steps` (so a resumed run continues the
    schedule). Labels at the image/video placeholders and the vision start/end tokens are ignored. Logged beside the
    loss: `ce_loss`, `reg_loss`, `reg_weight`, `mask_sharpness` (1 - mean binary entropy of the soft mask, 1 when binary),
    `mask_hard_distance` (mean |soft - hard|), `mean_token_accuracy` and `num_tokens`.

    In evaluation the model runs as in inference (visual tokens pruned at `config.retention_ratio`), so `eval_loss`
    is the language-modelling loss of the pruned model.

    Args:
        model (a VisionSelector model, a stock Qwen-VL model of a supported family, or `str`):
            the model; a stock backbone (object or path) is wrapped with a fresh scorer. A path is loaded with
            `args.model_init_kwargs`.
        args ([`VisionSelectorSFTConfig`], *optional*): the configuration; other `TrainingArguments` are converted.
        **kwargs: the other arguments of [`~trl.SFTTrainer`] (`train_dataset`, `processing_class`, ...), except
            `peft_config`: the scorer is the only trainable part.
    """

    _tag_names = ["trl", "sft", "visionselector"]
    # The loss is a per-micro-batch mean (the model reports no `num_items_in_batch` support), so `Trainer` divides it
    # by the number of gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: VisionSelectorSFTConfig | TrainingArguments | None = None, **kwargs):
        if kwargs.get("peft_config") is not None:
            raise ValueError("`peft_config` is not supported: VisionSelectorSFTTrainer trains the scorer only.")
        if args is None:
            name = model if isinstance(model, str) else model.config.name_or_path or "visionselector"
            args = VisionSelectorSFTConfig(f"{os.path.basename(str(name).rstrip('/'))}-VisionSelector")
        elif not isinstance(args, VisionSelectorSFTConfig):
            dict_args = args.to_dict()
            dict_args["hub_token"] = args.hub_token  # to_dict hides the hub_token
            args = VisionSelectorSFTConfig(**dict_args)

        if args.loss_type != "nll" or args.label_smoothing_factor > 0 or kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "VisionSelectorSFTTrainer's loss is the model's cross-entropy plus the mask regularisation; got "
                f"loss_type={args.loss_type!r}, label_smoothing_factor={args.label_smoothing_factor!r} and "
                f"compute_loss_func={kwargs.get('compute_loss_func')!r}, expected 'nll', 0 and None."
            )
        if isinstance(model, str):
            model = load_visionselector(model, **(args.model_init_kwargs or {}))
            args.model_init_kwargs = None  # used here; SFTTrainer would warn that a loaded model ignores them
        elif _is_stock_backbone(model):
            model = VisionSelectorForConditionalGeneration.from_backbone(model)
        if not _is_visionselector(model):
            raise ValueError(
                f"VisionSelectorSFTTrainer needs a VisionSelector or a stock Qwen-VL backbone ({sorted(VISIONSELECTOR_CLASSES)}), "
                f"got {type(model).__name__}."
            )
        model.config.train_retention_ratio = args.train_retention_ratio
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(SCORER_PREFIX))

        had_use_cache, use_cache = hasattr(model.config, "use_cache"), getattr(model.config, "use_cache", None)
        super().__init__(model, args, **kwargs)
        # `Trainer` writes `args.use_cache` (False) into the model config, which every saved model would then carry;
        # the loss passes `use_cache=False` itself, so the config keeps the model's own setting.
        if had_use_cache:
            self.model.config.use_cache = use_cache
        elif hasattr(self.model.config, "use_cache"):
            delattr(self.model.config, "use_cache")

        self._vision_token_ids = torch.tensor(
            sorted(
                {
                    model.config.image_token_id,
                    model.config.video_token_id,
                    model.config.vision_start_token_id,
                    model.config.vision_end_token_id,
                }
            )
        )
        # With mixed precision through autocast, a half-precision scorer would also take half-precision optimizer
        # updates, which round lr-sized steps away; keep its few weights in float32 (autocast casts them per matmul).
        # DeepSpeed and FSDP manage the precision of the parameters themselves.
        scorer = self.model.scorer
        half = next(scorer.parameters()).dtype in (torch.float16, torch.bfloat16)
        if half and (args.bf16 or args.fp16) and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            scorer.float()
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        self.num_trainable_parameters = trainable
        logger.info(f"Training the scorer only: {trainable:,} of {total:,} parameters ({100 * trainable / total:.4f}%).")

    # ------------------------------------------------------------------ loss

    @property
    def reg_weight(self) -> float:
        """The weight lambda of the mask regularisation at the current step."""
        progress = self.state.global_step / self.state.max_steps if self.state.max_steps else 0.0
        return annealed_reg_weight(
            progress, self.args.reg_weight_start, self.args.reg_weight_end, self.args.reg_weight_schedule
        )

    def _ignore_vision_tokens(self, input_ids: torch.LongTensor, labels: torch.LongTensor) -> torch.LongTensor:
        """Labels with -100 at the image/video placeholders and the vision start/end tokens (TRL's collator keeps them)."""
        ignored = torch.isin(input_ids, self._vision_token_ids.to(input_ids.device))
        return labels.masked_fill(ignored.to(labels.device), -100)

    def _log_metric(self, mode: str, name: str, value: torch.Tensor | float) -> None:
        value = torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device).detach().reshape(1)
        self._metrics[mode][name].append(self.accelerator.gather(value).mean().item())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs = {**inputs, "use_cache": False}
        labels = inputs.get("labels")
        if labels is not None:
            labels = inputs["labels"] = self._ignore_vision_tokens(inputs["input_ids"], labels)

        # The model's own forward, not `fused_lm_head=True`: the fused head calls the backbone directly, which would
        # skip the scorer and its soft mask.
        outputs = model(**inputs)
        ce_loss = outputs.loss
        loss = ce_loss
        if outputs.get("soft_mask") is not None:
            reg_weight = self.reg_weight
            reg_loss = mask_regularization(outputs.soft_mask, outputs.hard_mask)
            loss = ce_loss + reg_weight * reg_loss
            self._log_metric(mode, "reg_loss", reg_loss)
            self._log_metric(mode, "reg_weight", reg_weight)
            self._log_metric(mode, "mask_sharpness", mask_sharpness(outputs.soft_mask))
            self._log_metric(mode, "mask_hard_distance", mask_hard_distance(outputs.soft_mask, outputs.hard_mask))
        if ce_loss is not None:
            self._log_metric(mode, "ce_loss", ce_loss)

        # Token accuracy, where the logits cover the whole sequence (in eval the pruned sequence is shorter).
        if labels is not None and outputs.logits is not None and outputs.logits.shape[1] == labels.shape[1]:
            with torch.no_grad():
                shifted = labels[:, 1:].to(outputs.logits.device)
                valid = shifted != -100
                correct = (outputs.logits[:, :-1].argmax(-1) == shifted) & valid
                num_valid = self.accelerator.gather(valid.sum().reshape(1)).sum()
                num_correct = self.accelerator.gather(correct.sum().reshape(1)).sum()
                self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid.clamp(min=1)).item())
        if mode == "train" and "attention_mask" in inputs:
            self._total_train_tokens += self.accelerator.gather(inputs["attention_mask"].sum().reshape(1)).sum().item()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------ checkpoints

    def _scorer_only_checkpoints(self) -> bool:
        # DeepSpeed and FSDP shard or wrap the parameters and save through their own engines.
        return self.args.save_scorer_only_checkpoints and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)

    def _save_checkpoint(self, model, trial):
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Writes the full model with `save_pretrained`; inside a checkpoint, only the scorer (see the config)."""
        if getattr(self, "_saving_checkpoint", False) and self._scorer_only_checkpoints():
            self._save_scorer(output_dir if output_dir is not None else self.args.output_dir)
        else:
            super().save_model(output_dir, _internal_call)

    def _save_scorer(self, output_dir: str) -> None:
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        safetensors.torch.save_file(
            scorer_state_dict(model), os.path.join(output_dir, SCORER_CHECKPOINT_NAME), metadata={"format": "pt"}
        )
        model.config.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_scorer(self, checkpoint: str, model=None) -> None:
        model = self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)
        path = os.path.join(checkpoint, SCORER_CHECKPOINT_NAME)
        model.load_scorer(path, source=f"The scorer checkpoint {path}")
        logger.info(f"Loaded the scorer from {checkpoint}.")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if os.path.isfile(os.path.join(resume_from_checkpoint, SCORER_CHECKPOINT_NAME)):
            self._load_scorer(resume_from_checkpoint, model)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        best = self.state.best_model_checkpoint
        if os.path.isfile(os.path.join(best, SCORER_CHECKPOINT_NAME)) and self._scorer_only_checkpoints():
            self._load_scorer(best)
        else:
            super()._load_best_model()


def _is_visionselector(model) -> bool:
    # By model type, not class: a model loaded with `trust_remote_code` has its own copy of the class.
    model_types = {selector_class.config_class.model_type for selector_class in VISIONSELECTOR_CLASSES.values()}
    return getattr(model.config, "model_type", None) in model_types and hasattr(model, "scorer")


def _is_stock_backbone(model) -> bool:
    stock_classes = tuple(selector_class.stock_class for selector_class in VISIONSELECTOR_CLASSES.values())
    return isinstance(model, stock_classes) and not _is_visionselector(model)


__all__ = ["VisionSelectorSFTTrainer", "load_visionselector", "SCORER_CHECKPOINT_NAME"]
