"""seaflow: inference-time alignment of language models in continuous space (SEA)."""

from seaflow import energies, relaxations, samplers, schedules  # noqa: F401  (every component, for seaflow list)
from seaflow.api import Aligner, load
from seaflow.data import PromptDataModule
from seaflow.energies import LexiconReward, PromptedJudge, ReferenceLogLikelihood, RewardModel
from seaflow.methods import (ARGS, CBS, SEA, AlignmentMethod, BestOfN, BiasedDecoding, GuidedSuffixMCMC, ParticleFilter, Sample,
                             SoftBestOfN, SpeculativeRejection)
from seaflow.relaxations import GumbelSoftmax, Softmax, StraightThrough
from seaflow.samplers import HMC, MALA, AdaptiveLangevin, Langevin
from seaflow.writer import JsonlPredictionWriter

__version__ = "0.1.0"

__all__ = [
    "load", "Aligner",
    "SEA", "AlignmentMethod", "PromptDataModule", "JsonlPredictionWriter",
    "ReferenceLogLikelihood", "RewardModel", "PromptedJudge", "LexiconReward",
    "StraightThrough", "Softmax", "GumbelSoftmax", "Langevin", "MALA", "HMC", "AdaptiveLangevin",
    "Sample", "BestOfN", "SoftBestOfN", "SpeculativeRejection", "ParticleFilter", "ARGS", "CBS", "GuidedSuffixMCMC",
    "BiasedDecoding",
]
