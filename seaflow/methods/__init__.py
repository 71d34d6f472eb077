"""Alignment methods, all LightningModules on :class:`AlignmentMethod`: the refinement methods
(:class:`RefinementMethod`: SEA, BiasedDecoding) and the discrete ones (:class:`DiscreteMethod`:
GuidedSuffixMCMC, Sample, BestOfN, SoftBestOfN, ARGS, CBS, SpeculativeRejection, ParticleFilter)."""

from seaflow.methods.args import ARGS
from seaflow.methods.base import AlignmentMethod
from seaflow.methods.best_of_n import BestOfN
from seaflow.methods.biased_decoding import BiasedDecoding
from seaflow.methods.cbs import CBS
from seaflow.methods.discrete import DiscreteMethod
from seaflow.methods.particle_filter import ParticleFilter
from seaflow.methods.refinement import RefinementMethod
from seaflow.methods.sample import Sample
from seaflow.methods.sea import SEA
from seaflow.methods.soft_best_of_n import SoftBestOfN
from seaflow.methods.speculative_rejection import SpeculativeRejection
from seaflow.methods.suffix_mcmc import GuidedSuffixMCMC

__all__ = ["AlignmentMethod", "DiscreteMethod", "RefinementMethod", "SEA", "Sample", "BestOfN", "SoftBestOfN",
           "SpeculativeRejection", "ParticleFilter", "ARGS", "CBS", "GuidedSuffixMCMC", "BiasedDecoding"]
