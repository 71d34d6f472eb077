"""Every shipped config parses (and its classes instantiate) through the real CLI parser."""

from pathlib import Path

import pytest
import yaml

from seaflow.cli import main

ROOT = Path(__file__).parent.parent
def _is_predict_config(path: Path) -> bool:
    """Configs of `seaflow predict` (the reward-head `fit` and `calibrate` configs have their own tests)."""
    config = yaml.safe_load(path.read_text()) or {}
    return "model" in config and "output" in config


CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if _is_predict_config(p))


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["inference_mode"] is False


@pytest.mark.parametrize("name", ["demo.yaml", "sea.yaml", "keywords.yaml"])
def test_every_key_of_the_main_configs_is_commented(name):
    """The demo, SEA and keyword configs document each key on its own line (litgpt style)."""
    lines = (ROOT / "configs" / name).read_text().splitlines()
    keyed = [l for l in lines if l.strip() and not l.strip().startswith("#") and ":" in l and not l.strip().startswith("-")]
    uncommented = [l for l in keyed if "#" not in l and not l.rstrip().endswith(":")]
    assert not uncommented, uncommented
