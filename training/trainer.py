"""`VisionSelectorSFTTrainer`: trains only the scorer of a VisionSelector with TRL's `SFTTrainer`.

In training mode the model keeps every visual token and scales each merged token by its differentiable top-k mask
value, so the language-modelling loss of the frozen backbone reaches the scorer. This trainer freezes everything but
the scorer, computes the objective of `objective.py` with lambda on its schedule, logs the parts of the loss and the
state of the mask, and keeps intermediate checkpoints down to the scorer.
"""

from __future__ import annotations

import glob
import os
import shutil
import warnings

import torch
from transformers import PreTrainedConfig, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import logging
from trl import SFTTrainer
from trl.chat_template_utils import get_training_chat_template

from modeling_visionselector import (
    SCORER_PREFIX,
    SCORER_WEIGHTS_NAME,
    VISIONSELECTOR_CLASSES,
    VisionSelectorForConditionalGeneration,
    visionselector_class_for,
)
from visionselector.publishing import save_scorer

from .collator import IGNORE_INDEX, VisionSelectorCollator, chatml_turn_ids
from .config import VisionSelectorSFTConfig
from .data import VisionLanguageCollator, normalize_dataset, uses_vision_language_collator
from .losses import mask_hard_distance, mask_sharpness
from .objective import ObjectiveStep, VisionSelectorObjective
from .quantization import check_scorer_trainable
from .schedule import annealed_mask_temperature, annealed_reg_weight

logger = logging.get_logger(__name__)

# Intermediate checkpoints: the scorer's tensors, under their names in the full model (`scorer.q_proj.weight`, ...),
# in the file a scorer-only artifact uses.
SCORER_CHECKPOINT_NAME = SCORER_WEIGHTS_NAME
_BACKBONE_LOADING_KWARGS = ("revision", "dtype", "device_map", "attn_implementation", "quantization_config")
# The saturation warning: a soft mask this binary ...
SATURATED_SHARPNESS = 0.95
# ... within this share of the run means the selection locked in before the scorer learned what matters.
EARLY_SHARE = 0.2
# `checkpoint-N` is written as `.staging-checkpoint-N/checkpoint-N`, then moved into place.
STAGING_PREFIX = ".staging-"


def load_visionselector(model_name_or_path: str, **kwargs):
    """A VisionSelector from a folder or Hub id of either a VisionSelector or a Qwen-VL backbone of any family.

    A backbone is wrapped with [`VisionSelectorForConditionalGeneration.from_backbone`] (fresh scorer) into the
    VisionSelector class of its family; a VisionSelector is loaded with its trained scorer.

    Args:
        model_name_or_path (`str`): the checkpoint.
        **kwargs: `from_pretrained` arguments (`revision`, `dtype`, `device_map`, `attn_implementation`,
            `quantization_config`: a frozen quantized backbone, the scorer left unquantized, ...).
            `trust_remote_code` is ignored: the classes are imported from this package.
    """
    kwargs = {key: value for key, value in kwargs.items() if value is not None and key != "trust_remote_code"}
    if isinstance(kwargs.get("dtype"), str) and kwargs["dtype"] != "auto":
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    if os.path.isabs(model_name_or_path) or model_name_or_path.startswith((".", "~")) or model_name_or_path.count("/") > 1:
        if not os.path.isdir(os.path.expanduser(model_name_or_path)):
            raise ValueError(f"`model` {model_name_or_path!r} is not a folder on this machine; give a checkpoint folder or a Hub id.")
    config_dict, _ = PreTrainedConfig.get_config_dict(model_name_or_path, revision=kwargs.get("revision"))
    model_type = config_dict.get("model_type")
    model_class = visionselector_class_for(model_type, repr(model_name_or_path))
    if model_type == model_class.config_class.model_type:
        return model_class.from_pretrained(model_name_or_path, **kwargs)
    unsupported = sorted(set(kwargs) - set(_BACKBONE_LOADING_KWARGS))
    if unsupported:
        raise ValueError(
            f"Loading a {model_type} backbone accepts only {list(_BACKBONE_LOADING_KWARGS)}, got {unsupported}."
        )
    # A local backbone is recorded by its absolute path, so the saved checkpoints load from any directory.
    base = os.path.abspath(model_name_or_path) if os.path.isdir(model_name_or_path) else model_name_or_path
    return model_class.from_backbone(model_name_or_path, base_model_name_or_path=base, **kwargs)


