import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from tiny import build_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Paths of tiny random models saved to disk (policy, reward, other_vocab_reward)."""
    return build_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_policy(tiny_models):
    from seaflow.models import load_causal_lm

    return load_causal_lm(str(tiny_models["policy"]))


@pytest.fixture(scope="session")
def embedded_policy():
    from seaflow.models import EMBEDDED_DEFAULT, load_causal_lm

    return load_causal_lm(EMBEDDED_DEFAULT)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
