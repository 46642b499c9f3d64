"""Correctness of `VisionSelectorSFTTrainer` beyond one training step.

bf16 training leaves a usable model; checkpoints are scorer-only artifacts; evaluation pairs the pruned logits with
the pruned labels; the CE covers the answer only and is token-weighted under gradient accumulation; the trainer logs
the score spread and warns when the soft mask saturates early. Tiny random models on CPU.
"""

import os
import warnings

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from datasets import Dataset
from PIL import Image
from transformers import AutoModel, TrainerCallback

from modeling_visionselector import SCORER_PREFIX, VisionSelectorForConditionalGeneration
from visionselector.publishing import save_scorer
from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl
from visionselector_training import SCORER_CHECKPOINT_NAME, VisionSelectorSFTTrainer
from visionselector_training.collator import assistant_turn_mask
from visionselector_training.trainer import EARLY_SHARE, SATURATED_SHARPNESS
from visionselector_training.tiny_assets import write_tiny_backbone

from training_args import tiny_run_args

QUESTION = "what is the colour of the square"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def noise_image(rng, size=112):
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def messages_dataset(answers, seed=0):
    """Noise images, one question and the given answers, as TRL `messages` rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for answer in answers:
        messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}]
        rows.append({"images": [noise_image(rng)], "messages": messages})
    return Dataset.from_list(rows)


def prompt_completion_dataset(answers, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for answer in answers:
        rows.append(
            {
                "images": [noise_image(rng)],
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
                "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            }
        )
    return Dataset.from_list(rows)


ANSWERS = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def dataset():
    return messages_dataset(ANSWERS * 2)


def make_args(tmp_path, **overrides):
    return tiny_run_args(tmp_path, **{"max_steps": 2, **overrides})


def make_trainer(tmp_path, dataset, model=None, processor=None, **overrides):
    return VisionSelectorSFTTrainer(
        model if model is not None else tiny_qwen2_5_vl(),
        args=make_args(tmp_path, **overrides),
        train_dataset=dataset,
        processing_class=processor if processor is not None else tiny_processor(),
    )


def first_batch(trainer, dataloader=None):
    return trainer._prepare_inputs(next(iter(dataloader or trainer.get_train_dataloader())))


def prompt_inputs(processor, image):
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}], add_generation_prompt=True
    )
    return processor(text=[text], images=[image], return_tensors="pt")


def ids_of(processor, words):
    return processor.tokenizer.convert_tokens_to_ids(words)


class TestMixedPrecision:

    def test_bf16_trained_model_generates_saves_and_reloads(self, tmp_path, dataset):
        """A model trained in bf16 (float32 scorer under autocast) generates, saves and reloads outside autocast."""
        backbone_dir = write_tiny_backbone(str(tmp_path / "backbone"))
        processor = tiny_processor()
        backbone = tiny_qwen2_5_vl().to(torch.bfloat16)
        backbone.config.name_or_path = backbone_dir
        trainer = make_trainer(tmp_path, dataset, model=backbone, processor=processor, bf16=True, learning_rate=1e-2)
        trainer.train()
        model = trainer.model.eval()
        assert model.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
        assert model.scorer.q_proj.weight.dtype == torch.float32  # the trainer keeps the scorer's updates in float32

        inputs = prompt_inputs(processor, dataset[0]["images"][0])
        tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False, retention_ratio=0.5)
        assert tokens.shape == (1, inputs["input_ids"].shape[1] + 3)
        selection = model.select_visual_tokens(inputs["pixel_values"], inputs["image_grid_thw"], retention_ratio=0.5)
        assert selection.scores[0].dtype == torch.float32

        model.save_pretrained(tmp_path / "full")
        reloaded = VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "full")  # in the saved dtype, bf16
        assert reloaded.scorer.q_proj.weight.dtype == torch.bfloat16
        assert torch.equal(reloaded.scorer.q_proj.weight, model.scorer.q_proj.weight.to(torch.bfloat16))
        assert reloaded.generate(**inputs, max_new_tokens=3, do_sample=False, retention_ratio=0.5).shape == tokens.shape
        reloaded_scores = reloaded.select_visual_tokens(
            inputs["pixel_values"].to(torch.bfloat16), inputs["image_grid_thw"], retention_ratio=0.5
        ).scores[0]
        assert reloaded_scores.dtype == torch.float32

        save_scorer(model, tmp_path / "scorer", processor=processor)
        from_artifact = AutoModel.from_pretrained(tmp_path / "scorer", trust_remote_code=True, dtype="auto")
        assert from_artifact.dtype == torch.bfloat16
        reloaded_selection = from_artifact.select_visual_tokens(
            inputs["pixel_values"].to(torch.bfloat16), inputs["image_grid_thw"], retention_ratio=0.5
        )
        assert reloaded_selection.scores[0].dtype == torch.float32
        from_artifact.generate(**inputs, max_new_tokens=3, do_sample=False, retention_ratio=0.5)


class TestCheckpoints:
    """Intermediate checkpoints are scorer-only artifacts from which a run resumes exactly."""

    def test_checkpoints_are_scorer_only_artifacts_and_resume_exactly(self, tmp_path, dataset):
        backbone_dir = write_tiny_backbone(str(tmp_path / "backbone"))
        processor = tiny_processor()
        args = dict(max_steps=3, save_strategy="steps", save_steps=2, learning_rate=1e-2, warmup_steps=0)
        trainer = make_trainer(tmp_path, dataset, model=backbone_dir, processor=processor, **args)
        trainer.train()
        checkpoint = tmp_path / "out" / "checkpoint-2"
        assert not (checkpoint / "model.safetensors").exists()  # the backbone is not copied
        assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "trainer_state.json").is_file()
        scorer_step2 = safetensors.torch.load_file(str(checkpoint / SCORER_CHECKPOINT_NAME))

        # The checkpoint is the artifact `save_scorer` writes: it loads on its own, with or without our classes.
        for loaded in (
            VisionSelectorForConditionalGeneration.from_pretrained(checkpoint),
            AutoModel.from_pretrained(checkpoint, trust_remote_code=True),
        ):
            assert loaded.config.base_model_name_or_path == os.path.abspath(backbone_dir)
            for name, tensor in scorer_step2.items():
                assert torch.equal(loaded.state_dict()[name], tensor), name
            stock = tiny_qwen2_5_vl()
            assert torch.equal(loaded.lm_head.weight, stock.lm_head.weight)
        reference = tmp_path / "reference"
        save_scorer(trainer.model, reference, processor=processor)
        assert {path.name for path in reference.iterdir()} <= {path.name for path in checkpoint.iterdir()}

        # Resuming from step 2 replays step 3 exactly.
        final = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items() if name.startswith(SCORER_PREFIX)}
        resumed = make_trainer(tmp_path, dataset, model=backbone_dir, processor=processor, **args)
        resumed.args.output_dir = str(tmp_path / "resumed")
        resumed.train(resume_from_checkpoint=str(checkpoint))
        for name, tensor in final.items():
            torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=0, atol=0)

    def test_scorer_only_checkpoints_need_the_backbone_name(self, tmp_path, dataset):
        backbone = tiny_qwen2_5_vl()  # in memory: no path to point at
        with pytest.raises(ValueError, match="base_model_name_or_path.*save_scorer_only_checkpoints"):
            make_trainer(tmp_path, dataset, model=backbone, save_strategy="steps", save_steps=1)
        make_trainer(tmp_path, dataset, model=backbone, save_strategy="no")  # nothing to save: fine


def _hand_pruned_labels(model, batch, labels, outputs):
    """The labels of the pruned sequence, built from `kept_indices`: row by row, the dropped placeholders removed."""
    image_id = model.config.image_token_id
    rows = []
    item = 0
    for ids, row_labels in zip(batch["input_ids"], labels):
        keep = torch.ones_like(ids, dtype=torch.bool)
        placeholders = (ids == image_id).nonzero().flatten()
        start = 0
        while start < len(placeholders):  # one run of placeholders per image, in order
            n = int(batch["image_grid_thw"][item].prod()) // model.config.vision_config.spatial_merge_size**2
            dropped = torch.ones(n, dtype=torch.bool)
            dropped[outputs.kept_indices[item]] = False
            keep[placeholders[start : start + n][dropped]] = False
            start += n
            item += 1
        rows.append(row_labels[keep])
    width = outputs.logits.shape[1]
    return torch.stack([F.pad(row, (0, width - len(row)), value=-100) for row in rows])


class TestEvaluation:
    """Evaluation runs the pruned model and pairs its logits with the pruned labels."""

    def test_evaluation_pairs_pruned_logits_with_pruned_labels(self, tmp_path):
        eval_dataset = messages_dataset(["red", "green blue", "yellow", "blue red green", "cyan"], seed=1)
        train_dataset = messages_dataset(ANSWERS)
        seen = {}

        def compute_metrics(prediction):
            logits, labels = prediction.predictions, prediction.label_ids
            assert logits.shape[:2] == labels.shape  # the same (pruned) sequence
            predicted = logits[:, :-1].argmax(-1)
            valid = labels[:, 1:] != -100
            seen["count"] = int(valid.sum())
            return {"token_accuracy": float(((predicted == labels[:, 1:]) & valid).sum() / valid.sum())}

        trainer = VisionSelectorSFTTrainer(
            tiny_qwen2_5_vl(),
            args=make_args(tmp_path, per_device_eval_batch_size=2, assistant_only_loss=False),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tiny_processor(),
            compute_metrics=compute_metrics,
        )
        metrics = trainer.evaluate()

        # By hand: run the pruned model on each batch, prune the labels from `kept_indices`, count correct tokens.
        model = trainer.model.eval()
        vision = torch.tensor([model.config.image_token_id, model.config.vision_start_token_id, model.config.vision_end_token_id])
        correct = total = 0
        loss_sum = 0.0
        for batch in trainer.get_eval_dataloader():
            labels = batch["labels"].masked_fill(torch.isin(batch["input_ids"], vision), -100)
            with torch.no_grad():
                outputs = model(**{k: v for k, v in batch.items() if k != "labels"})
            pruned = _hand_pruned_labels(model, batch, labels, outputs)
            assert pruned.shape == outputs.logits.shape[:2]
            valid = pruned[:, 1:] != -100
            correct += int(((outputs.logits[:, :-1].argmax(-1) == pruned[:, 1:]) & valid).sum())
            total += int(valid.sum())
            batch_loss = F.cross_entropy(outputs.logits[:, :-1].flatten(0, 1), pruned[:, 1:].flatten(), ignore_index=-100)
            loss_sum += float(batch_loss) * len(pruned)  # `Trainer` weights each batch's mean by its size
        assert seen["count"] == total
        assert metrics["eval_token_accuracy"] == pytest.approx(correct / total)
        assert metrics["eval_mean_token_accuracy"] == pytest.approx(correct / total)  # the trainer's own metric, not skipped
        assert metrics["eval_loss"] == pytest.approx(loss_sum / len(eval_dataset), rel=1e-5)
        prediction = trainer.predict(eval_dataset)
        assert prediction.predictions.shape[:2] == prediction.label_ids.shape
        assert prediction.metrics["test_token_accuracy"] == pytest.approx(correct / total)


def _supervised_tokens(batch):
    return [row[row != -100].tolist() for row in batch["labels"]]


class TestAnswerOnlyLoss:
    """The cross-entropy covers the answer: assistant turns or the completion, never the prompt."""

    def test_assistant_turn_mask(self):
        header, end = [7, 11], 2
        ids = torch.tensor(
            [
                [7, 10, 20, 2, 7, 11, 21, 22, 2, 7, 10, 23, 2, 7, 11, 24, 2, 0],  # two assistant turns, then padding
                [0, 0, 7, 10, 20, 2, 7, 11, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34],  # left padding, a truncated turn
                [7, 10, 20, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # no assistant turn
            ]
        )
        expected = torch.zeros_like(ids, dtype=torch.bool)
        expected[0, 6:9] = expected[0, 15:17] = True
        expected[1, 8:] = True
        assert torch.equal(assistant_turn_mask(ids, header, end), expected)

    def test_messages_datasets_train_on_the_assistant_turns_only(self, tmp_path):
        processor = tiny_processor()
        dataset = messages_dataset(["red", "green blue"])
        trainer = make_trainer(tmp_path, dataset, processor=processor)
        batch = first_batch(trainer, trainer.get_train_dataloader())
        end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        expected = {tuple(ids_of(processor, answer.split())) + (end,) for answer in ("red", "green blue")}
        assert {tuple(tokens) for tokens in _supervised_tokens(batch)} == expected

    def test_trl_training_template_is_used_where_trl_has_one(self, tmp_path):
        """With the official Qwen2.5-VL chat template, TRL's own `assistant_only_loss` switch masks the turns."""
        from trl.chat_template_utils import qwen2_5_vl_chat_template

        processor = tiny_processor()
        processor.chat_template = processor.tokenizer.chat_template = qwen2_5_vl_chat_template
        trainer = make_trainer(tmp_path, messages_dataset(["red", "green blue"]), processor=processor)
        assert trainer.args.assistant_only_loss and trainer.chat_template is not None  # TRL's training template
        batch = first_batch(trainer)
        end = ids_of(processor, "<|im_end|>")  # (the tiny tokenizer drops the "\n" after it)
        expected = {tuple(ids_of(processor, answer.split())) + (end,) for answer in ("red", "green blue")}
        assert {tuple(tokens) for tokens in _supervised_tokens(batch)} == expected

    def test_prompt_completion_datasets_train_on_the_completion_only(self, tmp_path):
        processor = tiny_processor()
        trainer = make_trainer(tmp_path, prompt_completion_dataset(["red", "green blue"]), processor=processor)
        batch = first_batch(trainer)
        end = ids_of(processor, "<|im_end|>")
        expected = {tuple(ids_of(processor, answer.split())) + (end,) for answer in ("red", "green blue")}
        assert {tuple(tokens) for tokens in _supervised_tokens(batch)} == expected

    def test_whole_sequence_loss_is_an_option(self, tmp_path):
        processor = tiny_processor()
        trainer = make_trainer(tmp_path, messages_dataset(["red", "green blue"]), processor=processor, assistant_only_loss=False)
        batch = first_batch(trainer)
        config = trainer.model.config
        vision = torch.isin(
            batch["input_ids"], torch.tensor([config.image_token_id, config.vision_start_token_id, config.vision_end_token_id])
        )
        expected = batch["input_ids"].masked_fill(vision | (batch["attention_mask"] == 0), -100)
        assert torch.equal(batch["labels"], expected)
        for name in ("completion_only_loss",):
            completion = make_trainer(
                tmp_path, prompt_completion_dataset(["red"]), processor=processor, **{name: False}
            )
            labels = first_batch(completion)["labels"]
            assert (labels != -100).sum() > 5  # the prompt's text tokens are supervised too

    def test_loss_is_the_cross_entropy_of_the_answer_tokens(self, tmp_path):
        processor = tiny_processor()
        trainer = make_trainer(
            tmp_path, messages_dataset(["red", "green blue"]), processor=processor, reg_weight_start=0.0, reg_weight_end=0.0
        )
        model = trainer.model.train()
        batch = first_batch(trainer)
        with torch.no_grad():
            loss = trainer.compute_loss(model, dict(batch))
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs, mask_temperature=trainer.mask_temperature).logits  # the trainer's soft mask
        end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        ids = batch["input_ids"]
        # by hand: the positions right after "<|im_start|> assistant" up to and including the next <|im_end|>
        start, assistant = ids_of(processor, ["<|im_start|>", "assistant"])
        targets = torch.full_like(ids, -100)
        for b in range(ids.shape[0]):
            row = ids[b].tolist()
            for i in range(len(row) - 1):
                if row[i : i + 2] == [start, assistant]:
                    j = i + 2
                    while row[j] != end:
                        targets[b, j] = row[j]
                        j += 1
                    targets[b, j] = end
        expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten(), ignore_index=-100)
        torch.testing.assert_close(loss, expected)


