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


def test_the_default_methods_steps_are_numbered_in_the_code_as_in_its_docstrings():
    """predict_step and the chain loop carry "# 1. ..." comments in the order their module
    docstrings number the steps (diffusers' step() is the model)."""
    import inspect

    from seaflow import chains
    from seaflow.methods import suffix_mcmc

    for module, function in ((suffix_mcmc, suffix_mcmc.GuidedSuffixMCMC.predict_step), (chains, chains.run_chains)):
        named = re.findall(r"^(\d)\. \*\*(.+?)\*\*", module.__doc__, re.M)
        commented = re.findall(r"# (\d)\. ([^:]+):", inspect.getsource(inspect.unwrap(function)))
        assert len(named) >= 3 and [n for n, _ in commented] == [n for n, _ in named]
        assert all(comment.startswith(name) for (_, name), (_, comment) in zip(named, commented)), (named, commented)
