"""DiscreteLangevin (DLP / DMALA) and the OneHot relaxation.

The Gaussian checks of ``seaflow.testing.SamplerContract`` do not apply: this sampler
moves between categorical states (the argmax of the last dimension), so a Gaussian has no
meaning for it. The same properties are checked here on discrete targets instead: small
Potts models (pairwise energies over 3 positions x 4 categories) whose distribution is
enumerated exactly. Many independent chains start from one state; their final states must
match the exact distribution by a chi-square test at level ``P_VALUE``, and the same test
must fail for the unadjusted proposal and for a Metropolis test without the proposal
ratio, on a target where both are visibly biased. The generic checks that do carry over
(reproducibility, one random stream per chain, evaluation counts, per-chain
``step_scale``, schedules, bad values, registration) are checked on the same targets, and
the sampler runs inside SEA on tiny models, through the CLI and the shipped config.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import yaml
from seaflow.testing.samplers import P_VALUE, CountingEnergy, chi2_quantile, one_thread, run_sampler  # noqa: F401  (one_thread: autouse)
from tiny import run_config_on_tiny

from seaflow import SEA
from seaflow.components import available
from seaflow.energies import LexiconReward, ReferenceLogLikelihood
from seaflow.energies.base import ResponseBatch
from seaflow.refine import EnergyFunction
from seaflow.relaxations import OneHot, Relaxation, StraightThrough
from seaflow.rng import RowGenerators
from seaflow.samplers import DiscreteLangevin, Evaluation, FunctionEnergy, Sampler
from seaflow.schedules import Linear

ROOT = Path(__file__).parent.parent
STATS = torch.float64


# -- discrete targets ---------------------------------------------------------------------


class Potts:
    """``E(x) = -sum_i h_i[x_i] - sum_{i<j} J_ij[x_i, x_j]`` over ``positions`` categorical variables.

    As an energy function it takes states ``(chains, positions, categories)``, reads their
    argmax and returns the energy and its gradient with respect to the one-hot encoding
    (what the OneHot relaxation hands a sampler inside SEA). ``allowed`` (optional, boolean
    ``(positions, categories)``) is exposed like SEA's EnergyFunction exposes its top-k mask.
    """

    def __init__(self, positions=3, categories=4, field=1.0, coupling=1.0, seed=0, allowed=None):
        generator = torch.Generator().manual_seed(seed)
        self.positions, self.categories = positions, categories
        self.h = torch.randn(positions, categories, generator=generator, dtype=STATS) * field
        pairs = torch.randn(positions, positions, categories, categories, generator=generator, dtype=STATS) * coupling
        upper = torch.triu(torch.ones(positions, positions, dtype=STATS), diagonal=1)[..., None, None]
        self.J = pairs * upper + (pairs * upper).transpose(0, 1).transpose(2, 3)  # J_ji = J_ij^T, J_ii = 0
        self.allowed = allowed

    def one_hot_energy(self, p: torch.Tensor):
        local = torch.einsum("ijab,cjb->cia", self.J, p)  # sum_j J_ij[a, x_j]
        energy = -(p * self.h).sum((1, 2)) - 0.5 * (p * local).sum((1, 2))
        return energy, -self.h - local

    def energy_fn(self, x: torch.Tensor):
        """``(energy, grad)`` of the argmax tokens of ``x``."""
        p = torch.nn.functional.one_hot(x.argmax(-1), self.categories).to(STATS)
        energy, grad = self.one_hot_energy(p)
        return energy.to(x.dtype), grad.to(x.dtype)

    def __call__(self, x: torch.Tensor) -> Evaluation:
        return Evaluation(x, *self.energy_fn(x))

    def states(self) -> torch.Tensor:
        """Every state, ``(categories**positions, positions)``, in the order of :meth:`index`."""
        combos = list(itertools.product(range(self.categories), repeat=self.positions))
        return torch.tensor([c[::-1] for c in combos])  # position 0 varies fastest

    def index(self, tokens: torch.Tensor) -> torch.Tensor:
        powers = self.categories ** torch.arange(self.positions)
        return (tokens * powers).sum(-1)

    def exact(self, temperature: float = 1.0) -> torch.Tensor:
        """The target probabilities of :meth:`states` (zero for states using disallowed tokens)."""
        tokens = self.states()
        p = torch.nn.functional.one_hot(tokens, self.categories).to(STATS)
        log_weights = -self.one_hot_energy(p)[0] / temperature
        if self.allowed is not None:
            ok = self.allowed[torch.arange(self.positions), tokens].all(-1)
            log_weights = log_weights.masked_fill(~ok, float("-inf"))
        return torch.softmax(log_weights, 0)

    def start(self, chains: int, tokens=None) -> torch.Tensor:
        """Every chain at the same state (default: all zeros), as one-hot logits."""
        tokens = torch.zeros(self.positions, dtype=torch.long) if tokens is None else torch.as_tensor(tokens)
        x = torch.nn.functional.one_hot(tokens, self.categories).float() * 10.0
        return x.expand(chains, -1, -1).clone()


def chi_square(target: Potts, x: torch.Tensor, temperature: float = 1.0) -> tuple[float, float]:
    """``(statistic, limit at level P_VALUE)`` for the states of ``x`` against the exact distribution.

    States with an expected count below 5 are pooled into one bin (dropped if the pool is still below 5).
    """
    probs = target.exact(temperature)
    n = x.shape[0]
    counts = torch.bincount(target.index(x.argmax(-1)), minlength=probs.numel()).to(STATS)
    expected = probs * n
    assert counts[expected == 0].sum() == 0, "a chain visited a state of probability 0"
    big = expected >= 5
    observed_bins, expected_bins = [counts[big]], [expected[big]]
    if expected[~big].sum() >= 5:
        observed_bins.append(counts[~big].sum().reshape(1))
        expected_bins.append(expected[~big].sum().reshape(1))
    observed, expected = torch.cat(observed_bins), torch.cat(expected_bins)
    statistic = float(((observed - expected) ** 2 / expected).sum())
    return statistic, chi2_quantile(1 - P_VALUE, observed.numel() - 1)


def assert_samples(target: Potts, x: torch.Tensor, temperature: float = 1.0) -> None:
    statistic, limit = chi_square(target, x, temperature)
    assert statistic <= limit, f"state frequencies off target: chi2 {statistic:.1f} > {limit:.1f} (level {P_VALUE})"


CHAINS, STEPS = 4000, 40


def sample(sampler: Sampler, target: Potts, steps: int = STEPS, chains: int = CHAINS, seed: int = 0):
    return run_sampler(sampler, target, target.start(chains), steps, seed)


class WithoutProposalRatio(DiscreteLangevin):
    """A broken DMALA: the Metropolis test sees the energy change but not q(x | x') / q(x' | x)."""

    def propose(self, *args):
        proposed, _ = super().propose(*args)
        return proposed, torch.zeros(proposed.shape[0])

    def log_q(self, grad, *args):
        return torch.zeros(grad.shape[0], dtype=grad.dtype)


# -- sampling the right distribution --------------------------------------------------------


@pytest.mark.parametrize(
    "target, step_size, temperature",
    [
        (Potts(seed=0), 1.0, 1.0),
        (Potts(seed=1, coupling=1.5), 2.0, 1.0),
        (Potts(seed=2, field=2.0), 2.0, 0.5),  # a colder target and large moves
    ],
    ids=["potts-0", "potts-strong-coupling", "potts-cold"],
)
def test_samples_the_exact_distribution(target, step_size, temperature):
    sampler = DiscreteLangevin(step_size=step_size, noise_scale=temperature ** 0.5)
    x, history, _ = sample(sampler, target)
    assert_samples(target, x, temperature)
    rate = float(history["accept"][STEPS // 2:].mean())
    assert 0.2 < rate < 1.0, f"acceptance rate {rate:.3f}"


def exact_kernel(target: Potts, start: torch.Tensor, step_size: float, temperature: float) -> torch.Tensor:
    """DMALA's one-step transition probabilities from the state ``start`` to every state, by enumeration."""
    states = target.states()
    one_hot = torch.nn.functional.one_hot(states, target.categories).to(STATS)
    energies, grads = target.one_hot_energy(one_hot)

    def log_q(origin: int, tokens: torch.Tensor) -> torch.Tensor:  # log q(tokens | states[origin])
        g, current = grads[origin], states[origin]
        logits = -(g - g.gather(-1, current[:, None])) / (2 * temperature) - (torch.arange(target.categories) != current[:, None]) / step_size
        return torch.log_softmax(logits, -1).gather(-1, tokens.T).T.sum(-1)

    origin = int(target.index(start))
    forward = log_q(origin, states)
    backward = torch.stack([log_q(i, states[origin][None])[0] for i in range(len(states))])
    accept = torch.exp(torch.clamp(-(energies - energies[origin]) / temperature + backward - forward, max=0.0))
    kernel = forward.exp() * accept
    kernel[origin] = 0.0
    kernel[origin] = 1.0 - kernel.sum()
    return kernel


