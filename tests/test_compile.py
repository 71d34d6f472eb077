"""EnergyFunction(compile=...): the same energies and gradients as eager, one compile for several shapes."""

import pytest
import torch

from seaflow.energies import LexiconReward, ReferenceLogLikelihood, RewardModel
from seaflow.energies.base import ResponseBatch
from seaflow.refine import EnergyFunction
from seaflow.relaxations import OneHot, StraightThrough

PROMPTS = ("describe the city", "tell me about the weather today and the night at the train", "why")


def _energy_fns(policy, tiny_models, lengths, width, backend, reward_kind):
    prompts = list(PROMPTS[: len(lengths)])
    batch = ResponseBatch([policy.tokenizer.encode(p) for p in prompts], prompts, torch.tensor(lengths), width)
    reference = ReferenceLogLikelihood()
    reference.setup(policy)
    if reward_kind == "model":
        reward = RewardModel(model=str(tiny_models["reward"]))
    else:
        reward = LexiconReward()
    reward.setup(policy)
    relaxation = StraightThrough() if reward_kind == "model" else OneHot()
    make = lambda compile: EnergyFunction(batch, relaxation, reward, reference, alpha=2.0, reference_weight=1.0, compile=compile)  # noqa: E731
    return make(False), make(backend)


def _check(policy, tiny_models, backend, reward_kind):
    compiled_fns = []
    for lengths, width in (([5, 3], 5), ([4, 4, 2], 4)):  # two batch sizes and response lengths
        eager, compiled = _energy_fns(policy, tiny_models, lengths, width, backend, reward_kind)
        y = torch.randn(len(lengths), width, policy.vocab_size, generator=torch.Generator().manual_seed(width)) * 3
        expected, got = eager(y), compiled(y)
        torch.testing.assert_close(got.energy, expected.energy, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-6)
        for name in expected.parts:
            torch.testing.assert_close(got.parts[name], expected.parts[name], rtol=1e-5, atol=1e-5)
        compiled_fns.append(compiled)
    return compiled_fns


@pytest.mark.parametrize("reward_kind", ["lexicon", "model"])
def test_compiled_equals_eager(tiny_policy, tiny_models, reward_kind):
    torch._dynamo.reset()
    first, second = _check(tiny_policy, tiny_models, "aot_eager", reward_kind)
    assert first.compile_seconds > 0  # the first batch compiled
    assert first.evaluations == 1


@pytest.mark.slow
def test_inductor_equals_eager(tiny_policy, tiny_models):
    torch._dynamo.reset()
    _check(tiny_policy, tiny_models, True, "lexicon")


@pytest.mark.parametrize("reward_kind", ["lexicon", "model"])
def test_compiled_energy_is_one_graph(tiny_policy, tiny_models, reward_kind):
    """No graph break in the compiled energy: a host read (``.item()``, ``bool(tensor)``) on the
    energy path splits the compiled function and gives back most of what compiling buys."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    _check(tiny_policy, tiny_models, "aot_eager", reward_kind)
    assert dict(counters["graph_break"]) == {}
