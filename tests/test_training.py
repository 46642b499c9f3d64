"""Scorer training with `VisionSelectorSFTTrainer` and the `visionselector_training.train` script, on tiny models (CPU)."""

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
import yaml
from datasets import Dataset
from PIL import Image

from modeling_visionselector import SCORER_PREFIX, VisionSelectorForConditionalGeneration
from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl
from visionselector_training import (
    SCORER_CHECKPOINT_NAME,
    ObjectiveOutput,
    ObjectiveStep,
    VisionSelectorObjective,
    VisionSelectorSFTConfig,
    VisionSelectorSFTTrainer,
    mask_hard_distance,
    mask_regularization,
    mask_sharpness,
)
from visionselector_training.tiny_assets import write_image_dataset, write_tiny_backbone

from training_args import tiny_run_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The score of token i is q_i . k_mean; the query bias adds b_q . k_mean to every score of an item, a per-item
# constant that the top-k threshold absorbs, so its gradient is zero (up to rounding) by construction.
SHIFT_INVARIANT = {"scorer.q_proj.bias"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


@pytest.fixture(scope="module")
def dataset():
    """Noise images (so the merged tokens differ) with a short question and answer, in TRL's vision format."""
    rng = np.random.default_rng(0)
    rows = []
    for i, answer in enumerate(["red", "green", "blue", "yellow"] * 3):
        image = Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
        messages = [
            {"role": "user", "content": "what is the colour of the square"},
            {"role": "assistant", "content": answer},
        ]
        rows.append({"images": [image], "messages": messages})
    return Dataset.from_list(rows)


def make_args(tmp_path, **overrides):
    return tiny_run_args(tmp_path, **{"max_steps": 4, **overrides})


def make_trainer(tmp_path, dataset, **overrides):
    return VisionSelectorSFTTrainer(
        tiny_qwen2_5_vl(), args=make_args(tmp_path, **overrides), train_dataset=dataset, processing_class=tiny_processor()
    )


def first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


class TestVisionSelectorSFTConfig:
    """Defaults, validation, and the training ratio range."""

    def test_config_defaults_follow_the_sweep_and_the_paper(self, tmp_path):
        args = make_args(tmp_path)
        assert args.learning_rate == 1e-2  # benchmarks/results/sweep_scorer_tasks*.md
        assert (args.mask_temperature_schedule, args.mask_temperature_start, args.mask_temperature_end) == ("geometric", 1.0, 0.03)
        configs = os.path.join(REPO, "training", "configs")
        with open(os.path.join(configs, "qwen2_5_vl_7b_paper.yaml")) as file:
            paper = yaml.safe_load(file)  # the paper's 7B settings stay available
        assert (paper["learning_rate"], paper["train_retention_ratio"], paper["warmup_steps"]) == (5e-5, 0.2, 0.03)
        assert paper["mask_temperature_schedule"] == "paper"
        with open(os.path.join(configs, "qwen2_5_vl_7b.yaml")) as file:
            seven_b = yaml.safe_load(file)
        # one recipe for the tiny backbone and the 7B: the 7B config sets data, batch and hardware, no training recipe
        recipe = {"learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "mask_temperature_schedule",
                  "mask_temperature_start", "mask_temperature_end", "reg_weight_start", "reg_weight_end", "reg_weight_schedule"}  # fmt: skip
        assert not recipe & set(seven_b), recipe & set(seven_b)
        for config in (paper, seven_b):  # every key is an option of the training script
            assert set(config) - {"model_name_or_path", "dtype", "attn_implementation", "dataset_name"} <= {
                f.name for f in dataclasses.fields(VisionSelectorSFTConfig)
            }
        assert args.lr_scheduler_type == "cosine"
        assert args.warmup_steps == 0.03
        assert args.weight_decay == 0.0
        assert args.train_retention_ratio == 0.2
        assert (args.reg_weight_start, args.reg_weight_end, args.reg_weight_schedule) == (0.1, 2.0, "linear")
        assert args.max_length is None
        own = {f.name for f in dataclasses.fields(VisionSelectorSFTConfig)} - {
            f.name for f in dataclasses.fields(VisionSelectorSFTConfig.__mro__[1])
        }
        assert own == {
            "train_retention_ratio", "train_retention_ratio_min", "reg_weight_start", "reg_weight_end", "reg_weight_schedule",
            "save_scorer_only_checkpoints", "mask_temperature_schedule", "mask_temperature_start", "mask_temperature_end",
        }
        assert args.train_retention_ratio_min is None
        assert args.assistant_only_loss is None  # on for `messages` datasets (TRL: off)
        overridden = {"learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_length", "assistant_only_loss"}
        for field in dataclasses.fields(VisionSelectorSFTConfig):
            if field.name in own | overridden:
                assert field.metadata.get("help"), field.name

    @pytest.mark.parametrize(
        "overrides, message",
        [
            ({"train_retention_ratio": 0.0}, r"train_retention_ratio.*\(0, 1\].*0\.0"),
            ({"train_retention_ratio": 1.5}, r"train_retention_ratio.*\(0, 1\].*1\.5"),
            ({"train_retention_ratio_min": 0.0}, r"train_retention_ratio_min.*\(0, 1\].*0\.0"),
            ({"train_retention_ratio_min": 0.3}, r"train_retention_ratio_min.*\(0, train_retention_ratio = 0\.2\].*0\.3"),
            ({"reg_weight_start": -0.1}, r"reg_weight_start.*>= 0.*-0\.1"),
            ({"reg_weight_end": float("inf")}, r"reg_weight_end.*>= 0.*inf"),
            ({"reg_weight_schedule": "exp"}, r"reg_weight_schedule.*linear.*cosine.*'exp'"),
            ({"mask_temperature_schedule": "linear"}, r"mask_temperature_schedule.*geometric.*paper.*'linear'"),
            ({"mask_temperature_start": 0.0}, r"mask_temperature_start.*> 0.*0\.0"),
            ({"mask_temperature_end": float("nan")}, r"mask_temperature_end.*> 0.*nan"),
        ],
    )
    def test_config_rejects_bad_values(self, tmp_path, overrides, message):
        with pytest.raises(ValueError, match=message):
            make_args(tmp_path, **overrides)

    def test_training_ratio_range_is_drawn_per_step_and_reaches_the_model(self, tmp_path, dataset, monkeypatch):
        trainer = make_trainer(tmp_path, dataset, train_retention_ratio=0.5, train_retention_ratio_min=0.1, max_steps=6)
        seen = []
        model, forward = trainer.model, trainer.model.forward

        def recording_forward(*args, **kwargs):
            output = forward(*args, **kwargs)
            if model.training:
                kept = [int(round(item.sum().item())) for item in torch.split(output.hard_mask, list(output.item_lengths))]
                seen.append((trainer.state.global_step, kwargs["retention_ratio"], kept, list(output.item_lengths)))
            return output

        monkeypatch.setattr(model, "forward", recording_forward)
        trainer.train()
        ratios = [ratio for _, ratio, _, _ in seen]
        assert len(seen) == 6 and all(0.1 <= ratio <= 0.5 for ratio in ratios)
        assert len(set(ratios)) == 6  # a new draw every step
        for _, ratio, kept, lengths in seen:  # the model keeps what the step's ratio says, not its config's
            assert kept == [max(1, int(ratio * n)) for n in lengths]
        logged = [entry["train_retention_ratio"] for entry in trainer.state.log_history if "train_retention_ratio" in entry]
        assert logged == pytest.approx(ratios)
        # the draw depends on the seed and the step only: a resumed run (or another rank) draws the same ratio
        again = make_trainer(tmp_path, dataset, train_retention_ratio=0.5, train_retention_ratio_min=0.1, max_steps=6)
        for step, ratio, _, _ in seen:
            again.state.global_step = step
            assert again.train_retention_ratio == ratio
        other_seed = make_trainer(tmp_path, dataset, train_retention_ratio=0.5, train_retention_ratio_min=0.1, seed=1)
        assert other_seed.train_retention_ratio != ratios[0]
        assert make_trainer(tmp_path, dataset).train_retention_ratio == 0.2  # no range: the fixed ratio


class TestMaskTerms:
    """The stateless terms of the objective and the measures logged beside it."""

    def test_mask_terms(self):
        soft = torch.tensor([0.9, 0.2, 0.6, 0.05], requires_grad=True)
        hard = torch.tensor([1.0, 0.0, 1.0, 0.0])
        torch.testing.assert_close(mask_regularization(soft, hard), F.binary_cross_entropy(soft, hard))
        mask_regularization(soft, hard).backward()
        assert (soft.grad[hard == 1] < 0).all() and (soft.grad[hard == 0] > 0).all()  # pulled towards the hard mask
        assert mask_regularization(hard, hard).item() == 0.0
        assert mask_sharpness(torch.full((8,), 0.5)).item() == 0.0
        assert mask_sharpness(hard).item() == 1.0
        assert mask_sharpness(torch.tensor([0.1, 0.9])).item() == pytest.approx(1 + (0.1 * math.log2(0.1) + 0.9 * math.log2(0.9)))
        # same sum (the top-k constraint), sharper mask, higher sharpness
        assert mask_sharpness(torch.tensor([0.9, 0.1, 0.0, 0.0])) > mask_sharpness(torch.full((4,), 0.25))
        assert mask_hard_distance(hard, hard).item() == 0.0
        assert mask_hard_distance(soft, hard).item() == pytest.approx((0.1 + 0.2 + 0.4 + 0.05) / 4)
        with pytest.raises(ValueError, match="shape"):
            mask_regularization(soft, hard[:3])


class _Outputs(dict):
    """What the objective reads of a model output: keys, also as attributes."""

    __getattr__ = dict.__getitem__


class TestObjective:
    """The objective the trainer calls: the default's formula, a custom one trained with, and losses refused."""

    def test_default_objective_is_ce_plus_lambda_times_bce(self):
        torch.manual_seed(0)
        logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
        labels[0, :3] = -100
        soft, hard = torch.rand(6), (torch.rand(6) > 0.5).float()
        outputs = _Outputs(logits=logits, soft_mask=soft, hard_mask=hard)
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100)
        bce = F.binary_cross_entropy(soft, hard)
        objective = VisionSelectorObjective()

        result = objective(outputs, labels, ObjectiveStep(reg_weight=0.5))
        torch.testing.assert_close(result.loss, ce + 0.5 * bce)
        assert set(result.metrics) == {"ce_loss", "reg_loss", "reg_weight"}
        torch.testing.assert_close(result.metrics["ce_loss"], ce)
        torch.testing.assert_close(result.metrics["reg_loss"], bce)
        assert result.metrics["reg_weight"] == 0.5

        # under accumulation: the CE over the step's supervised tokens (x the ranks DDP averages), the BCE a mean of
        # the micro-batches; the logged CE stays this micro-batch's mean
        supervised = int((labels[:, 1:] != -100).sum())
        step = ObjectiveStep(reg_weight=0.5, num_items_in_batch=3 * supervised, gradient_accumulation_steps=3, num_processes=2)
        result = objective(outputs, labels, step)
        torch.testing.assert_close(result.loss, ce * supervised / (3 * supervised) * 2 + 0.5 * bce / 3)
        torch.testing.assert_close(result.metrics["ce_loss"], ce)

        # no soft mask (evaluation): the CE alone
        result = objective(_Outputs(logits=logits), labels, ObjectiveStep(reg_weight=0.5, training=False))
        torch.testing.assert_close(result.loss, ce)
        assert set(result.metrics) == {"ce_loss"}

    def test_a_custom_objective_trains_and_its_metrics_are_logged(self, tmp_path, dataset):
        steps = []

        class L1Objective(VisionSelectorObjective):
            """Mean |soft - hard| instead of the BCE, and one more metric."""

            def mask_loss(self, soft_mask, hard_mask):
                return (soft_mask.float() - hard_mask.float()).abs().mean()

            def __call__(self, outputs, labels, step):
                steps.append(step)
                result = super().__call__(outputs, labels, step)
                result.metrics["soft_mask_sum"] = outputs.soft_mask.detach().sum()
                return result

        trainer = VisionSelectorSFTTrainer(
            tiny_qwen2_5_vl(), args=make_args(tmp_path, max_steps=2), train_dataset=dataset,
            processing_class=tiny_processor(), objective=L1Objective(),
        )  # fmt: skip
        trainer.train()
        logs = [entry for entry in trainer.state.log_history if "reg_loss" in entry]
        assert len(logs) == 2
        for entry in logs:
            assert entry["soft_mask_sum"] > 0
            # the regulariser trained on is the L1 distance the trainer logs as `mask_hard_distance` (not the BCE)
            assert entry["reg_loss"] == pytest.approx(entry["mask_hard_distance"], rel=1e-5)
            assert entry["loss"] == pytest.approx(entry["ce_loss"] + entry["reg_weight"] * entry["reg_loss"], rel=1e-5)
        assert [step.reg_weight for step in steps] == pytest.approx([0.1, 0.1 + 1.9 / 2])
        assert all(step.training and step.num_items_in_batch is not None for step in steps)

    def test_any_callable_is_an_objective(self, tmp_path, dataset):
        def soft_mask_sum(outputs, labels, step):
            total = outputs.soft_mask.sum()
            return ObjectiveOutput(total, {"soft_mask_sum": total})

        trainer = VisionSelectorSFTTrainer(
            tiny_qwen2_5_vl(), args=make_args(tmp_path), train_dataset=dataset, processing_class=tiny_processor(),
            objective=soft_mask_sum,
        )  # fmt: skip
        model = trainer.model.train()
        loss = trainer.compute_loss(model, first_batch(trainer))
        assert trainer._metrics["train"]["soft_mask_sum"] == [pytest.approx(loss.item())]
        assert "ce_loss" not in trainer._metrics["train"]  # the default objective did not run
        loss.backward()
        assert model.scorer.k_proj.weight.grad is not None

    @pytest.mark.parametrize(
        "kwargs, message",
        [({"compute_loss_func": lambda outputs, labels, num_items_in_batch: 0.0}, "objective="),
         ({"objective": "bce"}, "callable")],
    )  # fmt: skip
    def test_a_loss_the_trainer_cannot_use_is_refused(self, tmp_path, dataset, kwargs, message):
        with pytest.raises(ValueError, match=message):
            VisionSelectorSFTTrainer(
                tiny_qwen2_5_vl(), args=make_args(tmp_path), train_dataset=dataset, processing_class=tiny_processor(),
                **kwargs,
            )  # fmt: skip


