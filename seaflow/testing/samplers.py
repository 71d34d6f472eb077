"""The contract every sampler passes: subclass :class:`SamplerContract` in a ``test_*.py`` file
(``from seaflow.testing import SamplerContract``).

A sampler's test class says how to build the sampler for a target (step size, steps) and
inherits every check below (diffusers' ``SchedulerCommonTest`` pattern). The checks run
on analytic Gaussian energies, where the right answer is known:

- sampling: many independent chains from one start point; after burn-in the chains' final
  states must have the target's mean and covariance (whitened, by chi-square tests at
  level ``P_VALUE`` plus an allowance for the known discretisation bias of unadjusted
  samplers, see :func:`check_gaussian_moments`);
- acceptance rates in a sane range (samplers with an accept/reject step);
- optimisation mode (noise off) reaches the minimum;
- reproducibility, per-chain ``step_scale``, schedules, diagnostics and evaluation counts,
  batched (chains, length, vocab) tensors, errors naming bad values.

Using the final states of independent chains (not one long chain) makes the samples
exactly independent, so the test statistics have their textbook distributions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import pytest
import torch

from seaflow.components import available
from seaflow.samplers import EnergyFn, FunctionEnergy, Sampler
from seaflow.schedules import Constant, Linear

P_VALUE = 1e-3  # chance that a correct sampler fails one moment check (a fixed seed makes it deterministic)
DTYPE = torch.float32  # the chains run in float32, like logits; statistics are computed in float64
STATS = torch.float64


def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Small matrices: one thread is fastest, and a second one stalls on a busy machine. Autouse
# in SamplerContract; test modules with plain test functions import ``one_thread``.
one_thread = pytest.fixture(autouse=True)(_single_thread)


# -- targets ------------------------------------------------------------------------------


@dataclass
class GaussianTarget:
    """``exp(-E)`` with ``E(x) = (x - mean)^T A (x - mean) / 2``, ``A = cov^-1``; batched over chains."""

    name: str
    mean: torch.Tensor
    cov: torch.Tensor

    def __post_init__(self):
        self.mean, self.cov = self.mean.to(STATS), self.cov.to(STATS)
        precision = torch.linalg.inv(self.cov)
        self.precision = (precision + precision.T) / 2
        self.chol = torch.linalg.cholesky(self.cov)
        eigenvalues = torch.linalg.eigvalsh(self.precision)
        self.lambda_min, self.lambda_max = float(eigenvalues[0]), float(eigenvalues[-1])
        self._mean, self._precision = self.mean.to(DTYPE), self.precision.to(DTYPE)
        self.energy = FunctionEnergy(self.energy_fn)  # what samplers get

    @property
    def dim(self) -> int:
        return self.mean.numel()

    @property
    def condition(self) -> float:
        return self.lambda_max / self.lambda_min

    def energy_fn(self, x: torch.Tensor):
        """``(energy, grad)`` at ``x``."""
        centred = x - self._mean.to(x.dtype)
        grad = centred @ self._precision.to(x.dtype)
        return 0.5 * (centred * grad).sum(-1), grad

    def whiten(self, x: torch.Tensor) -> torch.Tensor:
        """``L^-1 (x - mean)`` with ``cov = L L^T``: standard normal under the target."""
        return torch.linalg.solve_triangular(self.chol, (x.to(STATS) - self.mean).T, upper=False).T

    def start(self, chains: int, offset: float = 3.0) -> torch.Tensor:
        """Every chain at the same point, ``offset`` target standard deviations from the mean."""
        direction = torch.ones(self.dim, dtype=STATS) / math.sqrt(self.dim)
        return (self.mean + offset * self.chol @ direction).to(DTYPE).expand(chains, -1).clone()


def _rotation(dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=STATS))
    return q * torch.sign(torch.diagonal(r))


def _target(name: str, variances, rotation_seed: int | None, mean_seed: int) -> GaussianTarget:
    variances = torch.as_tensor(variances, dtype=STATS)
    dim = variances.numel()
    cov = torch.diag(variances)
    if rotation_seed is not None:
        q = _rotation(dim, rotation_seed)
        cov = q @ cov @ q.T
        cov = (cov + cov.T) / 2
    mean = torch.randn(dim, generator=torch.Generator().manual_seed(mean_seed), dtype=STATS)
    return GaussianTarget(name, mean, cov)


def _correlated_2d() -> GaussianTarget:
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=STATS) * torch.tensor([[2.0, 1.0], [1.0, 0.5]], dtype=DTYPE)
    return GaussianTarget("correlated-2d", torch.tensor([1.0, -2.0], dtype=STATS), cov)


TARGETS = {
    "isotropic-2d": _target("isotropic-2d", [0.5, 0.5], None, 1),
    "correlated-2d": _correlated_2d(),  # correlation 0.9, unequal scales: condition number 19
    "anisotropic-10d": _target("anisotropic-10d", torch.logspace(-0.5, 0.5, 10).tolist(), 3, 2),  # rotated, condition 10
    "isotropic-100d": _target("isotropic-100d", [1.0] * 100, None, 4),
    "correlated-100d": _target("correlated-100d", torch.linspace(0.5, 2.0, 100).tolist(), 5, 5),  # rotated, condition 4
}


# -- statistics ---------------------------------------------------------------------------


def chi2_quantile(q: float, dof: int) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (slightly conservative for tiny dof)."""
    z = NormalDist().inv_cdf(q)
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