@pytest.mark.parametrize("sampler_class", [DiscreteLangevin, WithoutProposalRatio], ids=["dmala", "no-ratio"])
def test_one_step_matches_the_exact_transition_kernel(sampler_class):
    """From one state, the next states of many chains follow DMALA's kernel (chi-square)."""
    target = Potts(positions=2, categories=3, seed=6, coupling=1.5)
    start = torch.tensor([2, 0])
    kernel = exact_kernel(target, start, step_size=2.0, temperature=0.5)
    chains = 20000
    sampler = sampler_class(step_size=2.0, noise_scale=0.5 ** 0.5)
    x = target.start(chains, start)
    out = sampler.step(x, target, sampler.init_state(x, 1), torch.Generator().manual_seed(0))
    counts = torch.bincount(target.index(out.sample.argmax(-1)), minlength=kernel.numel()).to(STATS)
    expected = kernel * chains
    keep = expected >= 5
    statistic = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    limit = chi2_quantile(1 - P_VALUE, int(keep.sum()) - 1)
    assert counts[~keep].sum() <= 5 * (~keep).sum() + 10
    if sampler_class is DiscreteLangevin:
        assert statistic <= limit, f"one-step kernel off: chi2 {statistic:.1f} > {limit:.1f}"
    else:
        assert statistic > limit, f"a test without the proposal ratio went unnoticed: chi2 {statistic:.1f}"


