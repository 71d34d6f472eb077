"""docs/architecture.md's one-screen example: one prompt through GuidedSuffixMCMC's engine without
Lightning prints the reply the method's predict_step returns for that prompt (tiny random policy)."""

import re
import runpy
import sys
from pathlib import Path

from seaflow.energies import LexiconReward
from seaflow.methods import GuidedSuffixMCMC
from tiny import run_method

DOC = Path(__file__).parent.parent / "docs" / "architecture.md"


def example() -> str:
    found = re.search(r"<!-- engine_example.py -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert found, "docs/architecture.md lost its engine_example.py block"
    return found.group(1)


def test_the_engine_example_prints_the_default_methods_reply(tiny_models, tiny_policy, tmp_path, monkeypatch, capsys):
    script = tmp_path / "engine_example.py"
    script.write_text(example())
    monkeypatch.setattr(sys, "argv", [str(script), str(tiny_models["policy"])])
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out.splitlines()
    method = GuidedSuffixMCMC(policy="tiny", reward=LexiconReward(lexicon="vader"), alpha=50.0, chains=4, steps=32,
                              cut_temperature=1.0, cut_floor=0.1, cut_top_k=50, max_new_tokens=24, seed=0)
    records, _ = run_method(method, tiny_policy, rows=[{"id": "demo-01", "prompt": "Describe your morning in two sentences.", "index": 0}])
    assert printed[0] == records[0]["response"]
    assert printed[1].startswith(f"reward {records[0]['reward']:.3f}")