class _GradientRecorder(TrainerCallback):
    def __init__(self, model):
        self.model = model
        self.gradients = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.gradients is None:
            self.gradients = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}


class TestGradientAccumulation:
    """The CE is token-weighted over the whole optimizer step."""

    @pytest.mark.parametrize("assistant_only_loss", [True, False])
    def test_gradient_accumulation_matches_one_big_batch(self, tmp_path, assistant_only_loss):
        """1 x batch 4 and 2 x batch 2 accumulated give the same gradient: the CE is a mean over all tokens of the step."""
        # Answers of different lengths, so a per-micro-batch mean would weight the tokens differently.
        dataset = messages_dataset(["red", "green blue yellow red green", "blue", "a red circle on the left"], seed=2)
        gradients = []
        for batch_size, accumulation in ((4, 1), (2, 2)):
            trainer = make_trainer(
                tmp_path,
                dataset,
                max_steps=1,
                per_device_train_batch_size=batch_size,
                gradient_accumulation_steps=accumulation,
                max_grad_norm=0,  # no clipping
                assistant_only_loss=assistant_only_loss,
            )
            recorder = _GradientRecorder(trainer.model)
            trainer.add_callback(recorder)
            trainer.train()
            gradients.append(recorder.gradients)
        assert set(gradients[0]) == {n for n, _ in trainer.model.named_parameters() if n.startswith(SCORER_PREFIX)}
        for name, gradient in gradients[0].items():
            if name == "scorer.q_proj.bias":
                # it shifts all scores of an item alike, which the standardised top-k removes: its gradient is zero up
                # to rounding in both runs (and rounding differs with the split)
                scale = gradients[0]["scorer.q_proj.weight"].abs().max()
                assert gradient.abs().max() < 1e-5 * scale and gradients[1][name].abs().max() < 1e-5 * scale
                continue
            torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-4, atol=1e-9, msg=name)