# A target where the unadjusted proposal is far off: strong couplings that the per-position
# linearisation does not see, and a large step (every position moves at once).
BIASED = Potts(seed=3, coupling=2.0)


def test_metropolis_is_exact_where_the_unadjusted_proposal_is_biased():
    exact, history, _ = sample(DiscreteLangevin(step_size=4.0), BIASED, steps=60)
    assert_samples(BIASED, exact)
    assert float(history["accept"].mean()) > 0.05
    biased, _, _ = sample(DiscreteLangevin(step_size=4.0, metropolis=False), BIASED, steps=60)
    with pytest.raises(AssertionError, match="off target"):
        assert_samples(BIASED, biased)


def test_a_metropolis_test_without_the_proposal_ratio_is_caught():
    broken, _, _ = sample(WithoutProposalRatio(step_size=4.0), BIASED, steps=60)
    with pytest.raises(AssertionError, match="off target"):
        assert_samples(BIASED, broken)


def test_allowed_mask_is_respected_and_the_restricted_distribution_sampled():
    allowed = torch.ones(3, 4, dtype=torch.bool)
    allowed[0, 1:3] = False
    allowed[2, 3] = False
    target = Potts(seed=4, allowed=allowed)
    sampler = DiscreteLangevin(step_size=1.0)
    x, history, _ = sample(sampler, target)
    tokens = x.argmax(-1)
    assert bool(allowed[torch.arange(3), tokens].all()), "a chain moved to a disallowed token"
    assert_samples(target, x)  # also fails if any chain holds a state of probability 0


def test_unadjusted_with_a_small_step_is_close():
    """Without the test the bias shrinks with the step (like unadjusted Langevin)."""
    target = Potts(seed=0, coupling=0.3)
    x, _, _ = sample(DiscreteLangevin(step_size=0.3, metropolis=False), target, steps=80)
    assert_samples(target, x)


# -- optimisation mode -------------------------------------------------------------------------


@pytest.mark.parametrize("proposal_temperature", [None, 1.0], ids=["greedy", "stochastic"])
def test_optimisation_mode_never_raises_the_energy(proposal_temperature):
    target = Potts(seed=5, coupling=1.5)
    sampler = DiscreteLangevin(step_size=0.5, noise_scale=0.0, proposal_temperature=proposal_temperature)
    start = torch.nn.functional.one_hot(torch.randint(0, 4, (64, 3), generator=torch.Generator().manual_seed(0)), 4).float()
    x, history, _ = run_sampler(sampler, target, start, 30)
    energies = torch.cat([history["energy"], target.energy_fn(x)[0].unsqueeze(0)])
    assert torch.all(energies[1:] <= energies[:-1] + 1e-9), "an accepted move raised the energy"
    if proposal_temperature is not None:
        # random gradient-informed descent finds the minimum of this small target from most starts
        minimum = float(target.energy_fn(target.start(1, target.states()[target.exact().argmax()]))[0])
        assert float((target.energy_fn(x)[0] <= minimum + 1e-6).float().mean()) > 0.5
    assert float(energies[-1].mean()) < float(energies[0].mean())


