"""vLLM plugin: serves VisionSelector checkpoints with learned pruning of images and videos (Qwen2.5-VL), or images
(Qwen3-VL).

`pip install "visionselector[vllm]"` installs it; vLLM finds `register` through the `vllm.general_plugins` entry
point and calls it in every process, before a model is resolved:

    vllm serve ./VisionSelector-Qwen2.5-VL-7B --trust-remote-code --mm-processor-kwargs '{"retention_ratio": 0.3}'

A request sets its own ratio with `mm_processor_kwargs={"retention_ratio": 0.1}`.

The architecture names are those in a checkpoint's `config.json`; the classes are imported lazily (by vLLM, when a
model asks for them), so `register` itself imports nothing heavy.
"""

from __future__ import annotations

# architecture in config.json -> "module:class" of the vLLM implementation. The families this plugin does not serve
# yet are registered too, to a class that refuses them with a clear message: unregistered, vLLM would fall back to
# its Transformers backend and serve them without pruning (or fail deep inside).
ARCHITECTURES = {
    **{
        architecture: "visionselector.vllm.model:VisionSelectorQwen2_5_VLForConditionalGeneration"
        # the explicit name, and the first one, which published checkpoints carry
        for architecture in ("VisionSelectorQwen2_5_VLForConditionalGeneration", "VisionSelectorForConditionalGeneration")
    },
    "VisionSelectorQwen3VLForConditionalGeneration": (
        "visionselector.vllm.model:VisionSelectorQwen3VLForConditionalGeneration"
    ),
    **{
        architecture: "visionselector.vllm.model:UnservedVisionSelectorFamily"
        for architecture in (
            "VisionSelectorQwen2VLForConditionalGeneration",
            "VisionSelectorQwen3VLMoeForConditionalGeneration",
            "VisionSelectorQwen3_5ForConditionalGeneration",
            "VisionSelectorQwen3_5MoeForConditionalGeneration",
        )
    },
}


def register() -> None:
    """Registers the VisionSelector architectures with vLLM's `ModelRegistry` (safe to call more than once)."""
    from vllm import ModelRegistry

    for architecture, model_class in ARCHITECTURES.items():
        ModelRegistry.register_model(architecture, model_class)
