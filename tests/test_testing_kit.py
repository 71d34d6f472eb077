"""seaflow.testing: the shipped contract suites pass for the built-in components and fail for broken ones."""

import pytest
import torch

from seaflow.energies import LexiconReward, RewardModel
from seaflow.energies.base import Reward
from seaflow.relaxations import GumbelSoftmax, OneHot, Softmax, StraightThrough
from seaflow.relaxations.base import Relaxation
from seaflow.testing import RelaxationContract, RewardContract


class TestStraightThrough(RelaxationContract):
    relaxation_class = StraightThrough


class TestSoftmax(RelaxationContract):
    relaxation_class = Softmax
    relaxation_kwargs = {"temperature": 0.7}


class TestGumbelHard(RelaxationContract):
    relaxation_class = GumbelSoftmax


class TestGumbelSoft(RelaxationContract):
    relaxation_class = GumbelSoftmax
    relaxation_kwargs = {"hard": False, "temperature": 0.5}


class TestOneHot(RelaxationContract):
    relaxation_class = OneHot


class TestLexiconReward(RewardContract):
    reward_class = LexiconReward
    reward_kwargs = {"lexicon": "vader"}

    def ordered_pairs(self):
        return [("describe the day", "a wonderful happy day", "a terrible sad day")]


class TestRewardModel(RewardContract):
    reward_class = RewardModel

    @property
    def reward_kwargs(self):
        from seaflow.testing.tiny import tiny_model_paths

        return {"model": str(tiny_model_paths()["reward"])}


# -- the suites catch broken components -------------------------------------------------------


class _LeakyMask(Softmax):
    """Ignores ``allowed``: disallowed tokens keep their mass."""

    def forward(self, logits, generator=None, allowed=None):
        return torch.softmax(logits / self.temperature, dim=-1)


class _LengthBlindReward(Reward):
    """Counts a token id over every position, also past each row's length, and reads ids and
    distributions differently (one-hot is not ids)."""

    def value(self, prepared, response):
        if response.dim() == 2:
            return (response == 10).float().sum(-1)
        return response[..., 10].sum(-1) + 0.5


def _outcomes(tmp_path, source: str, name: str) -> dict[str, str]:
    """Run a test module (``source``) with pytest in-process; ``test name -> outcome``."""
    module = tmp_path / f"test_user_{name}.py"
    module.write_text(source)
    results = {}

    class Collector:
        def pytest_runtest_logreport(self, report):
            if report.when == "call" or report.outcome != "passed":
                results.setdefault(report.nodeid.split("::")[-1], report.outcome)

    pytest.main(["-q", "-p", "no:cacheprovider", str(module)], plugins=[Collector()])
    return results


def test_the_relaxation_suite_fails_a_relaxation_that_ignores_allowed(tmp_path):
    outcomes = _outcomes(tmp_path, (
        "from seaflow.testing import RelaxationContract\n"
        "from test_testing_kit import _LeakyMask\n"
        "class TestLeaky(RelaxationContract):\n"
        "    relaxation_class = _LeakyMask\n"
    ), "relaxation")
    assert outcomes["test_disallowed_tokens_get_zero_mass_and_zero_gradient"] == "failed"
    assert outcomes["test_allowed_broadcasts_and_empty_positions_are_refused"] == "failed"
    assert outcomes["test_rows_are_distributions"] == "passed"


def test_the_reward_suite_fails_a_reward_that_reads_past_the_length(tmp_path):
    outcomes = _outcomes(tmp_path, (
        "from seaflow.testing import RewardContract\n"
        "from test_testing_kit import _LengthBlindReward\n"
        "class TestBlind(RewardContract):\n"
        "    reward_class = _LengthBlindReward\n"
    ), "reward")
    assert outcomes["test_one_hot_equals_ids"] == "failed"
    assert outcomes["test_inactive_positions_change_nothing"] == "failed"
    assert outcomes["test_gradient_is_finite_and_zero_on_inactive_positions"] == "failed"
    assert outcomes["test_one_value_per_row"] == "passed"


def test_the_kit_ships_in_the_package():
    import seaflow.testing as kit
    from seaflow.testing import samplers, tiny

    assert {"SamplerContract", "RelaxationContract", "RewardContract"} <= set(kit.__all__)
    assert samplers.SamplerContract is kit.SamplerContract and callable(tiny.build_models)
    assert issubclass(_LeakyMask, Relaxation)
