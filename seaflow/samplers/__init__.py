"""Samplers: one file each, one step contract (see :mod:`seaflow.samplers.base`)."""

from seaflow.samplers.adaptive import AdaptiveLangevin
from seaflow.samplers.base import CategoricalEnergyFn, EnergyFn, Evaluation, FunctionEnergy, Sampler, SamplerOutput, SamplerState
from seaflow.samplers.discrete_langevin import DiscreteLangevin
from seaflow.samplers.hmc import HMC
from seaflow.samplers.langevin import Langevin
from seaflow.samplers.mala import MALA
from seaflow.samplers.multiple_try import MultipleTryDiscreteLangevin

__all__ = [
    "CategoricalEnergyFn", "EnergyFn", "Evaluation", "FunctionEnergy", "Sampler", "SamplerOutput", "SamplerState",
    "Langevin", "MALA", "HMC", "AdaptiveLangevin", "DiscreteLangevin",
    "MultipleTryDiscreteLangevin",
]
