"""Alignment methods: SEA (``seaflow.SEA``) and the baselines, all LightningModules."""

from seaflow.methods.base import AlignmentMethod

__all__ = ["AlignmentMethod"]
