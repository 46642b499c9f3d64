"""Frozen quantized backbones: the scorer trains in floating point over a backbone loaded with a quantization config.

Only the scorer trains, so the backbone can be stored in 8 or 4 bits as long as gradients flow *through* it to the
visual tokens: torchao's int8 weight-only tensors (CPU and CUDA) and bitsandbytes' 8-bit and 4-bit layers (CUDA) both
back-propagate to their inputs. The scorer stays unquantized (`scorer_unquantized` adds it to the config's skipped
modules; `from_pretrained` of every VisionSelector class does this itself) and in float32 or bfloat16.

```python
from transformers import TorchAoConfig
from torchao.quantization import Int8WeightOnlyConfig

model = load_visionselector("Qwen/Qwen2.5-VL-72B-Instruct", dtype="bfloat16",
                            quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
```
"""

from __future__ import annotations

import torch

from modeling_visionselector.loading import scorer_unquantized

# The command line's `--load_in_8bit` / `--load_in_4bit` and what they load with.
QUANTIZATION_CHOICES = ("torchao_int8", "bnb_8bit", "bnb_4bit")


def _is_plain_float(parameter: torch.Tensor) -> bool:
    return type(parameter.data) in (torch.Tensor, torch.nn.Parameter) and parameter.dtype.is_floating_point


def check_scorer_trainable(model) -> None:
    """`ValueError` unless every trainable parameter is a plain floating-point tensor (the scorer, unquantized)."""
    quantized = [name for name, parameter in model.named_parameters() if parameter.requires_grad and not _is_plain_float(parameter)]
    if quantized:
        raise ValueError(
            f"The trainable parameters {quantized} are quantized ({type(model.get_parameter(quantized[0]).data).__name__}); "
            "the scorer must stay in floating point. Load the model with `scorer_unquantized(quantization_config)` or "
            "through `load_visionselector`, which keep it so."
        )


def quantization_config_for(kind: str, compute_dtype: torch.dtype | str | None = None):
    """The transformers quantization config of `kind` (one of `QUANTIZATION_CHOICES`), scorer left unquantized.

    `torchao_int8`: torchao int8 weight-only (CPU or CUDA; needs the `quant` extra). `bnb_8bit` / `bnb_4bit`:
    bitsandbytes LLM.int8 / NF4 with double quantization (CUDA; `pip install bitsandbytes`), computing in
    `compute_dtype` (default bfloat16).
    """
    if kind not in QUANTIZATION_CHOICES:
        raise ValueError(f"Unknown quantization {kind!r}; accepted: {list(QUANTIZATION_CHOICES)}.")
    if kind == "torchao_int8":
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return scorer_unquantized(TorchAoConfig(Int8WeightOnlyConfig()))
    from transformers import BitsAndBytesConfig

    if isinstance(compute_dtype, str):
        compute_dtype = getattr(torch, compute_dtype) if compute_dtype != "auto" else None
    if kind == "bnb_8bit":
        return scorer_unquantized(BitsAndBytesConfig(load_in_8bit=True))
    return scorer_unquantized(
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16,
        )
    )


__all__ = ["QUANTIZATION_CHOICES", "check_scorer_trainable", "quantization_config_for", "scorer_unquantized"]