class VisionSelectorSFTTrainer(SFTTrainer):
    """[`~trl.SFTTrainer`] that trains only the scorer of a [`VisionSelectorForConditionalGeneration`].

    The loss is the objective of [`VisionSelectorObjective`] (language-modelling CE plus lambda x the mask
    regularisation), lambda going from `args.reg_weight_start` to `args.reg_weight_end` as a function of
    `state.global_step / state.max_steps` (so a resumed run continues the schedule); `objective=` replaces it. The CE
    covers the answer: the assistant turns of `messages` data (`args.assistant_only_loss`), the completion of
    prompt-completion data (`args.completion_only_loss`); never the image/video placeholders or the vision start/end
    tokens. Logged beside the loss: the objective's metrics (`ce_loss`, `reg_loss`, `reg_weight` by default),
    `mask_sharpness` (1 - mean binary entropy of the soft mask, 1 when binary), `mask_hard_distance` (mean |soft -
    hard|), `score_std` (mean over images/videos of the standard deviation of their tokens' scores),
    `mean_token_accuracy` and `num_tokens` (and the step's `train_retention_ratio` when `args.train_retention_ratio_min`
    sets a range to draw it from). A soft mask sharper than 0.95 in the first fifth of the run triggers one
    warning: the selection is locking in early, usually because the learning rate is too high.

    In evaluation the model runs as in inference (visual tokens pruned at `config.retention_ratio`): `eval_loss`,
    `eval_mean_token_accuracy` and the `(logits, labels)` that `compute_metrics` receives are those of the pruned
    sequence.

    Intermediate checkpoints (`checkpoint-N/`) are scorer-only artifacts, as `save_scorer` writes them (loadable with
    `from_pretrained`), plus the optimizer, scheduler, RNG and trainer states; `save_model` writes the full model.
    Each is written under a staging name and renamed to `checkpoint-N` when complete, so `resume_from_checkpoint=True`
    never picks a half-written one after a crash.

    Args:
        model (a VisionSelector model, a Qwen-VL backbone of a supported family, or `str`):
            the model; a backbone (object or path) is wrapped with a fresh scorer. A path is loaded with
            `args.model_init_kwargs`.
        args ([`VisionSelectorSFTConfig`], *optional*): the configuration; other `TrainingArguments` are converted.
        objective (`Callable`, *optional*): the training objective, called once per micro-batch as
            `objective(outputs, labels, step)` with an [`ObjectiveStep`] and returning an [`ObjectiveOutput`] (the loss
            and the metrics to log); defaults to [`VisionSelectorObjective`]. A subclass of it can override one term.
        **kwargs: the other arguments of [`~trl.SFTTrainer`] (`train_dataset`, `processing_class`, ...), except
            `peft_config` (the scorer is the only trainable part) and `compute_loss_func` (deprecated by TRL; pass
            `objective=`).
    """

    _tag_names = ["trl", "sft", "visionselector"]

    def __init__(
        self, model, args: VisionSelectorSFTConfig | TrainingArguments | None = None, *, objective=None, **kwargs
    ):
        if kwargs.get("peft_config") is not None:
            raise ValueError("`peft_config` is not supported: VisionSelectorSFTTrainer trains the scorer only.")
        if not isinstance(model, str) and not isinstance(getattr(model, "config", None), PreTrainedConfig):
            raise ValueError(
                f"`model` must be a VisionSelector or a Qwen-VL backbone ({sorted(VISIONSELECTOR_CLASSES)}) or a "
                f"path to one, got {type(model).__name__}."
            )
        if args is None:
            name = model if isinstance(model, str) else model.config.name_or_path or "visionselector"
            args = VisionSelectorSFTConfig(f"{os.path.basename(str(name).rstrip('/'))}-VisionSelector")
        elif not isinstance(args, VisionSelectorSFTConfig):
            dict_args = args.to_dict()
            dict_args["hub_token"] = args.hub_token  # to_dict hides the hub_token
            args = VisionSelectorSFTConfig(**dict_args)

        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "VisionSelectorSFTTrainer takes its loss from `objective=` (a callable `objective(outputs, labels, step)` "
                "returning an `ObjectiveOutput`; subclass `VisionSelectorObjective` to change one term), not "
                f"`compute_loss_func` (deprecated by TRL), got compute_loss_func={kwargs['compute_loss_func']!r}."
            )
        if args.loss_type != "nll" or args.label_smoothing_factor > 0:
            raise ValueError(
                "VisionSelectorSFTTrainer's loss is its `objective` (by default the model's cross-entropy plus the mask "
                f"regularisation); got loss_type={args.loss_type!r} and label_smoothing_factor="
                f"{args.label_smoothing_factor!r}, expected 'nll' and 0."
            )
        if objective is not None and not callable(objective):
            raise ValueError(f"`objective` must be callable as `objective(outputs, labels, step)`, got {objective!r}.")
        self.objective = objective if objective is not None else VisionSelectorObjective()
        stock = _is_stock_backbone(model)
        if isinstance(model, str) or stock:
            set_seed(args.seed)  # a fresh scorer may be drawn below: the same on every rank and in every run of a seed
        if isinstance(model, str):
            model = load_visionselector(model, **(args.model_init_kwargs or {}))
            args.model_init_kwargs = None  # used here; SFTTrainer would warn that a loaded model ignores them
        elif stock:
            model = VisionSelectorForConditionalGeneration.from_backbone(model)
        if not _is_visionselector(model):
            raise ValueError(
                f"VisionSelectorSFTTrainer needs a VisionSelector or a Qwen-VL backbone ({sorted(VISIONSELECTOR_CLASSES)}), "
                f"got {type(model).__name__}."
            )
        model.config.train_retention_ratio = args.train_retention_ratio
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(SCORER_PREFIX))
        for split in ("train_dataset", "eval_dataset"):  # LLaVA / ShareGPT rows become `messages`, `images`, `videos`
            if kwargs.get(split) is not None and not isinstance(kwargs[split], dict):
                kwargs[split] = normalize_dataset(kwargs[split])
        turn_ids = self._resolve_answer_only_loss(args, kwargs)
        turn_ids = self._use_vision_language_collator(args, kwargs, turn_ids)

        had_use_cache, use_cache = hasattr(model.config, "use_cache"), getattr(model.config, "use_cache", None)
        # `Trainer` refuses a quantized model without adapters; the scorer is that adapter (float, never quantized).
        quantized = getattr(model, "is_quantized", False)
        if quantized:
            check_scorer_trainable(model)
            model.is_quantized = False
        try:
            super().__init__(model, args, **kwargs)
        finally:
            if turn_ids is not None:
                args.assistant_only_loss = True  # what the collator does; TRL's own masking was left off
            if quantized:
                model.is_quantized = True
        # `Trainer` writes `args.use_cache` (False) into the model config, which every saved model would then carry;
        # the loss passes `use_cache=False` itself, so the config keeps the model's own setting.
        if had_use_cache:
            self.model.config.use_cache = use_cache
        elif hasattr(self.model.config, "use_cache"):
            delattr(self.model.config, "use_cache")

        self._check_checkpoint_backbone(self.model)

        config = self.model.config
        self._vision_token_ids = torch.tensor(
            [config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id]
        )
        self.data_collator = VisionSelectorCollator(
            self.data_collator, self._vision_token_ids.tolist(), *(turn_ids or (None, None))
        )
        # `Trainer` then counts the supervised tokens of each optimizer step (`num_items_in_batch`) for `compute_loss`.
        self.model_accepts_loss_kwargs = True

        # With mixed precision through autocast, a half-precision scorer would also take half-precision optimizer
        # updates, which round lr-sized steps away; keep its few weights in float32 (autocast casts them per matmul).
        # DeepSpeed and FSDP manage the precision of the parameters themselves.
        scorer = self.model.scorer
        half = next(scorer.parameters()).dtype in (torch.float16, torch.bfloat16)
        if half and (args.bf16 or args.fp16) and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            scorer.float()
        self._warned_saturation = False
        self._token_counts = {"train": [0, 0], "eval": [0, 0]}  # correct and supervised tokens since the last log
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        self.num_trainable_parameters = trainable
        logger.info(f"Training the scorer only: {trainable:,} of {total:,} parameters ({100 * trainable / total:.4f}%).")

    def _check_checkpoint_backbone(self, model) -> None:
        """Scorer-only checkpoints point at the backbone: it must have a name, absolute if it is a local folder."""
        base = model.config.base_model_name_or_path
        if base and os.path.isdir(base):
            model.config.base_model_name_or_path = os.path.abspath(base)
        if self.args.save_strategy != "no" and self._scorer_only_checkpoints() and not base:
            raise ValueError(
                "Intermediate checkpoints are scorer-only artifacts that load the backbone from "
                "`config.base_model_name_or_path`, which this model lacks (it was wrapped from a backbone in memory). "
                "Set `model.config.base_model_name_or_path` to the backbone's Hub id or folder, pass the trainer its "
                "path, or save full checkpoints with `save_scorer_only_checkpoints=False`."
            )

    def _resolve_answer_only_loss(self, args, kwargs) -> tuple[list[int], int] | None:
        """Settles `args.assistant_only_loss` (`None`: yes for `messages` data); returns the ChatML turn ids when the
        collator must find the assistant turns itself because TRL has no marked template for the processor's."""
        dataset = kwargs.get("train_dataset")
        sample = _first_example(dataset) if dataset is not None else {}
        is_messages = "messages" in sample
        if args.assistant_only_loss is None:
            args.assistant_only_loss = is_messages
        processor = kwargs.get("processing_class")
        if not (args.assistant_only_loss and is_messages and kwargs.get("data_collator") is None and processor):
            return None
        try:
            get_training_chat_template(processor)  # None: the template is marked; a string: TRL has a marked copy
            return None
        except ValueError:
            pass
        turn_ids = chatml_turn_ids(getattr(processor, "tokenizer", processor))
        logger.info("The chat template has no generation markers: the assistant turns are found by ChatML boundaries.")
        args.assistant_only_loss = False  # for SFTTrainer, which would refuse the template; restored after it
        return turn_ids

    def _use_vision_language_collator(self, args, kwargs, turn_ids):
        """Rows with a `videos` column (what `visionselector_training.data` loads) are collated by
        `VisionLanguageCollator`, which opens each batch's images and video frames; the assistant turns are then
        found by their ChatML boundaries, whatever the template."""
        dataset = kwargs.get("train_dataset")
        if kwargs.get("data_collator") is not None or dataset is None:
            return turn_ids
        if not uses_vision_language_collator(next(iter(dataset))):
            return turn_ids
        processor = kwargs.get("processing_class")
        kwargs["data_collator"] = VisionLanguageCollator(processor, max_length=args.max_length)
        if args.assistant_only_loss and turn_ids is None:
            turn_ids = chatml_turn_ids(getattr(processor, "tokenizer", processor))
            args.assistant_only_loss = False  # for SFTTrainer; restored after it
        return turn_ids

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._is_vision_dataset and "videos" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "videos"]

    # ------------------------------------------------------------------ loss

    @property
    def train_retention_ratio(self) -> float:
        """The retention ratio of the current step: `args.train_retention_ratio`, or a draw from the range."""
        high, low = self.args.train_retention_ratio, self.args.train_retention_ratio_min
        if low is None or low == high:
            return high
        # seeded by the run's seed and the step alone: every micro-batch and rank of a step, and a resumed run,
        # draw the same ratio
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + self.state.global_step)
        return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()

    @property
    def reg_weight(self) -> float:
        """The weight lambda of the mask regularisation at the current step."""
        progress = self.state.global_step / self.state.max_steps if self.state.max_steps else 0.0
        return annealed_reg_weight(
            progress, self.args.reg_weight_start, self.args.reg_weight_end, self.args.reg_weight_schedule
        )

    @property
    def mask_temperature(self) -> float | None:
        """The temperature of the differentiable top-k at the current step; `None` for the paper's raw scores."""
        progress = self.state.global_step / self.state.max_steps if self.state.max_steps else 0.0
        return annealed_mask_temperature(
            progress, self.args.mask_temperature_start, self.args.mask_temperature_end, self.args.mask_temperature_schedule
        )

    def _log_metric(self, mode: str, name: str, value: torch.Tensor | float) -> float:
        value = torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device).detach().reshape(1)
        mean = self.accelerator.gather(value).mean().item()
        self._metrics[mode][name].append(mean)
        return mean

    def _check_batch(self, inputs) -> None:
        """`labels` must fit `input_ids`; the first training batch is checked for what would train the scorer on
        nothing: no supervised token (only the regulariser would train it) or no image/video (no gradient at all)."""
        labels, input_ids = inputs.get("labels"), inputs.get("input_ids")
        if labels is not None and input_ids is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"`labels` must have the shape of `input_ids` {tuple(input_ids.shape)} (one label per token), got "
                f"{tuple(labels.shape)}."
            )
        if not self.model.training or getattr(self, "_checked_first_batch", False):
            return
        self._checked_first_batch = True
        if labels is not None and not bool((labels != IGNORE_INDEX).any()):
            warnings.warn(
                "The first training batch has no supervised token (every label is -100): the cross-entropy is 0 and "
                "the scorer would train on the mask regulariser alone. Check that the rows have an assistant turn "
                "(or a completion) and that `max_length` does not cut the answers off.",
                stacklevel=2,
            )
        if inputs.get("pixel_values") is None and inputs.get("pixel_values_videos") is None:
            warnings.warn(
                "The first training batch holds no image or video: on text the scorer gets no gradient (grad_norm 0). "
                "Train on data with `images` or `videos`.",
                stacklevel=2,
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        self._check_batch(inputs)
        inputs = {**inputs, "use_cache": False}
        labels = inputs.pop("labels", None)
        if labels is not None:
            # The collator did it already, unless `compute_loss` is called on a batch of another: no loss at the
            # vision tokens.
            vision = torch.isin(inputs["input_ids"], self._vision_token_ids.to(inputs["input_ids"].device))
            labels = labels.masked_fill(vision.to(labels.device), IGNORE_INDEX)
        # The model's own forward, not `fused_lm_head=True`: the fused head calls the backbone directly, which would
        # skip the scorer and its soft mask. In training the logits cover the whole sequence; in eval the pruned one,
        # and the model returns the labels pruned alike.
        training = self.model.training
        if training:
            extra = {"retention_ratio": self.train_retention_ratio, "mask_temperature": self.mask_temperature}
            if extra["mask_temperature"] is not None:
                self._log_metric(mode, "mask_temperature", extra["mask_temperature"])
            if self.args.train_retention_ratio_min is not None:
                self._log_metric(mode, "train_retention_ratio", extra["retention_ratio"])
        else:
            extra = {} if labels is None else {"labels": labels}
        outputs = model(**inputs, **extra)
        if not training and labels is not None:
            labels = outputs.labels

        step = ObjectiveStep(
            reg_weight=self.reg_weight,
            num_items_in_batch=num_items_in_batch,
            gradient_accumulation_steps=self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1,
            num_processes=self.accelerator.num_processes if self.args.average_tokens_across_devices else 1,
            training=training,
        )
        result = self.objective(outputs, labels, step)
        loss = result.loss
        for name, value in result.metrics.items():
            self._log_metric(mode, name, value)
        if labels is not None:
            self._log_token_accuracy(mode, outputs.logits[:, :-1], labels[:, 1:].to(outputs.logits.device))
        if outputs.get("soft_mask") is not None:
            self._log_metric(mode, "mask_hard_distance", mask_hard_distance(outputs.soft_mask, outputs.hard_mask))
            sharpness = self._log_metric(mode, "mask_sharpness", mask_sharpness(outputs.soft_mask))
            score_std = None
            if outputs.get("scores") is not None:
                items = torch.split(outputs.scores.detach().float(), list(outputs.item_lengths))
                score_std = self._log_metric(mode, "score_std", torch.stack([item.std(correction=0) for item in items]).mean())
            self._warn_if_saturated(sharpness, score_std)
        if loss is None:
            loss = outputs.loss

        if mode == "train" and "attention_mask" in inputs:
            self._total_train_tokens += self.accelerator.gather(inputs["attention_mask"].sum().reshape(1)).sum().item()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if return_outputs and labels is not None and not training:
            outputs["labels"] = labels
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _log_token_accuracy(self, mode: str, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Counts correct and supervised tokens; `log` reports their ratio over everything since the last log."""
        valid = targets != IGNORE_INDEX
        correct = (logits.argmax(-1) == targets) & valid
        counts = torch.stack([correct.sum(), valid.sum()]).reshape(1, 2)
        num_correct, num_valid = self.accelerator.gather(counts).sum(0).tolist()
        self._token_counts[mode][0] += num_correct
        self._token_counts[mode][1] += num_valid

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        num_correct, num_valid = self._token_counts[mode]
        if num_valid:
            self._metrics[mode]["mean_token_accuracy"] = [num_correct / num_valid]
        self._token_counts[mode] = [0, 0]
        super().log(logs, start_time)

    def _warn_if_saturated(self, sharpness: float, score_std: float | None) -> None:
        step, total = self.state.global_step, self.state.max_steps
        if self._warned_saturation or not self.model.training or not total or step >= EARLY_SHARE * total:
            return
        if sharpness > SATURATED_SHARPNESS:
            self._warned_saturation = True
            if not self.accelerator.is_main_process:
                return
            spread = "" if score_std is None else f", score_std {score_std:.3g}"
            if self.args.mask_temperature_schedule == "paper":
                cause = (
                    "With mask_temperature_schedule='paper' the mask's sharpness is the spread of the raw scores, "
                    f"which grows with learning rate x feature norm (learning_rate={self.args.learning_rate:g}). Use "
                    "mask_temperature_schedule='geometric' (the default), or a lower learning rate (e.g. 10x)."
                )
            else:
                cause = (
                    f"The schedule's temperature is {self.mask_temperature:.3g} (mask_temperature_start="
                    f"{self.args.mask_temperature_start:g}): raise mask_temperature_start (e.g. to 1.0) so the "
                    f"mask starts soft, or lower reg_weight_start (now {self.args.reg_weight_start:g})."
                )
            warnings.warn(
                f"The soft top-k mask saturated early: mask_sharpness {sharpness:.3f} > {SATURATED_SHARPNESS} at "
                f"step {step} of {total}{spread}. The selection is locking in; if that happens before the scorer "
                f"has learned which tokens matter, training rarely recovers and held-out quality stays near random "
                f"selection. {cause}",
                stacklevel=2,
            )

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys: list[str] | None = None):
        """Evaluation on the pruned sequence: the logits and the labels returned are both the pruned ones."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, dict(inputs), return_outputs=True)
        loss = loss.detach() if loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        return loss, outputs.logits, outputs.get("labels")

    # ------------------------------------------------------------------ checkpoints

    def _scorer_only_checkpoints(self) -> bool:
        # DeepSpeed and FSDP shard or wrap the parameters and save through their own engines.
        return self.args.save_scorer_only_checkpoints and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is written: the staging folder, so that `Trainer` writes `checkpoint-N` inside it.
        staging = getattr(self, "_checkpoint_staging_dir", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Writes `checkpoint-N` whole or not at all: a crash (even SIGKILL) mid-save leaves no `checkpoint-N`.

        `Trainer` writes the folder in place, and `get_last_checkpoint` (`resume_from_checkpoint=True`) takes the
        highest number even when that folder is incomplete. Here `Trainer` writes it into `.staging-checkpoint-N/`
        next to it, and the complete folder is then renamed to `checkpoint-N` (atomic on one filesystem); the
        regular expression of `get_last_checkpoint` never matches the staging name.
        """
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, staging = os.path.join(run_dir, name), os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
        if self.args.should_save:
            for leftover in glob.glob(os.path.join(glob.escape(run_dir), f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-*")):
                shutil.rmtree(leftover)  # the remains of saves that crashed
        self.accelerator.wait_for_everyone()  # every rank writes its RNG state: none may write into the old folder
        self._saving_checkpoint, self._checkpoint_staging_dir = True, staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint, self._checkpoint_staging_dir = False, None
        self.accelerator.wait_for_everyone()  # every rank has written its part
        if not self.args.should_save:
            return
        written = os.path.join(staging, name)
        best = self.state.best_model_checkpoint
        if best is not None and os.path.dirname(best) == staging:  # `Trainer` found the best in the folder written
            self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            self.state.save_to_json(os.path.join(written, TRAINER_STATE_NAME))
        _fsync_tree(written)
        if os.path.isdir(final):
            # The same step saved again: the old folder leaves under the staging name first, so that a crash
            # in between leaves either folder whole under `checkpoint-N`, or none.
            os.rename(final, os.path.join(staging, "replaced"))
        os.rename(written, final)
        _fsync_dir(run_dir)
        shutil.rmtree(staging)
        # `Trainer` rotated the staging folder; the checkpoints to rotate are in `run_dir`.
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Writes the full model with `save_pretrained`; inside a checkpoint, the scorer-only artifact (see the config)."""
        if getattr(self, "_saving_checkpoint", False) and self._scorer_only_checkpoints():
            self._save_scorer(output_dir if output_dir is not None else self.args.output_dir)
        else:
            super().save_model(output_dir, _internal_call)

    def _save_scorer(self, output_dir: str) -> None:
        """The artifact `save_scorer` writes (config with `scorer_only`, code, scorer weights, processor, card)."""
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        save_scorer(model, output_dir, processor=self.processing_class)
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


def _first_example(dataset) -> dict:
    """The first example of `dataset`, or a `ValueError` if it has none (rather than a bare `StopIteration`)."""
    example = next(iter(dataset), None)
    if example is None:
        raise ValueError("`train_dataset` is empty: there is nothing to train the scorer on.")
    return example


def _fsync_dir(path: str) -> None:
    """Makes the entries of folder `path` (new files, renames) durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(path: str) -> None:
    """Flushes every file under `path`, and the folders themselves, to disk: a power cut after the rename that
    follows cannot leave a `checkpoint-N` with empty files."""
    for folder, _, files in os.walk(path):
        for file in files:
            with open(os.path.join(folder, file), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(folder)


def _is_visionselector(model) -> bool:
    # By model type, not class: a model loaded with `trust_remote_code` has its own copy of the class.
    model_types = {selector_class.config_class.model_type for selector_class in VISIONSELECTOR_CLASSES.values()}
    return getattr(model.config, "model_type", None) in model_types and hasattr(model, "scorer")


def _is_stock_backbone(model) -> bool:
    stock_classes = tuple(selector_class.stock_class for selector_class in VISIONSELECTOR_CLASSES.values())
    return isinstance(model, stock_classes) and not _is_visionselector(model)


__all__ = ["VisionSelectorSFTTrainer", "load_visionselector", "SCORER_CHECKPOINT_NAME"]
