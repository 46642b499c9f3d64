"""VisionSelector training (installed as `visionselector_training`): TRL's SFT with a scorer-only objective.

```python
from visionselector_training import VisionSelectorSFTConfig, VisionSelectorSFTTrainer
```

The command line is `python -m visionselector_training.train` (see its docstring); the CPU smoke run is
`python -m visionselector_training.smoke`.
"""

from .collator import VisionSelectorCollator, assistant_turn_mask
from .config import VisionSelectorSFTConfig
from .losses import mask_hard_distance, mask_regularization, mask_sharpness
from .objective import ObjectiveOutput, ObjectiveStep, VisionSelectorObjective
from .schedule import REG_WEIGHT_SCHEDULES, annealed_reg_weight
from .trainer import SCORER_CHECKPOINT_NAME, VisionSelectorSFTTrainer, load_visionselector

__all__ = [
    "VisionSelectorSFTConfig",
    "VisionSelectorSFTTrainer",
    "VisionSelectorObjective",
    "ObjectiveOutput",
    "ObjectiveStep",
    "VisionSelectorCollator",
    "assistant_turn_mask",
    "load_visionselector",
    "annealed_reg_weight",
    "REG_WEIGHT_SCHEDULES",
    "mask_regularization",
    "mask_sharpness",
    "mask_hard_distance",
    "SCORER_CHECKPOINT_NAME",
]
