"""Settled chains leave the batch (refine's patience): the remaining chains move exactly as without it."""

import pytest
import torch

from seaflow import SEA
from seaflow.energies import LexiconReward, ReferenceLogLikelihood
from seaflow.energies.base import ResponseBatch
from seaflow.refine import EnergyFunction, Patience, refine
from seaflow.relaxations import OneHot
from seaflow.rng import RowGenerators
from seaflow.samplers import DiscreteLangevin, MultipleTryDiscreteLangevin

PROMPTS = ("describe the city", "tell me about the weather today and the night at the train")


def _setup(policy, chains=4, width=6):
    prompts = [p for p in PROMPTS for _ in range(chains)]
    batch = ResponseBatch([policy.tokenizer.encode(p) for p in prompts], prompts, torch.tensor([width, 4, 6, 5] * 2)[: len(prompts)], width)
    reference = ReferenceLogLikelihood()
    reference.setup(policy)
    reward = LexiconReward()
    reward.setup(policy)
    tokens = torch.randint(4, policy.vocab_size, (len(prompts), width), generator=torch.Generator().manual_seed(0))
    allowed = torch.zeros(len(prompts), width, policy.vocab_size, dtype=torch.bool)
    allowed[..., 4:12] = True
    allowed.scatter_(-1, tokens.unsqueeze(-1), True)
    y = torch.nn.functional.one_hot(tokens, policy.vocab_size).float() * 10

    def run(sampler, patience, steps=10, group_size=None):
        generator = RowGenerators([torch.Generator().manual_seed(100 + i) for i in range(len(prompts))])
        energy_fn = EnergyFunction(batch, OneHot(), reward, reference, alpha=20.0, reference_weight=1.0, allowed=allowed)
        out, trace = refine(y, energy_fn, sampler, steps, generator, patience=patience, group_size=group_size)
        return out, trace.stacked(), energy_fn

    return run


@pytest.mark.parametrize("group_size", [None, 4], ids=["any-chain", "leader-stays"])
@pytest.mark.parametrize("sampler", [DiscreteLangevin(step_size=0.5), MultipleTryDiscreteLangevin(tries=2, step_size=0.5)],
                         ids=["dmala", "multiple-try"])
def test_remaining_chains_move_as_without_patience(tiny_policy, sampler, group_size):
    run = _setup(tiny_policy)
    y_plain, plain, energy_plain = run(sampler, None)
    y_early, early, energy_early = run(sampler, 2, group_size=group_size)
    assert "settled" not in plain
    settled = early.pop("settled")
    steps, rows = settled.shape
    left = [int(settled[:, r].nonzero()[0]) if bool(settled[:, r].any()) else None for r in range(rows)]
    assert any(s is not None for s in left), "no chain settled: the test needs a smaller patience"
    for r, s in enumerate(left):
        end = steps if s is None else s
        for name, values in plain.items():  # the same trace while the chain runs
            torch.testing.assert_close(early[name][:end, r], values[:end, r], msg=f"{name}, row {r}")
        if s is None:
            assert torch.equal(y_early[r].argmax(-1), y_plain[r].argmax(-1))
        else:  # it left after step s - 1 and stays at the point that step started from
            assert s >= 1 and torch.all(settled[s:, r] == 1)
            torch.testing.assert_close(early["energy"][s:, r], plain["energy"][s - 1, r].expand(steps - s))
            with torch.no_grad():
                energy, _, _ = energy_early.parts(y_early[r : r + 1].expand(rows, -1, -1).clone())
            torch.testing.assert_close(energy[r], plain["energy"][s - 1, r], rtol=1e-5, atol=1e-4)
            for name in ("accept", "flips"):
                assert torch.all(early[name][s:, r] == 0)
    # best-state tracking stays per batch row; settled chains visited a prefix of the plain run
    assert energy_early.best_energy.shape == (rows,)
    assert torch.all(energy_early.best_energy >= energy_plain.best_energy - 1e-5)
    assert energy_early.rows is None  # the full batch again after the run


def test_every_chain_settling_keeps_one_trace_entry_per_step(tiny_policy):
    run = _setup(tiny_policy)
    y, trace, _ = run(DiscreteLangevin(step_size=0.01), 1, steps=6)  # tiny steps: nothing is ever proposed
    assert trace["settled"].shape == (6, 8) and bool(trace["settled"][-1].all())
    assert trace["energy"].shape == (6, 8)


def test_sea_patience(tiny_policy):
    batch = {"id": ["p0", "p1"], "index": [0, 1], "prompt": list(PROMPTS),
             "prompt_ids": [tiny_policy.tokenizer.encode(p) for p in PROMPTS]}

    def records(patience):
        sea = SEA(reward=LexiconReward(), sampler=DiscreteLangevin(step_size=0.5), relaxation=OneHot(), chains=3, steps=6,
                  max_new_tokens=6, alpha=20.0, decode="best", init_logits="one_hot", init_scale=10.0, restrict_top_k=4,
                  patience=patience)
        sea.attach(tiny_policy)
        return sea.predict_step(batch)

    plain, early = records(None), records(1)
    for a, b in zip(plain, early):
        assert len(b["trace"]["settled"]) == 6 and "settled" not in a["trace"]
        assert b["energy_evaluations"] <= a["energy_evaluations"]  # calls (none once every chain settled), each on the remaining rows
    with pytest.raises(ValueError, match="model.init_args.patience"):
        SEA(reward=LexiconReward(), patience=0)


def test_best_reward_is_the_reward_at_the_best_state(tiny_policy):
    run = _setup(tiny_policy)
    _, _, energy_fn = run(DiscreteLangevin(step_size=0.5), 2, group_size=4)
    tokens = energy_fn.best_tokens
    with torch.no_grad():
        energy, parts, _ = energy_fn.parts(torch.nn.functional.one_hot(tokens, tiny_policy.vocab_size).float() * 10)
    torch.testing.assert_close(energy, energy_fn.best_energy, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(parts["reward"], energy_fn.best_reward, rtol=1e-5, atol=1e-5)


def test_a_groups_leader_never_leaves():
    watch = Patience(rows=6, patience=1, device="cpu", group_size=3)
    rows = torch.arange(6)
    scores = torch.tensor([0.1, 0.5, 0.5, float("nan"), -1.0, -2.0])
    watch.update(rows, torch.zeros(6), None, scores)  # first step: every energy improves on inf
    settled = watch.update(rows, torch.zeros(6), None, scores)  # no improvement: all stale for 1 step
    # leaders: row 1 (ties go to the first, as SEA's selection) and row 4 (NaN never leads)
    assert settled.tolist() == [True, False, True, True, False, True]
    # a chain that left keeps its score: here row 1 leads while only rows 0 and 2 still run
    settled = watch.update(torch.tensor([0, 2]), torch.zeros(2), None, scores)
    assert settled.tolist() == [True, True]
    # without scores the lowest energy seen leads
    watch = Patience(rows=4, patience=1, device="cpu", group_size=2)
    watch.update(torch.arange(4), torch.tensor([3.0, 1.0, 0.0, 2.0]), None)
    assert watch.update(torch.arange(4), torch.full((4,), 9.0), None).tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="group_size"):
        Patience(rows=6, patience=1, device="cpu", group_size=4)