def check_gaussian_moments(samples: torch.Tensor, target: GaussianTarget, relative_bias: float = 0.0, p_value: float = P_VALUE) -> None:
    """Raise AssertionError unless ``samples`` (independent, ``(n, d)``) look like the target.

    Whitened samples ``z`` must be standard normal:

    - mean: ``n |mean(z)|^2 ~ chi2(d)``;
    - covariance: with ``S`` the sample covariance of ``z``, ``(n - 1) / 2 ||S - I||_F^2`` is
      approximately ``chi2(d (d + 1) / 2)`` (off-diagonal entries have variance ``1/(n-1)``,
      diagonal ones ``2/(n-1)``);
    - overall scale: ``trace(S) / d`` within the normal quantile of its standard deviation
      ``sqrt(2 / ((n - 1) d))``.

    ``relative_bias`` is the known relative error of the variances of an unadjusted sampler
    (about ``eta * lambda_max / 2`` for Langevin); it widens the covariance checks by what a
    bias of that size adds, and nothing more.
    """
    n, d = samples.shape
    z = target.whiten(samples)
    centre = z.mean(0)
    mean_stat = n * float(centre @ centre)
    mean_limit = chi2_quantile(1 - p_value, d)
    assert mean_stat <= mean_limit, (
        f"{target.name}: mean off target: n |mean(z)|^2 = {mean_stat:.1f} > {mean_limit:.1f} "
        f"(chi2({d}) at level {p_value}); mean(z) norm {centre.norm():.4f}"
    )
    cov = torch.cov(z.T).reshape(d, d)
    deviation = cov - torch.eye(d, dtype=STATS)
    cov_stat = (n - 1) / 2 * float((deviation ** 2).sum())
    dof = d * (d + 1) // 2
    # a bias b scales S by about (1 + b): the noise part by (1 + b)^2, plus b on the diagonal
    cov_limit = (1 + relative_bias) ** 2 * chi2_quantile(1 - p_value, dof) + (n - 1) / 2 * d * relative_bias ** 2
    eigenvalues = torch.linalg.eigvalsh(cov)
    assert cov_stat <= cov_limit, (
        f"{target.name}: covariance off target: (n-1)/2 ||S - I||_F^2 = {cov_stat:.1f} > {cov_limit:.1f} "
        f"(chi2({dof}) at level {p_value} + bias allowance {relative_bias:.3f}); whitened eigenvalues "
        f"{float(eigenvalues[0]):.3f}..{float(eigenvalues[-1]):.3f}"
    )
    scale = float(torch.diagonal(cov).mean())
    scale_limit = NormalDist().inv_cdf(1 - p_value / 2) * math.sqrt(2 / ((n - 1) * d)) + relative_bias
    assert abs(scale - 1) <= scale_limit, (
        f"{target.name}: variance scale off target: trace(S)/d = {scale:.4f}, allowed 1 +- {scale_limit:.4f}"
    )


# -- running chains -----------------------------------------------------------------------


class CountingEnergy:
    """Wraps an energy function (an ``EnergyFn``) and counts its evaluations."""

    def __init__(self, energy_fn: EnergyFn):
        self.energy_fn = energy_fn
        self.allowed = energy_fn.allowed
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return self.energy_fn(x)


def run_sampler(sampler: Sampler, energy_fn: EnergyFn, x: torch.Tensor, steps: int, seed: int = 0):
    """Run ``steps`` steps of ``sampler`` on every row of ``x`` (a chain each) as ``seaflow.refine`` does; return the final sample, the stacked
    per-step values the loop records (``SamplerOutput.trace``) and the outputs' evaluation count."""
    generator = torch.Generator().manual_seed(seed)
    state = sampler.init_state(x, steps)
    history: dict[str, list[torch.Tensor]] = {}
    evaluations = 0
    for _ in range(steps):
        out = sampler.step(x, energy_fn, state, generator)
        state.iteration += 1
        x = out.sample.detach()
        evaluations += out.evaluations
        for name, value in out.trace().items():
            history.setdefault(name, []).append(value)
    return x, {name: torch.stack(values) for name, values in history.items()}, evaluations


# -- the contract -------------------------------------------------------------------------


