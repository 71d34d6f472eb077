"""Alignment methods: SEA (``seaflow.SEA``, ``seaflow.methods.SEA``) and the baselines, all LightningModules."""

from seaflow.methods.args import ARGS
from seaflow.methods.base import AlignmentMethod
from seaflow.methods.best_of_n import BestOfN
from seaflow.methods.biased_decoding import BiasedDecoding
from seaflow.methods.cbs import CBS
from seaflow.methods.decoding import DecodingMethod
from seaflow.methods.particle_filter import ParticleFilter
from seaflow.methods.sample import Sample
from seaflow.methods.sea import SEA
from seaflow.methods.soft_best_of_n import SoftBestOfN
from seaflow.methods.speculative_rejection import SpeculativeRejection
from seaflow.methods.suffix_mcmc import GuidedSuffixMCMC

__all__ = ["AlignmentMethod", "DecodingMethod", "SEA", "Sample", "BestOfN", "SoftBestOfN", "SpeculativeRejection",
           "ParticleFilter", "ARGS", "CBS", "GuidedSuffixMCMC", "BiasedDecoding"]
