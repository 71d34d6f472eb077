"""Relaxations: logits -> token distributions fed to the models (see ``base``)."""

from seaflow.relaxations.base import Relaxation
from seaflow.relaxations.gumbel import GumbelSoftmax
from seaflow.relaxations.one_hot import OneHot
from seaflow.relaxations.softmax import Softmax
from seaflow.relaxations.straight_through import StraightThrough

__all__ = ["Relaxation", "Softmax", "StraightThrough", "GumbelSoftmax", "OneHot"]
