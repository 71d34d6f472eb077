"""The sampler contract.

A sampler moves a batch of continuous states ``x`` (chain dimension first, any trailing
shape) towards low energy. It knows nothing about language: SEA hands it the response
logits of shape (chains, length, vocab), the contract tests hand it Gaussians.

One step::

    out = sampler.step(x, energy_fn, state, generator)   # -> SamplerOutput(sample, start, ...)

``energy_fn(x)`` returns an :class:`Evaluation`: the point, its per-chain energy
``(chains,)`` (lower is better), the gradient with the shape of ``x`` and any per-chain
parts the energy function reports (SEA: ``reward``, ``reference``). :class:`EnergyFn` is
everything a sampler may ask of the energy function. A step hands back the evaluation of
the point it started from (``out.start``); the loop records the trace from it (energy,
gradient norm, parts) and from ``out.diagnostics``, the sampler's own per-chain values
(e.g. ``accept``). A sampler may call ``energy_fn`` more than once per step (MALA at the
proposal, HMC per leapfrog step); ``out.evaluations`` says how many gradient evaluations
the step used, so samplers can be compared at equal cost. All randomness comes from the
explicit ``generator``: a ``torch.Generator`` or :class:`seaflow.rng.RowGenerators` (one
stream per chain); draw through ``noise_like``, ``metropolis`` or :mod:`seaflow.rng` so
both work. The loop counts the steps (``state.iteration``).

Subclasses implement :meth:`step` and, when they carry state between steps (momenta,
preconditioners), :meth:`init_state`. ``seaflow list`` shows every imported subclass
(built-in and user-defined alike); configs select samplers through LightningCLI's
``class_path`` as usual.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

import torch

from seaflow import rng

from seaflow.schedules import Schedule, resolve


@dataclass
class Evaluation:
    """The energy function at one point: ``point`` (as given), ``energy`` ``(chains,)``,
    ``grad`` (shaped like ``point``) and ``parts``, further per-chain values ``(chains,)``
    the energy function reports (recorded in the trace next to the energy)."""

    point: torch.Tensor
    energy: torch.Tensor
    grad: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class EnergyFn(Protocol):
    """What a sampler may ask of the energy function.

    ``energy_fn(x)`` evaluates ``x``. ``allowed`` is ``None`` or a boolean mask broadcastable
    to ``x``: the categories (last dimension) a discrete sampler may move to (SEA's
    ``restrict_top_k``); continuous samplers ignore it.
    """

    allowed: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> Evaluation: ...


class CategoricalEnergyFn(EnergyFn, Protocol):
    """An :class:`EnergyFn` that also scores categorical states without gradients (multiple-try samplers).

    ``energies(candidates, base)`` takes category indices ``(chains, K, ...)`` (the argmax a
    state of shape ``(chains, ..., categories)`` stands for) and returns their exact energies
    ``(chains, K)``; ``base`` ``(chains, ...)`` (e.g. the chain's current state) is a hint that
    lets an implementation reuse the work the candidates share with it.
    """

    def energies(self, candidates: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor: ...


class FunctionEnergy:
    """An :class:`EnergyFn` from a plain function ``x -> (energy, grad)`` (toy targets, tests);
    ``energies`` (optional) is ``CategoricalEnergyFn.energies``."""

    def __init__(self, fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], allowed: torch.Tensor | None = None,
                 energies: Callable[..., torch.Tensor] | None = None):
        self.fn, self.allowed = fn, allowed
        if energies is not None:
            self.energies = energies

    def __call__(self, x: torch.Tensor) -> Evaluation:
        energy, grad = self.fn(x)
        return Evaluation(x, energy, grad)


@dataclass
class SamplerState:
    """What a sampler carries from one step to the next.

    ``iteration`` counts finished steps (the loop advances it), ``num_steps`` is the planned
    total (schedules use the ratio), ``step_scale`` is a per-chain multiplier on the step
    size that the caller may shrink after a numerical fault. ``kept`` is the evaluation of
    the point an accept/reject step kept (:meth:`Sampler.remember`), so the next step need
    not evaluate it again. ``cache`` holds sampler-specific tensors (momenta, averages).
    """

    iteration: int = 0
    num_steps: int = 1
    step_scale: torch.Tensor | None = None
    kept: Evaluation | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        """Fraction of the planned steps already taken, in [0, 1]."""
        return min(self.iteration / max(self.num_steps, 1), 1.0)


@dataclass
class SamplerOutput:
    """The result of one :meth:`Sampler.step`.

    ``sample`` is the new state, ``start`` the evaluation of the point the step started
    from, ``diagnostics`` the sampler's own per-chain values ``(chains,)`` (accept/reject
    samplers report ``accept``, 1.0 or 0.0, and ``accept_prob``), ``evaluations`` the
    number of ``energy_fn`` calls the step made.
    """

    sample: torch.Tensor
    start: Evaluation
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)
    evaluations: int = 1

    def trace(self) -> dict[str, torch.Tensor]:
        """The step's per-chain values the loop records: the start point's ``energy`` and
        ``grad_norm``, the sampler's diagnostics, the start point's parts."""
        return {
            "energy": self.start.energy.detach(), "grad_norm": Sampler.grad_norm(self.start.grad),
            **self.diagnostics, **self.start.parts,
        }


class Sampler:
    """Base class of all samplers; see the module docstring for the contract."""

    needs_one_hot_gradient: ClassVar[bool] = False
    """True for samplers that read the gradient as dE/d(one-hot tokens) (a relaxation with
    ``one_hot_gradient``, e.g. OneHot); SEA warns when the two do not match."""

    def init_state(self, x: torch.Tensor, num_steps: int) -> SamplerState:
        """Fresh state for chains starting at ``x``, before ``num_steps`` steps."""
        return SamplerState(
            iteration=0,
            num_steps=num_steps,
            step_scale=torch.ones(x.shape[0], dtype=x.dtype, device=x.device),
        )

    def step(self, x: torch.Tensor, energy_fn: EnergyFn, state: SamplerState, generator: torch.Generator | None = None) -> SamplerOutput:
        raise NotImplementedError

    # helpers shared by implementations -------------------------------------------------

    def check_rate(self, name: str, value: float | Schedule, allow_zero: bool) -> float | Schedule:
        """``value``, a step size or noise scale, after rejecting a negative (or, unless ``allow_zero``,
        zero) float: ``self.step_size = self.check_rate("step_size", step_size, allow_zero=False)``."""
        if isinstance(value, Schedule):
            return value
        ok = value >= 0 if allow_zero else value > 0
        if not (isinstance(value, (int, float)) and ok and math.isfinite(value)):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{type(self).__name__} {name} must be a finite number {bound} or a Schedule, got {value!r}")
        return value

    def scheduled(self, name: str, value: float | Schedule, state: SamplerState, allow_zero: bool = True) -> float:
        """The value of a float-or-schedule argument at this step, checked (schedules can go wrong too)."""
        current = resolve(value, state.progress)
        if not (current >= 0 if allow_zero else current > 0) or not math.isfinite(current):
            raise ValueError(
                f"{type(self).__name__} {name} evaluated to {current!r} at progress {state.progress:.3f}; "
                f"it must be finite and {'>= 0' if allow_zero else '> 0'} (check the schedule's values)"
            )
        return current

    def chain_step(self, base: float, state: SamplerState, x: torch.Tensor) -> torch.Tensor:
        """``base * state.step_scale`` as a per-chain vector ``(chains,)`` in ``x``'s dtype."""
        scale = state.step_scale
        if scale is None:
            scale = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
            state.step_scale = scale
        return base * scale.to(device=x.device, dtype=x.dtype)

    @staticmethod
    def per_chain(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Reshape a per-chain vector ``(chains,)`` to broadcast against ``like``."""
        return values.reshape(values.shape[0], *([1] * (like.dim() - 1)))

    @staticmethod
    def grad_norm(grad: torch.Tensor) -> torch.Tensor:
        return grad.flatten(1).norm(dim=1)

    @staticmethod
    def sum_per_chain(values: torch.Tensor) -> torch.Tensor:
        """Sum over every dimension but the first: ``(chains, ...) -> (chains,)``."""
        return values.flatten(1).sum(dim=1)

    @staticmethod
    def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return rng.randn(x.shape, generator, device=x.device, dtype=x.dtype)

    # accept/reject samplers ------------------------------------------------------------

    def energy_at(self, x: torch.Tensor, energy_fn: EnergyFn, state: SamplerState) -> tuple[Evaluation, int]:
        """``(evaluation at x, energy_fn calls made)``: the kept evaluation when ``x`` is the
        point the previous step kept, else a fresh one.

        The kept point counts as ``x`` when it is the same tensor or a view of the same
        memory that nobody modified since (the loop hands back ``sample.detach()``).
        """
        kept = state.kept
        if kept is not None and self.same_point(kept.point, x):
            return kept, 0
        return energy_fn(x), 1

    @staticmethod
    def same_point(a: torch.Tensor, b: torch.Tensor) -> bool:
        if a is b:
            return True
        return (
            a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
            and a.stride() == b.stride() and a.data_ptr() == b.data_ptr()
            and a._version == b._version
        )

    @staticmethod
    def remember(state: SamplerState, evaluation: Evaluation) -> None:
        """Keep ``evaluation`` for the next step (its point must be the sample returned)."""
        state.kept = evaluation

    def accept_or_keep(
        self, state: SamplerState, current: Evaluation, proposed: Evaluation, log_ratio: torch.Tensor | None, generator,
    ) -> tuple[Evaluation, torch.Tensor, torch.Tensor]:
        """Per chain, move to the ``proposed`` point or stay at the ``current`` one, and remember
        the kept evaluation. ``log_ratio`` is the Metropolis log acceptance ratio; ``None`` is
        the zero-temperature limit (accept when the energy does not rise). Returns
        ``(kept evaluation, accepted (bool), acceptance probability)``; the new sample is
        ``kept.point``."""
        x = current.point
        if log_ratio is not None:
            accept, probability = self.metropolis(log_ratio, generator)
        else:
            accept = proposed.energy <= current.energy  # NaN energies compare False: rejected
            probability = accept.to(x.dtype)
        keep = self.per_chain(accept, x)
        kept = Evaluation(
            point=torch.where(keep, proposed.point, x),
            energy=torch.where(accept, proposed.energy, current.energy),
            grad=torch.where(keep, proposed.grad, current.grad),
            parts=self.select(accept, proposed.parts, current.parts),
        )
        self.remember(state, kept)
        return kept, accept, probability

    @staticmethod
    def metropolis(log_ratio: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-chain Metropolis test: ``(accepted (bool), acceptance probability)``.

        NaN ratios (a proposal with a non-finite energy) are rejected.
        """
        log_ratio = torch.nan_to_num(log_ratio, nan=float("-inf"))
        probability = torch.exp(torch.clamp(log_ratio, max=0.0))
        uniform = rng.rand(log_ratio.shape, generator, device=log_ratio.device, dtype=log_ratio.dtype)
        return torch.log(uniform) < log_ratio, probability

    @staticmethod
    def select(mask: torch.Tensor, new: Any, old: Any) -> Any:
        """Per chain, ``new`` where ``mask`` else ``old``: tensors (chain dim first), dataclasses,
        dicts, tuples and lists of them; anything else is taken from ``new`` when every chain
        takes ``new``, otherwise from ``old``."""
        if new is None or old is None:
            return new if bool(mask.all()) else old
        if isinstance(new, torch.Tensor) and isinstance(old, torch.Tensor) and new.shape == old.shape and new.dim() >= 1 and new.shape[0] == mask.shape[0]:
            return torch.where(Sampler.per_chain(mask, new), new, old)
        if dataclasses.is_dataclass(new) and type(new) is type(old):
            return dataclasses.replace(new, **{
                f.name: Sampler.select(mask, getattr(new, f.name), getattr(old, f.name))
                for f in dataclasses.fields(new) if f.init
            })
        if isinstance(new, dict) and isinstance(old, dict) and new.keys() == old.keys():
            return {k: Sampler.select(mask, new[k], old[k]) for k in new}
        if isinstance(new, (tuple, list)) and type(new) is type(old) and len(new) == len(old):
            return type(new)(Sampler.select(mask, a, b) for a, b in zip(new, old))
        return new if bool(mask.all()) else old
