"""benchmarks/training_memory.py and benchmarks/data_memory.py on tiny inputs: the activation formula against what
autograd keeps on a small model, the table's structure, and a lazily read LLaVA file."""

import json
from pathlib import Path

import pytest
import torch

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


training_memory = load_script("benchmarks_training_memory", ROOT / "benchmarks" / "training_memory.py")
data_memory = load_script("benchmarks_data_memory", ROOT / "benchmarks" / "data_memory.py")


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()  # the measurements run on one thread
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_formula_matches_what_autograd_keeps(checkpointing):
    """The kept activations of one scorer-training forward pass (measured by autograd's saved-tensor hooks) are the
    formula's to within 5%, with and without gradient checkpointing."""
    result = training_memory.measure_step(checkpointing, batch=1, text_tokens=300)
    assert result["measured_saved_mib"] == pytest.approx(result["formula_saved_mib"], rel=0.05)


def test_table_covers_every_model_precision_and_setting():
    rows, text = training_memory.table(tokens_per_sample=1024, batches=[1, 2])
    assert len(rows) == len(training_memory.MODELS) * 3 * 2 * 2
    by_key = {(r["model"], r["precision"], r["checkpointing"], r["batch"]): r for r in rows}
    for model in {r["model"] for r in rows}:
        # quantization shrinks the weights; checkpointing and a smaller batch the activations
        weights = [by_key[(model, precision, True, 1)]["weights_gib"] for precision in ("bf16", "int8", "int4")]
        assert weights[0] > weights[1] > weights[2]
        assert by_key[(model, "bf16", True, 2)]["activations_gib"] < by_key[(model, "bf16", False, 2)]["activations_gib"]
        assert by_key[(model, "int4", True, 1)]["total_gib"] < by_key[(model, "int4", True, 2)]["total_gib"]
    seven_b = by_key[("Qwen2.5-VL-7B-Instruct", "bf16", True, 1)]
    assert 8.0e9 < seven_b["shapes"]["quantizable"] + seven_b["shapes"]["other"] < 8.5e9  # 8.29B parameters
    assert seven_b["shapes"]["scorer"] == 12_848_640  # README's count
    assert "| Qwen2.5-VL-72B-Instruct | int4 | on |" in text


def test_data_memory_reads_a_written_file_lazily(tmp_path):
    path = data_memory.write_dataset(str(tmp_path), rows=20, image_size=16)
    first = json.loads(Path(path).read_text().splitlines()[0])
    assert first["image"].endswith("000000.png") and first["conversations"][0]["value"].startswith("<image>")
    for mode in ("prepared", "streaming"):
        result = data_memory.measure(mode, path, batches=2, batch_size=4)
        assert result["rows"] == 20 and result["batch_pixel_values"][0] > 0