class TestVisionSelectorSFTTrainer:
    """Only the scorer trains, every scorer parameter gets a gradient, vision tokens carry no loss."""

    def test_trainer_freezes_everything_but_the_scorer(self, tmp_path, dataset):
        trainer = make_trainer(tmp_path, dataset)
        assert isinstance(trainer.model, VisionSelectorForConditionalGeneration)  # the stock backbone was wrapped
        trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
        assert trainable == {name for name, _ in trainer.model.named_parameters() if name.startswith(SCORER_PREFIX)}
        assert trainer.num_trainable_parameters == sum(p.numel() for p in trainer.model.scorer.parameters())
        assert trainer.model.config.train_retention_ratio == 0.2
        with pytest.raises(ValueError, match="peft_config"):
            VisionSelectorSFTTrainer(
                tiny_qwen2_5_vl(), args=make_args(tmp_path), train_dataset=dataset, processing_class=tiny_processor(),
                peft_config=object(),
            )

    def test_one_backward_reaches_every_scorer_parameter(self, tmp_path, dataset):
        trainer = make_trainer(tmp_path, dataset)
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, first_batch(trainer))
        loss.backward()
        for name, parameter in trainer.model.named_parameters():
            if not name.startswith(SCORER_PREFIX):
                assert parameter.grad is None, name
            elif name in SHIFT_INVARIANT:
                reference = trainer.model.scorer.k_proj.bias.grad.abs().max()
                assert parameter.grad.abs().max() < 1e-4 * reference, name
            else:
                assert torch.isfinite(parameter.grad).all(), name
                assert (parameter.grad != 0).any() and parameter.grad.abs().max() > 1e-10, name

    def test_labels_at_vision_tokens_are_ignored(self, tmp_path, dataset):
        trainer = make_trainer(tmp_path, dataset, reg_weight_start=0.0, reg_weight_end=0.0, assistant_only_loss=False)
        model = trainer.model.train()
        batch = first_batch(trainer)
        config = model.config
        vision = torch.isin(
            batch["input_ids"],
            torch.tensor([config.image_token_id, config.vision_start_token_id, config.vision_end_token_id]),
        )
        assert (batch["labels"][vision] == -100).all()  # the trainer's collator drops them (TRL's keeps them) ...
        assert (batch["labels"][~vision & (batch["attention_mask"] == 1)] != -100).all()
        # ... and so does the loss, for a batch from a collator that keeps them
        raw = {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}
        with torch.no_grad():
            loss = trainer.compute_loss(model, dict(raw))
            expected = model(**batch, mask_temperature=trainer.mask_temperature).loss
            unmasked = model(**raw, mask_temperature=trainer.mask_temperature).loss
        torch.testing.assert_close(loss, expected)
        assert not torch.allclose(loss, unmasked)

    def test_training_changes_only_the_scorer(self, tmp_path, dataset):
        trainer = make_trainer(tmp_path, dataset, learning_rate=1e-3, warmup_steps=0)
        before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        trainer.train()
        for name, parameter in trainer.model.named_parameters():
            if name.startswith(SCORER_PREFIX) and name not in SHIFT_INVARIANT:
                assert not torch.equal(parameter, before[name]), f"{name} did not change"
            elif not name.startswith(SCORER_PREFIX):
                assert torch.equal(parameter, before[name]), f"{name} changed"
        logs = [entry for entry in trainer.state.log_history if "reg_weight" in entry]
        assert len(logs) == 4
        for entry in logs:
            for key in ("loss", "ce_loss", "reg_loss", "mask_sharpness", "mask_hard_distance"):
                assert np.isfinite(entry[key]), key
            assert 0.0 <= entry["mask_sharpness"] <= 1.0
            assert entry["loss"] == pytest.approx(entry["ce_loss"] + entry["reg_weight"] * entry["reg_loss"], rel=1e-5)
        weights = [entry["reg_weight"] for entry in logs]
        assert weights[0] == pytest.approx(0.1)
        assert all(b > a for a, b in zip(weights, weights[1:]))
        assert weights == pytest.approx([0.1 + 1.9 * step / 4 for step in range(4)])

    def test_scorer_checkpoint_must_match(self, tmp_path, dataset):
        trainer = make_trainer(tmp_path, dataset)
        checkpoint = tmp_path / "checkpoint-1"
        checkpoint.mkdir()
        safetensors.torch.save_file({"scorer.q_proj.weight": torch.zeros(3, 3)}, str(checkpoint / SCORER_CHECKPOINT_NAME))
        with pytest.raises(ValueError, match="missing.*k_proj"):
            trainer._load_from_checkpoint(str(checkpoint))


