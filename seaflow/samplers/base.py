"""The sampler contract.

A sampler moves a batch of continuous states ``x`` (chain dimension first, any trailing
shape) towards low energy. It knows nothing about language: SEA hands it the response
logits of shape (chains, length, vocab), the contract tests hand it Gaussians.

One step::

    out = sampler.step(x, energy_fn, state, generator)
    x, state = out.sample, out.state

``energy_fn(x)`` returns ``(energy, grad)``: the per-chain energy of shape ``(chains,)``
(lower is better) and its gradient with the shape of ``x``. A sampler may call it more
than once per step (MALA at the proposal, HMC per leapfrog step); ``out.evaluations``
says how many gradient evaluations the step used, so samplers can be compared at equal
cost. All randomness comes from the explicit ``generator``: a ``torch.Generator`` or
:class:`seaflow.rng.RowGenerators` (one stream per chain); draw through ``noise_like``,
``metropolis`` or :mod:`seaflow.rng` so both work.

Subclasses implement :meth:`step` and, when they carry state between steps (momenta,
preconditioners, cached gradients), :meth:`init_state`. Every subclass is recorded in
``Sampler.registry`` (built-in and user-defined alike) so that ``seaflow list`` can show
them; configs select samplers through LightningCLI's ``class_path`` as usual.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from seaflow import rng

from seaflow.registry import Registered
from seaflow.samplers.schedules import Schedule, resolve

EnergyFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SamplerState:
    """What a sampler carries from one step to the next.

    ``iteration`` counts finished steps, ``num_steps`` is the planned total (schedules use
    the ratio), ``step_scale`` is a per-chain multiplier on the step size that the caller
    may shrink after a numerical fault. ``cache`` holds sampler-specific tensors, e.g. the
    energy and gradient at the current point so they are not recomputed.
    """

    iteration: int = 0
    num_steps: int = 1
    step_scale: torch.Tensor | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        """Fraction of the planned steps already taken, in [0, 1]."""
        return min(self.iteration / max(self.num_steps, 1), 1.0)


@dataclass
class SamplerOutput:
    """The result of one :meth:`Sampler.step`.

    ``diagnostics`` maps names to per-chain tensors of shape ``(chains,)``; at least
    ``energy`` (at the point the step started from) and ``grad_norm``. Samplers with an
    accept/reject step add ``accept`` (1.0 accepted, 0.0 rejected).

    ``energy_record`` is what ``energy_fn`` exposed as its ``last`` attribute right after
    it evaluated the point the step started from (``None`` when ``energy_fn`` has no such
    attribute). Samplers that evaluate proposals leave ``energy_fn.last`` describing the
    last proposal, which may have been rejected; this field describes the start point, in
    step with ``diagnostics["energy"]``.
    """

    sample: torch.Tensor
    state: SamplerState
    diagnostics: dict[str, torch.Tensor]
    evaluations: int = 1
    energy_record: Any = None


class Sampler(Registered):
    """Base class of all samplers; see the module docstring for the contract."""

    registry: ClassVar[dict[str, type]] = {}

    def init_state(self, x: torch.Tensor, num_steps: int) -> SamplerState:
        """Fresh state for chains starting at ``x``, before ``num_steps`` steps."""
        return SamplerState(
            iteration=0,
            num_steps=num_steps,
            step_scale=torch.ones(x.shape[0], dtype=x.dtype, device=x.device),
        )

    def step(
        self,
        x: torch.Tensor,
        energy_fn: EnergyFn,
        state: SamplerState,
        generator: torch.Generator | None = None,
    ) -> SamplerOutput:
        raise NotImplementedError

    # helpers shared by implementations -------------------------------------------------

    @staticmethod
    def check_rate(owner: str, name: str, value: float | Schedule, allow_zero: bool) -> None:
        """Reject a negative (or, unless ``allow_zero``, zero) float step size or noise scale."""
        if isinstance(value, Schedule):
            return
        ok = value >= 0 if allow_zero else value > 0
        if not (isinstance(value, (int, float)) and ok and math.isfinite(value)):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{owner} {name} must be a finite number {bound} or a Schedule, got {value!r}")

    @staticmethod
    def scheduled(owner: str, name: str, value: float | Schedule, state: SamplerState, allow_zero: bool = True) -> float:
        """The value of a float-or-schedule argument at this step, checked (schedules can go wrong too)."""
        current = resolve(value, state.progress)
        if not (current >= 0 if allow_zero else current > 0) or not math.isfinite(current):
            raise ValueError(
                f"{owner} {name} evaluated to {current!r} at progress {state.progress:.3f}; "
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

    @staticmethod
    def evaluate(x: torch.Tensor, energy_fn: EnergyFn):
        """``(energy, grad, record)`` at ``x``; ``record`` is ``energy_fn.last`` if it has one."""
        energy, grad = energy_fn(x)
        return energy, grad, getattr(energy_fn, "last", None)

    def energy_and_grad(self, x: torch.Tensor, energy_fn: EnergyFn, state: SamplerState):
        """``(energy, grad, record, evaluations)`` at ``x``, reusing the cache when ``x`` is the cached point.

        The cached point counts as ``x`` when it is the same tensor or a view of the same
        memory that nobody modified since (``refine`` hands back ``sample.detach()``).
        """
        cached = state.cache.get("point")
        if cached is not None and self.same_point(cached, x):
            return state.cache["energy"], state.cache["grad"], state.cache.get("record"), 0
        energy, grad, record = self.evaluate(x, energy_fn)
        return energy, grad, record, 1

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
    def remember(state: SamplerState, x: torch.Tensor, energy: torch.Tensor, grad: torch.Tensor, record: Any = None) -> None:
        state.cache.update(point=x, energy=energy, grad=grad, record=record)

    def accept_or_keep(
        self, state: SamplerState, x, proposal, energy, new_energy, grad, new_grad, record, new_record,
        log_ratio: torch.Tensor | None, generator,
    ):
        """Per chain, move to ``proposal`` or stay at ``x``; remember the kept point's energy,
        gradient and record. ``log_ratio`` is the Metropolis log acceptance ratio; ``None`` is
        the zero-temperature limit (accept when the energy does not rise). Returns
        ``(new_x, accepted, acceptance probability)``."""
        if log_ratio is not None:
            accept, probability = self.metropolis(log_ratio, generator)
        else:
            accept = new_energy <= energy  # NaN energies compare False: rejected
            probability = accept.to(x.dtype)
        keep = self.per_chain(accept, x)
        new_x = torch.where(keep, proposal, x)
        self.remember(
            state, new_x, torch.where(accept, new_energy, energy), torch.where(keep, new_grad, grad),
            self.select(accept, new_record, record),
        )
        return new_x, accept, probability

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
