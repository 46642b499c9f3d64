"""A training run killed with SIGKILL again and again, mid-save included, resumes to the scorer of an unbroken run.

Each attempt is a forked child process (the imports are paid once, by the test) that trains `STEPS` steps with a
checkpoint after every step, resuming with `resume_from_checkpoint=True` whenever `get_last_checkpoint` finds one.
Attempts are killed with SIGKILL: at a random moment by the test, or by themselves in the middle of writing a
checkpoint (after the scorer, after the optimizer or after the RNG state was written, before the trainer state).
After every kill, every `checkpoint-N` on disk must be complete; at the end the scorer must equal, bit for bit, the
scorer of one run that was never interrupted.
"""

import multiprocessing
import os
import random
import signal
import time

import pytest
import safetensors.torch
import torch
from transformers.trainer_utils import get_last_checkpoint

from distributed_train import dataset
from modeling_visionselector import SCORER_PREFIX
from visionselector.tiny import tiny_processor
from visionselector_training import VisionSelectorSFTConfig, VisionSelectorSFTTrainer
from visionselector_training.tiny_assets import write_tiny_backbone
from visionselector_training.trainer import SCORER_CHECKPOINT_NAME

STEPS = 16
KILLS = 12
# What a complete scorer-only checkpoint holds (training on one process, no mixed precision).
CHECKPOINT_FILES = {SCORER_CHECKPOINT_NAME, "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
SAVE_STAGES = ("save_model", "_save_optimizer_and_scheduler", "_save_rng_state")

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="the attempts are forked child processes"
)


class CrashingTrainer(VisionSelectorSFTTrainer):
    """Kills its own process with SIGKILL right after `crash_stage` ran during its `crash_save`-th checkpoint."""

    crash_save: int | None = None
    crash_stage: str | None = None
    _saves = 0

    def _save_checkpoint(self, model, trial):
        self._saves += 1
        super()._save_checkpoint(model, trial)

    def _maybe_crash(self, stage: str) -> None:
        if getattr(self, "_saving_checkpoint", False) and self._saves == self.crash_save and stage == self.crash_stage:
            os.kill(os.getpid(), signal.SIGKILL)

    def save_model(self, *args, **kwargs):
        super().save_model(*args, **kwargs)
        self._maybe_crash("save_model")

    def _save_optimizer_and_scheduler(self, output_dir):
        super()._save_optimizer_and_scheduler(output_dir)
        self._maybe_crash("_save_optimizer_and_scheduler")

    def _save_rng_state(self, output_dir):
        super()._save_rng_state(output_dir)
        self._maybe_crash("_save_rng_state")


def attempt(backbone: str, output_dir: str, crash_save: int | None = None, crash_stage: str | None = None) -> None:
    """One attempt (in a child process): resumes from the last checkpoint if any, trains to `STEPS`, writes the scorer."""
    torch.set_num_threads(1)
    args = VisionSelectorSFTConfig(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        max_steps=STEPS,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        warmup_steps=0,
        save_strategy="steps",
        save_steps=1,
        logging_steps=1,
        report_to="none",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = CrashingTrainer(
        backbone, args=args, train_dataset=dataset(), processing_class=tiny_processor(min_pixels=56 * 56, max_pixels=56 * 56)
    )
    trainer.crash_save, trainer.crash_stage = crash_save, crash_stage
    trainer.train(resume_from_checkpoint=True if get_last_checkpoint(output_dir) else None)
    scorer = {name: t.detach().clone() for name, t in trainer.model.state_dict().items() if name.startswith(SCORER_PREFIX)}
    safetensors.torch.save_file(scorer, os.path.join(output_dir, "final.safetensors"))


def run_attempt(backbone, output_dir, kill_after: float | None = None, **crash) -> int:
    """Forks one attempt; kills it with SIGKILL after `kill_after` seconds if it still runs. Returns its exit code."""
    process = multiprocessing.get_context("fork").Process(target=attempt, args=(backbone, output_dir), kwargs=crash)
    process.start()
    process.join(kill_after)
    if process.exitcode is None:
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    return process.exitcode


def checkpoints(output_dir: str) -> list[str]:
    names = [name for name in os.listdir(output_dir) if name.startswith("checkpoint-")]
    return sorted(names, key=lambda name: int(name.split("-")[1]))


def test_sigkill_at_random_moments_and_mid_save_resumes_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = write_tiny_backbone(str(tmp_path / "backbone"))
    reference, crashed = str(tmp_path / "reference"), str(tmp_path / "crashed")

    started = time.perf_counter()
    assert run_attempt(backbone, reference) == 0
    unbroken = time.perf_counter() - started  # start-up plus STEPS steps and saves

    rng = random.Random(0)
    kills = mid_save = 0
    for number in range(4 * KILLS):
        if kills >= KILLS:
            break
        if number % 2:  # killed by itself, mid-save, in one of the next two checkpoints
            crash = {"crash_save": rng.randint(1, 2), "crash_stage": rng.choice(SAVE_STAGES)}
            code = run_attempt(backbone, crashed, **crash)
        else:  # killed by the test at a random moment (start-up, a step, a save)
            code = run_attempt(backbone, crashed, kill_after=rng.uniform(0.0, unbroken / 2))
        if code == 0:
            break  # the run finished before its kill came
        assert code == -signal.SIGKILL, code
        kills += 1
        if number % 2:
            mid_save += 1
            # killed inside a save: the half-written checkpoint sits under its staging name, never as checkpoint-N
            assert any(name.startswith(".staging-checkpoint-") for name in os.listdir(crashed)), os.listdir(crashed)
        for name in checkpoints(crashed):
            assert CHECKPOINT_FILES <= set(os.listdir(os.path.join(crashed, name))), (name, os.listdir(os.path.join(crashed, name)))
    assert kills >= 10 and mid_save >= 5, (kills, mid_save)

    assert run_attempt(backbone, crashed) == 0  # the last attempt resumes and finishes
    assert checkpoints(crashed)[-1] == f"checkpoint-{STEPS}"
    expected = safetensors.torch.load_file(os.path.join(reference, "final.safetensors"))
    resumed = safetensors.torch.load_file(os.path.join(crashed, "final.safetensors"))
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), name
    initial = safetensors.torch.load_file(os.path.join(reference, "checkpoint-1", SCORER_CHECKPOINT_NAME))
    assert not torch.equal(initial["scorer.k_proj.weight"], expected["scorer.k_proj.weight"])  # training moved it
