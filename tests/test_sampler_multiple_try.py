"""MultipleTryDiscreteLangevin: exact multiple-try Metropolis on discrete targets, greedy selection, inside SEA.

Like DiscreteLangevin (tests/test_sampler_discrete_langevin.py), the sampler moves between
categorical states, so the Gaussian contract does not apply; its discrete counterparts are
checked on the same enumerated Potts targets: the final states of 4000 independent chains
pass a chi-square test against the exact distribution, and the test fails for a multiple-try
test that leaves out the reference points.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from seaflow.testing.samplers import CountingEnergy, one_thread, run_sampler  # noqa: F401  (one_thread: autouse)
import test_sampler_discrete_langevin as dl  # module import: importing its tests would collect them twice
from tiny import run_config_on_tiny

from seaflow import SEA
from seaflow.components import available
from seaflow.energies import LexiconReward
from seaflow.relaxations import OneHot
from seaflow.rng import RowGenerators
from seaflow.samplers import FunctionEnergy, MultipleTryDiscreteLangevin, Sampler

ROOT = Path(__file__).parent.parent


class Potts(dl.Potts):
    """The Potts target with forward-only candidate energies (what SEA's EnergyFunction.energies gives)."""

    candidate_count = 0

    def energies(self, candidates: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        chains, k = candidates.shape[:2]
        self.candidate_count += chains * k
        p = torch.nn.functional.one_hot(candidates.reshape(chains * k, -1), self.categories).to(dl.STATS)
        return self.one_hot_energy(p)[0].reshape(chains, k).float()


class WithoutReferencePoints(MultipleTryDiscreteLangevin):
    """A broken multiple-try test: the reference points x*_1..x*_{K-1} are left out of the denominator."""

    def step(self, *args, **kwargs):
        self._draw_calls = 0
        return super().step(*args, **kwargs)

    def draws(self, *args):
        drawn, log_q = super().draws(*args)
        self._draw_calls += 1
        return drawn, (log_q if self._draw_calls == 1 else torch.full_like(log_q, float("inf")))


@pytest.mark.parametrize(
    "target, step_size, temperature, tries",
    [
        (Potts(seed=0), 1.0, 1.0, 2),
        (Potts(seed=1, coupling=1.5), 2.0, 1.0, 4),
        (Potts(seed=2, field=2.0), 2.0, 0.5, 3),
    ],
    ids=["potts-0-K2", "potts-strong-coupling-K4", "potts-cold-K3"],
)
def test_samples_the_exact_distribution(target, step_size, temperature, tries):
    sampler = MultipleTryDiscreteLangevin(tries=tries, step_size=step_size, noise_scale=temperature ** 0.5)
    x, history, _ = dl.sample(sampler, target)
    dl.assert_samples(target, x, temperature)
    rate = float(history["accept"][dl.STEPS // 2:].mean())
    assert 0.2 < rate < 1.0, f"acceptance rate {rate:.3f}"


BIASED = Potts(seed=3, coupling=2.0)  # dl.BIASED with candidate energies


def test_exact_where_the_unadjusted_proposal_is_biased_and_a_missing_reference_set_is_caught():
    exact, history, _ = dl.sample(MultipleTryDiscreteLangevin(tries=4, step_size=4.0), BIASED, steps=60)
    dl.assert_samples(BIASED, exact)
    broken, _, _ = dl.sample(WithoutReferencePoints(tries=4, step_size=4.0), BIASED, steps=60)
    with pytest.raises(AssertionError, match="off target"):
        dl.assert_samples(BIASED, broken)


def test_more_tries_accept_more_often():
    """Multiple tries raise the acceptance of large moves (the point of the method)."""
    rates = []
    for tries in (1, 8):
        _, history, _ = dl.sample(MultipleTryDiscreteLangevin(tries=tries, step_size=4.0), BIASED, steps=20, chains=2000)
        rates.append(float(history["accept"].mean()))
    assert rates[1] > rates[0] + 0.05, rates


def test_allowed_mask_is_respected():
    allowed = torch.ones(3, 4, dtype=torch.bool)
    allowed[0, 1:3] = False
    allowed[2, 3] = False
    target = Potts(seed=4, allowed=allowed)
    x, _, _ = dl.sample(MultipleTryDiscreteLangevin(tries=3, step_size=1.0), target)
    assert bool(allowed[torch.arange(3), x.argmax(-1)].all())
    dl.assert_samples(target, x)


@pytest.mark.parametrize("proposal_temperature", [None, 1.0], ids=["ranked-edits", "stochastic"])
@pytest.mark.parametrize("noise_scale, selection", [(0.0, "metropolis"), (1.0, "greedy")])
def test_greedy_selection_never_raises_the_energy(proposal_temperature, noise_scale, selection):
    target = Potts(seed=5, coupling=1.5)
    sampler = MultipleTryDiscreteLangevin(tries=4, selection=selection, step_size=0.5, noise_scale=noise_scale,
                                          proposal_temperature=proposal_temperature)
    start = torch.nn.functional.one_hot(torch.randint(0, 4, (64, 3), generator=torch.Generator().manual_seed(0)), 4).float()
    x, history, _ = run_sampler(sampler, target, start, 20)
    energies = torch.cat([history["energy"], target.energy_fn(x)[0].unsqueeze(0)])
    assert torch.all(energies[1:] <= energies[:-1] + 1e-6), "an accepted move raised the energy"
    assert float(energies[-1].mean()) < float(energies[0].mean())
    if proposal_temperature is not None or noise_scale > 0:  # random candidates find this small target's minimum
        minimum = float(target.energy_fn(target.start(1, target.states()[target.exact().argmax()]))[0])
        assert float((target.energy_fn(x)[0] <= minimum + 1e-5).float().mean()) > 0.5


def test_ranked_edits_are_the_lowest_first_order_changes():
    grad = torch.tensor([[[0.0, -1.0, 2.0], [0.0, -3.0, -0.5]]])  # best edits: (1, 1), (0, 1), (1, 2)
    tokens = torch.tensor([[0, 0]])
    edits = MultipleTryDiscreteLangevin.ranked_edits(grad, tokens, torch.ones(1), None, 3)
    assert edits.tolist() == [[[0, 1], [1, 0], [0, 2]]]
    allowed = torch.tensor([True, True, False])
    assert MultipleTryDiscreteLangevin.ranked_edits(grad, tokens, torch.ones(1), allowed, 2).tolist() == [[[0, 1], [1, 0]]]
    assert MultipleTryDiscreteLangevin.ranked_edits(grad, tokens, torch.zeros(1), None, 2).tolist() == [[[0, 0], [0, 0]]]


@pytest.mark.parametrize("selection", ["metropolis", "greedy"])
def test_diagnostics_and_evaluation_counts(selection):
    target = Potts(seed=2)
    energy_fn = CountingEnergy(target)
    energy_fn.energies = target.energies
    sampler = MultipleTryDiscreteLangevin(tries=3, selection=selection, step_size=1.0)
    x = target.start(6)
    state = sampler.init_state(x, 10)
    generator = torch.Generator().manual_seed(0)
    total, before = 0, target.candidate_count
    for step in range(10):
        expected_energy, expected_grad = target.energy_fn(x)
        out = sampler.step(x, energy_fn, state, generator)
        assert set(out.diagnostics) == {"flips", "accept", "accept_prob", "candidates"}
        for name, value in out.trace().items():
            assert value.shape == (6,), name
        torch.testing.assert_close(out.start.energy, expected_energy)
        torch.testing.assert_close(out.start.grad, expected_grad)
        assert set(out.diagnostics["accept"].tolist()) <= {0.0, 1.0}
        if selection == "metropolis":
            assert out.evaluations == (2 if step == 0 else 1)
            assert out.diagnostics["candidates"].tolist() == [5.0] * 6
        else:
            assert out.diagnostics["candidates"].tolist() == [3.0] * 6
        total += out.evaluations
        x = out.sample.detach()
        state.iteration += 1
    assert total == energy_fn.calls
    per_step = 5 if selection == "metropolis" else 3
    assert target.candidate_count - before == 10 * 6 * per_step


def test_same_seed_same_trajectory_and_one_stream_per_chain():
    target = Potts(seed=1)
    sampler = MultipleTryDiscreteLangevin(tries=3, step_size=1.0)
    a, history_a, _ = dl.sample(sampler, target, steps=15, chains=32, seed=7)
    b, history_b, _ = dl.sample(sampler, target, steps=15, chains=32, seed=7)
    c, _, _ = dl.sample(sampler, target, steps=15, chains=32, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for name in history_a:
        assert torch.equal(history_a[name], history_b[name]), name

    def run(seeds):
        generator = RowGenerators([torch.Generator().manual_seed(s) for s in seeds])
        x = target.start(len(seeds))
        state = sampler.init_state(x, 10)
        visited = []
        for _ in range(10):
            x = sampler.step(x, target, state, generator).sample.detach()
            state.iteration += 1
            visited.append(x.argmax(-1))
        return torch.stack(visited, 1)

    together, alone = run([11, 12, 13]), run([12])
    assert torch.equal(together[1], alone[0])


def test_step_scale_zero_never_moves():
    target = Potts(seed=0)
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (4, 3), generator=torch.Generator().manual_seed(2)), 4).float()
    for selection in ("metropolis", "greedy"):
        sampler = MultipleTryDiscreteLangevin(tries=4, selection=selection, step_size=3.0)
        state = sampler.init_state(x, 5)
        state.step_scale = torch.tensor([0.0, 1.0, 1.0, 1.0])
        out = sampler.step(x, target, state, torch.Generator().manual_seed(0))
        assert torch.equal(out.sample[0], x[0])


@pytest.mark.parametrize("argument, value", [("tries", 0), ("tries", 2.5), ("selection", "best"), ("step_size", 0.0), ("noise_scale", -1.0)])
def test_rejects_bad_values(argument, value):
    with pytest.raises(ValueError, match=argument) as error:
        MultipleTryDiscreteLangevin(**{argument: value})
    assert repr(value) in str(error.value) or str(value) in str(error.value)


def test_needs_candidate_energies_and_a_positive_proposal_temperature():
    target = Potts(seed=0)
    x = target.start(2)
    sampler = MultipleTryDiscreteLangevin(tries=2)
    with pytest.raises(ValueError, match="energies"):
        sampler.step(x, FunctionEnergy(target.energy_fn), sampler.init_state(x, 1))
    sampler.step(x, FunctionEnergy(target.energy_fn, energies=target.energies), sampler.init_state(x, 1))
    cold = MultipleTryDiscreteLangevin(tries=2, proposal_temperature=0.0)
    with pytest.raises(ValueError, match="proposal_temperature"):
        cold.step(x, target, cold.init_state(x, 1))


def test_registered():
    assert "MultipleTryDiscreteLangevin" in available(Sampler, "step")


# -- inside SEA ----------------------------------------------------------------------------------


@pytest.mark.parametrize("selection", ["metropolis", "greedy"])
def test_sea_with_multiple_tries(tiny_policy, selection):
    alpha = 20.0
    sea = SEA(reward=LexiconReward(), sampler=MultipleTryDiscreteLangevin(tries=3, selection=selection, step_size=0.5),
              relaxation=OneHot(), chains=2, steps=3, max_new_tokens=6, alpha=alpha, decode="best",
              init_logits="one_hot", init_scale=10.0, restrict_top_k=5)
    sea.attach(tiny_policy)
    records = sea.predict_step(dl._batch(tiny_policy))
    for record in records:
        assert len(record["trace"]["candidates"]) == 3
        n = record["chain_response_tokens"][0]
        final = -record["chain_ref_logprob_per_token"][0] * n - alpha * record["chain_rewards"][0]
        initial = -record["initial_ref_logprob_per_token"] * n - alpha * record["chain_initial_rewards"][0]
        assert final <= initial + 1e-4  # decode: best never returns worse than the start


@pytest.mark.parametrize("task", ["sentiment", "negative"])
def test_quality_config_runs_on_tiny_models(tmp_path, tiny_models, task):
    config = yaml.safe_load((ROOT / "configs" / "quality" / task / "multiple_try.yaml").read_text())
    assert config["model"]["init_args"]["sampler"]["class_path"] == "MultipleTryDiscreteLangevin"
    records = run_config_on_tiny(config, tmp_path, tiny_models, steps=2, chains=2, max_new_tokens=6, restrict_top_k=5)
    assert [r["id"] for r in records] == ["p0", "p1"]
    assert all(len(r["trace"]["candidates"]) == 2 for r in records)