def test_greedy_proposal_takes_the_lowest_gradient_token():
    grad = torch.tensor([[[0.0, -1.0, 2.0], [0.0, 1.0, 3.0]]])  # position 0 improves by token 1, position 1 cannot
    tokens = torch.tensor([[0, 0]])
    assert DiscreteLangevin.greedy(grad, tokens, torch.ones(1), None).tolist() == [[1, 0]]
    allowed = torch.tensor([True, False, True])
    assert DiscreteLangevin.greedy(grad, tokens, torch.ones(1), allowed).tolist() == [[0, 0]]
    assert DiscreteLangevin.greedy(grad, tokens, torch.zeros(1), None).tolist() == [[0, 0]]


# -- the generic contract, on a discrete target ---------------------------------------------------


def test_same_seed_same_trajectory():
    target = Potts(seed=0)
    sampler = DiscreteLangevin(step_size=1.0)
    a, history_a, _ = sample(sampler, target, steps=20, chains=32, seed=7)
    b, history_b, _ = sample(sampler, target, steps=20, chains=32, seed=7)
    c, _, _ = sample(sampler, target, steps=20, chains=32, seed=8)
    assert torch.equal(a, b)
    for name in history_a:
        assert torch.equal(history_a[name], history_b[name]), name
    assert not torch.equal(a, c)


def test_row_generators_give_each_chain_its_own_stream():
    """With one generator per chain, a chain's trajectory does not depend on the other chains."""
    target = Potts(seed=1)
    sampler = DiscreteLangevin(step_size=1.0)

    def run(seeds):
        generator = RowGenerators([torch.Generator().manual_seed(s) for s in seeds])
        x = target.start(len(seeds))
        state = sampler.init_state(x, 15)
        visited = []
        for _ in range(15):
            out = sampler.step(x, target, state, generator)
            x = out.sample.detach()
            state.iteration += 1
            visited.append(x.argmax(-1))
        return torch.stack(visited, 1)  # (chains, steps, positions)

    together = run([11, 12, 13])
    alone = run([12])
    assert torch.equal(together[1], alone[0])
    assert not torch.equal(together[0], together[2])


@pytest.mark.parametrize("metropolis, first, later", [(True, 2, 1), (False, 1, 1)])
def test_diagnostics_and_evaluation_count(metropolis, first, later):
    target = Potts(seed=2)
    energy_fn = CountingEnergy(target)
    sampler = DiscreteLangevin(step_size=1.0, metropolis=metropolis)
    x = target.start(6)
    state = sampler.init_state(x, 10)
    generator = torch.Generator().manual_seed(0)
    counts = []
    for step in range(10):
        expected_energy, expected_grad = target.energy_fn(x)
        out = sampler.step(x, energy_fn, state, generator)
        assert state.iteration == step
        expected = {"flips"} | ({"accept", "accept_prob"} if metropolis else set())
        assert set(out.diagnostics) == expected
        for name, value in out.trace().items():
            assert value.shape == (6,), f"diagnostic {name} has shape {tuple(value.shape)}"
        torch.testing.assert_close(out.start.energy, expected_energy)
        torch.testing.assert_close(out.start.grad, expected_grad)
        torch.testing.assert_close(out.trace()["grad_norm"], expected_grad.flatten(1).norm(dim=1))
        counts.append(out.evaluations)
        x = out.sample.detach()
        state.iteration += 1
    assert counts == [first] + [later] * 9
    assert sum(counts) == energy_fn.calls


def test_new_tokens_are_written_as_scaled_one_hot_and_unchanged_positions_kept():
    target = Potts(seed=0)
    x = torch.randn(16, 3, 4, generator=torch.Generator().manual_seed(0))
    sampler = DiscreteLangevin(step_size=5.0, metropolis=False, scale=7.0)
    out = sampler.step(x, target, sampler.init_state(x, 1), torch.Generator().manual_seed(1))
    changed = out.sample.argmax(-1) != x.argmax(-1)
    assert bool(changed.any()) and bool((~changed).any())
    assert torch.equal(out.sample[~changed], x[~changed])
    expected = torch.nn.functional.one_hot(out.sample.argmax(-1), 4).float() * 7.0
    assert torch.equal(out.sample[changed], expected[changed])
    torch.testing.assert_close(out.diagnostics["flips"], changed.float().sum(-1))


