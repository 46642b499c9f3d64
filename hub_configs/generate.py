"""Writes `hub_configs/<name>/config.json`, a VisionSelector config for each Qwen2.5-VL Instruct backbone.

The architectures come from one table, `BACKBONES`, which restates the official `config.json` of each base repo
(transformers 4.5x layout: text fields flat, `rope_scaling` with the mRoPE sections). The configs are generated,
never edited by hand: change the table and run

    python hub_configs/generate.py            # (re)write every config
    python hub_configs/generate.py --check    # exit 1 if a written config differs from the table

Each config names its official backbone in `base_model_name_or_path` and has the paper's scorer width
(`scorer_hidden_size` = LLM hidden size // 2, the default). It is a training/publishing config, not a scorer-only
artifact (`scorer_only` is False; `save_scorer` sets it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from transformers import Qwen2_5_VLConfig

from modeling_visionselector import VisionSelectorConfig

HERE = Path(__file__).resolve().parent

# Fields shared by the official configs of the whole family.
COMMON = {
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "sliding_window": 32768,
    "use_sliding_window": False,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}

# The vision tower (675M parameters) is the same in every size; only its output width follows the LLM.
VISION = {
    "depth": 32,
    "hidden_act": "silu",
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}

# name -> (official base repo, the fields that differ between sizes)
BACKBONES = {
    "VisionSelector-Qwen2.5-VL-3B-Instruct": (
        "Qwen/Qwen2.5-VL-3B-Instruct",
        dict(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            max_window_layers=70,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
    "VisionSelector-Qwen2.5-VL-7B-Instruct": (
        "Qwen/Qwen2.5-VL-7B-Instruct",
        dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_window_layers=28,
            vocab_size=152064,
            tie_word_embeddings=False,
        ),
    ),
    "VisionSelector-Qwen2.5-VL-32B-Instruct": (
        "Qwen/Qwen2.5-VL-32B-Instruct",
        dict(
            hidden_size=5120,
            intermediate_size=27648,
            num_hidden_layers=64,
            num_attention_heads=40,
            num_key_value_heads=8,
            max_window_layers=64,
            vocab_size=152064,
            tie_word_embeddings=False,
        ),
    ),
    "VisionSelector-Qwen2.5-VL-72B-Instruct": (
        "Qwen/Qwen2.5-VL-72B-Instruct",
        dict(
            hidden_size=8192,
            intermediate_size=29568,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            max_window_layers=80,
            vocab_size=152064,
            tie_word_embeddings=False,
        ),
    ),
}


def official_config_dict(name: str) -> dict:
    """The backbone's `config.json` as the base repo has it (4.5x layout)."""
    _, sizes = BACKBONES[name]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        **COMMON,
        **sizes,
        "vision_config": {**VISION, "out_hidden_size": sizes["hidden_size"]},
    }


def visionselector_config(name: str, **overrides) -> VisionSelectorConfig:
    """The VisionSelector config of the table row `name`, with `overrides` (any config field) applied."""
    base_repo, _ = BACKBONES[name]
    backbone = Qwen2_5_VLConfig(**{k: v for k, v in official_config_dict(name).items() if k != "model_type"})
    return VisionSelectorConfig.from_backbone_config(backbone, base_model_name_or_path=base_repo, **overrides)


def rendered(name: str) -> dict:
    """The `config.json` content `main` writes for `name`."""
    with tempfile.TemporaryDirectory() as folder:
        visionselector_config(name).save_pretrained(folder)
        return json.loads((Path(folder) / "config.json").read_text())


def _comparable(config: dict) -> dict:
    return {key: value for key, value in config.items() if key != "transformers_version"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare the written configs with the table")
    parser.add_argument("--output-dir", type=Path, default=HERE, help="where the <name>/config.json folders go")
    args = parser.parse_args(argv)
    stale = []
    for name in BACKBONES:
        path = args.output_dir / name / "config.json"
        content = rendered(name)
        if args.check:
            if not path.exists() or _comparable(json.loads(path.read_text())) != _comparable(content):
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")
    if stale:
        print("Out of date (run `python hub_configs/generate.py`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
