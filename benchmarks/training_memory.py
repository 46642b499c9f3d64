"""GPU memory of scorer training on one device, estimated from the models' shapes, and the formula checked on CPU.

Only the scorer trains, but the loss reaches it through the frozen language model: the visual tokens are scaled by
the soft mask, so every decoder layer keeps what autograd needs for the gradient *with respect to its input*. A
frozen linear layer keeps nothing (its input gradient needs only its weight), so what a layer keeps per token is
(bytes; `a` the activation dtype's size, 2 in bf16):

| where | kept per token |
| --- | --- |
| 2 RMSNorms (they compute in float32) | 2 x 4 D |
| Qwen3 q/k RMSNorms | 4 (H + H_kv) d |
| attention (SDPA / flash: q, k, v, output, log-sum-exp) | a (2 H d + 2 H_kv d) + 4 H |
| gated MLP (SiLU input, its output, the up projection) | 3 a I |

With gradient checkpointing a layer keeps only its input (a D) and recomputes the rest, one layer at a time, in the
backward pass. Outside the layers: the float32 final norm (4 D), the float32 log-softmax of the loss (4 V), and alive
beside them the logits (a V) and, at the loss's backward, three float32 buffers of V per token (12 V). The vision encoder runs without gradient: its
largest layer's working set is transient. Weights: bf16 2 bytes per parameter; int8 (torchao weight-only or
bitsandbytes LLM.int8) 1 byte per quantized linear weight plus a scale per row; int4 (bitsandbytes NF4, double
quantization) 0.5 byte plus 0.127 bit per weight. The quantized linears are those of the language model and the vision
encoder; embeddings, the output head and the scorer stay bf16 (the scorer float32 with Adam: 16 bytes per parameter).
A quantized layer dequantizes one weight at a time (the largest one counted once). Not included: the CUDA context
and allocator fragmentation (about 0.5-1 GB), a second copy of the logits some losses make.

`--check` measures the formula's two parts on a small Qwen2.5-VL on CPU (float32, one thread): the bytes autograd
keeps after the forward pass (its saved-tensor hooks, each storage counted once) and the peak resident memory that
one forward + backward step adds, against the formula for the same shapes.

```bash
python benchmarks/training_memory.py --output benchmarks/results/training_memory.json          # the table
python benchmarks/training_memory.py --check --output benchmarks/results/training_memory_check.json
```
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = (
    "VisionSelector-Qwen2.5-VL-7B-Instruct",
    "VisionSelector-Qwen2.5-VL-32B-Instruct",
    "VisionSelector-Qwen2.5-VL-72B-Instruct",
    "VisionSelector-Qwen3-VL-8B-Instruct",
    "VisionSelector-Qwen3-VL-32B-Instruct",
)
PRECISIONS = ("bf16", "int8", "int4")
# Bytes per quantized linear weight: int8 with one bf16 scale per output row (~0); NF4 0.5 + double-quantized absmax
# (8 bits per 64 weights + 32 bits per 256 blocks = 0.127 bit).
QUANTIZED_WEIGHT_BYTES = {"bf16": 2.0, "int8": 1.0, "int4": 0.5 + (8 / 64 + 32 / (64 * 256)) / 8}
GIB = 2**30


@dataclass
class Shapes:
    """What the formula reads off a model."""

    hidden: int  # D
    intermediate: int  # I
    layers: int
    heads: int  # H
    kv_heads: int  # H_kv
    head_dim: int  # d
    vocab: int  # V
    qk_norm: bool  # Qwen3: RMSNorm on q and k
    vision_hidden: int
    vision_intermediate: int
    quantizable: int  # parameters of the linear layers a quantization config converts
    other: int  # every other backbone parameter (embeddings, output head, norms, patch embedding, biases)
    largest_linear: int  # parameters of the largest quantized linear weight
    scorer: int


def load_meta_model(config):
    """The VisionSelector of `config` on the meta device (no memory)."""
    import torch

    from modeling_visionselector import visionselector_class_for

    model_class = visionselector_class_for(config.model_type, config.model_type)
    with torch.device("meta"):
        return model_class(config)


def shapes_of(model) -> Shapes:
    import torch

    text = model.config.text_config
    vision = model.config.vision_config
    quantizable = other = largest = scorer = 0
    for name, module in model.named_modules():
        for parameter_name, parameter in module.named_parameters(recurse=False):
            count = parameter.numel()
            if name.startswith("scorer"):
                scorer += count
            elif isinstance(module, torch.nn.Linear) and parameter_name == "weight" and name != "lm_head":
                quantizable += count
                largest = max(largest, count)
            else:
                other += count
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return Shapes(
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        heads=text.num_attention_heads,
        kv_heads=text.num_key_value_heads,
        head_dim=head_dim,
        vocab=text.vocab_size,
        qk_norm="qwen3" in model.config.model_type,
        vision_hidden=getattr(vision, "hidden_size", None) or vision.embed_dim,
        vision_intermediate=getattr(vision, "intermediate_size", 0) or 4 * vision.embed_dim,
        quantizable=quantizable,
        other=other,
        largest_linear=largest,
        scorer=scorer,
    )


def layer_bytes_per_token(shapes: Shapes, activation_bytes: int) -> float:
    """What one decoder layer keeps for the backward pass, per token, without checkpointing (see the docstring)."""
    a = activation_bytes
    norms = 2 * 4 * shapes.hidden
    qk_norm = 4 * (shapes.heads + shapes.kv_heads) * shapes.head_dim if shapes.qk_norm else 0
    attention = a * (2 * shapes.heads + 2 * shapes.kv_heads) * shapes.head_dim + 4 * shapes.heads
    mlp = 3 * a * shapes.intermediate
    return norms + qk_norm + attention + mlp


def saved_activation_bytes(shapes: Shapes, tokens: int, checkpointing: bool, activation_bytes: int) -> float:
    """Bytes autograd keeps at the end of the forward pass for `tokens` tokens of the batch."""
    a = activation_bytes
    per_layer = a * shapes.hidden if checkpointing else layer_bytes_per_token(shapes, a)
    outside = 4 * shapes.hidden + a * shapes.hidden  # final norm (float32) and the embeddings the mask scales
    log_probs = 4 * shapes.vocab  # the float32 log-softmax of the loss
    return tokens * (shapes.layers * per_layer + outside + log_probs)


def transient_bytes(shapes: Shapes, tokens: int, checkpointing: bool, activation_bytes: int, precision: str) -> float:
    """What is alive besides the kept activations at the step's peak: the logits (a V per token), and the largest
    short-lived working set: the loss's backward (three float32 (tokens, V) buffers: the loss's output gradient, the
    log-softmax's input gradient, the logits' gradient cast and padded back), or a layer's backward (the gradients
    through its MLP, plus the recomputed layer under checkpointing); plus one dequantized weight."""
    a = activation_bytes
    logits = tokens * a * shapes.vocab
    loss_backward = tokens * 12 * shapes.vocab
    layer_backward = tokens * a * (2 * shapes.intermediate + 2 * shapes.hidden)
    if checkpointing:
        layer_backward += tokens * layer_bytes_per_token(shapes, a)
    dequantized = 2 * shapes.largest_linear if precision != "bf16" else 0
    return logits + max(loss_backward, layer_backward) + dequantized


def weight_bytes(shapes: Shapes, precision: str) -> float:
    return shapes.quantizable * QUANTIZED_WEIGHT_BYTES[precision] + 2 * shapes.other + 16 * shapes.scorer


def estimate(shapes: Shapes, precision: str, checkpointing: bool, batch: int, tokens_per_sample: int) -> dict:
    tokens = batch * tokens_per_sample
    weights = weight_bytes(shapes, precision)
    saved = saved_activation_bytes(shapes, tokens, checkpointing, 2)
    transient = transient_bytes(shapes, tokens, checkpointing, 2, precision)
    return {
        "weights_gib": weights / GIB,
        "activations_gib": saved / GIB,
        "transient_gib": transient / GIB,
        "total_gib": (weights + saved + transient) / GIB,
    }


def table(tokens_per_sample: int, batches: list[int]) -> tuple[list[dict], str]:
    from modeling_visionselector import visionselector_class_for
    from transformers import PreTrainedConfig

    rows = []
    for name in MODELS:
        folder = os.path.join(REPO, "hub_configs", name)
        config_dict, _ = PreTrainedConfig.get_config_dict(folder)
        config_class = visionselector_class_for(config_dict["model_type"], folder).config_class
        shapes = shapes_of(load_meta_model(config_class.from_pretrained(folder)))
        for precision in PRECISIONS:
            for checkpointing in (True, False):
                for batch in batches:
                    result = estimate(shapes, precision, checkpointing, batch, tokens_per_sample)
                    rows.append({"model": name.removeprefix("VisionSelector-"), "precision": precision,
                                 "checkpointing": checkpointing, "batch": batch, **result, "shapes": asdict(shapes)})
    lines = [
        f"Estimated peak GPU memory (GiB) of scorer training on one GPU, from the models' shapes "
        f"(`benchmarks/training_memory.py`): {tokens_per_sample} tokens per sample, AdamW on the float32 scorer, "
        "bf16 activations; CUDA context and fragmentation (~0.5-1 GB) not included. Fits: the smallest of "
        "24 / 48 / 80 GB whose 90% holds the estimate.",
        "",
        "| model | weights | gradient checkpointing | " + " | ".join(f"batch {batch}" for batch in batches) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in batches) + " |",
    ]
    for name in MODELS:
        short = name.removeprefix("VisionSelector-")
        for precision in PRECISIONS:
            for checkpointing in (True, False):
                cells = []
                for batch in batches:
                    row = next(r for r in rows if r["model"] == short and r["precision"] == precision
                               and r["checkpointing"] == checkpointing and r["batch"] == batch)
                    cells.append(f"{row['total_gib']:.1f} ({fits(row['total_gib'])})")
                lines.append(f"| {short} | {precision} | {'on' if checkpointing else 'off'} | " + " | ".join(cells) + " |")
    return rows, "\n".join(lines)


def fits(total_gib: float) -> str:
    for capacity in (24, 48, 80):
        if total_gib * GIB <= 0.9 * capacity * 1e9:
            return f"{capacity} GB"
    return "> 80 GB"


# ---------------------------------------------------------------- the check on CPU

CHECK_SHAPES = dict(text_hidden_size=256, vision_hidden_size=64, vocab_size=8192, num_hidden_layers=4, vision_depth=2)


def _rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_step(checkpointing: bool, batch: int, text_tokens: int) -> dict:
    """In its own process: one forward + backward of the scorer loss on a small Qwen2.5-VL (float32, CPU)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from modeling_visionselector import SCORER_PREFIX, VisionSelectorForConditionalGeneration
    from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = VisionSelectorForConditionalGeneration.from_backbone(tiny_qwen2_5_vl(**CHECK_SHAPES)).train()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(SCORER_PREFIX))
    if checkpointing:
        # `activation_checkpointing_enable` from transformers 5.24, `gradient_checkpointing_enable` before
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is None:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
    processor = tiny_processor(min_pixels=224 * 224, max_pixels=224 * 224)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
    words = " ".join(["red"] * text_tokens)
    content = [{"type": "image"}, {"type": "text", "text": words}]
    text = processor.apply_chat_template([{"role": "user", "content": content}])
    inputs = processor(text=[text] * batch, images=[image] * batch, return_tensors="pt")
    labels = inputs["input_ids"].clone()
    tokens = int(inputs["input_ids"].numel())
    shapes = shapes_of(model)

    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    before = _rss_mib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = model(**inputs, retention_ratio=0.2, use_cache=False)
        loss = F.cross_entropy(outputs.logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten())
    kept = sum(size for pointer, size in saved.items() if pointer not in weights)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    formula_saved = saved_activation_bytes(shapes, tokens, checkpointing, 4)
    formula_peak = formula_saved + transient_bytes(shapes, tokens, checkpointing, 4, "bf16")
    return {
        "checkpointing": checkpointing,
        "batch": batch,
        "tokens": tokens,
        "measured_saved_mib": kept / 2**20,
        "formula_saved_mib": formula_saved / 2**20,
        # the step's own peak over what was resident before it; None if an earlier peak (loading) was higher
        "measured_step_peak_mib": peak - before if peak > peak_before else None,
        "formula_step_peak_mib": formula_peak / 2**20,
    }