def test_step_scale_is_per_chain():
    target = Potts(seed=0)
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (4, 3), generator=torch.Generator().manual_seed(2)), 4).float()
    scaled = DiscreteLangevin(step_size=2.0, metropolis=False)
    state = scaled.init_state(x, 5)
    state.step_scale = torch.tensor([0.0, 0.5, 0.5, 0.5])
    out = scaled.step(x, target, state, torch.Generator().manual_seed(0))
    assert torch.equal(out.sample[0], x[0]), "a chain with step_scale 0 must not move"
    halved = DiscreteLangevin(step_size=1.0, metropolis=False)
    reference = halved.step(x, target, halved.init_state(x, 5), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.sample[1:], reference.sample[1:])
    # the proposal probabilities (not only the draws) follow the per-chain step
    grad, tokens = target.energy_fn(x)[1], x.argmax(-1)
    per_chain = scaled.proposal_log_probs(grad, tokens, 2.0 * state.step_scale, 1.0, None)
    plain = halved.proposal_log_probs(grad, tokens, torch.ones(4), 1.0, None)
    torch.testing.assert_close(per_chain[1:], plain[1:])
    assert torch.all(per_chain[0].exp().gather(-1, tokens[0].unsqueeze(-1)) == 1)


def test_schedules():
    target = Potts(seed=0)
    plain, _, _ = sample(DiscreteLangevin(1.0, 1.0), target, steps=10, chains=32, seed=1)
    annealed, _, _ = sample(DiscreteLangevin(Linear(1.0, 1.0), Linear(1.0, 0.0)), target, steps=10, chains=32, seed=1)
    assert not torch.equal(plain, annealed)
    with pytest.raises(ValueError, match="step_size"):
        sample(DiscreteLangevin(Linear(1.0, -1.0)), target, steps=10, chains=4)


def test_proposal_probabilities_follow_the_formula():
    grad = torch.tensor([[[0.0, -1.0, 2.0, 0.5]]])
    tokens = torch.tensor([[2]])
    log_q = DiscreteLangevin().proposal_log_probs(grad, tokens, torch.tensor([0.5]), 0.25, None)
    delta = grad[0, 0] - grad[0, 0, 2]
    weights = torch.exp(-delta / (2 * 0.25) - (torch.arange(4) != 2) / 0.5)
    torch.testing.assert_close(log_q[0, 0].exp(), weights / weights.sum())


@pytest.mark.parametrize(
    "argument, value",
    [("step_size", -0.1), ("step_size", 0.0), ("noise_scale", -1.0), ("step_size", float("nan")),
     ("proposal_temperature", -1.0), ("scale", 0.0)],
)
def test_rejects_bad_values(argument, value):
    with pytest.raises(ValueError, match=argument) as error:
        DiscreteLangevin(**{argument: value})
    assert repr(value) in str(error.value) or str(value) in str(error.value)


def test_rejects_a_state_without_categories_and_a_bad_mask():
    sampler = DiscreteLangevin()
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="categories"):
        sampler.step(x, FunctionEnergy(lambda y: (y.sum(), y)), sampler.init_state(x, 1))
    target = Potts(allowed=torch.ones(5, 4, dtype=torch.bool))
    x = target.start(2)
    with pytest.raises(ValueError, match="broadcast"):
        sampler.step(x, target, sampler.init_state(x, 1))


def test_registered():
    assert "DiscreteLangevin" in available(Sampler, "step")
    assert "OneHot" in available(Relaxation, "forward")


# -- the OneHot relaxation -------------------------------------------------------------------------


def test_one_hot_forward_is_one_hot_and_backward_the_identity():
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    probs = OneHot()(logits)
    assert torch.equal(probs, torch.nn.functional.one_hot(logits.argmax(-1), 11).float())
    weights = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((probs * weights).sum(), logits)
    torch.testing.assert_close(grad, weights)
    allowed = torch.zeros(11, dtype=torch.bool)
    allowed[[2, 5, 7]] = True
    probs = OneHot()(logits, allowed=allowed)
    assert bool(allowed[probs.argmax(-1)].all()) and torch.all(probs.sum(-1) == 1)
    (grad,) = torch.autograd.grad((probs * weights).sum(), logits)
    assert torch.all(grad[..., ~allowed] == 0)
    torch.testing.assert_close(grad[..., allowed], weights[..., allowed])