class TestMaskDiagnostics:
    """The score spread and mask sharpness are logged; an early-saturating mask warns once."""

    def test_score_spread_is_logged(self, tmp_path, dataset):
        trainer = make_trainer(tmp_path, dataset)
        trainer.train()
        logs = [entry for entry in trainer.state.log_history if "score_std" in entry]
        assert len(logs) == 2
        # the spread of the fresh scorer's scores is small but not zero, and it is the per-item std of the scores
        assert all(0 < entry["score_std"] < 1 for entry in logs)

    def test_score_spread_is_the_mean_per_item_std(self, tmp_path, dataset):
        trainer = make_trainer(tmp_path, dataset)
        model = trainer.model.train()
        batch = first_batch(trainer)
        trainer.compute_loss(model, dict(batch))
        logged = trainer._metrics["train"]["score_std"][-1]
        with torch.no_grad():
            selection = model.select_visual_tokens(batch["pixel_values"], batch["image_grid_thw"])
        expected = torch.stack([scores.std(correction=0) for scores in selection.scores]).mean().item()
        assert logged == pytest.approx(expected, rel=1e-4)

    def test_saturating_mask_warns_once_naming_the_learning_rate(self, tmp_path, dataset):
        trainer = make_trainer(
            tmp_path, dataset, max_steps=20, learning_rate=10.0, warmup_steps=0, lr_scheduler_type="constant",
            mask_temperature_schedule="paper",
        )  # fmt: skip
        with pytest.warns(UserWarning, match=r"(?s)mask.*saturat.*score_std.*learning.rate") as record:
            trainer.train()
        assert len([w for w in record if "saturat" in str(w.message)]) == 1
        sharpness = [entry["mask_sharpness"] for entry in trainer.state.log_history if "mask_sharpness" in entry]
        assert max(sharpness[:4]) > 0.95  # within the first fifth (steps 0-3)

    def test_default_schedule_keeps_the_mask_soft_early_at_any_learning_rate(self, tmp_path, dataset):
        """The rate that saturates the paper's top-k above does not saturate the default one: its sharpness follows the
        temperature schedule (logged as `mask_temperature`, 1.0 -> 0.03), not the scores' scale."""
        trainer = make_trainer(tmp_path, dataset, max_steps=20, learning_rate=10.0, warmup_steps=0, lr_scheduler_type="constant")
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            trainer.train()
        logs = [entry for entry in trainer.state.log_history if "mask_sharpness" in entry]
        assert max(entry["mask_sharpness"] for entry in logs[:4]) < 0.9
        # it does saturate, as the temperature falls, after the first fifth: where the warning must stay silent
        assert max(entry["mask_sharpness"] for entry in logs[4:]) > SATURATED_SHARPNESS
        assert max(entry["score_std"] for entry in logs) > 1.0  # the scores did spread: the rate did move them
        temperatures = [entry["mask_temperature"] for entry in logs]
        assert temperatures[0] == pytest.approx(1.0)
        assert all(later < earlier for earlier, later in zip(temperatures, temperatures[1:]))
        assert temperatures[-1] == pytest.approx(0.03 ** (19 / 20), rel=1e-5)  # step 19 of 20

    @pytest.mark.parametrize("step, warns", [(0, True), (3, True), (4, False), (10, False)])
    def test_a_saturated_mask_warns_within_the_first_fifth_of_the_run_only(self, tmp_path, dataset, step, warns):
        """Of 20 steps, 0-3 are the window: there a saturated mask is a selection locking in; later it is the end of
        the temperature schedule. Once per run."""
        trainer = make_trainer(tmp_path, dataset, max_steps=20, mask_temperature_start=1e-3, mask_temperature_end=1e-3)
        model = trainer.model.train()
        trainer.state.max_steps, trainer.state.global_step = 20, step
        assert (step < EARLY_SHARE * 20) == warns
        batch = first_batch(trainer)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            for _ in range(2):
                trainer.compute_loss(model, dict(batch))
        assert min(trainer._metrics["train"]["mask_sharpness"]) > SATURATED_SHARPNESS
        assert len([w for w in record if "saturat" in str(w.message)]) == int(warns)

    def test_a_sharp_schedule_warns_naming_the_temperature(self, tmp_path, dataset):
        trainer = make_trainer(tmp_path, dataset, max_steps=20, mask_temperature_start=1e-3, mask_temperature_end=1e-3)
        with pytest.warns(UserWarning, match=r"(?s)saturat.*mask_temperature_start") as record:
            trainer.train()
        assert len([w for w in record if "saturat" in str(w.message)]) == 1

    def test_the_model_takes_the_schedules_temperature(self, tmp_path, dataset):
        """The trainer's soft mask is `differentiable_topk` at the current temperature; `"paper"` at raw scores."""
        from modeling_visionselector import differentiable_topk, num_kept_tokens

        for schedule in ("geometric", "paper"):
            trainer = make_trainer(tmp_path, dataset, mask_temperature_schedule=schedule, mask_temperature_start=0.5)
            model = trainer.model.train()
            batch = first_batch(trainer)
            with torch.no_grad():
                outputs = model(**batch, mask_temperature=trainer.mask_temperature)
            k = [num_kept_tokens(n, model.config.train_retention_ratio) for n in outputs.item_lengths]
            expected = differentiable_topk(
                outputs.scores, list(outputs.item_lengths), k, temperature=0.5 if schedule == "geometric" else None
            )
            assert trainer.mask_temperature == (0.5 if schedule == "geometric" else None)
            torch.testing.assert_close(outputs.soft_mask, expected)


class TestSeeds:
    """A fresh scorer depends on the seed only (found with the distributed test)."""

    def test_fresh_scorer_follows_the_seed(self, tmp_path, dataset):
        """A scorer drawn for a backbone depends on `args.seed` only: every rank and every run start alike."""
        backbone_dir = write_tiny_backbone(str(tmp_path / "backbone"))
        scorers = []
        for seed, noise in ((0, 1), (0, 2), (1, 1)):
            torch.manual_seed(noise)  # whatever the global generator holds before
            trainer = make_trainer(tmp_path, dataset, model=backbone_dir, seed=seed)
            scorers.append(trainer.model.scorer.k_proj.weight.detach().clone())
        assert torch.equal(scorers[0], scorers[1])
        assert not torch.equal(scorers[0], scorers[2])
