"""The `VisionSelectorSFTConfig` of the trainer tests: a few logged steps on CPU, no saves, no reports."""

from visionselector_training import VisionSelectorSFTConfig


def tiny_run_args(tmp_path, max_steps: int, **overrides) -> VisionSelectorSFTConfig:
    """`max_steps` steps of batch 2 in float32 on CPU, logged every step, writing under `tmp_path / "out"`."""
    values = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        max_steps=max_steps,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return VisionSelectorSFTConfig(**values)
