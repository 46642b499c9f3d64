"""Pruned generation with a tiny random Qwen2.5-VL, offline: how many visual tokens reach the LLM at each ratio."""

import numpy as np
import torch
from PIL import Image

from modeling_visionselector import VisionSelectorForConditionalGeneration
from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl

processor = tiny_processor(max_pixels=224 * 224)
model = VisionSelectorForConditionalGeneration.from_backbone(tiny_qwen2_5_vl()).eval()
image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is the colour"}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[text], images=[image], return_tensors="pt")
print(f"{'ratio':>6} {'visual tokens kept':>19} {'prefill length':>15}  new tokens")
for ratio in (1.0, 0.5, 0.3, 0.2, 0.1):
    with torch.no_grad():
        prefill = model(**inputs, retention_ratio=ratio)
    out = model.generate(**inputs, retention_ratio=ratio, max_new_tokens=5, do_sample=False)
    kept = sum(len(k) for k in prefill.kept_indices)
    print(f"{ratio:>6} {kept:>19} {prefill.logits.shape[1]:>15}  {out[0, inputs['input_ids'].shape[1]:].tolist()}")