def check(batch: int, text_tokens: int) -> list[dict]:
    results = []
    for checkpointing in (False, True):
        command = [sys.executable, os.path.abspath(__file__), "--_measure", str(int(checkpointing)),
                   "--batch", str(batch), "--text_tokens", str(text_tokens)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        output = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens_per_sample", type=int, default=2048)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--check", action="store_true", help="measure the formula on a small model on CPU")
    parser.add_argument("--batch", type=int, default=2, help="--check: the batch")
    parser.add_argument("--text_tokens", type=int, default=1000, help="--check: text tokens per sample")
    parser.add_argument("--output", default=None, help="a .json file (a .md table is written beside it)")
    parser.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._measure is not None:
        print(json.dumps(measure_step(bool(int(args._measure)), args.batch, args.text_tokens)))
        return
    if args.check:
        results = check(args.batch, args.text_tokens)
        lines = [
            f"The formula against one measured forward + backward step of a small Qwen2.5-VL on CPU (float32, 1 "
            f"thread; text hidden {CHECK_SHAPES['text_hidden_size']}, {CHECK_SHAPES['num_hidden_layers']} layers, "
            f"vocab {CHECK_SHAPES['vocab_size']}): bytes autograd keeps after the forward pass, and the peak resident "
            "memory the step adds.",
            "",
            "| gradient checkpointing | tokens | kept by autograd: measured | formula | step peak: measured | formula |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in results:
            measured_peak = "n/a" if r["measured_step_peak_mib"] is None else f"{r['measured_step_peak_mib']:.1f} MiB"
            lines.append(
                f"| {'on' if r['checkpointing'] else 'off'} | {r['tokens']} | {r['measured_saved_mib']:.1f} MiB | "
                f"{r['formula_saved_mib']:.1f} MiB | {measured_peak} | {r['formula_step_peak_mib']:.1f} MiB |"
            )
        text = "\n".join(lines)
        payload = {"results": results}
    else:
        rows, text = table(args.tokens_per_sample, args.batches)
        payload = {"tokens_per_sample": args.tokens_per_sample, "rows": rows}
    print(text)
    if args.output:
        with open(args.output, "w") as file:
            json.dump(payload, file, indent=2)
        with open(os.path.splitext(args.output)[0] + ".md", "w") as file:
            file.write(text + "\n")


if __name__ == "__main__":
    main()
