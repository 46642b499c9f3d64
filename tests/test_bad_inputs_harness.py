"""benchmarks/bad_inputs.py runs and classifies: a few groups of its campaign, end to end."""

import json
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def test_the_campaign_classifies_every_case_and_finds_no_crash(tmp_path, capsys):
    module = load_script("benchmarks_bad_inputs", ROOT / "benchmarks" / "bad_inputs.py")
    assert module.main(["--groups", "selector,labels,mm_token_type_ids", "--out", str(tmp_path / "out.json")]) == 0
    results = json.loads((tmp_path / "out.json").read_text())["results"]
    assert len(results) == 46
    assert {r["outcome"] for r in results} <= {"clear error", "handled valid"}
    assert {r["outcome"] for r in results if not r["valid"]} == {"clear error"}
    assert "clear error" in capsys.readouterr().out