def _scorer(path):
    return safetensors.torch.load_file(os.path.join(path, SCORER_CHECKPOINT_NAME))


class TestTrainScript:
    """`python -m visionselector_training.train`: trains, saves and resumes from a YAML config."""

    def test_script_trains_saves_and_resumes(self, tmp_path):
        write_tiny_backbone(str(tmp_path / "backbone"))
        data = write_image_dataset(str(tmp_path / "data"), num_examples=8)
        output_dir = tmp_path / "run"
        config = {
            "model_name_or_path": str(tmp_path / "backbone"),
            "dataset_name": data,
            "output_dir": str(output_dir),
            "use_cpu": True,
            "bf16": False,
            "max_steps": 3,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "save_steps": 2,
            "report_to": "none",
            "seed": 0,
            "disable_tqdm": True,
            "train_retention_ratio": 0.25,
        }
        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
        result = subprocess.run(
            [sys.executable, "-m", "visionselector_training.train", "--config", str(config_path)],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]

        # Intermediate checkpoints hold the scorer and the trainer state, not the backbone.
        checkpoint = output_dir / "checkpoint-2"
        assert (checkpoint / SCORER_CHECKPOINT_NAME).is_file() and (checkpoint / "optimizer.pt").is_file()
        assert not (checkpoint / "model.safetensors").exists()
        assert set(_scorer(checkpoint)) == {"scorer.q_proj.weight", "scorer.q_proj.bias", "scorer.k_proj.weight", "scorer.k_proj.bias"}

        # The final save is a full model whose scorer is the trained one.
        trained = VisionSelectorForConditionalGeneration.from_pretrained(output_dir)
        assert trained.config.train_retention_ratio == 0.25
        assert getattr(trained.config, "use_cache", True)  # not the Trainer's `use_cache=False`
        assert trained.config.text_config.use_cache
        final_scorer = _scorer(output_dir / "checkpoint-3")
        for name, tensor in final_scorer.items():
            torch.testing.assert_close(trained.state_dict()[name], tensor, rtol=0, atol=0)
        stock = tiny_qwen2_5_vl()
        torch.testing.assert_close(
            trained.model.language_model.layers[0].mlp.up_proj.weight, stock.model.language_model.layers[0].mlp.up_proj.weight
        )
        assert not torch.equal(trained.scorer.k_proj.weight, _scorer(checkpoint)["scorer.k_proj.weight"])

        # Resuming from step 2 replays step 3 exactly: the scorer is loaded back and lambda continues its schedule.
        from transformers.trainer_callback import TrainerState

        from visionselector_training.train import cli

        first_run = TrainerState.load_from_json(str(output_dir / "checkpoint-3" / "trainer_state.json")).log_history
        resumed = cli(
            ["--config", str(config_path), "--resume_from_checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "resumed")]
        )
        step3 = [entry for entry in resumed.state.log_history if entry.get("step") == 3 and "reg_weight" in entry]
        expected = [entry for entry in first_run if entry.get("step") == 3 and "reg_weight" in entry]
        assert step3[0]["reg_weight"] == pytest.approx(0.1 + 1.9 * 2 / 3)
        assert step3[0]["reg_weight"] == pytest.approx(expected[0]["reg_weight"])
        assert step3[0]["ce_loss"] == pytest.approx(expected[0]["ce_loss"])
        for name, tensor in final_scorer.items():
            torch.testing.assert_close(resumed.model.state_dict()[name], tensor)

    def test_script_runs_from_the_folder(self, tmp_path):
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        result = subprocess.run(
            [sys.executable, os.path.join(REPO, "training", "train.py"), "--help"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        for option in ("--train_retention_ratio", "--train_retention_ratio_min", "--reg_weight_start", "--reg_weight_end", "--reg_weight_schedule",
                       "--model_name_or_path", "--dataset_name", "--config"):
            assert option in result.stdout
