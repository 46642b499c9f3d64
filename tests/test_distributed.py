"""Distributed training on CPU: the trainer under `accelerate launch` with 2 processes (DDP over gloo).

One launch of `tests/distributed_train.py` with the shipped DDP config (`training/configs/accelerate/multi_gpu.yaml`,
2 processes, no mixed precision) trains 4 steps and resumes a second run from its step-2 checkpoint. Both ranks must
end with the same scorer, equal to one process trained on the same global batches (4 samples per step), and the
resumed run must end there too. FSDP2 and DeepSpeed are not run: accelerate enables them only on GPUs.
"""

import json
import os
import socket
import subprocess
import sys

import safetensors.torch
import torch

from distributed_train import scorer_tensors, train
from visionselector_training.tiny_assets import write_tiny_backbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_on_two_processes_equals_one_process_and_resumes_exactly(tmp_path):
    backbone = write_tiny_backbone(str(tmp_path / "backbone"))
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(REPO, "training", "configs", "accelerate", "multi_gpu.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
        os.path.join(REPO, "tests", "distributed_train.py"), backbone, str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((out / "state.json").read_text())
    assert state == {"distributed_type": "MULTI_CPU", "num_processes": 2, "backend": "gloo"}

    ranks = [safetensors.torch.load_file(str(out / f"full-rank{rank}.safetensors")) for rank in (0, 1)]
    resumed = [safetensors.torch.load_file(str(out / f"resumed-rank{rank}.safetensors")) for rank in (0, 1)]
    initial = tmp_path / "ddp" / "run" / "checkpoint-2" / "scorer.safetensors"
    assert set(ranks[0]) == {"scorer.q_proj.weight", "scorer.q_proj.bias", "scorer.k_proj.weight", "scorer.k_proj.bias"}
    for name, tensor in ranks[0].items():
        assert torch.equal(ranks[1][name], tensor), name  # DDP keeps the replicas identical
        assert torch.equal(resumed[0][name], tensor) and torch.equal(resumed[1][name], tensor), name
    assert not torch.equal(safetensors.torch.load_file(str(initial))["scorer.k_proj.weight"], ranks[0]["scorer.k_proj.weight"])

    # One process, 4 samples per step: the same global batches, the same token-weighted loss. (The query bias is left
    # out: it shifts all scores of an item alike, so its gradient is zero up to rounding, which AdamW amplifies.)
    single = scorer_tensors(train(backbone, str(tmp_path / "single"), per_device_batch=4))
    for name, tensor in single.items():
        if name != "scorer.q_proj.bias":
            torch.testing.assert_close(ranks[0][name], tensor, rtol=1e-4, atol=1e-6, msg=name)