class SamplerContract:
    """Common tests; a sampler's test class subclasses it and sets the class attributes.

    Attributes:
        sampler_class: the sampler under test.
        sampler_kwargs: extra constructor arguments.
        has_accept: the sampler reports ``accept`` / ``accept_prob``.
        accept_range: allowed mean acceptance rate (second half of the run) when sampling.
        relative_step: the step size in units of the target's stiffest scale (see
            :meth:`step_size_for`).
        chains: independent chains per sampling check.
    """

    sampler_class: type[Sampler]
    sampler_kwargs: dict = {}
    has_accept = False
    accept_range = (0.5, 0.99)
    relative_step = 0.05
    chains = 2000
    chains_high_dim = 1000  # for d > 10: the cost is chains x d^2 per evaluation

    @pytest.fixture(autouse=True)
    def _one_thread(self):
        yield from _single_thread()

    # -- how to build and run the sampler (override per sampler) --------------------------

    def make_sampler(self, step_size, noise_scale=1.0, target: GaussianTarget | None = None, **overrides) -> Sampler:
        """The sampler under test; ``target`` (when sampling one) lets a subclass tune more than the step."""
        return self.sampler_class(step_size=step_size, noise_scale=noise_scale, **{**self.sampler_kwargs, **overrides})

    def step_size_for(self, target: GaussianTarget) -> float:
        """Step size for sampling ``target``: Langevin's eta with ``eta * lambda_max = relative_step``."""
        return self.relative_step / target.lambda_max

    def num_steps_for(self, target: GaussianTarget) -> int:
        """Enough steps to forget the start point (6 e-foldings of the slowest direction)."""
        return math.ceil(6 / (self.step_size_for(target) * target.lambda_min))

    def relative_bias(self, target: GaussianTarget) -> float:
        """Known relative variance bias at :meth:`step_size_for` (0 for exact samplers)."""
        return 0.0

    def optimiser_for(self, target: GaussianTarget) -> tuple[Sampler, int]:
        """The sampler in optimisation mode (noise off) and its number of steps."""
        step = 1.0 / target.lambda_max
        return self.make_sampler(step, noise_scale=0.0, target=target), math.ceil(25 * target.condition)

    def sample(self, target: GaussianTarget, seed: int = 0, sampler: Sampler | None = None):
        sampler = sampler if sampler is not None else self.make_sampler(self.step_size_for(target), target=target)
        chains = self.chains if target.dim <= 10 else self.chains_high_dim
        return run_sampler(sampler, target.energy, target.start(chains), self.num_steps_for(target), seed)

    def check_sampling(self, target: GaussianTarget, sampler: Sampler | None = None, seed: int = 0):
        samples, history, _ = self.sample(target, seed, sampler)
        check_gaussian_moments(samples, target, self.relative_bias(target))
        return history

    # -- the checks ------------------------------------------------------------------------

    @pytest.mark.parametrize("target_name", list(TARGETS))
    def test_samples_gaussian(self, target_name):
        history = self.check_sampling(TARGETS[target_name])
        if self.has_accept:
            steps = history["accept"].shape[0]
            rate = float(history["accept"][steps // 2:].mean())
            low, high = self.accept_range
            assert low <= rate <= high, f"{target_name}: acceptance rate {rate:.3f} outside [{low}, {high}]"

    @pytest.mark.parametrize("target_name", ["correlated-2d", "anisotropic-10d"])
    def test_optimisation_mode_reaches_minimum(self, target_name):
        target = TARGETS[target_name]
        sampler, steps = self.optimiser_for(target)
        start = target.start(8)
        x, history, _ = run_sampler(sampler, target.energy, start, steps)
        initial = target.energy_fn(start)[0]
        final = target.energy_fn(x)[0]
        assert torch.all(final <= 1e-8 * initial), f"{target_name}: energy {final.max():.3g} not at the minimum 0 (from {initial.max():.3g})"
        assert torch.allclose(x, target._mean.expand_as(x), atol=1e-3)
        first, last = history["energy"][0], history["energy"][-1]
        assert torch.all(last < first)

    def test_same_seed_same_trajectory(self):
        target = TARGETS["anisotropic-10d"]
        sampler = self.make_sampler(self.step_size_for(target))
        start = target.start(16)
        a, history_a, _ = run_sampler(sampler, target.energy, start, 30, seed=7)
        b, history_b, _ = run_sampler(sampler, target.energy, start, 30, seed=7)
        c, _, _ = run_sampler(sampler, target.energy, start, 30, seed=8)
        assert torch.equal(a, b)
        for name in history_a:
            assert torch.equal(history_a[name], history_b[name]), name
        assert not torch.equal(a, c)

    def test_batched_logits_match_flattened(self):
        """(chains, length, vocab) tensors: per-chain shapes, and the same moves as the flattened problem."""
        chains, length, vocab = 3, 4, 5
        scales = torch.linspace(0.5, 2.0, length * vocab, dtype=DTYPE)

        def flat_energy(x):
            return 0.5 * (x ** 2 / scales).sum(-1), x / scales

        def logits_energy(x):
            energy, grad = flat_energy(x.reshape(x.shape[0], -1))
            return energy, grad.reshape(x.shape)

        start = torch.randn(chains, length * vocab, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
        sampler = self.make_sampler(0.05)
        flat, flat_history, _ = run_sampler(sampler, FunctionEnergy(flat_energy), start, 5, seed=3)
        logits, history, _ = run_sampler(sampler, FunctionEnergy(logits_energy), start.reshape(chains, length, vocab), 5, seed=3)
        assert logits.shape == (chains, length, vocab)
        torch.testing.assert_close(logits.reshape(chains, -1), flat)
        for name, values in history.items():
            assert values.shape == (5, chains), f"diagnostic {name} has shape {tuple(values.shape)}, expected (steps, chains)"
            torch.testing.assert_close(values, flat_history[name])

    def test_diagnostics_and_evaluation_count(self):
        target = TARGETS["anisotropic-10d"]
        energy_fn = CountingEnergy(target.energy)
        sampler = self.make_sampler(self.step_size_for(target))
        x = target.start(6) + 0.1 * torch.randn(6, target.dim, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
        state = sampler.init_state(x, 10)
        generator = torch.Generator().manual_seed(0)
        total = 0
        for step in range(10):
            out = sampler.step(x, energy_fn, state, generator)
            assert state.iteration == step, "the loop counts iterations; a sampler leaves state.iteration alone"
            expected_energy, expected_grad = target.energy_fn(x)
            if self.has_accept:
                assert {"accept", "accept_prob"} <= set(out.diagnostics)
                assert set(out.diagnostics["accept"].tolist()) <= {0.0, 1.0}
            for name, value in out.trace().items():
                assert value.shape == (6,), f"diagnostic {name} has shape {tuple(value.shape)}"
            # the step hands back the evaluation of the point it started from
            assert torch.equal(out.start.point, x)
            torch.testing.assert_close(out.start.energy, expected_energy)
            torch.testing.assert_close(out.start.grad, expected_grad)
            torch.testing.assert_close(out.trace()["grad_norm"], expected_grad.norm(dim=1))
            assert out.sample.shape == x.shape
            total += out.evaluations
            x = out.sample.detach()
            state.iteration += 1
        assert total == energy_fn.calls, f"reported {total} gradient evaluations, made {energy_fn.calls}"

    def test_step_scale_is_per_chain(self):
        target = TARGETS["anisotropic-10d"]
        step = self.step_size_for(target)
        x = target.start(4)
        scaled = self.make_sampler(step)
        state = scaled.init_state(x, 5)
        state.step_scale = torch.tensor([0.0, 0.5, 0.5, 0.5], dtype=DTYPE)
        out = scaled.step(x, target.energy, state, torch.Generator().manual_seed(0))
        assert torch.equal(out.sample[0], x[0]), "a chain with step_scale 0 must not move"
        halved = self.make_sampler(step / 2)
        reference = halved.step(x, target.energy, halved.init_state(x, 5), torch.Generator().manual_seed(0))
        assert not torch.equal(out.sample[1:], x[1:])
        torch.testing.assert_close(out.sample[1:], reference.sample[1:])

    def test_schedules(self):
        target = TARGETS["anisotropic-10d"]
        step = self.step_size_for(target)
        start = target.start(8)
        plain, _, _ = run_sampler(self.make_sampler(step, 1.0), target.energy, start, 10, seed=1)
        constant, _, _ = run_sampler(self.make_sampler(Constant(step), Constant(1.0)), target.energy, start, 10, seed=1)
        torch.testing.assert_close(plain, constant)
        annealed, _, _ = run_sampler(self.make_sampler(step, Linear(1.0, 0.0)), target.energy, start, 10, seed=1)
        assert not torch.allclose(plain, annealed)
        broken = self.make_sampler(Linear(step, -step), 1.0)
        with pytest.raises(ValueError, match="step_size"):
            run_sampler(broken, target.energy, start, 10)

    @pytest.mark.parametrize("argument, value", [("step_size", -0.1), ("step_size", 0.0), ("noise_scale", -1.0), ("step_size", float("nan"))])
    def test_rejects_bad_values(self, argument, value):
        arguments = {"step_size": 0.1, "noise_scale": 1.0, argument: value}
        with pytest.raises(ValueError, match=argument) as error:
            self.make_sampler(**arguments)
        assert repr(value) in str(error.value) or str(value) in str(error.value)

    def test_registered(self):
        assert self.sampler_class.__name__ in available(Sampler, "step")
