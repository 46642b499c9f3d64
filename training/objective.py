"""The scorer's training objective, written once.

    loss = CE(answer tokens) + lambda * BCE(soft_mask, hard_mask)

- CE: the language-modelling cross-entropy of the frozen backbone, fed with the visual tokens scaled by the
  differentiable top-k mask, over the supervised tokens (labels other than -100). With `num_items_in_batch` (what
  `Trainer` counts for an optimizer step) it is a mean over the supervised tokens of the whole step: every
  accumulated micro-batch and every rank, as in TRL.
- BCE(soft_mask, hard_mask) ([`mask_regularization`]): pulls the soft mask towards the hard top-k mask of the same
  scores, so that training ends close to what inference does. A mean per micro-batch, averaged over the accumulated
  micro-batches of the step.
- lambda: the weight of that term at the current step, annealed by the trainer from `reg_weight_start` to
  `reg_weight_end` (`reg_weight_schedule`, see `schedule.annealed_reg_weight`).

[`VisionSelectorSFTTrainer`] calls an objective once per micro-batch: `objective(outputs, labels, step)` returns an
[`ObjectiveOutput`] (the loss and the metrics to log). [`VisionSelectorObjective`] is the default; pass another as
`VisionSelectorSFTTrainer(..., objective=...)`: a subclass that overrides one term, or any callable of that signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .collator import IGNORE_INDEX
from .losses import mask_regularization


@dataclass(frozen=True)
class ObjectiveStep:
    """What an objective knows of the step it is called in.

    Args:
        reg_weight (`float`): lambda, the weight of the mask regularisation at this step.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*): the supervised tokens of the whole optimizer step
            (all accumulated micro-batches, all ranks), as `Trainer` counts them; `None` in evaluation.
        gradient_accumulation_steps (`int`, *optional*, defaults to 1): the micro-batches of this optimizer step.
        num_processes (`int`, *optional*, defaults to 1): the ranks whose gradients data parallelism averages when the
            token count is global (`average_tokens_across_devices`); 1 otherwise.
        training (`bool`, *optional*, defaults to `True`): `False` in evaluation (the model pruned as in inference).
    """

    reg_weight: float
    num_items_in_batch: int | torch.Tensor | None = None
    gradient_accumulation_steps: int = 1
    num_processes: int = 1
    training: bool = True


@dataclass
class ObjectiveOutput:
    """An objective's result.

    Args:
        loss (`torch.Tensor`, *optional*): the scalar to back-propagate; `None` when there is nothing to compute
            it from (no labels, no soft mask): the trainer then takes the model's own `outputs.loss`.
        metrics (`dict[str, torch.Tensor | float]`): values to log under their names (each a mean over ranks).
    """

    loss: torch.Tensor | None
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


@dataclass
class VisionSelectorObjective:
    """The objective of the paper (see the module docstring): `CE + lambda * BCE(soft_mask, hard_mask)`.

    Logs `ce_loss` (the CE as a mean over this micro-batch's supervised tokens) and, in training, `reg_loss` (the BCE)
    and `reg_weight` (lambda). Override `language_modeling_loss` or `mask_loss` to change one term.

    Args:
        ignore_index (`int`, *optional*, defaults to -100): the label of tokens without loss.
    """

    ignore_index: int = IGNORE_INDEX

    def __call__(self, outputs, labels: torch.Tensor | None, step: ObjectiveStep) -> ObjectiveOutput:
        """The loss of one micro-batch.

        Args:
            outputs: the model's output: `logits` `(B, L, V)`; in training also `soft_mask` and `hard_mask` `(N,)`
                over the batch's merged visual tokens, `scores` `(N,)` and `item_lengths`.
            labels (`torch.Tensor` of shape `(B, L)`, *optional*): the labels aligned with `logits` (not shifted; in
                evaluation those of the pruned sequence).
            step ([`ObjectiveStep`]): lambda and the step's token count.
        """
        loss, metrics = None, {}
        if labels is not None:
            loss, metrics["ce_loss"] = self.language_modeling_loss(outputs.logits, labels, step)
        if outputs.get("soft_mask") is not None:
            reg_loss = self.mask_loss(outputs.soft_mask, outputs.hard_mask)
            # A per-micro-batch mean; averaged over the accumulation steps where the CE is normalised for the step.
            steps = step.gradient_accumulation_steps if step.num_items_in_batch is not None else 1
            weighted = step.reg_weight * reg_loss / steps
            loss = weighted if loss is None else loss + weighted
            metrics["reg_loss"] = reg_loss
            metrics["reg_weight"] = step.reg_weight
        return ObjectiveOutput(loss, metrics)

    def language_modeling_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, step: ObjectiveStep
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next-token cross-entropy: the loss term (normalised for the step) and its per-micro-batch mean (logged)."""
        logits = logits[:, :-1]  # (B, L - 1, V)
        targets = labels[:, 1:].to(logits.device)  # (B, L - 1)
        token_losses = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=self.ignore_index, reduction="none"
        )
        num_tokens = (targets != self.ignore_index).sum()
        mean = token_losses.sum() / num_tokens.clamp(min=1)
        if step.num_items_in_batch is None:
            return mean, mean
        # A mean over the supervised tokens of the whole step: every micro-batch and every rank. `Trainer` then
        # neither divides by the accumulation steps nor lets DDP's gradient average shrink it.
        loss = token_losses.sum() / torch.as_tensor(step.num_items_in_batch).clamp(min=1)
        if step.num_processes != 1:
            loss = loss * step.num_processes
        return loss, mean

    def mask_loss(self, soft_mask: torch.Tensor, hard_mask: torch.Tensor) -> torch.Tensor:
        """The regularisation that lambda weighs: BCE(soft_mask, hard_mask), see [`mask_regularization`]."""
        return mask_regularization(soft_mask, hard_mask)


__all__ = ["ObjectiveOutput", "ObjectiveStep", "VisionSelectorObjective"]