def test_one_hot_energy_is_the_token_log_likelihood(tiny_policy):
    """Through OneHot, the reference energy of logits is -log pi_ref of their argmax tokens,
    and its gradient is the gradient with respect to the one-hot tokens."""
    reference = ReferenceLogLikelihood(cache_prefix=False)
    reference.setup(tiny_policy)
    batch = ResponseBatch([[4, 5, 6], [7, 8]], ["a", "b"], torch.tensor([5, 3]), 5)
    vocab = tiny_policy.vocab_size
    y = torch.randn(2, 5, vocab, generator=torch.Generator().manual_seed(0))
    energy_fn = EnergyFunction(batch, OneHot(), None, reference, alpha=0.0, reference_weight=1.0)
    evaluation = energy_fn(y)
    energy, grad = evaluation.energy, evaluation.grad
    prepared = reference.prepare(batch)
    tokens = y.argmax(-1)
    with torch.no_grad():
        expected = -reference.value(prepared, tokens)
    torch.testing.assert_close(energy, expected, rtol=1e-5, atol=1e-5)
    p = torch.nn.functional.one_hot(tokens, vocab).float().requires_grad_(True)
    (expected_grad,) = torch.autograd.grad(-reference.value(prepared, p).sum(), p)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)
    assert energy_fn.best_tokens is not None and torch.equal(energy_fn.best_tokens, tokens)  # decode: best works


# -- inside SEA ---------------------------------------------------------------------------------------


def _batch(policy, prompts=("describe the city", "tell me about the weather today")):
    tok = policy.tokenizer
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False) for p in prompts]
    return {"id": [f"p{i}" for i in range(len(prompts))], "index": list(range(len(prompts))), "prompt": list(prompts), "prompt_ids": ids}


@pytest.mark.parametrize("restrict_top_k", [None, 3])
def test_sea_with_discrete_langevin(tiny_policy, restrict_top_k):
    alpha = 20.0
    sea = SEA(reward=LexiconReward(), sampler=DiscreteLangevin(step_size=0.5), relaxation=OneHot(), chains=2, steps=4,
              max_new_tokens=6, alpha=alpha, decode="best", init_logits="one_hot", init_scale=10.0,
              restrict_top_k=restrict_top_k)
    sea.attach(tiny_policy)
    records = sea.predict_step(_batch(tiny_policy))
    for record in records:
        assert len(record["trace"]["accept"]) == 4 and len(record["trace"]["flips"]) == 4
        assert record["energy_evaluations"] == 4 + 1  # gradient evaluations: one per step and one at the start
        n = record["chain_response_tokens"][0]
        final = -record["chain_ref_logprob_per_token"][0] * n - alpha * record["chain_rewards"][0]
        initial = -record["initial_ref_logprob_per_token"] * n - alpha * record["chain_initial_rewards"][0]
        assert final <= initial + 1e-4


def test_warns_when_the_relaxation_is_not_one_hot():
    with pytest.warns(UserWarning, match="OneHot"):
        SEA(reward=LexiconReward(), sampler=DiscreteLangevin(), relaxation=StraightThrough(), chains=1, steps=1,
            max_new_tokens=4, alpha=5.0)


def test_demo_discrete_config_runs_on_tiny_models(tmp_path, tiny_models):
    """configs/demo_discrete.yaml, with the tiny policy and a short run, through ``seaflow predict``."""
    config = yaml.safe_load((ROOT / "configs" / "demo_discrete.yaml").read_text())
    assert config["model"]["init_args"]["sampler"]["class_path"] == "DiscreteLangevin"
    records = run_config_on_tiny(config, tmp_path, tiny_models, steps=3, chains=2, max_new_tokens=6, restrict_top_k=5)
    assert [r["id"] for r in records] == ["p0", "p1"]
    assert all(len(r["trace"]["accept"]) == 3 for r in records)


def test_every_key_of_demo_discrete_is_commented():
    lines = (ROOT / "configs" / "demo_discrete.yaml").read_text().splitlines()
    keyed = [l for l in lines if l.strip() and not l.strip().startswith("#") and ":" in l and not l.strip().startswith("-")]
    uncommented = [l for l in keyed if "#" not in l and not l.rstrip().endswith(":")]
    assert not uncommented, uncommented
