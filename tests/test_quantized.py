"""A frozen quantized backbone (torchao int8 weight-only, on CPU): the scorer trains unquantized over it, its
scorer-only artifact loads on the full-precision backbone, and the quantized model generates with pruning."""

import copy

import numpy as np
import pytest
import torch

from modeling_visionselector import VisionSelectorForConditionalGeneration
from modeling_visionselector.modeling_visionselector import scorer_unquantized
from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl
from visionselector_training import VisionSelectorSFTTrainer, load_visionselector
from visionselector_training.quantization import check_scorer_trainable, quantization_config_for
from visionselector_training.tiny_assets import write_image_dataset, write_tiny_backbone

from conftest import build_inputs
from training_args import tiny_run_args

torchao = pytest.importorskip("torchao", reason="the `quant` extra (torchao) is not installed")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


@pytest.fixture
def backbone(tmp_path):
    return write_tiny_backbone(str(tmp_path / "backbone"))


def _is_int8(weight) -> bool:
    return type(weight).__name__ == "Int8Tensor" and weight.qdata.dtype == torch.int8


def test_scorer_is_left_unquantized_in_every_config_form():
    from transformers import BitsAndBytesConfig, TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    torchao_config = scorer_unquantized(TorchAoConfig(Int8WeightOnlyConfig()))
    assert torchao_config.modules_to_not_convert == ["lm_head", "scorer"]  # None meant: skip the output head
    kept = scorer_unquantized(TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=["visual"]))
    assert kept.modules_to_not_convert == ["visual", "scorer"]
    bnb = scorer_unquantized(BitsAndBytesConfig(load_in_4bit=True))
    assert bnb.llm_int8_skip_modules == ["lm_head", "scorer"]
    assert scorer_unquantized({"quant_method": "bitsandbytes", "llm_int8_skip_modules": None})["llm_int8_skip_modules"] == ["lm_head", "scorer"]
    four_bit = quantization_config_for("bnb_4bit", "float32")
    assert four_bit.load_in_4bit and four_bit.bnb_4bit_compute_dtype == torch.float32
    with pytest.raises(ValueError, match="Unknown quantization 'int3'"):
        quantization_config_for("int3")


def test_int8_backbone_trains_the_float_scorer_and_generates(tmp_path, backbone):
    model = load_visionselector(backbone, quantization_config=quantization_config_for("torchao_int8"))
    layer = model.model.language_model.layers[0]
    assert _is_int8(layer.mlp.up_proj.weight) and _is_int8(model.model.visual.blocks[0].mlp.up_proj.weight)
    assert type(model.scorer.q_proj.weight.data) is torch.Tensor and model.scorer.q_proj.weight.dtype == torch.float32
    assert type(model.lm_head.weight.data) is torch.Tensor
    frozen = layer.mlp.up_proj.weight.qdata.clone()
    scorer_before = {name: tensor.clone() for name, tensor in model.scorer.state_dict().items()}

    data = write_image_dataset(str(tmp_path / "data"), num_examples=4)
    from visionselector_training.train import load_training_dataset

    dataset, _ = load_training_dataset(data)
    processor = tiny_processor()
    trainer = VisionSelectorSFTTrainer(
        model, args=tiny_run_args(tmp_path, max_steps=2, learning_rate=1e-2), train_dataset=dataset["train"],
        processing_class=processor,
    )
    assert model.is_quantized  # restored after `Trainer`'s check
    trainer.train()
    assert all(np.isfinite(entry["ce_loss"]) for entry in trainer.state.log_history if "ce_loss" in entry)
    assert not torch.equal(model.scorer.k_proj.weight, scorer_before["k_proj.weight"])
    assert torch.equal(layer.mlp.up_proj.weight.qdata, frozen)

    # generation on the quantized backbone, pruned
    model.eval()
    inputs = build_inputs(processor, [[("image", 112, 112)], [("image", 84, 112)]])
    with torch.no_grad():
        output = model.generate(**inputs, retention_ratio=0.5, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    assert output.sequences.shape == (2, inputs["input_ids"].shape[1] + 3)

    # the scorer-only artifact loads on the full-precision backbone, scorer bit for bit
    trainer._save_scorer(str(tmp_path / "scorer"))
    full = VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "scorer")
    assert not getattr(full, "is_quantized", False) and "quantization_config" not in full.config.to_dict()
    assert type(full.model.language_model.layers[0].mlp.up_proj.weight.data) is torch.Tensor
    for name, tensor in model.scorer.state_dict().items():
        torch.testing.assert_close(full.scorer.state_dict()[name], tensor, rtol=0, atol=0)
    # and on the int8 backbone again, given the quantization config
    requantized = VisionSelectorForConditionalGeneration.from_pretrained(
        tmp_path / "scorer", quantization_config=quantization_config_for("torchao_int8")
    )
    assert _is_int8(requantized.model.language_model.layers[0].mlp.up_proj.weight)
    torch.testing.assert_close(requantized.scorer.k_proj.weight, model.scorer.k_proj.weight, rtol=0, atol=0)
    with torch.no_grad():
        again = requantized.generate(**inputs, retention_ratio=0.5, max_new_tokens=3, do_sample=False)
    assert torch.equal(again, output.sequences)


def test_int8_scores_close_to_the_full_precision_ones(backbone):
    """The int8 backbone's visual features, hence the scorer's scores, stay close to the float backbone's."""
    torch.manual_seed(0)
    full = load_visionselector(backbone)
    torch.manual_seed(0)
    quantized = load_visionselector(backbone, quantization_config=quantization_config_for("torchao_int8"))
    quantized.scorer.load_state_dict(full.scorer.state_dict())
    inputs = build_inputs(tiny_processor(), [[("image", 112, 112)]])
    with torch.no_grad():  # in training mode the forward returns every token's score
        scores_full = full.train()(**inputs, retention_ratio=0.5).scores
        scores_int8 = quantized.train()(**inputs, retention_ratio=0.5).scores
    assert scores_full.shape == scores_int8.shape
    assert torch.corrcoef(torch.stack([scores_full.flatten(), scores_int8.flatten()]))[0, 1] > 0.99


def test_a_quantized_trainable_parameter_is_refused(backbone):
    model = load_visionselector(backbone, quantization_config=quantization_config_for("torchao_int8"))
    model.model.language_model.layers[0].mlp.up_proj.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"trainable parameters \['model.language_model.layers.0.mlp.up_proj.weight'\] are quantized"):
        check_scorer_trainable(model)


def test_script_trains_over_an_int8_backbone_and_saves_the_scorer_only(tmp_path, backbone):
    from visionselector_training.train import cli

    data = write_image_dataset(str(tmp_path / "data"), num_examples=4)
    args = [
        "--model_name_or_path", backbone, "--dataset_name", data, "--output_dir", str(tmp_path / "run"),
        "--use_cpu", "true", "--bf16", "false", "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--quantization", "torchao_int8",
    ]
    trainer = cli(args)
    assert trainer.state.global_step == 2
    assert (tmp_path / "run" / "scorer.safetensors").is_file() and not (tmp_path / "run" / "model.safetensors").exists()
    loaded = VisionSelectorForConditionalGeneration.from_pretrained(tmp_path / "run")
    torch.testing.assert_close(loaded.scorer.q_proj.weight, trainer.model.scorer.q_proj.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"Choose one quantization of the backbone, got \['bnb_8bit', 'torchao_int8'\]"):
        cli(args + ["--load_in_8bit", "true"])
